"""``scenario=cold_user``: a seeded share of users never appears in training (user cold-start, few-shot).

Users, not interactions, are divided among train, valid and test by ``fractions``. Every valid/test
user's interactions, in time order (ties: file order), are cut into a support set (the first
``support``; part ``valid_support`` / ``test_support``), which models may read as history, and a
query set (the rest; part ``valid`` / ``test``), evaluated both ways: a full ranking of the query
interactions, and labelled pairs (label = rating >= ``label_threshold``). Support sets carry the same
labels. ``shots=K`` keeps K training interactions drawn with the seed (all when null).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recexp.errors import ConfigError, DataError, check_int
from recexp.interfaces import TRAIN, Dataset, Split, Stage
from recexp.scenarios.common import (
    by_time,
    check_ratios,
    check_shots,
    head_items,
    labelled,
    popularity_segments,
    ratio_counts,
)

STAGES = ("valid", "test")


def support_part(stage: str) -> str:
    return f"{stage}_support"


@dataclass(frozen=True)
class ColdUserScenario:
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / valid / test share of users
    support: int = 5  # each valid/test user's first interactions in time that models may read
    label_threshold: float | None = 4  # rating >= this labels a pair 1 (support and query); null: no pairs
    shots: int | None = None  # K training interactions drawn with the seed; null: all of them
    head_fraction: float = 0.2  # top share of trained items (by training popularity) forming the head segment

    def build(self, dataset: Dataset, seed: int) -> Split:
        fractions = check_ratios(self.fractions)
        check_int("scenario.support", self.support, 0, rule="an integer >= 0 (interactions per cold user)")
        inter = dataset.inter
        by_time(inter, "cold_user")  # support sets are each user's first interactions in time
        rng = np.random.default_rng(seed)
        users = rng.permutation(np.unique(inter["user"].to_numpy()))
        n_train, n_valid, n_test = ratio_counts(len(users), fractions)
        if min(n_train, n_valid, n_test) < 1:
            raise DataError(
                f"scenario=cold_user divided {len(users)} users into {n_train} / {n_valid} / {n_test} (train / valid / "
                "test); each needs at least one. Change scenario.fractions or use a larger dataset."
            )
        groups = {TRAIN: users[:n_train], "valid": users[n_train : n_train + n_valid], "test": users[n_train + n_valid :]}
        train = inter[inter["user"].isin(groups[TRAIN])].reset_index(drop=True)
        if self.shots is not None:
            k = check_shots(self.shots, len(train), "training interactions")
            train = train.iloc[np.sort(rng.choice(len(train), size=k, replace=False))].reset_index(drop=True)
        parts: dict[str, pd.DataFrame] = {TRAIN: train}
        for stage in STAGES:
            parts[support_part(stage)], parts[stage] = self._support_query(inter, groups[stage], stage)
        if self.label_threshold is not None:
            for name in list(parts):
                parts[name] = labelled(parts[name], self.label_threshold)
            self._check_both_classes(parts, dataset)
        everything = np.arange(dataset.n_items)
        segments = popularity_segments(everything, head_items(train, dataset.n_items, self.head_fraction))
        pairs = self.label_threshold is not None
        stages = {
            stage: Stage((TRAIN, support_part(stage)), stage, everything, segments, stage if pairs else None)
            for stage in STAGES
        }
        info = {
            "users": {name: int(len(ids)) for name, ids in groups.items()},
            "support": self.support,
            "train_interactions_used": int(len(train)),
            **({"positive_rate": {n: float(parts[n]["label"].mean()) for n in (TRAIN, *STAGES)}} if pairs else {}),
        }
        return Split(dataset=dataset, parts=parts, stages=stages, info=info)

    def _support_query(self, inter: pd.DataFrame, users: np.ndarray, stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(each user's first ``support`` interactions in time, the rest); a DataError if a user has no rest."""
        rows = inter[inter["user"].isin(users)]
        rows = rows.iloc[np.lexsort((np.arange(len(rows)), rows["timestamp"].to_numpy(), rows["user"].to_numpy()))]
        counts = rows.groupby("user").size()
        short = counts[counts <= self.support]
        if len(short):
            raise DataError(
                f"scenario.support={self.support} leaves no query interaction for {len(short)} {stage} user(s) (e.g. user "
                f"{short.index[0]} has {int(short.iloc[0])} interactions): every cold user needs more than support "
                f"interactions; the fewest any {stage} user has is {int(counts.min())}, so use scenario.support <= "
                f"{int(counts.min()) - 1}."
            )
        position = rows.groupby("user", sort=False).cumcount().to_numpy()
        return rows[position < self.support].reset_index(drop=True), rows[position >= self.support].reset_index(drop=True)

    def _check_both_classes(self, parts: dict[str, pd.DataFrame], dataset: Dataset) -> None:
        for stage in STAGES:
            labels = parts[stage]["label"]
            if labels.nunique() < 2:
                ratings = dataset.inter["rating"]
                raise ConfigError(
                    f"scenario.label_threshold={self.label_threshold} labels every {stage} query pair "
                    f"{int(labels.iloc[0])}: ratings run from {ratings.min():g} to {ratings.max():g}, so the threshold must "
                    f"lie in ({ratings.min():g}, {ratings.max():g}] for both classes to occur."
                )
