"""The histories models read: each stage's 0/1 user x item matrix (:func:`stage_histories`), and the labelled
history each scored pair is read with, for models that classify (history, target) pairs.

A :class:`HistoryTable` holds, per row, the ``length`` most recent history items (newest first, -1
padding) and their 0/1 like labels. Where rows come from:

* ``train``: one row per training interaction, whose history is the same user's ``length``
  interactions before it in time (where the split names a history part for ``train`` in
  ``Split.histories``, as ``scenario=tallrec`` does, its sample's own history instead). Training
  pairs never see later interactions.
* a stage: where the split names a history part for the stage's pairs, one row per sample (its own
  history); otherwise one row per user, the user's most recent interactions in the stage's history
  parts (``cold_user``: the support set), so every item scored for that user reads the same history.

A label is the row's ``label`` column where the split has one, else ``rating >= threshold``, else 1
(an implicit interaction counts as liked).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recexp.errors import DataError
from recexp.interfaces import TRAIN, Split
from recexp.train import Batch, EpochData, epoch_order


@dataclass(frozen=True)
class HistoryTable:
    items: torch.Tensor  # [n_rows, length] item ids, newest first, -1 where the history is shorter
    labels: torch.Tensor  # [n_rows, length] 0/1 like labels (0 at padding)
    by_pair: dict[tuple[int, int], int] | None  # (user, item) -> row on sample-based stages; None: row = user

    def rows(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [N], items [N] -> [N] rows (-1: a pair with no history row)."""
        if self.by_pair is None:
            return users.cpu().long()
        keys = zip(users.cpu().tolist(), items.cpu().tolist())
        return torch.tensor([self.by_pair.get(key, -1) for key in keys], dtype=torch.long)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [N] (-1: none) -> (items [N, length], labels [N, length]); a missing row reads as empty."""
        rows = rows.cpu()
        known = (rows >= 0)[:, None]
        safe = rows.clamp(min=0)
        return torch.where(known, self.items[safe], -1), torch.where(known, self.labels[safe], 0.0)

    def like_rate(self, rows: torch.Tensor, prior: float = 0.5) -> torch.Tensor:
        """rows [N] -> [N] share of liked items in each history (``prior`` where it is empty)."""
        items, labels = self.gather(rows)
        count = (items >= 0).sum(1)
        return torch.where(count > 0, labels.sum(1) / count.clamp(min=1), torch.full((len(rows),), prior))


def like_labels(frame: pd.DataFrame, threshold: float | None) -> np.ndarray:
    """[len(frame)] 0/1 labels, row by row: ``label``, else ``rating >= threshold``, else 1."""
    out = np.ones(len(frame), dtype=np.float32)
    if threshold is not None and "rating" in frame:
        rating = frame["rating"].to_numpy(dtype=np.float64)
        rated = ~np.isnan(rating)
        out[rated] = rating[rated] >= threshold
    if "label" in frame:
        label = frame["label"].to_numpy(dtype=np.float64)
        known = ~np.isnan(label)
        out[known] = label[known]
    return out


def sample_histories(split: Split, stage: str) -> tuple[dict[tuple[int, int], int], pd.DataFrame] | None:
    """For a stage (or ``train``) whose pairs are samples with their own histories (``Split.histories``): ({(user, item):
    sample} of its pairs, its history rows with a ``sample`` column); None for any other."""
    part = TRAIN if stage == TRAIN else split.stage(stage).pairs
    if part not in split.histories:
        return None
    pairs = split.parts[part]
    keys = zip(pairs["user"].to_numpy().tolist(), pairs["item"].to_numpy().tolist())
    lookup = dict(zip(keys, pairs["sample"].to_numpy().tolist()))
    if len(lookup) != len(pairs):
        raise DataError(f"stage {stage!r} repeats a (user, item) pair, so a pair does not name one sample.")
    return lookup, split.parts[split.histories[part]]


def history_table(split: Split, stage: str, length: int, threshold: float | None) -> HistoryTable:
    """The :class:`HistoryTable` of ``stage`` (or ``train``) with ``length`` items per row."""
    by_sample = sample_histories(split, stage)
    if by_sample is not None:
        lookup, history = by_sample
        pairs = split.train if stage == TRAIN else split.pairs(stage)
        rows = {sample: row for row, sample in enumerate(pairs["sample"].to_numpy().tolist())}
        keys = history["sample"].map(rows).to_numpy()
        order = np.lexsort((-np.arange(len(history)), keys))  # per row, newest (last written) first
        items, labels = _pack(keys[order], history["item"].to_numpy()[order], like_labels(history, threshold)[order],
                              len(rows), length)
        by_pair = None if stage == TRAIN else {pair: rows[sample] for pair, sample in lookup.items()}
        return HistoryTable(items, labels, by_pair)
    if stage == TRAIN:
        return _earlier_interactions(split.train, length, threshold)
    frame = split.history(stage)
    newest = frame.iloc[np.lexsort((-np.arange(len(frame)), -frame["timestamp"].fillna(0).to_numpy(), frame["user"].to_numpy()))]
    items, labels = _pack(newest["user"].to_numpy(), newest["item"].to_numpy(), like_labels(newest, threshold),
                          split.n_users, length)
    return HistoryTable(items, labels, None)


def _earlier_interactions(train: pd.DataFrame, length: int, threshold: float | None) -> HistoryTable:
    """One row per train interaction: the same user's ``length`` interactions before it in time."""
    order = np.lexsort((np.arange(len(train)), train["timestamp"].fillna(0).to_numpy(), train["user"].to_numpy()))
    users, items, labels = train["user"].to_numpy()[order], train["item"].to_numpy()[order], like_labels(train, threshold)[order]
    out_items = np.full((len(train), length), -1, dtype=np.int64)
    out_labels = np.zeros((len(train), length), dtype=np.float32)
    for back in range(1, length + 1):
        same = np.zeros(len(train), dtype=bool)
        same[back:] = users[back:] == users[:-back]
        target = order[same]
        out_items[target, back - 1] = items[np.flatnonzero(same) - back]
        out_labels[target, back - 1] = labels[np.flatnonzero(same) - back]
    return HistoryTable(torch.from_numpy(out_items), torch.from_numpy(out_labels), None)


def _pack(keys: np.ndarray, items: np.ndarray, labels: np.ndarray, n_rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``keys`` (grouped, wanted order within each group) -> the first ``length`` of each, padded."""
    position = pd.Series(keys).groupby(keys, sort=False).cumcount().to_numpy()
    keep = position < length
    out_items = np.full((n_rows, length), -1, dtype=np.int64)
    out_labels = np.zeros((n_rows, length), dtype=np.float32)
    out_items[keys[keep], position[keep]] = items[keep]
    out_labels[keys[keep], position[keep]] = labels[keep]
    return torch.from_numpy(out_items), torch.from_numpy(out_labels)


def item_like_rates(split: Split, prior_weight: float, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """([n_items] each item's like rate in the labelled training data, shrunk towards the overall rate by
    ``prior_weight`` pseudo-interactions; the overall rate). Training data: the train pairs and, on
    sample-based splits, their histories, which come with them; with ``threshold``, a part without labels
    but with ratings is labelled as a classifier trains on it (:func:`like_labels`). Empty when nothing is labelled."""
    frames = [split.train, *([split.parts[split.histories[TRAIN]]] if TRAIN in split.histories else [])]
    found = [_item_labels(frame, threshold) for frame in frames]
    labelled = pd.concat([f for f in found if f is not None] or [pd.DataFrame(columns=["item", "label"])], ignore_index=True)
    if labelled.empty:
        return np.zeros(0), float("nan")
    prior = float(labelled["label"].mean())
    items = labelled["item"].to_numpy(dtype=np.int64)
    sums = np.bincount(items, weights=labelled["label"].to_numpy(dtype=np.float64), minlength=split.n_items)
    counts = np.bincount(items, minlength=split.n_items)
    return (sums + prior_weight * prior) / np.maximum(counts + prior_weight, 1e-12), prior


def _item_labels(frame: pd.DataFrame, threshold: float | None) -> pd.DataFrame | None:
    if "label" in frame:
        return frame[["item", "label"]].dropna()
    if threshold is not None and "rating" in frame and frame["rating"].notna().all():
        return pd.DataFrame({"item": frame["item"].to_numpy(), "label": like_labels(frame, threshold)})
    return None


def item_prior_logits(split: Split, threshold: float | None, prior_weight: float = 5.0) -> torch.Tensor:
    """[n_items] logit(item like rate) - logit(overall rate), 0 for items never labelled (:func:`item_like_rates`)."""
    rates, prior = item_like_rates(split, prior_weight, threshold)
    if not len(rates):
        return torch.zeros(split.n_items)
    logits = torch.logit(torch.as_tensor(rates), eps=1e-4) - torch.logit(torch.tensor(prior, dtype=torch.float64), eps=1e-4)
    return logits.float()


def rate_logit(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """labels [N, H], mask [N, H] (1: a history item) -> [N] logit of the add-one smoothed like rate (0 when empty)."""
    liked, count = (labels * mask).sum(1), mask.sum(1)
    return torch.logit((liked + 1) / (count + 2))


class LabelledPairs(EpochData):
    """One epoch of labelled train pairs: batches (rows, items, targets), rows indexing the train
    :class:`HistoryTable`; ``limit`` pairs per epoch (a fresh seeded sample; all when null). With ``lengths``
    ((rows, items) -> tokens of each pair), :meth:`group_by_length` makes batches of pairs of similar length."""

    def __init__(self, frame: pd.DataFrame, targets: np.ndarray, seed: int, limit: int | None,
                 lengths: Callable[[torch.Tensor, torch.Tensor], list[int]] | None = None):
        known = ~np.isnan(targets)
        self.rows = torch.as_tensor(np.flatnonzero(known))
        self.items = torch.as_tensor(frame["item"].to_numpy()[known])
        self.targets = torch.as_tensor(targets[known])
        self.seed, self.limit, self.lengths, self.batch_size, self.epoch = seed, limit, lengths, None, None
        self.set_epoch(0)

    def group_by_length(self, batch_size: int) -> None:
        """Re-draw the epoch so that each run of ``batch_size`` pairs holds pairs of similar length (where
        ``lengths`` is given), and every epoch after it: the training loop calls it with its batch size."""
        if self.lengths is not None:
            epoch, self.batch_size, self.epoch = self.epoch, batch_size, None
            self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            order = epoch_order(len(self.rows), self.seed, epoch, self.limit)
            if self.batch_size:  # transformers' group_by_length order: shuffled, sorted within mega-batches
                from transformers.trainer_pt_utils import get_length_grouped_indices  # 1.5 s to import

                lengths = self.lengths(self.rows[order], self.items[order])
                generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
                order = order[get_length_grouped_indices(lengths, self.batch_size, generator=generator)]
            self.epoch, self.order = epoch, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitems__(self, indices: list[int]) -> Batch:
        picked = self.order[torch.as_tensor(indices)]
        return self.rows[picked], self.items[picked], self.targets[picked]


def history_matrix(frame: pd.DataFrame, n_users: int, n_items: int, device: torch.device) -> torch.Tensor:
    """[n_users, n_items] sparse 0/1 matrix of each user's items in ``frame``."""
    frame = frame.drop_duplicates(["user", "item"])
    index = torch.tensor(frame[["user", "item"]].to_numpy().T, dtype=torch.long)
    values = torch.ones(index.shape[1])
    return torch.sparse_coo_tensor(index, values, (n_users, n_items), check_invariants=True).coalesce().to(device)


def stage_histories(split: Split, device: torch.device) -> dict[str, torch.Tensor]:
    """``train`` and every stage name -> its history matrix (:func:`history_matrix`)."""
    frames = {TRAIN: split.train, **{stage: split.history(stage) for stage in split.stages}}
    return {name: history_matrix(frame, split.n_users, split.n_items, device) for name, frame in frames.items()}
