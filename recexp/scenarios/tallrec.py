"""``scenario=tallrec``: TALLRec's MovieLens-100K few-shot protocol (Bao et al., RecSys 2023), sample for sample.

TALLRec's ``preprocess_movie.py``: label = rating > 3; users in order of their first interaction
in the file, each user's interactions sorted by timestamp (ties keep file order); every
interaction from the 11th on is a sample whose history is the user's previous 10 interactions with
their labels; the last 10,000 samples are kept and cut 8:1:1 in that order into train, valid and
test. ``shots=K`` keeps K training samples drawn with the seed (all when null). Test users never
occur in training, so this is a user cold-start benchmark.

Parts: ``train``, ``valid``, ``test`` hold one row per sample (the target interaction, its 0/1
``label`` and its ``sample`` number: its index among the kept samples, 0..9999);
``train_history``, ``valid_history``, ``test_history`` hold each sample's 10 history interactions,
labelled, oldest first, with the ``sample`` they belong to. Stage ``valid`` (``test``) scores the
labelled pairs of ``valid`` (``test``) and may read only ``valid_history`` (``test_history``): the
split's ``histories`` name each part's history part, where a model finds a pair's history through the
pair's ``sample``. There is no full ranking (``positives`` is None).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recexp.errors import ConfigError, DataError, check_int
from recexp.interfaces import TRAIN, Dataset, Split, Stage
from recexp.scenarios.common import check_shots

STAGES = ("valid", "test")


def history_part(stage: str) -> str:
    """The part holding the 10-item histories of the samples of ``stage`` (or of ``train``)."""
    return f"{stage}_history"


@dataclass(frozen=True)
class TallRecScenario:
    shots: int | None = None  # K training samples drawn with the seed; null: all of them (8,000)
    history: int = 10  # interactions before a target that form its history (TALLRec: 10)
    samples: int = 10000  # the last this many samples are kept (TALLRec: 10,000)
    like_above: float = 3  # label 1 when rating > this (TALLRec: 3, so 4 and 5 stars are liked)

    def build(self, dataset: Dataset, seed: int) -> Split:
        check_int("scenario.history", self.history, 1)
        check_int("scenario.samples", self.samples, 1)
        ordered = tallrec_order(dataset.inter)
        ordered["label"] = (ordered["rating"] > self.like_above).astype(np.float64)
        position = ordered.groupby("user", sort=False).cumcount().to_numpy()
        targets = np.flatnonzero(position >= self.history)[-self.samples :]
        if len(targets) < 10:
            raise DataError(
                f"scenario=tallrec found {len(targets)} samples (interactions with at least {self.history} earlier "
                "ones by the same user); it needs at least 10 to cut 8:1:1. Lower scenario.history or use more data."
            )
        n = len(targets)
        if ordered["label"].to_numpy()[targets].min() == ordered["label"].to_numpy()[targets].max():
            ratings = ordered["rating"]
            raise ConfigError(
                f"scenario.like_above={self.like_above} labels every sample {int(ordered['label'].iloc[targets[0]])}: "
                f"ratings run from {ratings.min():g} to {ratings.max():g}, so it must lie in [{ratings.min():g}, "
                f"{ratings.max():g}) for both classes to occur."
            )
        cuts = {TRAIN: targets[: int(n * 0.8)], "valid": targets[int(n * 0.8) : int(n * 0.9)], "test": targets[int(n * 0.9) :]}
        number = {row: i for i, row in enumerate(targets)}
        user = ordered["user"].to_numpy()
        users = {name: int(np.unique(user[rows]).size) for name, rows in cuts.items()}
        shared = np.intersect1d(user[cuts["test"]], user[cuts[TRAIN]])
        if self.shots is not None:
            k = check_shots(self.shots, len(cuts[TRAIN]), "TallRec training samples")
            cuts[TRAIN] = np.sort(np.random.default_rng(seed).choice(cuts[TRAIN], size=k, replace=False))
        parts: dict[str, pd.DataFrame] = {}
        for name, rows in cuts.items():
            parts[name] = ordered.iloc[rows].assign(sample=[number[r] for r in rows]).reset_index(drop=True)
            before = (rows[:, None] - np.arange(self.history, 0, -1)[None, :]).ravel()
            parts[history_part(name)] = ordered.iloc[before].assign(
                sample=np.repeat([number[r] for r in rows], self.history)
            ).reset_index(drop=True)
        stages = {name: Stage(history=(history_part(name),), pairs=name) for name in STAGES}
        test_labels = parts["test"]["label"].to_numpy()
        return Split(
            dataset=dataset, parts=parts, stages=stages, histories={name: history_part(name) for name in cuts},
            info={
                "samples": n,
                "users": users,  # distinct users among all train / valid / test samples (before shots)
                "test_users_in_train": int(len(shared)),
                "train_samples_used": int(len(cuts[TRAIN])),
                "positive_rate": {name: float(parts[name]["label"].mean()) for name in (TRAIN, *STAGES)},
                "test_positive_rate": float(test_labels.mean()),
            },
        )


def tallrec_order(inter: pd.DataFrame) -> pd.DataFrame:
    """Users in order of first appearance, each user's interactions by timestamp, ties in file order."""
    if inter["timestamp"].isna().any() or inter["rating"].isna().any():
        raise DataError(
            "scenario=tallrec needs a rating and a timestamp on every interaction; set dataset.rating_field and "
            "dataset.time_field to those .inter columns."
        )
    user = inter["user"].to_numpy()
    first = pd.unique(user)
    rank = np.empty(user.max() + 1, dtype=np.int64)
    rank[first] = np.arange(len(first))
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), rank[user]))
    return inter.iloc[order].reset_index(drop=True)

