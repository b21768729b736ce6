"""``scenario=cold_item``: a seeded share of items never appears in training (item cold-start).

Cold items are split by item into cold-valid and cold-test. Warm interactions are split per user
like ``random``. Valid = warm-valid + every interaction of a cold-valid item; test likewise. The
``warm`` segment is the items training has seen: the per-user cut can leave a non-cold item with no
training interaction, and such an item is ranked (a candidate) but belongs to neither segment.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recexp.errors import DataError
from recexp.interfaces import Dataset, Split
from recexp.scenarios.common import (
    check_fraction,
    check_ratios,
    head_items,
    holdout_split,
    per_user_random_split,
    popularity_segments,
    require_nonempty,
)


@dataclass(frozen=True)
class ColdItemScenario:
    cold_fraction: float = 0.2  # share of interacted items made cold
    cold_valid_share: float = 0.5  # share of the cold items used for validation (rest: test)
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # per-user split of warm data
    head_fraction: float = 0.2
    label_threshold: float | None = None  # rating >= this labels a valid/test pair 1, lower 0 (None: no pairs)

    def build(self, dataset: Dataset, seed: int) -> Split:
        check_fraction("cold_fraction", self.cold_fraction)
        check_fraction("cold_valid_share", self.cold_valid_share)
        rng = np.random.default_rng(seed)
        inter = dataset.inter
        interacted = np.unique(inter["item"].to_numpy())
        n_cold = int(round(self.cold_fraction * len(interacted)))
        cold = rng.permutation(interacted)[:n_cold]
        n_cold_valid = int(round(self.cold_valid_share * n_cold))
        if min(n_cold_valid, n_cold - n_cold_valid) < 1:
            raise DataError(
                f"scenario=cold_item made {n_cold_valid} cold validation and {n_cold - n_cold_valid} cold test "
                f"items from {len(interacted)} interacted items; both need at least one. "
                "Raise scenario.cold_fraction, or move scenario.cold_valid_share towards 0.5."
            )
        cold_valid, cold_test = np.sort(cold[:n_cold_valid]), np.sort(cold[n_cold_valid:])
        is_cold = inter["item"].isin(cold)
        warm_train, warm_valid, warm_test = per_user_random_split(inter[~is_cold], check_ratios(self.ratios), rng)
        valid = _concat(warm_valid, inter[inter["item"].isin(cold_valid)])
        test = _concat(warm_test, inter[inter["item"].isin(cold_test)])
        require_nonempty("cold_item", train=warm_train, valid=valid, test=test)
        rankable = np.setdiff1d(np.arange(dataset.n_items), cold)
        warm = np.unique(warm_train["item"].to_numpy())
        head = head_items(warm_train, dataset.n_items, self.head_fraction)
        segments = {}
        candidates = {}
        for stage, stage_cold in (("valid", cold_valid), ("test", cold_test)):
            candidates[stage] = np.union1d(rankable, stage_cold)
            segments[stage] = {
                **popularity_segments(candidates[stage], head),
                "cold": stage_cold,
                "warm": warm,
            }
        return holdout_split(
            dataset, warm_train, valid, test, candidates, segments, self.label_threshold,
            cold_valid_items=int(len(cold_valid)), cold_test_items=int(len(cold_test)),
        )


def _concat(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)
