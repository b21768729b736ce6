"""Mean and standard deviation over seeds for every row, chosen metric and segment, plus cost."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from recexp.compare.rows import Row
from recexp.evaluate import higher_is_better, parse_metric

# cost key in results.json -> column name in the table
COST_COLUMNS = {"trainable_params": "trainable params", "train_seconds": "train s", "peak_memory_mb": "peak MB",
                "eval_seconds": "eval s", "encoder_tokens_per_second": "encoder tok/s",
                "encoder_encode_tokens_per_second": "encoding tok/s"}
DEFAULT_COSTS = ("trainable_params", "train_seconds", "peak_memory_mb")  # the cost columns tables show unless told (--costs)

# (segment, metric) -> the value a segment's definition fixes for every model. APLT is the share of
# listed items outside `head`: 0 inside `head`, 1 inside `tail` and `cold` (cold items are never
# trained, so never head). Cold items have no training interactions: average popularity 0.
CONSTANT_BY_CONSTRUCTION = {
    ("head", "aplt"): 0, ("tail", "aplt"): 1, ("cold", "aplt"): 1, ("cold", "averagepopularity"): 0,
}


def column(segment: str, metric: str) -> str:
    return f"{segment}/{metric}"


def smaller_is_better(metric: str) -> bool:
    """``gini@10`` -> True: the direction comes from the evaluator's metric registry."""
    return not higher_is_better(metric)


def constant_by_construction(segment: str, metric: str) -> int | None:
    """``('head', 'aplt@10')`` -> 0, the value every model gets there; None for a column that varies."""
    return CONSTANT_BY_CONSTRUCTION.get((segment, parse_metric(metric)[0].name))


def summarise(rows: list[Row], metrics: list[str], segments: list[str]) -> pd.DataFrame:
    """One line per row: ``seg/metric`` (mean), ``seg/metric std`` (sample std, NaN for one seed),
    ``seg/metric n`` (seeds with a value), ``n_seeds``, ``seeds`` and the mean of each cost column."""
    records = []
    for row in rows:
        record: dict[str, object] = {"row": row.label, "n_seeds": len(row.runs), "seeds": " ".join(map(str, row.seeds))}
        runs = [row.runs[s] for s in row.seeds]
        for segment in segments:
            for metric in metrics:
                values = [v for v in (r.metric(segment, metric) for r in runs) if v is not None]
                mean, std = mean_std(values)
                name = column(segment, metric)
                record[name], record[f"{name} std"], record[f"{name} n"] = mean, std, len(values)
        for key, name in COST_COLUMNS.items():
            values = [float(v) for v in (r.cost(key) for r in runs) if v is not None]
            record[name] = float(np.mean(values)) if values else math.nan
        records.append(record)
    return pd.DataFrame.from_records(records)


def not_computed(rows: list[Row], metrics: list[str], segments: list[str]) -> dict[tuple[str, str], str]:
    """(row label, ``seg/metric``) -> why, for each cell none of whose runs has a value and one of whose runs records
    the metric as not computed there."""
    out = {}
    for row in rows:
        for segment in segments:
            for metric in metrics:
                if all(run.metric(segment, metric) is None for run in row.runs.values()):
                    reasons = [run.not_computed(segment, metric) for run in row.runs.values()]
                    if any(reasons):
                        out[(row.label, column(segment, metric))] = next(r for r in reasons if r)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def ranks(values: list[float], smaller_better: bool) -> list[int | None]:
    """1 for the best value(s), 2 for the second best, None otherwise or for NaN; ties share a rank."""
    finite = sorted({v for v in values if not math.isnan(v)}, reverse=not smaller_better)
    place = {v: i + 1 for i, v in enumerate(finite[:2])}
    return [None if math.isnan(v) else place.get(v) for v in values]
