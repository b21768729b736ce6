"""RecBole models behind recexp's Recommender contract, on the real ml-100k splits."""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CONF, ONE_EPOCH, RecordingLogger, fit
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recexp.errors import ConfigError, TrainingError
from recexp.evaluate import Evaluator
from recexp.interfaces import Dataset, FitContext, Recommender, Split, Stage
from recexp.models.random_scores import RandomRecommender
from recexp.models.recbole import RecBoleRecommender
from recexp.models.recbole.config import model_class
from recexp.models.recbole.files import augment_train, with_history, write_benchmark
from recexp.scenarios import LeaveOneOutScenario
from recexp.train import TrainerConfig

SHORT = TrainerConfig(max_epochs=2)
EVAL = Evaluator(ks=[10], metrics=["ndcg", "recall"])
# small sequential settings so one epoch on ml-100k takes seconds on a CPU
TINY_SEQ = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 1}


def ndcg(model: Recommender, split, stage: str = "test") -> dict[str, float]:
    return {seg: m["ndcg@10"] for seg, m in EVAL.evaluate(model, split, stage).metrics.items()}


@pytest.mark.parametrize("name", ["Pop", "ItemKNN", "BPR"])
@pytest.mark.parametrize("scenario", ["random", "cold_item"])
def test_general_model_fits_and_scores(name, scenario, request, tmp_path):
    split = request.getfixturevalue({"random": "random_split", "cold_item": "cold_split"}[scenario])
    model = RecBoleRecommender(name, trainer=SHORT)
    assert isinstance(model, Recommender)
    logger = fit(model, split, tmp_path)
    scores = model.score(torch.tensor([0, 5, 7]), "test")
    assert scores.shape == (3, split.n_items) and torch.isfinite(scores).all()
    metrics = ndcg(model, split)
    segments = set(split.stage("test").segments)
    expected = segments | {f"{seg}_full" for seg in segments - {"all"}}  # restricted and full tail views
    assert set(metrics) == expected and all(math.isfinite(v) for v in metrics.values())
    assert metrics["all"] > 0
    assert [step for step, _ in logger.rows] == ([0, 1] if name == "BPR" else [0])  # Pop, ItemKNN: one pass
    assert all(set(row) == {"train/loss", "valid/ndcg@10"} for _, row in logger.rows)
    trainable, total = model.parameter_counts()
    assert 0 < trainable <= total


def test_pop_beats_random_scores(random_split, tmp_path):
    pop, random = RecBoleRecommender("Pop"), RandomRecommender()
    fit(pop, random_split, tmp_path / "pop")
    fit(random, random_split, tmp_path / "random")
    assert ndcg(pop, random_split)["all"] > 3 * ndcg(random, random_split)["all"]


def test_scores_follow_recexp_item_ids(cold_split, tmp_path):
    """Pop scores exactly the items without training interactions (here: the cold items) with 0."""
    model = RecBoleRecommender("Pop")
    fit(model, cold_split, tmp_path)
    scores = model.score(torch.tensor([3]), "test")[0].numpy()
    trained = np.bincount(cold_split.train["item"], minlength=cold_split.n_items) > 0
    np.testing.assert_array_equal(scores > 0, trained)
    assert not trained[cold_split.stage("test").segments["cold"]].any()


@pytest.mark.parametrize("name", ["GRU4Rec", "SASRec"])
def test_sequential_model_scores_from_history(name, random_split, tmp_path):
    model = RecBoleRecommender(name, params=TINY_SEQ, trainer=ONE_EPOCH)
    logger = fit(model, random_split, tmp_path)
    assert len(logger.rows) == 1
    users = torch.tensor([0, 1, 2])
    valid, test = model.score(users, "valid"), model.score(users, "test")
    assert valid.shape == (3, random_split.n_items) and torch.isfinite(valid).all()
    assert not torch.allclose(valid, test)  # the test history adds the valid interactions
    items = torch.tensor([10, 0, 500])
    torch.testing.assert_close(model.score_pairs(users, items, "test"), test[torch.arange(3), items])
    assert math.isfinite(ndcg(model, random_split)["all"])


def test_model_without_full_sort_predict_scores_pointwise(random_split, tmp_path):
    model = RecBoleRecommender("NeuMF", trainer=ONE_EPOCH)
    fit(model, random_split, tmp_path)
    users, items = torch.tensor([4, 9]), torch.tensor([0, 17, 1500])
    scores = model.score(users, "test")
    assert scores.shape == (2, random_split.n_items) and torch.isfinite(scores).all()
    net = model._model
    with pytest.raises(NotImplementedError):
        net.full_sort_predict(None)
    from recbole.data.interaction import Interaction

    pairs = {net.USER_ID: model._user_ids[users].repeat_interleave(3), net.ITEM_ID: model._item_ids[items].repeat(2)}
    with torch.no_grad():
        expected = net.predict(Interaction(pairs)).view(2, 3)
    torch.testing.assert_close(scores[:, items], expected)
    pair_scores = model.score_pairs(users.repeat_interleave(3), items.repeat(2), "test")
    torch.testing.assert_close(pair_scores, expected.view(-1))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        RecBoleRecommender("NoSuchModel")
    assert "BPR" in str(err.value) and "SASRec" in str(err.value) and "LightGCN" in str(err.value)
    assert model_class("bpr").__name__ == "BPR"


@pytest.mark.parametrize(
    "key, value, refused_by",
    [
        ("batch_size", 0, "TrainerConfig"),
        ("lr", 0, "TrainerConfig"),
        ("max_epochs", -1, "TrainerConfig"),
        ("warmup_ratio", 0.2, "RecBole"),
        ("grad_accum", 4, "RecBole"),
        ("schedule", "linear", "RecBole"),
        ("mixed_precision", "bf16", "RecBole"),
        ("valid_metric", "auc", "RecBole"),
        ("valid_metric", "gini@10", "RecBole"),
    ],
)
def test_trainer_values_recbole_cannot_honour_are_refused_first(key, value, refused_by, random_split, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"trainer.{key}={value!r}")) as err:
        fit(RecBoleRecommender("BPR", trainer=TrainerConfig(**{key: value})), random_split, tmp_path / "run")
    if refused_by == "RecBole":
        assert "cannot be honoured by RecBole BPR" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_trainer_maps_to_recbole_keys():
    trainer = TrainerConfig(
        max_epochs=3, patience=2, batch_size=512, lr=0.01, weight_decay=1e-4, valid_metric="recall@20",
        warmup_ratio=0, grad_accum=1, mixed_precision="no",
    )
    assert RecBoleRecommender("BPR", trainer=trainer).trainer_values == {
        "epochs": 3,
        "stopping_step": 1,  # RecBole stops after stopping_step + 1 validations without improvement
        "train_batch_size": 512,
        "learning_rate": 0.01,
        "weight_decay": 1e-4,
        "metrics": ["Recall"],
        "topk": [20],
        "valid_metric": "Recall@20",
    }


def test_effective_reads_back_what_recbole_ran(random_split, tmp_path):
    model = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=2, patience=3))
    assert model.effective() == {}
    logger = fit(model, random_split, tmp_path)
    scores = [row["valid/ndcg@10"] for _, row in logger.rows]
    best = max(range(len(scores)), key=lambda epoch: (scores[epoch], epoch))  # RecBole: ties go to the later epoch
    assert model.effective() == {
        "max_epochs": 2,
        "patience": 3,
        "batch_size": 2048,  # RecBole's defaults where the trainer left None
        "lr": 0.001,
        "weight_decay": 0.0,
        "valid_metric": "ndcg@10",
        "valid_every": 1,
        "epochs_run": 2,
        "best_epoch": best,
    }


@pytest.mark.parametrize(("name", "params", "mask_history"), [("BPR", {}, True), ("SASRec", TINY_SEQ, False)])
def test_recbole_validates_through_recexp_as_its_own_full_sort_would(name, params, mask_history, random_split, ml100k,
                                                                      tmp_path, monkeypatch):
    """recexp's evaluator on the valid stage gives RecBole's own validation numbers (rounded as RecBole rounds), under
    RecBole's conventions (history masked for general models; for sequential ones unmasked, one target a user:
    RecBole ranks each valid interaction on its own, recexp each user's positives together), so early stopping keeps
    the same epoch."""
    import recexp.models.recbole.adapter as adapter

    split = LeaveOneOutScenario().build(ml100k, 0) if name == "SASRec" else random_split

    def fitted(folder: str) -> tuple[RecBoleRecommender, list[float]]:
        model, logger = RecBoleRecommender(name, params=params, trainer=TrainerConfig(max_epochs=4, patience=4)), RecordingLogger()
        model.fit(split, FitContext(logger, torch.device("cpu"), tmp_path / folder, seed=2020, progress=False,
                                    mask_history=mask_history))
        return model, [row["valid/ndcg@10"] for _, row in logger.rows]

    ours, curve = fitted("ours")
    monkeypatch.setattr(adapter, "validated_by_recexp", lambda trainer_class: trainer_class)  # RecBole's full sort
    theirs, their_curve = fitted("theirs")
    assert curve == their_curve and len(set(curve)) == 4
    assert ours.effective() == theirs.effective()
    users = torch.arange(split.n_users)
    torch.testing.assert_close(ours.score(users, "test"), theirs.score(users, "test"))


def test_recbole_validates_on_the_metric_its_params_name_and_a_failed_fit_keeps_the_last_model(random_split, tmp_path,
                                                                                                monkeypatch):
    params = {"valid_metric": "Recall@20", "metrics": ["Recall"], "topk": [20]}  # RecBole's own keys win over trainer
    model = RecBoleRecommender("BPR", params=params, trainer=TrainerConfig(max_epochs=1, patience=1))
    (_, row), = fit(model, random_split, tmp_path / "first").rows
    assert row["valid/recall@20"] == round(Evaluator().value(model, random_split, "valid", "recall@20"), 4)
    kept, scores = model._model, model.score(torch.arange(5), "test")

    def broken(*args, **kwargs):
        raise TrainingError("validation failed")

    monkeypatch.setattr(Evaluator, "value", broken)
    with pytest.raises(TrainingError, match="validation failed"):
        fit(model, random_split, tmp_path / "second")
    assert model._model is kept and torch.equal(model.score(torch.arange(5), "test"), scores)


@pytest.mark.parametrize("compiled", [True, False])
def test_validation_ranks_recboles_own_columns_as_recexps_reordered_scores(compiled, random_split, tmp_path, monkeypatch):
    """Validation ranks RecBole's score rows as RecBole orders its items (the compiled pass gathers them into
    recexp's order; torch.topk reads a reordered copy): the same lists and metrics as the reordered scores."""
    from recexp.evaluate import top
    from recexp.models.recbole.adapter import _InRecBoleOrder

    model = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=1, patience=1))
    fit(model, random_split, tmp_path)
    loaded = threading.Event()
    if compiled:
        top.load_compiled()
        loaded.set()
    monkeypatch.setattr(top, "_loaded", loaded)
    evaluator = Evaluator(ks=[10, 20], metrics=["ndcg", "recall", "mrr"], batch_size=100)
    reordered = evaluator.evaluate(model, random_split, "valid", segments=("all",))
    own = evaluator.evaluate(_InRecBoleOrder(model), random_split, "valid", segments=("all",),
                             item_columns=model._item_columns)
    assert own.metrics == reordered.metrics and np.array_equal(own.topk["all"], reordered.topk["all"])
    assert not torch.equal(model._item_columns, torch.arange(random_split.n_items) + 1)  # RecBole's order is its own
    with pytest.raises(ValueError, match="item_columns"):
        Evaluator(metrics=["auc"]).evaluate(_InRecBoleOrder(model), random_split, "valid", item_columns=model._item_columns)


def test_a_model_fitted_without_gradients_validates_its_one_epoch_whatever_valid_every(random_split, tmp_path):
    model = RecBoleRecommender("Pop", trainer=TrainerConfig(valid_every=3))
    assert len(fit(model, random_split, tmp_path).rows) == 1
    assert model.effective()["best_epoch"] == 0 and model.cost_extras()["artifact_bytes"] > 0


def test_recbole_valid_every_validates_every_nth_epoch_with_patience_in_epochs(random_split, tmp_path):
    trainer = TrainerConfig(max_epochs=4, patience=3, valid_every=2)
    assert RecBoleRecommender("BPR", trainer=trainer).trainer_values.items() >= {"eval_step": 2, "stopping_step": 1}.items()
    # RecBole's own patience (11 validations) becomes 11 epochs: 6 validations of 2 epochs
    assert RecBoleRecommender("BPR", trainer=TrainerConfig(valid_every=2)).trainer_values["stopping_step"] == 5
    model = RecBoleRecommender("BPR", trainer=trainer)
    logger = fit(model, random_split, tmp_path)
    assert [step for step, _ in logger.rows] == [1, 3]  # validated after the second and the fourth epoch
    assert model.effective()["valid_every"] == 2 and model.effective()["patience"] == 4  # 2 missed validations


def test_score_pairs_matches_full_ranking(random_split, tmp_path, monkeypatch):
    model = RecBoleRecommender("BPR", trainer=SHORT)
    fit(model, random_split, tmp_path)
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(random_split.n_users, (500,), generator=generator)
    items = torch.randint(random_split.n_items, (500,), generator=generator)
    expected = model.score(users, "valid")[torch.arange(500), items]
    torch.testing.assert_close(model.score_pairs(users, items, "valid"), expected, atol=1e-5, rtol=0)

    def no_predict(interaction):
        raise NotImplementedError

    monkeypatch.setattr(model._model, "predict", no_predict)  # models that only rank: read off score()
    torch.testing.assert_close(model.score_pairs(users, items, "valid"), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="valid, test"):
        model.score_pairs(users, items, "holdout")
    with pytest.raises(ConfigError, match="valid, test"):
        model.score(users, "holdout")


def test_the_best_epochs_checkpoint_is_written_once_when_the_fit_ends(random_split, tmp_path, monkeypatch):
    """RecBole writes its checkpoint at every improving epoch; recexp keeps it in memory and writes the last one."""
    import recexp.models.recbole.adapter as adapter
    from recexp.models.recbole import training

    written, scores, weights = [], iter([0.1, 0.3, 0.2, 0.25]), []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda state, file, **kw: (written.append(file), save(state, file, **kw)))
    model = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=4, patience=4))
    real = training.validated_by_recexp

    def recording(trainer_class):  # the weights each epoch validates, and a scripted validation score
        class Recording(real(trainer_class)):
            def _valid_epoch(self, valid_data, show_progress=False):
                weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
                score = next(scores)
                return score, {self.valid_metric: score}
        return Recording
    monkeypatch.setattr(adapter, "validated_by_recexp", recording)
    fit(model, random_split, tmp_path)
    assert model.effective()["best_epoch"] == 1 and written == [str(model._checkpoint)]
    state = torch.load(model._checkpoint, weights_only=False)
    assert state["epoch"] == 1 and state["best_valid_score"] == 0.3
    assert all(torch.equal(state["state_dict"][k], v) for k, v in weights[1].items())
    assert all(torch.equal(model._model.state_dict()[k], v) for k, v in weights[1].items())  # loaded back


def test_a_refit_that_saves_no_checkpoint_keeps_its_own_weights(random_split, tmp_path, monkeypatch):
    """RecBole names checkpoints by the second: a continual refit in the same second that never
    improves on validation must not load the previous fit's file as its best."""
    import recbole.trainer.trainer as recbole_trainer

    monkeypatch.setattr(recbole_trainer, "get_local_time", lambda: "same-second")
    model = RecBoleRecommender("BPR", trainer=TrainerConfig(max_epochs=1, patience=1))
    fit(model, random_split, tmp_path)
    first = {k: v.clone() for k, v in model._model.state_dict().items()}
    monkeypatch.setattr(Evaluator, "value", lambda *args, **kwargs: float("nan"))
    fit(model, random_split, tmp_path)  # continues from ``first``, trains one epoch, never validates better
    assert model.effective()["best_epoch"] == -1
    assert any(not torch.equal(first[k], v) for k, v in model._model.state_dict().items())


def test_diverging_loss_is_a_training_error(random_split, tmp_path):
    model = RecBoleRecommender("BPR", params={"learning_rate": 1e30}, trainer=TrainerConfig(max_epochs=3))
    with pytest.raises(TrainingError, match="diverged"):
        fit(model, random_split, tmp_path)


def test_recbole_writes_only_under_the_run_dir(random_split, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fit(RecBoleRecommender("Pop"), random_split, tmp_path / "run")
    assert list(cwd.iterdir()) == []
    written = {p.name for p in (tmp_path / "run" / "recbole").iterdir()}
    assert {"recexp", "checkpoints", "recbole.log", "log_tensorboard"} <= written


def test_fit_leaves_the_cwd_and_the_root_logger_alone(random_split, tmp_path, monkeypatch):
    def refuse(path):
        raise AssertionError(f"os.chdir({path!r}) called")

    monkeypatch.setattr(os, "chdir", refuse)
    root, recbole_logger = logging.getLogger(), logging.getLogger("recbole")
    before = (root.level, list(root.handlers), [h.level for h in root.handlers], list(recbole_logger.handlers))
    fit(RecBoleRecommender("Pop"), random_split, tmp_path)
    assert (root.level, list(root.handlers), [h.level for h in root.handlers], list(recbole_logger.handlers)) == before
    text = (tmp_path / "recbole" / "recbole.log").read_text()
    assert "epoch 0 training" in text and "train_batch_size" in text  # RecBole's trainer and data lines
    assert "\x1b[" not in text  # colour codes stripped


def test_concurrent_runs_keep_their_own_logs(random_split, tmp_path):
    errors = []

    def run(name: str) -> None:
        try:
            fit(RecBoleRecommender("Pop"), random_split, tmp_path / name)
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for mine, other in (("a", "b"), ("b", "a")):
        text = (tmp_path / mine / "recbole" / "recbole.log").read_text()
        assert str(tmp_path / mine / "recbole") in text and str(tmp_path / other / "recbole") not in text
        assert list((tmp_path / mine / "recbole" / "log_tensorboard").iterdir())


def test_benchmark_files_list_every_item_and_user(cold_split, tmp_path):
    write_benchmark(cold_split, tmp_path)
    items = pd.read_csv(tmp_path / "recexp.item", sep="\t")["item_id:token"]
    assert items.tolist() == list(range(cold_split.n_items))
    train = pd.read_csv(tmp_path / "recexp.train.inter", sep="\t")
    assert len(train) == len(cold_split.train)
    cold = set(cold_split.stage("test").segments["cold"])
    assert cold and not cold & set(train["item_id:token"])  # cold items are never trained on
    valid = pd.read_csv(tmp_path / "recexp.valid.inter", sep="\t")
    assert len(valid) == len(cold_split.positives("valid"))
    test = pd.read_csv(tmp_path / "recexp.test.inter", sep="\t")  # fixes RecBole's numbering of cold test items
    assert len(test) == len(cold_split.positives("test"))
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["recexp.item", "recexp.test.inter", "recexp.train.inter", "recexp.user", "recexp.valid.inter"]


def test_sequential_rows_are_prefixes_and_histories():
    train = pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [5, 3, 4, 7, 8], "timestamp": [3, 1, 2, 1, 2]})
    rows = augment_train(train, max_len=2)
    assert rows["item"].tolist() == [4, 5, 8]
    assert [list(x) for x in rows["item_list"]] == [[3], [3, 4], [7]]
    test = pd.DataFrame({"user": [0, 2], "item": [9, 9], "timestamp": [4, 4]})
    dataset = Dataset(name="toy", inter=pd.concat([train, test]), user_tokens=np.array(["a", "b", "c"], dtype=object),
                      item_tokens=np.array([str(i) for i in range(10)], dtype=object))
    split = Split(dataset, {"train": train, "test": test}, {"test": Stage(("train",), "test", np.arange(10))})
    rows = with_history(test, split, "test", max_len=2)
    assert rows["user"].tolist() == [0]  # user 2 has no history to predict from
    assert rows["item_list"].tolist() == [[4, 5]]


RECBOLE_CONFIGS = [p.stem for p in sorted((CONF / "model").glob("*.yaml")) if "RecBoleRecommender" in p.read_text()]


@pytest.mark.parametrize("option", RECBOLE_CONFIGS)
def test_model_config_builds(option):
    cfg = OmegaConf.load(CONF / "model" / f"{option}.yaml")
    if OmegaConf.is_missing(cfg, "name"):
        cfg.name = "MultiVAE"
    model = instantiate(cfg, trainer=TrainerConfig(max_epochs=1))
    assert isinstance(model, RecBoleRecommender) and isinstance(model.params, dict)
    assert isinstance(model.trainer, TrainerConfig) and model.trainer.max_epochs == 1


@pytest.mark.slow
def test_bpr_with_recbole_defaults_matches_published_ml100k(random_split, tmp_path):
    model = RecBoleRecommender("BPR", trainer=TrainerConfig())
    fit(model, random_split, tmp_path)
    value = ndcg(model, random_split)["all"]
    print(f"BPR test ndcg@10 = {value:.4f}")
    assert 0.277 <= value <= 0.292


@pytest.mark.slow
def test_lightgcn_completes(random_split, tmp_path):
    model = RecBoleRecommender("LightGCN", trainer=TrainerConfig(max_epochs=30))
    fit(model, random_split, tmp_path)
    assert ndcg(model, random_split)["all"] > ndcg_of_pop(random_split, tmp_path)


def ndcg_of_pop(split, tmp_path: Path) -> float:
    pop = RecBoleRecommender("Pop")
    fit(pop, split, tmp_path / "pop")
    return ndcg(pop, split)["all"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, params", [("BPR", {}), ("SASRec", TINY_SEQ), ("NeuMF", {})])
def test_fits_and_scores_on_cuda(name, params, random_split, tmp_path):
    model = RecBoleRecommender(name, params=params, trainer=ONE_EPOCH)
    model.fit(random_split, FitContext(RecordingLogger(), torch.device("cuda"), tmp_path, seed=2020, progress=False))
    scores = model.score(torch.arange(4, device="cuda"), "test")
    assert scores.device.type == "cuda" and scores.shape == (4, random_split.n_items)
    pairs = model.score_pairs(torch.arange(4, device="cuda"), torch.arange(4, device="cuda"), "test")
    torch.testing.assert_close(pairs, scores.diagonal(), atol=1e-4, rtol=1e-4)
    metrics = EVAL.evaluate(model, random_split, "test", "cuda").metrics
    assert math.isfinite(metrics["all"]["ndcg@10"])
