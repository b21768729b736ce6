"""``task=continual``: a model trained on time block 0, then updated block by block (``scenario=time_blocks``).

Update ``t`` (0 .. B-2) leaves a model that knows blocks 0 .. t; it is then evaluated on the test
half of every block ``j`` = 1 .. t+1 (``j = t+1``: the next, unseen block). ``R[t][j]`` is the
matrix of those results. Early stopping during update ``t`` reads block t+1's valid half.

Update rules (``task.update``): ``fine_tune`` continues from the previous weights on the new block
only; ``replay`` also adds a seeded uniform sample of ``replay_ratio`` of all earlier interactions;
``full_retrain`` starts from scratch on every block so far; ``window`` from scratch on the last
``window`` blocks; ``none`` trains once on block 0 and never again.

Updates train on whole blocks, test halves included, so ``R[t][j]`` for j <= t is measured on
interactions the model has trained on; ``train_on_tests=False`` keeps every test half out of
training, so each cell is a held-out result (the updates then see each later block's valid half only).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from recexp.costs import CostMeter
from recexp.errors import ConfigError, check_int, check_number
from recexp.evaluate import Evaluation, Evaluator, metric_key, parse_metric
from recexp.interfaces import TRAIN, Block, FitContext, Recommender, Split, Stage, TaskResult
from recexp.tasks.holdout import check_processes

UPDATES = ("fine_tune", "replay", "full_retrain", "window", "none")
PER_USER = "per_user_continual.csv.gz"


@dataclass(frozen=True)
class Continual:
    update: str = "fine_tune"  # fine_tune | replay | full_retrain | window | none
    replay_ratio: float = 0.2  # replay: share of all earlier interactions sampled into each update
    window: int = 2  # window: blocks each retrain sees, the newest ones
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@10"])  # matrix metrics; the first is reported
    save_model: bool = False  # write the final model to run_dir/model
    train_on_tests: bool = True  # False: no update trains on a test half, so every R[t][j] is held out

    def __post_init__(self):
        if self.update not in UPDATES:
            raise ConfigError(f"task.update={self.update!r} is unknown; choose one of {', '.join(UPDATES)}.")
        check_number("task.replay_ratio", self.replay_ratio, low=0, high=1)
        check_int("task.window", self.window, 1)
        if not isinstance(self.train_on_tests, bool):
            raise ConfigError(f"task.train_on_tests={self.train_on_tests!r} is not allowed: it must be true or false.")
        if not self.metrics:
            raise ConfigError("task.metrics is empty; name at least one metric, e.g. [ndcg@10].")
        for name in self.metrics:
            parse_metric(name)

    def stages(self, split: Split) -> dict[str, Stage]:
        """``valid`` (the last update's early-stopping stage) and every block's ``test_j``."""
        n = n_blocks(split)
        if self.update == "window" and self.window > n - 1:
            raise ConfigError(
                f"task.window={self.window} is larger than the {n - 1} blocks any update can see "
                f"(scenario.blocks={n}); use task.window <= {n - 1}."
            )
        return {"valid": split.stage(block(split, n - 1).valid), **{b.test: split.stage(b.test) for b in split.blocks}}

    def run(self, make_model: Callable[[], Recommender], split: Split, evaluator: Evaluator, ctx: FitContext) -> TaskResult:
        n = n_blocks(split)
        total, logger, model = CostMeter(ctx.device), StepLogger(ctx.logger), None
        rows: list[dict[str, Evaluation]] = []
        updates: list[dict[str, Any]] = []
        for t in range(n - 1):
            view = update_view(split, t, self.train_frame(split, t, ctx.seed))
            fresh = model is None or self.update in ("full_retrain", "window")
            if fresh:
                torch.manual_seed(ctx.seed)  # every fresh model starts as a one-off holdout run would
                model = make_model()
                check_processes(model, ctx)
            meter = CostMeter(ctx.device)
            trains = fresh or self.update != "none"
            with total.phase("train"), meter.phase("train"):
                if trains:
                    model.fit(view, ctx.with_logger(logger.next_update()))
                else:
                    model.attach(view, ctx.device)
            with total.phase("eval"):
                row = {b.test: evaluator.evaluate(model, view, b.test, ctx.device) for b in split.blocks[: t + 1]}
            rows.append(row)
            updates.append(update_cost(t, model, view, meter, trains))
            logger.log_update(t, row, self.metrics, block(split, t + 1).test)
        if ctx.is_main and self.save_model and model.saveable:
            model.save(ctx.run_dir / "model")
        with total.phase("eval"):
            last = {"valid": evaluator.evaluate(model, view, "valid", ctx.device), **rows[-1]}
        if ctx.is_main:
            save_cells(ctx.run_dir / PER_USER, rows)
        section = summarise(rows, self.metrics, split, updates, self.update) | {"train_on_tests": self.train_on_tests}
        cost = {**total.summary(model, view, ctx.world_size), "updates": updates,
                "train_interactions": sum(u["train_interactions"] for u in updates)}
        return TaskResult(last, cost, model.effective(), {"continual": section})

    def train_frame(self, split: Split, t: int, seed: int) -> pd.DataFrame:
        """What update ``t`` trains on, by the update rule."""
        blocks = [block_frame(split, b, self.train_on_tests) for b in range(t + 1)]
        if t == 0 or self.update in ("full_retrain", "none"):
            return pd.concat(blocks, ignore_index=True)
        if self.update == "window":
            return pd.concat(blocks[-self.window :], ignore_index=True)
        if self.update == "replay":
            earlier = pd.concat(blocks[:-1], ignore_index=True)
            rng = np.random.default_rng([seed, t])
            sample = earlier.iloc[np.sort(rng.choice(len(earlier), round(self.replay_ratio * len(earlier)), replace=False))]
            return pd.concat([sample, blocks[-1]], ignore_index=True)
        return blocks[-1]


def n_blocks(split: Split) -> int:
    """The split's time blocks, its base (the ``train`` part) included."""
    if not split.blocks:
        raise ConfigError("task=continual needs a split of time blocks: use scenario=time_blocks.")
    return len(split.blocks) + 1


def block(split: Split, j: int) -> Block:
    """Block ``j`` >= 1 of ``split`` (block 0 is its base, the ``train`` part)."""
    return split.blocks[j - 1]


def block_frame(split: Split, b: int, with_test: bool = True) -> pd.DataFrame:
    """The interactions of block ``b``: for b >= 1 its valid half, and its test half unless ``with_test`` is False."""
    if b == 0:
        return split.train
    halves = (block(split, b).valid, *([block(split, b).test] if with_test else []))
    return pd.concat([split.positives(stage) for stage in halves], ignore_index=True)


def update_view(split: Split, t: int, train: pd.DataFrame) -> Split:
    """The holdout-shaped split update ``t`` fits on: ``train``, early stopping on block t+1's valid
    half (stage ``valid``), and the test stages of blocks 1 .. t+1."""
    stages = {"valid": split.stage(block(split, t + 1).valid)}
    stages |= {b.test: split.stage(b.test) for b in split.blocks[: t + 1]}
    return Split(split.dataset, {**split.parts, TRAIN: train}, stages, split.hash, split.path, split.info)


def update_cost(t: int, model: Any, view: Split, meter: CostMeter, trained: bool) -> dict[str, Any]:
    """Update ``t``'s figures. samples_seen: the model's own count, else one pass over the update's interactions
    (none for a model with nothing to train: a baseline that only counts or reads)."""
    trainable, _ = model.parameter_counts()
    seen = model.cost_extras().get("samples_seen", len(view.train) if trainable else 0) if trained else 0
    return {"update": t, "trained": trained, "train_seconds": meter.seconds.get("train", 0.0),
            "trainable_params": int(trainable), "samples_seen": int(seen) if trained else 0,
            "train_interactions": len(view.train) if trained else 0}


def summarise(rows, metrics: list[str], split: Split, updates: list[dict], rule: str) -> dict[str, Any]:
    """The ``continual`` section of results.json: matrices, average next-block, BWT and forgetting."""
    matrices = {m: matrix(rows, m, [b.test for b in split.blocks]) for m in metrics}
    primary = metrics[0]
    return {
        "metric": primary,
        "update": rule,
        "blocks": split.info.get("blocks"),
        "block_starts": split.info.get("block_starts"),
        "matrix": matrices[primary],
        "average": average_next(matrices[primary]),
        "bwt": backward_transfer(matrices[primary]),
        "forgetting": forgetting(matrices[primary]),
        "matrices": {m: {"matrix": r, "average": average_next(r), "bwt": backward_transfer(r), "forgetting": forgetting(r)}
                     for m, r in matrices.items()},
        "updates": updates,
    }


def matrix(rows: list[dict[str, Evaluation]], metric: str, tests: list[str]) -> list[list[float | None]]:
    """R[t][j-1] = ``metric`` (segment all) after update t on block j's test half (stage ``tests[j-1]``); None where
    not evaluated."""
    spec, k = parse_metric(metric)
    key = metric_key(spec, k)
    out = []
    for row in rows:
        cells = []
        for test in tests:
            evaluation = row.get(test)
            value = evaluation.metrics.get("all", {}).get(key) if evaluation is not None else None
            cells.append(None if value is None or not math.isfinite(value) else float(value))
        out.append(cells)
    return out


def average_next(r: list[list[float | None]]) -> float | None:
    """Mean of R[t][t+1]: each update on the block that follows it (the ADER/ASMG figure)."""
    values = [row[t] for t, row in enumerate(r) if row[t] is not None]
    return float(np.mean(values)) if values else None


def backward_transfer(r: list[list[float | None]]) -> float | None:
    """BWT = mean over blocks j < last of (R[last][j] - R[j-1][j]): how later updates changed old results."""
    last = r[-1]
    diffs = [last[j] - r[j][j] for j in range(len(r) - 1) if last[j] is not None and r[j][j] is not None]
    return float(np.mean(diffs)) if diffs else None


def forgetting(r: list[list[float | None]]) -> float | None:
    """Average forgetting (Chaudhry et al. 2018): for each block j < last, its best value before the
    last update minus its final value, averaged over blocks."""
    last = r[-1]
    drops = []
    for j in range(len(r) - 1):
        earlier = [r[t][j] for t in range(j, len(r) - 1) if r[t][j] is not None]
        if earlier and last[j] is not None:
            drops.append(max(earlier) - last[j])
    return float(np.mean(drops)) if drops else None


def save_cells(path, rows: list[dict[str, Evaluation]]) -> None:
    """Per-user values of every (update, block) cell: columns update, stage, segment, user, metrics."""
    frames = [ev.per_user.assign(update=t, stage=stage) for t, row in enumerate(rows) for stage, ev in row.items()]
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)


class StepLogger:
    """Keeps W&B steps increasing across updates (each fit counts its own steps from 0) and logs each
    update's matrix row with ``update`` as its x-axis."""

    def __init__(self, logger: Any):
        self.logger, self.offset, self.seen = logger, 0, -1

    def next_update(self) -> StepLogger:
        self.offset = self.seen + 1
        return self

    def log(self, metrics, step=None) -> None:
        step = self.offset + (step or 0)
        self.seen = max(self.seen, step)
        self.logger.log(metrics, step=step)

    def summary(self, metrics) -> None:
        self.logger.summary(metrics)

    def finish(self, exit_code: int = 0) -> None:
        self.logger.finish(exit_code)

    def log_update(self, t: int, row: dict[str, Evaluation], metrics: list[str], next_test: str) -> None:
        """``next_test``: the test stage of block t+1, the block after those update ``t`` has trained on."""
        values: dict[str, float] = {"update": t}
        for stage, evaluation in row.items():
            for name in metrics:
                spec, k = parse_metric(name)
                value = evaluation.metrics.get("all", {}).get(metric_key(spec, k))
                if value is not None:
                    values[f"continual/{stage}/{name}"] = value
                    if stage == next_test:
                        values[f"continual/next/{name}"] = value
        self.next_update().log(values)
