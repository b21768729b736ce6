"""The spine: seed → model → data → split → task (fit, evaluate) → record. One screen, top to bottom."""
from __future__ import annotations

import logging
import os
import random
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from recexp.config import build, check_complete, config_id, record_config
from recexp.errors import ConfigError, RecexpError, check_int
from recexp.interfaces import FitContext, Recommender
from recexp.locks import Claim, claim, stop_with_launcher
from recexp.records import RunRecord, check_metrics, save_evaluation
from recexp.scenarios import build_or_load
from recexp.tracking import NullLogger, finish_logger
from recexp.train import default_device, process_info, single_cpu_launch

log = logging.getLogger("recexp")


def run(cfg: DictConfig) -> float:
    """Run one experiment; return ``cfg.objective`` (a validation metric) for sweepers."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    run_id = config_id(cfg)
    multirun = hydra.mode == RunMode.MULTIRUN
    if multirun:
        stop_with_launcher()  # a parallel worker exits when its launcher dies
    rank, world_size = process_info()
    job = claim(run_dir, run_id, Path(hydra.sweep.dir) if multirun else None, lock=world_size == 1)
    if job.skip:
        return _skip(run_id, job, multirun)
    if single_cpu_launch():
        log.warning("accelerate launch --cpu started one process (several CPU processes need its --mpirun_hostfile); "
                    "for DDP over gloo use `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`.")
    config = record_config(cfg)  # as written where unresolvable: check_complete below fails the run with its reason
    record = RunRecord.start(run_dir, run_id, config, config.get("objective"), rank == 0, job.provenance)
    logger = NullLogger()
    try:
        check_complete(cfg)
        if rank == 0:
            logger = build(cfg.logger, run_config=record.data["config"], _recursive_=False, _convert_="all", **_default_group(cfg, hydra))
        seed_everything(cfg.seed)
        device = pick_device(cfg.device)
        check_cache_dir(cfg.cache_dir)
        tail = build(cfg.tail) if cfg.get("tail") else None
        make_model, model = model_factory(cfg.model, build(cfg.trainer), tail)  # bad model, trainer or tail settings fail here
        record.set_model(model)
        task, evaluator = build(cfg.task), build(cfg.evaluator)
        dataset = build(cfg.dataset).load()
        split = build_or_load(dataset, build(cfg.scenario), cfg.seed, cfg.cache_dir)
        check_metrics(cfg.objective, task.stages(split), evaluator, model)  # each metric asked for, before any training
        record.set_split(split, evaluator)
        ctx = FitContext(logger, device, run_dir, cfg.seed, cfg.progress, rank, world_size, evaluator.mask_history)
        result = task.run(make_model, split, evaluator, ctx)
        if rank == 0:
            record.finish_ok(result)
            save_evaluation(run_dir, result)
            logger.summary(record.summary())
            log.info("%s", _headline(record.data["segments"]))
        return record.objective
    except (Exception, KeyboardInterrupt, SystemExit) as err:  # a component's sys.exit ends the run as failed, too
        if isinstance(err, SystemExit) and _raised_by_signal_handler(err):
            raise  # the job is being ended (a cluster pre-emption: submitit requeues it); the record stays running
        record.finish_failed(err, traceback.format_exc())
        return _fail(err, hydra.mode)
    finally:
        try:
            record.write()
            finish_logger(logger, record.data)
        finally:
            job.release()  # only now may another launch take this job


def model_factory(node: DictConfig, trainer: Any, tail: Any = None) -> tuple[Callable[[], Recommender], Recommender]:
    """(a factory that hands out the model built now first, then fresh ones; that model): bad settings fail before
    any work. ``tail`` (``tail=rerank|reweight|augment``) wraps or adjusts each model it builds."""
    def make() -> Recommender:
        model = build(node, trainer=trainer)
        return model if tail is None else tail.wrap(model)

    first = [make()]
    return (lambda: first.pop() if first else make()), first[0]


def seed_everything(seed: Any) -> None:
    check_int("seed", seed, 0, below=2**32, rule="an integer in [0, 2**32)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto``: this process's GPU when there is one (its own under multi-GPU launches), else the CPU."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but this machine has no CUDA device; use device=auto or device=cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}, or device=auto.")
    return device


def check_cache_dir(folder: Any) -> None:
    """A ConfigError, before any data is read, unless ``folder`` is (or can be made) a folder this process can write."""
    try:
        path = Path(str(folder)).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise ConfigError(f"cache_dir={folder} is not a writable folder ({err.strerror or err}); set cache_dir "
                          "(or RECEXP_CACHE_DIR) to a folder you can write.") from None


def _default_group(cfg: DictConfig, hydra: Any) -> dict[str, str]:
    """Runs of one multirun share a W&B group named after the sweep folder unless one is set."""
    if cfg.logger.get("group") is None and hydra.mode == RunMode.MULTIRUN and "group" in cfg.logger:
        return {"group": Path(hydra.sweep.dir).name}
    return {}


def _skip(run_id: str, job: Claim, multirun: bool) -> float:
    """A sweep job that another process runs, or that finished, is skipped; a single run cannot start."""
    if not multirun:
        print(f"error: run {run_id} cannot start: {job.skip}. Wait for it to end, or choose another hydra.run.dir.",
              file=sys.stderr)
        sys.exit(1)
    log.info("Run %s skipped: %s.", run_id, job.skip)
    return RunRecord.load(job.done).objective if job.done else float("nan")


def _fail(err: BaseException, mode: RunMode) -> float:
    """Single runs exit non-zero with one line; a multirun records the failure and goes on to the next job.
    Unexpected errors (not a RecexpError) keep their traceback in traceback.txt (HYDRA_FULL_ERROR=1: on screen)."""
    if isinstance(err, RecexpError):
        message = str(err)
    elif isinstance(err, SystemExit):
        message = f"a component called sys.exit({err.code!r}) before the run ended (traceback.txt in the run dir)"
    else:
        message = f"{type(err).__name__}: {err} (traceback.txt in the run dir)"
    message = " ".join(message.split())
    log.error("Run failed: %s", message)
    if isinstance(err, KeyboardInterrupt) or (os.environ.get("HYDRA_FULL_ERROR") == "1" and mode != RunMode.MULTIRUN):
        if isinstance(err, SystemExit):  # would exit with the component's own code, and Python prints no traceback
            raise RuntimeError(message) from err
        raise err
    if mode == RunMode.MULTIRUN:
        return float("nan")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _raised_by_signal_handler(err: SystemExit) -> bool:
    """True when ``err`` comes from a Python signal handler now installed (submitit's USR1 handler requeues a
    pre-empted Slurm job, then calls sys.exit), not from the run's own code."""
    handlers = set()
    for number in signal.valid_signals():
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            handlers.add(code)
    frame = err.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code in handlers:
            return True
        frame = frame.tb_next
    return False


def _headline(segments: dict[str, dict[str, float]]) -> str:
    keys = ("ndcg@10", "auc")
    return ", ".join(f"{seg} {k}={m[k]:.4f}" for seg, m in segments.items() for k in keys if k in m)
