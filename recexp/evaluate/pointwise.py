"""Pointwise evaluation of one stage: the model scores each labelled (user, item) pair, per segment.

Scores come from the model's own ``score_pairs(users, items, stage)`` where that is not None, else
they are read off its full-ranking ``score``. The model's ``pointwise_output`` ("score" by default,
"probability" or "rating") decides which metrics apply: logloss needs probabilities, rmse/mae
predicted ratings; the others take any score.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from recexp.evaluate.metrics import Metric
from recexp.evaluate.ranking import check_scores
from recexp.interfaces import Scorer, Split


def pair_scores(
    model: Scorer, users: np.ndarray, items: np.ndarray, stage: str, device: torch.device, batch_size: int
) -> np.ndarray:
    """users [N], items [N] -> [N] float64 scores of ``model`` at ``stage``."""
    scorer = model.score_pairs
    if scorer is not None:
        size = batch_size * 64
        parts = [
            scorer(torch.tensor(users[i : i + size], device=device), torch.tensor(items[i : i + size], device=device), stage)
            .detach().float().cpu().numpy()
            for i in range(0, len(users), size)
        ]
        scores = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
        check_scores(torch.from_numpy(scores[None]), model, stage)
        return scores
    out = scores_read_off(model.score, users, items, stage, device, batch_size)
    check_scores(torch.from_numpy(out[None]), model, stage)
    return out


def scores_read_off(
    score: Callable[[torch.Tensor, str], torch.Tensor], users: np.ndarray, items: np.ndarray, stage: str,
    device: torch.device, batch_size: int,
) -> np.ndarray:
    """users [N], items [N] -> [N] float64 pair scores read off full scores ``score(users [B], stage) -> [B,
    n_items]``, ``batch_size`` distinct users at a time."""
    out = np.empty(len(users), dtype=np.float64)
    distinct, row_of = np.unique(users, return_inverse=True)
    with torch.no_grad():
        for start in range(0, len(distinct), batch_size):
            chunk = distinct[start : start + batch_size]
            scores = score(torch.tensor(chunk, device=device), stage).float().cpu().numpy()
            rows = np.flatnonzero((row_of >= start) & (row_of < start + len(chunk)))
            out[rows] = scores[row_of[rows] - start, items[rows]]
    return out


def evaluate_pairs(
    model: Scorer,
    split: Split,
    stage: str,
    segments: tuple[str, ...],
    metrics: list[Metric],
    device: torch.device,
    batch_size: int,
    shard: tuple[int, int] | None = None,
) -> tuple[dict[str, tuple[dict[str, float], pd.DataFrame]], pd.DataFrame | None]:
    """-> ({segment: (mean metrics, per-user frame with columns segment, user, n_pairs, <metric>...)},
    every scored pair: columns user, item (internal ids), label, rating, score; None without pairs).

    ``shard=(rank, world)`` keeps the pairs of users with ``user % world == rank``.
    """
    output = model.pointwise_output
    usable = [m for m in metrics if m.needs is None or m.needs == output]
    pairs = split.pairs(stage)
    if shard is not None and pairs is not None:
        pairs = pairs[pairs["user"].to_numpy() % shard[1] == shard[0]]
    if not usable or pairs is None or len(pairs) == 0:
        return {}, None
    users, items = pairs["user"].to_numpy(), pairs["item"].to_numpy()
    scored = pd.DataFrame(
        {
            "user": users,
            "item": items,
            "label": pairs["label"].to_numpy(dtype=np.float64),
            "rating": pairs["rating"].to_numpy(dtype=np.float64),
            "score": pair_scores(model, users, items, stage, device, batch_size),
        }
    )
    spec = split.stage(stage)
    out = {}
    for name in segments:
        if name in spec.user_segments:
            chosen = scored[np.isin(users, spec.user_segments[name])]
        else:
            chosen = scored if name == "all" else scored[np.isin(items, spec.segments[name])]
        if len(chosen):
            out[name] = _summarise(name, chosen, usable, split.dataset.user_tokens)
    return out, scored


def raw_pairs(scored: pd.DataFrame | None, split: Split) -> pd.DataFrame | None:
    """Scored pairs with the dataset's raw ids: columns user_id, item_id, label, score (what a run saves)."""
    if scored is None:
        return None
    return pd.DataFrame(
        {
            "user_id": split.dataset.user_tokens[scored["user"].to_numpy()],
            "item_id": split.dataset.item_tokens[scored["item"].to_numpy()],
            "label": scored["label"].to_numpy(),
            "score": scored["score"].to_numpy(),
        }
    )


def _summarise(segment: str, pairs: pd.DataFrame, metrics: list[Metric], user_tokens: np.ndarray):
    values: dict[str, float] = {}
    per_user = pd.DataFrame({"n_pairs": pairs.groupby("user", sort=True).size()})
    for metric in metrics:
        value, by_user = metric.fn(pairs)
        values[metric.name] = value
        if by_user is not None:
            per_user[metric.name] = by_user
    values["n_pairs"] = float(len(pairs))
    per_user = per_user.reset_index(names="user")
    per_user["user"] = user_tokens[per_user["user"].to_numpy()]
    per_user.insert(0, "segment", segment)
    return values, per_user
