"""Implicit-feedback objectives shared by the text tower and the fusion model, and their batches."""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split
from recexp.models.text_encoder import TextEncoder
from recexp.train import Batch, epoch_order

LOSSES = ("softmax", "bpr")  # in-batch sampled softmax, or BPR with one uniform negative per positive


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ConfigError(f"model.loss={loss!r} is unknown; choose one of {', '.join(LOSSES)}.")
    return loss


def in_batch_softmax(logits: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """logits [B, B] (row: example, column: the positive item of each example), items [B] -> scalar.

    Each example's own positive is its target; the other positives in the batch are its negatives,
    except copies of its own item, which are masked out.
    """
    duplicate = (items[:, None] == items[None, :]) & ~torch.eye(len(items), dtype=torch.bool, device=items.device)
    target = torch.arange(len(items), device=logits.device)
    return F.cross_entropy(logits.masked_fill(duplicate, float("-inf")), target)


def bpr(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """positive [B], negative [B] scores -> scalar ``-mean log sigmoid(pos - neg)``."""
    return -F.logsigmoid(positive - negative).mean()


class InteractionData(Dataset):
    """One epoch of shuffled train interactions, each with a negative: batches (users, items, negatives).

    ``limit`` keeps only that many interactions per epoch (a fresh sample each epoch). Negatives are
    drawn uniformly from the items that occur in training (so cold items are never pushed down),
    redrawn while they are among the user's own train items. :meth:`set_epoch` re-draws both.
    """

    def __init__(self, split: Split, seed: int, limit: int | None = None):
        self.users = torch.tensor(split.train["user"].to_numpy())
        self.items = torch.tensor(split.train["item"].to_numpy())
        self.keys = self.users * split.n_items + self.items
        self.pool = torch.unique(self.items)
        self.n_items, self.seed, self.limit = split.n_items, seed, limit
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.order = epoch_order(len(self.items), self.seed, epoch, self.limit)
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch + 1)
        self.negatives = _negatives(self.users[self.order], self.keys, self.pool, self.n_items, generator)

    def __len__(self) -> int:
        return len(self.order)

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = torch.as_tensor(indices)
        picked = self.order[rows]
        return self.users[picked], self.items[picked], self.negatives[rows]


def _negatives(users, positive_keys, pool, n_items, generator, rounds: int = 20) -> torch.Tensor:
    """users [b] -> [b] items from ``pool``, avoiding keys ``user * n_items + item`` in ``positive_keys``."""
    known = torch.sort(positive_keys).values
    negatives = pool[torch.randint(len(pool), (len(users),), generator=generator)]
    for _ in range(rounds):
        keys = users * n_items + negatives
        clash = known[torch.searchsorted(known, keys).clamp(max=len(known) - 1)] == keys
        if not clash.any():
            break
        negatives[clash] = pool[torch.randint(len(pool), (int(clash.sum()),), generator=generator)]
    return negatives


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


def encode_items(encoder: TextEncoder, texts: list[str], items: torch.Tensor) -> torch.Tensor:
    """items [n] -> unit encodings [n, enc] with gradient, each distinct item encoded once."""
    unique, inverse = items.unique(return_inverse=True)
    return F.normalize(encoder([texts[i] for i in unique.tolist()]), dim=-1)[inverse]


def item_texts(split: Split) -> list[str]:
    if split.dataset.item_text is None:
        raise ConfigError(
            "This model reads item text, but the dataset has none: set dataset.item_template "
            "(e.g. '{movie_title} ({release_year}). Genres: {class}')."
        )
    return list(split.dataset.item_text)


SAMPLES_WHEN_TRAINING_ENCODER = 2048  # train interactions per epoch when the encoder itself trains


def epoch_samples(encoder_trains: bool, given: int | None) -> int | None:
    """Train interactions per epoch: ``given``, else all over a frozen encoder and a sample over a trained one."""
    if given is not None and given < 1:
        raise ConfigError(f"model.module.samples_per_epoch must be >= 1 (or null), got {given}.")
    return given or (SAMPLES_WHEN_TRAINING_ENCODER if encoder_trains else None)


def preferred_cpu_threads(encoder_trains: bool) -> int | None:
    """Small heads over cached (frozen) encodings train fastest on one CPU thread; encoders on all."""
    return None if encoder_trains else 1
