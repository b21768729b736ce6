"""The continual table and heatmaps, from runs of ``task=continual`` (their ``continual`` record section).

Rows are the comparison's rows (model × strategy × update rule …). Columns: the average next-block
result, BWT and forgetting of the recorded metric, and the total seconds spent updating, each
mean ± std over seeds. The paired test compares, user by user, the metric averaged over a run's
next-block cells (``per_user_continual.csv.gz``) with the reference row's, over shared seeds.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from recexp.compare.aggregate import mean_std
from recexp.compare.rows import Row
from recexp.compare.stats import TESTS, holm
from recexp.data.atomic import read_table

PER_USER = "per_user_continual.csv.gz"
COLUMNS = {"average": "avg next-block", "bwt": "BWT", "forgetting": "forgetting", "seconds": "update s"}


def has_continual(rows: list[Row]) -> bool:
    return any("continual" in run.data for row in rows for run in row.runs.values())


def summary_frame(rows: list[Row]) -> pd.DataFrame:
    """One line per row: mean and std over seeds of each COLUMNS entry, the metric and the seeds."""
    records = []
    for row in rows:
        sections = [run.data["continual"] for run in row.runs.values() if "continual" in run.data]
        record = {"row": row.label, "metric": sections[0]["metric"] if sections else "", "n_seeds": len(sections)}
        for key in COLUMNS:
            values = [_value(s, key) for s in sections]
            record[key], record[f"{key} std"] = mean_std([v for v in values if v is not None])
        records.append(record)
    return pd.DataFrame.from_records(records)


def _value(section: dict, key: str) -> float | None:
    if key == "seconds":
        return float(sum(u["train_seconds"] for u in section.get("updates", [])))
    return section.get(key)


def next_block_per_user(run_dir: Path, metric: str) -> pd.Series | None:
    """user -> the metric averaged over the run's next-block cells (segment all), or None if not saved."""
    path = run_dir / PER_USER
    if not path.is_file():
        return None
    cells = read_table(path, ["user", "stage", "segment"])
    cells = cells[(cells["segment"] == "all") & (cells["stage"] == "test_" + (cells["update"] + 1).astype(str))]
    return cells.groupby("user")[metric].mean() if metric in cells else None


def paired_tests(rows: list[Row], reference: Row, test: str, alpha: float) -> pd.DataFrame:
    """Each row against the reference on the per-user next-block average, Holm-corrected across rows."""
    records = []
    for row in (r for r in rows if r is not reference):
        a, b = [], []
        for seed, run in row.runs.items():
            other = reference.runs.get(seed)
            if other is None or run.split_hash != other.split_hash or "continual" not in run.data:
                continue
            metric = run.data["continual"]["metric"]
            mine, theirs = next_block_per_user(run.path, metric), next_block_per_user(other.path, metric)
            if mine is not None and theirs is not None:
                joined = pd.concat([mine, theirs], axis=1, join="inner").dropna()
                a.append(joined.iloc[:, 0].to_numpy())
                b.append(joined.iloc[:, 1].to_numpy())
        p = math.nan
        if a:
            _, p, _, _ = TESTS[test](np.concatenate(a), np.concatenate(b))
        records.append({"row": row.label, "reference": reference.label, "test": test, "n_pairs": int(sum(map(len, a))), "p_value": p})
    frame = pd.DataFrame.from_records(records, columns=["row", "reference", "test", "n_pairs", "p_value"])
    frame["p_holm"] = holm(frame["p_value"].tolist()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < alpha
    return frame


def markdown(summary: pd.DataFrame, tests: pd.DataFrame, reference: str, alpha: float) -> str:
    marked = set(tests[tests["significant"]]["row"]) if len(tests) else set()
    metric = summary["metric"].iloc[0] if len(summary) else ""
    lines = [f"## Continual learning ({metric}, mean ± std over seeds)", "",
             "| row | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for _, line in summary.iterrows():
        cells = [_cell(line[k], line[f"{k} std"], 1 if k == "seconds" else 4) + ("†" if k == "average" and line["row"] in marked else "")
                 for k in COLUMNS]
        lines.append(f"| {line['row']} | " + " | ".join(cells) + " |")
    lines += ["", f"avg next-block: mean of R[t][t+1]; BWT: mean of R[last][j] − R[j−1][j]; forgetting: mean drop of each "
                  f"block from its best earlier value to its last. † differs from `{reference}` "
                  f"(paired {tests['test'].iloc[0] if len(tests) else ''} "
                  f"over users of the per-user next-block average, Holm-corrected p < {alpha}).", ""]
    return "\n".join(lines)


def _cell(mean: float, std: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def heatmaps(rows: list[Row], path: Path) -> Path:
    """One heatmap of the mean R[t][j] over seeds per row (rows: updates, columns: blocks)."""
    shown = [r for r in rows if any("continual" in run.data for run in r.runs.values())]
    figure = Figure(figsize=(3.2 * len(shown), 3.0), layout="constrained")
    for axis, row in zip(figure.subplots(1, len(shown), squeeze=False)[0], shown):
        stack = np.array([[[np.nan if c is None else c for c in line] for line in run.data["continual"]["matrix"]]
                          for run in row.runs.values() if "continual" in run.data], dtype=float)
        mean = np.nanmean(stack, axis=0) if not np.isnan(stack).all() else stack[0]
        image = axis.imshow(mean, cmap="viridis", vmin=0)
        for (t, j), value in np.ndenumerate(mean):
            if not np.isnan(value):
                axis.text(j, t, f"{value:.3f}", ha="center", va="center", fontsize=7, color="white")
        axis.set_title(row.label, fontsize=8)
        axis.set_xlabel("block j")
        axis.set_ylabel("after update t")
        axis.set_xticks(range(mean.shape[1]), [str(j + 1) for j in range(mean.shape[1])])
        figure.colorbar(image, ax=axis, shrink=0.7)
    figure.savefig(path, dpi=150)
    return path


def write(rows: list[Row], reference: Row, test: str, alpha: float, out_dir: Path) -> dict[str, Path]:
    """continual.md, continual.csv, continual_significance.csv and continual_heatmap.png in ``out_dir``."""
    summary, tests = summary_frame(rows), paired_tests(rows, reference, test, alpha)
    files = {"continual": out_dir / "continual.md", "continual_csv": out_dir / "continual.csv",
             "continual_significance": out_dir / "continual_significance.csv"}
    files["continual"].write_text(markdown(summary, tests, reference.label, alpha), encoding="utf-8")
    summary.rename(columns=COLUMNS).to_csv(files["continual_csv"], index=False)
    tests.to_csv(files["continual_significance"], index=False)
    files["continual_heatmap"] = heatmaps(rows, out_dir / "continual_heatmap.png")
    return files
