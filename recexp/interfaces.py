"""The small contracts every component shares: data, split artifact, recommender, strategy, logger.

Internal ids are contiguous integers: users ``0..n_users-1`` and items ``0..n_items-1``.
Interaction frames have columns ``user``, ``item``, ``rating``, ``timestamp`` (float, NaN if absent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

STAGES = ("valid", "test")
INTER_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class Dataset:
    """Interactions plus the raw tokens and side features behind the internal ids."""

    name: str
    inter: pd.DataFrame  # columns INTER_COLUMNS, internal ids
    user_tokens: np.ndarray  # [n_users] raw user id tokens (str)
    item_tokens: np.ndarray  # [n_items] raw item id tokens (str)
    item_features: pd.DataFrame | None = None  # row i describes item i
    user_features: pd.DataFrame | None = None  # row u describes user u
    item_text: list[str] | None = None  # rendered from the item template
    user_text: list[str] | None = None  # rendered from the user template
    content_hash: str = ""  # sha256 over the source files' bytes

    @property
    def n_users(self) -> int:
        return len(self.user_tokens)

    @property
    def n_items(self) -> int:
        return len(self.item_tokens)


@dataclass
class Split:
    """A scenario's artifact: the interactions and candidate sets every model sees.

    ``candidates[stage]`` are the item ids ranked at that stage; ``segments[stage][name]`` are item-id
    subsets, each evaluated as its own ranking restricted to those items.
    """

    dataset: Dataset
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    candidates: dict[str, np.ndarray]
    segments: dict[str, dict[str, np.ndarray]]
    hash: str = ""
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)  # scenario-specific facts (e.g. cold item ids)

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    def frame(self, stage: str) -> pd.DataFrame:
        """Interactions of ``stage`` ('train', 'valid' or 'test')."""
        return {"train": self.train, "valid": self.valid, "test": self.test}[stage]

    def history(self, stage: str) -> pd.DataFrame:
        """What a model may know when ranking for ``stage``: train, plus valid at test time."""
        if stage == "test":
            return pd.concat([self.train, self.valid], ignore_index=True)
        return self.train

    def counts(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
            **{f"candidates_{s}": len(c) for s, c in self.candidates.items()},
        }


@runtime_checkable
class RunLogger(Protocol):
    """Where a run's numbers go (W&B, or nowhere). Keys look like ``stage/metric@k``."""

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def summary(self, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


@dataclass
class FitContext:
    """What a model needs from the run while fitting."""

    logger: RunLogger
    device: torch.device
    run_dir: Path
    seed: int
    progress: bool = True


@runtime_checkable
class Recommender(Protocol):
    """Any model recexp can evaluate. Scores are raw: masking is the evaluator's job."""

    def fit(self, split: Split, ctx: FitContext) -> None:
        """Train on ``split.train`` (``split.valid`` may drive early stopping)."""

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users: [B] internal ids -> [B, n_items] scores, higher is better."""

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of everything the run trained or used."""


@runtime_checkable
class Saveable(Protocol):
    """A recommender that can write itself to a folder (the run dir's ``model/``) for reuse."""

    def save(self, directory: str | Path) -> None: ...


@runtime_checkable
class Strategy(Protocol):
    """How a pretrained encoder is adapted: frozen, fully fine-tuned, or via a PEFT method."""

    def apply(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """Return the encoder with exactly the weights this strategy trains left trainable."""

    def save(self, encoder: torch.nn.Module, directory: Path) -> None:
        """Write what this strategy trained (nothing, full weights, or PEFT adapters)."""

    def load(self, encoder: torch.nn.Module, directory: Path) -> None:
        """Restore what :meth:`save` wrote into an encoder built the same way."""
