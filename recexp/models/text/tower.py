"""``model=text_tower``: a two-tower recommender built only from text, so cold items score too.

item i:  v_i = normalize(W_item e_i),  e_i = normalize(encoder(item text i))            [dim]
user u:  q_u = normalize(W_user mean_{j in H(u)} e_j  (+ W_text encoder(user text u)))  [dim]
score:   q_u . v_i  (cosine); training divides by ``temperature``.

H(u) is the user's history for the stage (train when validating, train + valid when testing).
While training, the positive item is left out of its own user's mean. The history side always reads
a table of item encodings without gradient: computed once (and cached on disk) when the encoder is
frozen, refreshed once per epoch (and reused by validation) when it trains. A trained encoder
takes item-organised epochs (:class:`~recexp.models.sampling.ItemData`): each step encodes a set
of items once, with gradient, and scores every training interaction and negative that refers to them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split, Strategy
from recexp.models.histories import stage_histories
from recexp.models.losses import batch_loss, check_loss
from recexp.models.sampling import ItemBatch, Sampling
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.items import encode_items, item_texts
from recexp.models.text.training import TRAINED_ENCODER, check_samples, preferred_cpu_threads, train_data
from recexp.train import Batch

FROZEN_ENCODER = dict(max_epochs=30, patience=3, batch_size=512, lr=1e-3)  # trainer defaults; batch = interactions


class TextTower(nn.Module):
    pointwise_output = "score"  # scores only order items
    score_pairs = None  # pair scores are read off score()

    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        dim: int = 64,
        loss: str = "bpr",
        temperature: float = 0.1,
        user_text: bool = False,
        samples_per_epoch: int | None = None,
    ):
        super().__init__()
        if dim < 1 or temperature <= 0:
            raise ConfigError(f"model.module.dim must be >= 1 and temperature > 0, got {dim} and {temperature}.")
        with torch.random.fork_rng(devices=[]):  # the heads start as they do over a frozen encoder
            self.encoder = encoder.adapt(strategy)
        self.item_proj = nn.Linear(encoder.dim, dim)
        self.user_proj = nn.Linear(encoder.dim, dim)
        self.user_text_proj = nn.Linear(encoder.dim, dim) if user_text else None
        self.loss = check_loss(loss)
        self.temperature = temperature
        self.samples_per_epoch = check_samples(samples_per_epoch)
        self.sampling = Sampling()  # popularity-aware weights and negatives (tail=reweight sets them)
        self.stale = True

    @property
    def cpu_threads(self) -> int | None:
        return preferred_cpu_threads(self.encoder.trainable)

    def trainer_defaults(self) -> dict:
        return TRAINED_ENCODER if self.encoder.trainable else FROZEN_ENCODER

    # --- data held for scoring: texts, history matrices, encodings without gradient

    def prepare(self, split: Split, device: torch.device) -> None:
        self.split = split
        self.texts = item_texts(split)
        self.tokens = self.encoder.tokenized(self.texts)
        if self.user_text_proj is not None and split.dataset.user_text is None:
            raise ConfigError("model.module.user_text=true needs user text: set dataset.user_template.")
        self.to(device)
        self.history = stage_histories(split, device)  # train and each stage -> [n_users, n_items] sparse
        self.counts = {stage: m.sum(1).to_dense() for stage, m in self.history.items()}  # [n_users]
        self.stale = True

    def refresh(self) -> None:
        """Recompute the item (and user-text) encodings if the encoder changed since last time."""
        if self.stale:
            self.item_table = F.normalize(self.encoder.embed(self.texts), dim=-1)  # [n_items, enc]
            self.sums = {stage: m @ self.item_table for stage, m in self.history.items()}  # [n_users, enc]
            if self.user_text_proj is not None:
                self.user_table = self.encoder.embed(list(self.split.dataset.user_text))  # [n_users, enc]
            self.stale = False

    def train_data(self, split: Split, seed: int):
        return train_data(self, split, seed)

    # --- the two towers

    def _items(self, items: torch.Tensor) -> torch.Tensor:
        """items [n] -> [n, dim] unit vectors; encodes live (with gradient) when the encoder trains."""
        if self.encoder.trainable and self.training:
            features = encode_items(self.encoder, self.tokens, items)
        else:
            features = self.item_table[items]
        return F.normalize(self.item_proj(features), dim=-1)

    def _users(self, users: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """users [B], pooled history encodings [B, enc] -> [B, dim] unit vectors."""
        query = self.user_proj(pooled)
        if self.user_text_proj is not None:
            query = query + self.user_text_proj(self.user_table[users])
        return F.normalize(query, dim=-1)

    def _train_query(self, users: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """users [B], their positive items [B] -> [B, dim]; the positive is left out of its user's mean."""
        count = self.counts[TRAIN][users].unsqueeze(1)
        pooled = (self.sums[TRAIN][users] - self.item_table[positives]) / (count - 1).clamp(min=1)
        return self._users(users, pooled)

    def forward(self, batch: Batch | ItemBatch) -> torch.Tensor:
        """(users [B], items [B], negatives [B], weights [B]) or an :class:`ItemBatch` -> scalar loss."""
        self.stale = self.encoder.trainable
        return batch_loss(self.loss, batch, self.item_proj.weight.device, self._train_query, self._items, self.temperature)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items] cosine similarities."""
        self.eval()
        users = users.to(self.item_proj.weight.device)
        self.refresh()
        pooled = self.sums[stage][users] / self.counts[stage][users].unsqueeze(1).clamp(min=1)
        return self._users(users, pooled) @ self._items(torch.arange(self.split.n_items, device=users.device)).T
