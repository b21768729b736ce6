"""Training settings shared by every model, and the one training loop for recexp's torch models.

:func:`fit` reads top to bottom: optimiser and schedule, the model and data prepared by
``accelerate`` (one process, or DDP under ``accelerate launch``), then per epoch one pass of
micro-batches (:func:`train_epoch`), a validation metric for early stopping (users sharded over the
processes, sums reduced), and a log line. A model supplies ``forward(batch) -> loss`` and a torch
``Dataset`` of batches. The only module importing ``accelerate``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from recexp.errors import ConfigError, TrainingError
from recexp.evaluate import Evaluator, metric_key, parse_metric
from recexp.interfaces import FitContext, Split, TorchModel

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainerConfig:
    """Flat training settings; ``None`` means "the model's own default". Values are checked on creation."""

    max_epochs: int | None = None  # cap on training epochs
    patience: int | None = None  # validation checks without improvement before stopping
    valid_metric: str = "ndcg@10"  # early-stopping metric on the valid stage (all segment), e.g. ndcg@10 or auc
    batch_size: int | None = None  # training batch size, over all processes together
    lr: float | None = None  # peak learning rate
    weight_decay: float | None = None  # AdamW weight decay (torch models: 0)
    warmup_ratio: float | None = None  # share of optimiser steps with linear warm-up (torch models: 0.1)
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


_INT_RULES = {"max_epochs": 1, "patience": 1, "batch_size": 1, "grad_accum": 1}  # name -> minimum


def check_trainer(config: TrainerConfig) -> None:
    """A ConfigError naming key, value and rule for the first setting that cannot work."""
    for name, low in _INT_RULES.items():
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"trainer.{name}={value!r} is not allowed: it must be an integer >= {low}.")
    rules = {
        "lr": lambda v: v > 0 and math.isfinite(v),
        "weight_decay": lambda v: v >= 0 and math.isfinite(v),
        "warmup_ratio": lambda v: 0 <= v < 1,
    }
    texts = {"lr": "a finite number > 0", "weight_decay": "a finite number >= 0", "warmup_ratio": "a number in [0, 1)"}
    for name, ok in rules.items():
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value)):
            raise ConfigError(f"trainer.{name}={value!r} is not allowed: it must be {texts[name]}.")
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(
            f"trainer.mixed_precision={config.mixed_precision!r} is not allowed: choose {', '.join(MIXED_PRECISION)} "
            "(or null for bf16 on CUDA, no elsewhere)."
        )
    try:
        parse_metric(config.valid_metric)
    except ConfigError as err:
        raise ConfigError(f"trainer.valid_metric={config.valid_metric!r}: {err}") from None


TORCH_DEFAULTS = dict(weight_decay=0.0, warmup_ratio=0.1, grad_accum=1)


def with_defaults(config: TrainerConfig, device: torch.device, **defaults: Any) -> TrainerConfig:
    """``config`` with every ``None`` replaced: the model's ``defaults``, then the loop's own. A default
    of bf16 (the loop's on CUDA, or a model's) becomes ``no`` where ``device`` has no fast bf16."""
    merged = {**TORCH_DEFAULTS, "mixed_precision": "bf16" if device.type == "cuda" else "no", **defaults}
    if merged["mixed_precision"] == "bf16" and not bf16_supported(device):
        merged["mixed_precision"] = "no"
    return dataclasses.replace(config, **{name: config.pick(name, value) for name, value in merged.items()})


def bf16_supported(device: torch.device) -> bool:
    """True on a CUDA device with native bf16 (compute capability 8 or more), or a CPU with bf16
    instructions (AVX512-BF16 or AMX, read from /proc/cpuinfo; elsewhere False)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def process_state() -> PartialState:
    """accelerate's view of this process; several processes on a CPU-only machine talk over gloo."""
    return PartialState(cpu=not torch.cuda.is_available())


def process_info() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless started by ``accelerate launch`` / ``torchrun``."""
    state = process_state()
    return state.process_index, state.num_processes


def single_cpu_launch() -> bool:
    """True when ``accelerate launch --cpu --num_processes N`` (N > 1) started this run as one process:
    accelerate starts several CPU processes only through MPI (``--mpirun_hostfile``)."""
    env = os.environ
    return env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env


def default_device() -> torch.device:
    """This process's accelerator (its own GPU under multi-GPU launches), else the CPU."""
    return process_state().device


Batch = tuple[torch.Tensor, ...]  # a micro-batch; its first tensor has one row per training example


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


def fit(model: nn.Module, split: Split, ctx: FitContext, config: TrainerConfig, data: Dataset,
        keep_start: bool = False, step_offset: int = 0) -> FitStats:
    """Train ``model``'s trainable weights on ``data``; keep the weights of the best validation epoch.

    ``model(batch)`` returns a scalar loss; ``data`` yields whole batches (``__getitems__``) and is
    re-drawn by ``data.set_epoch(epoch)``. ``model`` also scores (it is a recommender's module): the
    valid stage is evaluated after every epoch, and training stops after ``config.patience`` epochs
    without improvement. ``keep_start`` also validates the starting weights, which are kept when no
    epoch beats them (``best_epoch`` -1). Logged steps start at ``step_offset`` (a second fit logs after
    the first's). Its ``stale`` flag is raised whenever weights are restored.
    """
    torch.manual_seed(ctx.seed)
    accelerator = make_accelerator(ctx.device, config)
    per_process = max(1, config.batch_size // accelerator.num_processes)  # each global batch is shared out
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(total_steps, config.warmup_ratio))
    evaluator = Evaluator(ks=[k or 1], metrics=[metric.name], batch_size=256)
    stats, best_state, misses = FitStats(), {}, 0
    start_norm = weight_norm(model)
    if keep_start:
        model.refresh()
        stats.best_valid, best_state = validate(model, split, evaluator, key, accelerator), snapshot(model)
        ctx.logger.log({f"valid/{key}": stats.best_valid, "epoch": -1}, step=step_offset)
    for epoch in range(config.max_epochs):
        data.set_epoch(epoch)
        model.refresh()
        loss = train_epoch(wrapped, loader, optimizer, scheduler, accelerator, config, ctx, epoch, stats)
        check_weights(model, start_norm, epoch, config)
        value = validate(model, split, evaluator, key, accelerator)
        ctx.logger.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], f"valid/{key}": value,
                        "epoch": epoch}, step=step_offset + stats.optimizer_steps)
        stats.epochs = epoch + 1
        first = stats.best_epoch < 0 and not keep_start  # nothing to beat yet
        if first or _better(value, stats.best_valid, metric.higher_is_better):
            stats.best_epoch, stats.best_valid, best_state, misses = epoch, value, snapshot(model), 0
        else:
            misses += 1
            if misses >= config.patience:
                break
    if not stats.ended_on_best:
        model.load_state_dict(best_state, strict=False)
        model.stale = True
    stats.samples = int(accelerator.reduce(torch.tensor(stats.samples, device=accelerator.device), "sum"))  # all processes
    return stats


def release(accelerator: Accelerator, wrapped: nn.Module) -> None:
    """Undo accelerate's preparation of the model (its autocast forward and its "prepared" mark): a
    prepared model is returned as it is by a later ``prepare``, so a second fit (lp_ft's, a continual
    update) would otherwise run without its own precision or DDP wrapper."""
    model = accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    model.__dict__.pop("_is_accelerate_prepared", None)


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


def make_accelerator(device: torch.device, config: TrainerConfig) -> Accelerator:
    """An ``Accelerator`` on ``device`` with the run's precision and accumulation.

    accelerate keeps one process-wide state; a later run in the same process that asks for another
    precision starts it afresh (accelerate offers no public way to change it).
    """
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, config.mixed_precision):
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
    )


def _better(value: float, best: float, higher: bool) -> bool:
    """Whether ``value`` improves on ``best``; any number improves on a NaN best (a first check that failed)."""
    if math.isnan(best):
        return not math.isnan(value)
    return value > best if higher else value < best


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


def save_weights(model: TorchModel, directory: str | Path) -> int:
    """Write the trained part of ``model`` to ``directory``; returns the bytes written.

    ``heads.safetensors`` holds every trainable weight and persistent buffer outside
    ``model.encoder``; the encoder's strategy, where there is an encoder, writes its own part under
    ``encoder/`` (PEFT adapter, full weights, or nothing).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(heads(model), directory / "heads.safetensors")
    if model.encoder is not None:
        model.encoder.save(directory / "encoder")
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def load_weights(model: TorchModel, directory: str | Path) -> None:
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
    if model.encoder is not None:
        model.encoder.load(directory / "encoder")
    model.stale = True


def heads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights and persistent buffers outside ``model.encoder``, contiguous CPU copies by name."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict())
    buffers = {name: b for name, b in model.named_buffers() if name in persistent}
    return {
        name: t.detach().cpu().contiguous()
        for name, t in {**params, **buffers}.items()
        if not name.startswith("encoder.")
    }
