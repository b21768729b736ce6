"""The text encoder's settings (``encoder.*``): max length, dtype, device_map and gradient checkpointing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import save_tiny_causal_llama
from transformers import AutoModelForCausalLM

from recexp.errors import ConfigError
from recexp.models.text.encoder import DEFAULT_MAX_LENGTH, TextEncoder, weights_dtype
from recexp.train import devices

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
    with pytest.raises(ConfigError, match="encoder.dtype='fp8' is unknown; choose auto or one of fp32, bf16, fp16"):
        TextEncoder(dtype="fp8", progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_only_where_the_device_computes_it_natively(native, monkeypatch):
    monkeypatch.setattr(devices, "bf16_supported", lambda device: native)
    encoder = TextEncoder(dtype="auto", progress=False)
    expected = torch.bfloat16 if native else torch.float32
    assert encoder.precision == next(encoder.model.parameters()).dtype == expected


def test_auto_dtype_reads_the_runs_device_not_the_machines_default(monkeypatch):
    monkeypatch.setattr(devices, "bf16_supported", lambda device: device.type == "cuda")
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cuda"))
    assert weights_dtype("auto", "cpu") == torch.float32  # device=cpu on a GPU machine
    assert weights_dtype("auto", "auto") == weights_dtype("auto", "cuda:0") == torch.bfloat16


def test_auto_dtype_agrees_with_torchs_own_checks_of_the_device():
    if torch.cuda.is_available():
        native = torch.cuda.get_device_capability()[0] >= 8
    else:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert weights_dtype("auto") == (torch.bfloat16 if native else torch.float32)


def test_device_map_places_the_weights_when_they_load(tiny_bert):
    encoder = TextEncoder(str(tiny_bert), device_map="cpu", progress=False)
    assert next(encoder.model.parameters()).device.type == "cpu" and encoder(TEXTS).isfinite().all()
    with pytest.raises(ConfigError, match="Unsupported device type 'meta'"):  # transformers reads the map
        TextEncoder(str(tiny_bert), device_map="meta", progress=False)


def test_a_device_map_over_several_devices_is_refused(tmp_path, monkeypatch):
    import recexp.models.text.encoder as encoder_module

    class Dispatched(AutoModelForCausalLM):  # what accelerate leaves on a model it spread over two GPUs
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            model = AutoModelForCausalLM.from_pretrained(*args, **kwargs)
            model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "lm_head": 1}
            return model
    monkeypatch.setattr(encoder_module, "AutoModelForCausalLM", Dispatched)
    with pytest.raises(ConfigError, match=r"encoder.device_map='auto' spreads the model over \['0', '1'\]"):
        TextEncoder(str(save_tiny_causal_llama(tmp_path)), device_map="auto", progress=False)


def test_gradient_checkpointing_on_a_model_without_it_is_refused(tiny_bert, monkeypatch):
    from transformers import BertModel

    monkeypatch.setattr(BertModel, "supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match="encoder.gradient_checkpointing=true, but BertModel does not support it"):
        TextEncoder(str(tiny_bert), gradient_checkpointing=True, progress=False)
