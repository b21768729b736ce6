"""Read a category of the Amazon Reviews 2023 benchmark (McAuley Lab): its ``last_out`` split and item metadata.

The files, as the Hugging Face dataset ``McAuley-Lab/Amazon-Reviews-2023`` holds them (and the loading
script and benchmark scripts of github.com/hyp1231/AmazonReviews2023 describe them):

- ``benchmark/{K}core/last_out/{Category}.{train,valid,test}.csv``: header ``user_id,parent_asin,rating,timestamp``,
  ratings 1.0-5.0, timestamps in unix milliseconds. Each user's latest review is in test, the second latest
  in valid, the rest in train. Extra columns (the ``history`` of the ``last_out_w_his`` variant) are ignored.
- ``raw/meta_categories/meta_{Category}.jsonl``: one JSON object per item; :data:`META_FIELDS` are read
  (lists of strings are joined with spaces; a missing field is an empty string), the rest ignored.

Interactions are the train, then valid, then test rows, so a stable sort by time keeps each user's valid
second-to-last and test last even on equal timestamps; timestamps become unix seconds. Users are numbered
by first appearance; items are the parent_asins interacted with, in metadata order, then those the
metadata lacks, by first appearance.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recexp.data.atomic import read_table
from recexp.data.download import fetch, file_sha256
from recexp.errors import ConfigError, DataError
from recexp.interfaces import INTER_COLUMNS, Dataset

BASE_URL = "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main"
# the 34 categories of the loading script Amazon-Reviews-2023.py; 5-core benchmark files exist for all but NO_5CORE
CATEGORIES = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry",
    "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Handmade_Products", "Health_and_Household",
    "Health_and_Personal_Care", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games", "Unknown", "Video_Games",
)
NO_5CORE = frozenset({"Amazon_Fashion", "Appliances", "Digital_Music", "Handmade_Products", "Health_and_Personal_Care",
                      "Subscription_Boxes"})
KCORES = (5, 0)
PARTS = ("train", "valid", "test")
COLUMNS = ("user_id", "parent_asin", "rating", "timestamp")
META_FIELDS = ("title", "main_category", "store", "features", "description", "categories")
ITEM_TEMPLATE = "{title}. {features}. {categories}. {store}"
CLOSERS = ")]}\"'”’»"  # in a template, closing brackets and quotes belong to the field before them
OPENERS = "([{\"'“‘«"  # and opening ones to the field after
_ASIN = re.compile(r'"parent_asin"\s*:\s*"([^"\\]*)"')


def remote_files(category: str, kcore: int) -> dict[str, str]:
    """Part (train, valid, test, meta) -> the file's path in the dataset repository; refuses unknown names."""
    if category not in CATEGORIES:
        raise ConfigError(f"dataset.category={category!r} is not an Amazon Reviews 2023 category; choose one of "
                          f"{', '.join(CATEGORIES)}.")
    if kcore not in KCORES:
        raise ConfigError(f"dataset.kcore={kcore!r} is not allowed: the benchmark has 5-core and 0-core files (5 or 0).")
    if kcore == 5 and category in NO_5CORE:
        raise ConfigError(f"dataset.category={category} has no 5-core benchmark files; set dataset.kcore=0, or pick a "
                          f"category other than {', '.join(sorted(NO_5CORE))}.")
    split = f"benchmark/{kcore}core/last_out/{category}"
    return {**{part: f"{split}.{part}.csv" for part in PARTS}, "meta": f"raw/meta_categories/meta_{category}.jsonl"}


@dataclass(frozen=True)
class Amazon2023Dataset:
    """Config-facing loader: ``dataset=amazon2023 dataset.category=All_Beauty`` (downloads once into ``cache_dir``)."""

    category: str = "All_Beauty"
    path: str | None = None  # folder holding the four files; None: download them into cache_dir (once)
    cache_dir: str = "outputs/cache/downloads"
    kcore: int = 5  # 5: the 5-core benchmark; 0: every deduplicated review
    item_template: str | None = ITEM_TEMPLATE  # over META_FIELDS (and parent_asin)
    item_title_template: str | None = "{title}"
    checksums: Mapping[str, str] | None = None  # file name -> the sha256 it must have
    base_url: str = BASE_URL  # the dataset repository's files, e.g. a mirror
    progress: bool = True  # download progress bars

    def load(self) -> Dataset:
        remote = remote_files(self.category, self.kcore)
        names = {part: Path(rel).name for part, rel in remote.items()}
        pinned = _pinned(self.checksums, set(names.values()))
        for key in ("item_template", "item_title_template"):
            _check_template(key, getattr(self, key))
        if self.path is not None:
            paths = {part: Path(self.path).expanduser() / name for part, name in names.items()}
            digests = {part: _local_sha256(path, pinned.get(path.name)) for part, path in paths.items()}
        else:
            root = Path(self.cache_dir).expanduser() / "amazon2023"
            paths = {part: root / rel for part, rel in remote.items()}
            digests = {part: fetch(f"{self.base_url.rstrip('/')}/{remote[part]}", paths[part], pinned.get(names[part]),
                                   self.progress) for part in remote}
        return read_benchmark(self.category, self.kcore, paths, digests, self.item_template, self.item_title_template)


def read_benchmark(category: str, kcore: int, paths: dict[str, Path], digests: dict[str, str],
                   item_template: str | None, item_title_template: str | None) -> Dataset:
    """A :class:`Dataset` from the ``train``/``valid``/``test`` CSVs and ``meta`` JSON lines at ``paths``, whose
    sha256s are ``digests``, ordered as the module docstring says."""
    parts = [read_part(paths[part]) for part in PARTS]
    raw = pd.concat(parts, ignore_index=True)
    user_tokens = pd.unique(raw["user_id"]).astype(object)
    interacted = pd.unique(raw["parent_asin"])
    meta, meta_lines = read_meta(paths["meta"], set(interacted))
    item_tokens = np.asarray([*meta, *(a for a in interacted if a not in meta)], dtype=object)
    inter = pd.DataFrame({
        "user": pd.Index(user_tokens).get_indexer(raw["user_id"]),
        "item": pd.Index(item_tokens).get_indexer(raw["parent_asin"]),
        "rating": raw["rating"].to_numpy(dtype="float64"),
        "timestamp": raw["timestamp"].to_numpy(dtype="float64") / 1000.0,  # milliseconds -> seconds
    }, columns=list(INTER_COLUMNS))
    empty = dict.fromkeys(META_FIELDS, "")
    rows = [{"parent_asin": asin, **meta.get(asin, empty)} for asin in item_tokens]
    info = {
        "category": category, "kcore": kcore, "split": "last_out",
        "files": {paths[part].name: {"path": str(paths[part]), "sha256": digests[part]} for part in paths},
        **{part: len(frame) for part, frame in zip(PARTS, parts)},
        "interactions_read": len(raw), "interactions": len(raw), "positives": "every interaction",
        "users": len(user_tokens), "items": len(item_tokens), "items_without_meta": len(item_tokens) - len(meta),
        "meta_lines_read": meta_lines,
    }
    return Dataset(
        name=f"amazon2023-{category}-{kcore}core",
        inter=inter,
        user_tokens=user_tokens,
        item_tokens=item_tokens,
        item_features=pd.DataFrame(rows, columns=["parent_asin", *META_FIELDS]),
        item_text=render(item_template, rows) if item_template else None,
        item_title=render(item_title_template, rows) if item_title_template else None,
        content_hash=_content_hash(category, kcore, digests, (user_tokens, item_tokens)),
        info=info,
    )


def read_part(path: Path) -> pd.DataFrame:
    """One benchmark CSV as columns :data:`COLUMNS` (ids verbatim as text, rating and timestamp as numbers)."""
    try:
        frame = read_table(path, tokens=["user_id", "parent_asin"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).strip().splitlines()[0]}); expected the header "
                        f"{','.join(COLUMNS)}.") from None
    for column in COLUMNS:
        if column not in frame.columns:
            raise DataError(f"{path}: no {column!r} column; the header is {','.join(map(str, frame.columns))}, "
                            f"expected {','.join(COLUMNS)}.")
    for column in ("rating", "timestamp"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{path}: line {row + 2}: {column} {frame[column].iloc[row]!r} is not a number.")
        frame[column] = values
    return frame[list(COLUMNS)]


def read_meta(path: Path, wanted: set[str]) -> tuple[dict[str, dict[str, str]], int]:
    """({parent_asin: {field: text}} for the ``wanted`` items the file describes, in file order, first line of
    each; the number of lines read). Lines of other items are not parsed."""
    items: dict[str, dict[str, str]] = {}
    number = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            listed = _ASIN.findall(line)
            if not line.strip() or (listed and not wanted.intersection(listed)):
                continue
            record = _json_line(path, number, line)
            asin = record.get("parent_asin")
            if asin in wanted and asin not in items:
                items[asin] = {field: _text(record.get(field)) for field in META_FIELDS}
    return items, number


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {number}: not valid JSON ({err.msg}, column {err.colno}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("parent_asin"), str):
        raise DataError(f"{path}: line {number}: no 'parent_asin' field; each line must be one item's JSON object.")
    return record


def _text(value: object) -> str:
    """A metadata value as one line of text: lists joined with spaces, None as empty, runs of whitespace as one."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(t for t in map(_text, value) if t)
    return " ".join(str(value).split())


def render(template: str, rows: list[dict[str, str]]) -> list[str]:
    """``template`` filled in for each row, where a field that renders empty takes its own brackets and the
    separator before it along: ``"{title}. {features}. {store}"`` gives ``"T. S"`` for an item without
    features (not ``"T. . S"``), and ``"{title} ({store}): {description}"`` gives ``"T (S)"`` without a
    description and ``"T: D"`` without a store. In the text between two fields, closing brackets and quotes
    at its start belong to the field before, opening ones at its end to the field after."""
    formatter = string.Formatter()
    pieces = list(formatter.parse(template))
    texts = []
    for row in rows:
        text, rendered = "", False  # rendered: the field before this piece's text was not empty
        for i, (literal, name, spec, conversion) in enumerate(pieces):
            closing = literal[: len(literal) - len(literal.lstrip(CLOSERS))] if i else ""
            text += closing if rendered else ""
            rest = literal[len(closing):]
            if name is None:  # the text after the last field
                text += rest if text or i == 0 else ""
                break
            value = formatter.format_field(formatter.convert_field(row[name], conversion), spec or "")
            if value:
                between = rest.rstrip(OPENERS)
                text += (between if text or i == 0 else "") + rest[len(between):] + value
            rendered = bool(value)
        texts.append(text.strip())
    return texts


def _check_template(key: str, template: str | None) -> None:
    fields = ("parent_asin", *META_FIELDS)
    for _, name, _, _ in string.Formatter().parse(template or ""):
        if name is not None and name not in fields:
            raise ConfigError(f"dataset.{key} names field {name!r}; the Amazon metadata fields are {', '.join(fields)}.")


def _pinned(checksums: Mapping[str, str] | None, names: set[str]) -> dict[str, str]:
    """``dataset.checksums`` checked: keys among this category's file names, values sha256 hex digests. Keys
    nested at their dots (``+dataset.checksums.All_Beauty.train.csv=HEX`` on the command line) are joined."""
    pinned = {}
    for name, digest in _flat(checksums or {}):
        if name not in names:
            raise ConfigError(f"dataset.checksums names {name!r}, which is not one of this dataset's files "
                              f"({', '.join(sorted(names))}).")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ConfigError(f"dataset.checksums.{name}={digest!r} is not a sha256 (64 hex digits).")
        pinned[name] = digest.lower()
    return pinned


def _flat(mapping: Mapping, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _local_sha256(path: Path, expected: str | None) -> str:
    """sha256 of a file in ``dataset.path``, checked against ``dataset.checksums`` where pinned."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; set dataset.path to a folder holding {path.name} and the other "
                        "benchmark files, or dataset.path=null to download them.")
    digest = file_sha256(path)
    if expected is not None and digest != expected:
        raise DataError(f"{path}: sha256 {digest} does not match dataset.checksums ({expected}); replace the file "
                        "or correct the checksum.")
    return digest


def _content_hash(category: str, kcore: int, digests: dict[str, str], catalogues: tuple[np.ndarray, np.ndarray]) -> str:
    """sha256 over the files' sha256s, the settings that read them and the ordered user and item tokens."""
    digest = hashlib.sha256(repr(("amazon2023", category, kcore, sorted(digests.items()))).encode())
    for tokens in catalogues:
        digest.update("\n".join(map(str, tokens)).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
