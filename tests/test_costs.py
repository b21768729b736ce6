"""The cost ledger's peak memory: per phase, and for the whole run."""
from __future__ import annotations

import sys

import pytest
import torch

from recexp.costs import CostMeter


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable high-water mark is Linux's")
def test_each_phase_reports_its_own_peak():
    meter = CostMeter(torch.device("cpu"))
    with meter.phase("train"):
        block = torch.ones(400 * 2**20, dtype=torch.uint8) + 0  # 400 MB more, then freed
        del block
    with meter.phase("eval"):
        small = torch.ones(20 * 2**20, dtype=torch.uint8) + 0
    assert meter.peaks["train"] > meter.peaks["eval"] + 300
    assert meter.peak_memory_mb() == pytest.approx(meter.peaks["train"], abs=1)  # the run's peak: its largest phase
    del small


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable high-water mark is Linux's")
def test_a_job_after_another_in_the_same_worker_reports_its_own_peak():
    """A reused sweep worker (Hydra's joblib launcher) runs jobs one after another in one process."""
    first = CostMeter(torch.device("cpu"))
    with first.phase("eval"):
        block = torch.ones(400 * 2**20, dtype=torch.uint8) + 0
        del block
    second = CostMeter(torch.device("cpu"))
    with second.phase("train"):
        small = torch.ones(20 * 2**20, dtype=torch.uint8) + 0
    with second.phase("eval"):
        pass
    assert second.peak_memory_mb() < first.peak_memory_mb() - 300
    del small
