"""Where training runs: this process's rank and device, bf16 support, CPU threads, and the
``Accelerator`` of one fit. The only module importing ``accelerate``."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from torch import nn

if TYPE_CHECKING:
    from recexp.train.settings import TrainerConfig


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


def release(accelerator: Accelerator, wrapped: nn.Module) -> None:
    """Undo accelerate's preparation of the model (its autocast forward and its "prepared" mark): a
    prepared model is returned as it is by a later ``prepare``, so a second fit (lp_ft's, a continual
    update) would otherwise run without its own precision or DDP wrapper."""
    model = accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    model.__dict__.pop("_is_accelerate_prepared", None)
