"""Load RecBole atomic files (``NAME.inter``, optional ``NAME.item`` / ``NAME.user``).

Each file is tab-separated UTF-8 (a leading byte-order mark is ignored); its header names every
column as ``field:type`` with type one of ``token``, ``token_seq``, ``float``, ``float_seq``.

Which interactions become positives: repeated (user, item) pairs are resolved first
(``duplicates``: ``latest`` keeps the most recent by timestamp, then file order; ``first`` the
earliest; ``keep`` keeps all), then with ``positive_threshold`` only interactions rated at least that
are kept (RecBole's ``threshold`` labels them 1; recexp ranks only those). ``Dataset.info`` counts
what was read and dropped.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from recexp.data.text import render_texts
from recexp.errors import ConfigError, DataError, check_number
from recexp.interfaces import INTER_COLUMNS, Dataset

log = logging.getLogger(__name__)
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
DUPLICATE_RULES = ("latest", "first", "keep")


def ml100k_dir() -> Path:
    """The MovieLens-100K atomic files shipped inside the installed ``recbole`` package."""
    return Path(str(resources.files("recbole"))) / "dataset_example" / "ml-100k"


def read_atomic_file(path: Path) -> pd.DataFrame:
    """One atomic file as a frame of strings, columns named by field; float columns become floats."""
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check dataset.path and dataset.name.")
    lines = _decode(path, path.read_bytes()).splitlines()
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


def read_table(source: Path | bytes, tokens: list[str], **options) -> pd.DataFrame:
    """A CSV or TSV that recexp wrote, its ``tokens`` columns read verbatim as text: by pandas' rules an id
    such as ``NA``, ``null``, ``None`` or ``nan`` would become NaN. In other columns an empty cell is NaN."""
    reader = (lambda: io.BytesIO(source)) if isinstance(source, bytes) else (lambda: source)
    columns = pd.read_csv(reader(), nrows=0, **options).columns
    missing = {c: ["", "nan", "NaN"] for c in columns if c not in tokens}
    return pd.read_csv(reader(), dtype={c: str for c in tokens if c in columns}, keep_default_na=False,
                       na_values=missing, **options)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text without a leading byte-order mark; a clear error naming the line of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: byte 0x{data[err.start]:02x} is not UTF-8; re-save the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}."
        ) from err


def inter_file(folder: Path, name: str) -> Path:
    """``folder/NAME.inter``, or ``folder/NAME/NAME.inter`` (RecBole's ``data_path`` layout)."""
    flat, nested = folder / f"{name}.inter", folder / name / f"{name}.inter"
    for path in (flat, nested):
        if path.is_file():
            return path
    raise DataError(
        f"Data file not found: {flat} (nor {nested}). Set dataset.path to the folder holding {name}.inter, "
        f"or to RecBole's data_path holding {name}/{name}.inter; dataset.name is the file stem."
    )


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
    item_title_template: str | None = None  # a short name per item, e.g. "{movie_title} ({release_year})"
    user_template: str | None = None  # e.g. "A {age}-year-old {occupation}"
    positive_threshold: float | None = None  # keep interactions rated >= this; None: every one is a positive
    duplicates: str = "latest"  # repeated (user, item) pairs: latest | first | keep

    def load(self) -> Dataset:
        folder = Path(self.path).expanduser() if self.path else ml100k_dir()
        return load_atomic(folder, self.name, **{k: getattr(self, k) for k in _LOAD_KEYS})


_LOAD_KEYS = ("user_field", "item_field", "rating_field", "time_field", "item_template", "item_title_template", "user_template",
              "positive_threshold", "duplicates")


def load_atomic(
    folder: Path,
    name: str,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    time_field: str | None = "timestamp",
    item_template: str | None = None,
    item_title_template: str | None = None,
    user_template: str | None = None,
    positive_threshold: float | None = None,
    duplicates: str = "latest",
) -> Dataset:
    """Read ``folder/name.{inter,item,user}`` (or ``folder/name/name.*``) into a :class:`Dataset`
    with contiguous internal ids, keeping the positives the module docstring describes."""
    if not folder.is_dir():
        raise DataError(f"Dataset folder not found: {folder}. Set dataset.path to a folder holding {name}.inter.")
    inter_path = inter_file(folder, name)
    folder = inter_path.parent
    raw = read_atomic_file(inter_path)
    pair = (user_field, item_field)
    for needed in pair:
        if needed not in raw.columns:
            raise DataError(f"{inter_path}: no {needed!r} column; columns are {list(raw.columns)}.")
    raw, info = positives(raw, inter_path, pair, rating_field, time_field, positive_threshold, duplicates)
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
        item_title=render_texts(item_title_template, item_features, "item") if item_title_template else None,
        user_text=render_texts(user_template, user_features, "user") if user_template else None,
        content_hash=_content_hash(inter_path, (user_tokens, item_tokens), user_field, item_field, rating_field, time_field,
                                   *_rules_applied(info)),
        info=info,
    )


def positives(
    raw: pd.DataFrame,
    path: Path,
    pair: tuple[str, str],
    rating_field: str | None,
    time_field: str | None,
    threshold: float | None,
    duplicates: str,
) -> tuple[pd.DataFrame, dict]:
    """The interactions kept as positives (duplicates resolved, then the threshold) and the counts."""
    deduped, n_duplicates = resolve_duplicates(raw, pair, time_field, duplicates)
    kept = deduped if threshold is None else deduped[_rated_at_least(deduped, path, rating_field, threshold)]
    if threshold is not None and len(kept) == 0:
        raise DataError(f"{path}: no interaction is rated >= {threshold}; lower dataset.positive_threshold.")
    info = {
        "interactions_read": len(raw),
        "duplicates": duplicates,
        "duplicates_dropped": len(raw) - len(deduped),
        "positive_threshold": threshold,
        "below_threshold_dropped": len(deduped) - len(kept),
        "positives": "every interaction" if threshold is None else f"{rating_field} >= {threshold}",
        "interactions": len(kept),
    }
    if n_duplicates:
        action = "kept them all" if duplicates == "keep" else f"kept the {duplicates} of each pair"
        log.warning("%s: %d interactions repeat a (user, item) pair; %s (dataset.duplicates=%s), dropped %d.",
                    path, n_duplicates, action, duplicates, info["duplicates_dropped"])
    if threshold is not None:
        log.info("%s: %d of %d interactions have %s and are the positives; dropped %d below it.",
                 path, len(kept), len(deduped), info["positives"], info["below_threshold_dropped"])
    return kept.reset_index(drop=True), info


def resolve_duplicates(
    raw: pd.DataFrame, pair: tuple[str, str], time_field: str | None, rule: str
) -> tuple[pd.DataFrame, int]:
    """(``raw`` with one row per (user, item) pair by ``rule``, in file order; rows that repeat a pair)."""
    if rule not in DUPLICATE_RULES:
        raise ConfigError(f"dataset.duplicates={rule!r} is unknown; choose one of {', '.join(DUPLICATE_RULES)}.")
    repeats = int(raw.duplicated(list(pair)).sum())
    if rule == "keep" or not repeats:
        return raw, repeats
    time = pd.to_numeric(raw[time_field], errors="coerce") if time_field in raw.columns else pd.Series(0.0, raw.index)
    by_time = raw.assign(_time=time.fillna(-np.inf)).sort_values("_time", kind="stable")  # ties: file order
    dropped = by_time.duplicated(list(pair), keep="last" if rule == "latest" else "first")
    return raw[~dropped.reindex(raw.index).to_numpy()], repeats


def _rated_at_least(frame: pd.DataFrame, path: Path, rating_field: str | None, threshold: float) -> np.ndarray:
    check_number("dataset.positive_threshold", threshold, rule="a number (a rating) or null")
    if not rating_field or rating_field not in frame.columns:
        raise ConfigError(
            f"dataset.positive_threshold={threshold} needs ratings, but {path} has no {rating_field!r} column; "
            "set dataset.rating_field to its rating column, or positive_threshold=null."
        )
    rating = pd.to_numeric(frame[rating_field], errors="coerce").to_numpy(dtype="float64")
    if np.isnan(rating).any():
        raise DataError(
            f"{path}: {int(np.isnan(rating).sum())} interactions have no numeric {rating_field!r}, so "
            f"dataset.positive_threshold={threshold} cannot judge them; fill them in or set positive_threshold=null."
        )
    return rating >= threshold


def _rules_applied(info: dict) -> tuple:
    """The rules that changed the interactions, for the content hash (unchanged data keeps its hash)."""
    changed = info["duplicates_dropped"] or info["below_threshold_dropped"]
    return (info["duplicates"], info["positive_threshold"]) if changed else ()


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


def _content_hash(inter_path: Path, catalogues: tuple[np.ndarray, np.ndarray], *fields: str | None) -> str:
    """sha256 of the interactions, the settings that read them and the ordered user and item tokens: a
    ``.item`` or ``.user`` file that adds, drops or reorders ids changes every internal id and candidate set."""
    digest = hashlib.sha256(inter_path.read_bytes())
    digest.update(repr(fields).encode())
    for tokens in catalogues:
        digest.update("\n".join(map(str, tokens)).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
