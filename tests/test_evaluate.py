"""The evaluator: hand-computed metrics, masking, segments, ties, and agreement with RecBole's metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recexp.errors import ConfigError
from recexp.evaluate import ACCURACY, Evaluator, _avg_popularity, _tail_share, gini_index, item_coverage
from recexp.interfaces import Dataset, Split


class FixedScores:
    def __init__(self, scores):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score(self, users, stage):
        return self.scores[users]


def frame(pairs):
    users, items = zip(*pairs) if pairs else ((), ())
    return pd.DataFrame({"user": users, "item": items, "rating": 1.0, "timestamp": 0.0})


def tiny_split(train, valid, test, n_users=2, n_items=6, segments=None):
    dataset = Dataset(
        name="tiny",
        inter=frame(train + valid + test),
        user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object),
    )
    everything = np.arange(n_items)
    segs = segments or {"all": everything, "head": np.array([0, 1]), "tail": np.arange(2, n_items)}
    return Split(dataset, frame(train), frame(valid), frame(test), {"valid": everything, "test": everything},
                 {"valid": segs, "test": segs})


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
        ours = ACCURACY[name](torch.as_tensor(hits), torch.as_tensor(pos_len, dtype=torch.float64), k).numpy()
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
        ours_pop = _avg_popularity(torch.as_tensor(topk), torch.as_tensor(counts), k).numpy()
        np.testing.assert_allclose(ours_pop, their_pop[:, k - 1], atol=1e-6)
        ours_tail = _tail_share(torch.as_tensor(topk), torch.as_tensor(counts <= 10), k).numpy()
        np.testing.assert_allclose(ours_tail, their_tail[:, k - 1], atol=1e-6)
        coverage = recbole_metrics.ItemCoverage(config).get_coverage(topk[:, :k], n_items)
        assert item_coverage(topk[:, :k], n_items) == pytest.approx(coverage, abs=1e-6)
        gini = recbole_metrics.GiniIndex(config).get_gini(topk[:, :k], n_items)
        assert gini_index(topk[:, :k], n_items) == pytest.approx(gini, abs=1e-6)
