"""Shared helpers of the benchmarks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time over ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def json_from_fresh_process(code: str, cwd: Path, timeout: float, what: str) -> Any:
    """What ``code`` (Python source printing one JSON document last) prints, run in a fresh one-thread process
    working in ``cwd``; a RuntimeError naming ``what`` with the end of its stderr if it fails."""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ONE_THREAD}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
