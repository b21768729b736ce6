"""Strategies adapt an encoder as configured: trainable counts, PEFT errors, persistence, the cache."""
from __future__ import annotations

import warnings

import pytest
import torch
from helpers import CONF, TEXTS, strategy_from_config
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertModel

from recexp.config import build
from recexp.errors import ConfigError
from recexp.models.text.encoder import TextEncoder, default_model_path
from recexp.strategies import Adapted, Bottleneck, Frozen, FullFineTune, Peft, module_names
from recexp.train import parameter_counts

STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("one_thread")


def encoder_counts(encoder: TextEncoder) -> tuple[int, int]:
    return parameter_counts(encoder.model)


PRESET_OVERRIDES = {"partial": ["strategy.layers=1"]}  # the tiny BERT has 2 layers


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_preset_adapts_an_encoder(name, tiny_bert):
    encoder = TextEncoder(str(tiny_bert)).adapt(strategy_from_config(name, *PRESET_OVERRIDES.get(name, [])))
    trainable, total = encoder_counts(encoder)
    base = BertModel.from_pretrained(tiny_bert)
    base_total = parameter_counts(base)[1]
    top_layer = parameter_counts(base.encoder.layer[1])[1]
    expected = {"frozen": (0, base_total), "full_ft": (base_total, base_total), "partial": (top_layer, base_total)}
    if name in expected:
        assert (trainable, total) == expected[name]
    else:
        assert 0 < trainable < base_total and total == base_total + trainable
    vectors = encoder(TEXTS)
    assert vectors.shape == (3, 32) and torch.isfinite(vectors).all()
    assert vectors.requires_grad == (trainable > 0)


@pytest.mark.parametrize(
    "overrides, method",
    [
        (["strategy.config.r=4"], "LoraConfig"),
        (["strategy.config._target_=peft.VeraConfig", "strategy.config.r=16", "~strategy.config.lora_alpha",
          "~strategy.config.lora_dropout"], "VeraConfig"),
        (["strategy.config._target_=peft.LNTuningConfig", "strategy.config.target_modules=[LayerNorm]",
          "~strategy.config.r", "~strategy.config.lora_alpha", "~strategy.config.lora_dropout"], "LNTuningConfig"),
    ],
)
def test_any_peft_method_by_override(overrides, method, tiny_bert):
    strategy = strategy_from_config("lora", *overrides)
    assert type(strategy.config).__name__ == method
    assert isinstance(strategy.config.target_modules, (list, set))  # _convert_: all gave peft a real list
    encoder = TextEncoder(str(tiny_bert)).adapt(strategy)
    assert 0 < encoder_counts(encoder)[0]


def test_peft_methods_apply_without_future_warnings(tiny_bert):
    """peft reads a transformers property deprecated in 5.x; a run's log must not carry that warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TextEncoder(str(tiny_bert)).adapt(strategy_from_config("lora"))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_real_minilm_counts():
    """LoRA r=8 on query and value of all-MiniLM-L6-v2 (6 layers, 384 wide): 6 * 2 * 2 * 384 * 8."""
    lora = TextEncoder().adapt(strategy_from_config("lora"))
    assert encoder_counts(lora) == (73_728, 22_713_216 + 73_728)
    full = TextEncoder().adapt(FullFineTune())
    assert encoder_counts(full) == (22_713_216, 22_713_216)


def test_missing_target_module_lists_real_names(tiny_bert):
    strategy = strategy_from_config("lora", "strategy.config.target_modules=[q_proj,v_proj]")
    with pytest.raises(ConfigError) as error:
        TextEncoder(str(tiny_bert)).adapt(strategy)
    message = str(error.value)
    assert "q_proj" in message and "target_modules" in message
    for name in ("query", "value", "dense", "LayerNorm"):
        assert name in message


def test_prompt_learning_needs_task_type(tiny_bert):
    with pytest.raises(ConfigError, match="FEATURE_EXTRACTION"):
        strategy_from_config("prefix", "strategy.config.task_type=null")


def test_peft_needs_a_peft_config():
    with pytest.raises(ConfigError, match="peft config"):
        Peft(config={"r": 8})


def test_unknown_model_path_names_the_offline_fix(tmp_path):
    with pytest.raises(ConfigError, match="local folder"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="local folder"):
        TextEncoder("nobody/no-such-model-anywhere")


@pytest.mark.parametrize("kwargs", [{"pooling": "max"}, {"max_length": 1}, {"batch_size": 0}])
def test_bad_encoder_settings(kwargs, tiny_bert):
    with pytest.raises(ConfigError):
        TextEncoder(str(tiny_bert), **kwargs)


@pytest.mark.parametrize("name", ["full_ft", "lora", "ia3", "prefix", "bottleneck"])
def test_save_then_load_restores_the_trained_encoder(name, tiny_bert, tmp_path):
    torch.manual_seed(0)
    trained = TextEncoder(str(tiny_bert)).adapt(strategy_from_config(name))
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    trained.save(tmp_path)
    torch.manual_seed(1)
    fresh = TextEncoder(str(tiny_bert)).adapt(strategy_from_config(name))
    assert not torch.equal(fresh.embed(TEXTS), trained.embed(TEXTS))
    fresh.load(tmp_path)
    assert torch.equal(fresh.embed(TEXTS), trained.embed(TEXTS))


def test_frozen_saves_nothing(tiny_bert, tmp_path):
    TextEncoder(str(tiny_bert)).adapt(Frozen()).save(tmp_path / "encoder")
    assert not (tmp_path / "encoder").exists()


def test_frozen_embeddings_are_cached_by_content(tiny_bert, tmp_path):
    first = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen())
    vectors = first.embed(TEXTS)
    assert first.cache_stats() == {"cache_hits": 0, "cache_misses": 1}
    second = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen())
    assert torch.equal(second.embed(TEXTS), vectors)
    assert second.cache_stats() == {"cache_hits": 1, "cache_misses": 0}
    # Anything in the key changes the entry: texts, max_length, pooling.
    second.embed(TEXTS[:2])
    TextEncoder(str(tiny_bert), cache_dir=str(tmp_path), max_length=8).adapt(Frozen()).embed(TEXTS)
    TextEncoder(str(tiny_bert), cache_dir=str(tmp_path), pooling="cls").adapt(Frozen()).embed(TEXTS)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


@pytest.mark.parametrize("name", ["lora", "bottleneck"])
def test_trainable_encoders_bypass_the_cache(name, tiny_bert, tmp_path):
    encoder = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(strategy_from_config(name))
    encoder.embed(TEXTS)
    assert encoder.cache_stats() == {"cache_hits": 0, "cache_misses": 0}
    assert not list(tmp_path.iterdir())


def test_frozen_encoder_stays_in_eval_mode(tiny_bert):
    encoder = TextEncoder(str(tiny_bert)).adapt(Frozen()).train()
    assert not encoder.model.training
    tuned = TextEncoder(str(tiny_bert)).adapt(FullFineTune()).train()
    assert tuned.model.training


def test_module_names_are_leaf_suffixes(tiny_bert):
    names = module_names(BertModel.from_pretrained(tiny_bert))
    assert {"query", "key", "value", "dense", "LayerNorm", "word_embeddings"} <= set(names)
    assert "encoder" not in names and "" not in names



ADAPTERS = 12 * (384 * 64 + 64 + 64 * 384 + 384)  # 2 per layer, 6 layers: down and up projections with biases
LAYER_NORMS = 13 * 2 * 384  # the embeddings' and 2 per layer


@pytest.mark.parametrize(
    "overrides, trainable, added",
    [
        ([], ADAPTERS, ADAPTERS),
        (["strategy.per_layer=ffn"], ADAPTERS // 2, ADAPTERS // 2),
        (["strategy.train_layer_norm=true"], ADAPTERS + LAYER_NORMS, ADAPTERS),
    ],
)
def test_bottleneck_on_minilm_counts_and_starts_as_the_pretrained_encoder(overrides, trainable, added):
    adapted = TextEncoder().adapt(strategy_from_config("bottleneck", *overrides))
    assert ADAPTERS == 595_200
    assert encoder_counts(adapted) == (trainable, 22_713_216 + added)
    assert torch.equal(adapted.embed(TEXTS), TextEncoder().adapt(Frozen()).embed(TEXTS))


def adapted_names(encoder: TextEncoder) -> list[str]:
    return [name for name, module in encoder.model.named_modules() if isinstance(module, Adapted)]


def test_bottleneck_targets_resolve_overlapping_suffixes(tiny_bert):
    both = TextEncoder(str(tiny_bert)).adapt(Bottleneck())
    assert adapted_names(both) == [f"encoder.layer.{i}.{sublayer}" for i in range(2)
                                   for sublayer in ("attention.output.dense", "output.dense")]
    ffn = TextEncoder(str(tiny_bert)).adapt(Bottleneck(per_layer="ffn"))
    assert adapted_names(ffn) == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]


def test_one_step_trains_only_the_bottleneck_adapters(tiny_bert):
    torch.manual_seed(0)
    encoder = TextEncoder(str(tiny_bert)).adapt(Bottleneck(size=8, init_scale=0.01)).train()
    before = {name: p.detach().clone() for name, p in encoder.model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    encoder(TEXTS).pow(2).sum().backward()
    optimizer.step()
    changed = {name for name, p in encoder.model.named_parameters() if not torch.equal(p, before[name])}
    adapter_weights = {name for name in before if ".adapter." in name}
    assert len(adapter_weights) == 4 * 4 and changed == adapter_weights  # 4 adapters: down/up weight and bias


def test_bottleneck_load_refuses_other_settings(tiny_bert, tmp_path):
    TextEncoder(str(tiny_bert)).adapt(Bottleneck(size=8)).save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"bottleneck.safetensors", "bottleneck.json"}
    with pytest.raises(ConfigError, match="was trained with"):
        TextEncoder(str(tiny_bert)).adapt(Bottleneck(size=16)).load(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "strategy.size=0 is not allowed"),
        ({"nonlinearity": "swish"}, "strategy.nonlinearity='swish' is unknown; choose one of relu, gelu, silu, tanh"),
        ({"per_layer": "all"}, "strategy.per_layer='all' is unknown; choose one of both, ffn"),
        ({"targets": {"ffn": "output.dense"}}, "needs strategy.targets.attention"),
        ({"init_scale": -0.1}, "strategy.init_scale=-0.1 is not allowed"),
    ],
)
def test_bad_bottleneck_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Bottleneck(**kwargs)


def test_bottleneck_missing_target_lists_real_names(tiny_bert):
    with pytest.raises(ConfigError) as error:
        TextEncoder(str(tiny_bert)).adapt(strategy_from_config("bottleneck", "strategy.targets.ffn=mlp.down_proj"))
    message = str(error.value)
    assert "strategy.targets.ffn='mlp.down_proj' matches no module" in message
    for name in ("query", "value", "dense", "LayerNorm"):
        assert name in message


def test_ia3_rescales_keys_values_and_the_feed_forward_output_only(tiny_bert):
    encoder = TextEncoder(str(tiny_bert)).adapt(strategy_from_config("ia3"))
    scaled = sorted({name.split(".layer.0.")[1].rsplit(".ia3_l", 1)[0] for name, p in encoder.model.named_parameters()
                     if p.requires_grad and ".layer.0." in name})
    assert scaled == ["attention.self.key", "attention.self.value", "output.dense"]
    assert encoder_counts(encoder)[0] == 2 * (32 + 32 + 64)  # per layer: key and value (hidden), feed-forward input


def test_partial_refuses_an_encoder_whose_layers_need_more_than_the_cache_gives(tmp_path):
    """MPNet's layers read a relative position bias the encoder computes once: over cached states they would
    silently compute another function."""
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = MPNetModel(MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        model.encoder.relative_attention_bias.weight.normal_(0, 1.0)  # a trained model's bias is far from 0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="strategy=partial cannot run the top layers of MPNetModel"):
        TextEncoder(str(tmp_path)).adapt(build(OmegaConf.create({"_target_": "recexp.strategies.Partial", "layers": 1})))
    assert TextEncoder(str(tmp_path)).adapt(strategy_from_config("lora", "strategy.config.target_modules=[q,v]")).trainable
