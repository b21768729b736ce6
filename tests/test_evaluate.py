"""The evaluator: hand-computed metrics, masking, segments, ties, pointwise metrics against
scikit-learn, the metric registry, and agreement with RecBole's metrics."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from helpers import FixedScores, frame, tiny_split

from recexp.errors import ConfigError, TrainingError
from recexp.evaluate import Evaluator, ranking
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
from recexp.evaluate.ranking import StageIndex, check_scores
from recexp.evaluate.top import masked_largest
from recexp.interfaces import Dataset
from recexp.scenarios.common import holdout_split


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


class SharedScores(FixedScores):
    """One score row for every user, returned as a view (as a popularity model's may be): not to be written to."""

    def score(self, users, stage):
        return self.scores[0].expand(len(users), -1)


def tie_heavy_split(seed, n_users, n_items):
    """A split whose stages rank a subset of the items (as cold-item splits do), with head/tail/cold item
    segments smaller and larger than K, a user segment, and users whose history leaves fewer than K candidates."""
    rng = np.random.default_rng(seed)
    candidates = np.sort(rng.choice(n_items, n_items * 9 // 10, replace=False))
    head, cold = candidates[: len(candidates) // 5], candidates[-3:]
    segments = {"all": candidates, "head": head, "tail": np.setdiff1d(candidates, head), "cold": cold}
    sizes = rng.integers(0, n_items // 3, n_users)
    sizes[:3] = len(candidates) - np.array([0, 1, 4])  # history covering all, all but 1, all but 4 candidates
    histories = [rng.permutation(candidates)[: sizes[u]] for u in range(n_users)]
    train = [(u, int(i)) for u in range(n_users) for i in histories[u]]
    seen = {(u, i) for u, i in train}
    test = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, 6, replace=False) if (u, i) not in seen]
    test += [(0, int(candidates[0]))] + [(u, int(i)) for u in (1, 2) for i in np.setdiff1d(candidates, histories[u])]
    test += [(u, int(cold[0])) for u in range(3, n_users, 4) if (u, int(cold[0])) not in seen]
    dataset = Dataset(name="ties", inter=frame(train + test),
                      user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
                      item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object))
    split = holdout_split(dataset, frame(train), frame([]), frame(test), {"valid": candidates, "test": candidates},
                          {"valid": segments, "test": segments}, None)
    split.stage("test").user_segments = {"odd": np.arange(1, n_users, 2)}
    return split


def tie_heavy_scores(seed, split, k):
    """Integer scores (ties everywhere) for most users, distinct floats for some, distinct floats but for one
    tie across the end of the top-``k`` list for others, a constant row for one: every path through the ranking."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (split.n_users, split.n_items), generator=generator).float()
    scores[1::5] = torch.randn(len(scores[1::5]), split.n_items, generator=generator)
    scores[2::5] = torch.randint(0, split.n_items, (len(scores[2::5]), split.n_items), generator=generator).float()
    scores[3::5] = torch.randn(len(scores[3::5]), split.n_items, generator=generator)
    scores[4] = 0.0
    history = split.history("test")
    for user in range(3, split.n_users, 5):
        rankable = np.setdiff1d(split.stage("test").candidates, history.loc[history["user"] == user, "item"])
        ranked = rankable[np.argsort(-scores[user, rankable].numpy())]
        if len(ranked) > k:
            scores[user, ranked[k]] = scores[user, ranked[k - 1]]  # the k-th and (k+1)-th of the `all` ranking tie
    return scores


def reference_ranking(scores, split, stage, name, k, tie_seed):
    """The ranking recexp has always made, written out plainly: history and items outside the ranked set at
    -inf, every row permuted by the seeded item order, torch.topk, -1 for empty slots.
    -> (users [U], top-k lists [U, k], the positives that count [U, n_items] bool)."""
    spec, n_items = split.stage(stage), split.n_items
    base = name.removesuffix("_full")
    counted = np.intersect1d(spec.segments.get(base, spec.candidates), spec.candidates)
    ranked = spec.candidates if name.endswith("_full") or name not in spec.segments else counted
    positives, history = np.zeros((split.n_users, n_items), bool), np.zeros((split.n_users, n_items), bool)
    for dense, part in ((positives, split.positives(stage)), (history, split.history(stage))):
        dense[part["user"].to_numpy(int), part["item"].to_numpy(int)] = True
    positives[:, np.setdiff1d(np.arange(n_items), counted)] = False  # only the segment's positives count
    users = np.flatnonzero(positives.any(1))
    if name in spec.user_segments:
        users = np.intersect1d(users, spec.user_segments[name])
    outside = np.ones(n_items, bool)
    outside[ranked] = False
    masked = scores[users].masked_fill(torch.as_tensor(history[users] | outside), float("-inf"))
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(tie_seed))
    best = masked[:, order].topk(min(k, len(ranked)), dim=1)
    return users, torch.where(best.values > float("-inf"), order[best.indices], -1).numpy(), positives[users]


def own_column_order(scores, seed):
    """``scores`` [U, n_items] as a model scoring in an order of its own gives them (a padding column first, as
    RecBole's), and the column of each item."""
    columns = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(seed)) + 1
    own = torch.full((scores.shape[0], scores.shape[1] + 1), 100.0)  # the padding column scores highest
    own[:, columns] = scores
    return FixedScores(own), columns


@pytest.mark.parametrize("seed, n_users, n_items", [(0, 40, 30), (1, 60, 300), (2, 90, 3000), (3, 40, 9000)])
@pytest.mark.parametrize("model", [FixedScores, SharedScores, own_column_order])
@pytest.mark.parametrize("path", ["compiled", "masked"])  # masked: what a GPU runs, here on CPU
def test_ranking_with_ties_matches_the_plain_seeded_ranking(seed, n_users, n_items, model, path, monkeypatch):
    if path == "masked":
        monkeypatch.setattr(ranking, "largest", masked_largest)
    split = tie_heavy_split(seed, n_users, n_items)
    scores = tie_heavy_scores(seed, split, 20)
    before = scores.clone()
    evaluator = Evaluator(ks=[1, 5, 20], metrics=["recall", "ndcg", "hit"], batch_size=16, tie_seed=seed)
    scorer, columns = model(scores, seed) if model is own_column_order else (model(scores), None)
    result = evaluator.evaluate(scorer, split, "test", segments=("all", "head", "tail", "cold", "odd"), item_columns=columns)
    assert set(result.topk) == {"all", "head", "head_full", "tail", "tail_full", "cold", "cold_full", "odd"}
    for name, topk in result.topk.items():
        wanted = before[0].expand(n_users, -1) if model is SharedScores else before
        users, lists, positives = reference_ranking(wanted, split, "test", name, 20, seed)
        assert np.array_equal(result.users[name], users), name
        assert np.array_equal(topk, lists), name
        hits = np.take_along_axis(np.pad(positives, ((0, 0), (0, 1))), lists, 1)  # slot -1 reads the padding
        for k in (1, 5, 20):
            recall = hits[:, :k].sum(1) / positives.sum(1)
            assert result.metrics[name][f"recall@{k}"] == pytest.approx(recall.mean(), abs=1e-12), (name, k)
            assert result.metrics[name][f"hit@{k}"] == pytest.approx(hits[:, :k].any(1).mean(), abs=1e-12), (name, k)
    first = dict(zip(result.users["all"], result.topk["all"]))
    assert [int((first[u] == -1).sum()) for u in range(3)] == [20, 19, 16]  # histories leave 0, 1 and 4 candidates
    assert torch.equal(scores, before)  # the model's scores are left as they were
    if columns is not None:
        assert torch.equal(scorer.scores[:, columns], before)


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


@pytest.mark.parametrize("row, message", [
    ([1.0, float("nan")], "1 NaN/+inf, 0 users without a finite score"),
    ([float("inf"), 0.0], "1 NaN/+inf, 0 users"),
    ([float("-inf"), float("-inf")], "0 NaN/+inf, 1 users without a finite score"),
    ([float("-inf"), 2.0], None),
])
def test_non_finite_scores_are_a_training_error(row, message):
    scores = torch.tensor([[0.0, 1.0], row])
    if message is None:
        check_scores(scores, FixedScores(scores), "test")
        return
    with pytest.raises(TrainingError, match=re.escape(message)):
        check_scores(scores, FixedScores(scores), "test")


@pytest.mark.parametrize("path", ["compiled", "masked"])
@pytest.mark.parametrize("row, message", [
    ([1.0, float("nan"), 0.0], "1 NaN/+inf, 0 users without a finite score"),
    ([float("inf"), 0.0, 1.0], "1 NaN/+inf, 0 users"),
    ([float("-inf")] * 3, "0 NaN/+inf, 1 users without a finite score"),
    ([float("-inf"), float("-inf"), 2.0], None),
])
def test_the_evaluator_refuses_non_finite_scores(row, message, path, monkeypatch):
    if path == "masked":
        monkeypatch.setattr(ranking, "largest", masked_largest)
    split = tiny_split([(0, 0), (1, 1)], [], [(0, 2), (1, 2)], n_items=3, segments={"all": np.arange(3)})
    model = FixedScores(torch.tensor([[0.0, 1.0, 2.0], row]))
    if message is None:
        assert Evaluator(ks=[1]).evaluate(model, split, "test").metrics["all"]["hit@1"] == 1.0
        return
    with pytest.raises(TrainingError, match=re.escape(message)):
        Evaluator(ks=[1]).evaluate(model, split, "test")


def test_a_stage_index_is_built_once_per_split_and_stage(random_split):
    model = FixedScores(torch.rand(random_split.n_users, random_split.n_items, generator=torch.Generator().manual_seed(0)))
    first = Evaluator().evaluate(model, random_split, "test", segments=("all",))
    index = StageIndex.of(random_split, "test")
    again = Evaluator().evaluate(model, random_split, "test", segments=("all",))
    assert StageIndex.of(random_split, "test") is index and index is not StageIndex.of(random_split, "valid")
    assert np.array_equal(first.topk["all"], again.topk["all"]) and first.metrics == again.metrics


def test_scores_of_the_wrong_shape_are_a_training_error():
    split = tiny_split([(0, 0)], [], [(0, 1), (1, 2)], n_items=3, segments={"all": np.arange(3)})
    with pytest.raises(TrainingError, match=re.escape("gave shape (2,) for 2 users")):
        Evaluator().evaluate(FixedScores(torch.zeros(3)), split, "test")


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown evaluator metrics \\['ndgc'\\]"):
        Evaluator(metrics=["ndgc"])


@pytest.fixture(scope="module")
def recbole_metrics():
    from recexp.models.recbole.compat import apply

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


def segment_split(stage_pairs=True):
    """Test pairs on items 0-39 of 45; the segment ``rare`` (items 40-44) holds no test pair or positive. Without
    ``stage_pairs`` the test stage has no labelled pairs (the valid stage keeps its own)."""
    rng = np.random.default_rng(0)
    pairs = [(u, int(i)) for u in range(20) for i in rng.choice(40, 8, replace=False)]
    ratings = rng.integers(1, 6, len(pairs)).astype(float)
    segments = {"all": np.arange(45), "head": np.arange(10), "rare": np.arange(40, 45)}
    split = tiny_split([(0, 0)], [(0, 1)], pairs, 20, 45, segments, ratings, threshold=4.0)
    if not stage_pairs:
        split.stages["test"] = dataclasses.replace(split.stages["test"], pairs=None)
    return split


NO_TARGET, NO_PAIR = "no ranking target falls in this segment", "no labelled pair falls in this segment"


def test_every_metric_asked_for_and_not_computed_is_named_with_its_reason():
    model = PairScores(np.random.default_rng(1).random((20, 45)), "probability")
    asked = Evaluator(ks=[5, 10], metrics=["ndcg", "gini", "popreo", "auc"])
    result = asked.evaluate(model, segment_split(), "test")
    assert result.not_computed == {
        "rare": {"ndcg@5": NO_TARGET, "ndcg@10": NO_TARGET, "auc": NO_PAIR},
        "rare_full": {"ndcg@5": NO_TARGET, "ndcg@10": NO_TARGET, "gini@5": NO_TARGET, "gini@10": NO_TARGET},
    }  # gini is not read off restricted rankings, popreo only off `all`: neither is missing from a segment it belongs to
    unpaired = asked.evaluate(model, segment_split(stage_pairs=False), "test")
    lacking = "stage 'test' has no labelled pairs"
    assert {s: m.get("auc") for s, m in unpaired.not_computed.items()} == {
        "all": lacking, "head": lacking, "rare": lacking, "rare_full": None}
    every = Evaluator(ks=[5, 10]).evaluate(model, segment_split(stage_pairs=False), "test")  # evaluator.metrics=all
    assert every.not_computed == {} and "ndcg@10" in every.metrics["all"] and "auc" not in every.metrics["all"]


def test_a_metric_the_model_cannot_give_is_named_with_the_model_output():
    split = segment_split()
    result = Evaluator(ks=[5], metrics=["auc", "logloss", "rmse"]).evaluate(PairScores(np.ones((20, 45))), split, "test")
    assert result.not_computed["all"] == {"logloss": "model PairScores gives plain scores, not probabilities",
                                          "rmse": "model PairScores gives plain scores, not predicted ratings"}
    assert "auc" in result.metrics["all"]


@pytest.mark.parametrize("valid_pairs, test_pairs, message", [
    (True, False, None),  # one stage computes auc: the run goes on, the other stage records it as not computed
    (False, False, "auc in evaluator.metrics cannot be computed here: no stage of this split has labelled pairs. "
                   "Set scenario.label_threshold=4"),
])
def test_a_metric_no_stage_can_compute_is_refused_before_any_work(valid_pairs, test_pairs, message):
    from recexp.records import check_metrics

    split = segment_split(stage_pairs=test_pairs)
    if not valid_pairs:
        split.stages["valid"] = dataclasses.replace(split.stages["valid"], pairs=None)
    model, evaluator = FixedScores(np.ones((20, 45))), Evaluator(ks=[10], metrics=["ndcg", "auc"])
    if message is None:
        check_metrics("valid/ndcg@10", split.stages, evaluator, model)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_metrics("valid/ndcg@10", split.stages, evaluator, model)


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


def test_cpu_validation_batches_hold_at_most_two_megabytes_of_scores():
    from recexp.evaluate import cache_sized_batch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert cache_sized_batch(4385, cpu, 512) == 119 and cache_sized_batch(1682, cpu, 512) == 311
    assert cache_sized_batch(1682, cpu, 256) == 256 and cache_sized_batch(25000, cpu, 512) == 20
    assert cache_sized_batch(10**7, cpu, 512) == 1 and cache_sized_batch(4385, gpu, 512) == 512
