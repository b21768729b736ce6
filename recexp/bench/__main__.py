"""``make bench``: time and memory of recexp's own hot paths on ml-100k; writes ``outputs/bench/bench.json``.

    python -m recexp.bench [--out outputs/bench] [--device auto] [--models pop,bpr,text_tower] [--no-fewshot]
                           [--no-evaluator] [--no-recbole] [--no-startup]

``fewshot``: one whole few-shot cross-encoder run as a user starts it (``scenario=tallrec
scenario.shots=256 model=lm_classifier strategy=lora``: training on 256 samples, validation, 1,000 test
pairs), against its target of 3 minutes on 2 CPU cores, beside a ``model=user_rate`` run of the same
command in the same bench (start-up, data and split: what any run costs).

``evaluator``: users/s of full-ranking evaluation against RecBole's full-sort evaluation
(``Trainer._full_sort_batch_eval``, its ``Collector`` and ``Evaluator``) on the same stored scores, one
thread, 512 users a batch, Recall/Precision/Hit/MRR/NDCG/MAP at 5, 10, 20 on the ``all`` segment, at
ml-100k's size (943 x 1,682) and at 5k users x 25k items, with whether both give the same top-K lists and
metrics; and the wall time of a BookCrossing-sized evaluation (5k x 27k, every segment of a cold-item
split, every metric) on all threads, against its target of 10 s on 2 CPU cores.

``recbole``: seconds per epoch (train + validation) of BPR fitted through recexp against raw RecBole on the
same split and configuration, one thread, fresh processes interleaved, against its target ratio of 1.05.

``startup``: a ``model=pop logger=none`` run on a tiny dataset against ``python -c "import torch"``, fresh
processes interleaved, against its target of 1.5 s more; and which heavy packages the Pop run imported.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recexp.bench.evaluator import bench_evaluator
from recexp.bench.recbole import bench_recbole
from recexp.bench.runs import bench_fewshot, bench_model, bench_pipeline
from recexp.bench.startup import bench_startup
from recexp.run import pick_device
from recexp.tracking import package_versions, write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="pop,bpr", help="comma-separated model presets to fit")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override, repeatable")
    parser.add_argument("--no-fewshot", dest="fewshot", action="store_false", help="skip the few-shot cross-encoder run")
    parser.add_argument("--no-evaluator", dest="evaluator", action="store_false",
                        help="skip the evaluator against RecBole's full sort")
    parser.add_argument("--no-recbole", dest="recbole", action="store_false",
                        help="skip recexp's RecBole BPR against raw RecBole")
    parser.add_argument("--no-startup", dest="startup", action="store_false",
                        help="skip a Pop run's start-up against `import torch`")
    args = parser.parse_args()
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": str(device), "versions": package_versions(), "pipeline": bench_pipeline(device)}
    report["models"] = {m: bench_model(m, args.override, device, args.out) for m in args.models.split(",") if m}
    if args.evaluator:
        report["evaluator"] = bench_evaluator()
    if args.recbole:
        report["recbole"] = bench_recbole()
    if args.startup:
        report["startup"] = bench_startup()
    if args.fewshot:
        report["fewshot"] = bench_fewshot(args.out)
    path = args.out / "bench.json"
    write_json_atomic(path, report)
    print(f"wrote {path}")
    for section in ("pipeline", "models", "evaluator", "recbole", "startup", "fewshot"):
        for key, value in report.get(section, {}).items():
            print(f"  {section}.{key}: {value}")


if __name__ == "__main__":
    main()
