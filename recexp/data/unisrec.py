"""UniSRec's released downstream datasets (``NAME.{train,valid,test}.inter``, ``NAME.text``, ``NAME.item2index``,
``NAME.user2index``), read back into each user's whole interaction sequence.

The inter files hold, per row, a user (the index in ``user2index``), their history (at most 50 item indices, oldest
first) and the target item. The train file lists every prefix of a user's training sequence, longest first; the
valid file each user's second-to-last item, the test file the last. The sequence is rebuilt from the train rows (its
first item, then every target) followed by the valid and test targets, and every history in the three files is
checked against it: ``scenario=leave_one_out`` then gives back exactly the released valid and test samples. The
files have no time: interactions keep their sequence order (timestamps NaN, ratings NaN).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recexp.data.atomic import read_atomic_file
from recexp.data.text import render_texts
from recexp.errors import DataError
from recexp.interfaces import INTER_COLUMNS, Dataset

PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class UniSRecDataset:
    """``dataset=unisrec dataset.path=DIR dataset.name=Scientific``."""

    name: str
    path: str
    item_template: str | None = "{text}"  # fields of NAME.text: text (title, categories and brand in UniSRec's release)
    item_title_template: str | None = None  # a short name per item for prompts (null: item_template)

    def load(self) -> Dataset:
        return load_unisrec(Path(self.path).expanduser(), self.name, self.item_template, self.item_title_template)


def load_unisrec(folder: Path, name: str, item_template: str | None = "{text}", item_title_template: str | None = None) -> Dataset:
    """Read UniSRec's files for ``name`` in ``folder`` into a :class:`Dataset` whose interactions are each user's
    sequence in order (users in index order)."""
    paths = {part: folder / f"{name}.{part}.inter" for part in PARTS}
    paths |= {kind: folder / f"{name}.{kind}" for kind in ("text", "item2index", "user2index")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"Data file not found: {path}. Set dataset.path to the folder holding UniSRec's {name}.* files, "
                            f"and dataset.name to their stem.")
    users = _index_file(paths["user2index"])
    items = _index_file(paths["item2index"])
    rows = {part: _samples(paths[part], len(users), len(items)) for part in PARTS}
    sequences = rebuild_sequences(rows, len(users), paths)
    user = np.repeat(np.arange(len(users)), [len(s) for s in sequences])
    inter = pd.DataFrame({"user": user, "item": np.concatenate(sequences) if sequences else np.zeros(0, np.int64),
                          "rating": np.nan, "timestamp": np.nan}, columns=list(INTER_COLUMNS))
    text = read_atomic_file(paths["text"])
    if "item_id" not in text.columns:
        raise DataError(f"{paths['text']}: no 'item_id' column; columns are {list(text.columns)}.")
    features = text.drop_duplicates("item_id").set_index("item_id").reindex(items).reset_index(names="item_id")
    return Dataset(
        name=name,
        inter=inter,
        user_tokens=users,
        item_tokens=items,
        item_features=features,
        item_text=render_texts(item_template, features, "item") if item_template else None,
        item_title=render_texts(item_title_template, features, "item") if item_title_template else None,
        content_hash=_content_hash(paths.values(), item_template, item_title_template),
        info={"format": "unisrec", "interactions": len(inter), "samples": {part: len(r[0]) for part, r in rows.items()},
              "items_without_text": int(features.drop(columns="item_id").isna().all(axis=1).sum())},
    )


def rebuild_sequences(rows: dict[str, tuple], n_users: int, paths: dict[str, Path]) -> list[np.ndarray]:
    """Each user's sequence: their training sequence (from the train rows, longest prefix listed first), then the
    valid and the test target. A DataError names the first row whose history does not match what came before it."""
    (train_users, train_hist, train_target), (valid_users, valid_hist, valid_target), (test_users, test_hist, test_target) = (
        rows[part] for part in PARTS)
    for part, part_users in (("valid", valid_users), ("test", test_users)):
        counts = np.bincount(part_users, minlength=n_users)
        if (counts != 1).any():
            user = int(np.flatnonzero(counts != 1)[0])
            raise DataError(f"{paths[part]}: user index {user} has {counts[user]} rows; UniSRec's {part} file holds one "
                            "per user. Check that the files are one release of one dataset.")
    cap = max(len(h) for hist in (train_hist, valid_hist, test_hist) for h in hist)  # the release's history length (50)
    sequences: list[list[int]] = [[] for _ in range(n_users)]
    order = np.argsort(train_users, kind="stable")
    for position in order[::-1]:  # each user's rows from the shortest prefix to the longest
        _extend(sequences[train_users[position]], train_hist[position], train_target[position], cap, paths["train"],
                position)
    for part, part_users, hist, target in (("valid", valid_users, valid_hist, valid_target),
                                           ("test", test_users, test_hist, test_target)):
        for position in np.argsort(part_users, kind="stable"):
            _extend(sequences[part_users[position]], hist[position], target[position], cap, paths[part], position)
    return [np.asarray(s, dtype=np.int64) for s in sequences]


def _extend(sequence: list[int], history: list[int], target: int, cap: int, path: Path, position: int) -> None:
    """Append ``target`` to ``sequence`` after checking that ``history`` is its last ``cap`` items (a user's first
    row starts it)."""
    if not sequence:
        sequence.extend(history)
    elif history != sequence[-cap:]:
        raise DataError(
            f"{path}: line {position + 2}: the history does not match the items before its target in the user's sequence "
            "(rebuilt from the train rows, then valid, then test); the files are not one consistent UniSRec release."
        )
    sequence.append(target)


def _samples(path: Path, n_users: int, n_items: int) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """(users [R], histories, targets [R]) of one inter file, as indices checked against the index files."""
    frame = read_atomic_file(path)
    for column in ("user_id", "item_id_list", "item_id"):
        if column not in frame.columns:
            raise DataError(f"{path}: no {column!r} column; UniSRec's inter files have user_id, item_id_list and item_id.")
    try:
        users = frame["user_id"].astype(np.int64).to_numpy()
        targets = frame["item_id"].astype(np.int64).to_numpy()
        histories = [[int(i) for i in h.split()] for h in frame["item_id_list"]]
    except ValueError as err:
        raise DataError(f"{path}: {err}; UniSRec's inter files hold integer indices.") from None
    for what, values, size in (("user", users, n_users), ("item", targets, n_items),
                               ("item", np.fromiter((i for h in histories for i in h), np.int64), n_items)):
        if len(values) and (values.min() < 0 or values.max() >= size):
            raise DataError(f"{path}: {what} index {int(values.max() if values.max() >= size else values.min())} is not "
                            f"in {what}2index ({size} {what}s); the files are not one release of one dataset.")
    if any(not h for h in histories):
        raise DataError(f"{path}: a row has an empty history; UniSRec's samples have at least one history item.")
    return users, histories, targets


def _index_file(path: Path) -> np.ndarray:
    """The raw ids of ``NAME.user2index`` / ``NAME.item2index`` (lines ``raw<TAB>index``), in index order."""
    frame = pd.read_csv(path, sep="\t", header=None, names=["token", "index"], dtype={"token": str}, keep_default_na=False)
    index = pd.to_numeric(frame["index"], errors="coerce")
    if index.isna().any() or sorted(index.astype(int)) != list(range(len(frame))):
        raise DataError(f"{path}: expected lines 'raw_id<TAB>index' with indices 0..{len(frame) - 1}, each once.")
    return frame["token"].to_numpy(dtype=object)[np.argsort(index.to_numpy(int))]


def _content_hash(paths, *settings: str | None) -> str:
    digest = hashlib.sha256(repr(settings).encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()
