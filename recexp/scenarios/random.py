"""``scenario=random``: RecBole's default protocol (per-user random 8:1:1, full ranking)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recexp.interfaces import Dataset, Split
from recexp.scenarios.common import check_ratios, full_ranking_split, per_user_random_split, require_nonempty


@dataclass(frozen=True)
class RandomScenario:
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/valid/test share per user
    head_fraction: float = 0.2  # share of trained items counted as head (popularity segments)
    label_threshold: float | None = None  # rating >= this labels a valid/test pair 1, lower 0 (None: no pairs)

    def build(self, dataset: Dataset, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        train, valid, test = per_user_random_split(dataset.inter, check_ratios(self.ratios), rng)
        require_nonempty("random", train=train, valid=valid, test=test)
        return full_ranking_split(dataset, train, valid, test, self.head_fraction, self.label_threshold)
