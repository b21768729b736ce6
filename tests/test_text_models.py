"""Text models: one contract over every (model, strategy), persistence, cold items, the loop, bad input.

Fast tests use a tiny random BERT on a slice of ml-100k (100 users, item cold-start); the slow test
measures the packaged MiniLM on the full split.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import CONF, RecordingLogger, build_model, context, ranking_metrics
from hydra import compose, initialize_config_dir

from recexp.config import build
from recexp.errors import ConfigError, TrainingError
from recexp.models.pairs.classifier import PairClassifier
from recexp.models.pairs.like_rates import UserRateRecommender
from recexp.models.random_scores import RandomRecommender
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.tower import TextTower
from recexp.models.text.zero_shot import TextZeroShotRecommender
from recexp.models.torch_recommender import TorchRecommender
from recexp.records import RunRecord
from recexp.strategies import Frozen
from recexp.tail import Rerank, Reranked
from recexp.train import EpochData, TrainerConfig, fit, warmup_then_decay

MODELS = ["text_tower", "fusion", "lm_classifier"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", ["frozen", "lora"])
def test_contract(name, strategy, tiny_bert, small_split, tmp_path):
    model = build_model(name, strategy, tiny_bert, tmp_path)
    ctx = context(tmp_path)
    model.fit(small_split, ctx)
    users = torch.arange(5)
    for stage in ("valid", "test"):
        scores = model.score(users, stage)
        assert scores.shape == (5, small_split.n_items) and scores.dtype == torch.float32
        assert not scores.isnan().any() and torch.isfinite(scores).any(dim=1).all()
    trainable, total = model.parameter_counts()
    assert 0 < trainable < total
    cost = model.cost_extras()
    assert cost["samples_seen"] > 0 and cost["samples_per_second"] > 0 and cost["epochs"] == 1
    logged = ctx.logger.lines[-1][0]
    assert math.isfinite(logged["train/loss"]) and 0 <= logged["valid/ndcg@10"] <= 1
    assert ranking_metrics(model, small_split)["all"]["ndcg@10"] >= 0


MODEL_KINDS = {  # a model, given a text encoder -> whether its run record says it reads item text
    "text_zero_shot": (lambda encoder: TextZeroShotRecommender(encoder), True),
    "text_tower": (lambda encoder: TorchRecommender(TextTower(encoder, Frozen())), True),
    "text_tower_reranked": (lambda encoder: Reranked(TorchRecommender(TextTower(encoder, Frozen())), Rerank()), True),
    "text_head": (lambda encoder: TorchRecommender(PairClassifier(inputs="text", reader="mlp", encoder=encoder)), True),
    "id_fm_given_an_encoder": (lambda encoder: TorchRecommender(PairClassifier(inputs="ids", encoder=encoder)), False),
    "user_rate": (lambda encoder: UserRateRecommender(), False),
    "random": (lambda encoder: RandomRecommender(), False),
}


@pytest.mark.parametrize("name", MODEL_KINDS)
def test_the_run_record_says_whether_the_model_reads_text(name, tiny_bert, tmp_path):
    make, text = MODEL_KINDS[name]
    record = RunRecord(tmp_path / "results.json", {}, persist=False)
    record.set_model(make(TextEncoder(str(tiny_bert))))
    assert record.data["model"] == {"text_encoder": text}


@pytest.mark.parametrize("name", MODELS)
def test_cold_items_get_distinct_scores(name, tiny_bert, small_split, tmp_path):
    model = build_model(name, "frozen", tiny_bert, tmp_path)
    model.fit(small_split, context(tmp_path))
    model.module.rerank = None  # lm_classifier: cross-encode every candidate (the others ignore it)
    cold = small_split.stage("test").segments["cold"]
    scores = model.score(torch.arange(3), "test")[:, cold]
    assert torch.isfinite(scores).all()
    assert (scores.std(dim=1) > 0).all()


@pytest.mark.parametrize(
    "name, strategy",
    [("text_tower", "lora"), ("text_tower", "frozen"), ("text_tower", "bottleneck"), ("fusion", "full_ft"),
     ("fusion", "ia3"), ("lm_classifier", "prefix")],
)
def test_save_then_load_reproduces_test_metrics(name, strategy, tiny_bert, small_split, tmp_path):
    model = build_model(name, strategy, tiny_bert, tmp_path)
    model.fit(small_split, context(tmp_path))
    expected = ranking_metrics(model, small_split)
    model.save(tmp_path / "model")
    assert model.cost_extras()["artifact_bytes"] > 0
    torch.manual_seed(123)  # a fresh build must not depend on the global seed to reload
    reloaded = build_model(name, strategy, tiny_bert, tmp_path)
    reloaded.load(tmp_path / "model", small_split)
    assert ranking_metrics(reloaded, small_split) == expected


def test_peft_adapter_is_saved_the_peft_way(tiny_bert, small_split, tmp_path):
    model = build_model("text_tower", "lora", tiny_bert, tmp_path)
    model.fit(small_split, context(tmp_path))
    model.save(tmp_path / "model")
    names = {p.name for p in (tmp_path / "model" / "encoder").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names


def test_reload_into_a_different_model_is_refused(tiny_bert, small_split, tmp_path):
    model = build_model("fusion", "frozen", tiny_bert, tmp_path)
    model.fit(small_split, context(tmp_path))
    model.save(tmp_path / "model")
    other = build_model("fusion", "frozen", tiny_bert, tmp_path, "model.module.combine=gate")
    with pytest.raises(ConfigError, match="does not fit"):
        other.load(tmp_path / "model", small_split)


def test_same_seed_same_scores(tiny_bert, small_split, tmp_path):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the spine seeds before it builds the model
        model = build_model("fusion", "lora", tiny_bert, tmp_path)
        model.fit(small_split, context(tmp_path))
        runs.append(model.score(torch.arange(10), "test"))
    assert torch.equal(runs[0], runs[1])


def test_frozen_text_tower_reuses_cached_embeddings(tiny_bert, small_split, tmp_path):
    first = build_model("text_tower", "frozen", tiny_bert, tmp_path)
    first.fit(small_split, context(tmp_path))
    cost, tokens = first.cost_extras(), first.module.encoder.tokenized(first.module.texts).lengths
    assert cost["cache_misses"] == 1 and cost["encoder_tokens_encoded"] == int(tokens.sum())  # every item text once
    assert cost["encoder_encode_tokens_per_second"] > 0
    second = build_model("text_tower", "frozen", tiny_bert, tmp_path)
    second.fit(small_split, context(tmp_path))
    cost = second.cost_extras()
    assert cost["cache_misses"] == 0 and cost["cache_hits"] >= 1 and "encoder_encode_tokens_per_second" not in cost
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 1


def test_user_text_needs_a_user_template(tiny_bert, small_split, tmp_path):
    model = build_model("text_tower", "frozen", tiny_bert, tmp_path, "model.module.user_text=true")
    model.fit(small_split, context(tmp_path))  # ml-100k's conftest dataset has a user template
    no_users = dataclasses.replace(small_split, dataset=dataclasses.replace(small_split.dataset, user_text=None))
    with pytest.raises(ConfigError, match="user_template"):
        model = build_model("text_tower", "frozen", tiny_bert, tmp_path, "model.module.user_text=true")
        model.fit(no_users, context(tmp_path))


@pytest.mark.parametrize("name", MODELS)
def test_models_need_item_text(name, tiny_bert, small_split, tmp_path):
    no_text = dataclasses.replace(small_split, dataset=dataclasses.replace(small_split.dataset, item_text=None))
    with pytest.raises(ConfigError, match="item_template"):
        build_model(name, "frozen", tiny_bert, tmp_path).fit(no_text, context(tmp_path))


def test_missing_template_field_is_a_config_error():
    from recexp.data import AtomicDataset

    with pytest.raises(ConfigError, match="movie_title"):
        AtomicDataset(name="ml-100k", item_template="{no_such_field}").load()


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("fusion", "model.module.combine=product", "combine"),
        ("fusion", "model.module.id_dropout=1.0", "id_dropout"),
        ("text_tower", "model.module.loss=hinge", "loss"),
        ("text_tower", "model.module.temperature=0", "temperature"),
        ("lm_classifier", "model.module.rerank=0", "rerank"),
        ("text_tower", "encoder.pooling=max", "pooling"),
    ],
)
def test_bad_model_settings(name, override, message, tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_model(name, "frozen", tiny_bert, tmp_path, override)


def test_fusion_starts_ids_from_saved_embeddings(tiny_bert, small_split, tmp_path):
    tokens = small_split.dataset.item_tokens
    vectors = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    np.savez(tmp_path / "bpr_items.npz", tokens=np.array(["[PAD]", tokens[5], tokens[7]]), embeddings=vectors)
    model = build_model("fusion", "frozen", tiny_bert, tmp_path, f"model.module.id_init={tmp_path / 'bpr_items.npz'}")
    model.module.prepare(small_split, torch.device("cpu"))
    assert torch.equal(model.module.item_id.weight[[5, 7]], torch.as_tensor(vectors[1:]))
    np.savez(tmp_path / "narrow.npz", tokens=np.array([tokens[5]]), embeddings=vectors[:1, :8])
    narrow = build_model("fusion", "frozen", tiny_bert, tmp_path, f"model.module.id_init={tmp_path / 'narrow.npz'}")
    with pytest.raises(ConfigError, match="model.dim"):
        narrow.module.prepare(small_split, torch.device("cpu"))


@pytest.mark.parametrize("name", MODELS)
def test_every_text_model_scores_labelled_pairs(name, tiny_bert, small_split, tmp_path):
    """Pairs get AUC/GAUC from every model; LogLoss only where the model outputs probabilities."""
    model = build_model(name, "frozen", tiny_bert, tmp_path)
    model.fit(small_split, context(tmp_path))
    metrics = ranking_metrics(model, small_split)["all"]
    assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["gauc"] <= 1
    assert ("logloss" in metrics) == (name == "lm_classifier")
    if name == "lm_classifier":
        pairs = small_split.pairs("test")
        probs = model.score_pairs(torch.as_tensor(pairs["user"].to_numpy()), torch.as_tensor(pairs["item"].to_numpy()), "test")
        assert ((probs > 0) & (probs < 1)).all()


def test_lm_classifier_regression_head_predicts_ratings(tiny_bert, small_split, tmp_path):
    model = build_model("lm_classifier", "frozen", tiny_bert, tmp_path, "model.module.head=regression", epochs=2)
    model.fit(small_split, context(tmp_path))
    metrics = ranking_metrics(model, small_split)["all"]
    assert model.pointwise_output == "rating" and "logloss" not in metrics
    assert 0 < metrics["mae"] <= metrics["rmse"] < 4  # ratings 1-5: a trained head is well inside the range


def test_effective_settings_name_what_the_fit_used(tiny_bert, small_split, tmp_path):
    model = build_model("text_tower", "frozen", tiny_bert, tmp_path, "trainer.lr=0.01", epochs=2)
    model.fit(small_split, context(tmp_path))
    used = model.effective()
    assert used["lr"] == 0.01 and used["max_epochs"] == 2 and used["epochs_run"] == 2
    assert used["batch_size"] == 512 and used["patience"] == 3  # the text tower's own defaults
    assert used["mixed_precision"] == "no" and used["grad_accum"] == 1 and used["warmup_ratio"] == 0.1


# --- the shared loop, on a toy recommender


class Batches(EpochData):
    """``n`` examples of item 0, handed out as whole batches."""

    def __init__(self, n):
        self.n = n

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.n

    def __getitems__(self, indices):
        return (torch.zeros(len(indices), dtype=torch.long),)


class Toy(torch.nn.Module):
    """One score per item; the loss pulls item 0 up. ``poison`` makes the loss NaN."""

    pointwise_output, score_pairs, sampling, loss = "score", None, None, "toy"

    def __init__(self, n_items, poison=False):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(n_items))
        self.poison = poison
        self.stale, self.cpu_threads, self.threads_seen, self.encoder = False, None, [], None

    def trainer_defaults(self):
        return dict(max_epochs=1, patience=1, batch_size=8, lr=0.1)

    def prepare(self, split, device):
        pass

    def train_data(self, split, seed):
        return Batches(8)

    def refresh(self):
        pass

    def forward(self, batch):
        self.threads_seen.append(torch.get_num_threads())
        value = -self.bias[batch[0]].mean()
        return value * float("nan") if self.poison else value

    def score(self, users, stage):
        return self.bias.detach().expand(len(users), -1)


@pytest.mark.parametrize("accum, steps", [(1, 4), (2, 2), (3, 2)])
def test_loop_counts_optimizer_steps_and_keeps_the_best_epoch(accum, steps, small_split, tmp_path):
    toy = Toy(small_split.n_items)
    config = TrainerConfig(max_epochs=3, patience=1, batch_size=8, lr=0.1, grad_accum=accum, warmup_ratio=0.1,
                           weight_decay=0.0, mixed_precision="no", progress=False)
    stats = fit(toy, small_split, context(tmp_path), config, Batches(32))
    assert stats.optimizer_steps == steps * stats.epochs
    assert stats.samples == 32 * stats.epochs
    assert 0 <= stats.best_epoch < stats.epochs


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_every_optimizer_step_sees_a_whole_gradient(accum, small_split, tmp_path, monkeypatch):
    """Each micro-batch's gradient is the same (-1 on item 0), so every step's gradient must be -1: also the last,
    shorter group of an epoch (4 micro-batches in groups of 3: 3 + 1), which accelerate alone would scale by 1/3."""
    seen, step = [], torch.optim.AdamW.step

    def spy(optimizer, *args, **kwargs):
        seen.append(float(optimizer.param_groups[0]["params"][0].grad[0]))
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    config = TrainerConfig(max_epochs=2, patience=2, batch_size=8, lr=0.1, grad_accum=accum, warmup_ratio=0.0,
                           weight_decay=0.0, mixed_precision="no", progress=False)
    fit(Toy(small_split.n_items), small_split, context(tmp_path), config, Batches(32))
    assert len(seen) == 2 * -(-4 // accum) and seen == pytest.approx([-1.0] * len(seen))


@pytest.mark.parametrize("keep_start", [False, True])
def test_a_failed_first_validation_is_beaten_by_the_next_number(keep_start, small_split, tmp_path, monkeypatch):
    """A NaN first check (e.g. no valid user had a positive yet) must not stand as the best for ever."""
    import recexp.train.loop

    script = iter([float("nan"), float("nan"), 0.3, 0.2, 0.1, 0.1])
    monkeypatch.setattr(recexp.train.loop, "validate", lambda *args: next(script))
    config = TrainerConfig(max_epochs=4, patience=2, batch_size=8, lr=0.1, warmup_ratio=0.0, weight_decay=0.0,
                           grad_accum=1, mixed_precision="no", progress=False)
    if not keep_start:
        next(script)  # no starting check: the first value is epoch 0's
    stats = fit(Toy(small_split.n_items), small_split, context(tmp_path), config, Batches(16), keep_start=keep_start)
    assert stats.best_epoch == 1 and stats.best_valid == 0.3 and stats.epochs == 4


def test_valid_every_validates_every_nth_epoch_and_patience_counts_epochs(small_split, tmp_path, monkeypatch):
    import recexp.train.loop

    script = iter([0.3, 0.2, 0.1, 0.4])
    monkeypatch.setattr(recexp.train.loop, "validate", lambda *args: next(script))
    config = TrainerConfig(max_epochs=8, patience=4, valid_every=2, batch_size=8, lr=0.1, warmup_ratio=0.0,
                           weight_decay=0.0, grad_accum=1, mixed_precision="no", progress=False)
    logger = RecordingLogger()
    stats = fit(Toy(small_split.n_items), small_split, context(tmp_path).with_logger(logger), config, Batches(16))
    # validated after epochs 1, 3 and 5; two misses of 2 epochs each use up a patience of 4 epochs
    assert stats.curve == [None, 0.3, None, 0.2, None, 0.1] and stats.epochs == 6 and stats.best_epoch == 1
    assert [("valid/ndcg@10" in row) for _, row in logger.rows] == [False, True] * 3
    assert next(script) == 0.4  # epoch 7 never ran


@pytest.mark.parametrize("spelling", ["NDCG@10", " ndcg@10", "ndcg@010"])
def test_valid_metric_has_one_spelling(spelling):
    """Per-user columns and logs are keyed by the canonical name (a multi-process validation looks it up)."""
    assert TrainerConfig(valid_metric=spelling).valid_metric == "ndcg@10"


def test_loop_runs_on_the_asked_threads_and_restores_them(small_split, tmp_path):
    model = TorchRecommender(Toy(small_split.n_items), TrainerConfig(progress=False), cpu_threads=2)
    before = torch.get_num_threads()
    model.fit(small_split, context(tmp_path))
    assert model.module.threads_seen == [2] and torch.get_num_threads() == before


def test_nan_loss_raises_training_error(small_split, tmp_path):
    model = TorchRecommender(Toy(small_split.n_items, poison=True), TrainerConfig(progress=False))
    with pytest.raises(TrainingError, match="trainer.lr"):
        model.fit(small_split, context(tmp_path))


@pytest.mark.parametrize(
    "bad",
    [{"max_epochs": 0}, {"max_epochs": -1}, {"patience": 0}, {"valid_every": 0}, {"valid_every": 3, "max_epochs": 2},
     {"grad_accum": 0}, {"lr": 0.0}, {"lr": float("inf")},
     {"batch_size": 0}, {"warmup_ratio": 1.0}, {"weight_decay": -1.0}, {"mixed_precision": "fp8"},
     {"max_epochs": 2.5}, {"valid_metric": "ndcg"}, {"valid_metric": "ndgc@10"}, {"valid_metric": "auc@10"}],
)
def test_bad_trainer_settings_fail_on_creation(bad):
    """Checked when the trainer is built, before any data is read or model trained."""
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=name if name != "valid_metric" else bad[name]):
        TrainerConfig(**bad)


def test_warmup_then_linear_decay():
    factor = warmup_then_decay(total_steps=10, warmup_ratio=0.2)
    assert [round(factor(s), 3) for s in range(11)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    held = warmup_then_decay(total_steps=10, warmup_ratio=0.2, constant=True)  # trainer.schedule=constant
    assert [held(s) for s in range(11)] == [0.5] + [1.0] * 10
    with pytest.raises(ConfigError, match="trainer.schedule='cosine' is not allowed"):
        TrainerConfig(schedule="cosine")


# --- acceptance on the real data and encoder


@pytest.mark.slow
def test_minilm_frozen_models_on_item_cold_start(cold_split, cache_dir, tmp_path):
    """Frozen all-MiniLM-L6-v2: the text tower beats popularity on cold items by far."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = ["model=text_tower", "strategy=frozen", f"cache_dir={cache_dir}", "progress=false"]
        cfg = compose("config", overrides=overrides)
    model = build(cfg.model, trainer=build(cfg.trainer))
    model.fit(cold_split, context(tmp_path))
    metrics = ranking_metrics(model, cold_split)
    assert metrics["cold"]["ndcg@10"] > 0.2  # popularity: about 0.07-0.08
    assert metrics["all"]["ndcg@10"] > 0.15


@pytest.mark.parametrize("progress", [False, True])
def test_progress_setting_also_governs_transformers_weight_bars(progress, tiny_bert, tmp_path, capfd):
    capfd.readouterr()
    model = build_model("text_tower", "full_ft", tiny_bert, tmp_path, f"progress={str(progress).lower()}")
    model.save(tmp_path / "saved")  # full fine-tuning writes the encoder with save_pretrained
    bars = capfd.readouterr().err
    assert ("Loading weights" in bars, "Writing model shards" in bars) == (progress, progress)
