"""One contract over every model config: each ``conf/model/*.yaml``, alone and under every ``tail`` option.

A case composes the real config (``encoder.name_or_path``: a tiny random BERT), builds the model the way the
spine does (``model_factory``), runs ``task=holdout`` on a tiny split (fit, save where saveable, evaluate,
cost ledger, effective settings), scores a few users, and reloads what was saved. A combination refused
by design must be refused with its one clear ConfigError when the model is built. One row per model
config: a new config without a row fails ``test_every_model_config_has_a_row``.
"""
from __future__ import annotations

import pytest
import torch
from helpers import CONF, save_tiny_bert, save_tiny_causal_llama
from hydra import compose, initialize_config_dir

from recexp.augment import Augmented
from recexp.config import build
from recexp.costs import CostMeter
from recexp.data import AtomicDataset
from recexp.errors import ConfigError
from recexp.evaluate import Evaluator
from recexp.interfaces import FitContext, Recommender, RecommenderBase, Scorer
from recexp.run import model_factory
from recexp.scenarios import ColdUserScenario, RandomScenario
from recexp.tail import Reranked
from recexp.tasks import Holdout
from recexp.tracking import NullLogger

# tiny data: 40 users x 10 of 30 items, rated 1-5, timed; item titles share words with their neighbours
THEMES = ["galaxy robots", "wedding romance", "haunted ghosts", "detective murder", "desert cowboys", "pirate treasure"]
FORMS = ["comedy", "drama", "thriller", "musical", "documentary"]
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u * 7 + k * 3) % 30}\t{1 + (u + k) % 5}\t{u * 100 + k}\n" for u in range(40) for k in range(10))
ITEMS = "item_id:token\ttitle:token\n" + "".join(f"i{i}\t{THEMES[i % 6]} {FORMS[i % 5]}\n" for i in range(30))

# why a combination is refused, by the words of its ConfigError
NO_WEIGHTS = "RecBole's losses take no per-example weights"
NO_NEGATIVES = "it trains without sampled negatives"
NOT_SAMPLED = "it does not train on sampled positives and negatives"
NO_TEXT = "reads no item text"
RECBOLE_SAMPLED = {"reweight": NO_WEIGHTS, "augment": NO_TEXT}  # BPR pairs: popularity negatives are honoured
RECBOLE_UNSAMPLED = {"reweight": NO_WEIGHTS, "reweight_negatives": NO_NEGATIVES, "augment": NO_TEXT}
UNTRAINED = {"reweight": NOT_SAMPLED, "reweight_negatives": NOT_SAMPLED}  # no sampled pairs to reweight
ID_ONLY = {**UNTRAINED, "augment": NO_TEXT}
FIT = ["trainer.max_epochs=1"]
LM = [*FIT, "model.module.samples_per_epoch=32", "model.module.rerank=4", "encoder.max_length=32"]

# model config -> (split, overrides, refused tails {tail: words of the error}); "ranking": per-user random
# 8:1:1 with labelled valid/test pairs, "cold_user": unseen users read through labelled support sets
MODELS = {
    "bpr": ("ranking", FIT, RECBOLE_SAMPLED),
    "lightgcn": ("ranking", FIT, RECBOLE_SAMPLED),
    "neumf": ("ranking", FIT, RECBOLE_SAMPLED),
    "gru4rec": ("ranking", FIT, RECBOLE_UNSAMPLED),  # cross-entropy over all items
    "sasrec": ("ranking", FIT, RECBOLE_UNSAMPLED),
    "bert4rec": ("ranking", FIT, RECBOLE_UNSAMPLED),  # masked-item cross-entropy
    "itemknn": ("ranking", FIT, RECBOLE_UNSAMPLED),  # no gradients
    "pop": ("ranking", FIT, RECBOLE_UNSAMPLED),
    "recbole": ("ranking", [*FIT, "model.name=MultiVAE"], RECBOLE_UNSAMPLED),  # any RecBole model by name
    "text_tower": ("ranking", FIT, {}),
    "fusion": ("ranking", FIT, {}),
    "text_seq": ("ranking", [*FIT, "model.hidden_size=16", "model.inner_size=16"], UNTRAINED),  # full softmax, no pairs
    "random": ("ranking", [], ID_ONLY),
    "lm_classifier": ("cold_user", LM, UNTRAINED),
    "llm_ranker": ("cold_user", [*LM, "strategy=lora", "encoder.max_length=200"], UNTRAINED),  # reads a causal LM (ENCODERS)
    "pair_classifier": ("cold_user", FIT, ID_ONLY),
    "id_fm": ("cold_user", FIT, ID_ONLY),
    "id_gru": ("cold_user", FIT, ID_ONLY),
    "id_gru_bare": ("cold_user", FIT, ID_ONLY),
    "text_head": ("cold_user", FIT, UNTRAINED),
    "fusion_head": ("cold_user", FIT, UNTRAINED),
    "text_zero_shot": ("cold_user", [], UNTRAINED),
    "user_rate": ("cold_user", [], ID_ONLY),
    "item_rate": ("cold_user", [], ID_ONLY),
}
ENCODERS = {"llm_ranker": "llama"}  # models that need a causal LM; the others read the tiny BERT
# tail option -> overrides; reweight twice: its default method (weight) and RecBole's way (negatives)
TAILS = {
    "none": [],
    "rerank": ["tail=rerank", "tail.method=xquad", "tail.depth=10"],
    "reweight": ["tail=reweight"],
    "reweight_negatives": ["tail=reweight", "tail.method=negatives"],
    "augment": ["tail=augment", "tail.keywords=3", "tail.neighbours=5"],
}
EVALUATOR = Evaluator(ks=[5], metrics=["ndcg", "auc", "logloss"], batch_size=64)
CASES = [pytest.param(model, tail, id=f"{model}-{tail}") for model in MODELS for tail in TAILS]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The tiny BERT, a cache folder, and the two tiny splits."""
    root = tmp_path_factory.mktemp("contract")
    (root / "data").mkdir()
    (root / "data" / "tiny.inter").write_text(INTER)
    (root / "data" / "tiny.item").write_text(ITEMS)
    dataset = AtomicDataset(name="tiny", path=str(root / "data"), item_template="{title}").load()
    splits = {"ranking": RandomScenario(label_threshold=4).build(dataset, 0), "cold_user": ColdUserScenario().build(dataset, 0)}
    return {"bert": str(save_tiny_bert(root / "bert")), "llama": str(save_tiny_causal_llama(root / "llama")),
            "cache": str(root / "cache"), "splits": splits}


def factory(model: str, tail: str, world: dict):
    """``model_factory`` over the composed config, as the spine builds models (the tail applied)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", *MODELS[model][1], *TAILS[tail], f"cache_dir={world['cache']}",
                                           "progress=false", f"encoder.name_or_path={world[ENCODERS.get(model, 'bert')]}"])
    make, _ = model_factory(cfg.model, build(cfg.trainer), build(cfg.tail) if cfg.get("tail") else None)
    return make


def test_every_model_config_and_tail_option_has_a_row():
    assert set(MODELS) == {p.stem for p in CONF.glob("model/*.yaml")}
    assert {p.stem for p in CONF.glob("tail/*.yaml")} <= {t for t in TAILS if t != "none"}
    assert all(set(refused) <= set(TAILS) for _, _, refused in MODELS.values())


@pytest.mark.parametrize("model, tail", CASES)
def test_model_contract(model, tail, world, tmp_path):
    split_name, _, refused = MODELS[model]
    split = world["splits"][split_name]
    if tail in refused:
        with pytest.raises(ConfigError, match=refused[tail]):
            factory(model, tail, world)
        return
    make = factory(model, tail, world)
    recommender = make()
    assert isinstance(recommender, Recommender) and isinstance(recommender, RecommenderBase)  # every member declared
    assert isinstance(recommender, {"rerank": Reranked, "augment": Augmented}.get(tail, RecommenderBase))
    ctx = FitContext(NullLogger(), torch.device("cpu"), tmp_path, seed=0, progress=False)
    result = Holdout(save_model=True).run(lambda: recommender, split, EVALUATOR, ctx)

    # what the run record reads
    trainable, total = recommender.parameter_counts()
    assert 0 <= trainable <= total and result.cost["trainable_params"] == trainable and result.cost["total_params"] == total
    assert recommender.cost_extras().items() <= result.cost.items()
    assert result.effective == recommender.effective()
    assert ("epochs_run" in result.effective) == ("trainer.max_epochs=1" in MODELS[model][1])  # models that train say how
    if tail in ("rerank", "augment"):
        assert result.effective["tail"] == tail
    assert recommender.pointwise_output in ("score", "probability", "rating")
    assert set(result.evaluations) == set(split.stages)

    users = torch.as_tensor(split.positives("test")["user"].unique()[:4])
    scores = recommender.score(users, "test")
    assert scores.shape == (len(users), split.n_items) and scores.is_floating_point()  # RecBole's Pop: float64
    assert not scores.isnan().any() and not scores.isposinf().any() and torch.isfinite(scores).any(dim=1).all()
    if recommender.score_pairs is not None:
        items = torch.arange(len(users)) % split.n_items
        assert recommender.score_pairs(users, items, "test").shape == (len(users),)

    saved = tmp_path / "model"
    if not recommender.saveable:
        assert not saved.exists()
        with pytest.raises(NotImplementedError):
            recommender.save(tmp_path / "elsewhere")
        return
    assert any(saved.iterdir()) and result.cost["artifact_bytes"] > 0
    fresh = make()
    fresh.load(saved, split)
    assert torch.equal(fresh.score(users, "test"), scores)


def test_wrappers_pass_every_member_of_the_contract_on_themselves():
    """A wrapper that inherited a default would quietly answer for its inner model."""
    contract = {name for cls in (Recommender, Scorer) for name in (*cls.__dict__, *cls.__annotations__) if not name.startswith("_")}
    defaults = {name for name in dir(RecommenderBase) if not name.startswith("_")}
    assert defaults == contract - {"fit", "score", "parameter_counts"}
    for wrapper in (Reranked, Augmented):
        above_base = wrapper.__mro__[: wrapper.__mro__.index(RecommenderBase)]  # the wrapper and its own bases
        own = {name for cls in above_base for name in vars(cls)}
        assert contract <= own, f"{wrapper.__name__} lacks {sorted(contract - own)}"


def test_a_member_a_model_lacks_is_an_error_not_a_default(world):
    class Bare:  # fit, score and parameter_counts, nothing declared beyond them
        def fit(self, split, ctx): ...

        def score(self, users, stage): ...

        def parameter_counts(self):
            return 0, 0

    assert not isinstance(Bare(), Recommender)
    with pytest.raises(AttributeError, match="cost_extras"):
        CostMeter(torch.device("cpu")).summary(Bare(), world["splits"]["ranking"])
