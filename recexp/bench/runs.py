"""Whole-pipeline timings: data and split, model fits, a few-shot run as a user starts it."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recexp.bench.common import timed
from recexp.costs import CostMeter
from recexp.data import AtomicDataset
from recexp.evaluate import Evaluator
from recexp.interfaces import FitContext
from recexp.scenarios import ColdItemScenario, build_or_load
from recexp.tracking import NullLogger


class _RandomScores:
    def __init__(self, n_items: int):
        self.n_items = n_items

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        return torch.rand(len(users), self.n_items, device=users.device)


def bench_pipeline(device: torch.device) -> dict[str, Any]:
    spec = AtomicDataset(name="ml-100k", item_template="{movie_title} ({release_year}). Genres: {class}")
    load_s, dataset = timed(spec.load)
    with tempfile.TemporaryDirectory() as cache:
        build_s, split = timed(lambda: ColdItemScenario().build(dataset, 0))
        build_or_load(dataset, ColdItemScenario(), 0, cache)
        reload_s, _ = timed(lambda: build_or_load(dataset, ColdItemScenario(), 0, cache))
    scores = _RandomScores(split.n_items)
    eval_s, result = timed(lambda: Evaluator().evaluate(scores, split, "test", device))
    users = int(result.metrics["all"]["n_users"])
    return {
        "load_ml100k_s": load_s,
        "build_cold_item_split_s": build_s,
        "load_cached_split_s": reload_s,
        "evaluate_test_all_segments_s": eval_s,
        "evaluate_users_per_s": users * len(result.metrics) / eval_s,
    }


def compose_model(name: str, overrides: list[str], out: Path):
    """(model, split) of the preset ``model=name`` with ``overrides``, seed 0, split cached under ``out``."""
    from hydra import compose, initialize_config_module

    from recexp.config import build

    with initialize_config_module(config_module="recexp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", "logger=none", f"cache_dir={out / 'cache'}", *overrides])
    dataset = build(cfg.dataset).load()
    split = build_or_load(dataset, build(cfg.scenario), 0, out / "cache")
    torch.manual_seed(0)
    return build(cfg.model, trainer=build(cfg.trainer, progress=False)), split


def bench_model(name: str, overrides: list[str], device: torch.device, out: Path) -> dict[str, Any]:
    """Fit and evaluate one model preset on the default (random) split; report its cost ledger and NDCG@10."""
    model, split = compose_model(name, overrides, out)
    meter = CostMeter(device)
    with meter.phase("train"):
        model.fit(split, FitContext(NullLogger(), device, out / name, 0, progress=False))
    with meter.phase("eval"):
        test = Evaluator(ks=[10]).evaluate(model, split, "test", device)
    return {**meter.summary(model, split), "test_ndcg@10": test.metrics["all"]["ndcg@10"]}


FEWSHOT_TARGET_S = 180.0  # a K=256 cross-encoder run on 2 CPU cores


def bench_fewshot(out: Path) -> dict[str, Any]:
    """Wall time of a K=256 LoRA cross-encoder run on ``scenario=tallrec``, and of a ``user_rate`` run beside it."""
    report: dict[str, Any] = {"target_s": FEWSHOT_TARGET_S}
    for name, model in (("user_rate", ["model=user_rate"]), ("lm_classifier_lora", ["model=lm_classifier", "strategy=lora"])):
        run_dir = out / "fewshot" / name
        command = [sys.executable, "-m", "recexp", "scenario=tallrec", "scenario.shots=256", *model, "seed=0",
                   "logger=none", "progress=false", f"hydra.run.dir={run_dir}", f"cache_dir={out / 'cache'}"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        record = json.loads((run_dir / "results.json").read_text())
        report[name] = {"wall_s": time.perf_counter() - start, "test_auc": record["metrics"]["test"]["auc"],
                        "test_gauc": record["metrics"]["test"]["gauc"], "trainable_params": record["cost"]["trainable_params"]}
    cross = report["lm_classifier_lora"]["wall_s"]
    report["within_target"] = cross < FEWSHOT_TARGET_S
    report["ratio_to_user_rate"] = cross / report["user_rate"]["wall_s"]
    return report
