"""The one adapter between recexp's torch models and :class:`~recexp.interfaces.Recommender`.

A torch model is a plain ``nn.Module`` (:class:`~recexp.interfaces.TorchModel`): it returns its
loss from ``forward(batch)``, hands out its training data as a torch ``Dataset``, and scores users
and pairs. Fitting (the shared loop in :mod:`recexp.train`), trainer defaults, CPU threads,
saving, loading and the cost ledger live here once, composed around the module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from recexp import train
from recexp.interfaces import FitContext, Split, TorchModel
from recexp.train import FitStats, TrainerConfig


class TorchRecommender:
    distributed = True  # trains under accelerate launch / torchrun (DDP) as well as in one process

    def __init__(self, module: TorchModel, trainer: TrainerConfig = TrainerConfig(), cpu_threads: int | None = None):
        self.module = module
        self.trainer = trainer
        self.cpu_threads = cpu_threads  # torch CPU threads while fitting (None: the module's preference)
        self.used: TrainerConfig | None = None
        self.stats = FitStats()
        self.artifact_bytes = 0

    @property
    def pointwise_output(self) -> str:
        return getattr(self.module, "pointwise_output", "score")

    @property
    def score_pairs(self) -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None:
        """The module's own pair scorer (users [N], items [N], stage -> [N]), if it has one."""
        return getattr(self.module, "score_pairs", None)

    def fit(self, split: Split, ctx: FitContext) -> None:
        self.used = train.with_defaults(self.trainer, ctx.device, **self.module.trainer_defaults())
        threads = self.cpu_threads if self.cpu_threads is not None else self.module.cpu_threads
        with train.torch_threads(threads if ctx.device.type == "cpu" else None):
            self.module.prepare(split, ctx.device)
            data = self.module.train_data(split, ctx.seed)
            self.stats = train.fit(self.module, split, ctx, self.used, data)

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split``'s stages from now on without training on it (e.g. a continual run's later blocks)."""
        self.module.prepare(split, device)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]."""
        return self.module.score(users, stage)

    def parameter_counts(self) -> tuple[int, int]:
        return train.parameter_counts(self.module)

    def cost_extras(self) -> dict[str, Any]:
        encoder = getattr(self.module, "encoder", None)
        caches = encoder.cache_stats() if encoder is not None else {}
        return {**self.stats.cost(), **caches, "artifact_bytes": self.artifact_bytes}

    def effective(self) -> dict[str, Any]:
        """The trainer settings this fit used, with the epochs it ran."""
        used = dataclasses.asdict(self.used) if self.used else {}
        used.pop("progress", None)
        return {**used, "epochs_run": self.stats.epochs, "best_epoch": self.stats.best_epoch}

    def save(self, directory: str | Path) -> None:
        self.artifact_bytes = train.save_weights(self.module, directory)

    def load(self, directory: str | Path, split: Split, device: torch.device | str = "cpu") -> None:
        """Rebuild the scoring state for ``split`` and read weights written by :meth:`save`."""
        self.module.prepare(split, torch.device(device))
        train.load_weights(self.module, directory)
