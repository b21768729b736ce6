"""The evaluator: hand-computed metrics, masking, segments, ties, pointwise metrics against
scikit-learn, the metric registry, and agreement with RecBole's metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recexp.errors import ConfigError
from recexp.evaluate import Evaluator
from recexp.evaluate.metrics import (
    METRICS,
    ListContext,
    aplt,
    average_popularity,
    gini_index,
    item_coverage,
    parse_metric,
    register,
)
from recexp.interfaces import Dataset
from recexp.scenarios.common import holdout_split


class FixedScores:
    def __init__(self, scores):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score(self, users, stage):
        return self.scores[users]


def frame(pairs, ratings=None):
    users, items = zip(*pairs) if pairs else ((), ())
    return pd.DataFrame({"user": users, "item": items, "rating": 1.0 if ratings is None else ratings, "timestamp": 0.0})


def tiny_split(train, valid, test, n_users=2, n_items=6, segments=None, test_ratings=None, threshold=None):
    dataset = Dataset(
        name="tiny",
        inter=frame(train + valid + test),
        user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object),
    )
    everything = np.arange(n_items)
    segs = segments or {"all": everything, "head": np.array([0, 1]), "tail": np.arange(2, n_items)}
    return holdout_split(
        dataset, frame(train), frame(valid, 5.0 if threshold else None), frame(test, test_ratings),
        {"valid": everything, "test": everything}, {"valid": segs, "test": segs}, threshold,
    )


def test_hand_computed_metrics():
    # user 0 trained on item 0; test positives {2, 4}. Scores rank items 5,0,2,3,4,1 -> item 0 masked
    # -> ranking 5, 2, 3, 4, 1 : hits at ranks 2 and 4.
    split = tiny_split(train=[(0, 0), (1, 1)], valid=[(0, 3), (1, 3)], test=[(0, 2), (0, 4)])
    scores = [[5, 0, 4, 3, 2.5, 6], [0] * 6]
    result = Evaluator(ks=[1, 3, 5]).evaluate(FixedScores(scores), split, "test")
    m = result.metrics["all"]
    # ranking at test also masks valid item 3 -> 5, 2, 4, 1: hits at ranks 2 and 3
    assert m["hit@1"] == 0 and m["hit@3"] == 1
    assert m["recall@3"] == pytest.approx(1.0) and m["precision@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx(0.5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / idcg)
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["n_users"] == 1  # user 1 has no test positives
    assert result.topk["all"][0].tolist() == [5, 2, 4, 1, -1]  # only 4 rankable items remain
    # popularity of the top-3 items 5, 2, 4 in training is 0; item 1 has 1
    assert m["averagepopularity@5"] == pytest.approx(1 / 4)
    assert m["aplt@3"] == pytest.approx(1.0)  # items 5, 2, 4 are all outside head {0, 1}
    assert m["itemcoverage@3"] == pytest.approx(3 / 6)


def test_segments_restrict_ranking_and_positives():
    split = tiny_split(train=[(0, 0)], valid=[], test=[(0, 2), (0, 4)],
                       segments={"all": np.arange(6), "cold": np.array([3, 4])})
    scores = [[0, 0, 9, 8, 1, 7]]
    m = Evaluator(ks=[1]).evaluate(FixedScores(scores * 2), split, "test").metrics
    assert m["all"]["hit@1"] == 1  # item 2 tops the full ranking
    assert m["cold"]["hit@1"] == 0 and m["cold"]["recall@1"] == 0  # ranking {3, 4}: 3 first, positive is 4
    result = Evaluator(ks=[2]).evaluate(FixedScores(scores * 2), split, "test")
    assert result.metrics["cold"]["recall@2"] == 1.0
    assert set(result.topk["cold"][0]) == {3, 4}


def test_constant_scores_rank_randomly_not_by_id(cold_split):
    """Ties are broken by a random item order, so a constant scorer is no better than chance."""
    constant = FixedScores(torch.zeros(cold_split.n_users, cold_split.n_items))
    ranks = [Evaluator(ks=[10], tie_seed=s).evaluate(constant, cold_split, "test").topk["cold"][0] for s in (0, 1)]
    assert not np.array_equal(ranks[0], ranks[1])
    assert not np.array_equal(np.sort(ranks[0]), ranks[0])  # not in id order


def test_per_user_values_average_to_reported_metrics(random_split):
    generator = torch.Generator().manual_seed(0)
    model = FixedScores(torch.rand(random_split.n_users, random_split.n_items, generator=generator))
    result = Evaluator().evaluate(model, random_split, "test")
    for segment, metrics in result.metrics.items():
        rows = result.per_user[result.per_user["segment"] == segment]
        assert len(rows) == metrics["n_users"]
        for key in ("ndcg@10", "recall@20", "map@5", "aplt@10", "averagepopularity@10"):
            if key not in metrics:  # list metrics are read off full lists only, not restricted segments
                assert segment in ("head", "tail") and key.startswith(("aplt", "averagepopularity"))
                continue
            assert rows[key].mean() == pytest.approx(metrics[key], abs=1e-12)


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown evaluator metrics \\['ndgc'\\]"):
        Evaluator(metrics=["ndgc"])


@pytest.fixture(scope="module")
def recbole_metrics():
    from recexp.models.recbole_compat import apply

    apply()
    from recbole.evaluator import metrics

    return metrics


def ranked_lists(seed, users=200, k=20, n_items=300):
    rng = np.random.default_rng(seed)
    pos_len = rng.integers(1, 40, users)
    hits = rng.random((users, k)) < rng.random((users, 1)) * 0.6
    hits &= np.cumsum(hits, axis=1) <= pos_len[:, None]  # never more hits than positives
    topk = np.stack([rng.choice(n_items, k, replace=False) for _ in range(users)])
    return hits, pos_len, topk


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "name, recbole_class, needs_pos_len",
    [("recall", "Recall", True), ("precision", "Precision", False), ("hit", "Hit", False),
     ("mrr", "MRR", False), ("ndcg", "NDCG", True), ("map", "MAP", True)],
)
def test_accuracy_agrees_with_recbole(recbole_metrics, seed, name, recbole_class, needs_pos_len):
    hits, pos_len, _ = ranked_lists(seed)
    config = {"topk": [1, 5, 10, 20], "metric_decimal_place": 12}
    metric = getattr(recbole_metrics, recbole_class)(config)
    theirs = metric.metric_info(hits, pos_len) if needs_pos_len else metric.metric_info(hits)  # [U, K]
    for k in config["topk"]:
        ours = METRICS[name].fn(torch.as_tensor(hits), torch.as_tensor(pos_len, dtype=torch.float64), k).numpy()
        np.testing.assert_allclose(ours, theirs[:, k - 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_beyond_accuracy_agrees_with_recbole(recbole_metrics, seed):
    _, _, topk = ranked_lists(seed)
    n_items = 300
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, n_items)
    config = {"topk": [5, 20], "metric_decimal_place": 12, "tail_ratio": 10}
    pop = recbole_metrics.AveragePopularity(config)
    their_pop = pop.metric_info(pop.get_pop(topk, dict(enumerate(counts))))
    tail = recbole_metrics.TailPercentage(config)
    their_tail = tail.metric_info(tail.get_tail(topk, dict(enumerate(counts))))
    for k in config["topk"]:
        context = ListContext(popularity=torch.as_tensor(counts), is_tail=torch.as_tensor(counts <= 10))
        ours_pop = average_popularity(torch.as_tensor(topk), context, k).numpy()
        np.testing.assert_allclose(ours_pop, their_pop[:, k - 1], atol=1e-6)
        ours_tail = aplt(torch.as_tensor(topk), context, k).numpy()
        np.testing.assert_allclose(ours_tail, their_tail[:, k - 1], atol=1e-6)
        coverage = recbole_metrics.ItemCoverage(config).get_coverage(topk[:, :k], n_items)
        assert item_coverage(topk[:, :k], n_items) == pytest.approx(coverage, abs=1e-6)
        gini = recbole_metrics.GiniIndex(config).get_gini(topk[:, :k], n_items)
        assert gini_index(topk[:, :k], n_items) == pytest.approx(gini, abs=1e-6)


# --- pointwise metrics on labelled pairs


class PairScores(FixedScores):
    """Scores read off a full matrix; ``pointwise_output`` says what they mean."""

    def __init__(self, scores, output="score"):
        super().__init__(scores)
        self.pointwise_output = output


def rated_split(seed, n_users=30, n_items=40, per_user=12):
    rng = np.random.default_rng(seed)
    pairs = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False)]
    ratings = rng.integers(1, 6, len(pairs)).astype(float)
    segments = {"all": np.arange(n_items), "head": np.arange(10), "tail": np.arange(10, n_items)}
    return tiny_split([(0, 0)], [(0, 1)], pairs, n_users, n_items, segments, ratings, threshold=4.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pointwise_metrics_agree_with_scikit_learn(seed):
    from sklearn.metrics import log_loss, roc_auc_score

    split = rated_split(seed)
    rng = np.random.default_rng(seed + 10)
    probs = rng.random((split.n_users, split.n_items)).astype(np.float32).astype(np.float64)  # a model scores in float32
    probs[:, :5] = 0.5  # ties share their mean rank
    result = Evaluator(ks=[5]).evaluate(PairScores(probs, "probability"), split, "test")
    pairs = split.pairs("test")
    labels, scores = pairs["label"].to_numpy(), probs[pairs["user"], pairs["item"]]
    assert result.metrics["all"]["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert result.metrics["all"]["logloss"] == pytest.approx(log_loss(labels, scores), abs=1e-9)
    per_user = [roc_auc_score(labels[g], scores[g]) for _, g in pairs.groupby("user").indices.items()
                if 0 < labels[g].sum() < len(g)]
    assert result.metrics["all"]["gauc"] == pytest.approx(np.mean(per_user), abs=1e-9)
    tail = np.isin(pairs["item"].to_numpy(), split.stage("test").segments["tail"])
    assert result.metrics["tail"]["auc"] == pytest.approx(roc_auc_score(labels[tail], scores[tail]), abs=1e-9)
    rows = result.per_user[result.per_user["segment"] == "all"]
    assert rows["gauc"].mean() == pytest.approx(result.metrics["all"]["gauc"], abs=1e-12)


def test_rating_metrics_and_which_outputs_get_which_metrics():
    split = rated_split(0)
    pairs = split.pairs("test")
    predicted = np.full((split.n_users, split.n_items), 3.0)
    result = Evaluator(ks=[5]).evaluate(PairScores(predicted, "rating"), split, "test").metrics["all"]
    errors = pairs["rating"].to_numpy() - 3.0
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), abs=1e-12)
    assert result["mae"] == pytest.approx(np.mean(np.abs(errors)), abs=1e-12)
    assert "logloss" not in result and result["auc"] == 0.5  # constant scores: chance
    plain = Evaluator(ks=[5]).evaluate(PairScores(predicted), split, "test").metrics["all"]
    assert "auc" in plain and not {"logloss", "rmse", "mae"} & set(plain)


def test_stage_without_pairs_has_no_pointwise_metrics(random_split):
    model = FixedScores(torch.rand(random_split.n_users, random_split.n_items))
    assert "auc" not in Evaluator(ks=[10]).evaluate(model, random_split, "test").metrics["all"]
    with pytest.raises(ConfigError, match="no labelled pairs"):
        Evaluator().value(model, random_split, "valid", "auc")


@pytest.mark.parametrize(
    "text, name, k",
    [("ndcg@10", "ndcg", 10), ("NDCG@5", "ndcg", 5), ("auc", "auc", None), ("gini@20", "gini", 20), ("logloss", "logloss", None)],
)
def test_parse_metric(text, name, k):
    metric, cut = parse_metric(text)
    assert (metric.name, cut) == (name, k)


@pytest.mark.parametrize("text, message", [("ndcg", "needs a cut-off"), ("ndcg@0", "needs a cut-off"),
                                           ("auc@10", "takes no @K"), ("ndgc@10", "not a known metric")])
def test_parse_metric_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_metric(text)


def test_registry_refuses_a_second_metric_of_the_same_name():
    with pytest.raises(ValueError, match="registered twice"):
        register("ndcg", "ranking")(lambda hits, pos_len, k: hits)
    assert {m.name for m in METRICS.values() if not m.higher_is_better} == {
        "gini", "averagepopularity", "popreo", "poprsp", "logloss", "rmse", "mae"}
