"""Shared fixtures: the real ml-100k data, its split artifacts, and composed Hydra configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from recexp.data import AtomicDataset  # noqa: E402
from recexp.scenarios import ColdItemScenario, RandomScenario, build_or_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


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
