"""``model=text_seq``: SASRec over each user's item sequence, its items read as ids, as text, or as both.

item i:   v_i = id_i (``item=id``) | A(e_i) (``text``) | id_i + A(e_i) (``id+text``: UniSRec's transductive form)
          e_i = normalize(encoder(item text i)), A a linear adaptor or UniSRec's whitening experts (``adaptor``)
user u:   h_u = SASRec(v of the last ``max_length`` items of u's sequence at the stage)
score:    h_u . v_i (``similarity=dot``, SASRec's) or cos(h_u, v_i) (``cosine``, UniSRec's; training divides it by
          ``temperature``)

Training samples are every prefix of every training sequence -> its next item (RecBole's augmentation), with
softmax cross-entropy. ``softmax=full``: over every item, batches of samples (the item table is fixed: ids or a
frozen encoder). ``softmax=sampled``: item-organised steps, as a trained encoder needs: each step takes a set of C
target items (``trainer.batch_size`` of them) and ``negatives`` (M) items shared by the step (drawn by training
frequency), encodes them once with gradient, and scores every sample whose target is among the C against all of them,
with a log-frequency correction (``logit - log q``, q an item's expected count among the step's candidates). Every
candidate is encoded the same way, so none stands out as the positive; an epoch costs about 1 + M/C encoding passes
over the catalogue. The sequence side always reads the item table, refreshed once per epoch while the encoder trains.
Cold items (no training interaction) score from text.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError, check_int, check_number
from recexp.interfaces import TRAIN, Sequences, Split, Strategy, windows
from recexp.models.sasrec import SASRec
from recexp.models.text.adaptors import make_adaptor
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.items import item_texts
from recexp.models.torch_recommender import TorchRecommender
from recexp.strategies import Frozen
from recexp.train import EpochData, TrainerConfig, epoch_order

ITEMS = ("id", "text", "id+text")
SOFTMAXES = ("auto", "full", "sampled")
SIMILARITIES = ("auto", "dot", "cosine")
CHUNK_TOKENS = 4096  # padded positions per forward pass: sequences sorted by length, so each chunk pads little
# RecBole's SASRec trainer settings (Adam, lr 1e-3 held constant, batch 2048 samples, patience 10, at most 300 epochs)
FULL = dict(max_epochs=300, patience=10, batch_size=2048, lr=1e-3, warmup_ratio=0.0, schedule="constant")
SAMPLED = dict(FULL, batch_size=256)  # batch = target items per step (about 8 samples each on Amazon data)


class Prefixes:
    """Every (prefix -> next item) sample of sequences: sample s reads ``items[starts[s]:ends[s]]`` (at most
    ``length`` items) and predicts ``items[ends[s]]``."""

    def __init__(self, sequences: Sequences, length: int):
        counts = sequences.lengths
        users = np.repeat(np.arange(len(counts)), counts)
        first = sequences.indptr[users]  # [N] where each item's user starts
        self.ends = np.flatnonzero(np.arange(len(users)) > first)
        self.starts = np.maximum(first[self.ends], self.ends - length)
        self.items = sequences.items
        self.targets = torch.as_tensor(self.items[self.ends])

    def __len__(self) -> int:
        return len(self.ends)

    def histories(self, rows: np.ndarray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [R] -> (left-aligned histories [R, longest], ``pad`` after each; lengths [R])."""
        ids, lengths = windows(self.items, self.starts[rows], self.ends[rows], pad)
        return torch.as_tensor(ids), torch.as_tensor(lengths)


def chunks(order: torch.Tensor, lengths: np.ndarray) -> list[torch.Tensor]:
    """``order`` (rows by descending length ``lengths``) cut into pieces of at most :data:`CHUNK_TOKENS` padded positions."""
    pieces, start = [], 0
    while start < len(order):
        size = max(1, CHUNK_TOKENS // int(lengths[start]))
        pieces.append(order[start : start + size])
        start += size
    return pieces


class PrefixData(EpochData):
    """``softmax=full``: an epoch of shuffled samples; batches (histories [B, l], lengths [B], targets [B])."""

    def __init__(self, prefixes: Prefixes, pad: int, seed: int):
        self.prefixes, self.pad, self.seed = prefixes, pad, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = epoch_order(len(self.prefixes), self.seed, epoch).numpy()

    def __len__(self) -> int:
        return len(self.prefixes)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = self.order[np.asarray(indices)]
        return (*self.prefixes.histories(rows, self.pad), self.prefixes.targets[rows])


class ItemStep(NamedTuple):
    """One step of ``softmax=sampled``: samples [B] and the step's candidates [C + M] (the first ``live`` are the
    step's target items, the rest its shared negatives)."""

    histories: torch.Tensor  # [B, l]
    lengths: torch.Tensor  # [B]
    targets: torch.Tensor  # [B] positions in candidates
    candidates: torch.Tensor  # [C + M] item ids
    log_q: torch.Tensor  # [C + M] log of each candidate's expected count among a step's candidates
    live: int  # C


class ItemPrefixData(EpochData):
    """``softmax=sampled``: an epoch over the training target items, shuffled; a batch of C of them comes with every
    sample whose target is among them and ``negatives`` shared items drawn by training frequency (:class:`ItemStep`)."""

    def __init__(self, prefixes: Prefixes, n_items: int, pad: int, seed: int, negatives: int):
        targets = prefixes.targets
        self.by_target = torch.argsort(targets, stable=True).numpy()  # samples grouped by target
        self.pool, counts = torch.unique(targets, return_counts=True)
        self.starts = torch.zeros(n_items + 1, dtype=torch.long)
        self.starts[self.pool + 1] = counts
        self.starts = self.starts.cumsum(0)
        self.frequency = torch.bincount(targets, minlength=n_items).double() / len(targets)  # [n_items]
        self.prefixes, self.n_items, self.pad, self.seed, self.negatives = prefixes, n_items, pad, seed, negatives
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = self.pool[epoch_order(len(self.pool), self.seed, epoch)]

    def __len__(self) -> int:
        return len(self.pool)

    def __getitems__(self, indices: list[int]) -> ItemStep:
        chunk = self.order[torch.as_tensor(indices)]
        rows = self.by_target[np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in chunk.tolist()])]
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(indices[0]))) % 2**63)
        negatives = torch.multinomial(self.frequency, self.negatives, replacement=True, generator=generator)
        candidates = torch.cat([chunk, negatives])
        expected = len(chunk) / len(self.pool) + self.negatives * self.frequency[candidates]
        position = torch.full((self.n_items,), -1, dtype=torch.long)
        position[chunk] = torch.arange(len(chunk))
        histories, lengths = self.prefixes.histories(rows, self.pad)
        return ItemStep(histories, lengths, position[self.prefixes.targets[rows]], candidates, expected.log().float(), len(chunk))


class TextSeq(nn.Module):
    pointwise_output = "score"  # scores only order items
    score_pairs = None  # pair scores are read off score()
    loss = "softmax"
    sampling = None  # no sampled positives and negatives to reweight (tail=reweight is refused)

    def __init__(
        self,
        encoder: TextEncoder | None,
        strategy: Strategy | None,
        item: str = "text",
        adaptor: str = "linear",
        hidden_size: int = 300,
        layers: int = 2,
        heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        adaptor_dropout: float = 0.2,
        experts: int = 8,
        max_length: int = 50,
        similarity: str = "auto",
        temperature: float = 0.07,
        softmax: str = "auto",
        negatives: int = 256,
    ):
        super().__init__()
        for name, value, choices in (("item", item, ITEMS), ("similarity", similarity, SIMILARITIES),
                                     ("softmax", softmax, SOFTMAXES)):
            if value not in choices:
                raise ConfigError(f"model.{name}={value!r} is unknown; choose one of {', '.join(choices)}.")
        for name, value in (("hidden_size", hidden_size), ("layers", layers), ("heads", heads), ("inner_size", inner_size),
                            ("experts", experts), ("max_length", max_length), ("negatives", negatives)):
            check_int(f"model.{name}", value, 1)
        for name, value in (("dropout", dropout), ("attn_dropout", attn_dropout), ("adaptor_dropout", adaptor_dropout)):
            check_number(f"model.{name}", value, low=0, below=1)
        check_number("model.temperature", temperature, above=0)
        self.item, self.temperature, self.negatives = item, temperature, negatives
        self.similarity = ("dot" if item == "id" else "cosine") if similarity == "auto" else similarity
        self.encoder = None
        self.adaptor = None
        if item != "id":
            with torch.random.fork_rng(devices=[]):  # the heads start as they do over a frozen encoder
                self.encoder = encoder.adapt(strategy)
            self.adaptor = make_adaptor(adaptor, encoder.dim, hidden_size, experts, adaptor_dropout)
        elif strategy is not None and not isinstance(strategy, Frozen):
            raise ConfigError(f"model.item=id reads no text, so strategy={type(strategy).__name__} has nothing to adapt; "
                              "use strategy=frozen, or model.item=text or id+text.")
        trains = self.encoder is not None and self.encoder.trainable
        if softmax == "full" and trains:
            raise ConfigError("model.softmax=full with an encoder that trains would encode the whole catalogue with gradient "
                              "at every step; use model.softmax=sampled (or auto).")
        self.softmax = ("sampled" if trains else "full") if softmax == "auto" else softmax
        self.sasrec = SASRec(hidden_size, layers, heads, inner_size, dropout, attn_dropout, max_length)
        self.ids: nn.Embedding | None = None  # built for the split's items (item=id, id+text)
        self.stale = True

    @property
    def cpu_threads(self) -> int | None:
        return None  # the attention layers use every core

    def trainer_defaults(self) -> dict:
        return SAMPLED if self.softmax == "sampled" else FULL

    # --- what scoring a split needs

    def prepare(self, split: Split, device: torch.device) -> None:
        self.split, self.n_items = split, split.n_items  # id n_items: the padding item
        if self.item != "id":
            self.texts = item_texts(split)
            self.tokens = self.encoder.tokenized(self.texts)
        if self.item != "text":
            if self.ids is None:
                self.ids = nn.Embedding(split.n_items + 1, self.sasrec.position.embedding_dim)
                nn.init.normal_(self.ids.weight, std=0.02)
            elif self.ids.num_embeddings != split.n_items + 1:
                raise ConfigError(f"text_seq was fit on {self.ids.num_embeddings - 1} items and cannot score a split of "
                                  f"{split.n_items}; fit it on this split.")
        self.read = min(self.sasrec.max_length, split.max_history or self.sasrec.max_length)  # items read per sequence
        self.to(device)
        self.stale = True

    def refresh(self) -> None:
        """Re-encode the item texts (once per epoch while the encoder trains): the features [n_items + 1, enc]."""
        if self.stale and self.encoder is not None:
            encoded = F.normalize(self.encoder.embed(self.texts), dim=-1)
            self.features = torch.cat([encoded, encoded.new_zeros(1, encoded.shape[1])])  # the padding item: zeros
        self.stale = False

    def train_data(self, split: Split, seed: int) -> EpochData:
        prefixes = Prefixes(split.sequences(TRAIN), self.read)
        if self.softmax == "sampled":
            return ItemPrefixData(prefixes, split.n_items, self.n_items, seed, self.negatives)
        return PrefixData(prefixes, self.n_items, seed)

    # --- items, users, scores

    def _table(self) -> torch.Tensor:
        """[n_items + 1, H]: every item's vector (the last row: padding), text read from the features."""
        vectors = 0
        if self.adaptor is not None:
            vectors = self.adaptor(self.features)
        if self.ids is not None:
            vectors = vectors + self.ids.weight
        return vectors

    def _live(self, items: torch.Tensor) -> torch.Tensor:
        """items [n] -> [n, H] with their texts encoded now, with gradient (the encoder trains), each distinct one once."""
        unique, inverse = items.unique(return_inverse=True)
        vectors = self.adaptor(F.normalize(self.encoder.encode_rows(self.tokens, unique.tolist()), dim=-1))[inverse]
        return vectors + self.ids(items) if self.ids is not None else vectors

    def _users(self, table: torch.Tensor, histories: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """histories [B, l], lengths [B] -> [B, H]; on CPU in chunks of similar length (each padded to its longest),
        where padding costs its full share; an accelerator takes the batch in one pass."""
        if histories.device.type != "cpu":
            return self.sasrec(table[histories], lengths)
        order = torch.argsort(lengths, descending=True)
        outputs = []
        for rows in chunks(order, lengths[order].cpu().numpy()):
            outputs.append(self.sasrec(table[histories[rows, : lengths[rows[0]]]], lengths[rows]))
        return torch.cat(outputs)[torch.argsort(order)]

    def _logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.similarity == "dot":
            return users @ items.T
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / self.temperature

    def forward(self, batch) -> torch.Tensor:
        """A full batch (histories, lengths, targets) or an :class:`ItemStep` -> scalar cross-entropy."""
        device = self.sasrec.position.weight.device
        trains = self.stale = self.encoder is not None and self.encoder.trainable  # the features are then out of date
        table = self._table()
        if not isinstance(batch, ItemStep):
            histories, lengths, targets = (t.to(device) for t in batch)
            return F.cross_entropy(self._logits(self._users(table, histories, lengths), table[: self.n_items]), targets)
        histories, lengths, targets, candidates, log_q = (t.to(device) for t in batch[:5])
        vectors = self._live(candidates) if trains else table[candidates]
        logits = self._logits(self._users(table, histories, lengths), vectors) - log_q
        target_items = candidates[targets]
        accidental = (candidates[None, :] == target_items[:, None]) & (torch.arange(len(candidates), device=device)[None, :]
                                                                      != targets[:, None])
        return F.cross_entropy(logits.masked_fill(accidental, float("-inf")), targets)

    @torch.no_grad()
    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items]: each user's sequence at ``stage`` against every item."""
        self.eval()
        self.refresh()
        histories, lengths = self.split.sequences(stage).last(users.cpu().numpy(), self.read, self.n_items)
        table = self._table()
        device = table.device
        hidden = self._users(table, torch.as_tensor(histories, device=device), torch.as_tensor(lengths, device=device))
        if self.similarity == "dot":
            return hidden @ table[: self.n_items].T
        return F.normalize(hidden, dim=-1) @ F.normalize(table[: self.n_items], dim=-1).T


class TextSeqRecommender(TorchRecommender):
    """``model=text_seq``: a :class:`TextSeq` (its settings: the same names) on the shared training loop, configured
    flat (``model.item=...``). Under ``lp_ft`` its probing phase is the run of the same model over the frozen encoder
    with ``softmax=sampled`` (the recipe a trained encoder takes): the same trainer settings (batches, patience),
    ``lp_epochs`` (null: the model's default cap) and the default learning rate; ``trainer.lr`` and ``max_epochs`` are
    the fine-tuning phase's."""

    def __init__(self, item: str = "text", encoder: TextEncoder | None = None, strategy: Strategy | None = None,
                 adaptor: str = "linear", hidden_size: int = 300, layers: int = 2, heads: int = 2, inner_size: int = 256,
                 dropout: float = 0.5, attn_dropout: float = 0.5, adaptor_dropout: float = 0.2, experts: int = 8,
                 max_length: int = 50, similarity: str = "auto", temperature: float = 0.07, softmax: str = "auto",
                 negatives: int = 256, trainer: TrainerConfig | None = None, cpu_threads: int | None = None,
                 lp_ft: bool = False, lp_epochs: int | None = None):
        module = TextSeq(encoder, strategy, item, adaptor, hidden_size, layers, heads, inner_size, dropout, attn_dropout,
                         adaptor_dropout, experts, max_length, similarity, temperature, softmax, negatives)
        super().__init__(module, trainer, cpu_threads, lp_ft, lp_epochs)
        self.probe = dataclasses.replace(self.trainer, max_epochs=lp_epochs, lr=None)
