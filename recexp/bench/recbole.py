"""Seconds per epoch of a RecBole model fitted by recexp against raw RecBole on the same configuration.

Both sides train BPR on the same ml-100k split (the benchmark files recexp writes for RecBole), with
RecBole's defaults, the early-stopping metric recexp asks for (NDCG@10) and one torch thread. Each fit
runs in a fresh process, as a user would start it (a setting one side leaves behind in its process, like
autograd's anomaly mode, would otherwise slow both), the two sides in interleaved pairs. An epoch is the
median time between two of RecBole's end-of-epoch callbacks: training, validation and its checkpoint.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "BPR"
TARGET_RATIO = 1.05  # recexp's seconds per epoch over raw RecBole's
SEED = 2020
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SIDES = {"recexp": "recexp_epochs", "recbole": "raw_epochs"}  # side -> the function of this module fitting it


class _EpochClock:
    """A run logger that only notes when each epoch's validation was logged."""

    def __init__(self):
        self.times: list[float] = []

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.times.append(time.perf_counter())

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def _split(cache: Path) -> Any:
    """The ml-100k random split (RecBole's 8:1:1 per user), built once and then read from ``cache``."""
    from recexp.data import AtomicDataset
    from recexp.scenarios import RandomScenario, build_or_load

    return build_or_load(AtomicDataset(name="ml-100k").load(), RandomScenario(), SEED, cache)


def recexp_epochs(folder: Path, cache: Path, epochs: int) -> list[float]:
    """End-of-epoch times of ``RecBoleRecommender(MODEL)`` fitting for ``epochs`` epochs (no early stop)."""
    import torch

    from recexp.interfaces import FitContext
    from recexp.models.recbole import RecBoleRecommender
    from recexp.train import TrainerConfig

    split, clock = _split(cache), _EpochClock()
    model = RecBoleRecommender(MODEL, trainer=TrainerConfig(max_epochs=epochs, patience=epochs, progress=False))
    model.fit(split, FitContext(clock, torch.device("cpu"), folder, SEED, progress=False))
    return clock.times


def raw_config(folder: Path, epochs: int) -> dict[str, Any]:
    """RecBole's config for the benchmark files in ``folder``: its defaults, the data recexp's adapter
    loads, NDCG@10 for early stopping, no progress bars, CPU."""
    return {
        "data_path": str(folder),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id"], "user": ["user_id"]},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "epochs": epochs, "stopping_step": epochs,
        "seed": SEED, "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": str(folder / "checkpoints"),
    }


def raw_epochs(folder: Path, cache: Path, epochs: int) -> list[float]:
    """End-of-epoch times of raw RecBole (its quick_start steps, repaired to run on today's stack)."""
    from recexp.models.recbole.compat import apply
    from recexp.models.recbole.files import DATASET, write_benchmark

    write_benchmark(_split(cache), folder / DATASET)
    apply()
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(1)
    config = Config(model=MODEL, dataset=DATASET, config_dict=raw_config(folder, epochs))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    times: list[float] = []
    trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                callback_fn=lambda epoch, score: times.append(time.perf_counter()))
    return times


def seconds_per_epoch(times: list[float]) -> float:
    """Median time between successive end-of-epoch callbacks."""
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def run_side(side: str, folder: Path, cache: Path, epochs: int) -> float:
    """Seconds per epoch of one fit (``side``: recexp | recbole) in a fresh one-thread process working in
    ``folder``: what raw RecBole writes under its working directory (``log_tensorboard/``) stays there."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (f"from pathlib import Path; from recexp.bench import recbole as b; "
            f"print(b.seconds_per_epoch(b.{SIDES[side]}(Path({str(folder.resolve())!r}), Path({str(cache.resolve())!r}), {epochs})))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ONE_THREAD}, cwd=folder,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{side} fit failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def median_index(ratios: list[float]) -> int:
    """Index of the median ratio; of an even count, the higher middle one (the target is an upper bound)."""
    return ratios.index(statistics.median_high(ratios))


def bench_recbole(epochs: int = 20, pairs: int = 5) -> dict[str, Any]:
    """Seconds per epoch of recexp's RecBole BPR and of raw RecBole over ``pairs`` pairs of fits, the two sides
    of a pair run back to back (which goes first alternates). The ratio is the median pair's (a busy neighbour
    slows both fits of a pair, where the two sides' best fits may come from different moments), and the seconds
    reported beside it are that pair's, so they read as the ratio."""
    runs: dict[str, list[float]] = {"recexp": [], "recbole": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _split(cache)  # build the split once, outside the timed fits
        for pair in range(pairs):
            for side in (list(runs) if pair % 2 == 0 else list(runs)[::-1]):
                runs[side].append(run_side(side, Path(tmp) / f"{side}{pair}", cache, epochs))
    pair_ratios = [a / b for a, b in zip(runs["recexp"], runs["recbole"])]
    median_pair = median_index(pair_ratios)
    ratio = pair_ratios[median_pair]
    return {"model": MODEL, "epochs": epochs, "pairs": pairs, "threads": 1, "median_pair": median_pair,
            "recexp_s_per_epoch": runs["recexp"][median_pair],
            "recbole_s_per_epoch": runs["recbole"][median_pair],
            "recexp_runs": runs["recexp"], "recbole_runs": runs["recbole"], "pair_ratios": pair_ratios,
            "ratio": ratio, "target_ratio": TARGET_RATIO, "within_target": ratio <= TARGET_RATIO}


if __name__ == "__main__":
    print(json.dumps(bench_recbole(), indent=2))
