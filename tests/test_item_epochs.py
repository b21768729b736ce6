"""Trained encoders at the rate the encoder allows: item-organised epochs, the layer cache of
``strategy=partial``, LP-FT, bf16 where it is fast, and the pretrained cache reused before training."""
from __future__ import annotations

import pytest
import torch
from helpers import TEXTS, build_model, context, ranking_metrics, strategy_from_config

from recexp.errors import ConfigError
from recexp.models.sampling import ItemBatch, ItemData, Sampling
from recexp.models.text.encoder import TextEncoder
from recexp.models.torch_recommender import frozen_encoder
from recexp.strategies import Frozen, FullFineTune, Partial
from recexp.train import TrainerConfig, with_defaults

pytestmark = pytest.mark.usefixtures("one_thread")


def item_epoch(data: ItemData, items_per_batch: int) -> list[ItemBatch]:
    return [data.__getitems__(list(range(i, min(i + items_per_batch, len(data))))) for i in range(0, len(data), items_per_batch)]


@pytest.mark.parametrize("negative_alpha", [0.0, 1.0])
def test_an_item_epoch_sees_every_training_interaction_once(cold_split, negative_alpha):
    lengths = torch.randint(3, 30, (cold_split.n_items,), generator=torch.Generator().manual_seed(0))
    data = ItemData(cold_split, seed=3, lengths=lengths, sampling=Sampling(negative_alpha=negative_alpha), window=256)
    train_items = set(cold_split.train["item"].unique().tolist())
    assert len(data) == len(train_items)
    batches = item_epoch(data, 64)
    seen = torch.cat([torch.stack([b.users, b.items[b.positives]], 1) for b in batches])
    expected = torch.tensor(cold_split.train[["user", "item"]].to_numpy())
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist()))  # each once, nothing else
    positives = set(map(tuple, expected.tolist()))
    for batch in batches:
        assert len(set(batch.items.tolist())) == len(batch.items) and set(batch.items.tolist()) <= train_items
        negatives = batch.items[batch.negatives]
        clashes = sum((u, i) in positives for u, i in zip(batch.users.tolist(), negatives.tolist()))
        assert clashes <= 0.01 * len(batch.users)  # negatives avoid the user's own items (redrawn)
    for window in range(0, len(data), 256):  # similar lengths side by side: sorted within each window
        part = lengths[data.order[window : window + 256]]
        assert torch.equal(part, part.sort().values)
    data.set_epoch(1)
    assert not torch.equal(data.order, ItemData(cold_split, 3, lengths, window=256).order)  # re-drawn per epoch


def test_partial_strategy_runs_only_the_top_layers_over_cached_states(tiny_bert):
    encoder = TextEncoder(str(tiny_bert)).adapt(Partial(layers=1))
    encoder.eval()
    tokens = encoder.tokenized(TEXTS)
    cached = encoder.encode_rows(tokens, [2, 0, 1])  # lower layer from the cache, top layer live
    with torch.no_grad():
        full = encoder(TEXTS)  # the whole model, padded to the longest text
    torch.testing.assert_close(cached.detach(), full[[2, 0, 1]], atol=1e-5, rtol=1e-4)
    assert cached.requires_grad and tokens.lower is not None and len(tokens.lower) == len(TEXTS)
    with pytest.raises(ConfigError, match="strategy.layers=2 leaves nothing to cache"):
        TextEncoder(str(tiny_bert)).adapt(Partial(layers=2))
    with pytest.raises(ConfigError, match="layers_path='encoder.layers' names no list of layers"):
        TextEncoder(str(tiny_bert)).adapt(Partial(layers=1, layers_path="encoder.layers"))


def test_partial_strategy_saves_and_reloads_its_layers(tiny_bert, small_split, tmp_path):
    model = build_model("text_tower", "partial", tiny_bert, tmp_path, "strategy.layers=1")
    model.fit(small_split, context(tmp_path))
    expected = ranking_metrics(model, small_split)
    model.save(tmp_path / "model")
    reloaded = build_model("text_tower", "partial", tiny_bert, tmp_path, "strategy.layers=1")
    reloaded.load(tmp_path / "model", small_split)
    assert ranking_metrics(reloaded, small_split) == expected


@pytest.mark.parametrize("strategy, pristine", [(Frozen(), True), (FullFineTune(), True), ("lora", True),
                                                 ("bottleneck", True), ("prefix", False)])
def test_an_encoder_keeps_the_pretrained_fingerprint_until_it_trains(strategy, pristine, tiny_bert, tmp_path):
    plain = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(Frozen())
    strategy = strategy_from_config(strategy) if isinstance(strategy, str) else strategy
    adapted = TextEncoder(str(tiny_bert), cache_dir=str(tmp_path)).adapt(strategy)
    assert (adapted.fingerprint() == plain.fingerprint()) is pristine
    if adapted.trainable:
        adapted.train()
        optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
        adapted(TEXTS).sum().backward()  # a forward with gradient: the weights are about to change
        optimizer.step()
        assert adapted.fingerprint() != plain.fingerprint()


def test_lp_ft_probes_like_the_frozen_model_then_keeps_the_better(tiny_bert, small_split, tmp_path):
    torch.manual_seed(0)  # as a run seeds before it builds its model
    frozen = build_model("text_tower", "frozen", tiny_bert, tmp_path, epochs=2)
    frozen.fit(small_split, context(tmp_path))
    torch.manual_seed(0)
    lp_ft = build_model("text_tower", "lora", tiny_bert, tmp_path, "model.lp_ft=true", "model.lp_epochs=2", epochs=1)
    probe = {}
    original = type(lp_ft)._fit

    def record(self, split, ctx, trainer, keep_start=False, step_offset=0):
        result = original(self, split, ctx, trainer, keep_start, step_offset)
        if not keep_start:
            probe["ndcg"] = ranking_metrics(self, split)["all"]["ndcg@10"]
            probe["heads"] = {k: v.clone() for k, v in self.module.state_dict().items() if not k.startswith("encoder.")}
        return result

    type(lp_ft)._fit = record
    ctx = context(tmp_path)
    try:
        lp_ft.fit(small_split, ctx)
    finally:
        type(lp_ft)._fit = original
    steps = [step for _, step in ctx.logger.lines]
    assert steps == sorted(steps) and len(steps) == 2 + 1 + 1  # probe epochs, the start, the epoch: W&B steps only rise
    assert probe["ndcg"] == ranking_metrics(frozen, small_split)["all"]["ndcg@10"]  # the frozen model, exactly
    for name, value in probe["heads"].items():
        assert torch.equal(value, frozen.module.state_dict()[name]), name
    cost, used = lp_ft.cost_extras(), lp_ft.effective()
    assert cost["probe"]["epochs"] == 2 and used["lp_ft"] and used["epochs_run"] == 1
    assert cost["encoder_tokens_trained"] > 0 and cost["encoder_tokens_per_second"] > 0
    if used["best_epoch"] == -1:  # no epoch beat the probe: its weights are the ones kept
        assert ranking_metrics(lp_ft, small_split)["all"]["ndcg@10"] == probe["ndcg"]


def test_lp_ft_needs_an_encoder_that_trains(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="model.lp_ft=true needs an encoder that trains"):
        build_model("text_tower", "frozen", tiny_bert, tmp_path, "model.lp_ft=true")


def test_frozen_encoder_context_restores_what_trained(tiny_bert, small_split, tmp_path):
    model = build_model("fusion", "lora", tiny_bert, tmp_path)
    before = [p.requires_grad for p in model.module.encoder.parameters()]
    with frozen_encoder(model.module):
        assert not model.module.encoder.trainable and model.module.cpu_threads == 1
    assert [p.requires_grad for p in model.module.encoder.parameters()] == before


def test_a_second_fit_gets_its_own_precision(tiny_bert, small_split, tmp_path):
    """accelerate hands back a model it prepared before unchanged; the loop releases it after each fit."""
    model = build_model("text_tower", "lora", tiny_bert, tmp_path, "model.lp_ft=true", "model.lp_epochs=1",
                        "trainer.mixed_precision=bf16")  # the probe takes the frozen defaults: no
    seen = []
    forward = type(model.module).forward

    def spy(self, batch):
        seen.append((self.encoder.trainable, torch.is_autocast_enabled("cpu")))
        return forward(self, batch)

    type(model.module).forward = spy
    try:
        model.fit(small_split, context(tmp_path))
    finally:
        type(model.module).forward = forward
    assert (False, False) in seen and (True, True) in seen and (True, False) not in seen
    assert model.effective()["mixed_precision"] == "bf16"


def test_a_bf16_default_falls_back_where_it_is_slow(monkeypatch):
    config = TrainerConfig()
    monkeypatch.setattr("recexp.train.settings.bf16_supported", lambda device: False)
    assert with_defaults(config, torch.device("cpu"), mixed_precision="bf16").mixed_precision == "no"
    explicit = TrainerConfig(mixed_precision="bf16")
    assert with_defaults(explicit, torch.device("cpu")).mixed_precision == "bf16"  # asked for: kept
