"""The small contracts every component shares: data, split artifact, recommender, strategy, logger.

Internal ids are contiguous integers: users ``0..n_users-1`` and items ``0..n_items-1``.
Interaction frames have columns ``user``, ``item``, ``rating``, ``timestamp`` (float, NaN if absent).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError

if TYPE_CHECKING:
    from recexp.models.sampling import Sampling

INTER_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class Dataset:
    """Interactions plus the raw tokens and side features behind the internal ids."""

    name: str
    inter: pd.DataFrame  # columns INTER_COLUMNS, internal ids
    user_tokens: np.ndarray  # [n_users] raw user id tokens (str)
    item_tokens: np.ndarray  # [n_items] raw item id tokens (str)
    item_features: pd.DataFrame | None = None  # row i describes item i
    user_features: pd.DataFrame | None = None  # row u describes user u
    item_text: list[str] | None = None  # rendered from the item template
    item_title: list[str] | None = None  # a short name per item (the item title template), for prompts listing many items
    user_text: list[str] | None = None  # rendered from the user template
    content_hash: str = ""  # sha256 over the source files' bytes (and the rules that changed them)
    info: dict[str, Any] = field(default_factory=dict)  # how interactions were read: counts read/dropped, positives

    @property
    def n_users(self) -> int:
        return len(self.user_tokens)

    @property
    def n_items(self) -> int:
        return len(self.item_tokens)


TRAIN = "train"  # the part of every split that models fit on


@dataclass
class Stage:
    """One evaluation point of a split: what a model may know there, and what it is evaluated on.

    ``history`` names the split's parts a model may read when scored at this stage. ``positives``
    names the part whose interactions are ranked among ``candidates`` [n] item ids; ``pairs`` names
    the part whose rows carry a 0/1 ``label`` for pointwise metrics. Either may be None.
    ``segments[name]`` are item-id subsets: each a ranking restricted to those items, and the pairs
    whose item is among them (``all`` always covers everything). ``user_segments[name]`` are user-id
    subsets: the full ranking (and the pairs) of those users only, e.g. users new in a time block.
    """

    history: tuple[str, ...]
    positives: str | None = None
    candidates: np.ndarray | None = None
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    pairs: str | None = None
    user_segments: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def segment_names(self) -> tuple[str, ...]:
        return (*self.segments, *self.user_segments)


def chronological(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by user, each user's in time order: a stable sort, so ties and missing times keep the frame's order."""
    return frame.sort_values(["user", "timestamp"], kind="stable", na_position="first")


@dataclass(frozen=True)
class Sequences:
    """Each user's items in time order (ties and data without time: file order).

    User ``u``'s sequence is ``items[indptr[u]:indptr[u + 1]]``, oldest first; a user without one has none.
    """

    indptr: np.ndarray  # [n_users + 1] int64
    items: np.ndarray  # [N] int64 item ids

    @classmethod
    def of(cls, frame: pd.DataFrame, n_users: int) -> Sequences:
        """The sequences of ``frame``'s interactions, in :func:`chronological` order."""
        ordered = chronological(frame)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(ordered["user"].to_numpy(np.int64), minlength=n_users), out=indptr[1:])
        return cls(indptr, ordered["item"].to_numpy(np.int64))

    @property
    def lengths(self) -> np.ndarray:
        """[n_users] how many items each user's sequence holds."""
        return np.diff(self.indptr)

    def of_user(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def last(self, users: np.ndarray, length: int, pad: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The last ``length`` items of each user's sequence -> (ids [len(users), width or the longest], left-aligned,
        ``pad`` after them; lengths [len(users)] >= 1: an empty sequence reads as the single ``pad`` item)."""
        ends = self.indptr[users + 1]
        return windows(self.items, np.maximum(self.indptr[users], ends - length), ends, pad, width)


def windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, pad: int,
            width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned ``items[starts[r]:ends[r]]`` per row -> (ids [R, width or the longest], ``pad`` after each;
    lengths [R] >= 1). An empty row reads as the single ``pad`` item."""
    lengths = ends - starts
    width = width or max(1, int(lengths.max(initial=1)))
    index = starts[:, None] + np.arange(width)[None, :]
    real = np.arange(width)[None, :] < lengths[:, None]
    ids = np.where(real, items[np.minimum(index, len(items) - 1)] if len(items) else pad, pad)
    return ids.astype(np.int64), np.maximum(lengths, 1)


@dataclass(frozen=True)
class Block:
    """A time block after a split's base block, halved by time: each half is the ranking targets of one stage."""

    valid: str  # the stage ranking the first half (early stopping while a model is updated onto this block)
    test: str  # the stage ranking the second half


@dataclass
class Split:
    """A scenario's artifact: named interaction parts and the named stages evaluated on them.

    ``parts["train"]`` is what models fit on; ``stages`` are evaluated in order (e.g. ``valid``,
    which also drives early stopping, then ``test``). Part frames have columns INTER_COLUMNS, and
    ``label`` (0/1) where they hold labelled pairs, and ``sample`` where rows are numbered samples.
    A pair in a part named by ``histories`` (``scenario=tallrec``) reads its sample's own history; any
    other pair reads its user's interactions in the stage's ``history``.
    """

    dataset: Dataset
    parts: dict[str, pd.DataFrame]
    stages: dict[str, Stage]
    hash: str = ""
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)  # scenario-specific facts (e.g. cold item ids)
    histories: dict[str, str] = field(default_factory=dict)  # part of samples -> the part of their own histories (same ``sample``)
    blocks: list[Block] = field(default_factory=list)  # time blocks after the base (the train part), oldest first
    max_history: int | None = None  # the most recent items of a user's sequence a sequential model reads (None: all)
    # what is computed from the parts once and read often (the evaluator's per-stage index); a split is not edited
    derived: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def train(self) -> pd.DataFrame:
        return self.parts[TRAIN]

    def stage(self, name: str) -> Stage:
        if name not in self.stages:
            raise KeyError(f"stage {name!r} is not in this split; it has {', '.join(self.stages)}.")
        return self.stages[name]

    def history(self, stage: str) -> pd.DataFrame:
        """What a model may know when scored at ``stage``: its history parts, concatenated (columns
        INTER_COLUMNS, and ``label`` where a part has one: NaN in the rows of parts without)."""
        names = self.stage(stage).history
        if len(names) == 1:
            return self.parts[names[0]]
        labelled = any("label" in self.parts[n] for n in names)
        columns = [*INTER_COLUMNS, *(["label"] if labelled else [])]
        return pd.concat([self.parts[n].reindex(columns=columns) for n in names], ignore_index=True)

    def sequences(self, stage: str) -> Sequences:
        """Each user's sequence in the history of ``stage`` (or in ``train``): every sequential model reads its last
        :attr:`max_history` items there, and trains on every prefix of the ``train`` sequences."""
        key = ("sequences", stage)
        if key not in self.derived:
            self.derived[key] = Sequences.of(self.train if stage == TRAIN else self.history(stage), self.n_users)
        return self.derived[key]

    def positives(self, stage: str) -> pd.DataFrame | None:
        """The ranking targets of ``stage`` (None when it ranks nothing)."""
        name = self.stage(stage).positives
        return None if name is None else self.parts[name]

    def pairs(self, stage: str) -> pd.DataFrame | None:
        """The labelled pairs of ``stage`` (columns user, item, label, rating ...; None when none)."""
        name = self.stage(stage).pairs
        return None if name is None else self.parts[name]

    def counts(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            **{name: len(frame) for name, frame in self.parts.items()},
            **{f"candidates_{s}": len(st.candidates) for s, st in self.stages.items() if st.candidates is not None},
            **{f"pairs_{s}": len(self.parts[st.pairs]) for s, st in self.stages.items() if st.pairs is not None},
        }


@runtime_checkable
class RunLogger(Protocol):
    """Where a run's numbers go (W&B, or nowhere). Keys look like ``stage/metric@k``."""

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def summary(self, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


@dataclass
class FitContext:
    """What a model needs from the run while fitting."""

    logger: RunLogger
    device: torch.device
    run_dir: Path
    seed: int
    progress: bool = True
    rank: int = 0  # this process's index among the run's processes (accelerate launch / torchrun)
    world_size: int = 1  # processes training together
    mask_history: bool = True  # whether validation removes each user's history from their ranking (evaluator.mask_history)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files meant once per run (records, saved models)."""
        return self.rank == 0

    def with_logger(self, logger: RunLogger) -> FitContext:
        return dataclasses.replace(self, logger=logger)


@runtime_checkable
class Scorer(Protocol):
    """What the evaluator reads of a model: a :class:`Recommender`, or a :class:`TorchModel` while it trains."""

    pointwise_output: str
    """What scores mean on labelled pairs: "score" (an order only), "probability" (P(label = 1): logloss
    applies) or "rating" (a predicted rating: rmse and mae apply)."""
    score_pairs: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None
    """The model's own pair scorer, ``(users [N], items [N], stage) -> [N]``; None: pair scores are read off
    :meth:`score`."""

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users: [B] internal ids -> [B, n_items] scores, higher is better."""


@runtime_checkable
class Recommender(Scorer, Protocol):
    """Any model recexp can evaluate. Scores are raw: masking is the evaluator's job.

    ``fit``, ``score`` and ``parameter_counts`` are every model's own. The other members are what tasks,
    tails, wrappers and the cost ledger read; :class:`RecommenderBase` gives each its default, and every
    recexp model inherits it, overriding what it does otherwise. Nothing looks a member up by name
    (``hasattr``): a member a model lacks is an AttributeError, never a quietly different record.
    """

    name: str
    """How messages name the model (BPR, TextTower ...)."""
    distributed: bool
    """Whether it trains across processes (``accelerate launch`` / ``torchrun``); tasks refuse more than one otherwise."""
    saveable: bool
    """Whether :meth:`save` and :meth:`load` write and read the trained model (``task.save_model``)."""
    encoder: torch.nn.Module | None
    """The :class:`~recexp.models.text.encoder.TextEncoder` the model reads item texts with, or None
    (``tail=augment`` needs one)."""
    valid_metric: str | None
    """The metric its fit reads on the ``valid`` stage to stop early (``trainer.valid_metric``), or None: it validates
    nothing. Checked against the split before any training."""

    def fit(self, split: Split, ctx: FitContext) -> None:
        """Train on ``split.train`` (the ``valid`` stage, when there is one, may drive early stopping). A second
        fit continues from the first (a continual update) where the model can."""

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of everything the run trained or used."""

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split``'s stages from now on without training on it (``task=continual task.update=none``)."""

    def effective(self) -> dict[str, Any]:
        """The trainer settings the last fit used, epochs run included (the record's ``effective``)."""

    def cost_extras(self) -> dict[str, Any]:
        """The model's own figures for the record's ``cost`` (samples_seen, artifact_bytes, cache hits ...)."""

    def save(self, directory: str | Path) -> None:
        """Write the trained model to ``directory`` (where :attr:`saveable`)."""

    def load(self, directory: str | Path, split: Split, device: torch.device | str = "cpu") -> None:
        """Read what :meth:`save` wrote into a model built from the same config, ready to score ``split``."""

    def reweight(self, method: str, alpha: float) -> None:
        """``tail=reweight``: train popularity-aware from the next fit on. ``weight``: each positive's loss times
        ``pop_i ** -alpha``; ``negatives``: negatives drawn with probability proportional to ``pop_i ** alpha``.
        A ConfigError where the model cannot honour ``method``."""


class RecommenderBase:
    """The defaults of :class:`Recommender`'s members beyond fit, score and parameter_counts (their meaning is
    there): a model that inherits this and overrides none of them ranks items with plain scores, trains in
    one process, saves nothing, reads no item text, keeps scoring from its last fit's split, reports no
    settings or cost of its own, stops early on nothing, and refuses ``tail=reweight``."""

    pointwise_output = "score"
    score_pairs: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None = None
    distributed = False
    saveable = False
    encoder: torch.nn.Module | None = None
    valid_metric: str | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def attach(self, split: Split, device: torch.device) -> None:
        """Nothing: the model scores from what its last fit saw."""

    def effective(self) -> dict[str, Any]:
        return {}

    def cost_extras(self) -> dict[str, Any]:
        return {}

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError(f"{self.name} cannot be saved (its saveable is False).")

    def load(self, directory: str | Path, split: Split, device: torch.device | str = "cpu") -> None:
        raise NotImplementedError(f"{self.name} cannot be loaded (its saveable is False).")

    def reweight(self, method: str, alpha: float) -> None:
        raise ConfigError(
            f"tail=reweight cannot be honoured by model {self.name}: it does not train on sampled positives and negatives. "
            "Use tail=rerank, or a model with a training loss (text_tower, fusion, bpr ...)."
        )


def scorer_name(model: Scorer) -> str:
    """How messages name ``model``: a recommender's :attr:`~Recommender.name`, a :class:`TorchModel` (scored while
    it trains) by its class."""
    return model.name if isinstance(model, RecommenderBase) else type(model).__name__


@runtime_checkable
class TorchModel(Scorer, Protocol):
    """A torch recommender as a plain ``nn.Module``; :class:`~recexp.models.torch_recommender.TorchRecommender`
    fits, saves and loads it through the one training loop. Modules set every member below themselves
    (a class-level default would hide a submodule such as ``encoder``).
    """

    stale: bool
    """Raised when weights changed under cached encodings (the loop raises it after restoring the best epoch)."""
    cpu_threads: int | None
    """The module's preferred CPU thread count while fitting (None: torch's)."""
    encoder: torch.nn.Module | None
    """Its :class:`~recexp.models.text.encoder.TextEncoder` (saved through its strategy, its trained tokens
    counted in the cost), or None."""
    sampling: Sampling | None
    """How training weights positives and draws negatives (``tail=reweight`` replaces it); None: the module
    trains on no sampled positives and negatives."""
    loss: str
    """Its training loss: bpr | softmax (whose negatives are the batch's other positives, not sampled) | bce | mse."""

    def trainer_defaults(self) -> dict[str, Any]:
        """Trainer values used where the config leaves ``None`` (max_epochs, patience, batch_size, lr ...)."""

    def prepare(self, split: Split, device: torch.device) -> None:
        """Build what scoring ``split`` needs (histories, tables) and move to ``device``."""

    def train_data(self, split: Split, seed: int) -> Any:
        """A :class:`recexp.train.EpochData`: ``__getitems__`` returns a batch, ``set_epoch(e)`` re-draws it."""

    def forward(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One micro-batch -> scalar training loss."""

    def refresh(self) -> None:
        """Recompute weight-derived caches if ``stale`` (called before each epoch and scoring)."""


@dataclass
class TaskResult:
    """What a task hands back to the run record: evaluations by stage name, and the run's cost ledger."""

    evaluations: dict[str, Any]  # stage -> recexp.evaluate.Evaluation, in the order evaluated
    cost: dict[str, Any]
    effective: dict[str, Any]  # trainer settings the model actually used (epochs run, batch size, lr, ...)
    sections: dict[str, Any] = field(default_factory=dict)  # task-specific parts of results.json (e.g. continual)


@runtime_checkable
class Task(Protocol):
    """How fitting, updating and evaluation alternate over a split's stages (``task=holdout`` ...)."""

    def stages(self, split: Split) -> dict[str, Stage]:
        """The stages the result will report, by the names the record uses (checked before any work)."""

    def run(self, make_model: Callable[[], Recommender], split: Split, evaluator: Any, ctx: FitContext) -> TaskResult:
        """Build model(s) with ``make_model``, fit them and evaluate the stages of ``split``."""


@runtime_checkable
class Strategy(Protocol):
    """How a pretrained encoder is adapted: frozen, fully fine-tuned, via a PEFT method, or with bottleneck adapters."""

    cached_below: int
    """0 (every strategy but partial): the whole encoder runs on every pass. Above 0 (``strategy=partial``, once
    applied): the hidden states entering this layer are computed once per text list and cached, and the
    strategy's ``trained_layers(encoder)`` gives the layers run over them."""

    def apply(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """Return the encoder with exactly the weights this strategy trains left trainable."""

    def save(self, encoder: torch.nn.Module, directory: Path) -> None:
        """Write what this strategy trained (nothing, full weights, or adapters)."""

    def load(self, encoder: torch.nn.Module, directory: Path) -> None:
        """Restore what :meth:`save` wrote into an encoder built the same way."""
