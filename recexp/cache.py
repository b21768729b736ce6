"""Checksums for the on-disk caches (split artifacts, text embeddings) and the rule for damaged entries.

A cached file is trusted only when its bytes match the sha256 written with it. A damaged entry is
moved aside and deleted (rename first, so concurrent readers never see half a folder), then rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from recexp.errors import DataError


class DamagedCache(DataError):
    """A cached file is missing, unreadable, or does not match its recorded checksum; names the file."""


class OutdatedCache(DamagedCache):
    """A cached entry intact but written in an older format: rebuilt like a damaged one, without alarm."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NOT_COMPUTED = ("transformers_version", "_name_or_path")  # config keys that change no output


def model_fingerprint(prefix: bytes, tokenizer, model) -> str:
    """sha256 over ``prefix``, a tokenizer's vocabulary and rules (normalising, splitting, special tokens), a
    model's config and its weights (names and bytes)."""
    digest = hashlib.sha256(prefix)
    for token, index in sorted(tokenizer.get_vocab().items()):
        digest.update(f"{token}\t{index}\n".encode())
    digest.update(_tokenizer_rules(tokenizer).encode("utf-8"))
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k not in NOT_COMPUTED}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_rules(tokenizer) -> str:
    """A fast tokenizer's pipeline as JSON, without the truncation and padding that each call sets; else the
    settings it was made with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules = json.loads(backend.to_str())
        rules.pop("truncation", None), rules.pop("padding", None)
    else:
        rules = {k: v for k, v in tokenizer.init_kwargs.items() if not k.endswith("_file") and k != "name_or_path"}
    return json.dumps(rules, sort_keys=True, default=str)


def read_verified(path: Path, expected: str | None) -> bytes:
    """The bytes of ``path`` if their sha256 equals ``expected``, else :class:`DamagedCache`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedCache(f"{path} cannot be read ({err.strerror or err})") from err
    if expected is None:
        raise DamagedCache(f"{path} has no recorded checksum (written by an older recexp)")
    if sha256(data) != expected:
        raise DamagedCache(f"{path} does not match its recorded sha256 (truncated or overwritten)")
    return data


def discard(path: Path) -> None:
    """Move a damaged file or folder aside and delete it; another process may have done so already."""
    aside = path.with_name(f".damaged-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as err:
        raise DataError(
            f"Cannot move the damaged cache entry {path} aside ({err.strerror or err}); "
            "delete it by hand, or set cache_dir to a writable folder."
        ) from err
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
