"""Seconds per epoch of a RecBole model fitted by recexp against RecBole's own pipeline, phase by phase.

Three sides train BPR on ml-100k with RecBole's defaults, the early-stopping metric recexp asks for
(NDCG@10) and one torch thread:

- ``recexp``: ``RecBoleRecommender`` on recexp's random split (8:1:1 per user);
- ``recbole``: RecBole's own quick-start pipeline, reading ml-100k's atomic files and splitting them itself
  (8:1:1 per user, random order): the reference, as a user would run RecBole;
- ``files``: raw RecBole reading the benchmark files recexp writes for the same split, reported beside.

Each fit runs in a fresh process, as a user would start it (a setting one side leaves behind in its process,
like autograd's anomaly mode, would otherwise slow both), the sides in interleaved rounds. An epoch's
training phase is RecBole's ``_train_epoch``; its validation phase runs from there to the end-of-epoch callback
(the validation, its checkpoint when it improved, the logging). Each is a median over the fit's epochs.

``scientific_size``: recexp's BPR on a synthetic split of Amazon Scientific's size (8,442 users, 4,385 items,
about 59k interactions, ``cold_item``), where each validation ranks every item for 8.4k users: its validation
phase against its own training phase (target: no more), and raw RecBole's on the same files for reference.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from recexp.bench.common import json_from_fresh_process

MODEL = "BPR"
TARGET_RATIO = 1.05  # recexp's seconds per phase over RecBole's own pipeline's
SEED = 2020
SIDES = {"recexp": "recexp_fit", "recbole": "own_fit", "files": "files_fit"}  # side -> the function fitting it
SCIENTIFIC = {"n_users": 8442, "n_items": 4385, "per_user": 7}  # Amazon Scientific's size (UniSRec's release)


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


def _split(cache: Path, data: str) -> Any:
    """``data``: ``ml-100k`` (its random split, RecBole's 8:1:1 per user) or ``scientific`` (a synthetic
    Scientific-sized cold_item split); built once, then read from ``cache``."""
    from recexp.scenarios import ColdItemScenario, RandomScenario, build_or_load

    if data == "ml-100k":
        from recexp.data import AtomicDataset

        return build_or_load(AtomicDataset(name="ml-100k").load(), RandomScenario(), SEED, cache)
    from recexp.bench.evaluator import synthetic_dataset

    return build_or_load(synthetic_dataset(**SCIENTIFIC), ColdItemScenario(), SEED, cache)


def _train_spans() -> list[tuple[float, float]]:
    """Start and end of every ``_train_epoch`` of RecBole's trainers from now on in this process."""
    from recexp.models.recbole.compat import apply

    apply()
    from recbole.trainer import Trainer

    spans: list[tuple[float, float]] = []
    train_epoch = Trainer._train_epoch

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return train_epoch(self, *args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))

    Trainer._train_epoch = timed
    return spans


def recexp_fit(folder: Path, cache: Path, epochs: int, data: str) -> tuple[list[tuple[float, float]], list[float]]:
    """(training spans, end-of-epoch times) of ``RecBoleRecommender(MODEL)`` fitting for ``epochs`` epochs (its fit
    loads the compiled ranking pass in the background, as in a run)."""
    import torch

    from recexp.interfaces import FitContext
    from recexp.models.recbole import RecBoleRecommender
    from recexp.train import TrainerConfig

    split, clock, spans = _split(cache, data), _EpochClock(), _train_spans()
    model = RecBoleRecommender(MODEL, trainer=TrainerConfig(max_epochs=epochs, patience=epochs, progress=False))
    model.fit(split, FitContext(clock, torch.device("cpu"), folder, SEED, progress=False))
    return spans, clock.times


def raw_config(epochs: int) -> dict[str, Any]:
    """RecBole's config apart from its data: its defaults, NDCG@10 for early stopping, no progress bars, CPU."""
    return {"metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10",
            "epochs": epochs, "stopping_step": epochs,
            "seed": SEED, "device": "cpu", "use_gpu": False, "show_progress": False}


def files_config(folder: Path) -> dict[str, Any]:
    """RecBole's data settings for the benchmark files recexp writes into ``folder``."""
    return {"data_path": str(folder), "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id"], "user": ["user_id"]},
            "eval_args": {"group_by": "user", "order": "RO", "mode": "full"}}


def _raw_fit(dataset: str, config_dict: dict[str, Any]) -> tuple[list[tuple[float, float]], list[float]]:
    """RecBole's quick_start steps (repaired to run on today's stack): (training spans, end-of-epoch times)."""
    spans = _train_spans()
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(1)
    config = Config(model=MODEL, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    ends: list[float] = []
    trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                callback_fn=lambda epoch, score: ends.append(time.perf_counter()))
    return spans, ends


def own_fit(folder: Path, cache: Path, epochs: int, data: str) -> tuple[list[tuple[float, float]], list[float]]:
    """RecBole's own pipeline on ml-100k: its packaged atomic files, split by RecBole itself."""
    import recbole

    if data != "ml-100k":
        raise ValueError(f"RecBole's own pipeline reads ml-100k only, not {data}")
    examples = Path(recbole.__file__).parent / "dataset_example"
    return _raw_fit("ml-100k", raw_config(epochs) | {"data_path": str(examples),
                                                     "checkpoint_dir": str(folder / "checkpoints")})


def files_fit(folder: Path, cache: Path, epochs: int, data: str) -> tuple[list[tuple[float, float]], list[float]]:
    """Raw RecBole on the benchmark files recexp writes for the same split."""
    from recexp.models.recbole.compat import apply

    apply()
    from recexp.models.recbole.files import DATASET, write_benchmark

    write_benchmark(_split(cache, data), folder / DATASET)
    return _raw_fit(DATASET, raw_config(epochs) | files_config(folder) | {"checkpoint_dir": str(folder / "checkpoints")})


def phases(spans: list[tuple[float, float]], ends: list[float]) -> dict[str, float]:
    """Median seconds of an epoch's training phase, of its validation phase (from the end of training to the
    end-of-epoch callback) and of a whole epoch (between successive callbacks): every epoch validates here
    (RecBole calls back only after a validation), so the i-th callback ends the i-th training span."""
    return {"train_s": statistics.median(end - start for start, end in spans),
            "valid_s": statistics.median(end - trained for (_, trained), end in zip(spans, ends)),
            "epoch_s": statistics.median(b - a for a, b in zip(ends, ends[1:]))}


def run_side(side: str, folder: Path, cache: Path, epochs: int, data: str = "ml-100k") -> dict[str, float]:
    """:func:`phases` of one fit (``side``: recexp | recbole | files) in a fresh one-thread process working in
    ``folder``: what raw RecBole writes under its working directory (``log_tensorboard/``) stays there."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (f"import json; from pathlib import Path; from recexp.bench import recbole as b; "
            f"print(json.dumps(b.phases(*b.{SIDES[side]}(Path({str(folder.resolve())!r}), "
            f"Path({str(cache.resolve())!r}), {epochs}, {data!r}))))")
    return json_from_fresh_process(code, folder, 900, f"{side} fit")


def median_index(ratios: list[float]) -> int:
    """Index of the median ratio; of an even count, the higher middle one (the target is an upper bound)."""
    return ratios.index(statistics.median_high(ratios))


def bench_recbole(epochs: int = 20, rounds: int = 5) -> dict[str, Any]:
    """Each side's phases over ``rounds`` rounds of fits, the sides of a round back to back (their order rotates).
    A phase's ratio is the median round's (a busy neighbour slows every fit of a round, where the sides' best
    fits may come from different moments), and the seconds reported beside it are that round's."""
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _split(cache, "ml-100k"), _split(cache, "scientific")  # built once, outside the timed fits
        for round_ in range(rounds):
            order = list(SIDES)[round_ % len(SIDES):] + list(SIDES)[: round_ % len(SIDES)]
            for side in order:
                runs[side].append(run_side(side, Path(tmp) / f"{side}{round_}", cache, epochs))
        scientific = {side: [run_side(side, Path(tmp) / f"scientific_{side}{round_}", cache, max(epochs // 2, 3),
                                      "scientific") for round_ in range(rounds if side == "recexp" else 1)]
                      for side in ("recexp", "files")}
    report: dict[str, Any] = {"model": MODEL, "epochs": epochs, "rounds": rounds, "threads": 1, "runs": runs}
    for phase in ("train_s", "valid_s", "epoch_s"):
        for reference in ("recbole", "files"):
            ratios = [ours[phase] / theirs[phase] for ours, theirs in zip(runs["recexp"], runs[reference])]
            middle = median_index(ratios)
            report[f"{phase}_vs_{reference}"] = {"recexp": runs["recexp"][middle][phase],
                                                 reference: runs[reference][middle][phase],
                                                 "ratio": ratios[middle], "ratios": ratios}
    report["within_target"] = all(report[f"{phase}_vs_recbole"]["ratio"] <= TARGET_RATIO for phase in ("train_s", "valid_s"))
    report["target_ratio"] = TARGET_RATIO
    fits = scientific["recexp"]  # the median fit by validation over training (a busy neighbour moves single fits)
    ours = fits[median_index([fit["valid_s"] / fit["train_s"] for fit in fits])]
    report["scientific_size"] = {**SCIENTIFIC, "scenario": "cold_item", "recexp": ours, "files": scientific["files"][0],
                                 "rounds": fits,
                                 "valid_over_train": ours["valid_s"] / ours["train_s"],
                                 # trainer.valid_every that brings validation per epoch under a training epoch
                                 "valid_every_within": math.ceil(ours["valid_s"] / ours["train_s"]),
                                 "within_target": ours["valid_s"] <= ours["train_s"]}
    return report


if __name__ == "__main__":
    print(json.dumps(bench_recbole(), indent=2))
