"""Implicit-feedback objectives shared by the text tower and the fusion model, and their batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recexp.errors import ConfigError
from recexp.interfaces import Split
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


def interaction_batches(
    split: Split, seed: int, epoch: int, batch_size: int, limit: int | None = None
) -> list[Batch]:
    """Shuffled train interactions as (users [b], items [b], negatives [b]) batches.

    ``limit`` keeps only that many interactions per epoch (a fresh sample each epoch). Negatives are
    drawn uniformly from the items that occur in training (so cold items are never pushed down),
    redrawn while they are among the user's own train items.
    """
    users = torch.tensor(split.train["user"].to_numpy())
    items = torch.tensor(split.train["item"].to_numpy())
    order = epoch_order(len(items), seed, epoch, limit)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch + 1)
    negatives = _negatives(users[order], users * split.n_items + items, torch.unique(items), split.n_items, generator)
    return [
        (users[order[i : i + batch_size]], items[order[i : i + batch_size]], negatives[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    ]


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


def history_matrix(split: Split, stage: str, device: torch.device) -> torch.Tensor:
    """[n_users, n_items] sparse 0/1 matrix of each user's items in ``split.history(stage)``."""
    frame = split.history(stage).drop_duplicates(["user", "item"])
    index = torch.tensor(frame[["user", "item"]].to_numpy().T, dtype=torch.long)
    values = torch.ones(index.shape[1])
    shape = (split.n_users, split.n_items)
    return torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce().to(device)


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


def interaction_model_settings(
    encoder_trains: bool, samples_per_epoch: int | None, cpu_threads: int | None
) -> tuple[int | None, int | None]:
    """(samples per epoch, CPU threads) of a model trained on interactions over an encoder.

    A trainable encoder sees a sample of each epoch; small heads over cached (frozen) encodings
    train fastest on one CPU thread.
    """
    samples = samples_per_epoch or (SAMPLES_WHEN_TRAINING_ENCODER if encoder_trains else None)
    threads = cpu_threads if cpu_threads is not None or encoder_trains else 1
    return samples, threads
