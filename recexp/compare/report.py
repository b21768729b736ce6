"""``compare()``: read runs, build rows, test against the reference, write tables, plots and W&B."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recexp.compare import continual, fewshot, plots, tables, tradeoff
from recexp.compare.aggregate import DEFAULT_COSTS, mean_std, not_computed, summarise
from recexp.compare.buckets import BucketsUnavailable, SplitReader, bucket_labels, run_buckets
from recexp.compare.load import Run, available, carried, check_selection, find_runs, model_name
from recexp.compare.rows import Row, build_rows, check_axes, default_axes
from recexp.compare.stats import SIGNIFICANCE_COLUMNS, TESTS, significance
from recexp.errors import ConfigError, DataError
from recexp.evaluate import parse_metric

DEFAULT_METRICS = ("ndcg@10", "recall@10", "itemcoverage@10", "gini@10")
FAILED_COLUMNS = ["path", "status", "error", "model", "seed", "run_id", "started_at"]


@dataclass(frozen=True)
class Options:
    metrics: list[str] | None = None  # None: DEFAULT_METRICS (those the runs have)
    segments: list[str] | None = None  # None: every segment the runs have
    reference: str | None = None  # row label; None: the first row
    test: str = "wilcoxon"  # wilcoxon | ttest, paired over users
    alpha: float = 0.05  # significance level after Holm's correction
    row_key: list[str] | None = None  # None: model (+ strategy for text models) + swept axes
    plot_metric: str | None = None  # None: the first metric
    buckets: int = 5  # popularity buckets of seen items (plus one for cold items)
    bucket_k: int | None = None  # K of recall per bucket; None: the plot metric's K
    cache_dirs: list[Path] = field(default_factory=list)  # extra places to look for split artifacts
    wandb: bool = True  # log the table and plots to a summary W&B run (offline without an API key)
    wandb_project: str = "recexp"
    keep_constant: bool = False  # also show columns constant by construction (APLT inside head/tail/cold ...)
    resamples: int = 1000  # paired bootstrap replicates for pooled AUC (over the saved test pairs)
    costs: tuple[str, ...] = DEFAULT_COSTS  # cost keys of the table (COST_COLUMNS), in order


@dataclass
class Comparison:
    rows: list[Row]
    summary: pd.DataFrame
    significance: pd.DataFrame
    failed: list[Run]
    notes: list[str]
    files: dict[str, Path]
    reference: str


def compare(run_dirs: list[Path], out_dir: Path, options: Options = Options()) -> Comparison:
    """Write table.{md,tex,csv}, significance.csv, failed.csv and PNG plots into ``out_dir``; few-shot
    sweeps (every run sets scenario.shots) also fewshot.{md,csv} and <metric>_vs_shots.{png,csv}."""
    runs = find_runs([Path(d) for d in run_dirs])
    finished = [r for r in runs if r.status == "ok"]
    failed = [r for r in runs if r.status != "ok"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"failed": write_failed(failed, out_dir / "failed.csv")}
    if not finished:
        found = f"No finished run (status ok) among {len(runs)} found; "
        raise DataError(found + failed_summary(failed, files["failed"]))
    metrics, segments = choose(finished, options)
    rows = build_rows(finished, row_axes(finished, options.row_key))
    shots = fewshot.plan(rows, options.reference) if fewshot.is_fewshot(finished) else None
    reference = None if shots else pick_reference(rows, options.reference)
    if shots:
        tests = fewshot.significance_by_shots(shots, metrics, segments, options.test, options.alpha, options.resamples)
    else:
        tests = significance(rows, reference, metrics, segments, options.test, options.alpha, options.resamples)
    spec = tables.TableSpec(
        metrics, segments, f"{shots.reference} at the same K" if shots else reference.label, options.test,
        options.alpha, options.keep_constant, carried(finished),
        frozenset(r.label for r in shots.references.values()) if shots else frozenset(), options.resamples,
        not_computed(rows, metrics, segments), options.costs,
    )
    summary = summarise(rows, metrics, segments)
    notes = [n for r in rows for n in r.notes] + (shots.notes if shots else [])
    files.update(write_tables(summary, tests, spec, failed, notes, out_dir))
    files.update(write_plots(rows, summary, metrics, segments, options, notes, out_dir))
    if shots:
        files.update(write_fewshot(shots, summary, tests, metrics, segments, options, out_dir))
    elif continual.has_continual(rows):
        files.update(continual.write(rows, reference, options.test, options.alpha, out_dir))
    if notes:
        with open(files["markdown"], "a", encoding="utf-8") as handle:
            handle.write("\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes))
    if options.wandb:
        log_wandb(tables.csv_frame(summary, tests, spec), files, runs, options, out_dir)
    return Comparison(rows, summary, tests, failed, notes, files, shots.reference if shots else reference.label)


def row_axes(runs: list[Run], wanted: list[str] | None) -> list[str]:
    """``wanted`` (else the default axes), plus scenario.shots in a few-shot sweep: a row is an arm at one K."""
    axes = list(wanted or default_axes(runs))
    if fewshot.is_fewshot(runs) and fewshot.SHOTS not in axes:
        axes.append(fewshot.SHOTS)
    check_axes(runs, axes)
    return axes


def write_fewshot(shots: fewshot.Plan, summary, tests, metrics, segments, options: Options, out_dir: Path) -> dict[str, Path]:
    """The few-shot table and the metric-against-K plot (AUC unless --plot-metric says otherwise)."""
    segment = "all" if "all" in segments else segments[0]
    metric = options.plot_metric or ("auc" if "auc" in metrics else metrics[0])
    return fewshot.write(shots, summary, tests, metrics, segment, metric, options.test, options.alpha,
                         options.resamples, out_dir)


def choose(runs: list[Run], options: Options) -> tuple[list[str], list[str]]:
    names, segs = available(runs)
    if options.test not in TESTS:
        raise ConfigError(f"Unknown test {options.test!r}; choose {' or '.join(TESTS)}.")
    metrics = options.metrics or [m for m in DEFAULT_METRICS if m in names] or names[:2]
    segments = options.segments or segs
    check_selection(runs, metrics, segments)
    if options.plot_metric is not None and options.plot_metric not in metrics:
        raise ConfigError(f"Plot metric {options.plot_metric!r} is not among the table's metrics {', '.join(metrics)}.")
    return metrics, segments


def pick_reference(rows: list[Row], wanted: str | None) -> Row:
    if wanted is None:
        return rows[0]
    matches = [r for r in rows if r.label == wanted] or [r for r in rows if r.label.startswith(wanted)]
    if len(matches) != 1:
        problem = "matches several rows" if matches else "matches no row"
        raise ConfigError(f"Reference {wanted!r} {problem}; rows: {', '.join(r.label for r in rows)}.")
    return matches[0]


def write_failed(failed: list[Run], path: Path) -> Path:
    records = [
        {"path": str(r.path), "status": r.status, "error": r.data.get("error"), "model": model_name(r),
         "seed": r.seed, "run_id": r.data.get("run_id"), "started_at": r.data.get("started_at")}
        for r in failed
    ]
    pd.DataFrame.from_records(records, columns=FAILED_COLUMNS).to_csv(path, index=False)
    return path


def failed_summary(failed: list[Run], path: Path) -> str:
    if not failed:
        return "none failed."
    shown = "; ".join(f"{r.path} [{r.status}] {one_line(r.data.get('error'), 120)}".strip() for r in failed[:10])
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    return f"{len(failed)} failed or unfinished, listed in {path}: {shown}{more}"


def one_line(error: str | None, limit: int = 300) -> str:
    text = " ".join(str(error or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_tables(summary, tests, spec, failed: list[Run], notes: list[str], out_dir: Path) -> dict[str, Path]:
    files = {"markdown": out_dir / "table.md", "latex": out_dir / "table.tex", "csv": out_dir / "table.csv",
             "significance": out_dir / "significance.csv"}
    text = tables.markdown(summary, tests, spec)
    if failed:
        text += "\n## Failed or unfinished runs\n\n" + "".join(
            f"- `{r.path}` [{r.status}] {one_line(r.data.get('error'))}\n" for r in failed
        )
    files["markdown"].write_text(text, encoding="utf-8")
    files["latex"].write_text(tables.latex(summary, tests, spec), encoding="utf-8")
    tables.csv_frame(summary, tests, spec).to_csv(files["csv"], index=False)
    tests.to_csv(files["significance"], index=False, columns=SIGNIFICANCE_COLUMNS)
    return files


def write_plots(rows, summary, metrics, segments, options: Options, notes: list[str], out_dir: Path) -> dict[str, Path]:
    metric = options.plot_metric or metrics[0]
    files = {
        "quality_vs_params": plots.quality_vs_cost(
            summary, "trainable params", "trainable parameters", metric, segments, out_dir / "quality_vs_params.png"),
        "quality_vs_time": plots.quality_vs_cost(
            summary, "train s", "training time (s)", metric, segments, out_dir / "quality_vs_train_time.png"),
    }
    files.update(tradeoff.write(rows, metric, notes, out_dir))  # accuracy vs tail exposure along λ / α
    curves = {row.label: [run.data["effective"]["valid_curve"] for run in row.runs.values()
                          if (run.data.get("effective") or {}).get("valid_curve")] for row in rows}
    curves = {label: runs for label, runs in curves.items() if runs}
    if curves:  # torch models record their early-stopping metric per epoch
        valid_metric = next(iter(rows[0].runs.values())).config.get("trainer", {}).get("valid_metric", "")
        files["valid_curves"] = plots.valid_curves(curves, valid_metric, out_dir / "valid_curves.png")
    if continual.has_continual(rows):  # time blocks have no single test part to bucket
        return files
    if not any(parse_metric(m)[0].at_k for m in metrics):  # labelled pairs only (scenario=tallrec): no top-K lists
        return files
    k = options.bucket_k or parse_metric(metric)[1] or 10  # a pointwise metric has no K
    labels, per_row = popularity_buckets(rows, k, options, notes)
    if per_row:
        files["popularity_buckets"] = plots.bucket_recall(labels, per_row, k, out_dir / "recall_by_popularity.png")
    return files


def popularity_buckets(rows: list[Row], k: int, options: Options, notes: list[str]):
    """(bucket labels, {row: (means, stds)}); runs whose artifacts are missing are noted and skipped."""
    reader = SplitReader([Path(p) for p in options.cache_dirs])
    labels = bucket_labels(options.buckets)
    per_row = {}
    for row in rows:
        values = []
        for seed in row.seeds:
            try:
                values.append(run_buckets(row.runs[seed], reader, k, options.buckets))
            except BucketsUnavailable as err:
                notes.append(f"recall by popularity: {row.label} seed {seed} left out: {err}")
        if values:
            stats = [mean_std([v[b] for v in values if b in v and not math.isnan(v[b])]) for b in labels]
            per_row[row.label] = ([m for m, _ in stats], [s for _, s in stats])
    if per_row and all(math.isnan(means[-1]) for means, _ in per_row.values()):
        labels = labels[:-1]  # no cold items in these splits
        per_row = {name: (means[:-1], stds[:-1]) for name, (means, stds) in per_row.items()}
    return labels, per_row


def log_wandb(frame: pd.DataFrame, files: dict[str, Path], runs: list[Run], options: Options, out_dir: Path) -> None:
    """One summary W&B run holding the table (wandb.Table) and the plots."""
    from recexp.tracking import WandbLogger

    logger = WandbLogger(
        project=options.wandb_project, group="compare", name=f"compare-{out_dir.name}", tags=["compare"],
        save_dir=str(out_dir), run_config={"runs": [str(r.path) for r in runs], "options": repr(options)},
    )
    try:
        rows = [[_plain(v) for v in record] for record in frame.itertuples(index=False)]
        logger.log_table("compare/table", [str(c) for c in frame.columns], rows)
        logger.log_images({f"compare/{k}": p for k, p in files.items() if p.suffix == ".png"})
    finally:
        logger.finish()


def _plain(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value
