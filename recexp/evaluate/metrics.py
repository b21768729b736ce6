"""The one metric registry: every metric's kind, direction and function, read by the evaluator,
early stopping, the run record, ``recexp-compare`` and W&B.

Kinds and the function each registers:

* ``ranking``: per user, from the top-K hits: ``fn(hits [U, K] bool, pos_len [U], k) -> [U]``;
* ``list``: per user, from the top-K item ids: ``fn(topk [U, K], context, k) -> [U]``;
* ``catalog``: one value over all users' top-K lists: ``fn(topk [U, K] ndarray, n_candidates) -> float``;
* ``exposure``: one value per stage from the ``all`` segment's lists and hits, split by the stage's
  head/tail items: ``fn(topk [U, K] ndarray, hits [U, K] ndarray, users [U], context, k) -> float``
  (popularity-bias metrics PopREO and PopRSP);
* ``pointwise``: on labelled pairs: ``fn(pairs) -> (value, per-user values [n_users] or None)``,
  where ``pairs`` has columns user, label, score (and rating). ``needs`` names the model output it
  requires ("probability" for logloss, "rating" for rmse/mae; None: any score).

Names are written ``metric@K`` for the top-K kinds and bare for pointwise ones (``ndcg@10``, ``auc``).
The order of registration is that of ``evaluator.metrics=all``, and so of a record's keys and per-user columns.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError

KINDS = ("ranking", "list", "catalog", "exposure", "pointwise")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # one of KINDS
    higher_is_better: bool
    fn: Callable
    needs: str | None = None  # pointwise only: the model output it needs ("probability" | "rating")
    per_user: bool = True  # one value per user is saved (paired significance tests need it)
    pooled: bool = False  # the value pools every pair or list, not the mean of the per-user values

    @property
    def at_k(self) -> bool:
        return self.kind != "pointwise"


METRICS: dict[str, Metric] = {}


def register(
    name: str, kind: str, higher_is_better: bool = True, needs: str | None = None, per_user: bool | None = None,
    pooled: bool | None = None,
) -> Callable:
    """Decorator adding ``fn`` to :data:`METRICS` under ``name``; a second use of a name is an error."""
    if kind not in KINDS:
        raise ValueError(f"metric kind {kind!r} is not one of {KINDS}")

    def add(fn: Callable) -> Callable:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        per = kind not in ("catalog", "exposure") if per_user is None else per_user
        METRICS[name] = Metric(name, kind, higher_is_better, fn, needs, per, not per if pooled is None else pooled)
        return fn

    return add


def parse_metric(text: str) -> tuple[Metric, int | None]:
    """``'ndcg@10'`` -> (ndcg, 10); ``'auc'`` -> (auc, None). A ConfigError names what is wrong."""
    base, at, k = str(text).strip().partition("@")
    metric = METRICS.get(base.lower())
    if metric is None:
        raise ConfigError(f"{text!r} is not a known metric; choose from {', '.join(METRICS)} (e.g. ndcg@10, auc).")
    if metric.at_k and not (at and k.isdigit() and int(k) >= 1):
        raise ConfigError(f"{text!r}: {metric.name} needs a cut-off, written {metric.name}@K with K >= 1 (e.g. {metric.name}@10).")
    if not metric.at_k and at:
        raise ConfigError(f"{text!r}: {metric.name} is computed on labelled pairs and takes no @K; write {metric.name}.")
    return metric, (int(k) if metric.at_k else None)


def metric_key(metric: Metric, k: int | None) -> str:
    return f"{metric.name}@{k}" if k is not None else metric.name


def higher_is_better(key: str) -> bool:
    """Direction of a recorded metric key such as ``gini@10`` or ``logloss``."""
    return parse_metric(key)[0].higher_is_better


def is_metric_key(key: str) -> bool:
    try:
        parse_metric(key)
    except ConfigError:
        return False
    return True


# --- ranking: hits [U, K] bool (rank order), pos_len [U] -> per-user values [U] at cut-off k


@register("recall", "ranking")
def recall(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(1) / pos_len


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


@register("ndcg", "ranking")
def ndcg(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].double() * disc).sum(1)
    ideal_len = torch.clamp(pos_len, max=k).long()
    idcg = torch.cumsum(disc, 0)[ideal_len - 1]
    return dcg / idcg


@register("mrr", "ranking")
def mrr(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k]
    first = top.double().argmax(1)
    return torch.where(top.any(1), 1.0 / (first + 1).double(), torch.zeros_like(first, dtype=torch.float64))


@register("hit", "ranking")
def hit(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].any(1).double()


@register("precision", "ranking")
def precision(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(1) / k


@register("map", "ranking")
def average_precision(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k].double()
    precision_at = top.cumsum(1) / torch.arange(1, k + 1, device=hits.device, dtype=torch.float64)
    return (precision_at * top).sum(1) / torch.clamp(pos_len, max=k)


# --- catalog: one value from every user's top-K list


@register("itemcoverage", "catalog")
def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Distinct recommended items over the items that could be recommended."""
    return len(np.unique(topk[topk >= 0])) / n_items


@register("gini", "catalog", higher_is_better=False)
def gini_index(topk: np.ndarray, n_items: int) -> float:
    """Inequality of how often items are recommended (0 = even, 1 = one item), as RecBole computes it."""
    filled = topk[topk >= 0]
    counts = np.sort(np.unique(filled, return_counts=True)[1])
    idx = np.arange(n_items - len(counts) + 1, n_items + 1)
    return float(np.sum((2 * idx - n_items - 1) * counts) / filled.size / n_items)


# --- list: per-user values from the top-K ids [U, K] (-1 marks an empty slot: fewer than K rankable items)


@dataclass
class ListContext:
    popularity: torch.Tensor  # [n_items] training interactions per item
    is_tail: torch.Tensor  # [n_items] bool, outside the stage's head segment


def _slot_mean(values: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    filled = topk >= 0
    return (values.double() * filled).sum(1) / filled.sum(1).clamp(min=1)


@register("averagepopularity", "list", higher_is_better=False)
def average_popularity(topk: torch.Tensor, context: ListContext, k: int) -> torch.Tensor:
    """Per-user mean training popularity of the top-k items: ARP, the Average Recommendation Popularity of
    Abdollahpouri et al. (mean over users of ``sum_{i in L_u} phi(i) / |L_u|``, ``phi(i)`` = training
    interactions of item i); RecBole's AveragePopularity."""
    return _slot_mean(context.popularity[topk[:, :k].clamp(min=0)], topk[:, :k])


@register("aplt", "list")
def aplt(topk: torch.Tensor, context: ListContext, k: int) -> torch.Tensor:
    """Per-user share of the top-k items that are tail items (APLT; RecBole's TailPercentage)."""
    return _slot_mean(context.is_tail[topk[:, :k].clamp(min=0)], topk[:, :k])


# --- exposure: one value per stage, from the `all` lists split into the stage's head and tail items


@dataclass
class ExposureContext:
    """Per-user counts by popularity group (column 0: head, 1: tail), indexed by internal user id."""

    is_head: np.ndarray  # [n_items] bool: the stage's head segment
    positives: np.ndarray  # [n_users, 2] the user's positives among the candidates, per group
    rankable: np.ndarray  # [n_users, 2] candidates not in the user's history (what could be listed), per group


def _group_ratio_spread(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """std / mean (population std) of the per-group ratios numerator / denominator; NaN when undefined."""
    if (denominators <= 0).any():
        return float("nan")
    ratios = numerators / denominators
    return float(np.std(ratios) / ratios.mean()) if ratios.mean() > 0 else float("nan")


@register("popreo", "exposure", higher_is_better=False)
def pop_reo(topk: np.ndarray, hits: np.ndarray, users: np.ndarray, context: ExposureContext, k: int) -> float:
    """Popularity-biased Ranking-based Equal Opportunity (Zhu et al. 2021): per group g (head, tail),
    ``P(R@k | g, y=1)`` = the group's test positives found in the top-k over its test positives, summed
    over users; PopREO = std / mean of the two (0 = equal recall for head and tail items)."""
    top, hit = topk[:, :k], hits[:, :k].astype(bool)
    head = (top >= 0) & context.is_head[top.clip(min=0)]
    found = np.array([(hit & head).sum(), (hit & ~head).sum()], dtype=np.float64)
    return _group_ratio_spread(found, context.positives[users].sum(0).astype(np.float64))


@register("poprsp", "exposure", higher_is_better=False)
def pop_rsp(topk: np.ndarray, hits: np.ndarray, users: np.ndarray, context: ExposureContext, k: int) -> float:
    """Popularity-biased Ranking-based Statistical Parity (Zhu et al. 2021): per group g (head, tail),
    ``P(R@k | g)`` = the group's items in the top-k lists over the group's items each user could be shown
    (candidates outside the user's history), summed over users; PopRSP = std / mean of the two
    (0 = head and tail items are listed at the same rate)."""
    top = topk[:, :k]
    filled = top >= 0
    head = filled & context.is_head[top.clip(min=0)]
    listed = np.array([head.sum(), (filled & ~head).sum()], dtype=np.float64)
    return _group_ratio_spread(listed, context.rankable[users].sum(0).astype(np.float64))


# --- pointwise: pairs frame (user, label, score[, rating]) -> (value, per-user values or None)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties share their mean rank); NaN without both classes."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: importing scipy.stats takes 0.6 s, and ranking runs never call it

    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@register("auc", "pointwise", per_user=False)
def auc(pairs: pd.DataFrame) -> tuple[float, None]:
    """AUC over all pairs pooled."""
    return roc_auc(pairs["label"].to_numpy(), pairs["score"].to_numpy()), None


@register("gauc", "pointwise")
def gauc(pairs: pd.DataFrame) -> tuple[float, pd.Series]:
    """AUC per user, averaged (unweighted) over the users who have both labels."""
    per_user = pairs.groupby("user", sort=True).apply(
        lambda g: roc_auc(g["label"].to_numpy(), g["score"].to_numpy()), include_groups=False
    )
    valid = per_user.dropna()
    return (float(valid.mean()) if len(valid) else float("nan")), per_user


def _per_user_mean(pairs: pd.DataFrame, values: np.ndarray) -> pd.Series:
    return pd.Series(values, index=pairs["user"].to_numpy()).groupby(level=0, sort=True).mean()


LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps]


@register("logloss", "pointwise", higher_is_better=False, needs="probability", pooled=True)
def logloss(pairs: pd.DataFrame) -> tuple[float, pd.Series]:
    """Mean binary cross-entropy of P(label = 1)."""
    probs = np.clip(pairs["score"].to_numpy(dtype=np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    labels = pairs["label"].to_numpy(dtype=np.float64)
    losses = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    return float(losses.mean()), _per_user_mean(pairs, losses)


@register("rmse", "pointwise", higher_is_better=False, needs="rating", pooled=True)
def rmse(pairs: pd.DataFrame) -> tuple[float, pd.Series]:
    """Root mean squared error of predicted ratings (per user: that user's RMSE)."""
    squared = (pairs["score"].to_numpy(dtype=np.float64) - pairs["rating"].to_numpy(dtype=np.float64)) ** 2
    return float(np.sqrt(squared.mean())), np.sqrt(_per_user_mean(pairs, squared))


@register("mae", "pointwise", higher_is_better=False, needs="rating", pooled=True)
def mae(pairs: pd.DataFrame) -> tuple[float, pd.Series]:
    """Mean absolute error of predicted ratings."""
    errors = np.abs(pairs["score"].to_numpy(dtype=np.float64) - pairs["rating"].to_numpy(dtype=np.float64))
    return float(errors.mean()), _per_user_mean(pairs, errors)
