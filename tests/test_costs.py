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
