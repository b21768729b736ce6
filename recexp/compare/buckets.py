"""Recall@K per item-popularity bucket, recomputed from a run's saved top-K lists and its split artifact.

Items seen in training are sorted by training interactions (most first) and cut into ``n_buckets``
groups of equal item count, head to tail; items with no training interaction form a ``cold`` bucket.
For a user and bucket b: recall_b = |top-K ∩ test items in b| / |test items in b|, averaged over the
users with a test item in b.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from recexp.cache import DamagedCache
from recexp.compare.load import Run, rankings_path
from recexp.config import build
from recexp.scenarios.artifact import read_meta, verified_part


class BucketsUnavailable(Exception):
    """A run lacks what the popularity-bucket plot needs; the message says what."""


def bucket_labels(n_buckets: int) -> list[str]:
    names = [f"B{i + 1}" for i in range(n_buckets)]
    names[0] += " head"
    names[-1] += " tail"
    return names + ["cold"]


def read_inter(folder: Path, part: str) -> pd.DataFrame:
    """An artifact's atomic interaction file as raw tokens: columns user, item (checksum verified)."""
    try:
        data = verified_part(folder, part, read_meta(folder))
    except DamagedCache as err:
        raise BucketsUnavailable(f"split artifact damaged: {err}; rerun any job of it to rebuild.") from err
    raw = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, usecols=[0, 1], keep_default_na=False)  # ids verbatim
    raw.columns = ["user", "item"]
    return raw


def item_buckets(train: pd.DataFrame, items: np.ndarray, n_buckets: int) -> pd.Series:
    """Bucket label of each item token in ``items`` (plus every training item) by training popularity."""
    counts = train["item"].value_counts()
    seen = counts.rename_axis("item").reset_index(name="n").sort_values(["n", "item"], ascending=[False, True])
    labels = bucket_labels(n_buckets)
    bucket = {}
    for label, part in zip(labels, np.array_split(seen["item"].to_numpy(), n_buckets)):
        bucket.update(dict.fromkeys(part, label))
    return pd.Series({i: bucket.get(i, "cold") for i in np.union1d(items, seen["item"].to_numpy())})


def recall_by_bucket(topk: pd.DataFrame, test: pd.DataFrame, buckets: pd.Series, k: int) -> dict[str, float]:
    """topk: user, item, rank (0-based); test: user, item -> {bucket label: mean per-user recall@k}."""
    top = topk[topk["rank"] < k][["user", "item"]].assign(hit=1)
    pos = test[test["user"].isin(topk["user"].unique())].merge(top, on=["user", "item"], how="left")
    pos["hit"] = pos["hit"].fillna(0)
    pos["bucket"] = pos["item"].map(buckets)
    per_user = pos.groupby(["bucket", "user"])["hit"].mean()
    return per_user.groupby(level="bucket").mean().to_dict()


class SplitReader:
    """Finds split artifacts and the datasets behind internal ids; caches both."""

    def __init__(self, roots: list[Path]):
        self.roots = roots  # extra folders to search, e.g. a cache_dir copied from elsewhere
        self._datasets: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def folder(self, run: Run) -> Path:
        raw = Path(str((run.data.get("split") or {}).get("path") or ""))
        if not raw.name:
            raise BucketsUnavailable(f"{run.path}: results.json records no split path.")
        bases = [Path.cwd(), *run.path.parents, *self.roots]
        tries = [raw] if raw.is_absolute() else [b / raw for b in bases]
        tries += [r / "splits" / raw.name for r in self.roots] + [r / raw.name for r in self.roots]
        for path in tries:
            if (path / "test.inter").is_file() and (path / "train.inter").is_file():
                return path
        raise BucketsUnavailable(f"{run.path}: split artifact {raw} not found (pass --cache-dir DIR).")

    def tokens(self, run: Run) -> tuple[np.ndarray, np.ndarray]:
        """(user tokens, item tokens) indexed by internal id, from the run's dataset config."""
        node = run.config.get("dataset")
        key = json.dumps(node, sort_keys=True, default=str)
        if key not in self._datasets:
            dataset = build(OmegaConf.create(node)).load()
            self._datasets[key] = (dataset.user_tokens, dataset.item_tokens)
        return self._datasets[key]


def run_buckets(run: Run, reader: SplitReader, k: int, n_buckets: int) -> dict[str, float]:
    """One run's recall@k per popularity bucket (segment ``all``)."""
    path = rankings_path(run)
    if path is None:
        raise BucketsUnavailable(f"{run.path}: no rankings_test.npz.")
    folder = reader.folder(run)
    with np.load(path, allow_pickle=False) as saved:
        if "all/topk" not in saved.files:
            raise BucketsUnavailable(f"{run.path}: rankings_test.npz has no 'all' segment.")
        users, topk = saved["all/users"], saved["all/topk"]
    if k > topk.shape[1]:
        raise BucketsUnavailable(f"{run.path}: top-{topk.shape[1]} lists saved, cannot compute recall@{k}.")
    tokens = reader.tokens(run) if np.issubdtype(topk.dtype, np.integer) else None
    train, test = read_inter(folder, "train"), read_inter(folder, "test")
    return recall_by_bucket(ranked_items(users, topk, tokens), test, item_buckets(train, test["item"].unique(), n_buckets), k)


def ranked_items(users: np.ndarray, topk: np.ndarray, tokens: tuple[np.ndarray, np.ndarray] | None) -> pd.DataFrame:
    """user, item, rank (0-based) of saved top-K lists, without their empty slots (-1); internal ids are
    decoded by ``tokens`` (user tokens, item tokens), ``None`` where the lists hold tokens already."""
    if tokens is None:
        filled = np.ones(topk.size, dtype=bool)
    else:
        filled = (topk >= 0).ravel()
        users, topk = tokens[0][users], tokens[1][np.maximum(topk, 0)]
    frame = pd.DataFrame({
        "user": np.repeat(users.astype(str), topk.shape[1]),
        "item": topk.astype(str).ravel(),
        "rank": np.tile(np.arange(topk.shape[1]), len(users)),
    })
    return frame[filled].reset_index(drop=True)
