"""User cold-start, few-shot: scenario=tallrec (TALLRec's ML-100K protocol), scenario=cold_user and model=user_rate.

Bad input (K too large, a threshold leaving one class, a support set too large) is in ``test_bad_input.py``."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CONF, recexp
from sklearn.metrics import roc_auc_score

from recexp.data import ml100k_dir
from recexp.interfaces import FitContext
from recexp.models.histories import history_table, item_like_rates
from recexp.models.pairs.like_rates import UserRateRecommender
from recexp.scenarios import ColdUserScenario, TallRecScenario, build_or_load
from recexp.scenarios.artifact import load_split
from recexp.tracking import NullLogger


@pytest.fixture(scope="module")
def tallrec(ml100k, cache_dir):
    return build_or_load(ml100k, TallRecScenario(), 0, cache_dir)


@pytest.fixture(scope="module")
def cold_user(ml100k, cache_dir):
    return build_or_load(ml100k, ColdUserScenario(), 0, cache_dir)


def tallrec_reference() -> list[tuple]:
    """TALLRec's preprocess_movie.py restated on the shipped ml-100k.inter (same rows, same order as u.data):
    [(user, history items, history labels, item, label)] of the last 10,000 samples, raw tokens."""
    by_user: dict[str, list[tuple[str, int, str]]] = {}
    with open(ml100k_dir() / "ml-100k.inter") as lines:
        next(lines)
        for line in lines:
            user, item, rating, timestamp = line.rstrip("\n").split("\t")
            by_user.setdefault(user, []).append((item, int(float(rating) > 3), timestamp))
    samples = []
    for user, rows in by_user.items():
        rows = sorted(rows, key=lambda row: row[2])
        for i in range(10, len(rows)):
            history = rows[i - 10 : i]
            samples.append((user, [h[0] for h in history], [h[1] for h in history], rows[i][0], rows[i][1]))
    return samples[-10000:]


def as_samples(split, part: str) -> list[tuple]:
    users, items = split.dataset.user_tokens, split.dataset.item_tokens
    targets = split.parts[part]
    history = split.parts[f"{part}_history"]
    out = []
    for row, (sample, rows) in zip(targets.itertuples(), history.groupby("sample", sort=True)):
        assert sample == row.sample and len(rows) == 10 and (rows["user"] == row.user).all()
        out.append((users[row.user], list(items[rows["item"]]), rows["label"].astype(int).tolist(), items[row.item], int(row.label)))
    return out


def test_tallrec_matches_the_reference_sample_for_sample(tallrec):
    reference = tallrec_reference()
    assert as_samples(tallrec, "train") == reference[:8000]
    assert as_samples(tallrec, "valid") == reference[8000:9000]
    assert as_samples(tallrec, "test") == reference[9000:]


def test_tallrec_facts(tallrec):
    info = tallrec.info
    assert info["users"] == {"train": 80, "valid": 14, "test": 16}
    assert info["test_users_in_train"] == 0
    assert not set(tallrec.parts["test"]["user"]) & set(tallrec.parts["train"]["user"])
    assert info["test_positive_rate"] == pytest.approx(0.528, abs=1e-9)
    assert tallrec.counts()["pairs_test"] == 1000 and tallrec.counts()["test_history"] == 10000
    for stage in ("valid", "test"):
        spec = tallrec.stage(stage)
        assert spec.history == (f"{stage}_history",) and spec.pairs == stage and spec.positives is None
    assert tallrec.parts["test"]["sample"].tolist() == list(range(9000, 10000))


def test_tallrec_artifact_lists_samples_with_raw_ids(tallrec, ml100k):
    test = pd.read_csv(tallrec.path / "test.inter", sep="\t", dtype=str)
    assert list(test.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "label:float", "sample:token"]
    assert (test["user_id:token"] == ml100k.user_tokens[tallrec.parts["test"]["user"]]).all()
    again = load_split(tallrec.path, ml100k)
    for name, frame in tallrec.parts.items():
        pd.testing.assert_frame_equal(again.parts[name], frame, check_dtype=False)
    assert json.loads((tallrec.path / "split.json").read_text())["info"]["users"]["test"] == 16


def test_tallrec_shots_draw_k_training_samples_with_the_seed(ml100k):
    full = TallRecScenario().build(ml100k, 0)
    few = TallRecScenario(shots=16).build(ml100k, 0)
    other = TallRecScenario(shots=16).build(ml100k, 1)
    assert len(few.train) == 16 and len(few.parts["train_history"]) == 160
    assert set(few.train["sample"]) <= set(full.train["sample"])
    assert set(few.train["sample"]) != set(other.train["sample"])
    assert TallRecScenario(shots=16).build(ml100k, 0).train.equals(few.train)
    pd.testing.assert_frame_equal(few.parts["test"], full.parts["test"])


def test_cold_user_divides_users_and_cuts_support_by_time(cold_user):
    parts = cold_user.parts
    train_users = set(parts["train"]["user"])
    for stage in ("valid", "test"):
        support, query = parts[f"{stage}_support"], parts[stage]
        assert not train_users & set(query["user"]) and set(support["user"]) == set(query["user"])
        assert (support.groupby("user").size() == 5).all()
        last_support = support.groupby("user")["timestamp"].max()
        first_query = query.groupby("user")["timestamp"].min()
        assert (last_support <= first_query.loc[last_support.index]).all()
        assert set(query["label"]) == {0.0, 1.0} and (query["label"] == (query["rating"] >= 4)).all()
        spec = cold_user.stage(stage)
        assert spec.history == ("train", f"{stage}_support") and spec.positives == stage and spec.pairs == stage
    assert not set(parts["valid"]["user"]) & set(parts["test"]["user"])
    assert sum(cold_user.info["users"].values()) == cold_user.n_users


def test_cold_user_shots(ml100k):
    few = ColdUserScenario(shots=64).build(ml100k, 3)
    assert len(few.train) == 64 and few.info["train_interactions_used"] == 64


def fitted(split) -> UserRateRecommender:
    model = UserRateRecommender()
    model.fit(split, FitContext(NullLogger(), torch.device("cpu"), Path("."), 0, progress=False))
    return model


def test_user_rate_reads_each_sample_history(tallrec):
    model = fitted(tallrec)
    test, history = tallrec.parts["test"], tallrec.parts["test_history"]
    scores = model.score_pairs(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()), "test")
    expected = history.groupby("sample")["label"].mean().loc[test["sample"]].to_numpy()
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    assert model.parameter_counts() == (0, 0)


def test_user_rate_reads_the_support_set(cold_user):
    model = fitted(cold_user)
    support = cold_user.parts["test_support"]
    users = np.unique(support["user"])
    expected = support.groupby("user")["label"].mean().loc[users].to_numpy()
    ranked = model.score(torch.tensor(users), "test")
    np.testing.assert_allclose(ranked[:, 0].numpy(), expected, rtol=1e-6)
    assert (ranked == ranked[:, :1]).all()


@pytest.mark.subprocess
def test_tallrec_run_saves_scored_test_pairs(tmp_path):
    done = recexp("scenario=tallrec", "scenario.shots=256", "model=user_rate", "seed=0", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    pairs = pd.read_csv(tmp_path / "run" / "pairs_test.csv.gz", dtype={"user_id": str, "item_id": str})
    assert list(pairs.columns) == ["user_id", "item_id", "label", "score"] and len(pairs) == 1000
    assert roc_auc_score(pairs["label"], pairs["score"]) == pytest.approx(record["metrics"]["test"]["auc"], abs=1e-12)
    assert record["metrics"]["test"]["auc"] > 0.7


def zero_shot(tiny_bert, split, cache_dir):
    from hydra import compose, initialize_config_dir

    from recexp.config import build

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=text_zero_shot", f"cache_dir={cache_dir}",
                                           f"encoder.name_or_path={tiny_bert}"])
    model = build(cfg.model, trainer=build(cfg.trainer))
    model.fit(split, FitContext(NullLogger(), torch.device("cpu"), Path("."), 0, progress=False))
    return model


def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def test_item_prior_on_a_holdout_split_comes_from_the_ratings(cold_split):
    """A holdout split labels only valid and test; the prior then reads train as the classifier trains on it."""
    from recexp.models.histories import item_prior_logits

    train = cold_split.train
    liked = (train["rating"] >= 4).astype(float)
    overall = liked.mean()
    sums = np.bincount(train["item"], weights=liked, minlength=cold_split.n_items)
    counts = np.bincount(train["item"], minlength=cold_split.n_items)
    rates = (sums + 5 * overall) / (counts + 5)
    expected = np.log(rates / (1 - rates)) - np.log(overall / (1 - overall))
    got = item_prior_logits(cold_split, 4.0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got != 0).sum() > 1000 and not item_prior_logits(cold_split, None).any()


@pytest.mark.usefixtures("one_thread")
def test_text_zero_shot_is_liked_minus_disliked_cosine(tiny_bert, tallrec, cold_user, tmp_path):
    model = zero_shot(tiny_bert, tallrec, tmp_path)
    items = model.encoder.embed(list(tallrec.dataset.item_text)).numpy()
    test, history = tallrec.parts["test"].iloc[:5], tallrec.parts["test_history"]
    scores = model.score_pairs(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()), "test").numpy()
    for row, score in zip(test.itertuples(), scores):
        rows = history[history["sample"] == row.sample]
        liked, disliked = rows[rows["label"] == 1]["item"], rows[rows["label"] == 0]["item"]
        target = unit(items[row.item])
        expected = sum(sign * float(target @ unit(unit_rows.mean(0))) if len(ids) else 0.0
                       for sign, ids in ((1, liked), (-1, disliked))
                       for unit_rows in [np.stack([unit(items[i]) for i in ids]) if len(ids) else None])
        assert score == pytest.approx(expected, abs=1e-5)
    assert model.parameter_counts()[0] == 0
    cold = zero_shot(tiny_bert, cold_user, tmp_path)
    users = torch.tensor(np.unique(cold_user.parts["test"]["user"])[:4])
    ranked = cold.score(users, "test")
    pairs = cold.score_pairs(users, torch.zeros(4, dtype=torch.long), "test")
    np.testing.assert_allclose(ranked[:, 0].numpy(), pairs.numpy(), rtol=1e-5, atol=1e-6)


def renamed_histories(split):
    """``split`` with its sample-history parts under other names (``own_*``), which ``Split.histories`` declares."""
    new = {history: f"own_{history}" for history in split.histories.values()}
    return dataclasses.replace(
        split,
        parts={new.get(name, name): frame for name, frame in split.parts.items()},
        stages={name: dataclasses.replace(stage, history=tuple(new.get(n, n) for n in stage.history))
                for name, stage in split.stages.items()},
        histories={part: new[history] for part, history in split.histories.items()},
    )


def scored_pairs(split) -> tuple[torch.Tensor, torch.Tensor, str]:
    pairs = split.pairs("test")
    return torch.tensor(pairs["user"].to_numpy()), torch.tensor(pairs["item"].to_numpy()), "test"


def table_arrays(table) -> list:
    return [table.items.numpy(), table.labels.numpy(), sorted((table.by_pair or {}).items())]


SAMPLE_READERS = {  # what a model reads of a tallrec split, as plain values
    "history_table_train": lambda split, bert, tmp: table_arrays(history_table(split, "train", 10, None)),
    "history_table_test": lambda split, bert, tmp: table_arrays(history_table(split, "test", 10, None)),
    "item_like_rates": lambda split, bert, tmp: [item_like_rates(split, 5.0)[0]],
    "user_rate": lambda split, bert, tmp: [fitted(split).score_pairs(*scored_pairs(split)).numpy()],
    "text_zero_shot": lambda split, bert, tmp: [zero_shot(bert, split, tmp).score_pairs(*scored_pairs(split)).numpy()],
}


def same(first: list, second: list) -> bool:
    return all(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)) for a, b in zip(first, second))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("reader", SAMPLE_READERS.values(), ids=SAMPLE_READERS)
def test_models_find_sample_histories_where_the_split_names_them(reader, tallrec, tiny_bert, tmp_path):
    """Models follow ``Split.histories``, not part names: renamed parts read the same; undeclared ones read per user."""
    expected = reader(tallrec, tiny_bert, tmp_path)
    assert same(reader(renamed_histories(tallrec), tiny_bert, tmp_path), expected)
    assert not same(reader(dataclasses.replace(tallrec, histories={}), tiny_bert, tmp_path), expected)


def test_tallrec_config_reads_auc_where_there_is_no_ranking():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["scenario=tallrec"])
        chosen = compose("config", overrides=["scenario=tallrec", "trainer.valid_metric=gauc", "objective=valid/gauc"])
    assert (cfg.objective, cfg.trainer.valid_metric, cfg.scenario.shots) == ("valid/auc", "auc", None)
    assert (chosen.objective, chosen.trainer.valid_metric) == ("valid/gauc", "gauc")


def test_history_table_rows_are_each_pairs_earlier_interactions(tallrec, cold_user):
    from recexp.models.histories import history_table

    table = history_table(tallrec, "test", 10, None)
    test, history = tallrec.parts["test"], tallrec.parts["test_history"]
    rows = table.rows(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()))
    items, labels = table.gather(rows)
    for n in (0, 123, 999):
        own = history[history["sample"] == test["sample"].iloc[n]]
        assert items[n].tolist() == own["item"].tolist()[::-1] and labels[n].tolist() == own["label"].tolist()[::-1]
    train = history_table(cold_user, "train", 3, 4.0)
    ordered = cold_user.train.iloc[np.lexsort((cold_user.train["timestamp"], cold_user.train["user"]))]
    user = ordered[ordered["user"] == ordered["user"].iloc[0]]
    for position in range(4):
        earlier = user["item"].tolist()[:position][::-1][:3]
        assert train.items[user.index[position]].tolist() == earlier + [-1] * (3 - len(earlier))
    support = cold_user.parts["test_support"]
    person = int(support["user"].iloc[0])
    newest = support[support["user"] == person].sort_values("timestamp", kind="stable").iloc[::-1]  # ties: later rows newer
    stage = history_table(cold_user, "test", 10, 4.0)
    assert stage.by_pair is None
    assert stage.items[person].tolist()[: len(newest)] == newest["item"].tolist()
    assert stage.labels[person].tolist()[: len(newest)] == newest["label"].tolist()


def test_history_labels_are_the_scenarios_when_the_model_threshold_differs(ml100k):
    """A stage reading train + support keeps the support's labels (rating >= 3 here), not the model's rule (>= 4)."""
    from recexp.models.histories import history_table, like_labels

    split = ColdUserScenario(label_threshold=3).build(ml100k, 0)
    support = split.parts["test_support"]
    assert split.history("test")["label"].notna().all()
    table = history_table(split, "test", 10, 4.0)
    users = np.unique(support["user"].to_numpy())
    items, labels = table.gather(torch.as_tensor(users))
    seen = items >= 0
    own = support.groupby("user")["label"].mean().reindex(users).to_numpy()
    shown = (labels * seen).sum(1) / seen.sum(1)
    assert np.allclose(shown.numpy(), own)  # every support interaction is in its row (fewer than 10 each)
    assert (support["rating"] == 3).any() and float(labels[seen].mean()) == pytest.approx(float(support["label"].mean()))
    mixed = pd.DataFrame({"rating": [1.0, 5.0, 5.0, np.nan], "label": [1.0, np.nan, 0.0, np.nan]})
    assert like_labels(mixed, 4.0).tolist() == [1.0, 1.0, 0.0, 1.0]  # row by row: label, else rating, else 1


def test_item_rate_is_the_shrunk_training_like_rate(tallrec):
    from recexp.models.pairs.like_rates import ItemRateRecommender

    model = ItemRateRecommender(prior_weight=5)
    model.fit(tallrec, None)
    seen = pd.concat([tallrec.parts["train"], tallrec.parts["train_history"]])
    prior, item = seen["label"].mean(), int(seen["item"].value_counts().index[0])
    rows = seen[seen["item"] == item]
    expected = (rows["label"].sum() + 5 * prior) / (len(rows) + 5)
    assert model.score_pairs(torch.tensor([0]), torch.tensor([item]), "test").item() == pytest.approx(expected, rel=1e-6)
    never = np.setdiff1d(np.arange(tallrec.n_items), seen["item"].unique())[0]
    assert model.score_pairs(torch.tensor([0]), torch.tensor([never]), "test").item() == pytest.approx(prior, rel=1e-6)


def pair_model(split, **settings):
    from recexp.models.pairs.classifier import PairClassifier

    model = PairClassifier(**settings)
    model.prepare(split, torch.device("cpu"))
    return model.eval()


def test_pair_classifier_fm_is_a_factorisation_machine_over_three_fields(tallrec):
    torch.manual_seed(0)
    model = pair_model(tallrec, inputs="ids", reader="fm", dim=4, rate_prior=False, item_prior=False, dropout=0.0)
    for table in list(model.fields.values()) + list(model.linear.values()):
        torch.nn.init.normal_(table["ids"].weight if isinstance(table, torch.nn.ModuleDict) else table.weight)
    test = tallrec.parts["test"].iloc[:3]
    scores = model.score_pairs(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()), "test")
    table = model.tables["test"]
    for n, row in enumerate(test.itertuples()):
        items, labels = table.gather(table.rows(torch.tensor([row.user]), torch.tensor([row.item])))
        features = [("target", row.item, 1.0)]
        for field, side in (("liked", 1.0), ("disliked", 0.0)):
            chosen = [int(i) for i, y in zip(items[0], labels[0]) if i >= 0 and y == side]
            features += [(field, i, 1.0 / len(chosen)) for i in chosen]
        vectors = [model.fields[f]["ids"].weight[i] * x for f, i, x in features]
        linear = sum(model.linear[f].weight[i, 0] * x for f, i, x in features)
        pairwise = sum(float((vectors[a] @ vectors[b]).detach()) for a in range(len(vectors)) for b in range(a + 1, len(vectors)))
        assert torch.logit(scores[n]).item() == pytest.approx(float(model.bias + linear) + pairwise, abs=1e-4)


def test_pair_classifier_ranks_what_it_scores_as_pairs(cold_user):
    for reader in ("fm", "gru", "mlp"):
        torch.manual_seed(0)
        model = pair_model(cold_user, inputs="ids", reader=reader, dim=8)
        users = torch.tensor(np.unique(cold_user.parts["test"]["user"])[:3])
        ranked = model.score(users, "test")
        items = torch.tensor([5, 70, 900])
        pairs = model.score_pairs(users, items, "test")
        np.testing.assert_allclose(torch.sigmoid(ranked[torch.arange(3), items]).numpy(), pairs.numpy(), rtol=1e-5)


def test_pair_classifier_starts_from_the_like_rates(tallrec):
    from recexp.models.histories import item_prior_logits

    model = pair_model(tallrec, inputs="ids", reader="mlp", dim=4)
    for layer in model.mlp:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    test, history = tallrec.parts["test"], tallrec.parts["test_history"]
    scores = model.score_pairs(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()), "test")
    liked = history.groupby("sample")["label"].agg(["sum", "count"]).loc[test["sample"]].to_numpy()
    user_logit = np.log((liked[:, 0] + 1) / (liked[:, 1] - liked[:, 0] + 1))
    expected = 1 / (1 + np.exp(-(user_logit + item_prior_logits(tallrec, 4.0).numpy()[test["item"].to_numpy()])))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_lm_classifier_reads_each_samples_labelled_history(tiny_bert, tallrec):
    from recexp.models.text.encoder import TextEncoder
    from recexp.models.text.lm_classifier import LMClassifier
    from recexp.strategies import Frozen

    model = LMClassifier(TextEncoder(str(tiny_bert), max_length=32), Frozen(), item_prior=False)
    model.prepare(tallrec, torch.device("cpu"))
    seen = []
    model.encoder.forward = lambda texts, pairs=None: seen.extend(zip(texts, pairs)) or torch.zeros(len(texts), model.encoder.dim)
    test, history = tallrec.parts["test"].iloc[:2], tallrec.parts["test_history"]
    scores = model.score_pairs(torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy()), "test")
    texts, titles = np.asarray(tallrec.dataset.item_text), np.asarray(tallrec.dataset.item_title)
    for (prompt, target), row, score in zip(seen, test.itertuples(), scores):
        own = history[history["sample"] == row.sample].iloc[::-1]
        liked, disliked = own[own["label"] == 1]["item"], own[own["label"] == 0]["item"]
        assert prompt == f"Liked: {'; '.join(titles[liked])}. Disliked: {'; '.join(titles[disliked]) or 'none'}."
        assert target == texts[row.item]
        rate = (len(liked) + 1) / (len(own) + 2)
        assert torch.logit(score).item() == pytest.approx(float(model.head.bias) + np.log(rate / (1 - rate)), abs=1e-5)


@pytest.mark.subprocess
@pytest.mark.parametrize("model, floor", [("item_rate", 0.55), ("id_gru", 0.7), ("text_head", 0.7)])
def test_fewshot_arms_run_on_tallrec(model, floor, tmp_path):
    done = recexp("scenario=tallrec", "scenario.shots=64", f"model={model}", "seed=1", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    pairs = pd.read_csv(tmp_path / "run" / "pairs_test.csv.gz")
    assert record["metrics"]["test"]["auc"] == pytest.approx(roc_auc_score(pairs["label"], pairs["score"]), abs=1e-12)
    assert record["metrics"]["test"]["auc"] > floor
