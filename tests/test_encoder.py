"""The text encoder's settings (``encoder.*``) on the packaged all-MiniLM-L6-v2: max length and dtype."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recexp.errors import ConfigError
from recexp.models.text.encoder import DEFAULT_MAX_LENGTH, TextEncoder

TEXTS = ["Toy Story (1995). Genres: Animation Children's Comedy", "Heat (1995). Genres: Action Crime Thriller"]


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(progress=False)


def test_max_length_is_the_models_own_unless_set(minilm):
    assert minilm.max_length == DEFAULT_MAX_LENGTH
    assert TextEncoder(progress=False).default_max_length(128).max_length == 128
    assert TextEncoder(max_length=48, progress=False).default_max_length(128).max_length == 48
    long = ["word " * 200]
    assert len(minilm.tokenized(long).ids[0]) == DEFAULT_MAX_LENGTH


def test_bf16_weights_give_fp32_vectors_close_to_fp32_ones(minilm):
    half = TextEncoder(dtype="bf16", progress=False)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        full, low = minilm.embed(TEXTS), half.embed(TEXTS)
        live = half(TEXTS)
    assert low.dtype == live.dtype == torch.float32
    assert F.cosine_similarity(full, low).min() > 0.99
    assert half.fingerprint() != minilm.fingerprint()  # the cache keeps the two apart


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="encoder.dtype='fp8' is unknown; choose one of fp32, bf16, fp16"):
        TextEncoder(dtype="fp8", progress=False)
