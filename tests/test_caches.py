"""Verified caches: a damaged split artifact or embedding file is detected, named, and rebuilt equal."""
from __future__ import annotations

import json
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from recexp.cache import DamagedCache, sha256
from recexp.models.text.encoder import TextEncoder, read_embeddings
from recexp.scenarios import ColdItemScenario, build_or_load
from recexp.scenarios.artifact import load_split
from recexp.strategies import Frozen


def assert_same_parts(split, original) -> None:
    assert list(split.parts) == list(original.parts)
    for name, frame in original.parts.items():
        got, want = split.parts[name].reset_index(drop=True), frame.reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


def truncate_mid_line(path: Path) -> None:
    data = path.read_bytes()
    cut = len(data) // 2
    while data[cut - 1 : cut] == b"\n":
        cut -= 1
    path.write_bytes(data[:cut])


def overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def edit_json(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["stages"]["test"]["segments"]["cold"] = meta["stages"]["test"]["segments"]["cold"][:-1]
    path.write_text(json.dumps(meta))


def drop_checksum(path: Path) -> None:
    meta = json.loads(path.read_text())
    del meta["checksum"]
    path.write_text(json.dumps(meta))


def older_format(path: Path) -> None:
    """split.json as format 1 wrote it: no format, histories or blocks, and a checksum that matches."""
    meta = json.loads(path.read_text())
    for key in ("checksum", "format", "histories", "blocks"):
        del meta[key]
    path.write_text(json.dumps({**meta, "checksum": sha256(json.dumps(meta, sort_keys=True).encode())}))


SPLIT_DAMAGE = [
    ("train.inter", truncate_mid_line),
    ("test.inter", overwrite_middle),
    ("valid.inter", empty),
    ("valid.inter", Path.unlink),
    ("split.json", empty),
    ("split.json", edit_json),
    ("split.json", drop_checksum),  # an artifact written before checksums existed
    ("split.json", older_format),  # an artifact written before splits named their histories and blocks
]


@pytest.fixture(scope="module")
def pristine(ml100k, tmp_path_factory):
    """A cold_item artifact of ml-100k, built once; tests damage copies of it."""
    cache = tmp_path_factory.mktemp("pristine")
    return build_or_load(ml100k, ColdItemScenario(), 5, cache), cache


@pytest.mark.parametrize("name, damage", SPLIT_DAMAGE, ids=lambda v: getattr(v, "__name__", v))
def test_damaged_split_artifact_is_named_and_rebuilt_equal(name, damage, pristine, ml100k, tmp_path, caplog):
    original, source = pristine
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    folder = tmp_path / "splits" / original.path.name
    damage(folder / name)
    with pytest.raises(DamagedCache, match=str(folder / name)):
        load_split(folder, ml100k)
    with caplog.at_level(logging.INFO, logger="recexp"):
        rebuilt = build_or_load(ml100k, ColdItemScenario(), 5, tmp_path)
    assert str(folder / name) in caplog.text and "rebuilding" in caplog.text
    levels = {r.levelname for r in caplog.records if "rebuilding" in r.getMessage()}
    assert levels == ({"INFO"} if damage is older_format else {"WARNING"})  # an older format is no damage
    assert rebuilt.hash == original.hash and rebuilt.counts() == original.counts()
    assert_same_parts(rebuilt, original)
    reread = load_split(folder, ml100k)  # the rebuilt artifact on disk verifies and matches
    assert_same_parts(reread, original)
    assert (reread.stage("test").segments["cold"] == original.stage("test").segments["cold"]).all()
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [folder.name]  # nothing left aside


def test_concurrent_repairs_of_one_artifact_agree(pristine, ml100k, tmp_path):
    """Several loaders meet the same damaged artifact at once: each gets the original split, one folder stays."""
    original, source = pristine
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    truncate_mid_line(tmp_path / "splits" / original.path.name / "train.inter")
    start = threading.Barrier(3)

    def load(_):
        start.wait()
        return build_or_load(ml100k, ColdItemScenario(), 5, tmp_path)

    with ThreadPoolExecutor(3) as pool:
        for split in pool.map(load, range(3)):
            assert_same_parts(split, original)
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [original.path.name]
    assert_same_parts(load_split(tmp_path / "splits" / original.path.name, ml100k), original)


EMBEDDING_DAMAGE = [truncate_mid_line, overwrite_middle, empty]


@pytest.mark.parametrize("damage", EMBEDDING_DAMAGE, ids=lambda f: f.__name__)
def test_damaged_embedding_file_is_named_and_recomputed_equal(damage, tiny_bert, ml100k, tmp_path, caplog):
    texts = ml100k.item_text[:40]
    original = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen()).embed(texts)
    (path,) = tmp_path.glob("*.safetensors")
    damage(path)
    with pytest.raises(DamagedCache, match=str(path)):
        read_embeddings(path, tuple(original.shape))
    encoder = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen())
    with caplog.at_level(logging.WARNING, logger="recexp"):
        again = encoder.embed(texts)
    assert str(path) in caplog.text and "recomputing" in caplog.text
    assert encoder.cache_stats() == {"cache_hits": 0, "cache_misses": 1}
    assert torch.equal(again, original)
    assert torch.equal(read_embeddings(path, tuple(original.shape)), original)  # rewritten, verified


def test_cache_entries_are_as_readable_as_any_new_file(tiny_bert, ml100k, tmp_path):
    """A shared cache_dir: entries get the umask's permissions, not the owner-only ones of a temporary file."""
    import os

    old = os.umask(0o022)
    try:
        build_or_load(ml100k, ColdItemScenario(), 5, tmp_path)
        TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen()).embed(ml100k.item_text[:10])
    finally:
        os.umask(old)
    entries = [p for p in tmp_path.rglob("*") if "splits" in p.parts or p.suffix == ".safetensors"]
    assert any(p.suffix == ".safetensors" for p in entries) and any(p.name == "split.json" for p in entries)
    for path in entries:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_a_tokenizer_that_normalises_otherwise_gets_its_own_embeddings(tiny_bert, ml100k, tmp_path):
    """Same vocabulary and weights, but text no longer lower-cased: the cached embeddings do not apply."""
    from tokenizers import normalizers

    texts = ml100k.item_text[:10]
    TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen()).embed(texts)
    cased = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path))
    cased.tokenizer.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    cased.adapt(Frozen()).embed(texts)
    assert cased.cache_stats() == {"cache_hits": 0, "cache_misses": 1} and len(list(tmp_path.glob("*.safetensors"))) == 2
    again = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen())
    again.embed(texts)
    assert again.cache_stats() == {"cache_hits": 1, "cache_misses": 0}
