"""Split artifacts on disk, keyed by a content hash of (dataset content, scenario config, seed).

Layout of ``CACHE/splits/HASH/``: one ``PART.inter`` per named part (``train``, ``valid``, ``test``
for a holdout split; atomic files with the dataset's raw id tokens, and a ``label`` column where a
part holds labelled pairs, and a ``sample`` column where rows are numbered samples or their
histories, as in ``tallrec``) and ``split.json``: every stage's history, positives and pairs (part
names), candidates and segments (raw item tokens), the split's ``histories`` and ``blocks``, the
sha256 of every ``PART.inter`` file, ``max_history`` (how many of a user's most recent items a sequential model
reads), and a ``checksum`` over all of that. Any model, or an independent checker, reads the same files. A user's
sequence is their rows in time order, ties (and data without time) in the order the files list them.

Every load verifies every checksum; a damaged artifact (truncated, overwritten or emptied file,
unreadable ``split.json``) is reported with a warning naming the file, moved aside and rebuilt; so is an
artifact whose ``split.json`` is of an older :data:`FORMAT` (rebuilt under the same hash, with the same parts).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from recexp.cache import DamagedCache, OutdatedCache, discard, read_verified, sha256
from recexp.data.atomic import read_table
from recexp.files import shareable
from recexp.interfaces import Block, Dataset, Split, Stage

log = logging.getLogger(__name__)

INTER_FIELDS = {"user": "user_id:token", "item": "item_id:token", "rating": "rating:float", "timestamp": "timestamp:float"}
LABEL_FIELD = "label:float"
SAMPLE_FIELD = "sample:token"  # parts of sample-based scenarios (tallrec): which sample a row is, or is history for


class Scenario(Protocol):
    def build(self, dataset: Dataset, seed: int) -> Split: ...


PROTOCOLS = 3  # raise when a scenario's output changes for the same settings: stored splits are then rebuilt
FORMAT = 2  # raise when split.json records more than older artifacts hold: they are rebuilt under the same hash


def scenario_hash(dataset: Dataset, scenario: Scenario, seed: int) -> str:
    """sha256 over the dataset content, the scenario's type and fields, the seed and :data:`PROTOCOLS`."""
    key = {
        "protocols": PROTOCOLS,
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
    if folder.exists():
        try:
            return load_split(folder, dataset)
        except OutdatedCache as err:
            log.info("Split artifact of an older format: %s; rebuilding it.", err)
            discard(folder)
        except DamagedCache as err:
            log.warning("Split artifact damaged: %s; rebuilding it.", err)
            discard(folder)
    split = scenario.build(dataset, seed)
    split.hash = digest
    _save_atomically(split, folder, {"scenario": type(scenario).__name__, **dataclasses.asdict(scenario), "seed": seed})
    split.path = folder
    return split


def _save_atomically(split: Split, folder: Path, config: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        files = {}
        for name, frame in split.parts.items():
            data = inter_bytes(frame, split.dataset)
            (staging / f"{name}.inter").write_bytes(data)
            files[f"{name}.inter"] = sha256(data)
        tokens = split.dataset.item_tokens
        meta = {
            "format": FORMAT,
            "hash": split.hash,
            "config": config,
            "counts": split.counts(),
            "info": split.info,
            "parts": list(split.parts),
            "stages": {name: _stage_json(stage, tokens, split.dataset.user_tokens) for name, stage in split.stages.items()},
            "histories": split.histories,
            "blocks": [dataclasses.asdict(block) for block in split.blocks],
            "max_history": split.max_history,
            "files": files,
        }
        meta = json.loads(json.dumps(meta, default=str))  # what a reader will parse, checksummed as such
        (staging / "split.json").write_text(json.dumps({**meta, "checksum": _meta_checksum(meta)}))
        shareable(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another process stored the same artifact first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _stage_json(stage: Stage, tokens: np.ndarray, user_tokens: np.ndarray) -> dict[str, Any]:
    return {
        "history": list(stage.history),
        "positives": stage.positives,
        "pairs": stage.pairs,
        "candidates": None if stage.candidates is None else tokens[stage.candidates].tolist(),
        "segments": {name: tokens[ids].tolist() for name, ids in stage.segments.items()},
        "user_segments": {name: user_tokens[ids].tolist() for name, ids in stage.user_segments.items()},
    }


def _meta_checksum(meta: dict[str, Any]) -> str:
    return sha256(json.dumps(meta, sort_keys=True).encode())


def inter_bytes(frame: pd.DataFrame, dataset: Dataset) -> bytes:
    """Interactions as an atomic file with raw tokens (and their ``label`` when they have one)."""
    out = pd.DataFrame(
        {
            "user_id": dataset.user_tokens[frame["user"].to_numpy()],
            "item_id": dataset.item_tokens[frame["item"].to_numpy()],
            "rating": frame["rating"].to_numpy(),
            "timestamp": frame["timestamp"].to_numpy(),
            **({"label": frame["label"].to_numpy()} if "label" in frame else {}),
            **({"sample": frame["sample"].to_numpy()} if "sample" in frame else {}),
        }
    )
    header = [*INTER_FIELDS.values(), *([LABEL_FIELD] if "label" in frame else []),
              *([SAMPLE_FIELD] if "sample" in frame else [])]
    body = out.to_csv(sep="\t", header=False, index=False, na_rep="", float_format="%.17g", lineterminator="\n")
    return ("\t".join(header) + "\n" + body).encode("utf-8")


def load_split(folder: Path, dataset: Dataset) -> Split:
    """Read an artifact written by :func:`build_or_load` back onto ``dataset``'s internal ids.

    Raises :class:`DamagedCache` (naming the file) when any file fails its checksum or ``split.json`` is of an older format.
    """
    meta = read_meta(folder)
    if meta.get("format", 1) != FORMAT:
        raise OutdatedCache(f"{folder / 'split.json'} is of format {meta.get('format', 1)}, written by an older recexp "
                           f"(this one reads format {FORMAT})")
    users = {t: i for i, t in enumerate(dataset.user_tokens)}
    items = {t: i for i, t in enumerate(dataset.item_tokens)}

    def ids(tokens: list[str]) -> np.ndarray:
        return _ids(tokens, items, folder / "split.json")

    parts = {name: _read_part(verified_part(folder, name, meta), users, items, folder / f"{name}.inter")
             for name in meta["parts"]}
    stages = {
        name: Stage(
            history=tuple(spec["history"]),
            positives=spec["positives"],
            candidates=None if spec["candidates"] is None else ids(spec["candidates"]),
            segments={n: ids(t) for n, t in spec["segments"].items()},
            pairs=spec["pairs"],
            user_segments={n: _ids(u, users, folder / "split.json") for n, u in spec.get("user_segments", {}).items()},
        )
        for name, spec in meta["stages"].items()
    }
    return Split(dataset=dataset, parts=parts, stages=stages, hash=meta["hash"], path=folder, info=meta["info"],
                 histories=meta["histories"], blocks=[Block(**block) for block in meta["blocks"]],
                 max_history=meta.get("max_history"))


def read_meta(folder: Path) -> dict[str, Any]:
    """``split.json`` of an artifact, checked against its own checksum (:class:`DamagedCache` if not)."""
    path = folder / "split.json"
    try:
        meta = json.loads(path.read_bytes())
        recorded = meta.pop("checksum", None)
    except (OSError, ValueError, AttributeError) as err:
        raise DamagedCache(f"{path} cannot be read ({err})") from err
    if recorded is None:
        raise DamagedCache(f"{path} has no checksum (written by an older recexp)")
    if recorded != _meta_checksum(meta):
        raise DamagedCache(f"{path} does not match its recorded checksum (edited or overwritten)")
    return meta


def verified_part(folder: Path, name: str, meta: dict[str, Any]) -> bytes:
    """The bytes of ``folder/NAME.inter``, checked against the sha256 ``split.json`` records for it."""
    return read_verified(folder / f"{name}.inter", meta["files"].get(f"{name}.inter"))


def _read_part(data: bytes, users: dict[str, int], items: dict[str, int], path: Path) -> pd.DataFrame:
    raw = read_table(data, [INTER_FIELDS["user"], INTER_FIELDS["item"]], sep="\t")
    frame = pd.DataFrame(
        {
            "user": _ids(raw[INTER_FIELDS["user"]], users, path),
            "item": _ids(raw[INTER_FIELDS["item"]], items, path),
            "rating": raw[INTER_FIELDS["rating"]].to_numpy(dtype=np.float64),
            "timestamp": raw[INTER_FIELDS["timestamp"]].to_numpy(dtype=np.float64),
        }
    )
    if LABEL_FIELD in raw:
        frame["label"] = raw[LABEL_FIELD].to_numpy(dtype=np.float64)
    if SAMPLE_FIELD in raw:
        frame["sample"] = raw[SAMPLE_FIELD].to_numpy(dtype=np.int64)
    return frame


def _ids(tokens, lookup: dict[str, int], path: Path) -> np.ndarray:
    """Internal ids of raw tokens; :class:`DamagedCache` naming one the dataset does not have."""
    try:
        return np.fromiter((lookup[t] for t in tokens), dtype=np.int64, count=len(tokens))
    except KeyError as err:
        raise DamagedCache(f"{path} names id {err.args[0]!r}, which the dataset does not have") from None
