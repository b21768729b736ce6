"""Find run records under folders and read what a comparison needs from each run folder."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from recexp.data.atomic import read_table
from recexp.errors import ConfigError, DataError
from recexp.evaluate.metrics import is_metric_key, parse_metric
from recexp.records import PER_USER, RANKINGS, RESULTS, final_stage

SEGMENT_ORDER = ("all", "head", "head_full", "tail", "tail_full", "warm", "warm_full", "cold", "cold_full")
# Hydra group choices that say where output goes or which preset was used, not what was run.
IGNORED_CHOICES = ("logger", "experiment", "hparams_search")


@dataclass
class Run:
    """One run folder: its ``results.json`` plus the Hydra group choices saved beside it."""

    path: Path  # the folder holding results.json
    data: dict[str, Any]
    choices: dict[str, str] = field(default_factory=dict)  # group -> option, e.g. {"model": "bpr"}

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def config(self) -> dict[str, Any]:
        return self.data.get("config") or {}

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def split_hash(self) -> str:
        return str((self.data.get("split") or {}).get("hash", ""))

    def metric(self, segment: str, name: str) -> float | None:
        return (self.data.get("segments") or {}).get(segment, {}).get(name)

    @property
    def final_not_computed(self) -> dict[str, dict[str, str]]:
        """{segment: {metric: why}}: what the final stage (that of ``segments``) did not compute of what the run asked for."""
        stages = self.data.get("stages") or {}
        return (self.data.get("not_computed") or {}).get(final_stage(stages) if stages else "test") or {}

    def not_computed(self, segment: str, name: str) -> str | None:
        """Why the final stage did not compute ``name`` in ``segment``, as the record says; None where it does not."""
        return self.final_not_computed.get(segment, {}).get(name)

    def cost(self, name: str) -> float | None:
        return (self.data.get("cost") or {}).get(name)


def find_runs(folders: list[Path]) -> list[Run]:
    """Every ``results.json`` under ``folders`` (searched recursively), in path order."""
    missing = [str(f) for f in folders if not Path(f).exists()]
    if missing:
        raise DataError(f"Run folder(s) not found: {', '.join(missing)}.")
    paths = sorted({p.resolve() for f in folders for p in _results_files(Path(f))})
    if not paths:
        raise DataError(
            f"No {RESULTS} found under {', '.join(str(f) for f in folders)}. Point recexp-compare at a "
            "sweep folder (hydra.sweep.dir) or at run folders written by `python -m recexp`."
        )
    return [_load(p) for p in paths]


def _results_files(folder: Path) -> list[Path]:
    if folder.is_file() and folder.name == RESULTS:
        return [folder]
    return [p for p in folder.rglob(RESULTS) if ".submitit" not in p.parts]


def _load(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        data = {"status": "unreadable", "error": f"{path}: {err}"}
    return Run(path=path.parent, data=data, choices=_choices(path.parent))


def _choices(folder: Path) -> dict[str, str]:
    """Group choices from Hydra's ``.hydra/hydra.yaml``; empty when the run was not made by Hydra."""
    hydra_yaml = folder / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return {}
    choices = OmegaConf.to_container(OmegaConf.load(hydra_yaml).hydra.runtime.choices)
    return {
        k: str(v) for k, v in choices.items()
        if v is not None and not k.startswith("hydra/") and k not in IGNORED_CHOICES
    }


def model_name(run: Run) -> str:
    """The ``model=`` option, else the model config's ``name``, else its class name."""
    if "model" in run.choices:
        return run.choices["model"]
    model = run.config.get("model") or {}
    return str(model.get("name") or str(model.get("_target_", "?")).rsplit(".", 1)[-1])


def uses_text_encoder(run: Run) -> bool:
    """Whether the run's model read item text through a text encoder, as its record says (``model.text_encoder``).
    A record written before it said so: whether the model's config, or that of the torch module it wraps
    (``model.module``), takes a strategy or an encoder (``encoder: null``, an ID-only ``pair_classifier``, is none)."""
    if "model" in run.data:
        return bool(run.data["model"]["text_encoder"])
    model = run.config.get("model") or {}
    return any(node.get("strategy") is not None or node.get("encoder") is not None
               for node in (model, model.get("module") or {}))


def strategy_name(run: Run) -> str:
    if "strategy" in run.choices:
        return run.choices["strategy"]
    strategy = run.config.get("strategy") or (run.config.get("model") or {}).get("strategy") or {}
    return str(strategy.get("name") or str(strategy.get("_target_", "?")).rsplit(".", 1)[-1])


def available(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(metric names, segment names) found in the test metrics of ``runs``, or recorded there as not computed."""
    metrics: set[str] = set()
    segments: set[str] = set()
    for run in runs:
        for segment, values in [*(run.data.get("segments") or {}).items(), *run.final_not_computed.items()]:
            segments.add(segment)
            metrics.update(k for k in values if is_metric_key(k))
    return sorted(metrics, key=_metric_order), _segment_order(segments)


def _metric_order(name: str) -> tuple[str, int]:
    metric, k = parse_metric(name)
    return metric.name, k or 0


def _segment_order(segments: set[str]) -> list[str]:
    known = [s for s in SEGMENT_ORDER if s in segments]
    return known + sorted(segments - set(known))


def carried(runs: list[Run]) -> dict[str, frozenset[str]]:
    """segment -> the metric keys some run reports there, or records as not computed there (restricted segments
    carry no popularity-bias metrics)."""
    found: dict[str, set[str]] = {}
    for run in runs:
        for segment, values in [*(run.data.get("segments") or {}).items(), *run.final_not_computed.items()]:
            found.setdefault(segment, set()).update(values)
    return {segment: frozenset(keys) for segment, keys in found.items()}


def check_selection(runs: list[Run], metrics: list[str], segments: list[str]) -> None:
    """Every chosen metric exists; every finished run has each chosen metric in each segment it has,
    where some run reports it there (APLT, coverage ... are not computed inside restricted segments),
    unless its record says why it was not computed."""
    reported = carried(runs)
    names, segs = available(runs)
    unknown = [m for m in metrics if m not in names]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {', '.join(unknown)}; these runs have: {', '.join(names)}.")
    unknown = [s for s in segments if s not in segs]
    if unknown:
        raise ConfigError(f"Unknown segment(s) {', '.join(unknown)}; these runs have: {', '.join(segs)}.")
    for run in runs:
        have = run.data.get("segments") or {}
        if not have:
            raise DataError(f"{run.path}/{RESULTS} has status ok but no test metrics ('segments' is empty).")
        for segment in segments:
            lacking = [m for m in metrics if segment in have and m in reported[segment] and m not in have[segment]
                       and run.not_computed(segment, m) is None]
            if lacking:
                raise DataError(
                    f"{run.path}/{RESULTS} lacks {', '.join(lacking)} in segment {segment!r}; it has "
                    f"{', '.join(sorted(have[segment]))}. Drop those metrics or rerun with them in evaluator.metrics."
                )


def per_user(run: Run) -> pd.DataFrame | None:
    """Per-user test metrics (columns segment, user, n_pos, metric@k...), or None when not saved."""
    path = run.path / PER_USER
    if not path.is_file():
        return None
    return read_table(path, ["user", "segment"])


def rankings_path(run: Run) -> Path | None:
    path = run.path / RANKINGS
    return path if path.is_file() else None
