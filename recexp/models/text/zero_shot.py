"""``model=text_zero_shot``: a frozen sentence encoder (the packaged all-MiniLM-L6-v2) with no training.

score(target) = cos(e_target, mean of the unit e over the liked history) - cos(e_target, that mean over the
disliked history), with e the encoder's embedding of each item's text (``dataset.item_template``).
An empty side contributes 0. The history is the pair's own sample history on a sample-based stage
(``scenario=tallrec``), else the user's interactions in the stage's history parts; rows without a
``label`` count as liked. Nothing is trained: ``trainer.*`` settings are refused.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError, DataError
from recexp.interfaces import FitContext, RecommenderBase, Split
from recexp.models.histories import sample_histories
from recexp.models.text.encoder import TextEncoder
from recexp.strategies import Frozen
from recexp.train import TrainerConfig, refuse_training


class TextZeroShotRecommender(RecommenderBase):
    """Liked-minus-disliked cosine similarity over frozen item-text embeddings."""

    def __init__(self, encoder: TextEncoder, trainer: TrainerConfig | None = None):
        refuse_training(trainer, "text_zero_shot")
        self.encoder = encoder.adapt(Frozen())
        self._split: Split | None = None
        self._items: torch.Tensor | None = None  # [n_items, dim] unit vectors
        self._profiles: dict[str, tuple[dict | None, torch.Tensor]] = {}

    def fit(self, split: Split, ctx: FitContext) -> None:
        texts = split.dataset.item_text
        if texts is None:
            raise DataError("model=text_zero_shot needs item texts; set dataset.item_template (e.g. '{movie_title}').")
        self._split, self._profiles = split, {}
        self._items = torch.nn.functional.normalize(self.encoder.embed(list(texts)).float().cpu(), dim=1)

    def _stage(self, stage: str) -> tuple[dict | None, torch.Tensor]:
        """({(user, item): row} or None for per-user rows, [n_rows, dim] liked-minus-disliked profile)."""
        if stage not in self._profiles:
            if self._split is None:
                raise RuntimeError("text_zero_shot: call fit() before scoring.")
            by_sample = sample_histories(self._split, stage)
            if by_sample is not None:
                lookup, history = by_sample
                rows = {sample: row for row, sample in enumerate(sorted(set(lookup.values())))}
                keys = history["sample"].map(rows).fillna(-1).to_numpy(dtype=np.int64)
                self._profiles[stage] = ({pair: rows[s] for pair, s in lookup.items()}, self._profile(keys, history, len(rows)))
            else:
                frames = [self._split.parts[name] for name in self._split.stage(stage).history]
                history = pd.concat([f[["user", "item", *(["label"] if "label" in f else [])]] for f in frames], ignore_index=True)
                self._profiles[stage] = (None, self._profile(history["user"].to_numpy(), history, self._split.n_users))
        return self._profiles[stage]

    def _profile(self, rows: np.ndarray, history: pd.DataFrame, n_rows: int) -> torch.Tensor:
        """rows [H] (row of each history interaction, -1: none) -> [n_rows, dim] unit(liked mean) - unit(disliked mean)."""
        liked = history["label"].fillna(1.0).to_numpy() > 0.5 if "label" in history else np.ones(len(history), bool)
        keep = rows >= 0
        out = torch.zeros(n_rows, self._items.shape[1])
        for side, sign in ((liked, 1.0), (~liked, -1.0)):
            chosen = keep & side
            sums = torch.zeros(n_rows, self._items.shape[1]).index_add_(
                0, torch.as_tensor(rows[chosen]), self._items[torch.as_tensor(history["item"].to_numpy()[chosen])]
            )
            out += sign * torch.nn.functional.normalize(sums, dim=1)  # zero rows stay zero
        return out

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] scores."""
        lookup, profile = self._stage(stage)
        if lookup is None:
            rows = users.cpu()
        else:
            rows = torch.tensor([lookup.get(key, -1) for key in zip(users.cpu().tolist(), items.cpu().tolist())])
        vectors = torch.where((rows >= 0)[:, None], profile[rows.clamp(min=0)], torch.zeros(1, profile.shape[1]))
        return (vectors * self._items[items.cpu()]).sum(1).to(users.device)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]."""
        lookup, profile = self._stage(stage)
        if lookup is not None:
            raise ConfigError(f"model=text_zero_shot scores pairs of samples at stage {stage!r}; it cannot rank items there.")
        return (profile[users.cpu()] @ self._items.T).to(users.device)

    def parameter_counts(self) -> tuple[int, int]:
        return 0, sum(p.numel() for p in self.encoder.parameters())
