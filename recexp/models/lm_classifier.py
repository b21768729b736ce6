"""``model=lm_classifier``: a cross-encoder that reads a user's history and a candidate -> P(like).

input:   [CLS] h_1; h_2; ...; h_n [SEP] candidate item text [SEP]   (the history side is truncated)
output:  P(rating >= threshold) = sigmoid(w . pool(encoder(input)) + b)

h_1..h_n are the texts of the user's most recent liked items (rating >= threshold) in the stage's
history, never including the candidate itself. Training is pointwise binary cross-entropy on rated
train pairs (a fresh sample of ``samples_per_epoch`` each epoch). :meth:`pointwise_metrics` reports
AUC and LogLoss on the rated pairs of valid or test.

Ranking: a cross-encoder needs one forward pass per (user, item), so ranking all items costs
n_users * n_items passes. With ``rerank=K`` only a shortlist of K items per user is cross-encoded:
the candidates (outside the user's history) closest, by cosine, to the mean text encoding of the
user's history, computed once before training. Every other item keeps that cosine as its score,
placed below all shortlisted items. ``rerank=null`` cross-encodes every candidate (exact, slow).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.stats import rankdata
from torch import nn

from recexp import train
from recexp.errors import ConfigError
from recexp.interfaces import FitContext, Split, Strategy
from recexp.models.objectives import history_matrix, item_texts
from recexp.models.text_encoder import TextEncoder
from recexp.train import Batch, TrainerConfig

# Trainer defaults: (frozen encoder, trainable encoder).
DEFAULTS = {
    False: dict(max_epochs=3, patience=1, batch_size=64, lr=1e-2),
    True: dict(max_epochs=2, patience=1, batch_size=16, lr=1e-4),
}
EMPTY_HISTORY = "nothing yet"


class LMClassifier(nn.Module):
    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        trainer: TrainerConfig = TrainerConfig(),
        threshold: float = 4.0,
        history_items: int = 5,
        rerank: int | None = 20,
        samples_per_epoch: int | None = 4096,
        eval_pairs: int | None = 2000,
        cpu_threads: int | None = None,
    ):
        super().__init__()
        if history_items < 1 or (rerank is not None and rerank < 1):
            raise ConfigError(f"model.history_items and model.rerank must be >= 1, got {history_items}, {rerank}.")
        self.encoder = encoder.adapt(strategy)
        self.head = nn.Linear(encoder.dim, 1)
        self.threshold, self.history_items, self.rerank = threshold, history_items, rerank
        self.samples_per_epoch, self.eval_pairs = samples_per_epoch, eval_pairs
        self.trainer = train.with_defaults(trainer, **DEFAULTS[self.encoder.trainable])
        self.cpu_threads = cpu_threads
        self.stats = train.FitStats()
        self.artifact_bytes = 0

    def _prepare(self, split: Split, device: torch.device) -> None:
        if split.train["rating"].isna().all():
            raise ConfigError("model=lm_classifier needs ratings for its labels: set dataset.rating_field.")
        self.split = split
        self.texts = item_texts(split)
        self.to(device)
        self.history = {stage: history_matrix(split, stage, device) for stage in ("valid", "test")}
        self.liked = {stage: _recent_liked(split.history(stage), self.threshold) for stage in ("valid", "test")}

    def _history_text(self, user: int, stage: str, candidate: int) -> str:
        items = [i for i in self.liked[stage].get(user, ()) if i != candidate][: self.history_items]
        return "; ".join(self.texts[i] for i in items) or EMPTY_HISTORY

    def _logits(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [n], items [n] -> [n] logits of P(like); stage picks the history ('valid' = train)."""
        pairs = list(zip(users.tolist(), items.tolist()))
        histories = [self._history_text(u, stage, i) for u, i in pairs]
        return self.head(self.encoder(histories, [self.texts[i] for _, i in pairs])).squeeze(-1)

    def _loss(self, batch: Batch) -> torch.Tensor:
        users, items, labels = batch
        logits = self._logits(users, items, "valid")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.device))

    def _batches(self, epoch: int) -> list[Batch]:
        train_frame = self.split.train
        order = train.epoch_order(len(train_frame), self.seed, epoch, self.samples_per_epoch).numpy()
        users = torch.tensor(train_frame["user"].to_numpy()[order])
        items = torch.tensor(train_frame["item"].to_numpy()[order])
        labels = torch.as_tensor((train_frame["rating"].to_numpy()[order] >= self.threshold).astype(np.float32))
        size = self.trainer.batch_size
        return [(users[i : i + size], items[i : i + size], labels[i : i + size]) for i in range(0, len(order), size)]

    # --- Recommender

    def fit(self, split: Split, ctx: FitContext) -> None:
        self._prepare(split, ctx.device)
        self.prior = F.normalize(self.encoder.embed(self.texts), dim=-1)  # [n_items, enc], before training
        self.seed = ctx.seed
        self.stats = train.fit(self, split, ctx, self.trainer, self._batches, self._loss, self.cpu_threads)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]: cross-encoder logits on the shortlist, text cosine elsewhere (lower)."""
        self.eval()
        users = users.to(self.prior.device)
        history = torch.index_select(self.history[stage], 0, users).to_dense()  # [B, n_items] 0/1
        query = F.normalize(history @ self.prior, dim=-1)
        prior = (query @ self.prior.T).masked_fill((history > 0) | ~self._candidates(stage), float("-inf"))
        if self.rerank is None:
            shortlist = torch.as_tensor(self.split.candidates[stage], device=users.device).expand(len(users), -1)
        else:
            shortlist = prior.topk(min(self.rerank, prior.shape[1]), dim=1).indices  # [B, K]
        logits = self._pair_logits(users.repeat_interleave(shortlist.shape[1]), shortlist.reshape(-1), stage)
        logits = logits.view_as(shortlist)
        floor = logits.min(dim=1, keepdim=True).values - 2.0  # cosines lie in [-1, 1]
        return (floor + prior).scatter(1, shortlist, logits)

    def _candidates(self, stage: str) -> torch.Tensor:
        mask = torch.zeros(self.split.n_items, dtype=torch.bool, device=self.prior.device)
        mask[torch.tensor(self.split.candidates[stage], device=mask.device)] = True
        return mask

    def _pair_logits(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """Chunked no-grad cross-encoding: users [n], items [n] -> [n] logits."""
        size = self.encoder.batch_size
        parts = [
            self._logits(users[i : i + size], items[i : i + size], stage).float() for i in range(0, len(users), size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, device=users.device)

    @torch.no_grad()
    def pointwise_metrics(self, stage: str) -> dict[str, float]:
        """AUC and LogLoss of P(like) on (a seeded sample of ``eval_pairs``) rated pairs of ``stage``."""
        self.eval()
        frame = self.split.frame(stage).dropna(subset=["rating"])
        if self.eval_pairs and len(frame) > self.eval_pairs:
            frame = frame.sample(n=self.eval_pairs, random_state=0)
        users = torch.tensor(frame["user"].to_numpy(), device=self.prior.device)
        items = torch.tensor(frame["item"].to_numpy(), device=self.prior.device)
        probs = torch.sigmoid(self._pair_logits(users, items, stage)).cpu().numpy()
        labels = (frame["rating"].to_numpy() >= self.threshold).astype(np.float64)
        return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs)}

    def parameter_counts(self) -> tuple[int, int]:
        return train.parameter_counts(self)

    def cost_extras(self) -> dict[str, float]:
        return {**self.stats.cost(), **self.encoder.cache_stats(), "artifact_bytes": self.artifact_bytes}

    def save(self, directory: str | Path) -> None:
        """Trained weights, plus the shortlist encodings (taken before training, so not re-derivable)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file({"prior": self.prior.cpu().contiguous()}, Path(directory) / "prior.safetensors")
        self.artifact_bytes = train.save_weights(self, directory)

    def load(self, directory: str | Path, split: Split, device: torch.device | str = "cpu") -> None:
        """Rebuild the scoring state for ``split`` and read what :meth:`save` wrote."""
        self._prepare(split, torch.device(device))
        self.prior = load_file(Path(directory) / "prior.safetensors")["prior"].to(device)
        train.load_weights(self, directory)


def _recent_liked(frame: pd.DataFrame, threshold: float) -> dict[int, list[int]]:
    """user -> items rated >= threshold, most recent first."""
    liked = frame[frame["rating"] >= threshold].sort_values("timestamp", ascending=False, kind="stable")
    return {int(u): group.tolist() for u, group in liked.groupby("user", sort=False)["item"]}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties share their mean rank); NaN without both classes."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` (clipped to [eps, 1 - eps])."""
    probs = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
