"""Overall accuracy against tail exposure along each tail strategy's strength (λ of ``tail=rerank``,
α of ``tail=reweight``): the points of ``accuracy_vs_tail_exposure.{png,csv}``.

A line joins the rows that differ only in the strength of one tail strategy and method (e.g. BPR with
xQuAD at λ 0.1, 0.3, 0.6) and starts at its own run at strength 0 where there is one, else at the row of
the same model without a tail strategy (λ or α 0). The two differ for RecBole models under popularity
negatives: α 0 draws uniformly over the training items, RecBole's own sampler over every item.
Each point is the mean over the seeds every point of its line has, so a line compares the same splits.
Strategies without a strength (``tail=augment``) are left out.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recexp.compare import plots
from recexp.compare.aggregate import column, mean_std
from recexp.compare.load import Run
from recexp.compare.rows import Row, label
from recexp.evaluate import parse_metric

STRENGTH = {"rerank": "lam", "reweight": "alpha"}  # tail strategy -> the key of its strength
SYMBOL = {"lam": "λ", "alpha": "α"}


@dataclass(frozen=True)
class TailSetting:
    kind: str | None  # rerank | reweight | augment ...; None: no tail strategy
    method: str | None
    strength: float | None  # tail.lam or tail.alpha; None for strategies without one


def tail_setting(run: Run) -> TailSetting:
    """From the run's effective settings (``tail``, ``tail_lam`` ...), else its resolved ``tail`` config."""
    effective = run.data.get("effective") or {}
    node = run.config.get("tail") or {}
    kind = effective.get("tail") or run.choices.get("tail") or str(node.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if not kind:
        return TailSetting(None, None, None)
    key = STRENGTH.get(kind)
    value = effective.get(f"tail_{key}", node.get(key)) if key else None
    return TailSetting(kind, effective.get("tail_method", node.get("method")), None if value is None else float(value))


def _is_tail_axis(axis: str) -> bool:
    return axis == "tail" or axis.startswith("tail.")


def lines(rows: list[Row], notes: list[str]) -> dict[str, list[tuple[float, TailSetting, Row]]]:
    """line name -> (strength, setting, row) in order of strength, from the line's strength-0 run or else
    its base row (no tail strategy); only lines of two points or more."""
    bases: dict[tuple, Row] = {}
    found: dict[tuple, list[tuple[float, TailSetting, Row]]] = defaultdict(list)
    for row in rows:
        settings = {tail_setting(run) for run in row.runs.values()}
        if len(settings) > 1:
            notes.append(f"tail trade-off: {row.label} left out: its seeds ran different tail settings.")
            continue
        (setting,) = settings
        base = tuple(pair for pair in row.key if not _is_tail_axis(pair[0]))
        if setting.kind is None:
            bases[base] = row
        elif setting.strength is not None:
            found[(base, setting.kind, setting.method)].append((setting.strength, setting, row))
    result = {}
    for (base, kind, method), members in found.items():
        name = f"{label(base)} + {kind} {method} ({SYMBOL[STRENGTH[kind]]})"
        own_zero = any(strength == 0 for strength, _, _ in members)  # the strategy ran at 0 itself
        if not own_zero and base in bases:
            members.append((0.0, TailSetting(None, None, None), bases[base]))
        elif not own_zero:
            notes.append(f"tail trade-off: no run of {label(base)} without a tail strategy, so {name} has no 0 point.")
        members.sort(key=lambda p: (p[0], p[1].kind is not None))
        if len(members) > 1:
            result[name] = members
    return result


def points(lines_: dict[str, list[tuple[float, TailSetting, Row]]], columns: list[tuple[str, str]],
           notes: list[str]) -> pd.DataFrame:
    """One line per point: line, tail, method, parameter, value, row, seeds, then ``seg/metric`` (mean) and
    ``seg/metric std`` over the seeds every point of the line has."""
    records = []
    for name, members in lines_.items():
        seeds = sorted(set.intersection(*(set(row.runs) for _, _, row in members)), key=str)
        if not seeds:
            notes.append(f"tail trade-off: {name} left out: its points share no seed.")
            continue
        kind, method = next((s.kind, s.method) for _, s, _ in members if s.kind is not None)
        for value, setting, row in members:
            record = {"line": name, "tail": setting.kind or "none", "method": setting.method or "none",
                      "parameter": STRENGTH[kind], "value": value, "row": row.label,
                      "seeds": " ".join(map(str, seeds)), "n_seeds": len(seeds)}
            for segment, metric in columns:
                found = [v for v in (row.runs[s].metric(segment, metric) for s in seeds) if v is not None]
                record[column(segment, metric)], record[f"{column(segment, metric)} std"] = mean_std(found)
            records.append(record)
    return pd.DataFrame.from_records(records)


def write(rows: list[Row], metric: str, notes: list[str], out_dir: Path) -> dict[str, Path]:
    """``accuracy_vs_tail_exposure.{png,csv}`` when some tail strategy runs at two strengths or more (its
    base model counting as 0): ``all/<metric>`` against ``all/aplt@K`` and ``tail_full/recall@K``."""
    found = lines(rows, notes)
    if not found:
        return {}
    k = parse_metric(metric)[1] or 10
    runs = [run for members in found.values() for _, _, row in members for run in row.runs.values()]
    exposure = [(s, m) for s, m in (("all", f"aplt@{k}"), ("tail_full", f"recall@{k}"))
                if any(run.metric(s, m) is not None for run in runs)]
    if not exposure:
        notes.append(f"tail trade-off: left out, the runs have neither all/aplt@{k} nor tail_full/recall@{k}.")
        return {}
    frame = points(found, [("all", metric)] + exposure, notes)
    if frame.empty:
        return {}
    files = {"tail_tradeoff_csv": out_dir / "accuracy_vs_tail_exposure.csv"}
    frame.to_csv(files["tail_tradeoff_csv"], index=False)
    files["tail_tradeoff"] = plots.tail_tradeoff(
        frame, column("all", metric), [column(s, m) for s, m in exposure], out_dir / "accuracy_vs_tail_exposure.png")
    return files
