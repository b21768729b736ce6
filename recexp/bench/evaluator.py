"""Full-ranking evaluation against RecBole's full-sort path on the same stored scores.

Score matrices, named in the report: at ml-100k's size (its random split, 943 x 1,682), the test scores of a
trained BPR (RecBole through recexp, 30 epochs) and of a frozen-MiniLM ``text_tower``, a tiny random matrix
factorisation plus log popularity, and log popularity plus noise; at 5k users x 25k items (synthetic, Zipf-like
popularity), the last two. Each is evaluated at 512 users a batch on both sides, and with each side at its
default batch (recexp 512, RecBole ``eval_batch_size`` 4,096 scores: 2 users a batch at 1,682 items, 1 at 25k);
first on the path a process takes before the compiled pass has loaded (torch.topk over a masked copy; every
GPU ranking too), then with it loaded, as a CPU run has it from the start (it loads in the background while the
model trains: :func:`paths_in_a_run` counts which path each ranking of a BPR fit took).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from recexp.bench.common import json_from_fresh_process, timed
from recexp.evaluate import Evaluator
from recexp.interfaces import Dataset, FitContext, Split
from recexp.scenarios import ColdItemScenario, RandomScenario
from recexp.tracking import NullLogger

RANKING = ["recall", "precision", "hit", "mrr", "ndcg", "map"]  # the metrics RecBole's full sort also computes
EVAL_KS = [5, 10, 20]
EVAL_TARGET_S = 10.0  # a BookCrossing-sized evaluation, every segment, on 2 CPU cores


def synthetic_dataset(n_users: int, n_items: int, per_user: int = 50, seed: int = 0) -> Dataset:
    """Random interactions, 10 to 100 per user (``per_user`` on average), items drawn by a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(1.0 / (np.arange(n_items) + 10.0) ** 0.9)
    users = np.repeat(np.arange(n_users), rng.integers(per_user // 5, 2 * per_user, n_users))
    items = rng.choice(n_items, len(users), p=popularity / popularity.sum())
    inter = pd.DataFrame({"user": users, "item": items}).drop_duplicates().assign(rating=1.0, timestamp=0.0)
    return Dataset(name=f"synthetic-{n_users}x{n_items}", inter=inter.reset_index(drop=True),
                   user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
                   item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object))


class _StoredScores:
    """Scores [n_users, n_items] computed once; a batch of consecutive users
    is a view, so what is timed is the evaluation, not the scoring."""

    pointwise_output = "score"  # a stage's labelled pairs (if any) are scored too

    def __init__(self, scores: torch.Tensor):
        self.scores = scores

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        first = int(users[0])
        if torch.equal(users, torch.arange(first, first + len(users))):
            return self.scores[first : first + len(users)]
        return self.scores[users]


def log_popularity(split: Split) -> torch.Tensor:
    """[n_items] float32: log(1 + each item's training count)."""
    return torch.as_tensor(np.bincount(split.train["item"], minlength=split.n_items), dtype=torch.float32).log1p()


def stored_scores(split: Split, pad: int = 0, seed: int = 0) -> torch.Tensor:
    """[n_users, pad + n_items] float32: log(1 + training count) plus standard normal noise; ``pad`` leading
    columns of zeros (RecBole's item 0 is padding)."""
    scores = torch.zeros(split.n_users, pad + split.n_items)
    torch.randn(split.n_users, split.n_items, generator=torch.Generator().manual_seed(seed), out=scores[:, pad:])
    scores[:, pad:] += log_popularity(split)
    return scores


def recbole_full_sort(padded: torch.Tensor, split: Split, stage: str, metrics: list[str], batch_size: int):
    """RecBole's full-sort evaluation of ``padded`` scores [n_users, 1 + n_items] (column 0: RecBole's padding item):
    its per-user history and positive lists (built once, as its data loader does), batches collated as its
    ``FullSortEvalDataLoader`` does, ``Trainer._full_sort_batch_eval``, ``Collector`` and ``Evaluator``.
    Returns (a callable running one evaluation -> (metrics, top-K lists if asked), the number of users)."""
    from recexp.models.recbole.compat import apply  # RecBole itself is imported here only, for the baseline

    apply()
    from recbole.evaluator import Collector
    from recbole.evaluator import Evaluator as RecBoleEvaluator
    from recbole.trainer import Trainer

    def lists(frame):
        return {u: torch.as_tensor(g.to_numpy() + 1) for u, g in frame.groupby("user")["item"]}

    history, positives = lists(split.history(stage)), lists(split.positives(stage))
    users, none = np.array(sorted(positives)), torch.zeros(0, dtype=torch.long)
    stored = _StoredScores(padded)
    trainer = SimpleNamespace(model=SimpleNamespace(full_sort_predict=lambda users: stored.score(users, stage)),
                              device=torch.device("cpu"), tot_item_num=split.n_items + 1)

    def run(keep_lists: bool = False):
        config = {"metrics": metrics, "topk": EVAL_KS, "eval_args": {"mode": "full"}, "device": torch.device("cpu"),
                  "metric_decimal_place": 12}
        collector, lists = Collector(config), []
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            seen, pos = [history.get(u, none) for u in batch], [positives[u] for u in batch]
            batched = (torch.as_tensor(batch),
                       (torch.cat([torch.full_like(h, i) for i, h in enumerate(seen)]), torch.cat(seen)),
                       torch.cat([torch.full_like(p, i) for i, p in enumerate(pos)]), torch.cat(pos))
            interaction, scores, positive_u, positive_i = Trainer._full_sort_batch_eval(trainer, batched)
            collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
            if keep_lists:  # the lists its collector ranks by (its own topk call), as item ids
                lists.append(torch.topk(scores, max(EVAL_KS), dim=-1).indices - 1)
        return RecBoleEvaluator(config).evaluate(collector.get_data_struct()), lists

    return run, len(users)


def recbole_default_batch(n_items: int) -> int:
    """Users a batch of RecBole's full sort at its default ``eval_batch_size`` (4,096 scores, padding item included)."""
    return max(4096 // (n_items + 1), 1)


def mf_scores(split: Split, rank: int = 8, seed: int = 0) -> torch.Tensor:
    """[n_users, n_items]: a tiny random matrix factorisation (rank 8, scaled 0.3) plus log(1 + training count)."""
    generator = torch.Generator().manual_seed(seed)
    users, items = (torch.randn(n, rank, generator=generator) for n in (split.n_users, split.n_items))
    return 0.3 * users @ items.T + log_popularity(split)


def model_scores(split: Split, model: Any, folder: Path) -> torch.Tensor:
    """[n_users, n_items] scores on the test stage of ``model`` once fitted on ``split``."""
    model.fit(split, FitContext(NullLogger(), torch.device("cpu"), folder, 0, progress=False))
    with torch.no_grad():
        return torch.cat([model.score(users, "test") for users in torch.arange(split.n_users).split(512)]).float()


def score_matrices(size: str, folder: Path) -> tuple[Split, dict[str, torch.Tensor]]:
    """The split of ``size`` (``ml100k``: ml-100k's random split; ``25k_items``: a synthetic 5k x 25k one) and its
    score matrices by name: trained BPR and frozen-MiniLM text_tower scores (ml-100k), a tiny MF plus popularity,
    and popularity plus noise."""
    if size == "25k_items":
        split = RandomScenario().build(synthetic_dataset(5000, 25000), 0)
        return split, {"mf+popularity": mf_scores(split), "popularity+noise": stored_scores(split)}
    from recexp.bench.runs import compose_model
    from recexp.models.recbole import RecBoleRecommender
    from recexp.train import TrainerConfig

    tower, split = compose_model("text_tower", ["scenario=random"], folder)
    bpr = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=30, patience=30, progress=False))
    return split, {"bpr": model_scores(split, bpr, folder / "bpr"), "text_tower": model_scores(split, tower, folder / "tower"),
                   "mf+popularity": mf_scores(split), "popularity+noise": stored_scores(split)}


def against_recbole(split: Split, scores: torch.Tensor, batch_size: int, recbole_batch: int, repeat: int) -> dict[str, Any]:
    """users/s of recexp's evaluator (``batch_size`` users a batch) and of RecBole's full sort (``recbole_batch``) on
    the same ``scores`` [n_users, n_items] (one thread), with whether both give the same top-K lists and metrics."""
    padded = torch.cat([torch.zeros(split.n_users, 1), scores], dim=1)
    ours = Evaluator(ks=EVAL_KS, metrics=RANKING, batch_size=batch_size)
    model = _StoredScores(scores.contiguous())  # as a model's output is
    ours_s, result = timed(lambda: ours.evaluate(model, split, "test", segments=("all",)), repeat)
    run, users = recbole_full_sort(padded, split, "test", RANKING, recbole_batch)
    theirs_s, _ = timed(run, repeat)
    metrics, lists = run(keep_lists=True)
    diff = {k: abs(result.metrics["all"][k] - metrics[k]) for k in metrics}
    worst = max(diff, key=diff.get)
    return {"users": users, "items": split.n_items, "batch_size": batch_size, "recbole_batch_size": recbole_batch,
            "recexp_users_per_s": users / ours_s, "recbole_users_per_s": users / theirs_s, "speedup": theirs_s / ours_s,
            "same_topk_share": float(np.mean(np.all(result.topk["all"] == torch.cat(lists).numpy(), axis=1))),
            "max_metric_diff": f"{diff[worst]:.1e} ({worst})"}  # precision@K: recexp's per-user values are float32


def measure(folder: str) -> dict[str, Any]:
    """Every size, score matrix and batch setting, first on the path a process takes before it has loaded the
    compiled pass (torch.topk over a masked copy), then with the compiled pass loaded (what a CPU run ranks with
    once its background load is done). Run in a fresh process."""
    from recexp.evaluate import top

    torch.set_num_threads(1)
    matrices = {size: score_matrices(size, Path(folder) / size) for size in ("ml100k", "25k_items")}
    if top._loading is not None:  # the fits above loaded the compiled pass in the background, as fits do
        top._loading.join()
    top._loaded.clear()  # torch.topk from here, as a process ranks before the pass has loaded ...
    top.COMPILE_AFTER = float("inf")  # ... until the pass is loaded again below
    report: dict[str, Any] = {}
    for path in ("first_run", "steady"):
        if path == "steady":
            top.load_compiled()
        for size, (split, by_name) in matrices.items():
            repeat = 10 if split.n_users * split.n_items < 10**7 else 3  # best of: the machine may be busy
            default = recbole_default_batch(split.n_items)
            for name, scores in by_name.items():
                report[f"{path}/{size}/{name}/512"] = against_recbole(split, scores, 512, 512, repeat)
                report[f"{path}/{size}/{name}/defaults"] = against_recbole(split, scores, 512, default, repeat)
    return report


def paths_in_a_run(epochs: int = 10) -> dict[str, Any]:
    """Which path ranked each batch of a BPR fit's validations on ml-100k (a fit that trains starts loading the
    compiled pass in the background), and when that pass was ready after the fit started. Run in a fresh process."""
    from recexp.data import AtomicDataset
    from recexp.evaluate import top
    from recexp.models.recbole import RecBoleRecommender
    from recexp.train import TrainerConfig

    if top.compiled_loaded():
        raise RuntimeError("paths_in_a_run() needs a process that has not loaded the compiled pass; run it in a fresh one")
    torch.set_num_threads(1)
    batches, ready, start = {"torch_topk": 0, "compiled": 0}, [], 0.0

    def counting(ranked, path):
        def counted(*args):
            batches[path] += 1
            return ranked(*args)
        return counted
    for name, path in (("masked_largest", "torch_topk"), ("compiled_largest", "compiled")):
        setattr(top, name, counting(getattr(top, name), path))
    load = top.load_compiled

    def timed_load():
        load()
        ready.append(time.perf_counter() - start)
    top.load_compiled = timed_load
    split = RandomScenario().build(AtomicDataset(name="ml-100k").load(), 0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bpr = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=epochs, patience=epochs, progress=False))
        bpr.fit(split, FitContext(NullLogger(), torch.device("cpu"), Path(tmp), 0, progress=False))
    fit_s = time.perf_counter() - start
    top._loading.join()
    return {"model": "BPR", "epochs": epochs, "batches": batches, "ready_after_s": ready[0] if ready else None,
            "fit_s": fit_s}


def bench_evaluator() -> dict[str, Any]:
    """:func:`measure` in a fresh one-thread process; then a BookCrossing-sized evaluation, every segment and
    metric, on all threads and on one."""
    with tempfile.TemporaryDirectory() as tmp:
        code = f"import json; from recexp.bench.evaluator import measure; print(json.dumps(measure({tmp!r})))"
        report: dict[str, Any] = {"runs": json_from_fresh_process(code, Path(tmp), 3600, "evaluator bench")}
        code = "import json; from recexp.bench.evaluator import paths_in_a_run; print(json.dumps(paths_in_a_run()))"
        report["in_a_run"] = json_from_fresh_process(code, Path(tmp), 900, "evaluator paths in a run")
    for path in ("first_run", "steady"):
        for size in ("ml100k", "25k_items"):
            runs = {key: run for key, run in report["runs"].items() if key.startswith(f"{path}/{size}/")}
            report[f"{path}/{size}"] = {"slowest": min(runs, key=lambda key: runs[key]["speedup"]),
                                        "speedup": min(run["speedup"] for run in runs.values()),
                                        "same_topk_share": min(run["same_topk_share"] for run in runs.values())}
    from recexp.evaluate.top import load_compiled

    load_compiled()  # as a CPU run has it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        split = ColdItemScenario().build(synthetic_dataset(5000, 27000), 0)
        model = _StoredScores(stored_scores(split))
        one_s, result = timed(lambda: Evaluator().evaluate(model, split, "test"), repeat=1)
    finally:
        torch.set_num_threads(threads)
    wall_s, _ = timed(lambda: Evaluator().evaluate(model, split, "test"), repeat=1)
    report["bookcrossing_size"] = {"users": int(result.metrics["all"]["n_users"]), "items": split.n_items,
                                   "segments": len(result.metrics), "threads": threads, "wall_s": wall_s,
                                   "wall_s_one_thread": one_s, "target_s": EVAL_TARGET_S,
                                   "within_target": min(wall_s, one_s) < EVAL_TARGET_S}
    return report
