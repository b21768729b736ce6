"""Shared fixtures: the real ml-100k data, its split artifacts, a tiny saved BERT, and one thread for tiny models.

Plain helpers (paths, builders, fakes) are in ``helpers.py``."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

# before helpers and recexp import transformers and wandb, which read these once
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from helpers import save_tiny_bert

from recexp.data import AtomicDataset
from recexp.scenarios import ColdItemScenario, RandomScenario, build_or_load


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ml100k():
    return AtomicDataset(
        name="ml-100k",
        item_template="{movie_title} ({release_year}). Genres: {class}",
        item_title_template="{movie_title} ({release_year})",
        user_template="A {age}-year-old {gender} {occupation}",
    ).load()


@pytest.fixture(scope="session")
def random_split(ml100k, cache_dir):
    return build_or_load(ml100k, RandomScenario(), 2020, cache_dir)


@pytest.fixture(scope="session")
def cold_split(ml100k, cache_dir):
    return build_or_load(ml100k, ColdItemScenario(), 2020, cache_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: spawning threads costs more than it saves (far more on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def small_split(ml100k):
    """Item cold-start on the first 100 users of ml-100k (all items keep their text), valid/test
    interactions also labelled (rating >= 4)."""
    inter = ml100k.inter[ml100k.inter["user"] < 100].reset_index(drop=True)
    dataset = dataclasses.replace(ml100k, inter=inter, content_hash=ml100k.content_hash + "-100-users")
    return ColdItemScenario(label_threshold=4).build(dataset, 2020)
