"""One runner per job: a run folder is claimed with a lock that dies with its process.

A job takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` before it writes anything there and
keeps it until its record is final. The kernel drops the lock when the process ends, however it
ends (even ``kill -9``), so a record left ``running`` without a held lock is stale: its runner died
and the job runs again. A second launch of the same sweep skips a job whose lock a live process
holds, or whose configuration (same ``run_id``) is ``running`` under a held lock in another folder
of the sweep. ``provenance.attempts`` numbers the runs of one configuration in one sweep folder.

Workers of a parallel launcher (joblib, submitit-local) stop when the launcher dies
(:func:`stop_with_launcher`): a thread polls whether the launcher is still an ancestor of the
process. ``prctl(PR_SET_PDEATHSIG)`` was not used: it fires when the parent *thread* that started
the process exits (loky starts workers from a helper thread), it covers only the direct parent
(submitit-local runs each job under a controller process that is meant to outlive the launcher),
and a job can only set it after the parent may already be gone.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("recexp")

LOCK = ".lock"
RESULTS = "results.json"
LAUNCHER_ENV = "RECEXP_LAUNCHER"  # "PID@HOST" of the process that launched the sweep
LAUNCH_ENV = "RECEXP_LAUNCH"  # id of one launch (multirun), so its failures can be counted at the end
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # file systems without flock


@dataclass
class Claim:
    """A job's hold on its run folder; ``skip`` says why the job must not run here."""

    provenance: dict[str, Any] = field(default_factory=dict)  # host, pid, started, attempts, launch
    skip: str | None = None
    done: Path | None = None  # the ok record that made the job skip, if any
    handle: IO[str] | None = None  # the open, locked lock file

    def release(self) -> None:
        """Drop the lock (the kernel also drops it when the process ends)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def claim(run_dir: Path, run_id: str, sweep_dir: Path | None, lock: bool = True) -> Claim:
    """Lock ``run_dir`` for this process. In a sweep (``sweep_dir``), skip the job when this
    configuration already finished or runs under a live lock elsewhere in the sweep folder."""
    handle = _lock(run_dir / LOCK) if lock else None
    if lock and handle is None:
        return Claim(skip=f"another process ({holder(run_dir)}) holds {run_dir}")
    earlier = records_of(sweep_dir or run_dir, run_id)
    if sweep_dir is not None:
        done = next((path for path, data in earlier if data.get("status") == "ok"), None)
        busy = [p.parent for p, d in earlier if d.get("status") == "running" and p.parent != run_dir and held(p.parent)]
        if done is not None or busy:
            _close(handle)
            where = f"it already finished in {done.parent}" if done else f"another process ({holder(busy[0])}) runs it in {busy[0]}"
            return Claim(skip=where, done=done)
    attempts = 1 + max((_attempts(data) for _, data in earlier), default=0)
    for _, data in earlier:
        if data.get("status") == "running":
            log.warning("An earlier attempt of run %s (%s) died while running; running it again (attempt %d).",
                        run_id, _who(data), attempts)
    return Claim(provenance=provenance(attempts), handle=handle)


def provenance(attempts: int) -> dict[str, Any]:
    """Where and when this attempt runs, and how many runs of its configuration the sweep folder has seen."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "attempts": attempts,
        "launch": os.environ.get(LAUNCH_ENV),
    }


def records_of(folder: Path, run_id: str) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable ``results.json`` under ``folder`` with this run id."""
    return [(path, data) for path, data in read_records(folder) if data.get("run_id") == run_id]


def read_records(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable ``results.json`` under ``folder`` (none when it does not exist), by path."""
    found = []
    for path in sorted(folder.rglob(RESULTS)) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append((path, data))
    return found


def held(run_dir: Path) -> bool:
    """True when a live process holds ``run_dir``'s lock."""
    try:
        with open(run_dir / LOCK, encoding="utf-8") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    except OSError as err:
        if err.errno in _NO_LOCKS:
            return False
        raise
    return False


def holder(run_dir: Path) -> str:
    """``pid N on HOST`` as written by the lock's holder."""
    try:
        text = (run_dir / LOCK).read_text(encoding="utf-8").split()
    except OSError:
        text = []
    return f"pid {text[0]} on {text[1]}" if len(text) == 2 else "unknown pid"


def _lock(path: Path) -> IO[str] | None:
    """The open lock file, locked by this process; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError as err:
        if err.errno not in _NO_LOCKS:
            handle.close()
            raise
        log.warning("%s cannot be locked on this file system (%s); two launches of this sweep could run "
                    "this job twice.", path, err.strerror)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()
    return handle


def _close(handle: IO[str] | None) -> None:
    if handle is not None:
        handle.close()


def _attempts(data: dict[str, Any]) -> int:
    value = (data.get("provenance") or {}).get("attempts")
    return value if isinstance(value, int) else 1


def _who(data: dict[str, Any]) -> str:
    prov = data.get("provenance") or {}
    return f"pid {prov.get('pid', '?')} on {prov.get('host', '?')}"


# --- workers stop when the launcher dies

_watching: list[threading.Thread] = []


def mark_launcher() -> None:
    """Called by the launching process: its workers watch it (:func:`stop_with_launcher`)."""
    os.environ[LAUNCHER_ENV] = f"{os.getpid()}@{socket.gethostname()}@{_start_time(os.getpid())}"


def stop_with_launcher(poll_s: float = 1.0) -> bool:
    """In a worker started (directly or through a controller) by the launcher on this host: exit as
    soon as the launcher is gone, or at once if it died before this job started. Returns True when a
    watch runs (one per process); False in the launcher itself and in processes it did not start."""
    if _watching:
        return True
    pid, host, start = (os.environ.get(LAUNCHER_ENV, "").split("@") + ["", "", ""])[:3]
    if not pid.isdigit() or host != socket.gethostname() or int(pid) == os.getpid():
        return False
    launcher = (int(pid), start)
    if _alive(launcher) and launcher[0] not in ancestors():
        return False  # a process of its own that inherited the variable (e.g. a cluster job)
    thread = threading.Thread(target=_watch, args=(launcher, poll_s), name="recexp-launcher-watch", daemon=True)
    thread.start()
    _watching.append(thread)
    return True


def _watch(launcher: tuple[int, str], poll_s: float) -> None:
    while _alive(launcher) and launcher[0] in ancestors():
        time.sleep(poll_s)
    log.error("The launcher (pid %d) has died; this worker (pid %d) stops. Relaunch the sweep to finish its jobs.",
              launcher[0], os.getpid())
    logging.shutdown()
    os._exit(1)


def _alive(launcher: tuple[int, str]) -> bool:
    """The launcher process still runs: same pid and start time, not a zombie."""
    pid, start = launcher
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _start_time(pid) == start and _state(pid) not in ("Z", "X")


def ancestors(pid: int | None = None) -> list[int]:
    """Process ids above ``pid`` (default: this process), nearest first; only the parent without /proc."""
    pid = os.getpid() if pid is None else pid
    if not Path("/proc/self/stat").exists():
        return [os.getppid()] if pid == os.getpid() else []
    chain = []
    while pid > 1:
        fields = _stat(pid)
        if not fields:
            break
        pid = int(fields[1])  # ppid
        chain.append(pid)
    return chain


def _start_time(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""  # starttime (clock ticks after boot); "" without /proc


def _state(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else ""


def _stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), after the command name; [] when unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []
