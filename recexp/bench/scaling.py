"""How cost grows with the data: ml-100k against a MovieLens-1M-sized dataset, step by step.

Each dataset goes through the steps of a run, in a fresh one-thread process, as a user's atomic files
(``dataset=atomic``): load, split (random 8:1:1 per user), a RecBole BPR run of one epoch (its training phase
timed apart), a full evaluation of that BPR on the test stage (every metric and segment), a RecBole Pop run
(fit and the same evaluation) and one frozen MiniLM encoding pass over every item text. Each step reports its
seconds and the process's peak resident memory while it ran (what it holds from the steps before included).
Each step's best time of 2 such processes is kept, and its growth from ml-100k is set against the growth of
what it should be linear in: interactions (load, split, a BPR epoch), users x items (a full evaluation, and
the runs, which rank every item for every user at least once) or item text tokens (the encoding pass).

The larger dataset is synthetic by default (:func:`write_movielens_1m_sized`): 6,040 users, 3,416 items,
1,000,000 interactions, each user's count drawn from a log-normal (at least 20, median about 100, as in
MovieLens-1M), items by a Zipf-like popularity; or a user's atomic files by path (``--scaling-data DIR/NAME``).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recexp.bench.common import json_from_fresh_process

SEED = 0
GROWTH_SLACK = 1.25  # a step is linear when it grows at most this much beyond what it is linear in
BPR_MEMORY_TARGET_MB = 4096  # peak of a BPR run on 1M interactions
# step -> what its cost should grow with, at most (a run that ranks every item for every user grows with both)
LINEAR_IN = {"load": "interactions", "split": "interactions", "bpr_epoch": "interactions", "bpr_run": "users_x_items",
             "evaluate": "users_x_items", "pop_run": "users_x_items", "encode_items": "item_text_tokens"}
WORDS = ("the", "night", "story", "love", "man", "city", "return", "last", "dark", "house", "war", "life", "blue",
         "summer", "king", "road", "girl", "secret", "world", "river", "time", "island", "game", "heart")


def write_movielens_1m_sized(folder: Path, n_users: int = 6040, n_items: int = 3416, n_interactions: int = 1_000_000,
                             seed: int = SEED) -> Path:
    """Atomic files ``ml-1m-sized.{inter,item}`` in ``folder``: per-user counts log-normal (at least 20, scaled to
    ``n_interactions`` in all), distinct items per user by a Zipf-like popularity, increasing timestamps, ratings
    1-5, and a title of 2-6 words per item."""
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(np.log(100), 1.0, n_users), 20, n_items // 2)
    counts = np.maximum(20, np.round(counts * n_interactions / counts.sum())).astype(int)
    counts[np.argsort(-counts)[: abs(counts.sum() - n_interactions)]] -= np.sign(counts.sum() - n_interactions)
    popularity = rng.permutation(1.0 / (np.arange(n_items) + 20.0) ** 0.9)
    popularity /= popularity.sum()
    # distinct items per user drawn by popularity without replacement: the ``count`` largest Efraimidis-Spirakis
    # keys u ** (1 / p), compared as log(u) / p
    items = [np.argpartition(np.log(rng.random(n_items)) / popularity, -count)[-count:] for count in counts]
    users = np.repeat(np.arange(n_users), counts)
    starts = rng.integers(956_703_932, 1_046_454_590, n_users)
    times = np.concatenate([np.sort(rng.integers(start, start + 3e7, count)) for start, count in zip(starts, counts)])
    inter = pd.DataFrame({"user_id:token": users, "item_id:token": np.concatenate(items),
                          "rating:float": rng.choice(5, len(users), p=[0.06, 0.11, 0.26, 0.35, 0.22]) + 1,
                          "timestamp:float": times})
    folder.mkdir(parents=True, exist_ok=True)
    inter.to_csv(folder / "ml-1m-sized.inter", sep="\t", index=False)
    titles = [" ".join(rng.choice(WORDS, rng.integers(2, 7))) for _ in range(n_items)]
    pd.DataFrame({"item_id:token": np.arange(n_items), "movie_title:token_seq": titles}).to_csv(
        folder / "ml-1m-sized.item", sep="\t", index=False)
    return folder / "ml-1m-sized"


def steps(path: str | None, name: str, out: Path, item_template: str | None = "{movie_title}") -> dict[str, Any]:
    """Seconds and peak memory of each step on the atomic dataset ``path``/``name`` (None: the packaged ml-100k),
    its item texts rendered from ``item_template`` (None: no encoding pass). The compiled ranking pass is loaded
    first, so both datasets rank on the path a run takes once its background load is done."""
    import torch

    from recexp.bench.recbole import _train_spans
    from recexp.costs import CostMeter
    from recexp.data import AtomicDataset
    from recexp.evaluate import Evaluator
    from recexp.evaluate.top import load_compiled
    from recexp.interfaces import FitContext
    from recexp.models.recbole import RecBoleRecommender
    from recexp.models.text.encoder import TextEncoder
    from recexp.scenarios import RandomScenario
    from recexp.tracking import NullLogger
    from recexp.train import TrainerConfig

    load_compiled()
    cpu, meter, spans = torch.device("cpu"), CostMeter(torch.device("cpu")), _train_spans()

    def fitted(model: str) -> RecBoleRecommender:
        recommender = RecBoleRecommender(model, trainer=TrainerConfig(max_epochs=1, patience=1, progress=False))
        recommender.fit(split, FitContext(NullLogger(), cpu, out / model, SEED, progress=False))
        return recommender

    with meter.phase("load"):
        dataset = AtomicDataset(name=name, path=path, item_template=item_template).load()
    with meter.phase("split"):
        split = RandomScenario().build(dataset, SEED)
    with meter.phase("bpr_run"):  # a one-epoch fit: files for RecBole, its dataset, the epoch, one validation
        bpr = fitted("BPR")
    bpr_epoch = spans[-1][1] - spans[-1][0]
    with meter.phase("evaluate"):
        Evaluator().evaluate(bpr, split, "test", cpu)
    with meter.phase("pop_run"):
        Evaluator().evaluate(fitted("Pop"), split, "test", cpu)
    tokens = 0
    if dataset.item_text is not None:  # the encoder is loaded only to be timed
        encoder = TextEncoder(progress=False)
        with meter.phase("encode_items"):
            encoder.embed(list(dataset.item_text))
        tokens = encoder.tokens_encoded
    sizes = {"users": split.n_users, "items": split.n_items, "interactions": len(dataset.inter),
             "item_text_tokens": tokens}
    return {"sizes": sizes, "seconds": {**meter.seconds, "bpr_epoch": bpr_epoch}, "peak_mb": meter.peaks}


def run_steps(path: str | None, name: str, out: Path, item_template: str | None, repeat: int = 2) -> dict[str, Any]:
    """:func:`steps` in ``repeat`` fresh one-thread processes: each step's best seconds, and its peak memory."""
    runs = []
    for attempt in range(repeat):
        folder = out / str(attempt)
        folder.mkdir(parents=True, exist_ok=True)
        code = (f"import json; from pathlib import Path; from recexp.bench.scaling import steps; "
                f"print(json.dumps(steps({path!r}, {name!r}, Path({str(folder.resolve())!r}), {item_template!r})))")
        runs.append(json_from_fresh_process(code, folder, 1800, f"scaling steps on {name}"))
    return {**runs[0], "seconds": {step: min(run["seconds"][step] for run in runs) for step in runs[0]["seconds"]}}


def bench_scaling(data: str | None = None, item_template: str | None = None) -> dict[str, Any]:
    """ml-100k against ``data`` (``DIR/NAME`` of a user's atomic files, their item texts from ``item_template``, or
    none encoded; None: a synthetic MovieLens-1M-sized set, titles as ``{movie_title}``)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = write_movielens_1m_sized(Path(tmp) / "data") if data is None else Path(data)
        generate_s = time.perf_counter() - start
        folder, name = str(files.parent), files.name
        template = "{movie_title}" if data is None else item_template
        small = run_steps(None, "ml-100k", Path(tmp) / "small", "{movie_title}")
        large = run_steps(folder, name, Path(tmp) / "large", template)
    size = lambda sizes, basis: sizes["users"] * sizes["items"] if basis == "users_x_items" else sizes[basis]  # noqa: E731
    growth = {basis: size(large["sizes"], basis) / size(small["sizes"], basis) for basis in set(LINEAR_IN.values())}
    rows = {}
    for step, basis in LINEAR_IN.items():
        if step not in large["seconds"]:
            continue  # no item texts to encode
        ratio = large["seconds"][step] / small["seconds"][step]
        rows[step] = {"ml100k_s": small["seconds"][step], "large_s": large["seconds"][step], "ratio": ratio,
                      "ml100k_peak_mb": small["peak_mb"].get(step), "large_peak_mb": large["peak_mb"].get(step),  # none: in bpr_run
                      "linear_in": basis, "data_growth": growth[basis],
                      "linear": ratio <= GROWTH_SLACK * growth[basis]}
    bpr_peak = max(large["peak_mb"]["bpr_run"], large["peak_mb"]["evaluate"])
    return {"large": data or "synthetic MovieLens-1M-sized", "generate_s": generate_s, "sizes": {"ml-100k": small["sizes"],
            "large": large["sizes"]}, "growth": growth, "steps": rows, "bpr_peak_mb": bpr_peak,
            "bpr_memory_target_mb": BPR_MEMORY_TARGET_MB, "within_target": bpr_peak < BPR_MEMORY_TARGET_MB
            and all(row["linear"] for row in rows.values())}


if __name__ == "__main__":
    print(json.dumps(bench_scaling(*sys.argv[1:3]), indent=2))
