"""Paired significance tests over users against a reference row, with Holm's correction across rows.

For a row and the reference, each seed both ran on the same split contributes one pair per test
user (the per-user metric of each run); pairs of all such seeds are pooled into one test. Pooled AUC
has no per-user value: it gets a paired bootstrap over the saved test pairs (:mod:`recexp.compare.pairs`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from recexp.compare.load import per_user
from recexp.compare.pairs import RunFiles, align, paired_bootstrap, scored_pairs
from recexp.compare.rows import Row
from recexp.evaluate import parse_metric
from recexp.records import PAIRS as PAIRS_NAME

BOOTSTRAP = "paired_bootstrap"  # the test named in significance.csv for pooled AUC

SIGNIFICANCE_COLUMNS = [
    "row", "reference", "segment", "metric", "test", "n_seeds", "n_pairs", "mean_row", "mean_reference",
    "mean_diff", "statistic", "p_value", "p_holm", "effect_size", "effect_measure", "significant", "note",
]


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    # NaN is dropped before sorting: NaN keys compare false both ways and would leave the rest out of order
    order = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, str]:
    """(W, p, matched-pairs rank-biserial correlation, its name); zero differences are dropped."""
    diff = a - b
    nonzero = diff[diff != 0]
    if len(nonzero) == 0:
        return 0.0, 1.0, 0.0, "rank_biserial"
    result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    ranked = stats.rankdata(np.abs(nonzero))
    plus, minus = ranked[nonzero > 0].sum(), ranked[nonzero < 0].sum()
    return float(result.statistic), float(result.pvalue), float((plus - minus) / (plus + minus)), "rank_biserial"


def ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, str]:
    """(t, p, Cohen's d_z = mean difference / sd of differences, its name)."""
    diff = a - b
    sd = diff.std(ddof=1) if len(diff) > 1 else 0.0
    mean = float(diff.mean()) if len(diff) else 0.0
    if sd <= 1e-12 * max(1.0, abs(mean)):  # identical differences: no spread to test against
        return 0.0, 1.0 if mean == 0 else 0.0, 0.0 if mean == 0 else math.copysign(math.inf, mean), "cohen_dz"
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue), float(diff.mean() / sd), "cohen_dz"


TESTS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, float, float, str]]] = {
    "wilcoxon": wilcoxon,
    "ttest": ttest,
}


def paired_values(row: Row, reference: Row, segment: str, metric: str, cache: RunFiles):
    """(row values, reference values, seeds used, note) pooled over matched seeds on the same split."""
    xs, ys, used, skipped = [], [], [], []
    for seed in [s for s in row.seeds if s in reference.runs]:
        mine, theirs = row.runs[seed], reference.runs[seed]
        if mine.split_hash != theirs.split_hash:
            skipped.append(f"seed {seed}: different splits")
            continue
        a, b = cache.get(mine), cache.get(theirs)
        if a is None or b is None or metric not in a.columns or metric not in b.columns:
            skipped.append(f"seed {seed}: no per-user {metric}")
            continue
        merged = a[a.segment == segment].merge(b[b.segment == segment], on="user", suffixes=("_a", "_b"))
        merged = merged.dropna(subset=[f"{metric}_a", f"{metric}_b"])  # e.g. GAUC of a user with one label only
        if merged.empty:
            continue
        xs.append(merged[f"{metric}_a"].to_numpy(float))
        ys.append(merged[f"{metric}_b"].to_numpy(float))
        used.append(seed)
    if not used:
        reason = "; ".join(skipped) or "no seed in common with the reference"
        return np.array([]), np.array([]), used, reason
    return np.concatenate(xs), np.concatenate(ys), used, "; ".join(skipped)


def significance(
    rows: list[Row], reference: Row, metrics: list[str], segments: list[str], test: str, alpha: float,
    resamples: int = 1000,
) -> pd.DataFrame:
    """One line per (row other than the reference, segment, metric); Holm across rows per column.
    ``resamples``: bootstrap replicates for pooled AUC."""
    cache, pairs = RunFiles(per_user), RunFiles(scored_pairs)
    records = []
    for segment in segments:
        family = []
        for row in (r for r in rows if r is not reference):
            for metric in metrics:
                if parse_metric(metric)[0].name == "auc":
                    family.append(_bootstrap(row, reference, segment, metric, resamples, pairs))
                else:
                    family.append(_one(row, reference, segment, metric, test, cache))
        for metric in metrics:
            members = [r for r in family if r["metric"] == metric]
            for record, adjusted in zip(members, holm([r["p_value"] for r in members])):
                record["p_holm"] = adjusted
                record["significant"] = bool(adjusted < alpha) if not math.isnan(adjusted) else False
        records.extend(family)
    return pd.DataFrame.from_records(records, columns=SIGNIFICANCE_COLUMNS)


def _one(row: Row, reference: Row, segment: str, metric: str, test: str, cache: RunFiles) -> dict:
    if not parse_metric(metric)[0].per_user:
        a, b, seeds, note = np.array([]), np.array([]), [], "pooled metric: no per-user values to pair"
    else:
        a, b, seeds, note = paired_values(row, reference, segment, metric, cache)
    record = {
        "row": row.label, "reference": reference.label, "segment": segment, "metric": metric, "test": test,
        "n_seeds": len(seeds), "n_pairs": len(a), "mean_row": math.nan, "mean_reference": math.nan,
        "mean_diff": math.nan, "statistic": math.nan, "p_value": math.nan, "effect_size": math.nan,
        "effect_measure": "", "note": note,
    }
    if len(a) == 0:
        return record
    statistic, p, effect, measure = TESTS[test](a, b)
    record.update(
        mean_row=float(a.mean()), mean_reference=float(b.mean()), mean_diff=float((a - b).mean()),
        statistic=statistic, p_value=p, effect_size=effect, effect_measure=measure,
    )
    return record


def _bootstrap(row: Row, reference: Row, segment: str, metric: str, resamples: int, cache: RunFiles) -> dict:
    """Pooled AUC of ``row`` against ``reference``: a paired bootstrap over the test pairs of matched seeds."""
    record = {
        "row": row.label, "reference": reference.label, "segment": segment, "metric": metric, "test": BOOTSTRAP,
        "n_seeds": 0, "n_pairs": 0, "mean_row": math.nan, "mean_reference": math.nan, "mean_diff": math.nan,
        "statistic": math.nan, "p_value": math.nan, "effect_size": math.nan, "effect_measure": "", "note": "",
    }
    if segment != "all":
        record["note"] = f"{PAIRS_NAME} holds segment all only"
        return record
    seeds, skipped = [], []
    for seed in [s for s in row.seeds if s in reference.runs]:
        mine, theirs = row.runs[seed], reference.runs[seed]
        a, b = cache.get(mine), cache.get(theirs)
        if mine.split_hash != theirs.split_hash:
            skipped.append(f"seed {seed}: different splits")
        elif a is None or b is None:
            skipped.append(f"seed {seed}: no {PAIRS_NAME}")
        else:
            seeds.append(align(a, b, f"{mine.path} vs {theirs.path}"))
    if not seeds:
        record["note"] = "; ".join(skipped) or "no seed in common with the reference"
        return record
    result = paired_bootstrap(seeds, resamples)
    record.update(
        n_seeds=len(seeds), n_pairs=sum(len(p.labels) for p in seeds), mean_row=result["auc_row"],
        mean_reference=result["auc_reference"], mean_diff=result["diff"], statistic=result["diff"],
        p_value=result["p"], effect_size=result["diff"], effect_measure="auc_difference",
        note="; ".join([f"{resamples} resamples, 95% interval of the difference "
                        f"[{result['low']:.4f}, {result['high']:.4f}]", *skipped]),
    )
    return record
