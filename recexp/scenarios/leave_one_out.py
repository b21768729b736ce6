"""``scenario=leave_one_out``: each user's last interaction is test, the one before it valid, the rest train.

RecBole's ``LS: valid_and_test`` over time-ordered sequences (ties, and data without time, in file order), as
sequential recommenders (SASRec, UniSRec) are evaluated: the valid stage reads the train sequence, the test stage
the train sequence and the valid item. ``max_history`` caps how many of the most recent items a sequential model
reads (None: no cap of the scenario's; each model keeps its own, 50 for SASRec). Users with fewer than three
interactions keep them all in train and are left out of valid and test (counted in the split's ``info``; RecBole
would test a two-interaction user's second item, which 5-core data such as UniSRec's never holds). Stages rank every
item, with all/head/tail segments.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recexp.errors import DataError, check_int
from recexp.interfaces import Dataset, Split
from recexp.scenarios.common import full_ranking_split, require_nonempty

log = logging.getLogger(__name__)
MIN_INTERACTIONS = 3  # one to train on, one to validate, one to test


@dataclass(frozen=True)
class LeaveOneOutScenario:
    max_history: int | None = 50  # the most recent items of a user's sequence a sequential model reads (None: the model's own cap)
    head_fraction: float = 0.2  # top share of trained items (by training popularity) forming the head segment

    def build(self, dataset: Dataset, seed: int) -> Split:
        if self.max_history is not None:
            check_int("scenario.max_history", self.max_history, 1, rule="a positive number of items, or null (all)")
        ordered = in_sequence_order(dataset.inter)
        users = ordered["user"].to_numpy()
        first = np.r_[True, users[1:] != users[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))  # [N] where each row's user starts
        length = np.bincount(users, minlength=dataset.n_users)[users]  # [N] that user's interactions
        from_end = start + length - np.arange(len(users))  # [N] 1 for a user's last interaction, 2 for the one before
        evaluated = length >= MIN_INTERACTIONS
        short = np.unique(users[~evaluated])
        if len(short):
            log.warning("scenario=leave_one_out: %d of %d users have fewer than %d interactions; they stay in train "
                        "and are left out of valid and test.", len(short), len(np.unique(users)), MIN_INTERACTIONS)
        train = ordered[~evaluated | (from_end > 2)].reset_index(drop=True)
        valid = ordered[evaluated & (from_end == 2)].reset_index(drop=True)
        test = ordered[evaluated & (from_end == 1)].reset_index(drop=True)
        if len(test) == 0:
            raise DataError(
                f"scenario=leave_one_out needs users with at least {MIN_INTERACTIONS} interactions (train, valid, test), "
                f"and none of the {dataset.n_users} users of {dataset.name} has; use a denser dataset or scenario=random."
            )
        require_nonempty("leave_one_out", train=train)
        split = full_ranking_split(dataset, train, valid, test, self.head_fraction, None,
                                   users_evaluated=int(evaluated[first].sum()), users_too_short=int(len(short)))
        split.max_history = self.max_history
        return split


def in_sequence_order(inter: pd.DataFrame) -> pd.DataFrame:
    """``inter`` by user, each user's interactions in time order; ties, and data without any time, keep file order.
    A DataError when only some interactions have a time (their order would be a guess)."""
    missing = inter["timestamp"].isna()
    if missing.any() and not missing.all():
        raise DataError(
            f"scenario=leave_one_out orders each user's interactions by time, but {int(missing.sum())} of {len(inter)} "
            "have no timestamp; fill them in, or set dataset.time_field=null to order every user's interactions as the file does."
        )
    keys = ["user"] if missing.all() else ["user", "timestamp"]
    return inter.sort_values(keys, kind="stable").reset_index(drop=True)
