"""Pieces shared by the scenarios: per-user ratio splits, popularity segments, sanity checks."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from recexp.errors import ConfigError, DataError
from recexp.interfaces import Dataset, Split


def check_ratios(ratios: list[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ConfigError(f"scenario.ratios must be three non-negative numbers summing to 1, got {ratios}.")
    return ratios


def ratio_counts(total: int, ratios: list[float]) -> list[int]:
    """RecBole's per-group counts: floor for valid/test, at least one each when the ratio asks for it."""
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def per_user_random_split(
    inter: pd.DataFrame, ratios: list[float], rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle all interactions, then cut each user's list by ``ratios`` (RecBole's RS + RO protocol)."""
    shuffled = inter.iloc[rng.permutation(len(inter))]
    stage = np.empty(len(shuffled), dtype=np.int8)
    users = shuffled["user"].to_numpy()
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        train_n, valid_n, _ = ratio_counts(len(group), ratios)
        stage[group[:train_n]] = 0
        stage[group[train_n : train_n + valid_n]] = 1
        stage[group[train_n + valid_n :]] = 2
    parts = [shuffled[stage == s].reset_index(drop=True) for s in range(3)]
    return parts[0], parts[1], parts[2]


def head_items(train: pd.DataFrame, n_items: int, head_fraction: float) -> np.ndarray:
    """The most popular ``head_fraction`` of the items that occur in training (ties: lower id first)."""
    if not 0 < head_fraction < 1:
        raise ConfigError(f"scenario.head_fraction must lie in (0, 1), got {head_fraction}.")
    counts = np.bincount(train["item"].to_numpy(), minlength=n_items)
    seen = int((counts > 0).sum())
    order = np.lexsort((np.arange(n_items), -counts))
    return np.sort(order[: math.ceil(head_fraction * seen)])


def popularity_segments(candidates: np.ndarray, head: np.ndarray) -> dict[str, np.ndarray]:
    is_head = np.isin(candidates, head)
    return {"all": candidates, "head": candidates[is_head], "tail": candidates[~is_head]}


def require_nonempty(scenario: str, **frames: pd.DataFrame) -> None:
    for stage, frame in frames.items():
        if len(frame) == 0:
            raise DataError(
                f"Scenario {scenario!r} left the {stage} split empty; the dataset is too small for the "
                f"configured ratios/fractions. Raise the {stage} share or use a larger dataset."
            )


def full_ranking_split(
    dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, head_fraction: float, **info
) -> Split:
    """A split whose valid and test stages rank every item, with all/head/tail segments."""
    everything = np.arange(dataset.n_items)
    segments = popularity_segments(everything, head_items(train, dataset.n_items, head_fraction))
    return Split(
        dataset=dataset,
        train=train,
        valid=valid,
        test=test,
        candidates={"valid": everything, "test": everything},
        segments={"valid": segments, "test": segments},
        info=info,
    )
