"""Command line of ``recexp-compare`` / ``python -m recexp.compare``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recexp.compare.aggregate import COST_COLUMNS, DEFAULT_COSTS
from recexp.compare.report import DEFAULT_METRICS, Comparison, Options, compare, failed_summary
from recexp.compare.stats import TESTS
from recexp.errors import RecexpError


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recexp-compare",
        description="Compare finished recexp runs: one row per configuration (seeds aggregated), "
        "paired significance tests against a reference row, Markdown/LaTeX/CSV tables and PNG plots.",
        epilog="Few-shot sweeps (every run sets scenario.shots=K, e.g. make fewshot): scenario.shots joins the "
        "row key, --reference names an arm (model/strategy, e.g. user_rate) tested against each row at the same K, "
        "and OUT also gets fewshot.md/.csv (arm x K: mean ± std, Holm p, trainable params, train and eval seconds) "
        "and auc_vs_shots.png/.csv (mean ± std against K per arm; on scenario=tallrec over ml-100k with TALLRec's "
        "published LLaMA-7B LoRA AUC and that paper's ID baselines drawn for reference).",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, help="sweep or run folders; searched for results.json")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables, plots, failed.csv")
    p.add_argument("--metrics", type=_names,
                   help=f"comma-separated test metrics (default: {','.join(DEFAULT_METRICS)})")
    p.add_argument("--segments", type=_names, help="comma-separated segments (default: every segment present)")
    p.add_argument("--reference", help="label (or unique label prefix) of the reference row (default: the first row); "
                   "in a few-shot sweep an arm such as user_rate, compared at each K")
    p.add_argument("--test", choices=sorted(TESTS), default="wilcoxon",
                   help="paired test over users for per-user metrics (pooled auc always gets the paired bootstrap)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="resamples of the paired bootstrap over test pairs (pooled auc, from pairs_test.csv.gz)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction")
    p.add_argument("--row-key", type=_names,
                   help="comma-separated axes defining a row, e.g. model,strategy,trainer.lr "
                   "(default: model, strategy for text models, and every swept non-seed axis)")
    p.add_argument("--plot-metric", help="metric of the quality-vs-cost plots (default: the first metric) and of the "
                   "few-shot plot (default: auc when shown)")
    p.add_argument("--buckets", type=int, default=5, help="popularity buckets of items seen in training")
    p.add_argument("--bucket-k", type=int, help="K of recall per popularity bucket (default: the plot metric's K)")
    p.add_argument("--cache-dir", type=Path, action="append", default=[],
                   help="where split artifacts lie if not at the path recorded by the run (repeatable)")
    p.add_argument("--keep-constant", action="store_true",
                   help="also show columns constant by construction (e.g. APLT inside head/tail/cold)")
    p.add_argument("--costs", type=_names, default=list(DEFAULT_COSTS),
                   help=f"comma-separated cost columns, from {', '.join(COST_COLUMNS)} (default: {','.join(DEFAULT_COSTS)})")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table and plots to W&B")
    p.add_argument("--wandb-project", default="recexp", help="W&B project of the summary run")
    return p


def options(args: argparse.Namespace) -> Options:
    return Options(
        metrics=args.metrics, segments=args.segments, reference=args.reference, test=args.test,
        alpha=args.alpha, row_key=args.row_key, plot_metric=args.plot_metric, buckets=args.buckets,
        bucket_k=args.bucket_k, cache_dirs=list(args.cache_dir), wandb=not args.no_wandb,
        wandb_project=args.wandb_project, keep_constant=args.keep_constant, resamples=args.bootstrap,
        costs=tuple(args.costs),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    unknown = sorted(set(args.costs) - set(COST_COLUMNS))
    if unknown:
        print(f"error: unknown --costs {', '.join(unknown)}; choose from {', '.join(COST_COLUMNS)}.", file=sys.stderr)
        return 2
    if args.buckets < 1 or (args.bucket_k is not None and args.bucket_k < 1) or args.bootstrap < 1 or not 0 < args.alpha < 1:
        print("error: --buckets, --bucket-k and --bootstrap must be positive and --alpha in (0, 1).", file=sys.stderr)
        return 2
    try:
        result = compare(args.run_dirs, args.out, options(args))
    except RecexpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(result)
    return 0


def report(result: Comparison) -> None:
    print(result.files["markdown"].read_text(encoding="utf-8"))
    if "fewshot" in result.files:
        print(result.files["fewshot"].read_text(encoding="utf-8"))
    if result.failed:
        print(failed_summary(result.failed, result.files["failed"]), file=sys.stderr)
    print("Wrote " + ", ".join(str(p) for p in result.files.values()))
