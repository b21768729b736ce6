"""Load RecBole atomic files (``NAME.inter``, optional ``NAME.item`` / ``NAME.user``).

Each file is tab-separated; its header names every column as ``field:type`` with type one of
``token``, ``token_seq``, ``float``, ``float_seq``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from recexp.data.text import render_texts
from recexp.errors import DataError
from recexp.interfaces import INTER_COLUMNS, Dataset

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def ml100k_dir() -> Path:
    """The MovieLens-100K atomic files shipped inside the installed ``recbole`` package."""
    return Path(str(resources.files("recbole"))) / "dataset_example" / "ml-100k"


def read_atomic_file(path: Path) -> pd.DataFrame:
    """One atomic file as a frame of strings, columns named by field; float columns become floats."""
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check dataset.path and dataset.name.")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise DataError(f"{path}: line 1: the file is empty; expected a header of field:type columns.")
    names, types = _parse_header(path, lines[0])
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise DataError(
                f"{path}: line {number}: expected {len(names)} tab-separated fields "
                f"({', '.join(names)}), found {len(row)}."
            )
    frame = pd.DataFrame(rows, columns=names, dtype=str)
    for name, kind in zip(names, types):
        if kind == "float":
            frame[name] = _to_float(path, name, frame[name])
    return frame


def _parse_header(path: Path, header: str) -> tuple[list[str], list[str]]:
    names, types = [], []
    for column in header.split("\t"):
        name, sep, kind = column.partition(":")
        if not sep or kind not in FIELD_TYPES or not name:
            raise DataError(
                f"{path}: line 1: header column {column!r} is not 'field:type' "
                f"with type in {', '.join(FIELD_TYPES)}."
            )
        names.append(name)
        types.append(kind)
    return names, types


def _to_float(path: Path, name: str, column: pd.Series) -> pd.Series:
    values = pd.to_numeric(column.replace("", np.nan), errors="coerce")
    bad = values.isna() & column.ne("")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}: field {name!r} is declared float but holds {column.iloc[row]!r}."
        )
    return values.astype("float64")


@dataclass(frozen=True)
class AtomicDataset:
    """Config-facing loader: ``dataset=ml100k`` or ``dataset=atomic dataset.path=DIR dataset.name=NAME``."""

    name: str
    path: str | None = None  # folder holding NAME.inter; None means recbole's shipped ml-100k
    user_field: str = "user_id"
    item_field: str = "item_id"
    rating_field: str | None = "rating"
    time_field: str | None = "timestamp"
    item_template: str | None = None  # e.g. "{movie_title} ({release_year}). Genres: {class}"
    user_template: str | None = None  # e.g. "A {age}-year-old {occupation}"

    def load(self) -> Dataset:
        folder = Path(self.path).expanduser() if self.path else ml100k_dir()
        return load_atomic(folder, self.name, **{k: getattr(self, k) for k in _LOAD_KEYS})


_LOAD_KEYS = ("user_field", "item_field", "rating_field", "time_field", "item_template", "user_template")


def load_atomic(
    folder: Path,
    name: str,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    time_field: str | None = "timestamp",
    item_template: str | None = None,
    user_template: str | None = None,
) -> Dataset:
    """Read ``folder/name.{inter,item,user}`` into a :class:`Dataset` with contiguous internal ids."""
    if not folder.is_dir():
        raise DataError(f"Dataset folder not found: {folder}. Set dataset.path to a folder holding {name}.inter.")
    inter_path = folder / f"{name}.inter"
    raw = read_atomic_file(inter_path)
    for needed in (user_field, item_field):
        if needed not in raw.columns:
            raise DataError(f"{inter_path}: no {needed!r} column; columns are {list(raw.columns)}.")
    item_feat = _optional(folder / f"{name}.item", item_field)
    user_feat = _optional(folder / f"{name}.user", user_field)
    item_tokens = _tokens(item_feat, item_field, raw[item_field])
    user_tokens = _tokens(user_feat, user_field, raw[user_field])
    inter = pd.DataFrame(
        {
            "user": _index(user_tokens, raw[user_field]),
            "item": _index(item_tokens, raw[item_field]),
            "rating": _optional_float(raw, rating_field),
            "timestamp": _optional_float(raw, time_field),
        },
        columns=list(INTER_COLUMNS),
    )
    item_features = _aligned(item_feat, item_field, item_tokens)
    user_features = _aligned(user_feat, user_field, user_tokens)
    return Dataset(
        name=name,
        inter=inter,
        user_tokens=user_tokens,
        item_tokens=item_tokens,
        item_features=item_features,
        user_features=user_features,
        item_text=render_texts(item_template, item_features, "item") if item_template else None,
        user_text=render_texts(user_template, user_features, "user") if user_template else None,
        content_hash=_content_hash(inter_path, user_field, item_field, rating_field, time_field),
    )


def _optional(path: Path, id_field: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = read_atomic_file(path)
    if id_field not in frame.columns:
        raise DataError(f"{path}: no {id_field!r} column; columns are {list(frame.columns)}.")
    return frame.drop_duplicates(subset=id_field, keep="first")


def _tokens(features: pd.DataFrame | None, id_field: str, interacted: pd.Series) -> np.ndarray:
    """Every id token, feature-file order first, then ids seen only in interactions."""
    listed = [] if features is None else list(features[id_field])
    seen = set(listed)
    extra = [t for t in pd.unique(interacted) if t not in seen]
    return np.asarray(listed + extra, dtype=object)


def _index(tokens: np.ndarray, values: pd.Series) -> np.ndarray:
    lookup = {t: i for i, t in enumerate(tokens)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def _optional_float(raw: pd.DataFrame, field: str | None) -> np.ndarray:
    if field and field in raw.columns:
        return raw[field].to_numpy(dtype="float64")
    return np.full(len(raw), np.nan)


def _aligned(features: pd.DataFrame | None, id_field: str, tokens: np.ndarray) -> pd.DataFrame | None:
    if features is None:
        return None
    aligned = features.set_index(id_field).reindex(tokens)
    return aligned.reset_index(names=id_field)


def _content_hash(inter_path: Path, *fields: str | None) -> str:
    digest = hashlib.sha256(inter_path.read_bytes())
    digest.update(repr(fields).encode())
    return digest.hexdigest()
