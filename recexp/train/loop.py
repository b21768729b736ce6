"""The one training loop for recexp's torch models.

:func:`fit` reads top to bottom: optimiser and schedule, the model and data prepared by
``accelerate`` (one process, or DDP under ``accelerate launch``), then per epoch one pass of
micro-batches (:func:`train_epoch`), a validation metric for early stopping (users sharded over the
processes, sums reduced), and a log line. A model supplies ``forward(batch) -> loss`` and an
:class:`EpochData` of batches.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from recexp.errors import TrainingError
from recexp.evaluate import Evaluator, cache_sized_batch, parse_metric
from recexp.evaluate.top import load_compiled_in_background
from recexp.interfaces import FitContext, Split
from recexp.train.devices import Accelerator, make_accelerator, release
from recexp.train.settings import TrainerConfig
from recexp.train.weights import snapshot, trainable

Batch = tuple[torch.Tensor, ...]  # a micro-batch; its first tensor has one row per training example


class EpochData(Dataset):
    """What a model's ``train_data`` returns: ``__getitems__`` gives a whole batch, ``set_epoch(e)`` draws
    epoch ``e``, and ``group_by_length(size)``, which :func:`fit` calls with its batch size, makes runs of
    ``size`` examples of similar length where examples have one (texts of varying length pad little)."""

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def group_by_length(self, batch_size: int) -> None:
        """No grouping here (examples of one length, or batches already organised)."""


def keep_batch(batch: Batch) -> Batch:
    """DataLoader ``collate_fn`` for datasets whose ``__getitems__`` already returns a batch."""
    return batch


@dataclass
class FitStats:
    """What one call of :func:`fit` did, for the run record's ``cost`` and ``effective``."""

    epochs: int = 0
    best_epoch: int = -1
    best_valid: float = float("nan")
    optimizer_steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    # the early-stopping metric after each epoch (the start first, if kept; None after an epoch that did not validate)
    curve: list[float | None] = field(default_factory=list)

    @property
    def ended_on_best(self) -> bool:
        """True when the last epoch was the best, so the final weights are the kept ones."""
        return self.best_epoch == self.epochs - 1

    def cost(self) -> dict[str, float]:
        """Figures for the run record's ``cost``: samples of every process together, so the throughput is the
        whole run's (over this process's training seconds; validation not counted)."""
        return {
            "samples_seen": self.samples,
            "samples_per_second": self.samples / self.train_seconds if self.train_seconds > 0 else 0.0,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "optimizer_steps": self.optimizer_steps,
        }


def fit(model: nn.Module, split: Split, ctx: FitContext, config: TrainerConfig, data: EpochData,
        keep_start: bool = False, step_offset: int = 0) -> FitStats:
    """Train ``model``'s trainable weights on ``data``; keep the weights of the best validation epoch.

    ``model(batch)`` returns a scalar loss; ``data`` yields whole batches (``__getitems__``) and is
    re-drawn by ``data.set_epoch(epoch)``. ``model`` also scores (it is a recommender's module): the
    valid stage is evaluated after every ``config.valid_every``-th epoch, and training stops after
    ``config.patience`` epochs without improvement. ``keep_start`` also validates the starting weights, which are kept when no
    epoch beats them (``best_epoch`` -1). Logged steps start at ``step_offset`` (a second fit logs after
    the first's). Its ``stale`` flag is raised whenever weights are restored.
    """
    torch.manual_seed(ctx.seed)
    accelerator = make_accelerator(ctx.device, config)
    if accelerator.device.type == "cpu":  # it validates every epoch: ready by the first ones
        load_compiled_in_background()
    per_process = max(1, config.batch_size // accelerator.num_processes)  # each global batch is shared out
    data.group_by_length(per_process)
    loader = DataLoader(data, batch_size=per_process, shuffle=False, collate_fn=keep_batch)
    if len(loader) == 0:
        raise TrainingError(f"{type(model).__name__} got no training examples: the split's train part is empty.")
    optimizer = torch.optim.AdamW(trainable(model), lr=config.lr, weight_decay=config.weight_decay)
    wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    try:
        return _fit_prepared(model, wrapped, optimizer, loader, data, split, ctx, config, accelerator, keep_start,
                             step_offset)
    finally:
        release(accelerator, wrapped)


def _fit_prepared(model, wrapped, optimizer, loader, data, split, ctx, config, accelerator, keep_start,
                  step_offset) -> FitStats:
    """The epochs of :func:`fit` over what ``accelerator`` prepared."""
    metric, k = parse_metric(config.valid_metric)
    key = config.valid_metric
    total_steps = math.ceil(len(loader) / config.grad_accum) * config.max_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(total_steps, config.warmup_ratio,
                                                                               config.schedule == "constant"))
    evaluator = Evaluator(ks=[k or 1], metrics=[metric.name], batch_size=cache_sized_batch(split.n_items, accelerator.device, 256),
                          mask_history=ctx.mask_history)
    stats, best_state, misses = FitStats(), {}, 0
    valid_every = config.pick("valid_every", 1)
    start_norm = weight_norm(model)
    if keep_start:
        model.refresh()
        stats.best_valid, best_state = validate(model, split, evaluator, key, accelerator), snapshot(model)
        stats.curve.append(stats.best_valid)
        ctx.logger.log({f"valid/{key}": stats.best_valid, "epoch": -1}, step=step_offset)
    for epoch in range(config.max_epochs):
        data.set_epoch(epoch)
        model.refresh()
        loss = train_epoch(wrapped, loader, optimizer, scheduler, accelerator, config, ctx, epoch, stats)
        check_weights(model, start_norm, epoch, config)
        stats.epochs = epoch + 1
        logged = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "epoch": epoch}
        if stats.epochs % valid_every:  # not an epoch that validates
            stats.curve.append(None)
            ctx.logger.log(logged, step=step_offset + stats.optimizer_steps)
            continue
        value = validate(model, split, evaluator, key, accelerator)
        stats.curve.append(value)
        ctx.logger.log({**logged, f"valid/{key}": value}, step=step_offset + stats.optimizer_steps)
        first = stats.best_epoch < 0 and not keep_start  # nothing to beat yet
        if first or _better(value, stats.best_valid, metric.higher_is_better):
            stats.best_epoch, stats.best_valid, best_state, misses = epoch, value, snapshot(model), 0
        else:
            misses += valid_every  # patience counts epochs
            if misses >= config.patience:
                break
    if not stats.ended_on_best:
        model.load_state_dict(best_state, strict=False)
        model.stale = True
    stats.samples = int(accelerator.reduce(torch.tensor(stats.samples, device=accelerator.device), "sum"))  # all processes
    return stats


def train_epoch(model, loader, optimizer, scheduler, accelerator, config, ctx, epoch, stats) -> float:
    """One pass over ``loader`` with gradient accumulation; returns the mean loss per example (this process)."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    show = config.progress and ctx.progress and accelerator.is_main_process
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False)
    # accelerate divides every loss by grad_accum, also in an epoch's last, shorter group: scale that one back up
    short = len(loader) % config.grad_accum
    for index, batch in enumerate(bar):
        with accelerator.accumulate(model):
            loss = model(batch)
            check_finite(loss, epoch, index, config)
            accelerator.backward(loss * (config.grad_accum / short) if short and index >= len(loader) - short else loss)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
                stats.optimizer_steps += 1
            optimizer.zero_grad(set_to_none=True)
        size = len(batch[0])
        total, seen = total + loss.item() * size, seen + size
        bar.set_postfix(loss=f"{loss.item():.4f}")
    stats.samples += seen
    stats.train_seconds += time.perf_counter() - start
    return total / max(seen, 1)


def validate(model: nn.Module, split: Split, evaluator: Evaluator, key: str, accelerator: Accelerator) -> float:
    """``key`` on the valid stage. Under several processes, a mean over users is computed on each
    process's share of the users and the sums reduced; pooled metrics are computed whole everywhere."""
    model.eval()
    metric, _ = parse_metric(key)
    if accelerator.num_processes == 1 or metric.pooled:
        return evaluator.value(model, split, "valid", key, accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    evaluation = evaluator.evaluate(model, split, "valid", accelerator.device, segments=("all",), shard=(rank, world))
    column = evaluation.per_user[key].to_numpy(dtype=np.float64) if key in evaluation.per_user else np.zeros(0)
    column = column[~np.isnan(column)]
    totals = accelerator.reduce(torch.tensor([column.sum(), len(column)], dtype=torch.float64, device=accelerator.device))
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


def _better(value: float, best: float, higher: bool) -> bool:
    """Whether ``value`` improves on ``best``; any number improves on a NaN best (a first check that failed)."""
    if math.isnan(best):
        return not math.isnan(value)
    return value > best if higher else value < best


def warmup_then_decay(total_steps: int, warmup_ratio: float, constant: bool = False) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over the warm-up steps, then linear 1 -> 0 at ``total_steps`` (or 1 throughout:
    ``constant``)."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 if constant else max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def check_finite(loss: torch.Tensor, epoch: int, index: int, config: TrainerConfig) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(
            f"Training diverged: the loss is {loss.item()} at epoch {epoch}, batch {index}. Lower trainer.lr (now {config.lr})"
            + (f", or set trainer.mixed_precision=no (now {config.mixed_precision})." if config.mixed_precision != "no" else ".")
        )


WEIGHT_GROWTH = 1e4  # trainable weights whose norm grew more than this many times over have diverged


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all trainable weights together (inf/nan when any weight is)."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack([p.float().norm() for p in model.parameters() if p.requires_grad])))


def check_weights(model: nn.Module, start_norm: float, epoch: int, config: TrainerConfig) -> None:
    """A TrainingError when the trainable weights became non-finite or grew by more than WEIGHT_GROWTH:
    the loss can stay finite while they explode (e.g. cosine scores never overflow)."""
    norm = weight_norm(model)
    if not math.isfinite(norm) or norm > WEIGHT_GROWTH * max(start_norm, 1.0):
        raise TrainingError(
            f"Training diverged: the trainable weights' norm went from {start_norm:.3g} to {norm:.3g} by epoch {epoch}. "
            f"Lower trainer.lr (now {config.lr})."
        )


def epoch_order(n: int, seed: int, epoch: int, limit: int | None = None) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` for ``epoch`` [min(n, limit)]."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return order[:limit] if limit else order
