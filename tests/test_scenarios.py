"""Split protocols: no leakage between splits, RecBole's counts, determinism, cached artifacts."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recexp.errors import ConfigError, DataError
from recexp.interfaces import Block, Dataset
from recexp.scenarios import (
    ColdItemScenario,
    ColdUserScenario,
    RandomScenario,
    TallRecScenario,
    TemporalScenario,
    TimeBlocksScenario,
    build_or_load,
)
from recexp.scenarios.artifact import load_split, scenario_hash
from recexp.scenarios.common import ratio_counts


def synthetic(n_users: int, n_items: int, density: float, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(rng.random((n_users, n_items)) < density)
    inter = pd.DataFrame(
        {
            "user": pairs[:, 0],
            "item": pairs[:, 1],
            "rating": rng.integers(1, 6, len(pairs)).astype(float),
            "timestamp": rng.permutation(len(pairs)).astype(float),
        }
    )
    return Dataset(
        name="synthetic",
        inter=inter,
        user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object),
        content_hash=f"synthetic-{n_users}-{n_items}-{density}-{seed}",
    )


def rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, frame[["user", "item", "timestamp"]].to_numpy().tolist()))


def assert_partition(split, dataset):
    """Every interaction lands in exactly one of train/valid/test."""
    together = pd.concat([split.train, split.parts["valid"], split.parts["test"]])
    assert rows(together) == rows(dataset.inter)


DATASETS = st.builds(
    synthetic,
    n_users=st.integers(15, 40),
    n_items=st.integers(20, 60),
    density=st.floats(0.3, 0.6),
    seed=st.integers(0, 10_000),
)
SEEDS = st.integers(0, 2**31 - 1)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(dataset=DATASETS, seed=SEEDS, valid=st.floats(0.05, 0.3), test=st.floats(0.05, 0.3))
def test_random_split_is_a_per_user_partition(dataset, seed, valid, test):
    ratios = [1 - valid - test, valid, test]
    split = RandomScenario(ratios=ratios).build(dataset, seed)
    assert_partition(split, dataset)
    for user, group in dataset.inter.groupby("user"):
        expected = ratio_counts(len(group), ratios)
        got = [int((frame["user"] == user).sum()) for frame in (split.train, split.parts["valid"], split.parts["test"])]
        assert got == expected


@FAST
@given(dataset=DATASETS, seed=SEEDS, cold=st.floats(0.1, 0.5), share=st.floats(0.2, 0.8))
def test_cold_items_never_reach_training(dataset, seed, cold, share):
    scenario = ColdItemScenario(cold_fraction=cold, cold_valid_share=share)
    n_cold = round(cold * dataset.inter["item"].nunique())
    if min(round(share * n_cold), n_cold - round(share * n_cold)) < 1:
        with pytest.raises(DataError, match="both need at least one"):
            scenario.build(dataset, seed)
        return
    split = scenario.build(dataset, seed)
    assert_partition(split, dataset)
    cold_valid, cold_test = split.stage("valid").segments["cold"], split.stage("test").segments["cold"]
    assert len(np.intersect1d(cold_valid, cold_test)) == 0
    assert not split.train["item"].isin(np.union1d(cold_valid, cold_test)).any()
    # every interaction of a cold-test item is a test interaction, and likewise for validation
    assert (dataset.inter["item"].isin(cold_test).sum()) == split.parts["test"]["item"].isin(cold_test).sum()
    assert (dataset.inter["item"].isin(cold_valid).sum()) == split.parts["valid"]["item"].isin(cold_valid).sum()
    # test never ranks the validation cold items, and the warm segment holds no cold item
    assert not np.isin(cold_valid, split.stage("test").candidates).any()
    assert not np.isin(split.stage("test").segments["warm"], cold_test).any()
    # warm is exactly the items training has seen; every non-cold item stays rankable
    for stage in ("valid", "test"):
        assert np.array_equal(split.stage(stage).segments["warm"], np.unique(split.train["item"]))
    assert np.isin(np.setdiff1d(np.arange(dataset.n_items), np.union1d(cold_valid, cold_test)),
                   split.stage("test").candidates).all()


@FAST
@given(dataset=DATASETS, seed=SEEDS)
def test_temporal_split_respects_time(dataset, seed):
    split = TemporalScenario().build(dataset, seed)
    assert_partition(split, dataset)
    assert split.train["timestamp"].max() <= split.parts["valid"]["timestamp"].min()
    assert split.parts["valid"]["timestamp"].max() <= split.parts["test"]["timestamp"].min()


@pytest.mark.parametrize("total, counts", [(5, [3, 1, 1]), (10, [8, 1, 1]), (20, [16, 2, 2]), (2, [1, 0, 1]), (29, [25, 2, 2])])
def test_ratio_counts_match_recbole(total, counts):
    assert ratio_counts(total, [0.8, 0.1, 0.1]) == counts


def test_ml100k_random_counts(random_split):
    assert random_split.counts()["train"] == 80_808
    assert len(random_split.parts["valid"]) == len(random_split.parts["test"]) == 9_596


def test_ml100k_cold_item(cold_split, ml100k):
    interacted = ml100k.inter["item"].nunique()
    cold = np.union1d(cold_split.stage("valid").segments["cold"], cold_split.stage("test").segments["cold"])
    assert len(cold) == round(0.2 * interacted)
    assert not cold_split.train["item"].isin(cold).any()
    untrained = np.setdiff1d(np.setdiff1d(np.arange(ml100k.n_items), cold), cold_split.train["item"])
    assert len(untrained) > 0  # the per-user cut sent every interaction of these warm-looking items to valid/test
    assert not np.isin(untrained, cold_split.stage("test").segments["warm"]).any()
    assert np.isin(untrained, cold_split.stage("test").candidates).all()
    assert set(cold_split.stage("test").segments) == {"all", "head", "tail", "cold", "warm"}
    head = cold_split.stage("test").segments["head"]
    counts = np.bincount(cold_split.train["item"], minlength=ml100k.n_items)
    assert counts[head].min() >= counts[cold_split.stage("test").segments["tail"]].max()


def test_same_key_same_artifact_and_seed_changes_it(ml100k, tmp_path):
    first = build_or_load(ml100k, ColdItemScenario(), 7, tmp_path)
    again = build_or_load(ml100k, ColdItemScenario(), 7, tmp_path)
    other = build_or_load(ml100k, ColdItemScenario(), 8, tmp_path)
    assert first.hash == again.hash != other.hash
    assert rows(first.parts["test"]) == rows(again.parts["test"]) != rows(other.parts["test"])
    assert len(list((tmp_path / "splits").iterdir())) == 2
    assert scenario_hash(ml100k, ColdItemScenario(cold_fraction=0.3), 7) != first.hash


def test_a_new_protocol_version_makes_new_splits(ml100k, monkeypatch):
    from recexp.scenarios import artifact

    before = scenario_hash(ml100k, ColdItemScenario(), 7)
    monkeypatch.setattr(artifact, "PROTOCOLS", artifact.PROTOCOLS + 1)
    assert scenario_hash(ml100k, ColdItemScenario(), 7) != before


def test_artifact_is_readable_atomic_data(cold_split, ml100k):
    """The stored files are plain atomic files with raw tokens; reloading gives the same split."""
    folder = cold_split.path
    meta = json.loads((folder / "split.json").read_text())
    assert meta["hash"] == cold_split.hash
    test = pd.read_csv(folder / "test.inter", sep="\t", dtype=str)
    assert len(test) == len(cold_split.parts["test"])
    assert set(test["item_id:token"]) & set(meta["stages"]["test"]["segments"]["cold"])
    reloaded = load_split(folder, ml100k)
    for stage in ("train", "valid", "test"):
        assert rows(reloaded.parts[stage]) == rows(cold_split.parts[stage])
    assert (reloaded.stage("test").segments["cold"] == cold_split.stage("test").segments["cold"]).all()
    assert reloaded.stage("test").history == ("train", "valid") and reloaded.stage("valid").history == ("train",)


@pytest.mark.parametrize("scenario", [RandomScenario, TemporalScenario, ColdItemScenario])
def test_label_threshold_adds_labelled_pairs_that_survive_the_artifact(scenario, ml100k, tmp_path):
    """Every scenario over rated data labels its valid/test interactions: rating >= T is 1, lower 0."""
    split = build_or_load(ml100k, scenario(label_threshold=4), 3, tmp_path)
    for stage in ("valid", "test"):
        pairs = split.pairs(stage)
        assert pairs is split.positives(stage)  # the same interactions, ranked and labelled
        assert ((pairs["rating"] >= 4) == (pairs["label"] == 1)).all()
        assert 0.4 < pairs["label"].mean() < 0.7  # ml-100k: about 55% of ratings are 4 or 5
    reloaded = load_split(split.path, ml100k)
    assert reloaded.pairs("test")["label"].tolist() == split.pairs("test")["label"].tolist()
    assert build_or_load(ml100k, scenario(), 3, tmp_path).pairs("test") is None


@pytest.mark.parametrize(
    "scenario, message",
    [
        (RandomScenario(ratios=[1.0, 0.0, 0.0]), "left the valid split empty"),
        (TemporalScenario(ratios=[0.9, 0.1, 0.0]), "left the test split empty"),
    ],
)
def test_impossible_split_says_which_is_empty(scenario, message):
    with pytest.raises(DataError, match=message):
        scenario.build(synthetic(10, 10, 0.5, 0), 0)


@pytest.mark.parametrize(
    "scenario",
    [RandomScenario(ratios=[0.5, 0.5]), RandomScenario(ratios=[0.8, 0.3, 0.1]), ColdItemScenario(cold_fraction=1.5)],
)
def test_bad_scenario_values(scenario):
    with pytest.raises(ConfigError):
        scenario.build(synthetic(10, 10, 0.5, 0), 0)


def test_temporal_needs_timestamps():
    data = synthetic(10, 10, 0.5, 0)
    data.inter["timestamp"] = np.nan
    with pytest.raises(DataError, match="needs a timestamp"):
        TemporalScenario().build(data, 0)


def write_atomic(folder, name: str, header: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(header + "\n" + "\n".join(rows) + "\n")


NA_LIKE = ["NA", "null", "None", "nan", "N/A", "u5"]  # ids pandas would read as missing by default


def test_ids_that_look_missing_survive_the_artifact(tmp_path):
    from recexp.data import AtomicDataset

    lines = [f"{user}\ti{(k * 7 + j) % 9}\t4\t{k * 6 + j}" for k, user in enumerate(NA_LIKE) for j in range(6)]
    write_atomic(tmp_path / "d", "na.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float", lines)
    dataset = AtomicDataset(name="na", path=str(tmp_path / "d")).load()
    assert sorted(dataset.user_tokens) == sorted(NA_LIKE)
    built = build_or_load(dataset, RandomScenario(), 0, tmp_path / "cache")
    stored = build_or_load(dataset, RandomScenario(), 0, tmp_path / "cache")  # read back from disk
    for part in built.parts:
        assert rows(stored.parts[part]) == rows(built.parts[part])
    assert sorted(set(stored.train["user"])) == list(range(len(NA_LIKE)))


def test_a_catalogue_change_in_the_item_file_makes_a_new_split(tmp_path):
    from recexp.data import AtomicDataset

    folder = tmp_path / "d"
    write_atomic(folder, "c.inter", "user_id:token\titem_id:token\trating:float",
                 [f"u{u}\ti{(u * 3 + j) % 12}\t4" for u in range(8) for j in range(6)])
    write_atomic(folder, "c.item", "item_id:token\ttitle:token", [f"i{i}\tt{i}" for i in range(12)])
    before = AtomicDataset(name="c", path=str(folder)).load()
    first = build_or_load(before, RandomScenario(), 0, tmp_path / "cache")
    write_atomic(folder, "c.item", "item_id:token\ttitle:token", [f"i{i}\tt{i}" for i in range(14)])  # 2 new items
    after = AtomicDataset(name="c", path=str(folder)).load()
    second = build_or_load(after, RandomScenario(), 0, tmp_path / "cache")
    assert after.n_items == 14 and second.hash != first.hash
    assert len(second.stage("test").candidates) == 14 == len(RandomScenario().build(after, 0).stage("test").candidates)
    write_atomic(folder, "c.item", "item_id:token\ttitle:token", [f"i{i}\tnew title {i}" for i in range(12)])
    retitled = AtomicDataset(name="c", path=str(folder)).load()
    assert build_or_load(retitled, RandomScenario(), 0, tmp_path / "cache").hash == first.hash  # texts: same split


SAMPLES = {"train": "train_history", "valid": "valid_history", "test": "test_history"}
CONCEPTS = [  # scenario, Split.histories, Split.blocks
    (TallRecScenario(shots=64), SAMPLES, []),
    (ColdUserScenario(), {}, []),  # support sets are per user: the stages' history parts (train + support)
    (TimeBlocksScenario(blocks=3), {}, [Block("valid_1", "test_1"), Block("valid_2", "test_2")]),
    (RandomScenario(), {}, []),
]


@pytest.mark.parametrize("scenario, histories, blocks", CONCEPTS, ids=[type(case[0]).__name__ for case in CONCEPTS])
def test_the_split_names_its_sample_histories_and_time_blocks(scenario, histories, blocks, ml100k, tmp_path):
    """What models and tasks read off a split, written to and read back from its artifact."""
    split = build_or_load(ml100k, scenario, 0, tmp_path)
    for found in (split, load_split(split.path, ml100k)):
        assert found.histories == histories and found.blocks == blocks
        for part, history in found.histories.items():  # every sample's history rows, under its number
            assert set(found.parts[history]["sample"]) == set(found.parts[part]["sample"])
        halves = [found.positives(stage) for block in found.blocks for stage in (block.valid, block.test)]
        if halves:  # the base (train) and every later block's halves, in time order, are all interactions
            ordered = pd.concat([found.train, *halves])
            assert rows(ordered) == rows(ml100k.inter) and ordered["timestamp"].is_monotonic_increasing
