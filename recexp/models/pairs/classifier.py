"""``model=pair_classifier``: small trained classifiers of (labelled history, target item) -> P(like).

The few-shot arms that need no cross-encoder: ID baselines, a head on frozen text features, and
their fusion. Each item is represented per field (target, liked history, disliked history) by

* ``inputs=ids``: a learned ID embedding;
* ``inputs=text``: its frozen sentence embedding (the packaged all-MiniLM-L6-v2 by default, cached
  on disk) through a learned linear projection;
* ``inputs=both``: the sum of the two (fusion of ID and text features).

A pair's history is its :class:`~recexp.models.histories.HistoryTable` row (the ``history_items``
interactions before it, liked or disliked). It is read by ``reader``:

* ``fm``: a factorisation machine (Rendle 2010) over three fields: the target item (one-hot), the
  liked and the disliked history (bags, each item weighted 1/n). Linear terms plus every pairwise
  interaction <v_i, v_j> x_i x_j, by the usual O(kn) identity.
* ``gru``: TALLRec's recipe for its sequential ID baselines: a GRU over the history, oldest first
  (item vector + like/dislike embedding), its last state and the target vector through an MLP.
* ``mlp``: the mean liked and mean disliked vectors, the target vector and their products through
  an MLP.

With ``rate_prior`` the history's smoothed like rate, and with ``item_prior`` the target item's like rate in
the training data, enter the logit with trained weights (starting at 1), as in ``lm_classifier``. Training is binary
cross-entropy on labelled train pairs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split
from recexp.models.histories import HistoryTable, LabelledPairs, history_table, item_prior_logits, like_labels, rate_logit
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.items import item_texts
from recexp.strategies import Frozen
from recexp.train import Batch

INPUTS = ("ids", "text", "both")
READERS = ("fm", "gru", "mlp")
FIELDS = ("target", "liked", "disliked")
SCORE_CHUNK = 65536  # (user, item) pairs per scoring pass


class PairClassifier(nn.Module):
    pointwise_output = "probability"
    sampling = None  # trains on labelled pairs, no sampled negatives (tail=reweight refuses it)
    loss = "bce"

    def __init__(
        self,
        inputs: str = "ids",
        reader: str = "fm",
        dim: int = 32,
        encoder: TextEncoder | None = None,
        history_items: int = 10,
        threshold: float = 4.0,
        rate_prior: bool = True,
        item_prior: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        if inputs not in INPUTS or reader not in READERS:
            raise ConfigError(
                f"model.module.inputs={inputs!r} / reader={reader!r}: choose inputs from {', '.join(INPUTS)} "
                f"and reader from {', '.join(READERS)}."
            )
        if dim < 1 or history_items < 1 or not 0 <= dropout < 1:
            raise ConfigError(f"model.module.dim and history_items must be >= 1 and dropout in [0, 1), "
                              f"got {dim}, {history_items}, {dropout}.")
        if inputs != "ids" and encoder is None:
            raise ConfigError(f"model.module.inputs={inputs} reads item text and needs model.module.encoder: "
                              "set model.module.encoder='${encoder}' (as model=text_head does).")
        self.inputs, self.reader, self.dim = inputs, reader, dim
        self.history_items, self.threshold = history_items, threshold
        self.encoder = encoder.adapt(Frozen()) if encoder is not None and inputs != "ids" else None
        self.rate_weight = nn.Parameter(torch.ones(())) if rate_prior else None
        self.item_weight = nn.Parameter(torch.ones(())) if item_prior else None
        self.dropout = nn.Dropout(dropout)
        self.cpu_threads = 1  # small tables and heads train fastest on one CPU thread
        self.stale = False
        self.fields: nn.ModuleDict | None = None  # the learned tables and layers, sized by the first split prepared

    def trainer_defaults(self) -> dict:
        return dict(max_epochs=50, patience=5, batch_size=16, lr=3e-3, weight_decay=1e-4)

    def prepare(self, split: Split, device: torch.device) -> None:
        if len(np.unique(like_labels(split.train, self.threshold))) < 2:
            raise ConfigError(
                f"model=pair_classifier needs liked and disliked training pairs, but every one is labelled the same "
                f"(threshold {self.threshold}): set dataset.rating_field, or a model.module.threshold inside the rating range."
            )
        self.split = split
        self.tables: dict[str, HistoryTable] = {
            name: history_table(split, name, self.history_items, self.threshold) for name in (TRAIN, *split.stages)
        }
        self.register_buffer("item_logits", item_prior_logits(split, self.threshold), persistent=False)
        if self.fields is None:
            self._build(split)
        if self.encoder is not None:
            text = self.encoder.embed(item_texts(split)).float()
            self.register_buffer("text", torch.cat([text, torch.zeros(1, text.shape[1])]), persistent=False)  # last row: padding
        self.to(device)

    def _build(self, split: Split) -> None:
        """The learned tables and layers, sized by the split's item count."""
        n, d = split.n_items + 1, self.dim  # last row: padding
        self.fields = nn.ModuleDict()
        for name in FIELDS:
            parts = nn.ModuleDict()
            if self.inputs != "text":
                parts["ids"] = nn.Embedding(n, d, padding_idx=n - 1)
                nn.init.normal_(parts["ids"].weight, std=0.01)
            if self.inputs != "ids":
                parts["text"] = nn.Linear(self.encoder.dim, d, bias=False)
            self.fields[name] = parts
        if self.reader == "fm":
            self.linear = nn.ModuleDict({name: nn.Embedding(n, 1, padding_idx=n - 1) for name in FIELDS})
            for table in self.linear.values():
                nn.init.zeros_(table.weight)
            self.bias = nn.Parameter(torch.zeros(()))
        elif self.reader == "gru":
            self.label_embedding = nn.Embedding(2, d)
            self.gru = nn.GRU(d, d, batch_first=True)
            self.mlp = _mlp(3 * d, d)
        else:
            self.mlp = _mlp(5 * d, d)

    def refresh(self) -> None:
        """Nothing is cached from the trained weights."""

    def train_data(self, split: Split, seed: int) -> LabelledPairs:
        return LabelledPairs(split.train, like_labels(split.train, self.threshold), seed, None)

    def _index(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] (-1: padding) -> table rows on the model's device (the last row is the padding row)."""
        return torch.where(items >= 0, items, self.split.n_items).to(self._device)

    def _vectors(self, field: str, items: torch.Tensor) -> torch.Tensor:
        """items [...] (-1: padding) -> [..., dim] for ``field``."""
        index = self._index(items)
        parts = self.fields[field]
        out = parts["ids"](index) if "ids" in parts else 0
        if "text" in parts:
            out = out + parts["text"](self.text[index])
        return self.dropout(out)

    @property
    def _device(self) -> torch.device:
        return self.rate_weight.device if self.rate_weight is not None else next(self.parameters()).device

    def _state(self, table: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """rows [N] -> what the reader keeps of each history (computed once per row, reused per target)."""
        items, labels = self.tables[table].gather(rows)
        mask = (items >= 0).float().to(self._device)
        labels = labels.to(self._device)
        state = {"rate": rate_logit(labels, mask)}
        if self.reader == "gru":
            state["history"] = self._gru(items, labels, mask)
            return state
        for field, side in (("liked", labels * mask), ("disliked", (1 - labels) * mask)):
            weights = side / side.sum(1, keepdim=True).clamp(min=1)  # [N, H], a bag weighted 1/n
            weighted = self._vectors(field, items) * weights[..., None]  # [N, H, d], one dropout draw for both sums
            state[field] = weighted.sum(1)  # [N, d]
            if self.reader == "fm":
                state[f"{field}_squares"] = (weighted**2).sum(1)
                state[f"{field}_linear"] = (self.linear[field](self._index(items)).squeeze(-1) * weights).sum(1)
        return state

    def _gru(self, items: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Newest-first histories -> [N, d] GRU state after reading them oldest first."""
        lengths = mask.sum(1).long().cpu()
        steps = torch.arange(items.shape[1])
        oldest_first = (lengths[:, None] - 1 - steps[None, :]).clamp(min=0)  # [N, H] positions into newest-first rows
        valid = steps[None, :] < lengths[:, None]
        seq_items = torch.where(valid, items.gather(1, oldest_first), -1)
        seq_labels = labels.gather(1, oldest_first.to(labels.device)).long()
        inputs = self._vectors("liked", seq_items) + self.label_embedding(seq_labels) * valid[..., None].to(self._device)
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        return self.gru(packed)[1][0]  # [N, d]

    def _logits(self, state: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """state rows [N] (already repeated per target), targets [N] -> [N] logits."""
        target = self._vectors("target", targets)
        if self.reader == "fm":
            total = target + state["liked"] + state["disliked"]
            squares = target**2 + state["liked_squares"] + state["disliked_squares"]
            pairwise = 0.5 * (total**2 - squares).sum(-1)
            logits = (self.bias + self.linear["target"](self._index(targets)).squeeze(-1)
                      + state["liked_linear"] + state["disliked_linear"] + pairwise)
        elif self.reader == "gru":
            history = state["history"]
            logits = self.mlp(torch.cat([history, target, history * target], -1)).squeeze(-1)
        else:
            liked, disliked = state["liked"], state["disliked"]
            logits = self.mlp(torch.cat([target, liked, disliked, target * liked, target * disliked], -1)).squeeze(-1)
        if self.rate_weight is not None:
            logits = logits + self.rate_weight * state["rate"]
        if self.item_weight is not None:
            logits = logits + self.item_weight * self.item_logits[targets.to(self.item_logits.device)]
        return logits

    def forward(self, batch: Batch) -> torch.Tensor:
        """(rows [B] of train pairs, items [B], labels [B]) -> scalar binary cross-entropy."""
        rows, items, targets = batch
        logits = self._logits(self._state(TRAIN, rows), items)
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.device, logits.dtype))

    @torch.no_grad()
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] P(like)."""
        self.eval()
        rows = self.tables[stage].rows(users, items)
        return torch.sigmoid(self._logits(self._state(stage, rows), items)).to(users.device)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items] logits (each user's history read once, against every item)."""
        self.eval()
        table = self.tables[stage]
        if table.by_pair is not None:
            raise ConfigError(f"model=pair_classifier scores pairs of samples at stage {stage!r}; it cannot rank items there.")
        state = self._state(stage, users.cpu())
        n_items = self.split.n_items
        out = torch.empty(len(users), n_items, device=self._device)
        per_chunk = max(1, SCORE_CHUNK // n_items)
        for start in range(0, len(users), per_chunk):
            rows = torch.arange(start, min(start + per_chunk, len(users)), device=self._device)
            repeated = {key: value[rows].repeat_interleave(n_items, 0) for key, value in state.items()}
            targets = torch.arange(n_items, device=self._device).repeat(len(rows))
            out[rows] = self._logits(repeated, targets).view(len(rows), n_items)
        return out.to(users.device)


def _mlp(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))
