"""``model=random``: uniform random scores, the lower bound every model must clear."""
from __future__ import annotations

import torch

from recexp.interfaces import FitContext, RecommenderBase, Split
from recexp.train import TrainerConfig, refuse_training


class RandomRecommender(RecommenderBase):
    """Scores are a fixed seeded random draw per (user, item); nothing is trained."""

    def __init__(self, trainer: TrainerConfig | None = None):
        refuse_training(trainer, "random")
        self._scores: torch.Tensor | None = None

    def fit(self, split: Split, ctx: FitContext) -> None:
        generator = torch.Generator().manual_seed(ctx.seed)
        self._scores = torch.rand(split.n_users, split.n_items, generator=generator)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]."""
        return self._scores[users.cpu()].to(users.device)

    def parameter_counts(self) -> tuple[int, int]:
        return 0, 0
