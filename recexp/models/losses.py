"""The implicit-feedback losses of the text tower and the fusion model, on either kind of batch."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from recexp.errors import ConfigError
from recexp.models.sampling import ItemBatch
from recexp.train import Batch

LOSSES = ("softmax", "bpr")  # in-batch sampled softmax, or BPR with one uniform negative per positive


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ConfigError(f"model.loss={loss!r} is unknown; choose one of {', '.join(LOSSES)}.")
    return loss


def batch_loss(
    loss: str,
    batch: Batch | ItemBatch,
    device: torch.device,
    query: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    temperature: float = 1.0,
) -> torch.Tensor:
    """The scalar loss of a batch of interactions (users, items, negatives, weights [B]) or of an :class:`ItemBatch`,
    moved to ``device``. ``query(users [N], positives [N]) -> [N, d]`` and ``encode(items [n]) -> [n, d]`` give the
    two sides, scored by dot product / ``temperature``: BPR against each negative, or a softmax over the batch's items."""
    if isinstance(batch, ItemBatch):
        batch = ItemBatch(*(t.to(device) for t in batch))
        return item_batch_loss(loss, query(batch.users, batch.items[batch.positives]), encode(batch.items), batch, temperature)
    users, items, negatives, weights = (t.to(device) for t in batch)
    queries = query(users, items)
    if loss == "bpr":
        vectors = encode(torch.cat([items, negatives]))
        pos, neg = vectors[: len(items)], vectors[len(items) :]
        return bpr((queries * pos).sum(1) / temperature, (queries * neg).sum(1) / temperature, weights)
    return in_batch_softmax(queries @ encode(items).T / temperature, items, weights)


def in_batch_softmax(logits: torch.Tensor, items: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, B] (row: example, column: the positive item of each example), items [B] (weights [B]) -> scalar.

    Each example's own positive is its target; the other positives in the batch are its negatives,
    except copies of its own item, which are masked out.
    """
    duplicate = (items[:, None] == items[None, :]) & ~torch.eye(len(items), dtype=torch.bool, device=items.device)
    target = torch.arange(len(items), device=logits.device)
    losses = F.cross_entropy(logits.masked_fill(duplicate, float("-inf")), target, reduction="none")
    return (losses * weights).mean() if weights is not None else losses.mean()


def item_batch_loss(loss: str, query: torch.Tensor, vectors: torch.Tensor, batch, temperature: float = 1.0) -> torch.Tensor:
    """query [N, d] per interaction, vectors [C, d] of ``batch.items`` -> scalar loss of an :class:`ItemBatch`:
    BPR against each interaction's negative, or a softmax over the C items (the positive is the target)."""
    if loss == "bpr":
        scores = lambda positions: (query * vectors[positions]).sum(1) / temperature  # noqa: E731
        return bpr(scores(batch.positives), scores(batch.negatives), batch.weights)
    losses = F.cross_entropy(query @ vectors.T / temperature, batch.positives, reduction="none")
    return (losses * batch.weights).mean()


def bpr(positive: torch.Tensor, negative: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """positive [B], negative [B] scores (weights [B], mean 1 over the data) -> scalar ``-mean w log sigmoid(pos - neg)``."""
    losses = -F.logsigmoid(positive - negative)
    return (losses * weights).mean() if weights is not None else losses.mean()
