"""Training settings shared by every model, and the one training loop for recexp's torch models.

:func:`fit` reads top to bottom: seed, optimiser and schedule, then per epoch one pass of
micro-batches (:func:`train_epoch`), a validation ranking for early stopping, and a log line.
Models supply only ``make_batches(epoch)`` and ``loss_fn(batch)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from recexp.errors import ConfigError, TrainingError
from recexp.evaluate import ACCURACY, Evaluator
from recexp.interfaces import FitContext, Split


@dataclass(frozen=True)
class TrainerConfig:
    """Flat training settings; ``None`` means "the model's own default"."""

    max_epochs: int | None = None  # cap on training epochs
    patience: int | None = None  # validation checks without improvement before stopping
    valid_metric: str = "ndcg@10"  # early-stopping metric on the valid split (all segment)
    batch_size: int | None = None  # training batch size
    lr: float | None = None  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.1  # share of optimisation steps with linear warm-up
    grad_accum: int = 1  # micro-batches per optimiser step
    bf16: bool = True  # bf16 autocast when on CUDA
    progress: bool = True  # tqdm progress bars

    def pick(self, name: str, default):
        """``self.<name>`` unless it is None, else ``default``."""
        value = getattr(self, name)
        return default if value is None else value


def with_defaults(config: TrainerConfig, **defaults) -> TrainerConfig:
    """``config`` with each ``None`` among ``defaults``' names replaced by the model's default."""
    return dataclasses.replace(config, **{name: config.pick(name, value) for name, value in defaults.items()})


Batch = tuple[torch.Tensor, ...]  # a micro-batch; its first tensor has one row per training example


@dataclass
class FitStats:
    """What one call of :func:`fit` did, for the run record's ``cost``."""

    epochs: int = 0
    best_epoch: int = -1
    best_valid: float = float("nan")
    optimizer_steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0

    @property
    def ended_on_best(self) -> bool:
        """True when the last epoch was the best, so the final weights are the kept ones."""
        return self.best_epoch == self.epochs - 1

    def cost(self) -> dict[str, float]:
        """Figures for the run record's ``cost`` (throughput counts training passes only)."""
        return {
            "samples_seen": self.samples,
            "samples_per_second": self.samples / self.train_seconds if self.train_seconds > 0 else 0.0,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "optimizer_steps": self.optimizer_steps,
        }


def fit(
    model: nn.Module,
    split: Split,
    ctx: FitContext,
    config: TrainerConfig,
    make_batches: Callable[[int], list[Batch]],
    loss_fn: Callable[[Batch], torch.Tensor],
    cpu_threads: int | None = None,
) -> FitStats:
    """Train ``model``'s trainable weights; keep the weights of the best validation epoch.

    ``make_batches(epoch)`` lists that epoch's micro-batches; ``loss_fn(batch)`` returns a scalar.
    ``model`` must also be a :class:`~recexp.interfaces.Recommender`: it is ranked on the valid split
    after every epoch, and training stops after ``config.patience`` epochs without improvement.
    ``cpu_threads`` caps torch's intra-op threads on CPU while fitting (None: torch's setting).
    """
    with torch_threads(cpu_threads if ctx.device.type == "cpu" else None):
        torch.manual_seed(ctx.seed)
        metric, key = valid_metric(config.valid_metric)
        check_settings(config)
        evaluator = Evaluator(ks=[int(key.split("@")[1])], metrics=[metric], batch_size=256)
        batches = make_batches(0)
        if not batches:
            raise TrainingError(f"{type(model).__name__} got no training examples: the split's train part is empty.")
        optimizer = torch.optim.AdamW(trainable(model), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = math.ceil(len(batches) / config.grad_accum) * config.max_epochs
        schedule = warmup_then_decay(total_steps, config.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        stats, best_state, misses = FitStats(), {}, 0
        for epoch in range(config.max_epochs):
            batches = batches if epoch == 0 else make_batches(epoch)
            loss = train_epoch(model, batches, loss_fn, optimizer, scheduler, config, ctx, epoch, stats)
            value = evaluator.evaluate(model, split, "valid", ctx.device, segments=("all",)).metrics["all"][key]
            ctx.logger.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], f"valid/{key}": value,
                            "epoch": epoch}, step=stats.optimizer_steps)
            stats.epochs = epoch + 1
            if stats.best_epoch < 0 or value > stats.best_valid:
                stats.best_epoch, stats.best_valid, best_state, misses = epoch, value, snapshot(model), 0
            else:
                misses += 1
                if misses >= config.patience:
                    break
        if not stats.ended_on_best:
            model.load_state_dict(best_state, strict=False)
        return stats


def train_epoch(model, batches, loss_fn, optimizer, scheduler, config, ctx, epoch, stats) -> float:
    """One pass over ``batches`` with gradient accumulation; returns the mean loss per example."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not (config.progress and ctx.progress), leave=False)
    for index, batch in enumerate(bar):
        with autocast(ctx.device, config.bf16):
            loss = loss_fn(batch)
        check_finite(loss, epoch, index, config)
        (loss / config.grad_accum).backward()
        if (index + 1) % config.grad_accum == 0 or index + 1 == len(batches):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.optimizer_steps += 1
        size = len(batch[0])
        total, seen = total + loss.item() * size, seen + size
        bar.set_postfix(loss=f"{loss.item():.4f}")
    stats.samples += seen
    stats.train_seconds += time.perf_counter() - start
    return total / max(seen, 1)


def check_settings(config: TrainerConfig) -> None:
    rules = {
        "max_epochs": (config.max_epochs >= 1, ">= 1"),
        "patience": (config.patience >= 1, ">= 1"),
        "batch_size": (config.batch_size >= 1, ">= 1"),
        "grad_accum": (config.grad_accum >= 1, ">= 1"),
        "lr": (config.lr > 0, "> 0"),
        "weight_decay": (config.weight_decay >= 0, ">= 0"),
        "warmup_ratio": (0 <= config.warmup_ratio < 1, "in [0, 1)"),
    }
    for name, (ok, rule) in rules.items():
        if not ok:
            raise ConfigError(f"trainer.{name} must be {rule}, got {getattr(config, name)}.")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{type(model).__name__} has no trainable weights; nothing to fit.")
    return params


def warmup_then_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over the warm-up steps, then linear 1 -> 0 at ``total_steps``."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op CPU threads, restoring the previous setting (None: unchanged)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; full precision elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: torch.Tensor, epoch: int, index: int, config: TrainerConfig) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(
            f"Training diverged: the loss is {loss.item()} at epoch {epoch}, batch {index}. "
            f"Lower trainer.lr (now {config.lr}), or set trainer.bf16=false if it happened under bf16."
        )


def valid_metric(name: str) -> tuple[str, str]:
    """'ndcg@10' -> ('ndcg', 'ndcg@10'); a ConfigError for anything the evaluator cannot rank by."""
    metric, _, k = name.partition("@")
    if metric not in ACCURACY or not k.isdigit() or int(k) < 1:
        raise ConfigError(
            f"trainer.valid_metric={name!r} is not metric@K with metric in {', '.join(ACCURACY)} (e.g. ndcg@10)."
        )
    return metric, f"{metric}@{int(k)}"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights, by state-dict name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def epoch_order(n: int, seed: int, epoch: int, limit: int | None = None) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` for ``epoch`` [min(n, limit)]."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return order[:limit] if limit else order


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, directory: str | Path) -> int:
    """Write the trained part of ``model`` to ``directory``; returns the bytes written.

    ``heads.safetensors`` holds every trainable weight outside ``model.encoder``; the encoder's
    strategy writes its own part under ``encoder/`` (PEFT adapter, full weights, or nothing).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(heads(model), directory / "heads.safetensors")
    model.encoder.save(directory / "encoder")
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Read what :func:`save_weights` wrote into a model built from the same config."""
    directory = Path(directory)
    state = load_file(directory / "heads.safetensors")
    expected = set(heads(model))
    if set(state) != expected:
        raise ConfigError(
            f"{directory} does not fit this model: weights {sorted(set(state) ^ expected)[:5]} differ. "
            "Build the model from the config it was trained with."
        )
    model.load_state_dict(state, strict=False)
    model.encoder.load(directory / "encoder")


def heads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights outside ``model.encoder``, contiguous CPU copies by state-dict name."""
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith("encoder.")
    }
