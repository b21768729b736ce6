"""Multirun plumbing: short safe job folder names, and a sweep that ends non-zero when a job failed.

``hydra.sweep.subdir`` is ``${recexp.job_folder:${hydra.job.override_dirname}}``: the job's overrides
as a readable prefix (only ``[A-Za-z0-9=,._-]``, at most :data:`PREFIX` characters) and 8 hex digits
of their sha256, so paths and long override lists stay within file-name limits while the same
overrides always land in the same folder. The overrides themselves are in ``.hydra/overrides.yaml``.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recexp.locks import LAUNCH_ENV, read_records

PREFIX = 100  # characters of the readable part of a job folder name
RESOLVER = "recexp.job_folder"
_UNSAFE = re.compile(r"[^A-Za-z0-9=,._-]+")


def job_folder(overrides: str) -> str:
    """``model=bpr,seed=1`` -> ``model=bpr,seed=1-1a2b3c4d``: readable, safe, short, and unique per overrides.
    A prefix that would be too long keeps the overrides that fit whole and ends with ``..``."""
    digest = hashlib.sha256(str(overrides).encode()).hexdigest()[:8]
    readable = _UNSAFE.sub("_", str(overrides)).strip("._-")
    if len(readable) > PREFIX:
        cut = readable[: PREFIX - 2]
        readable = (cut.rpartition(",")[0] or cut) + ".."
    return f"{readable}-{digest}" if readable else f"job-{digest}"


def register_resolver() -> None:
    """Make ``${recexp.job_folder:...}`` known (Hydra hands resolvers on to its parallel workers)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_folder)


class FailureSummary(Callback):
    """``hydra.callbacks``: at the end of a multirun, one line naming the jobs of this launch that
    failed (or died while running) and where their records are; the process then exits 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[LAUNCH_ENV] = uuid.uuid4().hex  # workers started from here inherit it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        launch = os.environ.pop(LAUNCH_ENV, None)
        folder = Path(config.hydra.sweep.dir)
        failed = failed_records(folder, launch) if launch else []
        if failed:
            shown = ", ".join(str(p) for p in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
            print(f"error: {len(failed)} job(s) of this sweep failed; their results.json (error) and traceback.txt: "
                  f"{shown}. Fix the cause and relaunch with hydra.sweep.dir={folder}: finished jobs are skipped.",
                  file=sys.stderr, flush=True)
            sys.exit(1)


def failed_records(folder: Path, launch: str) -> list[Path]:
    """Records under ``folder`` written by this launch whose status is not ``ok``."""
    return [path for path, data in read_records(folder)
            if (data.get("provenance") or {}).get("launch") == launch and data.get("status") != "ok"]
