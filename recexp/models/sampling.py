"""How the implicit-feedback models draw their training examples: popularity-aware settings, and epochs of
shuffled interactions or of items, each interaction with a negative."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from recexp.interfaces import Split
from recexp.train import Batch, EpochData, epoch_order


@dataclass(frozen=True)
class Sampling:
    """How training examples are drawn and weighted (``tail=reweight``); the defaults are plain training.

    ``weight_alpha``: each positive's loss is multiplied by ``pop_i ** -weight_alpha`` (normalised to mean 1
    over the training interactions); ``negative_alpha``: negatives are drawn with probability
    proportional to ``pop_i ** negative_alpha`` (0: uniform). ``pop_i`` counts item i's training interactions.
    """

    weight_alpha: float = 0.0
    negative_alpha: float = 0.0


class InteractionData(EpochData):
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


class ItemBatch(NamedTuple):
    """One step of an item-organised epoch: ``items`` [C] are encoded once; every interaction [N] refers to
    them by position (its positive and its negative)."""

    users: torch.Tensor  # [N]
    positives: torch.Tensor  # [N] positions in items
    negatives: torch.Tensor  # [N] positions in items
    weights: torch.Tensor  # [N], mean 1 over the data
    items: torch.Tensor  # [C] distinct item ids


class ItemData(EpochData):
    """One epoch organised around items, for models whose encoder trains: an epoch costs one encoding
    pass over the training items, not one per interaction.

    An example is a training item; a batch of C items (``trainer.batch_size``) comes with every
    training interaction whose positive is among them, each with a negative drawn from the same C
    items (uniformly, or by ``pop ** negative_alpha``), redrawn while it is one of the user's train
    items. So each epoch sees every training interaction exactly once. Items come shuffled per
    epoch, then sorted by token length inside windows of ``window`` items, so a batch holds texts of
    similar length and pads little. Batches are :class:`ItemBatch`.
    """

    def __init__(self, split: Split, seed: int, lengths: torch.Tensor, sampling: Sampling = Sampling(), window: int = 1024):
        users = torch.tensor(split.train["user"].to_numpy())
        items = torch.tensor(split.train["item"].to_numpy())
        by_item = torch.argsort(items, stable=True)
        self.users, self.items = users[by_item], items[by_item]  # interactions grouped by item
        self.pool, counts = torch.unique(self.items, return_counts=True)  # training items, their interaction counts
        self.starts = torch.zeros(split.n_items + 1, dtype=torch.long)
        self.starts[self.pool + 1] = counts
        self.starts = self.starts.cumsum(0)  # interactions of item i: rows starts[i]:starts[i + 1]
        self.keys = torch.sort(users * split.n_items + items).values
        weights = counts.double()[torch.searchsorted(self.pool, self.items)] ** -sampling.weight_alpha
        self.weights = (weights / weights.mean()).float()
        self.popularity = torch.bincount(items, minlength=split.n_items).double() ** sampling.negative_alpha
        self.uniform = sampling.negative_alpha == 0
        self.lengths, self.n_items, self.seed, self.window = lengths, split.n_items, seed, window
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = epoch
        order = self.pool[epoch_order(len(self.pool), self.seed, epoch)]
        windows = [order[i : i + self.window] for i in range(0, len(order), self.window)]
        self.order = torch.cat([w[torch.argsort(self.lengths[w], stable=True)] for w in windows])

    def __len__(self) -> int:
        return len(self.order)

    def __getitems__(self, indices: list[int]) -> ItemBatch:
        items = self.order[torch.as_tensor(indices)]
        rows = torch.cat([torch.arange(self.starts[i], self.starts[i + 1]) for i in items.tolist()])
        users = self.users[rows]
        position = torch.full((self.n_items,), -1, dtype=torch.long)
        position[items] = torch.arange(len(items))
        # ints hash alike in every process
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(indices[0]))) % 2**63)
        probs = None if self.uniform else self.popularity[items]
        negatives = _negatives(users, self.keys, items, self.n_items, generator, probs, presorted=True)
        return ItemBatch(users, position[self.items[rows]], position[negatives], self.weights[rows], items)


def _negatives(users, positive_keys, pool, n_items, generator, probs=None, rounds: int = 20, presorted=False) -> torch.Tensor:
    """users [b] -> [b] items from ``pool`` (uniformly, or by ``probs`` [len(pool)]), avoiding keys
    ``user * n_items + item`` in ``positive_keys`` (sorted already when ``presorted``)."""
    known = positive_keys if presorted else torch.sort(positive_keys).values

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
