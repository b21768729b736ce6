"""The one adapter between recexp's torch models and :class:`~recexp.interfaces.Recommender`.

A torch model is a plain ``nn.Module`` (:class:`~recexp.interfaces.TorchModel`): it returns its
loss from ``forward(batch)``, hands out its training data as a torch ``Dataset``, and scores users
and pairs. Fitting (the shared loop in :mod:`recexp.train`), trainer defaults, CPU threads,
saving, loading and the cost ledger live here once, composed around the module.

``lp_ft`` (linear probing, then fine-tuning; Kumar et al., 2022) first trains the heads over the
frozen encoder with the module's frozen-encoder defaults (``lp_epochs`` caps them), then unfreezes
the encoder and trains everything, keeping the probed weights unless an epoch beats them on validation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from recexp import train
from recexp.errors import ConfigError
from recexp.interfaces import FitContext, RecommenderBase, Split, TorchModel
from recexp.models.sampling import Sampling
from recexp.train import FitStats, TrainerConfig

log = logging.getLogger(__name__)


class TorchRecommender(RecommenderBase):
    distributed = True  # trains under accelerate launch / torchrun (DDP) as well as in one process
    saveable = True  # save() writes the trained weights (and the strategy's part of the encoder)

    def __init__(self, module: TorchModel, trainer: TrainerConfig | None = None, cpu_threads: int | None = None,
                 lp_ft: bool = False, lp_epochs: int | None = None):
        trainer = TrainerConfig() if trainer is None else trainer
        self.module = module
        self.trainer = trainer
        self.cpu_threads = cpu_threads  # torch CPU threads while fitting (None: the module's preference)
        if lp_ft and not (module.encoder is not None and module.encoder.trainable):
            raise ConfigError("model.lp_ft=true needs an encoder that trains: pick a strategy other than frozen.")
        self.lp_ft = lp_ft
        # the probing phase of lp_ft: the module's frozen-encoder defaults, capped at lp_epochs
        self.probe = TrainerConfig(max_epochs=lp_epochs, valid_metric=trainer.valid_metric, progress=trainer.progress)
        self.used: TrainerConfig | None = None
        self.stats = self.probe_stats = FitStats()
        self.artifact_bytes = 0

    @property
    def name(self) -> str:
        return type(self.module).__name__

    @property
    def pointwise_output(self) -> str:
        return self.module.pointwise_output

    @property
    def score_pairs(self) -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None:
        """The module's own pair scorer (users [N], items [N], stage -> [N]), or None."""
        return self.module.score_pairs

    @property
    def encoder(self) -> torch.nn.Module | None:
        return self.module.encoder

    @property
    def valid_metric(self) -> str:
        """Every fit early-stops on ``trainer.valid_metric`` (the probing phase of lp_ft as well)."""
        return self.trainer.valid_metric

    def fit(self, split: Split, ctx: FitContext) -> None:
        encoder = self.module.encoder
        if encoder is not None:  # this fit's (prepare may embed)
            encoder.tokens_encoded, encoder.encode_seconds = 0, 0.0
        self.module.prepare(split, ctx.device)
        if encoder is not None:
            encoder.tokens_trained = 0
        if not any(p.requires_grad for p in self.module.parameters()):  # a zero-shot model (llm_ranker, frozen)
            if self.trainer.explicit():
                log.warning("%s has no trainable weights: trainer settings %s are not used.", self.name, self.trainer.explicit())
            return
        offset = 0
        if self.lp_ft:
            with frozen_encoder(self.module):
                self.probe_stats = self._fit(split, ctx, self.probe)[1]
            offset = self.probe_stats.optimizer_steps + 1  # W&B steps only go up
        self.used, self.stats = self._fit(split, ctx, self.trainer, keep_start=self.lp_ft, step_offset=offset)

    def _fit(self, split: Split, ctx: FitContext, trainer: TrainerConfig, keep_start: bool = False, step_offset: int = 0):
        """One call of the shared loop with ``trainer`` over the module's defaults -> (settings used, stats)."""
        used = train.with_defaults(trainer, ctx.device, **self.module.trainer_defaults())
        threads = self.cpu_threads if self.cpu_threads is not None else self.module.cpu_threads
        with train.torch_threads(threads if ctx.device.type == "cpu" else None):
            data = self.module.train_data(split, ctx.seed)
            return used, train.fit(self.module, split, ctx, used, data, keep_start=keep_start, step_offset=step_offset)

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split``'s stages from now on without training on it (e.g. a continual run's later blocks)."""
        self.module.prepare(split, device)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]."""
        return self.module.score(users, stage)

    def parameter_counts(self) -> tuple[int, int]:
        return train.parameter_counts(self.module)

    def cost_extras(self) -> dict[str, Any]:
        encoder = self.module.encoder
        extras = {**self.stats.cost(), "artifact_bytes": self.artifact_bytes}
        if encoder is not None:
            extras.update(encoder.cache_stats(), encoder_dtype=str(encoder.precision).removeprefix("torch."))
            if self.stats.train_seconds > 0 and encoder.tokens_trained:
                extras["encoder_tokens_trained"] = encoder.tokens_trained
                extras["encoder_tokens_per_second"] = encoder.tokens_trained / self.stats.train_seconds
            if encoder.encode_seconds > 0:  # embedding passes run (not read from the cache): inference throughput
                extras["encoder_tokens_encoded"] = encoder.tokens_encoded
                extras["encoder_encode_tokens_per_second"] = encoder.tokens_encoded / encoder.encode_seconds
        if self.lp_ft:
            extras["probe"] = self.probe_stats.cost()  # the fine-tuning phase's figures are the top-level ones
        return extras

    def effective(self) -> dict[str, Any]:
        """The trainer settings this fit used, with the epochs it ran (``best_epoch`` -1: lp_ft kept the probe) and
        ``valid_curve``: the early-stopping metric after each epoch (lp_ft: the probing epochs', then the fine-tuning's
        from the probe on; None after an epoch that did not validate, under ``trainer.valid_every``)."""
        used = dataclasses.asdict(self.used) if self.used else {}
        used.pop("progress", None)
        probe = {"lp_ft": True, "lp_epochs_run": self.probe_stats.epochs} if self.lp_ft else {}
        curve = self.probe_stats.curve + self.stats.curve[1:] if self.lp_ft else self.stats.curve
        return {**used, "epochs_run": self.stats.epochs, "best_epoch": self.stats.best_epoch, **probe, "valid_curve": curve}

    def reweight(self, method: str, alpha: float) -> None:
        """``tail=reweight`` through the module's :class:`~recexp.models.sampling.Sampling`; refused for a module
        without one, and for negatives under the softmax loss."""
        if self.module.sampling is None:
            super().reweight(method, alpha)
        if method == "negatives" and self.module.loss == "softmax":
            raise ConfigError(
                f"tail=reweight tail.method=negatives cannot be honoured by model {self.name} with model.module.loss=softmax: "
                "its negatives are the other positives of the batch, not sampled ones. "
                "Set model.module.loss=bpr, or use tail.method=weight."
            )
        self.module.sampling = Sampling(weight_alpha=alpha if method == "weight" else 0.0,
                                        negative_alpha=alpha if method == "negatives" else 0.0)

    def save(self, directory: str | Path) -> None:
        self.artifact_bytes = train.save_weights(self.module, directory)

    def load(self, directory: str | Path, split: Split, device: torch.device | str = "cpu") -> None:
        """Rebuild the scoring state for ``split`` and read weights written by :meth:`save`."""
        self.module.prepare(split, torch.device(device))
        train.load_weights(self.module, directory)


@contextlib.contextmanager
def frozen_encoder(module: TorchModel) -> Iterator[None]:
    """The module's encoder weights fixed for the duration (it then trains and scores as over a frozen encoder)."""
    params = [p for p in module.encoder.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    module.encoder.train(module.encoder.training)  # a frozen encoder stays in eval mode
    try:
        yield
    finally:  # the weights did not change, so the module's item table stays valid
        for p in params:
            p.requires_grad_(True)
