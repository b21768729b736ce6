"""Cost ledger: parameters, wall time per phase, throughput and peak memory of a run (and of each phase).

Peak memory per phase: on CUDA the most allocated during that phase; on CPU the peak resident set size
during that phase where Linux lets the high-water mark be reset (``/proc/self/clear_refs``), else the
process's peak so far when the phase ended. The run's peak counts from the meter's making, so a sweep
worker that runs one job after another reports each job's own.
"""
from __future__ import annotations

import contextlib
import re
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from recexp.interfaces import Recommender, Split


class CostMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}  # phase -> peak memory in MB
        self.before = 0.0  # the run's peak before the latest phase reset the high-water mark
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:  # a reused sweep worker's high-water mark would otherwise carry the last job's peak
            _reset_resident_peak()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.before = max(self.before, self._peak_now())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_resident_peak()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.peaks[name] = max(self.peaks.get(name, 0.0), self._peak_now())

    def peak_memory_mb(self) -> float:
        """The run's peak since this meter was made: CUDA max allocated on GPU; the peak resident set size on CPU."""
        return max([self.before, self._peak_now(), *self.peaks.values()])

    def _peak_now(self) -> float:
        """CUDA max allocated since the last reset on GPU; the peak resident set size since the last reset on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _resident_peak_mb()

    def summary(self, model: Recommender, split: Split, world_size: int = 1) -> dict[str, Any]:
        trainable, total = model.parameter_counts()
        train_seconds = self.seconds.get("train", 0.0)
        cost = {
            "trainable_params": int(trainable),
            "total_params": int(total),
            "train_seconds": train_seconds,
            "eval_seconds": self.seconds.get("eval", 0.0),
            "peak_memory_mb": self.peak_memory_mb(),
            "peak_memory_mb_by_phase": dict(self.peaks),
            "device": str(self.device),
            "world_size": world_size,  # processes that trained together
            "train_interactions": len(split.train),
        }
        cost.update(model.cost_extras())
        if "samples_per_second" not in cost and "samples_seen" in cost and train_seconds > 0:
            cost["samples_per_second"] = cost["samples_seen"] / train_seconds
        return cost


def _reset_resident_peak() -> None:
    """Linux: start the process's peak resident set size (VmHWM) afresh from its current size; elsewhere nothing."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")


def _resident_peak_mb() -> float:
    """The peak resident set size in MB: VmHWM on Linux (resettable), else ``ru_maxrss``."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            found = re.search(r"^VmHWM:\s+(\d+) kB", handle.read(), re.MULTILINE)
        if found:
            return int(found.group(1)) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
