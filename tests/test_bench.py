"""make bench's closing table: one row per section present, each ratio against its target."""
from __future__ import annotations

import os
import subprocess

import pytest
from helpers import ROOT

from recexp.bench.__main__ import headlines, table

REPORT = {
    "evaluator": {
        "runs": {"first_run/ml100k/bpr/512": {"recexp_users_per_s": 70000.0, "recbole_users_per_s": 50000.0},
                 "steady/25k_items/mf+popularity/defaults": {"recexp_users_per_s": 20000.0, "recbole_users_per_s": 5000.0}},
        "first_run/ml100k": {"slowest": "first_run/ml100k/bpr/512", "speedup": 1.4, "same_topk_share": 1.0},
        "steady/25k_items": {"slowest": "steady/25k_items/mf+popularity/defaults", "speedup": 4.0, "same_topk_share": 0.999},
        "in_a_run": {"model": "BPR", "epochs": 10, "batches": {"torch_topk": 2, "compiled": 18}, "ready_after_s": 1.5,
                     "fit_s": 6.0},
        "bookcrossing_size": {"wall_s": 2.0, "wall_s_one_thread": 1.5, "target_s": 10.0, "within_target": True},
    },
    "recbole": {"train_s_vs_recbole": {"recexp": 0.21, "recbole": 0.2, "ratio": 1.05, "ratios": [1.05, 0.97, 1.1]},
                "valid_s_vs_recbole": {"recexp": 0.05, "recbole": 0.1, "ratio": 0.5, "ratios": [0.5, 0.4, 0.6]},
                "epoch_s_vs_files": {"recexp": 0.3, "files": 0.4, "ratio": 0.75, "ratios": [0.75, 0.7, 0.8]},
                "target_ratio": 1.05, "within_target": True,
                "scientific_size": {"recexp": {"valid_s": 0.12, "train_s": 0.1}, "files": {"valid_s": 2.0, "train_s": 0.1},
                                    "valid_over_train": 1.2, "valid_every_within": 2, "within_target": False}},
    "startup": {"pop_run_s": 2.2, "import_torch_s": 1.2, "startup_s": 1.0, "target_s": 1.5, "within_target": True},
    "bare_loop": {"recexp_interactions_per_s": 9000.0, "bare_interactions_per_s": 10000.0, "ratio": 0.9,
                  "target": 0.95, "within_target": False},
    "strategies": {**{name: {"samples_per_second": speed} for name, speed in
                      (("frozen", 1e5), ("partial", 3e4), ("lora", 1e4), ("full_ft", 5e3))}, "ladder_holds": True},
}


def test_the_table_has_a_row_per_measure_and_says_which_targets_are_missed():
    rows = headlines(REPORT)
    assert len(rows) == 11
    verdicts = {row[0].split(" (")[0]: row[-1] for row in rows}
    assert verdicts["evaluator users/s, ml-100k, torch.topk, before the compiled pass loads, slowest case: bpr scores, "
                    "512 users a batch"] == ">= 3x: NO, same top-K lists: 100.0%"
    assert rows[1][:4] == ("evaluator users/s, 25k items, compiled pass, as a CPU run ranks, slowest case: mf+popularity "
                           "scores, each side at its default batch (vs RecBole full sort)", "20,000", "5,000", "4.00x")
    assert rows[1][4] == ">= 3x: yes, same top-K lists: 99.9%"
    assert rows[2][1:] == ("18 of 20", "-", "-", "all: NO")
    assert verdicts["LoRA text_tower interactions/s"] == ">= 0.95x: NO"
    assert verdicts["RecBole BPR s/epoch, training phase"] == "<= 1.05x: yes (rounds 0.97x to 1.10x)"
    assert verdicts["RecBole BPR s/epoch, whole epoch"] == "(rounds 0.70x to 0.80x)"  # a reference, no target
    assert verdicts["RecBole BPR validation s per training s, Scientific-sized"] == "<= 1x: NO (trainer.valid_every=2: yes)"
    assert "frozen 100,000, partial 30,000, lora 10,000, full_ft 5,000" in rows[-1][0]
    text = table(REPORT)
    assert text.splitlines()[0] == "| measure | recexp | reference | ratio | target |" and len(text.splitlines()) == 13


def test_sections_not_run_leave_no_row():
    assert headlines({"startup": REPORT["startup"]}) == [
        ("Pop run start-up s (vs import torch)", "2.20", "1.20", "+1.00 s", "<= +1.5 s: yes")]
    assert headlines({"recbole": REPORT["recbole"]})[1] == (
        "RecBole BPR s/epoch, validation phase (vs RecBole's own pipeline), median of 3 rounds", "0.050", "0.100",
        "0.500x", "<= 1.05x: yes (rounds 0.40x to 0.60x)")


@pytest.mark.subprocess
def test_raw_recbole_side_writes_only_in_its_own_folder(tmp_path, monkeypatch):
    from recexp.bench.recbole import run_side

    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    folder = tmp_path / "recbole0"
    phases = run_side("recbole", folder, tmp_path / "cache", epochs=2)  # RecBole's own pipeline on ml-100k
    assert set(phases) == {"train_s", "valid_s", "epoch_s"} and min(phases.values()) > 0
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
