"""Implicit-feedback objectives shared by the text tower and the fusion model, and their batches."""
from __future__ import annotations

from dataclasses import dataclass

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


def in_batch_softmax(logits: torch.Tensor, items: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, B] (row: example, column: the positive item of each example), items [B] (weights [B]) -> scalar.

    Each example's own positive is its target; the other positives in the batch are its negatives,
    except copies of its own item, which are masked out.
    """
    duplicate = (items[:, None] == items[None, :]) & ~torch.eye(len(items), dtype=torch.bool, device=items.device)
    target = torch.arange(len(items), device=logits.device)
    losses = F.cross_entropy(logits.masked_fill(duplicate, float("-inf")), target, reduction="none")
    return (losses * weights).mean() if weights is not None else losses.mean()


def bpr(positive: torch.Tensor, negative: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """positive [B], negative [B] scores (weights [B], mean 1 over the data) -> scalar ``-mean w log sigmoid(pos - neg)``."""
    losses = -F.logsigmoid(positive - negative)
    return (losses * weights).mean() if weights is not None else losses.mean()


@dataclass(frozen=True)
class Sampling:
    """How training examples are drawn and weighted (``tail=reweight``); the defaults are plain training.

    ``weight_alpha``: each positive's loss is multiplied by ``pop_i ** -weight_alpha`` (normalised to mean 1
    over the training interactions); ``negative_alpha``: negatives are drawn with probability
    proportional to ``pop_i ** negative_alpha`` (0: uniform). ``pop_i`` counts item i's training interactions.
    """

    weight_alpha: float = 0.0
    negative_alpha: float = 0.0


class InteractionData(Dataset):
    """One epoch of shuffled train interactions, each with a negative: batches (users, items, negatives).

    ``limit`` keeps only that many interactions per epoch (a fresh sample each epoch). Negatives are
    drawn uniformly from the items that occur in training (so cold items are never pushed down),
    redrawn while they are among the user's own train items. :meth:`set_epoch` re-draws both.
    ``sampling`` (:class:`Sampling`) weights positives and draws negatives by popularity instead;
    batches are (users [B], items [B], negatives [B], weights [B]).
    """

    def __init__(self, split: Split, seed: int, limit: int | None = None, sampling: Sampling = Sampling()):
        self.users = torch.tensor(split.train["user"].to_numpy())
        self.items = torch.tensor(split.train["item"].to_numpy())
        self.keys = self.users * split.n_items + self.items
        self.pool, counts = torch.unique(self.items, return_counts=True)
        pop = torch.bincount(self.items, minlength=split.n_items).double()
        weights = pop[self.items] ** -sampling.weight_alpha
        self.weights = (weights / weights.mean()).float()  # [n_train], mean 1
        self.pool_probs = None if sampling.negative_alpha == 0 else counts.double() ** sampling.negative_alpha
        self.n_items, self.seed, self.limit = split.n_items, seed, limit
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.order = epoch_order(len(self.items), self.seed, epoch, self.limit)
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch + 1)
        self.negatives = _negatives(self.users[self.order], self.keys, self.pool, self.n_items, generator, self.pool_probs)

    def __len__(self) -> int:
        return len(self.order)

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = torch.as_tensor(indices)
        picked = self.order[rows]
        return self.users[picked], self.items[picked], self.negatives[rows], self.weights[picked]


def _negatives(users, positive_keys, pool, n_items, generator, probs=None, rounds: int = 20) -> torch.Tensor:
    """users [b] -> [b] items from ``pool`` (uniformly, or by ``probs`` [len(pool)]), avoiding keys
    ``user * n_items + item`` in ``positive_keys``."""
    known = torch.sort(positive_keys).values

    def draw(n: int) -> torch.Tensor:
        if probs is None:
            return pool[torch.randint(len(pool), (n,), generator=generator)]
        return pool[torch.multinomial(probs, n, replacement=True, generator=generator)]

    negatives = draw(len(users))
    for _ in range(rounds):
        keys = users * n_items + negatives
        clash = known[torch.searchsorted(known, keys).clamp(max=len(known) - 1)] == keys
        if not clash.any():
            break
        negatives[clash] = draw(int(clash.sum()))
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
