"""``make bench``: time and memory of recexp's own hot paths on ml-100k; writes ``outputs/bench/bench.json``.

    python -m recexp.bench [--out outputs/bench] [--device auto] [--models pop,bpr,text_tower] [--only SECTIONS]
                           [--no-fewshot] [--no-evaluator] [--no-recbole] [--no-scaling]
                           [--scaling-data DIR/NAME] [--scaling-text TEMPLATE] [--no-startup] [--no-training] [--no-llm]

Each section measures one hot path against a reference in the same run; the closing table gives each
ratio and whether it meets its target.

``fewshot``: one whole few-shot cross-encoder run as a user starts it (``scenario=tallrec
scenario.shots=256 model=lm_classifier strategy=lora``: training on 256 samples, validation, 1,000 test
pairs), against its target of 3 minutes on 2 CPU cores, beside a ``model=user_rate`` run of the same
command in the same bench (start-up, data and split: what any run costs).

``evaluator``: users/s of full-ranking evaluation against RecBole's full-sort evaluation
(``Trainer._full_sort_batch_eval``, its ``Collector`` and ``Evaluator``) on the same stored scores, one
thread, Recall/Precision/Hit/MRR/NDCG/MAP at 5, 10, 20 on the ``all`` segment, at ml-100k's size (943 x
1,682; trained BPR, frozen text_tower and synthetic scores) and at 5k users x 25k items (synthetic), at 512
users a batch and with each side at its default batch, with torch.topk (what ranks before the compiled pass
has loaded) and with the compiled pass, with whether both give the same top-K lists and metrics (the table
shows the slowest case of each size and path; :mod:`recexp.bench.evaluator`); which path ranked each
validation batch of a BPR fit, which loads the compiled pass in the background; and the wall time of a
BookCrossing-sized evaluation (5k x 27k, every segment of a cold-item split, every metric) on all threads,
against its target of 10 s on 2 CPU cores.

``recbole``: seconds of a BPR epoch's training phase and of its validation phase fitted through recexp against
RecBole's own quick-start pipeline on ml-100k (and the whole epoch against raw RecBole reading recexp's files),
one thread, fresh processes in interleaved rounds (the median round's seconds and ratio, and the range of the
rounds' ratios), against its target ratio of 1.05; and on a Scientific-sized split, the validation phase
against the training phase (target: no more). See :mod:`recexp.bench.recbole`.

``scaling``: load, split, a BPR run and epoch, a full evaluation, a Pop run and a frozen encoding pass on
ml-100k and on a 1M-interaction dataset: seconds, peak memory and growth. See :mod:`recexp.bench.scaling`.

``startup``: a ``model=pop logger=none`` run on a tiny dataset against ``python -c "import torch"``, fresh
processes interleaved, against its target of 1.5 s more; and which heavy packages the Pop run imported.

``bare_loop`` and ``strategies`` (``--no-training`` skips both): see :mod:`recexp.bench.training`.

``llm_load``, ``llm_loop`` and ``llm_run`` (``--no-llm`` skips them): see :mod:`recexp.bench.llm`.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recexp.bench.evaluator import bench_evaluator
from recexp.bench.llm import bench_llm_load, bench_llm_loop, bench_llm_run
from recexp.bench.recbole import bench_recbole
from recexp.bench.runs import bench_fewshot, bench_model, bench_pipeline
from recexp.bench.scaling import bench_scaling
from recexp.bench.startup import bench_startup
from recexp.bench.training import bench_bare_loop, bench_strategies
from recexp.run import pick_device
from recexp.tracking import package_versions, write_json_atomic

# section -> (flag that skips it, what runs it given the parsed arguments)
SECTIONS: dict[str, tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "evaluator": ("evaluator", lambda args: bench_evaluator()),
    "recbole": ("recbole", lambda args: bench_recbole()),
    "scaling": ("scaling", lambda args: bench_scaling(args.scaling_data, args.scaling_text)),
    "startup": ("startup", lambda args: bench_startup()),
    "bare_loop": ("training", lambda args: bench_bare_loop(args.out)),
    "strategies": ("training", lambda args: bench_strategies(args.out)),
    "fewshot": ("fewshot", lambda args: bench_fewshot(args.out)),
    "llm_load": ("llm", lambda args: bench_llm_load(args.out)),
    "llm_loop": ("llm", lambda args: bench_llm_loop(args.out)),
    "llm_run": ("llm", lambda args: bench_llm_run(args.out)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="pop,bpr", help="comma-separated model presets to fit")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override, repeatable")
    parser.add_argument("--only", default=None, help="comma-separated sections to run (default: all not skipped)")
    parser.add_argument("--no-fewshot", dest="fewshot", action="store_false", help="skip the few-shot cross-encoder run")
    parser.add_argument("--no-evaluator", dest="evaluator", action="store_false",
                        help="skip the evaluator against RecBole's full sort")
    parser.add_argument("--no-recbole", dest="recbole", action="store_false",
                        help="skip recexp's RecBole BPR against raw RecBole")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false",
                        help="skip ml-100k against a 1M-interaction dataset, step by step")
    parser.add_argument("--scaling-data", default=None,
                        help="DIR/NAME of atomic files for the scaling section (default: a synthetic MovieLens-1M-sized set)")
    parser.add_argument("--scaling-text", default=None,
                        help="item text template over the --scaling-data item file's fields (default: no encoding pass)")
    parser.add_argument("--no-startup", dest="startup", action="store_false",
                        help="skip a Pop run's start-up against `import torch`")
    parser.add_argument("--no-training", dest="training", action="store_false",
                        help="skip the trained-encoder sections (bare loop, strategy ladder)")
    parser.add_argument("--no-llm", dest="llm", action="store_false",
                        help="skip the decoder LLM sections (SmolLM2 load, llm_ranker's loop, a K=256 llm_ranker run)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": str(device), "versions": package_versions()}
    if only is None:
        report["pipeline"] = bench_pipeline(device)
        report["models"] = {m: bench_model(m, args.override, device, args.out) for m in args.models.split(",") if m}
    for section, (flag, run) in SECTIONS.items():
        if getattr(args, flag) and (only is None or section in only):
            report[section] = run(args)
            write_json_atomic(args.out / "bench.json", report)  # a later section's failure keeps this one
    path = args.out / "bench.json"
    write_json_atomic(path, report)
    (args.out / "bench.md").write_text(table(report) + "\n")
    print(f"wrote {path} and bench.md\n")
    print(table(report))


def headlines(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, recexp, reference, ratio, target and whether met) per section present in ``report``."""
    rows = []
    ok = lambda met: "yes" if met else "NO"  # noqa: E731
    for path, key, size in ((p, f"{p}/{k}", size) for p in ("first_run", "steady") for k, size in
                            (("ml100k", "ml-100k"), ("25k_items", "25k items"))):
        if key in report.get("evaluator", {}):
            e = report["evaluator"][key]
            slowest = report["evaluator"]["runs"][e["slowest"]]
            matrix, batches = e["slowest"].split("/")[2:]
            where = "torch.topk, before the compiled pass loads" if path == "first_run" else "compiled pass, as a CPU run ranks"
            rows.append((f"evaluator users/s, {size}, {where}, slowest case: {matrix} scores, "
                         f"{'each side at its default batch' if batches == 'defaults' else '512 users a batch'} "
                         f"(vs RecBole full sort)", f"{slowest['recexp_users_per_s']:,.0f}",
                         f"{slowest['recbole_users_per_s']:,.0f}", f"{e['speedup']:.2f}x",
                         f">= 3x: {ok(e['speedup'] >= 3)}, same top-K lists: {e['same_topk_share']:.1%}"))
    if "in_a_run" in report.get("evaluator", {}):
        e = report["evaluator"]["in_a_run"]
        total = sum(e["batches"].values())
        ready = "never ready" if e["ready_after_s"] is None else f"ready after {e['ready_after_s']:.1f} s"
        rows.append((f"validation batches ranked by the compiled pass in a {e['model']} fit on ml-100k, loaded in the "
                     f"background ({ready} of a {e['fit_s']:.1f} s fit)",
                     f"{e['batches']['compiled']} of {total}", "-", "-", f"all: {ok(e['batches']['compiled'] == total)}"))
    if "bookcrossing_size" in report.get("evaluator", {}):
        e = report["evaluator"]["bookcrossing_size"]
        rows.append(("evaluation 5k x 27k, every segment (s)", f"{min(e['wall_s'], e['wall_s_one_thread']):.2f}", "-",
                     "-", f"< {e['target_s']:.0f} s: {ok(e['within_target'])}"))
    if "recbole" in report:
        r = report["recbole"]
        for phase, reference, what in (("train_s", "recbole", "training phase (vs RecBole's own pipeline)"),
                                       ("valid_s", "recbole", "validation phase (vs RecBole's own pipeline)"),
                                       ("epoch_s", "files", "whole epoch (vs raw RecBole on recexp's files)")):
            row, target = r[f"{phase}_vs_{reference}"], ""
            spread = f"rounds {min(row['ratios']):.2f}x to {max(row['ratios']):.2f}x"
            if reference == "recbole":
                target = f"<= {r['target_ratio']}x: {ok(row['ratio'] <= r['target_ratio'])} "
            rows.append((f"RecBole BPR s/epoch, {what}, median of {len(row['ratios'])} rounds", f"{row['recexp']:.3f}",
                         f"{row[reference]:.3f}", f"{row['ratio']:.3f}x", f"{target}({spread})"))
        s = r["scientific_size"]
        rows.append(("RecBole BPR validation s per training s, Scientific-sized (vs RecBole's own validation)",
                     f"{s['recexp']['valid_s']:.2f} / {s['recexp']['train_s']:.2f}",
                     f"{s['files']['valid_s']:.2f} / {s['files']['train_s']:.2f}", f"{s['valid_over_train']:.2f}x",
                     f"<= 1x: {ok(s['within_target'])} (trainer.valid_every={s['valid_every_within']}: yes)"))
    if "scaling" in report:
        r = report["scaling"]
        grew = ", ".join(f"{step} {row['ratio']:.1f}x" for step, row in r["steps"].items())
        rows.append((f"1M interactions against ml-100k ({r['growth']['interactions']:.1f}x the interactions): {grew}",
                     f"{r['bpr_peak_mb']:,.0f} MB", "-", "-",
                     f"linear, BPR run < {r['bpr_memory_target_mb']:,} MB: {ok(r['within_target'])}"))
    if "startup" in report:
        r = report["startup"]
        rows.append(("Pop run start-up s (vs import torch)", f"{r['pop_run_s']:.2f}", f"{r['import_torch_s']:.2f}",
                     f"+{r['startup_s']:.2f} s", f"<= +{r['target_s']} s: {ok(r['within_target'])}"))
    if "bare_loop" in report:
        r = report["bare_loop"]
        rows.append(("LoRA text_tower interactions/s (vs bare loop)", f"{r['recexp_interactions_per_s']:,.0f}",
                     f"{r['bare_interactions_per_s']:,.0f}", f"{r['ratio']:.3f}x", f">= {r['target']}x: {ok(r['within_target'])}"))
    if "strategies" in report:
        s = report["strategies"]
        speeds = ", ".join(f"{name} {s[name]['samples_per_second']:,.0f}" for name in ("frozen", "partial", "lora", "full_ft"))
        rows.append((f"text_tower interactions/s: {speeds}", "-", "-", "-", f"ladder: {ok(s['ladder_holds'])}"))
    if "fewshot" in report:
        f = report["fewshot"]
        rows.append(("K=256 cross-encoder run s (vs user_rate run)", f"{f['lm_classifier_lora']['wall_s']:.1f}",
                     f"{f['user_rate']['wall_s']:.1f}", f"{f['ratio_to_user_rate']:.1f}x",
                     f"< {f['target_s']:.0f} s: {ok(f['within_target'])}"))
    if "llm_load" in report:
        r = report["llm_load"]
        rows.append(("SmolLM2 load s, cached (vs first, de-quantising)", f"{r['cached_s']:.2f}", f"{r['first_s']:.1f}",
                     f"{r['cached_s'] / r['first_s']:.2f}x", f"< {r['target_s']:.0f} s: {ok(r['within_target'])}"))
    if "llm_loop" in report:
        r = report["llm_loop"]
        rows.append(("LoRA llm_ranker training tokens/s (vs bare loop)", f"{r['recexp_tokens_per_s']:,.0f}",
                     f"{r['bare_tokens_per_s']:,.0f}", f"{r['ratio']:.3f}x", f">= {r['target']}x: {ok(r['within_target'])}"))
    if "llm_run" in report:
        r = report["llm_run"]
        rows.append(("K=256 LoRA llm_ranker run s", f"{r['wall_s']:.0f}", "-", "-",
                     f"< {r['target_s']:.0f} s: {ok(r['within_target'])}"))
    return rows


def table(report: dict[str, Any]) -> str:
    """The headlines as a Markdown table."""
    lines = ["| measure | recexp | reference | ratio | target |", "|---|---:|---:|---:|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in headlines(report)])


if __name__ == "__main__":
    main()
