"""``model=lm_classifier``: a cross-encoder that reads a labelled history and a candidate -> P(like) or a rating.

input:   [CLS] Liked: h_1; h_3 ... Disliked: h_2 ... [SEP] candidate item text [SEP]   (history side truncated first)
         (history items by their short names, ``dataset.item_title_template``, else their item text)
output:  classification: P(like) = sigmoid(w . pool(encoder(input)) + b + r * logit(history like rate) + q * item prior)
         regression:     predicted rating = w . pool(encoder(input)) + b

The history of a pair is its :class:`~recexp.models.histories.HistoryTable` row: the ``history_items``
most recent interactions before it (newest first), each liked or disliked by its label (``label``,
else rating >= ``threshold``). On ``scenario=tallrec`` that is each sample's own 10-item history, on
``cold_user`` the support set. With ``rate_prior`` the smoothed share of liked items in that history
enters the logit with a trained weight r (starting at 1), and with ``item_prior`` so does the target
item's like rate in the training data (:func:`~recexp.models.histories.item_prior_logits`), so training
begins from the two like-rate baselines and the encoder learns what they cannot tell. Training is pointwise on labelled train
pairs (binary cross-entropy, or MSE on the rating); ``samples_per_epoch`` pairs per epoch (a fresh
sample each epoch). Labelled pairs of a stage are scored
by ``score_pairs``: probabilities (AUC, GAUC, LogLoss) or ratings (AUC, GAUC, RMSE, MAE). A frozen
encoder's pooled outputs are computed once per pair and kept, so only the head trains after epoch one.

Ranking: a cross-encoder needs one forward pass per (user, item), so ranking all items costs
n_users * n_items passes. With ``rerank=K`` only a shortlist of K items per user is cross-encoded:
the candidates (outside the user's history) closest, by cosine, to the mean text encoding of the
user's history, computed with the encoder as it was before training. Every other item keeps that
cosine as its score, placed below all shortlisted items. ``rerank=null`` cross-encodes every
candidate (exact, slow).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split, Strategy
from recexp.models.histories import HistoryTable, LabelledPairs, history_table, item_prior_logits, like_labels, rate_logit, stage_histories
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.items import item_texts
from recexp.train import Batch

# Trainer defaults: (frozen encoder, trainable encoder).
DEFAULTS = {
    False: dict(max_epochs=3, patience=1, batch_size=64, lr=1e-2),
    True: dict(max_epochs=2, patience=1, batch_size=16, lr=3e-4),
}
HEADS = ("classification", "regression")
PAIR_TOKENS = 128  # tokens per (history, candidate) pair unless encoder.max_length is set; the history side is cut first
NOTHING = "none"


class HistoryPairModel(nn.Module):
    """What the models that read a pair's labelled history with its candidate share: the history tables, the
    text-similarity shortlist for ranking, and chunked scoring of pairs. Subclasses give ``_outputs``: rows [n]
    of a stage's history table, items [n] -> [n] logits of P(like) (or ratings)."""

    sampling = None  # trains on rated pairs, no sampled negatives (tail=reweight refuses it)
    pointwise_output = "probability"
    pair_lengths = None  # (train rows, items) -> tokens of each pair, where training batches group by length

    def __init__(self, encoder: TextEncoder, threshold: float, history_items: int, rerank: int | None,
                 samples_per_epoch: int | None):
        super().__init__()
        if history_items < 1 or (rerank is not None and rerank < 1) or (samples_per_epoch is not None and samples_per_epoch < 1):
            raise ConfigError(
                f"model.module.history_items, rerank and samples_per_epoch must be >= 1, got {history_items}, {rerank}, "
                f"{samples_per_epoch}."
            )
        self.encoder = encoder
        self.threshold, self.history_items, self.rerank = threshold, history_items, rerank
        self.samples_per_epoch = samples_per_epoch
        self.cpu_threads = None
        self.stale = False

    def prepare(self, split: Split, device: torch.device) -> None:
        if self.pointwise_output == "probability" and len(np.unique(like_labels(split.train, self.threshold))) < 2:
            raise ConfigError(
                f"{type(self).__name__} needs liked and disliked training pairs, but every one is labelled the same (threshold "
                f"{self.threshold}): set dataset.rating_field, or a model.module.threshold inside the rating range."
            )
        self.split = split
        self.texts = item_texts(split)
        self.titles = list(split.dataset.item_title) if split.dataset.item_title is not None else self.texts
        self.to(device)
        self.history = stage_histories(split, device)
        self.tables: dict[str, HistoryTable] = {
            name: history_table(split, name, self.history_items, self.threshold) for name in (TRAIN, *split.stages)
        }
        # shortlist encodings, taken before training (saved with the weights: not re-derivable after it)
        self.register_buffer("prior", F.normalize(self.encoder.embed(self.texts), dim=-1))  # [n_items, enc]

    def refresh(self) -> None:
        """Nothing to recompute: frozen encoders' outputs never change (llm_ranker keys its scores by the weights)."""

    def train_data(self, split: Split, seed: int) -> LabelledPairs:
        if self.pointwise_output == "rating":
            targets = split.train["rating"].to_numpy(np.float32)
        else:
            targets = like_labels(split.train, self.threshold)
        return LabelledPairs(split.train, targets, seed, self.samples_per_epoch, self.pair_lengths)

    def _outputs(self, table: str, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
        outputs = self._chunked(users, items, stage)
        return torch.sigmoid(outputs) if self.pointwise_output == "probability" else outputs

    def _candidates(self, stage: str) -> torch.Tensor:
        mask = torch.zeros(self.split.n_items, dtype=torch.bool, device=self.prior.device)
        mask[torch.tensor(self.split.stage(stage).candidates, device=mask.device)] = True
        return mask

    def _chunked(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """No-grad outputs for ``stage``'s pairs in chunks of the encoder's batch size: users [n], items [n] -> [n]."""
        rows, items = self.tables[stage].rows(users, items), items.cpu()
        size = self.encoder.batch_size
        parts = [self._outputs(stage, rows[i : i + size], items[i : i + size]).float() for i in range(0, len(rows), size)]
        return torch.cat(parts).to(users.device) if parts else torch.zeros(0, device=users.device)


class LMClassifier(HistoryPairModel):
    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        threshold: float = 4.0,
        head: str = "classification",
        history_items: int = 10,
        rate_prior: bool = True,
        item_prior: bool = True,
        rerank: int | None = 20,
        samples_per_epoch: int | None = 4096,
    ):
        if head not in HEADS:
            raise ConfigError(f"model.module.head={head!r} is unknown; choose one of {', '.join(HEADS)}.")
        super().__init__(encoder.default_max_length(PAIR_TOKENS).adapt(strategy), threshold, history_items, rerank,
                         samples_per_epoch)
        self.head = nn.Linear(encoder.dim, 1)
        self.rate_weight = nn.Parameter(torch.ones(())) if rate_prior and head == "classification" else None
        self.item_weight = nn.Parameter(torch.ones(())) if item_prior and head == "classification" else None
        self.kind = head
        self.pointwise_output = "probability" if head == "classification" else "rating"
        self.loss = "bce" if head == "classification" else "mse"
        self._pooled: dict[tuple[str, int, int], torch.Tensor] = {}  # frozen encoder: (table, row, item) -> pooled

    def trainer_defaults(self) -> dict:
        return DEFAULTS[self.encoder.trainable]

    def prepare(self, split: Split, device: torch.device) -> None:
        if self.kind == "regression" and split.train["rating"].isna().all():
            raise ConfigError("model.module.head=regression needs ratings: set dataset.rating_field.")
        super().prepare(split, device)
        self._pooled = {}
        self.register_buffer("item_logits", item_prior_logits(split, self.threshold).to(device), persistent=False)

    def prompt(self, items: list[int], labels: list[float]) -> str:
        """A history (newest first, -1 padding) -> 'Liked: a; b. Disliked: c.' by item titles (short names)."""
        liked = [self.titles[i] for i, y in zip(items, labels) if i >= 0 and y > 0.5]
        disliked = [self.titles[i] for i, y in zip(items, labels) if i >= 0 and y <= 0.5]
        return f"Liked: {'; '.join(liked) or NOTHING}. Disliked: {'; '.join(disliked) or NOTHING}."

    def _encode(self, table: str, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """rows [n], items [n] -> [n, dim] pooled cross-encodings (kept per pair when the encoder is frozen)."""
        keys = list(zip(rows.tolist(), items.tolist()))
        keep = not self.encoder.trainable
        todo = [k for k in dict.fromkeys(keys) if not keep or (table, *k) not in self._pooled]
        if todo:
            history_items, history_labels = self.tables[table].gather(torch.tensor([r for r, _ in todo]))
            prompts = [self.prompt(h, y) for h, y in zip(history_items.tolist(), history_labels.tolist())]
            pooled = self.encoder(prompts, [self.texts[i] for _, i in todo])
            if not keep:
                order = {k: n for n, k in enumerate(todo)}
                return pooled[torch.tensor([order[k] for k in keys], device=pooled.device)]
            self._pooled.update({(table, *k): v for k, v in zip(todo, pooled.detach())})
        return torch.stack([self._pooled[(table, *k)] for k in keys])

    def _outputs(self, table: str, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """rows [n] of ``table``'s history rows, items [n] -> [n] head outputs (logits of P(like), or ratings)."""
        outputs = self.head(self._encode(table, rows, items)).squeeze(-1)
        if self.rate_weight is not None:
            history_items, history_labels = self.tables[table].gather(rows)
            outputs = outputs + self.rate_weight * rate_logit(history_labels, (history_items >= 0).float()).to(outputs.device)
        if self.item_weight is not None:
            outputs = outputs + self.item_weight * self.item_logits[items.to(self.item_logits.device)].to(outputs.device)
        return outputs

    def forward(self, batch: Batch) -> torch.Tensor:
        """(rows [B] of train pairs, items [B], targets [B]: 0/1 labels or ratings) -> scalar loss."""
        rows, items, targets = batch
        outputs = self._outputs(TRAIN, rows, items)
        targets = targets.to(outputs.device, outputs.dtype)
        if self.kind == "regression":
            return F.mse_loss(outputs, targets)
        return F.binary_cross_entropy_with_logits(outputs, targets)
