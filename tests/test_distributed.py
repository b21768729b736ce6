"""Several processes train one model: DDP over gloo on CPU through accelerate, one record from rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, save_tiny_bert

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
TEXT_TOWER = ["model=text_tower", "strategy=frozen", "scenario=cold_item", "trainer.max_epochs=2", "logger=none",
              "progress=false"]


def launch(prefix: list[str], overrides: list[str], run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECEXP_CACHE_DIR": str(cache), "MASTER_PORT": "29613"}
    return subprocess.run([*prefix, "-m", "recexp", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


# starts python -m recexp: the tests that use it are marked subprocess
@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    single = launch([sys.executable], TEXT_TOWER, tmp / "one", tmp / "cache")
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch([*ACCELERATE, "--multi_gpu", "--num_processes", "2"], TEXT_TOWER, tmp / "two", tmp / "cache")
    assert double.returncode == 0, double.stderr[-3000:]
    return [json.loads((tmp / name / "results.json").read_text()) for name in ("one", "two")], tmp


@pytest.mark.subprocess
def test_two_processes_write_one_record_and_say_so(one_and_two):
    (one, two), tmp = one_and_two
    assert one["status"] == two["status"] == "ok"
    assert (one["cost"]["world_size"], two["cost"]["world_size"]) == (1, 2)
    assert len(list((tmp / "two").rglob("results.json"))) == 1
    assert two["cost"]["optimizer_steps"] == one["cost"]["optimizer_steps"]  # the batch is shared out, not doubled
    assert two["effective"]["batch_size"] == one["effective"]["batch_size"] == 512


@pytest.mark.subprocess
def test_two_processes_match_one_up_to_summation_order(one_and_two):
    (one, two), _ = one_and_two
    for segment in ("all", "cold", "warm"):
        assert two["segments"][segment]["ndcg@10"] == pytest.approx(one["segments"][segment]["ndcg@10"], abs=0.01)


@pytest.mark.subprocess
def test_cpu_flag_with_several_processes_warns_that_accelerate_started_one(tmp_path):
    done = launch([*ACCELERATE, "--cpu", "--num_processes", "2"], ["model=random", "logger=none", "progress=false"],
                  tmp_path / "run", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accelerate launch --cpu started one process" in done.stderr + done.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["cost"]["world_size"] == 1


@pytest.mark.subprocess
def test_an_item_organised_epoch_is_shared_out_over_two_processes(cold_split, tmp_path):
    """A trained encoder's epoch over two processes: every training interaction once, the steps of one process."""
    bert = save_tiny_bert(tmp_path / "tiny-bert")
    overrides = ["model=text_tower", "strategy=lora", "scenario=cold_item", "trainer.max_epochs=1", "logger=none",
                 "progress=false", f"encoder.name_or_path={bert}"]
    done = launch([*ACCELERATE, "--multi_gpu", "--num_processes", "2"], overrides, tmp_path / "two", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "results.json").read_text())
    cost = record["cost"]
    assert record["status"] == "ok" and cost["world_size"] == 2
    # every training interaction at least once over both processes; accelerate evens out the two shares of
    # batches by repeating the epoch's first items, so a few are seen twice
    assert cost["train_interactions"] <= cost["samples_seen"] < 1.05 * cost["train_interactions"]
    train_items = cold_split.train["item"].nunique()  # the run's split: the same scenario and seed
    assert cost["optimizer_steps"] == -(-train_items // record["effective"]["batch_size"])  # 64 items a step in all


class TwoProcesses:
    """What ``validate`` uses of an Accelerator, for one of two processes run as threads: reduce sums."""

    def __init__(self, index: int, board: list, barrier):
        self.num_processes, self.process_index, self.device = 2, index, "cpu"
        self.board, self.barrier = board, barrier

    def reduce(self, tensor):
        self.board[self.process_index] = tensor
        self.barrier.wait()
        total = self.board[0] + self.board[1]
        self.barrier.wait()
        return total


@pytest.mark.parametrize("key", ["ndcg@10", "gauc", "logloss", "rmse", "mae"])
def test_validation_under_two_processes_is_the_one_process_value(ml100k, key):
    """Means over users are summed over the processes' shares; pooled metrics (logloss, rmse, mae) are not means
    of per-user values, so each process computes them whole."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torch import nn

    from recexp.evaluate import Evaluator
    from recexp.scenarios import RandomScenario
    from recexp.train import validate

    split = RandomScenario(label_threshold=4).build(ml100k, 0)

    class Scores(nn.Module):
        pointwise_output = "rating" if key in ("rmse", "mae") else "probability"
        score_pairs = None
        table = torch.rand(ml100k.n_users, ml100k.n_items, generator=torch.Generator().manual_seed(0)) * (
            5 if key in ("rmse", "mae") else 1)

        def score(self, users, stage):
            return self.table[users]

    evaluator, model = Evaluator(ks=[10], metrics=[key.split("@")[0]]), Scores()
    board, barrier = [None, None], threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        values = list(pool.map(lambda r: validate(model, split, evaluator, key, TwoProcesses(r, board, barrier)), (0, 1)))
    assert values[0] == values[1] == pytest.approx(evaluator.value(model, split, "valid", key), rel=1e-12)
