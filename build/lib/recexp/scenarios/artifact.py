"""Split artifacts on disk, keyed by a content hash of (dataset content, scenario config, seed).

Layout of ``CACHE/splits/HASH/``: one ``PART.inter`` per named part (``train``, ``valid``, ``test``
for a holdout split; atomic files with the dataset's raw id tokens, and a ``label`` column where a
part holds labelled pairs) and ``split.json``: every stage's history, positives and pairs (part
names), candidates and segments (raw item tokens). Any model, or an independent checker, reads the
same files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from recexp.interfaces import Dataset, Split, Stage

INTER_FIELDS = {"user": "user_id:token", "item": "item_id:token", "rating": "rating:float", "timestamp": "timestamp:float"}
LABEL_FIELD = "label:float"


class Scenario(Protocol):
    def build(self, dataset: Dataset, seed: int) -> Split: ...


def scenario_hash(dataset: Dataset, scenario: Scenario, seed: int) -> str:
    """sha256 over the dataset content, the scenario's type and fields, and the seed."""
    key = {
        "dataset": dataset.content_hash,
        "scenario": type(scenario).__qualname__,
        "params": dataclasses.asdict(scenario),
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def build_or_load(dataset: Dataset, scenario: Scenario, seed: int, cache_dir: str | Path) -> Split:
    """Return the split for this key, computing and storing it only the first time."""
    digest = scenario_hash(dataset, scenario, seed)
    folder = Path(cache_dir) / "splits" / digest[:20]
    if (folder / "split.json").is_file():
        return load_split(folder, dataset)
    split = scenario.build(dataset, seed)
    split.hash = digest
    _save_atomically(split, folder, {"scenario": type(scenario).__name__, **dataclasses.asdict(scenario), "seed": seed})
    split.path = folder
    return split


def _save_atomically(split: Split, folder: Path, config: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for name, frame in split.parts.items():
            write_inter(staging / f"{name}.inter", frame, split.dataset)
        tokens = split.dataset.item_tokens
        meta = {
            "hash": split.hash,
            "config": config,
            "counts": split.counts(),
            "info": split.info,
            "parts": list(split.parts),
            "stages": {name: _stage_json(stage, tokens) for name, stage in split.stages.items()},
        }
        (staging / "split.json").write_text(json.dumps(meta, default=str))
        try:
            os.rename(staging, folder)
        except OSError:  # another process stored the same artifact first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _stage_json(stage: Stage, tokens: np.ndarray) -> dict[str, Any]:
    return {
        "history": list(stage.history),
        "positives": stage.positives,
        "pairs": stage.pairs,
        "candidates": None if stage.candidates is None else tokens[stage.candidates].tolist(),
        "segments": {name: tokens[ids].tolist() for name, ids in stage.segments.items()},
    }


def write_inter(path: Path, frame: pd.DataFrame, dataset: Dataset) -> None:
    """Write interactions as an atomic file with raw tokens (and their ``label`` when they have one)."""
    out = pd.DataFrame(
        {
            "user_id": dataset.user_tokens[frame["user"].to_numpy()],
            "item_id": dataset.item_tokens[frame["item"].to_numpy()],
            "rating": frame["rating"].to_numpy(),
            "timestamp": frame["timestamp"].to_numpy(),
            **({"label": frame["label"].to_numpy()} if "label" in frame else {}),
        }
    )
    header = [*INTER_FIELDS.values(), *([LABEL_FIELD] if "label" in frame else [])]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(header) + "\n")
        out.to_csv(handle, sep="\t", header=False, index=False, na_rep="", float_format="%.17g")


def load_split(folder: Path, dataset: Dataset) -> Split:
    """Read an artifact written by :func:`build_or_load` back onto ``dataset``'s internal ids."""
    meta = json.loads((folder / "split.json").read_text())
    users = {t: i for i, t in enumerate(dataset.user_tokens)}
    items = {t: i for i, t in enumerate(dataset.item_tokens)}

    def ids(tokens: list[str]) -> np.ndarray:
        return np.fromiter((items[t] for t in tokens), dtype=np.int64, count=len(tokens))

    parts = {name: _read_part(folder / f"{name}.inter", users, items) for name in meta["parts"]}
    stages = {
        name: Stage(
            history=tuple(spec["history"]),
            positives=spec["positives"],
            candidates=None if spec["candidates"] is None else ids(spec["candidates"]),
            segments={n: ids(t) for n, t in spec["segments"].items()},
            pairs=spec["pairs"],
        )
        for name, spec in meta["stages"].items()
    }
    return Split(dataset=dataset, parts=parts, stages=stages, hash=meta["hash"], path=folder, info=meta["info"])


def _read_part(path: Path, users: dict[str, int], items: dict[str, int]) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="\t", dtype={INTER_FIELDS["user"]: str, INTER_FIELDS["item"]: str})
    frame = pd.DataFrame(
        {
            "user": raw[INTER_FIELDS["user"]].map(users).to_numpy(dtype=np.int64),
            "item": raw[INTER_FIELDS["item"]].map(items).to_numpy(dtype=np.int64),
            "rating": raw[INTER_FIELDS["rating"]].to_numpy(dtype=np.float64),
            "timestamp": raw[INTER_FIELDS["timestamp"]].to_numpy(dtype=np.float64),
        }
    )
    if LABEL_FIELD in raw:
        frame["label"] = raw[LABEL_FIELD].to_numpy(dtype=np.float64)
    return frame
