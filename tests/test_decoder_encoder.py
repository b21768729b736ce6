"""Decoders as item encoders: last-token pooling under either padding, GGUF loading and its cache, and the
strategies finding their modules in LLaMA-style models (a tiny random LlamaModel; the real SmolLM2 is slow)."""
from __future__ import annotations

import logging
import time

import pytest
import torch
from helpers import (
    TEXTS,
    build_model,
    context,
    ranking_metrics,
    save_tiny_generator,
    save_tiny_llama,
    strategy_from_config,
    write_tiny_gguf,
)
from transformers import AutoModel

from recexp.errors import ConfigError
from recexp.models.text import weights
from recexp.models.text.encoder import TextEncoder
from recexp.strategies import (
    BERT_IA3_FEEDFORWARD,
    BERT_IA3_TARGETS,
    BERT_LAYERS,
    BERT_LORA_TARGETS,
    BERT_TARGETS,
    Adapted,
    Partial,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


# --- pooling: each text run alone, unpadded, against the padded batch

HAND = {  # pooling -> what it takes from the hidden states [length, dim] of a text run alone
    "last": lambda hidden: hidden[-1],
    "mean": lambda hidden: hidden.mean(0),
    "cls": lambda hidden: hidden[0],
}


def alone(folder, texts, pooling):
    """[N, dim]: each text through the pretrained model on its own (no padding), pooled by hand."""
    encoder = TextEncoder(str(folder), progress=False)  # only its tokenizer: same ids whatever the padding side
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.stack([HAND[pooling](model(**encoder.tokenizer(text, return_tensors="pt", return_token_type_ids=False))
                                          .last_hidden_state[0]) for text in texts])


def through(encoder: TextEncoder, path: str) -> torch.Tensor:
    with torch.no_grad():
        if path == "forward":  # the tokenizer pads (scoring pairs, trained encoders)
            return encoder(TEXTS)
        return encoder.encode_rows(encoder.tokenized(TEXTS), list(range(len(TEXTS))))  # cached token ids; layer cache


@pytest.mark.parametrize("path", ["forward", "encode_rows", "partial"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", list(HAND))
def test_pooling_matches_each_text_run_alone(pooling, padding_side, path, tiny_llama):
    encoder = TextEncoder(str(tiny_llama), pooling=pooling, padding_side=padding_side, progress=False)
    if path == "partial":
        encoder.adapt(Partial(layers=1))
        assert encoder.strategy.cached_below == 1
    ids, mask = encoder.tokenized(TEXTS).pad([0, 1, 2], torch.device("cpu"))
    assert not mask.all()  # the texts differ in length: some are padded
    padded_first = padding_side == "left"
    assert bool(mask[:, 0].all()) != padded_first and bool(mask[:, -1].all()) == padded_first
    assert torch.allclose(through(encoder, path), alone(tiny_llama, TEXTS, pooling), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.mark.parametrize("path", ["forward", "encode_rows"])
def test_left_padding_keeps_each_texts_absolute_positions(path, tiny_gpt2):
    """GPT-2 adds learned absolute position embeddings (rotary ones are shift-invariant): left-padded, a text must
    still start at position 0."""
    encoder = TextEncoder(str(tiny_gpt2), pooling="last", padding_side="left", progress=False)
    encoder.tokenizer.model_input_names = ["input_ids", "attention_mask"]  # GPT-2 would embed MiniLM's token_type_ids
    assert torch.allclose(through(encoder, path), alone(tiny_gpt2, TEXTS, "last"), atol=1e-5)


def test_partial_refuses_a_decoder_whose_layers_it_cannot_run_over_cached_states(tmp_path):
    """GPT-2's blocks take a cache where BERT's take a mask: one line, not a traceback from inside transformers."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from recexp.models.text.encoder import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="strategy=partial cannot run the top layers of GPT2Model over cached states") as error:
        TextEncoder(str(tmp_path), progress=False).adapt(Partial(layers=1, layers_path="h"))
    assert "\n" not in str(error.value)


def test_padding_side_null_keeps_the_tokenizers_and_others_are_refused(tiny_llama):
    assert TextEncoder(str(tiny_llama), progress=False).tokenizer.padding_side == "right"  # MiniLM's tokenizer's own
    with pytest.raises(ConfigError, match="encoder.padding_side='middle' is unknown"):
        TextEncoder(str(tiny_llama), padding_side="middle", progress=False)


def test_partial_decoder_layers_stay_exact_after_training(tiny_llama):
    """The cached path must compute the whole model's function with trained top-layer weights, not only pretrained ones."""
    encoder = TextEncoder(str(tiny_llama), pooling="last", padding_side="left", progress=False).adapt(Partial(layers=1))
    tokens = encoder.tokenized(TEXTS)
    encoder.encode_rows(tokens, [0, 1, 2]).sum().backward()
    trained = {name for name, p in encoder.model.named_parameters() if p.grad is not None}
    assert trained and all(name.startswith("layers.1.") for name in trained)
    with torch.no_grad():
        for p in encoder.model.layers[1].parameters():
            p.add_(torch.randn_like(p) * 0.1)
        assert torch.allclose(encoder.encode_rows(tokens, [0, 1, 2]), encoder(TEXTS), atol=1e-5)


# --- strategies: the BERT-style presets resolve to LLaMA modules; overrides win

LLAMA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm",
                 "post_attention_layernorm"}
ADAPTED = [  # preset, overrides, layers that train, their modules whose weights train (or that get an adapter)
    ("lora", [], {0, 1}, {"q_proj", "v_proj"}),
    ("ia3", [], {0, 1}, {"k_proj", "v_proj", "down_proj"}),
    ("bottleneck", [], {0, 1}, {"o_proj", "down_proj"}),
    ("bottleneck", ["strategy.per_layer=ffn"], {0, 1}, {"down_proj"}),
    ("partial", ["strategy.layers=1"], {1}, LLAMA_MODULES),
    ("lora", ["strategy.config.target_modules=[k_proj,o_proj]"], {0, 1}, {"k_proj", "o_proj"}),  # an override wins
    ("bottleneck", ["strategy.targets.attention=q_proj"], {0, 1}, {"q_proj", "down_proj"}),  # an override wins
]


def trained_modules(model: torch.nn.Module) -> tuple[set[int], set[str]]:
    """The layers holding trained weights, and the LLaMA modules (``q_proj`` ...) those weights belong to."""
    layers, modules = set(), set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts = name.split(".")
            layers.add(int(parts[parts.index("layers") + 1]))
            modules.add(next(part for part in reversed(parts) if part in LLAMA_MODULES))
    return layers, modules


@pytest.mark.parametrize("name, overrides, layers, modules", ADAPTED)
def test_strategies_find_their_modules_in_a_llama(name, overrides, layers, modules, tiny_llama):
    encoder = TextEncoder(str(tiny_llama), pooling="last", padding_side="left", progress=False)
    with torch.no_grad():
        before = encoder(TEXTS)
    encoder.adapt(strategy_from_config(name, *overrides))
    assert trained_modules(encoder.model) == (layers, modules)
    with torch.no_grad():
        after = encoder(TEXTS)
    assert torch.isfinite(after).all()
    if name != "partial":  # adapters start as the identity
        assert torch.allclose(before, after, atol=1e-6)
    if name == "ia3":
        assert encoder.model.peft_config["default"].feedforward_modules == {"down_proj"}


def test_bottleneck_adapts_every_layers_attention_and_feed_forward_outputs(tiny_llama):
    encoder = TextEncoder(str(tiny_llama), progress=False).adapt(strategy_from_config("bottleneck"))
    adapted = sorted(name for name, module in encoder.model.named_modules() if isinstance(module, Adapted))
    assert adapted == [f"layers.{i}.{m}" for i in range(2) for m in ("mlp.down_proj", "self_attn.o_proj")]
    assert encoder.strategy.settings["targets"] == {"attention": "o_proj", "ffn": "down_proj"}  # saved with the adapter


@pytest.mark.parametrize("name, overrides, message", [
    ("lora", ["strategy.config.target_modules=[query_proj]"], "LoraConfig cannot be applied to LlamaModel"),
    ("partial", ["strategy.layers=1", "strategy.layers_path=encoder.layers"], "strategy.layers_path='encoder.layers' names no"),
    ("bottleneck", ["strategy.targets.ffn=dense_out"], "strategy.targets.ffn='dense_out' matches no module"),
])
def test_an_override_matching_nothing_is_refused_not_replaced(name, overrides, message, tiny_llama):
    with pytest.raises(ConfigError, match=message):
        TextEncoder(str(tiny_llama), progress=False).adapt(strategy_from_config(name, *overrides))


def test_bert_presets_are_the_ones_resolution_recognises():
    assert strategy_from_config("lora").config.target_modules == BERT_LORA_TARGETS
    ia3 = strategy_from_config("ia3").config
    assert (ia3.target_modules, ia3.feedforward_modules) == (BERT_IA3_TARGETS, BERT_IA3_FEEDFORWARD)
    assert strategy_from_config("bottleneck").settings["targets"] == BERT_TARGETS
    assert strategy_from_config("partial").layers_path == BERT_LAYERS


@pytest.mark.parametrize("strategy, overrides", [("frozen", []), ("lora", []), ("partial", ["strategy.layers=1"])])
def test_text_tower_trains_and_reloads_over_a_decoder(strategy, overrides, tiny_llama, small_split, tmp_path):
    settings = ["encoder.pooling=last", "encoder.padding_side=left", *overrides]
    model = build_model("text_tower", strategy, tiny_llama, tmp_path, *settings)
    model.fit(small_split, context(tmp_path))
    expected = ranking_metrics(model, small_split)
    assert 0 < expected["cold"]["ndcg@10"] <= 1
    model.save(tmp_path / "model")
    reloaded = build_model("text_tower", strategy, tiny_llama, tmp_path, *settings)
    reloaded.load(tmp_path / "model", small_split)
    assert ranking_metrics(reloaded, small_split) == expected


# --- GGUF files: de-quantised once, cached by sha256, damage reported and rebuilt

def load_gguf(path, models_dir) -> TextEncoder:
    return TextEncoder(str(path), pooling="last", padding_side="left", models_dir=str(models_dir), progress=False)


def test_gguf_is_dequantised_once_then_read_from_the_cache(tiny_gguf, tmp_path, monkeypatch):
    first = load_gguf(tiny_gguf, tmp_path)
    assert type(first.model).__name__ == "LlamaModel" and first.dim == 32
    folder = tmp_path / weights.file_sha256(tiny_gguf)
    assert {"model.safetensors", "config.json", "tokenizer.json", weights.MANIFEST} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind

    def rebuild(*args):
        raise AssertionError("the cached folder should have been read")

    monkeypatch.setattr(weights, "_write_dequantised", rebuild)
    second = load_gguf(tiny_gguf, tmp_path)
    with torch.no_grad():
        assert torch.equal(first(TEXTS), second(TEXTS))
    assert second.tokenizer.padding_side == "left" and second.tokenizer.pad_token == "<|endoftext|>"


DAMAGE = {  # how a cached folder is damaged -> the file the warning names
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "truncated weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
                          "model.safetensors does not match its recorded sha256"),
    "edited config": (lambda f: (f / "config.json").write_text("{}"), "config.json does not match its recorded sha256"),
    "no manifest": (lambda f: (f / weights.MANIFEST).unlink(), f"{weights.MANIFEST} cannot be read"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_model_cache_is_reported_and_rebuilt(damage, tiny_gguf, tmp_path, caplog):
    with torch.no_grad():
        expected = load_gguf(tiny_gguf, tmp_path)(TEXTS)
    folder = tmp_path / weights.file_sha256(tiny_gguf)
    harm, message = DAMAGE[damage]
    harm(folder)
    with caplog.at_level(logging.WARNING, logger=weights.__name__), torch.no_grad():
        assert torch.equal(load_gguf(tiny_gguf, tmp_path)(TEXTS), expected)
    assert "Model cache damaged" in caplog.text and message in caplog.text and str(folder) in caplog.text
    weights.verify(folder, folder.name)  # whole again


DAMAGED = "{path} is not a whole GGUF file, truncated or damaged"


@pytest.mark.parametrize("content, message", [
    (None, "the GGUF file {path} does not exist"),
    (lambda whole: whole[:2000], DAMAGED),  # cut in its header
    (lambda whole: whole[:-100], DAMAGED),  # cut in its last tensor
    (lambda whole: b"not a model", DAMAGED),
])
def test_a_missing_or_truncated_gguf_is_one_line_naming_it(content, message, tiny_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    if content is not None:
        path.write_bytes(content(tiny_gguf.read_bytes()))
    with pytest.raises(ConfigError) as error:
        load_gguf(path, tmp_path / "models")
    assert message.format(path=path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_gguf_transformers_cannot_read_is_one_line_and_leaves_no_folder(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "not-an-architecture")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=f"transformers cannot load the GGUF file {path}") as error:
        load_gguf(path, tmp_path / "models")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []  # nothing half-built left


def test_unknown_packaged_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="packaged:gpt5 is unknown; packaged models: smollm2"):
        TextEncoder("packaged:gpt5", models_dir=str(tmp_path), progress=False)


SMOL_TEXTS = ["Toy Story (1995). Genres: Animation Children's Comedy", "Heat (1995). Genres: Action Crime Thriller"]


@pytest.mark.slow
def test_packaged_smollm2_loads_once_then_from_its_cache(tmp_path):
    started = time.perf_counter()
    first = TextEncoder("packaged:smollm2", pooling="last", padding_side="left", models_dir=str(tmp_path), progress=False)
    built = time.perf_counter() - started
    started = time.perf_counter()
    cached = TextEncoder("packaged:smollm2", pooling="last", padding_side="left", models_dir=str(tmp_path), progress=False)
    read = time.perf_counter() - started
    print(f"SmolLM2 load: first {built:.1f} s (de-quantising), cached {read:.1f} s")
    folder = tmp_path / weights.file_sha256(weights.packaged("smollm2"))
    weights.verify(folder, folder.name)
    assert type(cached.model).__name__ == "LlamaModel" and cached.model.config.num_hidden_layers == 30
    assert read < built
    with torch.no_grad():
        vectors = cached(SMOL_TEXTS)
        assert torch.equal(vectors, first(SMOL_TEXTS))
    assert vectors.shape == (2, 576) and torch.isfinite(vectors).all()
    assert not torch.allclose(vectors[0], vectors[1], atol=1e-3)
    with torch.no_grad():  # the shorter text left-padded gives what it gives alone; so does the layer cache
        assert torch.allclose(vectors[1], cached(["Heat (1995). Genres: Action Crime Thriller"])[0], atol=1e-4)
        cached.adapt(Partial(layers=2))  # the layer-cache probe passes on the real decoder
        rows = cached.encode_rows(cached.tokenized(SMOL_TEXTS), [0, 1])
    assert torch.allclose(rows, vectors, atol=1e-4)
