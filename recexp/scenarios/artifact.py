"""Split artifacts on disk, keyed by a content hash of (dataset content, scenario config, seed).

Layout of ``CACHE/splits/HASH/``: ``train.inter``, ``valid.inter``, ``test.inter`` (atomic files with
the dataset's raw id tokens) and ``split.json`` (candidates and segments as raw item tokens).
Any model, or an independent checker, reads the same files.
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

from recexp.interfaces import Dataset, Split

STAGE_FILES = ("train", "valid", "test")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


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
        for stage in STAGE_FILES:
            write_inter(staging / f"{stage}.inter", split.frame(stage), split.dataset)
        tokens = split.dataset.item_tokens
        meta = {
            "hash": split.hash,
            "config": config,
            "counts": split.counts(),
            "info": split.info,
            "candidates": {s: tokens[c].tolist() for s, c in split.candidates.items()},
            "segments": {s: {n: tokens[ids].tolist() for n, ids in seg.items()} for s, seg in split.segments.items()},
        }
        (staging / "split.json").write_text(json.dumps(meta, default=str))
        try:
            os.rename(staging, folder)
        except OSError:  # another process stored the same artifact first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_inter(path: Path, frame: pd.DataFrame, dataset: Dataset) -> None:
    """Write interactions as an atomic file with raw tokens."""
    out = pd.DataFrame(
        {
            "user_id": dataset.user_tokens[frame["user"].to_numpy()],
            "item_id": dataset.item_tokens[frame["item"].to_numpy()],
            "rating": frame["rating"].to_numpy(),
            "timestamp": frame["timestamp"].to_numpy(),
        }
    )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(INTER_HEADER + "\n")
        out.to_csv(handle, sep="\t", header=False, index=False, na_rep="", float_format="%.17g")


def load_split(folder: Path, dataset: Dataset) -> Split:
    """Read an artifact written by :func:`build_or_load` back onto ``dataset``'s internal ids."""
    meta = json.loads((folder / "split.json").read_text())
    users = {t: i for i, t in enumerate(dataset.user_tokens)}
    items = {t: i for i, t in enumerate(dataset.item_tokens)}

    def ids(tokens: list[str]) -> np.ndarray:
        return np.fromiter((items[t] for t in tokens), dtype=np.int64, count=len(tokens))

    frames = {}
    for stage in STAGE_FILES:
        raw = pd.read_csv(folder / f"{stage}.inter", sep="\t", dtype={"user_id:token": str, "item_id:token": str})
        frames[stage] = pd.DataFrame(
            {
                "user": raw["user_id:token"].map(users).to_numpy(dtype=np.int64),
                "item": raw["item_id:token"].map(items).to_numpy(dtype=np.int64),
                "rating": raw["rating:float"].to_numpy(dtype=np.float64),
                "timestamp": raw["timestamp:float"].to_numpy(dtype=np.float64),
            }
        )
    return Split(
        dataset=dataset,
        train=frames["train"],
        valid=frames["valid"],
        test=frames["test"],
        candidates={s: ids(t) for s, t in meta["candidates"].items()},
        segments={s: {n: ids(t) for n, t in seg.items()} for s, seg in meta["segments"].items()},
        hash=meta["hash"],
        path=folder,
        info=meta["info"],
    )
