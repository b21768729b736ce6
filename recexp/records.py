"""``results.json``: the self-contained record every run leaves, written atomically.

Keys: ``run_id``, ``status`` (running / ok / failed), ``error``, ``metrics`` ({stage: {...}} for every
stage, the ``all`` segment), ``segments`` (the final stage's metrics per segment: ``test`` in a
holdout split), ``stages`` ({stage: {segment: {...}}}), ``not_computed`` ({stage: {segment: {metric: why}}}: the
metrics named in ``evaluator.metrics`` that a stage or segment could not compute), ``valid_segments``, ``effective`` (trainer
settings the model used), ``model`` (what kind of model ran: ``text_encoder``), ``cost``, ``split``,
``config``, ``objective``, ``versions``, ``git_sha``, ``started_at``, ``finished_at``, ``provenance``
(``host``, ``pid``, ``started``, ``attempts``: runs of this configuration in the sweep folder, this one
included; ``launch``; see :mod:`recexp.locks`).
Per-user values of the final stage go to ``per_user_test.csv.gz`` and its top-K lists (internal ids)
to ``rankings_test.npz``. Only the main process writes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recexp.errors import ConfigError
from recexp.evaluate import METRICS, Evaluation, Evaluator, metric_key, parse_metric
from recexp.evaluate.computable import refusal
from recexp.interfaces import Recommender, Split, Stage, TaskResult
from recexp.tracking import git_sha, package_versions, write_json_atomic

RESULTS = "results.json"
PER_USER = "per_user_test.csv.gz"
RANKINGS = "rankings_test.npz"
PAIRS = "pairs_test.csv.gz"  # the final stage's scored labelled pairs: user_id, item_id, label, score


@dataclass
class RunRecord:
    path: Path
    data: dict[str, Any]
    persist: bool = True  # False in helper processes of a multi-process run: nothing is written

    @classmethod
    def start(cls, run_dir: Path, run_id: str, config: dict[str, Any], objective: str, persist: bool = True,
              provenance: dict[str, Any] | None = None) -> RunRecord:
        data = {
            "run_id": run_id,
            "status": "running",
            "error": None,
            "objective_name": objective,
            "objective": None,
            "metrics": {},
            "segments": {},
            "stages": {},
            "not_computed": {},
            "effective": {},
            "cost": {},
            "split": {},
            "config": config,
            "versions": package_versions(),
            "git_sha": git_sha(),
            "run_dir": str(run_dir),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "provenance": provenance or {},  # host, pid, started, attempts (recexp.locks)
        }
        record = cls(run_dir / RESULTS, data, persist)
        if persist:
            (run_dir / "traceback.txt").unlink(missing_ok=True)
        record.write()
        return record

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        return cls(path, json.loads(path.read_text()))

    @property
    def objective(self) -> float:
        value = self.data.get("objective")
        return float("nan") if value is None else float(value)

    def set_model(self, model: Recommender) -> None:
        """``text_encoder``: whether ``model`` reads item text through a text encoder (its declared ``encoder``)."""
        self.data["model"] = {"text_encoder": model.encoder is not None}

    def set_split(self, split: Split, evaluator: Evaluator) -> None:
        """The split's facts, and how the evaluator ranks on it (whether each user's history is removed)."""
        self.data["split"] = {"hash": split.hash, "path": str(split.path), "counts": split.counts(), **split.info,
                              "max_history": split.max_history, "mask_history": evaluator.mask_history}
        self.data["data"] = dict(split.dataset.info)  # which interactions were read, dropped and kept as positives

    def finish_ok(self, result: TaskResult) -> None:
        evaluations: dict[str, Evaluation] = result.evaluations
        final = final_stage(evaluations)
        self.data["metrics"] = {stage: ev.metrics.get("all", {}) for stage, ev in evaluations.items()}
        self.data["segments"] = evaluations[final].metrics
        self.data["stages"] = {stage: ev.metrics for stage, ev in evaluations.items()}
        self.data["not_computed"] = {stage: ev.not_computed for stage, ev in evaluations.items() if ev.not_computed}
        self.data["valid_segments"] = evaluations["valid"].metrics if "valid" in evaluations else {}
        self.data["cost"] = result.cost
        self.data["effective"] = result.effective
        self.data.update(result.sections)
        stage, _, metric = self.data["objective_name"].partition("/")
        value = self.data["metrics"].get(stage, {}).get(metric)
        if value is None:
            available = sorted(self.data["metrics"].get(stage, {}))
            raise ConfigError(f"objective {self.data['objective_name']!r} was not computed; choose {stage}/<one of {available}>.")
        self.data["objective"] = value
        self.data["status"] = "ok"

    def summary(self) -> dict[str, Any]:
        """For W&B: each stage's ``all`` metrics, the final stage per segment, the cost ledger, and the metrics asked
        for that some stage or segment could not compute (where there are any)."""
        final = final_stage(self.data["stages"])
        missing = {"not_computed": self.data["not_computed"]} if self.data["not_computed"] else {}
        return {**self.data["metrics"], final: self.data["segments"], "cost": self.data["cost"], **missing}

    def finish_failed(self, err: BaseException, trace: str) -> None:
        self.data["status"] = "failed"
        self.data["error"] = f"{type(err).__name__}: {err}"
        if self.persist:
            (self.path.parent / "traceback.txt").write_text(trace)

    def write(self) -> None:
        if not self.persist:
            return
        self.data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z") if self.data["status"] != "running" else None
        write_json_atomic(self.path, _finite(self.data))


def _finite(value: Any) -> Any:
    """NaN/inf become null so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def final_stage(evaluations: dict[str, Any]) -> str:
    """The stage a run reports as its result: ``test`` when there is one, else the last evaluated."""
    return "test" if "test" in evaluations else list(evaluations)[-1]


def check_metrics(objective: str, stages: dict[str, Stage], evaluator: Evaluator, model: Recommender) -> None:
    """A ConfigError, before any training, for a metric the run asks for that no stage of the reported ``stages`` can
    compute: one named in ``evaluator.metrics``, the model's early-stopping ``trainer.valid_metric``, or ``objective``."""
    problem = refusal("{} in evaluator.metrics", {m: METRICS[m] for m in evaluator.asked}, stages, model,
                      "drop {} from evaluator.metrics")
    if problem is None and model.valid_metric is not None and "valid" in stages:
        valid = {"valid": stages["valid"]}
        problem = refusal("trainer.valid_metric={}", {model.valid_metric: parse_metric(model.valid_metric)[0]}, valid,
                          model, f"choose another trainer.valid_metric{_example(valid['valid'])}")
    if problem is not None:
        raise ConfigError(problem)
    check_objective(objective, stages, evaluator, model)


def check_objective(name: str, stages: dict[str, Stage], evaluator: Evaluator, model: Recommender) -> None:
    """A ConfigError unless ``name`` is stage/metric of the reported ``stages``, which that stage, ``model`` and the
    evaluator compute."""
    stage, slash, metric = str(name).partition("/")
    if not slash or stage not in stages:
        raise ConfigError(f"objective={name!r} must be stage/metric with stage one of {', '.join(stages)} (e.g. valid/ndcg@10).")
    try:
        spec, k = parse_metric(metric)
    except ConfigError as err:
        raise ConfigError(f"objective={name!r}: {err}") from None
    problem = refusal("objective={}", {repr(name): spec}, {stage: stages[stage]}, model,
                      f"choose another objective{_example(stages[stage], stage + '/')}")
    if problem is not None:
        raise ConfigError(problem)
    if spec.name not in evaluator.metrics or (k is not None and k not in evaluator.ks):
        raise ConfigError(
            f"objective={name!r} is not computed by the evaluator (metrics {evaluator.metrics}, ks {evaluator.ks}); "
            f"add {metric_key(spec, k)} to them or choose another objective."
        )


def _example(stage: Stage, prefix: str = "") -> str:
    """`` (e.g. ndcg@10)`` when ``stage`` ranks items, `` (e.g. auc)`` when it has labelled pairs only."""
    return f" (e.g. {prefix}ndcg@10)" if stage.positives is not None else f" (e.g. {prefix}auc)" if stage.pairs else ""


def save_evaluation(run_dir: Path, result: TaskResult) -> None:
    """The final stage's per-user values (CSV, raw user tokens), each segment's top-K lists (npz, internal ids;
    -1 = empty) and, where it has labelled pairs, every scored pair (CSV: raw user and item ids, label, score)."""
    final = result.evaluations[final_stage(result.evaluations)]
    final.per_user.to_csv(run_dir / PER_USER, index=False)
    arrays = {}
    for segment, topk in final.topk.items():
        arrays[f"{segment}/users"] = final.users[segment]
        arrays[f"{segment}/topk"] = topk
    np.savez_compressed(run_dir / RANKINGS, **arrays)
    if getattr(final, "pairs", None) is not None:
        final.pairs.to_csv(run_dir / PAIRS, index=False, float_format="%.17g")
