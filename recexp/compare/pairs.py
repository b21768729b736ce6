"""Paired bootstrap of pooled AUC over test pairs, from the ``pairs_test.csv.gz`` each run saves.

Pooled AUC has no per-user values to pair, so a row and the reference are compared pair by pair:
for every seed both ran on the same split, their scored test pairs are aligned (user, item), and each
bootstrap replicate draws the test pairs of each seed with replacement, the same draw for both. The
statistic is the AUC difference averaged over seeds; the two-sided p-value is that of the shifted
null, ``(1 + #{|d* - d| >= |d|}) / (B + 1)`` (Efron & Tibshirani 1993, §16.4).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from recexp.compare.load import Run
from recexp.data.atomic import read_table
from recexp.errors import DataError
from recexp.records import PAIRS

CELLS_PER_CHUNK = 4_000_000  # bootstrap replicates x pairs ranked at once (float64: ~32 MB)


@dataclass
class Paired:
    """One seed's test pairs scored by both runs: labels [n], row scores [n], reference scores [n]."""

    labels: np.ndarray
    row: np.ndarray
    reference: np.ndarray


class RunFiles:
    """What ``read`` gives for each run (e.g. its per-user metrics or scored pairs), read once."""

    def __init__(self, read: Callable[[Run], pd.DataFrame | None]):
        self._read, self._frames = read, {}

    def get(self, run: Run) -> pd.DataFrame | None:
        key = str(run.path)
        if key not in self._frames:
            self._frames[key] = self._read(run)
        return self._frames[key]


def scored_pairs(run: Run) -> pd.DataFrame | None:
    """A run's scored test pairs (user_id, item_id, label, score); None where not saved."""
    path = run.path / PAIRS
    return read_table(path, ["user_id", "item_id"]) if path.is_file() else None


def align(mine: pd.DataFrame, theirs: pd.DataFrame, where: str) -> Paired:
    """The same test pairs in both frames, matched on (user_id, item_id, occurrence); a DataError if they differ."""
    keyed = [f.assign(occurrence=f.groupby(["user_id", "item_id"]).cumcount()) for f in (mine, theirs)]
    merged = keyed[0].merge(keyed[1], on=["user_id", "item_id", "occurrence"], suffixes=("_a", "_b"))
    if len(merged) != len(mine) or len(merged) != len(theirs) or (merged["label_a"] != merged["label_b"]).any():
        raise DataError(
            f"{where}: the two runs saved different test pairs ({len(mine)} and {len(theirs)} pairs, {len(merged)} "
            f"in common) although their split hashes agree. Rerun them with the same code, or compare them separately."
        )
    return Paired(merged["label_a"].to_numpy(float), merged["score_a"].to_numpy(float), merged["score_b"].to_numpy(float))


def auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """labels [B, n] (0/1), scores [B, n] -> [B] ROC AUC per row by the rank-sum formula (ties: mean rank);
    NaN for a row with one class only."""
    ranks = rankdata(scores, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((ranks * labels).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(auc_rows(labels[None], scores[None])[0])


def bootstrap_differences(seeds: list[Paired], resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples] AUC differences (row - reference) averaged over seeds, each seed's pairs drawn with
    replacement, the same draw for both runs."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for paired in seeds:
        n = len(paired.labels)
        chunk = max(1, CELLS_PER_CHUNK // max(n, 1))
        for start in range(0, resamples, chunk):
            draw = rng.integers(0, n, size=(min(chunk, resamples - start), n))
            labels = paired.labels[draw]
            total[start : start + len(draw)] += auc_rows(labels, paired.row[draw]) - auc_rows(labels, paired.reference[draw])
    return total / len(seeds)


def paired_bootstrap(seeds: list[Paired], resamples: int, seed: int = 0) -> dict[str, float]:
    """Observed mean AUC of each side and their difference over seeds, the shifted-null two-sided p-value
    and the 95% percentile interval of the difference."""
    row = float(np.mean([auc(p.labels, p.row) for p in seeds]))
    reference = float(np.mean([auc(p.labels, p.reference) for p in seeds]))
    observed = row - reference
    draws = bootstrap_differences(seeds, resamples, seed)
    draws = draws[~np.isnan(draws)]  # a draw holding one class only has no AUC
    if math.isnan(observed) or not len(draws):
        return {"auc_row": row, "auc_reference": reference, "diff": observed, "p": math.nan, "low": math.nan, "high": math.nan}
    extreme = int((np.abs(draws - observed) >= abs(observed) - 1e-12).sum())
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"auc_row": row, "auc_reference": reference, "diff": observed, "p": (1 + extreme) / (1 + len(draws)),
            "low": float(low), "high": float(high)}
