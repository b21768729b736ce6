"""Group finished runs into table rows: one row per configuration, seeds aggregated.

Default row key: the model (``model=`` option), plus the strategy for models with a text encoder,
plus every other swept axis (a Hydra group choice or a config value) that still separates runs of
one row. Arm groups (``arm=``, ``longtail_arm=bpr_rerank``) count by the settings they make, not by their name.
Seeds are never part of the key; each row holds at most one run per seed.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from recexp.compare.load import Run, model_name, strategy_name, uses_text_encoder
from recexp.config import NON_RESULT_KEYS
from recexp.errors import ConfigError, DataError

IGNORED_LEAVES = frozenset({"progress", "cache_dir", "save_dir"})  # output/display keys at any depth
BASE_AXES = ("model", "strategy")


@dataclass
class Row:
    label: str
    key: tuple[tuple[str, str], ...]  # (axis, value) pairs
    runs: dict[Any, Run]  # seed -> run
    text_model: bool
    notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return sorted(self.runs, key=str)


def flat_config(run: Run) -> dict[str, str]:
    """Resolved config leaves as ``{"trainer.lr": "0.001"}`` without seed and output/display keys."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif prefix.split(".")[-1] not in IGNORED_LEAVES:
            flat[prefix] = json.dumps(node, sort_keys=True, default=str)

    for key, value in run.config.items():
        if key != "seed" and key not in NON_RESULT_KEYS:
            walk(value, key)
    return flat


def axis_value(run: Run, axis: str, flat: dict[str, str] | None = None) -> str | None:
    """A run's value on ``axis``; None for strategy and encoder axes of models without a text encoder."""
    if _is_text_axis(axis) and not uses_text_encoder(run):
        return None
    if axis == "model":
        return model_name(run)
    if axis == "strategy":
        return strategy_name(run)
    if axis in run.choices:
        return run.choices[axis]
    flat = flat if flat is not None else flat_config(run)
    if axis in flat:
        return flat[axis].strip('"')
    inner = {k: v for k, v in flat.items() if k.startswith(axis + ".")}
    return json.dumps(inner, sort_keys=True) if inner else None


def _is_text_axis(axis: str) -> bool:
    """The strategy and encoder groups, and the copies of them inside the model's config."""
    return axis in ("strategy", "encoder") or axis.startswith(
        ("strategy.", "encoder.", "model.strategy", "model.module.strategy", "model.encoder", "model.module.encoder"))


def default_axes(runs: list[Run]) -> list[str]:
    """Base axes, then each varying choice or config value that splits some row (in that order)."""
    flats = [flat_config(r) for r in runs]
    choices = sorted({k for r in runs for k in r.choices if not _is_arm(k)} - set(BASE_AXES))
    leaves = sorted({k for f in flats for k in f})
    axes = list(BASE_AXES)
    for axis in choices + leaves:
        if _splits(runs, flats, axes, axis):
            axes.append(axis)
    return axes


def _is_arm(group: str) -> bool:
    """``arm``, ``longtail_arm`` ...: a name for a bundle of settings, which the default key shows instead."""
    return group == "arm" or group.endswith("_arm")


def _splits(runs: list[Run], flats: list[dict[str, str]], axes: list[str], axis: str) -> bool:
    """True when ``axis`` takes more than one value (a missing one counts: a run without ``tail`` differs from one
    with it) among runs that agree on ``axes``."""
    seen: dict[tuple, set] = defaultdict(set)
    for run, flat in zip(runs, flats):
        seen[tuple(axis_value(run, a, flat) for a in axes)].add(axis_value(run, axis, flat))
    return any(len(values) > 1 for values in seen.values())


def check_axes(runs: list[Run], axes: list[str]) -> None:
    if "seed" in axes:
        raise ConfigError("--row-key cannot contain seed: seeds are what each row aggregates over.")
    groups = set(BASE_AXES) | {k for r in runs for k in r.choices}
    leaves = {k for r in runs for k in flat_config(r)}
    prefixes = {k.rsplit(".", i)[0] for k in leaves for i in range(1, k.count(".") + 1)}
    unknown = [a for a in axes if a not in groups | leaves | prefixes]
    if unknown:
        raise ConfigError(
            f"Unknown row key(s) {', '.join(unknown)}; use group names ({', '.join(sorted(groups))}) "
            "or config keys such as trainer.lr."
        )


def label(key: tuple[tuple[str, str | None], ...], shown: set[str] | None = None) -> str:
    """``text_tower/lora (trainer.lr=0.001)``; extra axes only if in ``shown`` (default: all)."""
    base = "/".join(v for a, v in key if a in BASE_AXES and v is not None)
    extra = ", ".join(
        f"{a}={v}" for a, v in key if a not in BASE_AXES and v is not None and (shown is None or a in shown)
    )
    return f"{base} ({extra})" if base and extra else base or extra


def _varying_within_base(keys: list[tuple]) -> dict[tuple, set[str]]:
    """For each row key, the extra axes whose value differs among rows of the same model (and strategy)."""
    values: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for key in keys:
        base = tuple(pair for pair in key if pair[0] in BASE_AXES)
        for axis, value in key:
            values[base][axis].add(value)
    return {
        key: {a for a, v in values[tuple(p for p in key if p[0] in BASE_AXES)].items() if len(v) > 1}
        for key in keys
    }


def build_rows(runs: list[Run], axes: list[str]) -> list[Row]:
    """Finished runs grouped by ``axes``; CF models first, then text models, each by its axis values."""
    check_splits(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        flat = flat_config(run)
        groups[tuple((a, axis_value(run, a, flat)) for a in axes)].append(run)
    shown = _varying_within_base(list(groups))
    rows = []
    for key, members in groups.items():
        row = Row(label=label(key, shown[key]), key=key, runs={}, text_model=uses_text_encoder(members[0]))
        _check_one_split_family(row.label, members)
        row.runs = _one_per_seed(row, members)
        rows.append(row)
    return sorted(rows, key=_order)


def _order(row: Row) -> tuple:
    """CF models before text models, then axis by axis, numbers by value (shots 16 < 64 < 256)."""
    def value(text: str | None) -> tuple:
        if text is None:
            return (0, 0.0, "")
        try:
            return (1, float(text), "")
        except ValueError:
            return (2, 0.0, text)
    return (row.text_model, *(value(v) for _, v in row.key))


def _split_family(run: Run) -> str:
    return json.dumps({k: run.config.get(k) for k in ("dataset", "scenario")}, sort_keys=True, default=str)


def check_splits(runs: list[Run]) -> None:
    """The same dataset, scenario and seed must have produced the same split in every run."""
    hashes: dict[tuple, dict[str, Run]] = defaultdict(dict)
    for run in runs:
        hashes[(_split_family(run), str(run.seed))].setdefault(run.split_hash, run)
    for (_, seed), by_hash in hashes.items():
        if len(by_hash) > 1:
            where = "; ".join(f"{h[:12] or '(none)'} in {r.path}" for h, r in by_hash.items())
            raise DataError(
                f"Runs with the same dataset, scenario and seed {seed} used different splits ({where}). "
                "The data or the split code changed between them, so their numbers cannot share a row "
                "or be paired. Compare them separately, or rerun the older runs."
            )


def _check_one_split_family(row_label: str, members: list[Run]) -> None:
    families = {_split_family(r) for r in members}
    if len(families) > 1:
        hashes = sorted({r.split_hash[:12] for r in members})
        raise DataError(
            f"Row {row_label!r} mixes runs on different splits (split hashes {', '.join(hashes)}) from "
            "different dataset or scenario settings. Add the differing key (e.g. scenario) to --row-key."
        )


def _one_per_seed(row: Row, members: list[Run]) -> dict[Any, Run]:
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for run in members:
        by_seed[run.seed].append(run)
    chosen = {}
    for seed, same in by_seed.items():
        if len(same) > 1:
            _check_duplicates(row, seed, same)
            same = sorted(same, key=lambda r: str(r.data.get("finished_at") or ""))
            row.notes.append(
                f"{row.label}: {len(same)} finished runs of seed {seed} with the same settings; "
                f"kept {same[-1].path}, left out {', '.join(str(r.path) for r in same[:-1])}."
            )
        chosen[seed] = same[-1]
    return chosen


def _check_duplicates(row: Row, seed: Any, same: list[Run]) -> None:
    flats = [flat_config(r) for r in same]
    keys = sorted({k for f in flats for k in f})
    differing = [
        k for k in keys
        if len({f.get(k) for f in flats}) > 1 and not (_is_text_axis(k) and not row.text_model)
    ]
    if differing:
        shown = ", ".join(f"{k} ({' vs '.join(sorted({str(f.get(k)) for f in flats}))})" for k in differing[:5])
        raise ConfigError(
            f"Row {row.label!r} has {len(same)} runs for seed {seed} that differ in {shown}. "
            "Add those keys to --row-key, or compare the runs separately."
        )
