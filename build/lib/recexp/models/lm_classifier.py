"""``model=lm_classifier``: a cross-encoder that reads a user's history and a candidate -> P(like) or a rating.

input:   [CLS] h_1; h_2; ...; h_n [SEP] candidate item text [SEP]   (the history side is truncated)
output:  classification: P(rating >= threshold) = sigmoid(w . pool(encoder(input)) + b)
         regression:     predicted rating        = w . pool(encoder(input)) + b

h_1..h_n are the texts of the user's most recent liked items (rating >= threshold) in the stage's
history, never including the candidate itself. Training is pointwise on rated train pairs (binary
cross-entropy on the like label, or MSE on the rating; a fresh sample of ``samples_per_epoch``
each epoch). Labelled pairs of a stage (``scenario.label_threshold``) are scored by
``score_pairs``: probabilities (AUC, GAUC, LogLoss) or ratings (AUC, GAUC, RMSE, MAE).

Ranking: a cross-encoder needs one forward pass per (user, item), so ranking all items costs
n_users * n_items passes. With ``rerank=K`` only a shortlist of K items per user is cross-encoded:
the candidates (outside the user's history) closest, by cosine, to the mean text encoding of the
user's history, computed with the encoder as it was before training. Every other item keeps that
cosine as its score, placed below all shortlisted items. ``rerank=null`` cross-encodes every
candidate (exact, slow).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split, Strategy
from recexp.models.objectives import item_texts, stage_histories
from recexp.models.text_encoder import TextEncoder
from recexp.train import Batch, epoch_order

# Trainer defaults: (frozen encoder, trainable encoder).
DEFAULTS = {
    False: dict(max_epochs=3, patience=1, batch_size=64, lr=1e-2),
    True: dict(max_epochs=2, patience=1, batch_size=16, lr=1e-4),
}
HEADS = ("classification", "regression")
EMPTY_HISTORY = "nothing yet"


class LMClassifier(nn.Module):
    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        threshold: float = 4.0,
        head: str = "classification",
        history_items: int = 5,
        rerank: int | None = 20,
        samples_per_epoch: int | None = 4096,
    ):
        super().__init__()
        if history_items < 1 or (rerank is not None and rerank < 1):
            raise ConfigError(f"model.module.history_items and rerank must be >= 1, got {history_items}, {rerank}.")
        if head not in HEADS:
            raise ConfigError(f"model.module.head={head!r} is unknown; choose one of {', '.join(HEADS)}.")
        self.encoder = encoder.adapt(strategy)
        self.head = nn.Linear(encoder.dim, 1)
        self.threshold, self.history_items, self.rerank, self.kind = threshold, history_items, rerank, head
        self.samples_per_epoch = samples_per_epoch
        self.pointwise_output = "probability" if head == "classification" else "rating"
        self.cpu_threads = None
        self.stale = False

    def trainer_defaults(self) -> dict:
        return DEFAULTS[self.encoder.trainable]

    def prepare(self, split: Split, device: torch.device) -> None:
        if split.train["rating"].isna().all():
            raise ConfigError("model=lm_classifier needs ratings for its labels: set dataset.rating_field.")
        self.split = split
        self.texts = item_texts(split)
        self.to(device)
        self.history = stage_histories(split, device)
        frames = {TRAIN: split.train, **{stage: split.history(stage) for stage in split.stages}}
        self.liked = {name: _recent_liked(frame, self.threshold) for name, frame in frames.items()}
        # shortlist encodings, taken before training (saved with the weights: not re-derivable after it)
        self.register_buffer("prior", F.normalize(self.encoder.embed(self.texts), dim=-1))  # [n_items, enc]

    def refresh(self) -> None:
        """Nothing is cached from the trained weights."""

    def train_data(self, split: Split, seed: int) -> "RatedPairs":
        return RatedPairs(split.train, seed, self.samples_per_epoch, self.threshold, self.kind == "regression")

    def _history_text(self, user: int, stage: str, candidate: int) -> str:
        items = [i for i in self.liked[stage].get(user, ()) if i != candidate][: self.history_items]
        return "; ".join(self.texts[i] for i in items) or EMPTY_HISTORY

    def _outputs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [n], items [n] -> [n] head outputs (logits of P(like), or ratings) with ``stage``'s history."""
        pairs = list(zip(users.tolist(), items.tolist()))
        histories = [self._history_text(u, stage, i) for u, i in pairs]
        return self.head(self.encoder(histories, [self.texts[i] for _, i in pairs])).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(users [B], items [B], targets [B]: 0/1 labels or ratings) -> scalar loss."""
        users, items, targets = batch
        outputs = self._outputs(users, items, TRAIN)
        targets = targets.to(outputs.device, outputs.dtype)
        if self.kind == "regression":
            return F.mse_loss(outputs, targets)
        return F.binary_cross_entropy_with_logits(outputs, targets)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]: cross-encoder outputs on the shortlist, text cosine elsewhere (lower)."""
        self.eval()
        users = users.to(self.prior.device)
        history = torch.index_select(self.history[stage], 0, users).to_dense()  # [B, n_items] 0/1
        query = F.normalize(history @ self.prior, dim=-1)
        prior = (query @ self.prior.T).masked_fill((history > 0) | ~self._candidates(stage), float("-inf"))
        if self.rerank is None:
            shortlist = torch.as_tensor(self.split.stage(stage).candidates, device=users.device).expand(len(users), -1)
        else:
            shortlist = prior.topk(min(self.rerank, prior.shape[1]), dim=1).indices  # [B, K]
        outputs = self._chunked(users.repeat_interleave(shortlist.shape[1]), shortlist.reshape(-1), stage)
        outputs = outputs.view_as(shortlist)
        floor = outputs.min(dim=1, keepdim=True).values - 2.0  # cosines lie in [-1, 1]
        return (floor + prior).scatter(1, shortlist, outputs)

    @torch.no_grad()
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] P(like) (classification) or predicted ratings (regression)."""
        self.eval()
        outputs = self._chunked(users.to(self.prior.device), items.to(self.prior.device), stage)
        return torch.sigmoid(outputs) if self.kind == "classification" else outputs

    def _candidates(self, stage: str) -> torch.Tensor:
        mask = torch.zeros(self.split.n_items, dtype=torch.bool, device=self.prior.device)
        mask[torch.tensor(self.split.stage(stage).candidates, device=mask.device)] = True
        return mask

    def _chunked(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """No-grad cross-encoding in chunks: users [n], items [n] -> [n] head outputs."""
        size = self.encoder.batch_size
        parts = [self._outputs(users[i : i + size], items[i : i + size], stage).float() for i in range(0, len(users), size)]
        return torch.cat(parts) if parts else torch.zeros(0, device=users.device)


class RatedPairs(Dataset):
    """One epoch of rated train pairs: batches (users, items, targets), targets the 0/1 like label or
    the rating; ``limit`` pairs a fresh seeded sample each epoch."""

    def __init__(self, frame: pd.DataFrame, seed: int, limit: int | None, threshold: float, ratings: bool):
        frame = frame.dropna(subset=["rating"])
        self.users = torch.tensor(frame["user"].to_numpy())
        self.items = torch.tensor(frame["item"].to_numpy())
        rating = frame["rating"].to_numpy()
        self.targets = torch.as_tensor((rating if ratings else rating >= threshold).astype(np.float32))
        self.seed, self.limit, self.epoch = seed, limit, None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.order = epoch, epoch_order(len(self.users), self.seed, epoch, self.limit)

    def __len__(self) -> int:
        return len(self.order)

    def __getitems__(self, indices: list[int]) -> Batch:
        picked = self.order[torch.as_tensor(indices)]
        return self.users[picked], self.items[picked], self.targets[picked]


def _recent_liked(frame: pd.DataFrame, threshold: float) -> dict[int, list[int]]:
    """user -> items rated >= threshold, most recent first."""
    liked = frame[frame["rating"] >= threshold].sort_values("timestamp", ascending=False, kind="stable")
    return {int(u): group.tolist() for u, group in liked.groupby("user", sort=False)["item"]}
