"""The trainer settings every model reads (``trainer=...``): their schema, their checks and their defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from recexp.errors import ConfigError, check_int, check_number
from recexp.evaluate import metric_key, parse_metric
from recexp.train.devices import bf16_supported

MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULES = ("linear", "constant")  # after the warm-up: decay linearly to 0 at max_epochs, or hold the peak


@dataclass(frozen=True)
class TrainerConfig:
    """Flat training settings; ``None`` means "the model's own default". Values are checked on creation."""

    max_epochs: int | None = None  # cap on training epochs
    patience: int | None = None  # epochs without improvement before stopping
    valid_every: int | None = None  # validate after every N-th epoch (default 1)
    valid_metric: str = "ndcg@10"  # early-stopping metric on the valid stage (all segment), e.g. ndcg@10 or auc
    batch_size: int | None = None  # training batch size, over all processes together
    lr: float | None = None  # peak learning rate
    weight_decay: float | None = None  # AdamW weight decay (torch models: 0)
    warmup_ratio: float | None = None  # share of optimiser steps with linear warm-up (torch models: 0.1)
    schedule: str | None = None  # learning rate after the warm-up: linear (to 0 at max_epochs) | constant (torch models: linear)
    grad_accum: int | None = None  # micro-batches per optimiser step (torch models: 1)
    mixed_precision: str | None = None  # no | bf16 | fp16 (torch models: bf16 on CUDA, no elsewhere)
    progress: bool = True  # tqdm progress bars

    def __post_init__(self):
        check_trainer(self)
        # one spelling (NDCG@10, " ndcg@10", ndcg@010 -> ndcg@10): logs and per-user columns use it
        object.__setattr__(self, "valid_metric", metric_key(*parse_metric(self.valid_metric)))

    def pick(self, name: str, default: Any) -> Any:
        """``self.<name>`` unless it is None, else ``default``."""
        value = getattr(self, name)
        return default if value is None else value

    def explicit(self) -> dict[str, Any]:
        """The settings given a value (not left to the model), by name."""
        skip = {"progress", "valid_metric"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip and getattr(self, f.name) is not None}


_INT_RULES = {"max_epochs": 1, "patience": 1, "valid_every": 1, "batch_size": 1, "grad_accum": 1}  # name -> minimum
_NUMBER_RULES = {"lr": dict(above=0), "weight_decay": dict(low=0), "warmup_ratio": dict(low=0, below=1)}  # name -> bounds


def check_trainer(config: TrainerConfig) -> None:
    """A ConfigError naming key, value and rule for the first setting that cannot work."""
    for name, low in _INT_RULES.items():
        if getattr(config, name) is not None:
            check_int(f"trainer.{name}", getattr(config, name), low)
    for name, bounds in _NUMBER_RULES.items():
        if getattr(config, name) is not None:
            check_number(f"trainer.{name}", getattr(config, name), **bounds)
    if None not in (config.valid_every, config.max_epochs) and config.valid_every > config.max_epochs:
        raise ConfigError(f"trainer.valid_every={config.valid_every} is more than trainer.max_epochs={config.max_epochs}, "
                          "so no epoch would validate; lower it to at most max_epochs.")
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(
            f"trainer.mixed_precision={config.mixed_precision!r} is not allowed: choose {', '.join(MIXED_PRECISION)} "
            "(or null for bf16 on CUDA, no elsewhere)."
        )
    if config.schedule is not None and config.schedule not in SCHEDULES:
        raise ConfigError(f"trainer.schedule={config.schedule!r} is not allowed: choose {', '.join(SCHEDULES)} (or null: linear).")
    try:
        parse_metric(config.valid_metric)
    except ConfigError as err:
        raise ConfigError(f"trainer.valid_metric={config.valid_metric!r}: {err}") from None


TORCH_DEFAULTS = dict(valid_every=1, weight_decay=0.0, warmup_ratio=0.1, grad_accum=1, schedule="linear")


def with_defaults(config: TrainerConfig, device: torch.device, **defaults: Any) -> TrainerConfig:
    """``config`` with every ``None`` replaced: the model's ``defaults``, then the loop's own. A default
    of bf16 (the loop's on CUDA, or a model's) becomes ``no`` where ``device`` has no fast bf16."""
    merged = {**TORCH_DEFAULTS, "mixed_precision": "bf16" if device.type == "cuda" else "no", **defaults}
    if merged["mixed_precision"] == "bf16" and not bf16_supported(device):
        merged["mixed_precision"] = "no"
    return dataclasses.replace(config, **{name: config.pick(name, value) for name, value in merged.items()})


def refuse_training(trainer: TrainerConfig | None, model: str) -> None:
    """A ConfigError naming the first trainer setting given a value: ``model=<model>`` trains nothing."""
    given = trainer.explicit() if trainer else {}
    if given:
        name, value = next(iter(given.items()))
        raise ConfigError(f"trainer.{name}={value} has no effect on model={model}, which trains nothing; remove it.")
