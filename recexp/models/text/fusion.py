"""``model=fusion``: matrix factorisation whose items combine a learned ID embedding with their text.

item i:  x_i = combine(m_i * id_i, t_i),  t_i = W_text normalize(encoder(item text i))  [dim; concat: 2*dim]
user u:  p_u (a learned embedding)                                                [same size as x_i]
score:   p_u . x_i

``m_i`` is 0 for items without training interactions (cold items), so they score from text through
the same path; during training ``id_dropout`` zeroes a random share of ID parts to teach that path.
combine: ``sum`` (id + t), ``concat`` ([id, t]), ``gate`` (g * id + (1 - g) * t with
g = sigmoid(W_gate [id, t])). ``id_init`` starts the ID table from another model's item embeddings
(e.g. a trained RecBole BPR): an ``.npz`` (or a ``torch.save`` dict) with ``tokens`` [n] raw item
id tokens and ``embeddings`` [n, dim]; items missing there keep their random start.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError
from recexp.interfaces import Split, Strategy
from recexp.models.losses import batch_loss, check_loss
from recexp.models.sampling import ItemBatch, Sampling
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.items import encode_items, item_texts
from recexp.models.text.training import TRAINED_ENCODER, check_samples, preferred_cpu_threads, train_data
from recexp.train import Batch

COMBINES = ("concat", "sum", "gate")
FROZEN_ENCODER = dict(max_epochs=300, patience=10, batch_size=2048, lr=1e-3)  # trainer defaults; batch = interactions


class Fusion(nn.Module):
    pointwise_output = "score"  # scores only order items
    score_pairs = None  # pair scores are read off score()

    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        dim: int = 64,
        combine: str = "sum",
        id_dropout: float = 0.1,
        loss: str = "bpr",
        id_init: str | None = None,
        samples_per_epoch: int | None = None,
    ):
        super().__init__()
        if combine not in COMBINES:
            raise ConfigError(f"model.module.combine={combine!r} is unknown; choose one of {', '.join(COMBINES)}.")
        if dim < 1 or not 0 <= id_dropout < 1:
            raise ConfigError(f"model.module.dim must be >= 1 and id_dropout in [0, 1), got {dim}, {id_dropout}.")
        with torch.random.fork_rng(devices=[]):  # the heads start as they do over a frozen encoder
            self.encoder = encoder.adapt(strategy)
        self.text_proj = nn.Linear(encoder.dim, dim)
        self.gate = nn.Linear(2 * dim, dim) if combine == "gate" else None
        self.dim, self.combine, self.id_dropout, self.id_init = dim, combine, id_dropout, id_init
        self.loss = check_loss(loss)
        self.samples_per_epoch = check_samples(samples_per_epoch)
        self.sampling = Sampling()  # popularity-aware weights and negatives (tail=reweight sets them)
        self.stale = True
        self.item_id: nn.Embedding | None = None  # the ID tables, sized by the first split prepared

    @property
    def cpu_threads(self) -> int | None:
        return preferred_cpu_threads(self.encoder.trainable)

    def trainer_defaults(self) -> dict:
        return TRAINED_ENCODER if self.encoder.trainable else FROZEN_ENCODER

    def prepare(self, split: Split, device: torch.device) -> None:
        """Size the ID tables for ``split`` (once: a later split continues them)."""
        self.split = split
        self.texts = item_texts(split)
        self.tokens = self.encoder.tokenized(self.texts)
        if self.item_id is None:
            width = 2 * self.dim if self.combine == "concat" else self.dim
            self.item_id = nn.Embedding(split.n_items, self.dim)
            self.user_id = nn.Embedding(split.n_users, width)
            for table in (self.item_id, self.user_id):
                nn.init.xavier_normal_(table.weight)
            if self.id_init:
                _copy_rows(self.item_id.weight, self.id_init, split.dataset.item_tokens)
            # [n_items] 1 for items with a trained ID part; a buffer, so it is saved with the weights
            self.register_buffer("has_id", torch.zeros(split.n_items))
        self.to(device)
        self.stale = True

    def refresh(self) -> None:
        if self.stale:
            self.text_table = F.normalize(self.encoder.embed(self.texts), dim=-1)  # [n_items, enc]
            self.stale = False

    def train_data(self, split: Split, seed: int):
        """Training interactions; their items get an ID part from now on (cold items keep text only)."""
        self.has_id[torch.tensor(split.train["item"].unique(), device=self.has_id.device)] = 1.0
        return train_data(self, split, seed)

    def _items(self, items: torch.Tensor) -> torch.Tensor:
        """items [n] -> fused item vectors [n, dim] (or [n, 2*dim] for concat)."""
        if self.encoder.trainable and self.training:
            text = self.text_proj(encode_items(self.encoder, self.tokens, items))
        else:
            text = self.text_proj(self.text_table[items])
        keep = self.has_id[items]
        if self.training and self.id_dropout > 0:
            keep = keep * (torch.rand(len(items), device=items.device) >= self.id_dropout)
        ids = self.item_id(items) * keep.unsqueeze(1)
        if self.combine == "sum":
            return ids + text
        if self.combine == "concat":
            return torch.cat([ids, text], dim=1)
        gate = torch.sigmoid(self.gate(torch.cat([ids, text], dim=1)))
        return gate * ids + (1 - gate) * text

    def forward(self, batch: Batch | ItemBatch) -> torch.Tensor:
        """(users [B], items [B], negatives [B], weights [B]) or an :class:`ItemBatch` -> scalar loss."""
        self.stale = self.encoder.trainable
        return batch_loss(self.loss, batch, self.has_id.device, lambda users, positives: self.user_id(users), self._items)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items] dot products."""
        self.eval()
        self.refresh()
        users = users.to(self.has_id.device)
        return self.user_id(users) @ self._items(torch.arange(self.split.n_items, device=users.device)).T


def _copy_rows(weight: torch.Tensor, path: str, item_tokens: np.ndarray) -> None:
    """Overwrite rows of ``weight`` [n_items, dim] with the embeddings stored for their tokens."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.id_init={path!r} does not exist; give an .npz with 'tokens' and 'embeddings'.")
    stored = dict(np.load(file, allow_pickle=False)) if file.suffix == ".npz" else torch.load(file, weights_only=True)
    if not {"tokens", "embeddings"} <= set(stored):
        raise ConfigError(f"{file} must hold 'tokens' and 'embeddings'; it has {sorted(stored)}.")
    vectors = torch.as_tensor(np.asarray(stored["embeddings"]), dtype=weight.dtype)
    if vectors.ndim != 2 or vectors.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"{file}: embeddings have shape {tuple(vectors.shape)}; model.dim={weight.shape[1]} must match their width."
        )
    row_of = {str(token): row for row, token in enumerate(stored["tokens"])}
    pairs = [(i, row_of[str(t)]) for i, t in enumerate(item_tokens) if str(t) in row_of]
    if not pairs:
        raise ConfigError(f"{file}: none of its tokens is an item id of this dataset.")
    targets, rows = (torch.as_tensor(x) for x in zip(*pairs))
    with torch.no_grad():
        weight[targets] = vectors[rows]
