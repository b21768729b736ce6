"""The spine: seed → data → split → model → fit → evaluate → record. One screen, top to bottom."""
from __future__ import annotations

import logging
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recexp.config import build, config_id
from recexp.costs import CostMeter
from recexp.errors import RecexpError
from recexp.interfaces import FitContext, Saveable
from recexp.records import RunRecord, finished_record, save_evaluation
from recexp.scenarios import build_or_load
from recexp.tracking import NullLogger

log = logging.getLogger("recexp")


def run(cfg: DictConfig) -> float:
    """Run one experiment; return ``cfg.objective`` (a validation metric) for sweepers."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    run_id = config_id(cfg)
    done = finished_record(Path(hydra.sweep.dir), run_id) if hydra.mode == RunMode.MULTIRUN else None
    if done is not None:
        log.info("Run %s already finished in %s; skipping.", run_id, done.parent)
        return RunRecord.load(done).objective
    record = RunRecord.start(run_dir, run_id, OmegaConf.to_container(cfg, resolve=True), cfg.objective)
    logger = NullLogger()
    try:
        logger = build(cfg.logger, run_config=record.data["config"], _recursive_=False, _convert_="all", **_default_group(cfg, hydra))
        seed_everything(cfg.seed)
        device = pick_device(cfg.device)
        dataset = build(cfg.dataset).load()
        split = build_or_load(dataset, build(cfg.scenario), cfg.seed, cfg.cache_dir)
        record.set_split(split)
        model = build(cfg.model, trainer=build(cfg.trainer))
        evaluator = build(cfg.evaluator)
        meter = CostMeter(device)
        with meter.phase("train"):
            model.fit(split, FitContext(logger, device, run_dir, cfg.seed, cfg.progress))
        if isinstance(model, Saveable):
            model.save(run_dir / "model")
        with meter.phase("eval"):
            valid = evaluator.evaluate(model, split, "valid", device, progress=cfg.progress)
            test = evaluator.evaluate(model, split, "test", device, progress=cfg.progress)
        record.finish_ok(valid, test, meter.summary(model, split), extras(model))
        save_evaluation(run_dir, test)
        logger.summary({"valid": valid.metrics.get("all", {}), "test": test.metrics, "cost": record.data["cost"]})
        log.info("test %s", _headline(test.metrics))
        return record.objective
    except (Exception, KeyboardInterrupt) as err:
        record.finish_failed(err, traceback.format_exc())
        return _fail(err, hydra.mode)
    finally:
        record.write()
        logger.finish(0 if record.data["status"] == "ok" else 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def extras(model: Any) -> dict[str, Any]:
    """Optional model-specific outputs: extra cost figures and pointwise metrics."""
    out: dict[str, Any] = {}
    if hasattr(model, "pointwise_metrics"):
        out["pointwise"] = {stage: model.pointwise_metrics(stage) for stage in ("valid", "test")}
    return out


def _default_group(cfg: DictConfig, hydra: Any) -> dict[str, str]:
    """Runs of one multirun share a W&B group named after the sweep folder unless one is set."""
    if cfg.logger.get("group") is None and hydra.mode == RunMode.MULTIRUN and "group" in cfg.logger:
        return {"group": Path(hydra.sweep.dir).name}
    return {}


def _fail(err: BaseException, mode: RunMode) -> float:
    """Single runs exit non-zero; a multirun records the failure and goes on to the next job."""
    message = str(err) if isinstance(err, RecexpError) else f"{type(err).__name__}: {err} (traceback.txt in the run dir)"
    log.error("Run failed: %s", message)
    if isinstance(err, KeyboardInterrupt):
        raise err
    if mode == RunMode.MULTIRUN:
        return float("nan")
    if isinstance(err, RecexpError):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    raise err


def _headline(metrics: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{seg} ndcg@10={m['ndcg@10']:.4f}" for seg, m in metrics.items() if "ndcg@10" in m)
