"""The long tail: both tail views of the evaluator, popularity-bias metrics by hand, and the tail group."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import CONF, ONE_EPOCH, FixedScores, fit, tiny_split

from recexp.errors import ConfigError
from recexp.evaluate import Evaluator
from recexp.interfaces import TaskResult
from recexp.models.sampling import InteractionData, Sampling
from recexp.models.torch_recommender import TorchRecommender
from recexp.records import RANKINGS, save_evaluation
from recexp.tail import Rerank, Reranked, Reweight


class Fitted(FixedScores):
    """Fixed scores with the rest of a recommender's surface, to see what a wrapper passes through."""

    name = "fixed"

    def __init__(self, scores):
        super().__init__(scores)
        self.fits = 0

    def fit(self, split, ctx):
        self.fits += 1

    def effective(self):
        return {"epochs_run": 3}

    def cost_extras(self):
        return {"artifact_bytes": 7}


def views_split():
    # one user trained on item 0; test positives: item 1 (head) and item 4 (tail); head = {0, 1}
    return tiny_split(train=[(0, 0)], valid=[], test=[(0, 1), (0, 4)])


SCORES = [[9, 8, 1, 0, 5, 7], [0] * 6]  # user 0 after masking item 0: full ranking 1, 5, 4, 2, 3


def test_full_view_ranks_every_candidate_and_counts_the_segments_positives():
    result = Evaluator(ks=[1, 2, 3]).evaluate(FixedScores(SCORES), views_split(), "test")
    m = result.metrics
    # restricted tail ranking {2, 3, 4, 5}: 5, 4, ... -> the tail positive 4 is second
    assert m["tail"]["recall@1"] == 0 and m["tail"]["recall@2"] == 1
    # full ranking 1, 5, 4: the tail positive must beat the head items, so it is only third
    assert m["tail_full"]["recall@2"] == 0 and m["tail_full"]["recall@3"] == 1
    assert m["tail_full"]["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert m["head_full"]["recall@1"] == 1 and m["all"]["recall@3"] == 1
    assert result.topk["tail_full"][0].tolist() == [1, 5, 4] and result.topk["tail"][0].tolist() == [5, 4, 2]
    # popularity-bias metrics come from full lists only: none inside a restricted segment
    assert not any(key.startswith(("aplt", "averagepopularity", "itemcoverage", "gini", "pop")) for key in m["tail"])
    assert m["tail_full"]["aplt@2"] == pytest.approx(1 / 2) and "popreo@2" not in m["tail_full"]


def test_popreo_and_poprsp_by_hand():
    m = Evaluator(ks=[2, 3]).evaluate(FixedScores(SCORES), views_split(), "test").metrics["all"]
    # PopREO: recall per group. @2: head 1/1, tail 0/1 -> std/mean of [1, 0] = 1; @3: [1, 1] -> 0
    assert m["popreo@2"] == pytest.approx(1.0) and m["popreo@3"] == pytest.approx(0.0)
    # PopRSP: listed per group over what could be listed (item 0 is history): head {1}, tail {2, 3, 4, 5}.
    # @2 lists 1, 5: head 1/1, tail 1/4 -> std [1, .25] / mean = .375 / .625
    assert m["poprsp@2"] == pytest.approx(0.375 / 0.625)
    assert m["poprsp@3"] == pytest.approx(np.std([1, 2 / 4]) / np.mean([1, 2 / 4]))


@pytest.mark.parametrize("view, present, absent", [
    ("restricted", {"all", "head", "tail"}, {"head_full", "tail_full"}),
    ("full", {"all", "head_full", "tail_full"}, {"head", "tail"}),
    ("both", {"all", "head", "tail", "head_full", "tail_full"}, set()),
])
def test_tail_view_names_the_views_it_computes(view, present, absent):
    metrics = Evaluator(ks=[2], tail_view=view).evaluate(FixedScores(SCORES), views_split(), "test").metrics
    assert present <= set(metrics) and not absent & set(metrics)


def popularity_scores(split, noise=1.0, seed=0):
    """Training popularity plus noise: a popularity-biased model for the real data."""
    pop = np.bincount(split.train["item"], minlength=split.n_items).astype(np.float32)
    rng = np.random.default_rng(seed)
    return np.log1p(pop)[None, :] + noise * rng.standard_normal((split.n_users, split.n_items)).astype(np.float32)


def test_tail_recall_of_the_full_view_from_saved_top_k_lists(cold_split, tmp_path):
    evaluation = Evaluator(ks=[10], metrics=["recall", "ndcg"]).evaluate(
        FixedScores(popularity_scores(cold_split)), cold_split, "test")
    save_evaluation(tmp_path, TaskResult({"test": evaluation}, {}, {}))
    saved = np.load(tmp_path / RANKINGS)
    spec = cold_split.stage("test")
    positives = cold_split.positives("test")
    for segment in ("tail", "cold"):
        wanted = set(np.intersect1d(spec.segments[segment], spec.candidates).tolist())
        by_user = positives[positives["item"].isin(wanted)].groupby("user")["item"].apply(set)
        rows = dict(zip(saved["all/users"].tolist(), saved["all/topk"]))  # the full lists every user sees
        recalls = [len(set(rows[u][:10].tolist()) & items) / len(items) for u, items in by_user.items()]
        assert evaluation.metrics[f"{segment}_full"]["recall@10"] == pytest.approx(np.mean(recalls), abs=1e-12)
        assert evaluation.metrics[f"{segment}_full"]["n_users"] == len(recalls)
        for user, topk in zip(saved[f"{segment}_full/users"], saved[f"{segment}_full/topk"]):
            assert np.array_equal(topk, rows[user])  # the full view lists what the `all` ranking lists


def test_rerank_wraps_any_model_and_passes_the_rest_through(random_split):
    inner = Fitted(popularity_scores(random_split))
    model = Rerank(method="penalty", lam=1.0).wrap(inner)
    model.fit(random_split, None)
    assert inner.fits == 1 and model.name == "fixed" and model.cost_extras() == {"artifact_bytes": 7}
    assert model.effective() == {"epochs_run": 3, "tail": "rerank", "tail_method": "penalty", "tail_lam": 1.0,
                                 "tail_depth": 100}
    assert model.score_pairs is None and not model.saveable  # the inner model has neither
    evaluator = Evaluator(ks=[10], metrics=["ndcg", "recall", "aplt"])
    base = evaluator.evaluate(inner, random_split, "test").metrics
    for method, lam in (("penalty", 1.0), ("xquad", 0.5)):
        reranked = Rerank(method=method, lam=lam).wrap(inner)
        reranked.fit(random_split, None)
        after = evaluator.evaluate(reranked, random_split, "test").metrics
        assert after["all"]["aplt@10"] > base["all"]["aplt@10"] + 0.05, method
        assert after["tail_full"]["recall@10"] > base["tail_full"]["recall@10"], method


def test_rerank_at_zero_strength_keeps_the_ranking(random_split):
    inner = Fitted(popularity_scores(random_split))
    evaluator = Evaluator(ks=[10], metrics=["ndcg"])
    base = evaluator.evaluate(inner, random_split, "test")
    for method in ("penalty", "xquad"):
        model = Rerank(method=method, lam=0.0).wrap(inner)
        model.fit(random_split, None)
        assert np.array_equal(evaluator.evaluate(model, random_split, "test").topk["all"], base.topk["all"]), method


def test_reweight_weights_positives_and_draws_negatives_by_popularity(random_split):
    pop = np.bincount(random_split.train["item"], minlength=random_split.n_items)
    plain = InteractionData(random_split, seed=0)
    users, items, negatives, weights = plain.__getitems__(list(range(len(plain))))
    assert torch.all(weights == 1)
    data = InteractionData(random_split, seed=0, sampling=Sampling(weight_alpha=0.5))
    users, items, _, weights = data.__getitems__(list(range(len(data))))
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-5)
    expected = pop[items.numpy()] ** -0.5
    np.testing.assert_allclose(weights.numpy(), expected / expected.mean(), rtol=1e-5)
    biased = InteractionData(random_split, seed=0, sampling=Sampling(negative_alpha=1.0))
    _, _, popular, _ = biased.__getitems__(list(range(len(biased))))
    assert pop[popular.numpy()].mean() > 2 * pop[negatives.numpy()].mean()


class Sampled(torch.nn.Module):
    """What tail=reweight reads of a torch model's module: its sampling and its loss."""

    def __init__(self, loss="bpr"):
        super().__init__()
        self.encoder, self.sampling, self.loss = None, Sampling(), loss


def test_reweight_sets_the_sampling_of_a_torch_model():
    model = TorchRecommender(Sampled())
    assert Reweight(method="weight", alpha=0.7).wrap(model) is model
    assert model.module.sampling == Sampling(weight_alpha=0.7, negative_alpha=0.0)
    Reweight(method="negatives", alpha=1.0).wrap(model)
    assert model.module.sampling == Sampling(weight_alpha=0.0, negative_alpha=1.0)
    with pytest.raises(ConfigError, match="cannot be honoured by model Sampled with model.module.loss=softmax"):
        Reweight(method="negatives").wrap(TorchRecommender(Sampled(loss="softmax")))


def test_reweight_maps_to_recboles_popularity_sampler_or_refuses():
    from recexp.models.recbole import RecBoleRecommender

    bpr = Reweight(method="negatives", alpha=0.5).wrap(RecBoleRecommender("BPR"))
    assert bpr.params["train_neg_sample_args"]["distribution"] == "popularity"
    assert bpr.params["train_neg_sample_args"]["alpha"] == 0.5
    with pytest.raises(ConfigError, match="tail.method=weight cannot be honoured by the RecBole model BPR"):
        Reweight(method="weight").wrap(RecBoleRecommender("BPR"))
    with pytest.raises(ConfigError, match="cannot be honoured by the RecBole model Pop"):
        Reweight(method="negatives").wrap(RecBoleRecommender("Pop"))
    for name in ("MultiVAE", "RecVAE", "CDAE", "ENMF"):  # losses over each user's history row, no sampled negatives
        with pytest.raises(ConfigError, match=f"cannot be honoured by the RecBole model {name}: it trains without sampled"):
            Reweight(method="negatives").wrap(RecBoleRecommender(name))
    for name in ("GRU4Rec", "SINE"):  # loss_type CE; SINE declares pairwise input, so RecBole samples what CE ignores
        with pytest.raises(ConfigError, match=f"the RecBole model {name}: it trains without sampled"):
            Reweight(method="negatives").wrap(RecBoleRecommender(name))
    honoured = [RecBoleRecommender(name) for name in ("LightGCN", "NeuMF", "DMF")]  # BPR pairs, or pointwise rows labelled 0
    bpr_losses = [RecBoleRecommender(name, params={"loss_type": "BPR"}) for name in ("GRU4Rec", "SINE")]
    for model in [*honoured, *bpr_losses]:
        assert Reweight(method="negatives").wrap(model).params["train_neg_sample_args"]["distribution"] == "popularity"
    with pytest.raises(ConfigError, match="tail=reweight cannot be honoured by model fixed"):
        Reweight().wrap(Fitted([[0.0]]))


@pytest.mark.parametrize("build, message", [
    (lambda: Rerank(lam=-0.1), r"tail.lam=-0.1 is not allowed: it must be a number >= 0 for penalty"),
    (lambda: Rerank(method="xquad", lam=1.5), r"tail.lam=1.5 is not allowed: it must be a number in \[0, 1\] for xquad"),
    (lambda: Rerank(method="mmr"), r"tail.method='mmr' is unknown for tail=rerank"),
    (lambda: Rerank(depth=0), r"tail.depth=0 is not allowed: it must be an integer >= 1"),
    (lambda: Reweight(alpha=3), r"tail.alpha=3 is not allowed: it must be a number in \[0, 2\]"),
    (lambda: Reweight(alpha="high"), r"tail.alpha='high' is not allowed"),
    (lambda: Reweight(method="ips"), r"tail.method='ips' is unknown for tail=reweight"),
    (lambda: Evaluator(tail_view="partial"), r"evaluator.tail_view='partial' is unknown"),
])
def test_bad_tail_settings_are_one_clear_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_wrapper_is_a_reranked_model():
    assert isinstance(Rerank().wrap(Fitted([[0.0]])), Reranked)


def test_the_spine_applies_the_tail_group_to_every_model_it_builds():
    from hydra import compose, initialize_config_dir

    from recexp.config import build
    from recexp.run import model_factory

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose("config", overrides=["model=pop"])
        rerank = compose("config", overrides=["model=pop", "tail=rerank", "tail.method=xquad", "tail.lam=0.2"])
        reweight = compose("config", overrides=["model=pop", "tail=reweight"])
    assert plain.get("tail") is None  # tail: null in the defaults list: no tail strategy
    make, built = model_factory(rerank.model, build(rerank.trainer), build(rerank.tail))
    first, second = make(), make()
    assert isinstance(first, Reranked) and isinstance(second, Reranked) and first is built is not second
    assert first.settings.method == "xquad" and first.name == "Pop"
    with pytest.raises(ConfigError, match="cannot be honoured by the RecBole model Pop"):
        model_factory(reweight.model, build(reweight.trainer), build(reweight.tail))


def test_recbole_popularity_negatives_count_training_interactions_only(cold_split, tmp_path, monkeypatch):
    """RecBole's sampler counts every benchmark file: cold items, seen only in valid and test, would be
    drawn as negatives by their future popularity."""
    from recbole.model.general_recommender.bpr import BPR

    from recexp.models.recbole import RecBoleRecommender

    drawn, loss = [], BPR.calculate_loss

    def recording_loss(self, batch):
        drawn.append(batch[self.NEG_ITEM_ID])
        return loss(self, batch)

    monkeypatch.setattr(BPR, "calculate_loss", recording_loss)
    model = Reweight(method="negatives", alpha=1.0).wrap(RecBoleRecommender("BPR", trainer=ONE_EPOCH))
    fit(model, cold_split, tmp_path)
    to_recexp = torch.full((int(model._item_ids.max()) + 1,), -1, dtype=torch.long)
    to_recexp[model._item_ids] = torch.arange(cold_split.n_items)
    negatives = to_recexp[torch.cat(drawn)].numpy()
    pop = np.bincount(cold_split.train["item"].to_numpy(), minlength=cold_split.n_items)
    assert len(negatives) == len(cold_split.train) and (negatives >= 0).all()
    assert (pop[negatives] > 0).all()  # no item without training interactions, cold items included
    drawn_counts = np.bincount(negatives, minlength=cold_split.n_items)
    assert np.corrcoef(drawn_counts, pop)[0, 1] > 0.95  # alpha=1: in proportion to training popularity


def test_recbole_popularity_negatives_refuse_a_user_who_trained_on_every_training_item():
    """Drawn among training items only, such a user's negative would be redrawn for ever by RecBole's sampler."""
    from types import SimpleNamespace

    from recexp.errors import DataError
    from recexp.models.recbole.negatives import count_training_popularity

    train = SimpleNamespace(iid_field="item_id", inter_feat={"item_id": torch.tensor([1, 2, 3, 1, 3])})
    rebuilt = []
    sampler = SimpleNamespace(used_ids=np.array([set(), {1, 3}, {1, 2, 3}]), _build_alias_table=lambda: rebuilt.append(1))
    with pytest.raises(DataError, match=r"among the 3 items with training interactions, and 1 user\(s\) \(RecBole ids \[2\]\)"):
        count_training_popularity(sampler, train)
    sampler.used_ids = sampler.used_ids[:2]
    count_training_popularity(sampler, train)
    assert rebuilt == [1] and sorted(sampler._get_candidates_list()) == [1, 1, 2, 3, 3]

