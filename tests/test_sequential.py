"""Sequential recommendation: the leave-one-out protocol on UniSRec's Scientific release (its shipped cut), the split's
sequences that every sequential model reads, history masking, and ``text_seq`` (SASRec over ids, text or both)."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, FixedScores, context, recexp, strategy_from_config

from recexp.data import UniSRecDataset
from recexp.errors import ConfigError, DataError
from recexp.evaluate import Evaluator
from recexp.interfaces import TRAIN, Dataset
from recexp.models.recbole.files import write_benchmark
from recexp.models.sasrec import SASRec
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.sequential import ItemPrefixData, Prefixes, TextSeq, TextSeqRecommender
from recexp.scenarios import LeaveOneOutScenario, build_or_load
from recexp.train import TrainerConfig

SCIENTIFIC = ROOT / "tests" / "data" / "scientific"


def released(part: str) -> list[tuple[str, list[str], str]]:
    """UniSRec's rows of ``part`` as raw ids (user, history, target), read without recexp."""
    def index(kind):
        with open(SCIENTIFIC / f"Scientific.{kind}2index") as f:
            return {i: raw for raw, i in csv.reader(f, delimiter="\t")}
    users, items = index("user"), index("item")
    with open(SCIENTIFIC / f"Scientific.{part}.inter") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [(users[u], [items[i] for i in h.split()], items[t]) for u, h, t in rows]


@pytest.fixture(scope="module")
def scientific():
    return UniSRecDataset(name="Scientific", path=str(SCIENTIFIC)).load()


@pytest.fixture(scope="module")
def loo(scientific, tmp_path_factory):
    return build_or_load(scientific, LeaveOneOutScenario(), 0, tmp_path_factory.mktemp("cache"))


def stage_samples(split, stage):
    """(user, last 50 history items, target) of each ranking target of ``stage``, as raw ids."""
    sequences = split.sequences(stage)
    users, items = split.dataset.user_tokens, split.dataset.item_tokens
    return sorted((users[u], list(items[sequences.of_user(u)[-50:]]), items[i])
                  for u, i in zip(split.positives(stage)["user"], split.positives(stage)["item"]))


@pytest.mark.parametrize("stage", ["valid", "test"])
def test_leave_one_out_gives_back_unisrec_samples(loo, stage):
    assert stage_samples(loo, stage) == sorted(released(stage))


def test_training_prefixes_are_unisrec_train_rows(loo):
    prefixes = Prefixes(loo.sequences(TRAIN), 50)
    users, items = loo.dataset.user_tokens, loo.dataset.item_tokens
    owner = np.searchsorted(loo.sequences(TRAIN).indptr, prefixes.ends, side="right") - 1
    ours = sorted((users[u], list(items[prefixes.items[s:e]]), items[prefixes.items[e]])
                  for u, s, e in zip(owner, prefixes.starts, prefixes.ends))
    assert ours == sorted(released("train"))


def test_unisrec_dataset_reads_every_interaction(scientific, loo):
    assert len(scientific.inter) == sum(len(h) for _, h, _ in released("train") if len(h) == 1) + len(released("train")) \
        + 2 * len(released("test"))
    assert scientific.item_text[0] and loo.info == {"users_evaluated": 300, "users_too_short": 0}
    assert loo.counts()["valid"] == loo.counts()["test"] == 300


def test_split_artifact_keeps_max_history_and_sequences(scientific, loo):
    again = build_or_load(scientific, LeaveOneOutScenario(), 0, loo.path.parent.parent)
    assert again.max_history == 50 and json.loads((loo.path / "split.json").read_text())["max_history"] == 50
    for stage in (TRAIN, "valid", "test"):
        assert np.array_equal(again.sequences(stage).items, loo.sequences(stage).items)


def test_recbole_reads_the_split_sequences(loo, tmp_path):
    write_benchmark(loo, tmp_path, 50)
    test = pd.read_csv(tmp_path / "recexp.test.inter", sep="\t", dtype=str)
    for user, history in zip(test["user_id:token"], test["item_id_list:token_seq"]):
        assert [int(i) for i in history.split()] == loo.sequences("test").of_user(int(user))[-50:].tolist()


def timed(rows, n_users, n_items):
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).assign(rating=np.nan)
    return Dataset(name="toy", inter=inter[["user", "item", "rating", "timestamp"]],
                   user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
                   item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object))


def test_leave_one_out_orders_by_time_ties_in_file_order_and_reports_short_users(caplog):
    # user 0: items 3 (t=5), 1 (t=1), 2 (t=1, after 1 in the file), 0 (t=9); user 1 has two interactions only
    dataset = timed([(0, 3, 5.0), (0, 1, 1.0), (1, 4, 1.0), (0, 2, 1.0), (1, 5, 2.0), (0, 0, 9.0)], 2, 6)
    split = LeaveOneOutScenario(max_history=2).build(dataset, 0)
    assert split.sequences(TRAIN).of_user(0).tolist() == [1, 2] and split.sequences(TRAIN).of_user(1).tolist() == [4, 5]
    assert split.positives("valid")[["user", "item"]].values.tolist() == [[0, 3]]
    assert split.positives("test")[["user", "item"]].values.tolist() == [[0, 0]]
    assert split.sequences("test").of_user(0).tolist() == [1, 2, 3] and split.max_history == 2
    assert split.info["users_too_short"] == 1 and "fewer than 3 interactions" in caplog.text


@pytest.mark.parametrize("rows, setting, message", [
    ([(0, 0, 1.0), (0, 1, np.nan), (0, 2, 3.0)], {}, "have no timestamp"),
    ([(0, 0, 1.0), (0, 1, 2.0)], {}, "at least 3 interactions"),
    ([(0, 0, 1.0), (0, 1, 2.0), (0, 2, 3.0)], {"max_history": 0}, "scenario.max_history"),
])
def test_leave_one_out_refuses(rows, setting, message):
    with pytest.raises((DataError, ConfigError), match=message):
        LeaveOneOutScenario(**setting).build(timed(rows, 1, 3), 0)


def test_mask_history_false_ranks_history_items_too(loo):
    scores = np.zeros((loo.n_users, loo.n_items), dtype=np.float32)
    sequences = loo.sequences("test")
    targets = dict(zip(loo.positives("test")["user"], loo.positives("test")["item"]))
    for user, target in targets.items():
        scores[user, sequences.of_user(user)] = 2.0  # history items first, then the target
        scores[user, target] = 1.0
    model = FixedScores(scores)
    masked = Evaluator(ks=[1], metrics=["hit"]).evaluate(model, loo, "test", segments=("all",)).metrics["all"]["hit@1"]
    plain = Evaluator(ks=[1], metrics=["hit"], mask_history=False).evaluate(model, loo, "test", segments=("all",))
    repeats = np.mean([t in set(sequences.of_user(u)) for u, t in targets.items()])  # targets bought before
    assert masked == 1.0 - repeats  # a repeated target is removed with the history
    assert plain.metrics["all"]["hit@1"] == 0.0 and repeats > 0
    with pytest.raises(ConfigError, match="evaluator.mask_history"):
        Evaluator(mask_history="no")


def test_unisrec_histories_that_do_not_match_their_targets_are_refused(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(SCIENTIFIC, folder)
    path = folder / "Scientific.test.inter"
    lines = path.read_text().splitlines()
    user, history, target = lines[5].split("\t")
    lines[5] = "\t".join([user, " ".join(history.split()[:-1] + [target]), target])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Scientific.test.inter: line 6: the history does not match"):
        UniSRecDataset(name="Scientific", path=str(folder)).load()
    with pytest.raises(DataError, match="Data file not found"):
        UniSRecDataset(name="Sciantific", path=str(folder)).load()


# --- text_seq


def test_sasrec_layers_compute_what_recbole_computes():
    from recbole.model.layers import TransformerEncoder

    torch.manual_seed(0)
    ours = SASRec(hidden=16, layers=2, heads=2, inner=24, max_length=7).eval()
    theirs = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=16, inner_size=24, hidden_dropout_prob=0.5,
                                attn_dropout_prob=0.5, hidden_act="gelu", layer_norm_eps=1e-12).eval()
    for mine, layer in zip(ours.layers, theirs.layer):
        attention, ffn = layer.multi_head_attention, layer.feed_forward
        mine.qkv.weight.data = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        mine.qkv.bias.data = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
        for a, b in ((mine.out, attention.dense), (mine.attn_norm, attention.LayerNorm), (mine.up, ffn.dense_1),
                     (mine.down, ffn.dense_2), (mine.ffn_norm, ffn.LayerNorm)):
            a.load_state_dict(b.state_dict())
    items, lengths = torch.randn(3, 7, 16), torch.tensor([7, 2, 4])
    x = ours.norm(items + ours.position(torch.arange(7)))
    seq = (torch.arange(7)[None] < lengths[:, None]).long()
    mask = torch.where(torch.tril((seq[:, None, None, :] > 0).expand(-1, -1, 7, -1)), 0.0, -10000.0)  # RecBole's
    expected = theirs(x, mask, output_all_encoded_layers=False)[-1][torch.arange(3), lengths - 1]
    torch.testing.assert_close(ours(items, lengths), expected, rtol=1e-5, atol=1e-5)


def test_chunked_sequences_are_those_of_one_pass(loo):
    model = TextSeq(None, None, item="id", hidden_size=16, heads=2, inner_size=16).eval()
    model.prepare(loo, torch.device("cpu"))
    rows = np.arange(600)
    histories, lengths = Prefixes(loo.sequences(TRAIN), 50).histories(rows, loo.n_items)
    table = model._table()
    whole = model.sasrec(table[histories], lengths)
    torch.testing.assert_close(model._users(table, histories, lengths), whole, rtol=1e-5, atol=1e-5)


def test_item_organised_epoch_sees_every_sample_once(loo):
    prefixes = Prefixes(loo.sequences(TRAIN), 50)
    data = ItemPrefixData(prefixes, loo.n_items, loo.n_items, seed=1, negatives=32)
    seen = []
    for start in range(0, len(data), 100):
        step = data.__getitems__(list(range(start, min(start + 100, len(data)))))
        live = step.candidates[: step.live]
        assert bool((step.targets < step.live).all()) and torch.isfinite(step.log_q).all() and len(step.candidates) == step.live + 32
        seen += live[step.targets].tolist()
    assert sorted(seen) == sorted(prefixes.targets.tolist())


def text_seq(item, strategy="frozen", encoder=None, **settings):
    return TextSeqRecommender(item=item, encoder=encoder, strategy=strategy_from_config(strategy), hidden_size=32,
                              heads=2, inner_size=32, trainer=TrainerConfig(max_epochs=3, progress=False), **settings)


def test_text_seq_learns_from_text_where_ids_have_little_to_go_on(loo, tmp_path, one_thread):
    encoder = TextEncoder(cache_dir=str(tmp_path / "embeddings"), progress=False)
    results = {}
    for item in ("id", "text"):
        model = text_seq(item, encoder=encoder)
        model.fit(loo, context(tmp_path / item))
        results[item] = Evaluator(ks=[10], metrics=["ndcg"], mask_history=False).evaluate(
            model, loo, "test", segments=("all",)).metrics["all"]["ndcg@10"]
    assert results["text"] > 0.03 and results["text"] > 2 * results["id"]  # 1,648 items, 2,030 training interactions


def test_text_seq_trains_an_adapted_encoder_item_by_item(loo, tiny_bert, tmp_path, one_thread):
    encoder = TextEncoder(str(tiny_bert), cache_dir=None, progress=False, max_length=16)
    model = text_seq("id+text", "lora", encoder, adaptor="moe", negatives=16)
    before = {n: p.clone() for n, p in model.module.encoder.named_parameters() if p.requires_grad}
    model.fit(loo, context(tmp_path))
    assert model.module.softmax == "sampled" and model.effective()["batch_size"] == 256
    assert any(not torch.equal(p, before[n]) for n, p in model.module.encoder.named_parameters() if p.requires_grad)
    assert model.cost_extras()["encoder_tokens_trained"] > 0
    scores = model.score(torch.arange(4), "test")
    assert scores.shape == (4, loo.n_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("settings, message", [
    (dict(item="id", strategy="lora"), "model.item=id reads no text"),
    (dict(item="text", strategy="lora", softmax="full"), "model.softmax=full"),
    (dict(item="both"), "model.item='both' is unknown"),
    (dict(item="text", adaptor="mlp"), "model.adaptor='mlp' is unknown"),
])
def test_text_seq_refuses(tiny_bert, settings, message):
    encoder = TextEncoder(str(tiny_bert), cache_dir=None, progress=False)
    with pytest.raises(ConfigError, match=message):
        text_seq(encoder=encoder, **settings)


def test_text_seq_without_item_text_is_one_clear_line(loo, tiny_bert, tmp_path):
    bare = dataclasses.replace(loo, dataset=dataclasses.replace(loo.dataset, item_text=None))
    model = text_seq("text", encoder=TextEncoder(str(tiny_bert), cache_dir=None, progress=False))
    with pytest.raises(ConfigError, match="dataset has none"):
        model.fit(bare, context(tmp_path))


@pytest.mark.subprocess
def test_published_protocol_from_the_command_line(tmp_path):
    args = [f"dataset.path={SCIENTIFIC}", "dataset=unisrec", "dataset.name=Scientific", "scenario=leave_one_out",
            "evaluator.mask_history=false", "evaluator.ks=[10,50]", "logger=none", "seed=3", "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}"]
    done = recexp(*args, "model=text_seq", "model.item=id", "model.hidden_size=32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"recall@10", "ndcg@10", "recall@50", "ndcg@50"} <= set(record["metrics"]["test"])
    assert record["split"]["mask_history"] is False and record["split"]["max_history"] == 50
    top = np.load(tmp_path / "run" / "rankings_test.npz")  # metrics recomputed from the saved lists
    dataset = UniSRecDataset(name="Scientific", path=str(SCIENTIFIC)).load()
    target = {user: item for user, _, item in released("test")}
    hits = [target[dataset.user_tokens[u]] in set(dataset.item_tokens[row[:10]]) for u, row in zip(top["all/users"], top["all/topk"])]
    assert top["all/topk"].shape == (300, 50) and np.mean(hits) == pytest.approx(record["metrics"]["test"]["recall@10"])


def test_leave_one_out_on_amazon2023_gives_back_its_valid_and_test_files():
    from recexp.data import Amazon2023Dataset

    folder = ROOT / "tests" / "data" / "amazon2023"
    dataset = Amazon2023Dataset(category="All_Beauty", path=str(folder)).load()
    split = LeaveOneOutScenario().build(dataset, 0)
    for stage in ("valid", "test"):
        with open(folder / f"All_Beauty.{stage}.csv") as handle:
            released_rows = sorted((r["user_id"], r["parent_asin"]) for r in csv.DictReader(handle))
        ours = split.positives(stage)
        assert sorted(zip(dataset.user_tokens[ours["user"]], dataset.item_tokens[ours["item"]])) == released_rows


@pytest.mark.subprocess
@pytest.mark.parametrize("scenario", [["scenario=cold_item"], ["task=continual", "scenario=time_blocks", "scenario.blocks=3",
                                                                   "task.update=fine_tune"]])
def test_text_seq_plugs_into_other_ranking_scenarios(tmp_path, scenario):
    done = recexp("model=text_seq", "model.hidden_size=16", "model.inner_size=16", "encoder.max_length=16",
                  "trainer.max_epochs=1", "logger=none", *scenario, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    if "scenario=cold_item" in scenario:  # cold items are never trained on: they score from their text
        assert record["segments"]["cold"]["ndcg@10"] > 0.01
    else:
        assert len(record["continual"]["matrix"]) == 2


def test_a_trained_encoder_encodes_every_candidate_of_a_step_alike(loo, tiny_bert):
    """Targets and shared negatives go through the same live encoding: none stands out as the positive."""
    model = text_seq("text", "lora", TextEncoder(str(tiny_bert), cache_dir=None, progress=False, max_length=16),
                     negatives=8).module
    model.prepare(loo, torch.device("cpu"))
    model.refresh()
    step = model.train_data(loo, seed=0).__getitems__(list(range(4)))
    before = model.encoder.tokens_trained
    model.train()
    model(step).backward()
    distinct = step.candidates.unique()
    assert model.encoder.tokens_trained - before == int(model.tokens.lengths[distinct].sum())
