"""Pieces shared by the scenarios: per-user ratio splits, popularity segments, sanity checks."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from recexp.errors import ConfigError, DataError, check_int, check_number, is_number
from recexp.interfaces import TRAIN, Dataset, Split, Stage


def check_ratios(ratios: list[float]) -> list[float]:
    numbers = list(ratios) if isinstance(ratios, Sequence) and not isinstance(ratios, str) else []
    numbers = numbers if all(is_number(r) for r in numbers) else []
    if len(numbers) != 3 or any(r < 0 for r in numbers) or not math.isclose(sum(numbers), 1.0, abs_tol=1e-6):
        raise ConfigError(f"scenario.ratios must be three non-negative numbers summing to 1 (e.g. [0.8,0.1,0.1]), got {ratios}.")
    return [float(r) for r in numbers]


def check_fraction(name: str, value: float) -> float:
    """``value`` if it is a number in (0, 1), else a ConfigError naming ``scenario.<name>``."""
    return check_number(f"scenario.{name}", value, above=0, below=1)


def check_shots(shots: object, available: int, what: str) -> int:
    """``scenario.shots`` as a count of training samples, at most ``available`` (a ConfigError otherwise)."""
    check_int("scenario.shots", shots, 1, rule="a positive integer (training samples) or null (all)")
    if shots > available:
        raise ConfigError(
            f"scenario.shots={shots} asks for more training samples than there are: {available} {what}. "
            f"Use scenario.shots <= {available}, or null for all of them."
        )
    return shots


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
    check_fraction("head_fraction", head_fraction)
    counts = np.bincount(train["item"].to_numpy(), minlength=n_items)
    seen = int((counts > 0).sum())
    order = np.lexsort((np.arange(n_items), -counts))
    return np.sort(order[: math.ceil(head_fraction * seen)])


def popularity_segments(candidates: np.ndarray, head: np.ndarray) -> dict[str, np.ndarray]:
    is_head = np.isin(candidates, head)
    return {"all": candidates, "head": candidates[is_head], "tail": candidates[~is_head]}


def by_time(inter: pd.DataFrame, scenario: str, hint: str = "") -> pd.DataFrame:
    """``inter`` ordered by timestamp (stable: ties keep file order), or a DataError when any has none."""
    if inter["timestamp"].isna().any():
        raise DataError(
            f"scenario={scenario} needs a timestamp on every interaction; set dataset.time_field to the .inter "
            f"column holding time{hint}."
        )
    return inter.iloc[np.argsort(inter["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)


def require_nonempty(scenario: str, **frames: pd.DataFrame) -> None:
    for stage, frame in frames.items():
        if len(frame) == 0:
            raise DataError(
                f"Scenario {scenario!r} left the {stage} split empty; the dataset is too small for the "
                f"configured ratios/fractions. Raise the {stage} share or use a larger dataset."
            )


def labelled(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``frame`` with ``label`` = 1.0 where rating >= ``threshold``, else 0.0 (a DataError without ratings)."""
    check_number("scenario.label_threshold", threshold, rule="a rating (a number such as 4) or null")
    if frame["rating"].isna().any():
        raise DataError(
            f"scenario.label_threshold={threshold} labels pairs by rating, but {int(frame['rating'].isna().sum())} "
            "interactions have no rating. Set dataset.rating_field to the rating column, or label_threshold=null."
        )
    return frame.assign(label=(frame["rating"] >= threshold).astype(np.float64))


def holdout_split(
    dataset: Dataset,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    candidates: dict[str, np.ndarray],
    segments: dict[str, dict[str, np.ndarray]],
    label_threshold: float | None,
    **info,
) -> Split:
    """Stages ``valid`` (history: train) and ``test`` (history: train + valid), each ranking its own
    part; with ``label_threshold`` the same interactions are also labelled pairs (rating >= T is 1)."""
    if label_threshold is not None:
        valid, test = labelled(valid, label_threshold), labelled(test, label_threshold)
    pairs = label_threshold is not None
    return Split(
        dataset=dataset,
        parts={TRAIN: train, "valid": valid, "test": test},
        stages={
            "valid": Stage((TRAIN,), "valid", candidates["valid"], segments["valid"], "valid" if pairs else None),
            "test": Stage((TRAIN, "valid"), "test", candidates["test"], segments["test"], "test" if pairs else None),
        },
        info=info,
    )


def full_ranking_split(
    dataset: Dataset,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    head_fraction: float,
    label_threshold: float | None,
    **info,
) -> Split:
    """A holdout split whose stages rank every item, with all/head/tail segments."""
    everything = np.arange(dataset.n_items)
    segments = popularity_segments(everything, head_items(train, dataset.n_items, head_fraction))
    return holdout_split(
        dataset, train, valid, test, {"valid": everything, "test": everything}, {"valid": segments, "test": segments},
        label_threshold, **info,
    )
