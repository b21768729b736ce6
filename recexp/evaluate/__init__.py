"""One evaluator for every model: full ranking and labelled pairs of any stage, per segment.

Metrics come from the one registry in :mod:`recexp.evaluate.metrics`; ranking lives in
:mod:`~recexp.evaluate.ranking`, pairs in :mod:`~recexp.evaluate.pointwise`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError, check_int, is_int
from recexp.evaluate.computable import not_computed
from recexp.evaluate.metrics import METRICS, higher_is_better, metric_key, parse_metric
from recexp.evaluate.pointwise import evaluate_pairs, raw_pairs
from recexp.evaluate.ranking import FULL, rank_stage
from recexp.interfaces import Scorer, Split

__all__ = ["Evaluation", "Evaluator", "METRICS", "cache_sized_batch", "higher_is_better", "metric_key", "parse_metric"]

ALL = "all"  # evaluator.metrics=all: every metric each stage and model can compute, none asked for by name
CACHE_SCORES = 1 << 19  # 2 MB of float32: a CPU batch of this many scores is ranked while it is still in cache


def cache_sized_batch(n_items: int, device: torch.device, most: int) -> int:
    """Users a validation batch scores: at most ``most``, and on CPU at most what fills :data:`CACHE_SCORES` (at
    Scientific's 4,385 items, 119 users a batch validate a BPR in about 0.7x the time of 512)."""
    return most if device.type != "cpu" else max(1, min(most, CACHE_SCORES // max(n_items, 1)))


@dataclass
class Evaluation:
    """Mean metrics per segment (``{segment: {"ndcg@10": ..., "auc": ...}}``) and the per-user values behind them."""

    metrics: dict[str, dict[str, float]]
    per_user_table: Callable[[], pd.DataFrame] = field(repr=False, default=pd.DataFrame)  # builds ``per_user``
    topk: dict[str, np.ndarray] = field(default_factory=dict)  # segment -> [U, maxK] item ids
    users: dict[str, np.ndarray] = field(default_factory=dict)  # segment -> [U] user ids
    pairs: pd.DataFrame | None = None  # every scored labelled pair: user_id, item_id (raw tokens), label, score
    not_computed: dict[str, dict[str, str]] = field(default_factory=dict)  # segment -> {asked-for metric: why not}

    @cached_property
    def per_user(self) -> pd.DataFrame:
        """Columns segment, user, n_pos, <metric@k>..., n_pairs, <pointwise metric>...: built when first read, as
        validation reads only ``metrics``."""
        return self.per_user_table()


@dataclass(frozen=True)
class Evaluator:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])  # cut-offs K
    metrics: list[str] | str = ALL  # metric names (each one asked for), or all: every metric a stage and model can compute
    batch_size: int = 512  # users scored per batch
    tie_seed: int = 0  # equal scores are ordered by a fixed random item permutation drawn from this seed
    tail_view: str = "both"  # item segments as a restricted ranking (`tail`), the full ranking (`tail_full`), or both
    mask_history: bool = True  # remove the items of a user's history from their ranking (false: RecBole's sequential models)
    asked: list[str] = field(init=False, default_factory=list)  # the metrics named (none under all): each is recorded
    # where a stage or segment cannot compute it (Evaluation.not_computed)

    def __post_init__(self):
        ks = [self.ks] if isinstance(self.ks, int) else _as_list(self.ks)
        if not ks or any(not is_int(k) or k < 1 for k in ks):
            raise ConfigError(f"evaluator.ks must be a list of positive integers such as [10,20], got {self.ks}.")
        every = self.metrics == ALL
        metrics = list(METRICS) if every else [self.metrics] if isinstance(self.metrics, str) else _as_list(self.metrics)
        unknown = sorted({str(m) for m in metrics} - set(METRICS))
        if unknown or not metrics:
            what = f"Unknown evaluator metrics {unknown}" if unknown else "evaluator.metrics is empty"
            raise ConfigError(f"{what}; choose from {', '.join(METRICS)}, or all.")
        check_int("evaluator.batch_size", self.batch_size, 1)
        check_int("evaluator.tie_seed", self.tie_seed, 0)
        if not isinstance(self.mask_history, bool):
            raise ConfigError(f"evaluator.mask_history must be true or false, got {self.mask_history!r}.")
        if self.tail_view not in TAIL_VIEWS:
            raise ConfigError(f"evaluator.tail_view={self.tail_view!r} is unknown; choose one of {', '.join(TAIL_VIEWS)}.")
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "asked", [] if every else list(dict.fromkeys(metrics)))

    def evaluate(
        self,
        model: Scorer,
        split: Split,
        stage: str,
        device: torch.device | str = "cpu",
        segments: tuple[str, ...] | None = None,
        progress: bool = False,
        shard: tuple[int, int] | None = None,
        item_columns: torch.Tensor | None = None,
    ) -> Evaluation:
        """Rank ``stage``'s positives and score its labelled pairs, for each requested segment; each metric asked
        for by name that a segment cannot compute goes to ``not_computed`` with the reason.

        ``shard=(rank, world)`` keeps only the users with ``user % world == rank`` (one process's share).
        ``item_columns`` [n_items]: the column of each item in the rows ``model.score`` gives, for a model that
        scores in an order of its own (None: column j is item j); only rankings read such rows.
        """
        device = torch.device(device)
        spec = split.stage(stage)
        asked = tuple(segments or spec.segment_names or ("all",))
        names = segment_views(asked, spec.segments, self.tail_view)
        chosen = [METRICS[m] for m in self.metrics]
        if item_columns is not None and not all(m.at_k for m in chosen):
            raise ValueError("item_columns reorders ranked rows only; pair metrics read scores in item order.")
        ranked = {}
        if spec.positives is not None and any(m.at_k for m in chosen):
            ranked = rank_stage(
                model, split, stage, names, [m for m in chosen if m.at_k], self.ks, self.batch_size, self.tie_seed,
                device, progress, shard, self.mask_history, item_columns,
            )
        pointwise, scored = evaluate_pairs(
            model, split, stage, asked, [m for m in chosen if not m.at_k], device, self.batch_size, shard
        )
        evaluation = _combine(tuple(dict.fromkeys((*names, *asked))), ranked, pointwise)
        evaluation.pairs = raw_pairs(scored, split)
        evaluation.not_computed = not_computed([METRICS[m] for m in self.asked], self.ks, stage, spec, model, names, asked,
                                               evaluation.metrics)
        return evaluation

    def value(self, model: Scorer, split: Split, stage: str, key: str, device: torch.device | str = "cpu",
              item_columns: torch.Tensor | None = None) -> float:
        """One metric (``ndcg@10``, ``auc`` ...) on the ``all`` segment of ``stage``: what early stopping reads.
        ``item_columns``: as in :meth:`evaluate`, for a ranking metric."""
        metric, k = parse_metric(key)
        single = Evaluator(ks=[k or 1], metrics=[metric.name], batch_size=self.batch_size, tie_seed=self.tie_seed,
                           mask_history=self.mask_history)
        evaluation = single.evaluate(model, split, stage, device, segments=("all",), item_columns=item_columns)
        values = evaluation.metrics.get("all", {})
        name = metric_key(metric, k)
        if name not in values:
            raise ConfigError(
                f"{key} cannot be computed on stage {stage!r}: it has "
                f"{'ranking targets' if split.stage(stage).positives else 'no ranking targets'} and "
                f"{'labelled pairs' if split.stage(stage).pairs else 'no labelled pairs'}"
                f"{'' if metric.needs is None else f', and it needs a model that predicts a {metric.needs}'}."
                " Choose another trainer.valid_metric (e.g. ndcg@10, or auc with scenario.label_threshold set)."
            )
        return values[name]


TAIL_VIEWS = ("restricted", "full", "both")


def segment_views(names: tuple[str, ...], item_segments: dict, tail_view: str) -> tuple[str, ...]:
    """The ranked segment names: each item segment other than ``all`` as ``name`` (restricted ranking)
    and/or ``name_full`` (full ranking, only its positives counted); ``all`` and user segments as they are."""
    out: list[str] = []
    for name in names:
        if name in item_segments and name != "all":
            out += [name] * (tail_view != "full") + [name + FULL] * (tail_view != "restricted")
        else:
            out.append(name)
    return tuple(out)


def _as_list(value: object) -> list:
    """A list of the items of a list-like config value; [] for anything else (a string, a number, null)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _combine(names, ranked, pointwise) -> Evaluation:
    metrics, topk, users = {}, {}, {}
    for name in names:
        values: dict[str, float] = {}
        if name in ranked:
            values.update(ranked[name].metrics)
            topk[name], users[name] = ranked[name].topk, ranked[name].users
        if name in pointwise:
            values.update(pointwise[name][0])
        if values:
            metrics[name] = values
    return Evaluation(metrics=metrics, per_user_table=lambda: _per_user(metrics, ranked, pointwise), topk=topk, users=users)


def _per_user(names, ranked, pointwise) -> pd.DataFrame:
    """The per-user tables of the segments ``names``, ranked and pointwise values side by side, one under another."""
    frames = []
    for name in names:
        per_user = ranked[name].per_user if name in ranked else None
        if name in pointwise:
            extra = pointwise[name][1]
            per_user = extra if per_user is None else per_user.merge(extra, on=["segment", "user"], how="outer")
        frames.append(per_user)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

