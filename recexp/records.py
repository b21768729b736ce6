"""``results.json``: the self-contained record every run leaves, written atomically.

Keys: ``run_id``, ``status`` (running / ok / failed), ``error``, ``metrics`` ({"valid": {...}, "test": {...}},
the ``all`` segment), ``segments`` (test metrics per segment), ``valid_segments``, ``cost``, ``split``,
``config``, ``objective``, ``versions``, ``git_sha``, ``started_at``, ``finished_at``.
Per-user test metrics go to ``per_user_test.csv.gz`` and top-K lists (internal ids) to ``rankings_test.npz``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recexp.errors import RecexpError
from recexp.evaluate import Evaluation
from recexp.interfaces import Split
from recexp.tracking import git_sha, package_versions, write_json_atomic

RESULTS = "results.json"
PER_USER = "per_user_test.csv.gz"
RANKINGS = "rankings_test.npz"


@dataclass
class RunRecord:
    path: Path
    data: dict[str, Any]

    @classmethod
    def start(cls, run_dir: Path, run_id: str, config: dict[str, Any], objective: str) -> "RunRecord":
        data = {
            "run_id": run_id,
            "status": "running",
            "error": None,
            "objective_name": objective,
            "objective": None,
            "metrics": {},
            "segments": {},
            "cost": {},
            "split": {},
            "config": config,
            "versions": package_versions(),
            "git_sha": git_sha(),
            "run_dir": str(run_dir),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        record = cls(run_dir / RESULTS, data)
        (run_dir / "traceback.txt").unlink(missing_ok=True)
        record.write()
        return record

    @classmethod
    def load(cls, path: Path) -> "RunRecord":
        return cls(path, json.loads(path.read_text()))

    @property
    def objective(self) -> float:
        value = self.data.get("objective")
        return float("nan") if value is None else float(value)

    def set_split(self, split: Split) -> None:
        self.data["split"] = {"hash": split.hash, "path": str(split.path), "counts": split.counts(), **split.info}

    def finish_ok(self, valid: Evaluation, test: Evaluation, cost: dict[str, Any], extras: dict[str, Any]) -> None:
        self.data["metrics"] = {"valid": valid.metrics.get("all", {}), "test": test.metrics.get("all", {})}
        self.data["segments"] = test.metrics
        self.data["valid_segments"] = valid.metrics
        self.data["cost"] = cost
        self.data.update(extras)
        stage, _, metric = self.data["objective_name"].partition("/")
        value = self.data["metrics"].get(stage, {}).get(metric)
        if value is None:
            available = sorted(self.data["metrics"].get("valid", {}))
            raise RecexpError(f"objective {self.data['objective_name']!r} was not computed; choose valid/<one of {available}>.")
        self.data["objective"] = value
        self.data["status"] = "ok"

    def finish_failed(self, err: BaseException, trace: str) -> None:
        self.data["status"] = "failed"
        self.data["error"] = f"{type(err).__name__}: {err}"
        (self.path.parent / "traceback.txt").write_text(trace)

    def write(self) -> None:
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


def save_evaluation(run_dir: Path, test: Evaluation) -> None:
    """Per-user test metrics (CSV, raw user tokens) and each segment's top-K lists (npz, internal ids; -1 = empty)."""
    test.per_user.to_csv(run_dir / PER_USER, index=False)
    arrays = {}
    for segment, topk in test.topk.items():
        arrays[f"{segment}/users"] = test.users[segment]
        arrays[f"{segment}/topk"] = topk
    np.savez_compressed(run_dir / RANKINGS, **arrays)


def finished_record(folder: Path, run_id: str) -> Path | None:
    """A ``results.json`` under ``folder`` with this run id and status ok, if any."""
    if not folder.is_dir():
        return None
    for path in folder.rglob(RESULTS):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("run_id") == run_id and data.get("status") == "ok":
            return path
    return None
