"""One runner per job: run-folder locks, stale records, provenance, workers that stop with their
launcher, short job folders, and a multirun that ends non-zero when a job failed.

Sweeps run the real Hydra app in this process (Hydra's basic launcher runs jobs in-process), so
each costs about a second; the two-launches-at-once check lives in ``test_sweeps.py``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from recexp.locks import LOCK, _lock, ancestors, claim, held
from recexp.sweeps import PREFIX, job_folder


def write_record(folder: Path, run_id: str, status: str, attempts: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    provenance = {"host": "elsewhere", "pid": 1, "started": "", "attempts": attempts} if attempts else {}
    (folder / "results.json").write_text(json.dumps({"run_id": run_id, "status": status, "provenance": provenance}))


# --- claims, in this process (a second open file description conflicts like a second process)


def test_a_held_folder_is_skipped_and_freed_on_release(tmp_path):
    first = claim(tmp_path / "job", "r1", tmp_path)
    second = claim(tmp_path / "job", "r1", tmp_path)
    assert first.skip is None and first.provenance["attempts"] == 1 and first.provenance["pid"] == os.getpid()
    assert second.skip and f"pid {os.getpid()}" in second.skip and held(tmp_path / "job")
    first.release()
    assert not held(tmp_path / "job") and claim(tmp_path / "job", "r1", tmp_path).skip is None


@pytest.mark.parametrize(
    "earlier, skip, attempts",
    [
        ([], None, 1),
        ([("job", "running", None)], None, 2),  # died while running, no lock: stale, run again
        ([("job", "failed", 2)], None, 3),
        ([("other", "failed", 1), ("job", "running", 2)], None, 3),
        ([("other", "ok", 1)], "already finished", None),  # same configuration finished in another folder
        ([("other", "running", 1), ("job", "failed", 1)], None, 2),  # other folder's runner is dead
    ],
)
def test_claims_skip_finished_jobs_and_count_attempts(tmp_path, earlier, skip, attempts, caplog):
    for folder, status, count in earlier:
        write_record(tmp_path / folder, "r1", status, count)
    write_record(tmp_path / "unrelated", "r2", "running", 5)
    job = claim(tmp_path / "job", "r1", tmp_path)
    assert (job.skip is None) if skip is None else (skip in job.skip)
    assert job.provenance.get("attempts") == attempts
    if any(status == "running" for _, status, _ in earlier) and skip is None:
        assert "died while running" in caplog.text


def test_a_configuration_running_under_a_live_lock_elsewhere_is_skipped(tmp_path):
    write_record(tmp_path / "other", "r1", "running", 1)
    holder = _lock(tmp_path / "other" / LOCK)
    try:
        job = claim(tmp_path / "job", "r1", tmp_path)
        assert job.skip and "runs it in" in job.skip and not held(tmp_path / "job")
    finally:
        holder.close()


def test_a_single_run_counts_attempts_in_its_own_folder_and_never_skips_a_finished_one(tmp_path):
    write_record(tmp_path / "run", "r1", "ok", 1)
    job = claim(tmp_path / "run", "r1", None)
    assert job.skip is None and job.provenance["attempts"] == 2


@pytest.mark.subprocess
def test_workers_stop_when_the_launcher_dies(tmp_path):
    """launcher -> worker (watching) -> the launcher is killed -> the worker exits within a few seconds."""
    worker = ("import time, recexp.locks as l; assert l.stop_with_launcher(poll_s=0.1); "
              f"open({str(tmp_path / 'ready')!r}, 'w').close(); time.sleep(60)")
    launcher = ("import subprocess, sys, time, recexp.locks as l; l.mark_launcher(); "
                f"p = subprocess.Popen([sys.executable, '-c', {worker!r}]); print(p.pid, flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(process.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.pid in ancestors(child)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "the worker outlived its launcher"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


# --- job folder names


@pytest.mark.parametrize(
    "overrides",
    ["model=bpr,seed=1", "", "cache_dir=/tmp/" + "x" * 300, "dataset.item_template='{title} ({year})',seed=0",
     ",".join(f"+arm{i}=/data/some/long/path/{i}" for i in range(40)), ".hidden=1", "-m"],
)
def test_job_folders_are_short_safe_and_named_by_their_overrides(overrides):
    name = job_folder(overrides)
    assert re.fullmatch(r"[A-Za-z0-9=,._-]+", name) and len(name) <= PREFIX + 9 and not name.startswith((".", "-"))
    assert name == job_folder(overrides) and name != job_folder(overrides + "x")


def test_a_short_folder_name_keeps_the_overrides_readable():
    assert job_folder("model=bpr,seed=1").startswith("model=bpr,seed=1-")


# --- multiruns through the app, in this process


@pytest.fixture
def sweep(monkeypatch, capfd, tmp_path, cache_dir):
    """Run ``recexp -m`` with these overrides into tmp_path/s; returns (exit code, stdout + stderr)."""
    from recexp.__main__ import main

    monkeypatch.setenv("RECEXP_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("RECEXP_LAUNCHER", "")

    def call(*overrides: str) -> tuple[int, str]:
        argv = ["recexp", "-m", "model=random", "logger=none", "progress=false", f"hydra.sweep.dir={tmp_path / 's'}"]
        monkeypatch.setattr(sys, "argv", [*argv, *overrides])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code
        out, err = capfd.readouterr()
        return code, out + err

    return call


def records(folder: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))}


@pytest.mark.usefixtures("one_thread")
def test_a_stale_record_is_rerun_and_a_held_job_skipped(sweep, tmp_path):
    assert sweep("seed=0,1")[0] == 0
    (stale, a), (busy, b) = records(tmp_path / "s").items()
    stale.write_text(json.dumps({**a, "status": "running"}))  # its runner died: no lock held
    holder = _lock(busy.parent / LOCK)  # another live process runs this one
    try:
        code, output = sweep("seed=0,1")
    finally:
        holder.close()
    assert code == 0 and "skipped: another process" in output
    after = records(tmp_path / "s")
    assert after[stale]["status"] == "ok" and after[stale]["provenance"]["attempts"] == 2
    assert after[busy] == b  # nothing was written over the other runner's record


@pytest.mark.usefixtures("one_thread")
def test_a_multirun_with_failed_jobs_says_so_and_exits_non_zero(sweep, tmp_path):
    code, output = sweep("scenario=cold_item", "scenario.cold_fraction=0.2,1.5")
    failed = [p for p, r in records(tmp_path / "s").items() if r["status"] == "failed"]
    assert code == 1 and len(failed) == 1
    summary = [line for line in output.splitlines() if line.startswith("error: 1 job(s) of this sweep failed")]
    assert len(summary) == 1 and str(failed[0]) in summary[0]
    assert f"relaunch with hydra.sweep.dir={tmp_path / 's'}:" in summary[0]  # the resume command, also under ${now:...}


@pytest.mark.usefixtures("one_thread")
def test_a_multirun_with_many_long_overrides_works(sweep, tmp_path):
    deep = tmp_path / ("c" * 120) / ("d" * 120)
    long = [f"cache_dir={deep}", f"evaluator.ks=[{','.join(map(str, range(1, 61)))}]", "evaluator.metrics=[ndcg,recall]",
            "objective=valid/ndcg@10", "evaluator.tie_seed=0,1"]
    code, output = sweep(*long)
    found = records(tmp_path / "s")
    assert code == 0, output[-2000:]
    assert len(found) == 2 and {r["status"] for r in found.values()} == {"ok"}
    for path in found:
        assert path.parent.parent == tmp_path / "s" and len(path.parent.name) <= PREFIX + 9
        assert "evaluator.tie_seed" in (path.parent / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.usefixtures("one_thread")
def test_a_job_whose_component_calls_sys_exit_is_failed_and_the_sweep_goes_on(sweep, tmp_path, monkeypatch):
    from recexp.models.random_scores import RandomRecommender

    fit = RandomRecommender.fit

    def exits_on_seed_0(self, split, ctx):
        if ctx.seed == 0:
            sys.exit(3)
        fit(self, split, ctx)

    monkeypatch.setattr(RandomRecommender, "fit", exits_on_seed_0)
    code, output = sweep("seed=0,1")
    by_seed = {r["config"]["seed"]: r for r in records(tmp_path / "s").values()}
    assert code == 1 and "error: 1 job(s) of this sweep failed" in output
    assert by_seed[0]["status"] == "failed" and by_seed[0]["error"] == "SystemExit: 3" and by_seed[0]["finished_at"]
    assert by_seed[1]["status"] == "ok"
    assert "Run failed: a component called sys.exit(3) before the run ended" in output
