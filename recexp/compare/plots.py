"""PNG plots of a comparison: quality against cost (Pareto front marked), recall per popularity bucket,
overall accuracy against tail exposure along each tail strategy's λ or α, and validation curves per epoch.

Figures are built with matplotlib's object API on the Agg canvas, so no GUI backend is touched.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recexp.compare.aggregate import column, smaller_is_better
from recexp.evaluate import parse_metric


def pareto_front(cost: list[float], quality: list[float], smaller_better: bool = False) -> list[bool]:
    """True for points no other point beats: cost no higher and quality no worse, one strictly."""
    sign = -1.0 if smaller_better else 1.0
    points = [(c, sign * q) for c, q in zip(cost, quality)]
    front = []
    for i, (c, q) in enumerate(points):
        if math.isnan(c) or math.isnan(q):
            front.append(False)
            continue
        beaten = any(
            c2 <= c and q2 >= q and (c2 < c or q2 > q)
            for j, (c2, q2) in enumerate(points) if j != i and not (math.isnan(c2) or math.isnan(q2))
        )
        front.append(not beaten)
    return front


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def quality_vs_cost(
    summary: pd.DataFrame, cost: str, cost_label: str, metric: str, segments: list[str], path: Path
) -> Path:
    """One panel per segment: mean ``metric`` (± std) against mean ``cost`` on a log axis; the Pareto
    front (least cost for the quality) is joined by a dashed line. Zero cost sits at 0 (symlog axis)."""
    ncols = min(3, len(segments))
    nrows = math.ceil(len(segments) / ncols)
    figure = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for extra in axes[len(segments):]:
        extra.set_visible(False)
    smaller = smaller_is_better(metric)
    for ax, segment in zip(axes, segments):
        name = column(segment, metric)
        xs, ys = summary[cost].to_numpy(float), summary[name].to_numpy(float)
        front = pareto_front(list(xs), list(ys), smaller)
        ax.errorbar(xs, ys, yerr=np.nan_to_num(summary[f"{name} std"].to_numpy(float)), fmt="o", color="tab:blue",
                    ecolor="0.6", capsize=2, zorder=2)
        ax.scatter(xs[front], ys[front], s=90, facecolors="none", edgecolors="tab:red", zorder=3,
                   label="Pareto front")
        order = np.argsort(xs[front])
        ax.plot(xs[front][order], ys[front][order], "--", color="tab:red", lw=1, zorder=1)
        for x, y, text in zip(xs, ys, summary["row"]):
            if not (math.isnan(x) or math.isnan(y)):
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(-0.5, max(10.0, 3.0 * float(np.nanmax(xs, initial=0.0))))
        ax.set_xlabel(f"{cost_label} (log; 0 = none)")
        ax.set_ylabel(f"{metric}{' (lower is better)' if smaller else ''}")
        ax.set_title(f"segment: {segment}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return _save(figure, path)


def bucket_recall(labels: list[str], rows: dict[str, tuple[list[float], list[float]]], k: int, path: Path) -> Path:
    """Recall@k per popularity bucket (head → tail, then cold items), one line per row (± std over seeds)."""
    figure = Figure(figsize=(max(5.0, 1.1 * len(labels) + 2), 3.8), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(labels))
    for name, (means, stds) in rows.items():
        ax.errorbar(x, means, yerr=np.nan_to_num(np.asarray(stds, float)), marker="o", capsize=2, label=name)
    ax.set_xticks(x, labels)
    ax.set_xlabel("item popularity bucket in training (head → tail; cold: never seen)")
    ax.set_ylabel(f"recall@{k}")
    ax.set_title(f"recall@{k} of the top-{k} over all test candidates, by item popularity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(figure, path)


EXPOSURE_LABELS = {"aplt": "share of tail items in the lists", "recall": "tail positives found in the full ranking"}


def tail_tradeoff(points: pd.DataFrame, accuracy: str, exposures: list[str], path: Path) -> Path:
    """One panel per tail-exposure column (``all/aplt@10``, ``tail_full/recall@10``): ``accuracy`` against it,
    one line per tail strategy through its λ or α (columns of :func:`recexp.compare.tradeoff.points`), each
    point labelled with its value; a line starts at its model without a tail strategy (black square, 0)."""
    figure = Figure(figsize=(5.5 * len(exposures), 5.0), layout="constrained")
    axes = figure.subplots(1, len(exposures), squeeze=False).ravel()
    for ax, exposure in zip(axes, exposures):
        for name, line in points.groupby("line", sort=False):
            line = line.sort_values("value", kind="stable")
            xs, ys = line[exposure].to_numpy(float), line[accuracy].to_numpy(float)
            color = ax.plot(xs, ys, marker="o", ms=4, lw=1.2, label=f"{name}, seeds {line['seeds'].iloc[0]}")[0].get_color()
            symbol = "λ" if line["parameter"].iloc[0] == "lam" else "α"
            for x, y, value, tail in zip(xs, ys, line["value"], line["tail"]):
                if tail != "none" and not (math.isnan(x) or math.isnan(y)):
                    ax.annotate(f"{symbol}={value:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                color=color)
        bases = points[points["tail"] == "none"].drop_duplicates(["row", "seeds"])
        ax.scatter(bases[exposure], bases[accuracy], marker="s", s=36, color="black", zorder=3)
        for x, y, text in zip(bases[exposure], bases[accuracy], bases["row"]):
            if not (math.isnan(x) or math.isnan(y)):
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(-4, 5), ha="right", fontsize=7)
        segment, metric = exposure.split("/", 1)
        ax.set_xlabel(f"{metric} ({segment}): {EXPOSURE_LABELS.get(parse_metric(metric)[0].name, 'tail exposure')}")
        ax.set_ylabel(f"{accuracy.split('/', 1)[1]} (all)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)
    figure.suptitle("overall accuracy against tail exposure along each tail strategy's λ or α (a point: mean over "
                    "the seeds every point of its line has; ■: the model without a tail strategy, λ = α = 0)", fontsize=9)
    return _save(figure, path)


def mean_curve(runs: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """(epochs counted from 1, the mean over ``runs`` of the metric after them): over the runs still going at
    that epoch, at the epochs where some run validated (``None`` marks an epoch that did not)."""
    longest = max(len(c) for c in runs)
    values = np.full((len(runs), longest), np.nan)
    for i, curve in enumerate(runs):
        values[i, : len(curve)] = np.array(curve, dtype=float)  # None -> NaN
    validated = ~np.isnan(values).all(axis=0)
    return np.arange(1, longest + 1)[validated], np.nanmean(values[:, validated], axis=0)


def valid_curves(curves: dict[str, list[list[float | None]]], metric: str, path: Path) -> Path:
    """The early-stopping metric after each epoch, one line per row: the mean over its seeds (each seed's curve up to
    where it stopped; the mean of the seeds still running at that epoch), through the epochs that validated
    (``None`` marks one that did not: ``trainer.valid_every``)."""
    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = figure.subplots()
    for label, runs in curves.items():
        ax.plot(*mean_curve(runs), marker=".", lw=1.2, label=label)
    ax.set_xlabel("epoch (LP-FT: probing epochs, then fine-tuning)")
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(figure, path)
