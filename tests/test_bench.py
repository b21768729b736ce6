"""make bench's closing table: one row per section present, each ratio against its target."""
from __future__ import annotations

import os
import subprocess

import pytest
from helpers import ROOT

from recexp.bench.__main__ import headlines, table

REPORT = {
    "evaluator": {
        "ml100k_size": {"recexp_users_per_s": 70000.0, "recbole_users_per_s": 50000.0, "speedup": 1.4},
        "25k_items": {"recexp_users_per_s": 20000.0, "recbole_users_per_s": 5000.0, "speedup": 4.0},
        "bookcrossing_size": {"wall_s": 2.0, "wall_s_one_thread": 1.5, "target_s": 10.0, "within_target": True},
    },
    "recbole": {"recexp_s_per_epoch": 0.33, "recbole_s_per_epoch": 0.33, "ratio": 1.0, "target_ratio": 1.05,
                "within_target": True, "pair_ratios": [1.02, 0.97, 1.0]},
    "startup": {"pop_run_s": 2.2, "import_torch_s": 1.2, "startup_s": 1.0, "target_s": 1.5, "within_target": True},
    "bare_loop": {"recexp_interactions_per_s": 9000.0, "bare_interactions_per_s": 10000.0, "ratio": 0.9,
                  "target": 0.95, "within_target": False},
    "strategies": {**{name: {"samples_per_second": speed} for name, speed in
                      (("frozen", 1e5), ("partial", 3e4), ("lora", 1e4), ("full_ft", 5e3))}, "ladder_holds": True},
}


def test_the_table_has_a_row_per_measure_and_says_which_targets_are_missed():
    rows = headlines(REPORT)
    assert len(rows) == 7
    verdicts = {row[0].split(" (")[0]: row[-1] for row in rows}
    assert verdicts["evaluator users/s, ml-100k"].endswith("NO") and verdicts["evaluator users/s, 25k items"].endswith("yes")
    assert verdicts["LoRA text_tower interactions/s"] == ">= 0.95x: NO"
    assert verdicts["RecBole BPR s/epoch, median of 3 pairs"] == "<= 1.05x: yes (pairs 0.97x to 1.02x)"
    assert "frozen 100,000, partial 30,000, lora 10,000, full_ft 5,000" in rows[-1][0]
    text = table(REPORT)
    assert text.splitlines()[0] == "| measure | recexp | reference | ratio | target |" and len(text.splitlines()) == 9


def test_sections_not_run_leave_no_row():
    assert headlines({"recbole": REPORT["recbole"]}) == [
        ("RecBole BPR s/epoch, median of 3 pairs (vs raw RecBole)", "0.330", "0.330", "1.000x",
         "<= 1.05x: yes (pairs 0.97x to 1.02x)")]


@pytest.mark.subprocess
def test_raw_recbole_side_writes_only_in_its_own_folder(tmp_path, monkeypatch):
    from recexp.bench.recbole import run_side

    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    folder = tmp_path / "recbole0"
    assert run_side("recbole", folder, tmp_path / "cache", epochs=2) > 0  # one gap between two epochs' ends
    assert list(here.iterdir()) == []
    assert (folder / "log_tensorboard").is_dir()


@pytest.mark.subprocess
def test_make_bench_times_every_default_model_and_takes_a_chosen_list():
    # as a user's shell has it: no BENCH_MODELS, and not inside another make (make test)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_MODELS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def command(*args: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "bench", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if "-m recexp.bench" in line).strip()

    assert command().endswith("--models pop,bpr,text_tower")
    assert command("BENCH_MODELS=pop").endswith("--models pop")


def test_the_recbole_row_reads_the_median_pair_and_of_an_even_count_the_slower_middle_one():
    from recexp.bench.recbole import median_index

    assert median_index([1.02, 0.97, 1.0]) == 2
    assert median_index([1.0, 0.9, 1.2, 1.1]) == 3  # 1.1, not 1.0: an upper-bound target is not flattered
    assert median_index([1.3]) == 0
