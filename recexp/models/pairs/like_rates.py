"""``model=user_rate`` and ``model=item_rate``: the like-rate baselines without text.

``user_rate``: the share of liked items in the user's history, the baseline every
cold-user text model must clear (no training, no text).

On a sample-based stage (``scenario=tallrec``) the history is the pair's own sample history
(its 10 earlier interactions with their labels); otherwise it is the user's labelled interactions
in the stage's history parts (``scenario=cold_user``: the support set). A user or sample with no
labelled history gets the like rate of the training samples. The score is the same for every item
of a user, so it ranks nothing (per-user AUC is 0.5 wherever the history is per user); it is
meant for pooled AUC on labelled pairs, where knowing how often a user likes things already helps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError, DataError, check_number
from recexp.interfaces import FitContext, RecommenderBase, Split
from recexp.models.histories import item_like_rates, sample_histories
from recexp.train import TrainerConfig, refuse_training


class UserRateRecommender(RecommenderBase):
    """score(user, item) = mean ``label`` of the user's (or the sample's) history; nothing is trained."""

    pointwise_output = "probability"

    def __init__(self, trainer: TrainerConfig | None = None):
        refuse_training(trainer, "user_rate")
        self._split: Split | None = None
        self._prior = 0.5
        self._rates: dict[str, tuple[str, dict, np.ndarray | dict]] = {}

    def fit(self, split: Split, ctx: FitContext) -> None:
        self._split, self._rates = split, {}
        labels = split.train["label"] if "label" in split.train else None
        if labels is not None and len(labels):
            self._prior = float(labels.mean())

    def _stage_rates(self, stage: str):
        """("sample", {(user, item): sample}, {sample: rate}) or ("user", {}, [n_users] rates)."""
        if stage not in self._rates:
            split = self._split
            if split is None:
                raise RuntimeError("user_rate: call fit() before scoring.")
            by_sample = sample_histories(split, stage)
            if by_sample is not None:
                lookup, history = by_sample
                self._rates[stage] = ("sample", lookup, history.groupby("sample")["label"].mean().to_dict())
            else:
                self._rates[stage] = ("user", {}, self._user_rates(split, stage))
        return self._rates[stage]

    def _user_rates(self, split: Split, stage: str) -> np.ndarray:
        frames = [split.parts[name] for name in split.stage(stage).history]
        labelled = [f[["user", "label"]] for f in frames if "label" in f]
        if not labelled:
            raise DataError(
                f"model=user_rate needs labelled history at stage {stage!r}, but its history parts "
                f"({', '.join(split.stage(stage).history)}) carry no label; use a scenario with labelled "
                "history (scenario=tallrec, or scenario=cold_user with a label_threshold)."
            )
        history = pd.concat(labelled, ignore_index=True)
        sums = np.bincount(history["user"], weights=history["label"], minlength=split.n_users)
        counts = np.bincount(history["user"], minlength=split.n_users)
        return np.where(counts > 0, sums / np.maximum(counts, 1), self._prior)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] like rates."""
        kind, lookup, rates = self._stage_rates(stage)
        if kind == "user":
            return torch.as_tensor(rates[users.cpu().numpy()], dtype=torch.float32, device=users.device)
        keys = zip(users.cpu().tolist(), items.cpu().tolist())
        values = [rates.get(lookup.get(key, -1), self._prior) for key in keys]
        return torch.tensor(values, dtype=torch.float32, device=users.device)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]: the user's like rate for every item."""
        kind, _, rates = self._stage_rates(stage)
        if kind != "user":
            raise ConfigError(f"model=user_rate scores pairs of samples at stage {stage!r}; it cannot rank items there.")
        row = torch.as_tensor(rates[users.cpu().numpy()], dtype=torch.float32, device=users.device)
        return row[:, None].expand(-1, self._split.n_items)

    def parameter_counts(self) -> tuple[int, int]:
        return 0, 0


class ItemRateRecommender(RecommenderBase):
    """``model=item_rate``: score(user, item) = the item's like rate in the training data, shrunk towards the
    overall rate by ``prior_weight`` pseudo-interactions; no text, no user. Training data: the labelled
    train pairs and, on sample-based splits (``scenario=tallrec``), their histories, which come with them."""

    pointwise_output = "probability"

    def __init__(self, prior_weight: float = 5.0, trainer: TrainerConfig | None = None):
        refuse_training(trainer, "item_rate")
        self.prior_weight = check_number("model.prior_weight", prior_weight, low=0,
                                         rule="a number >= 0 (pseudo-interactions at the overall rate)")
        self._rates: np.ndarray | None = None

    def fit(self, split: Split, ctx: FitContext) -> None:
        rates, _ = item_like_rates(split, self.prior_weight)
        if not len(rates):
            raise DataError("model=item_rate needs labelled training interactions; use scenario=tallrec, or "
                            "scenario=cold_user with a label_threshold.")
        self._rates = rates

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] item like rates."""
        return torch.as_tensor(self._fitted()[items.cpu().numpy()], dtype=torch.float32, device=users.device)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]: the same item rates for every user."""
        return torch.as_tensor(self._fitted(), dtype=torch.float32, device=users.device).expand(len(users), -1)

    def _fitted(self) -> np.ndarray:
        if self._rates is None:
            raise RuntimeError("item_rate: call fit() before scoring.")
        return self._rates

    def parameter_counts(self) -> tuple[int, int]:
        return 0, 0
