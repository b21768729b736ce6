"""Tail-aware strategies (``tail=rerank|reweight``), orthogonal to ``model`` and ``strategy``.

* :class:`Rerank` wraps any built recommender (RecBole models included) and re-ranks its scores
  after the fact: a popularity penalty, or an xQuAD-style balance of head and tail items.
* :class:`Reweight` makes training popularity-aware: inverse-popularity weights on the loss of each
  positive, or negatives drawn by popularity (torch models; RecBole models: popularity negatives
  through RecBole's own sampler).

Both are applied once per built model by :func:`recexp.run.model_factory` (``tail.wrap(model)``), as is
``tail=augment`` (:mod:`recexp.augment`). The wrappers those tails return (:class:`Reranked`, augment's
``Augmented``) pass the model contract through :class:`Wrapped`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recexp.errors import ConfigError, check_int, check_number
from recexp.evaluate.ranking import StageIndex, dense_rows
from recexp.interfaces import Recommender, RecommenderBase, Split

RERANK_METHODS = ("penalty", "xquad")
REWEIGHT_METHODS = ("weight", "negatives")
MAX_ALPHA = 2.0  # popularity exponents beyond this make one item's weight swamp the rest


class Rerank:
    """``tail=rerank``: post-hoc re-ranking of any model's scores.

    ``penalty``: ``score - lam * sd_u * log(1 + pop_i) / log(1 + max pop)``, where ``pop_i`` counts the
    item's training interactions and ``sd_u`` is the spread (standard deviation) of the user's scores,
    so ``lam`` means the same for every model's score scale (``lam`` >= 0).
    ``xquad``: greedy xQuAD over the user's ``depth`` best candidates (Abdollahpouri et al. 2019, smooth
    variant): each next item maximises ``(1 - lam) * rel + lam * P(g | u) * (1 - share of g listed so far)``
    with ``rel`` the min-max normalised score, ``g`` the item's group (head or tail of the stage) and
    ``P(g | u)`` the group's share of the user's history (``lam`` in [0, 1]).
    """

    def __init__(self, method: str = "penalty", lam: float = 0.5, depth: int = 100):
        if method not in RERANK_METHODS:
            raise ConfigError(f"tail.method={method!r} is unknown for tail=rerank; choose one of {', '.join(RERANK_METHODS)}.")
        high, rule = (1.0, "a number in [0, 1] for xquad") if method == "xquad" else (1e6, "a number >= 0 for penalty")
        self.method, self.lam = method, check_number("tail.lam", lam, low=0, high=high, rule=rule)
        self.depth = check_int("tail.depth", depth, 1)

    def describe(self) -> dict[str, Any]:
        return {"tail": "rerank", "tail_method": self.method, "tail_lam": self.lam, "tail_depth": self.depth}

    def wrap(self, model: Recommender) -> Reranked:
        return Reranked(model, self)


class Wrapped(RecommenderBase):
    """A tail's wrapper around a built recommender: every member of the contract passes through to ``inner``,
    each named here (no ``__getattr__``), and :meth:`effective` adds the tail's ``settings.describe()``.
    A wrapper overrides only what its tail changes."""

    def __init__(self, inner: Recommender, settings: Any):
        self.inner, self.settings = inner, settings

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def pointwise_output(self) -> str:
        return self.inner.pointwise_output

    @property
    def score_pairs(self) -> Any:
        return self.inner.score_pairs

    @property
    def distributed(self) -> bool:
        return self.inner.distributed

    @property
    def saveable(self) -> bool:
        return self.inner.saveable

    @property
    def encoder(self) -> torch.nn.Module | None:
        return self.inner.encoder

    @property
    def valid_metric(self) -> str | None:
        return self.inner.valid_metric

    def fit(self, split: Split, ctx: Any) -> None:
        self.inner.fit(split, ctx)

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items], the inner model's scores."""
        return self.inner.score(users, stage)

    def parameter_counts(self) -> tuple[int, int]:
        return self.inner.parameter_counts()

    def attach(self, split: Split, device: torch.device) -> None:
        self.inner.attach(split, device)

    def effective(self) -> dict[str, Any]:
        return {**self.inner.effective(), **self.settings.describe()}

    def cost_extras(self) -> dict[str, Any]:
        return self.inner.cost_extras()

    def save(self, directory: Any) -> None:
        self.inner.save(directory)

    def load(self, directory: Any, split: Split, device: Any = "cpu") -> None:
        self.inner.load(directory, split, device)

    def reweight(self, method: str, alpha: float) -> None:
        self.inner.reweight(method, alpha)


class Reranked(Wrapped):
    """A recommender whose ``score`` is its inner model's, re-ranked by :class:`Rerank`; every other member of
    the contract (fit, save, cost, effective settings ...) passes through to the inner model."""

    pointwise_output = "score"  # re-ranked scores are no longer probabilities or ratings
    score_pairs = None  # not the inner model's: the evaluator reads pairs off the re-ranked full scores

    def __init__(self, inner: Recommender, settings: Rerank):
        super().__init__(inner, settings)
        self._split: Split | None = None

    def fit(self, split: Split, ctx: Any) -> None:
        self.inner.fit(split, ctx)
        self.prepare(split)

    def attach(self, split: Split, device: torch.device) -> None:
        self.inner.attach(split, device)
        self.prepare(split)

    def load(self, directory: Any, split: Split, device: Any = "cpu") -> None:
        self.inner.load(directory, split, device)
        self.prepare(split)

    def prepare(self, split: Split) -> None:
        """Popularity (training interactions per item) and, per stage, head items and histories."""
        self._split = split
        pop = np.bincount(split.train["item"].to_numpy(), minlength=split.n_items).astype(np.float64)
        self._penalty = torch.as_tensor(np.log1p(pop) / max(np.log1p(pop.max()), 1e-12), dtype=torch.float32)
        self._stage_cache: dict[str, tuple[torch.Tensor, sp.csr_matrix, torch.Tensor]] = {}

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users [B] -> [B, n_items] re-ranked scores."""
        if self._split is None:
            raise RuntimeError("tail=rerank: fit (or attach) the model before scoring it.")
        scores = self.inner.score(users, stage).float()
        if self.settings.method == "penalty":
            return self._penalised(scores)
        return self._xquad(scores, users, stage)

    def _penalised(self, scores: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(scores)
        count = finite.sum(1, keepdim=True).clamp(min=1)
        values = torch.where(finite, scores, torch.zeros_like(scores))
        mean = values.sum(1, keepdim=True) / count
        spread = (torch.where(finite, scores - mean, torch.zeros_like(scores)) ** 2).sum(1, keepdim=True) / count
        sd = spread.sqrt().clamp(min=1e-8)
        return scores - self.settings.lam * sd * self._penalty.to(scores.device)

    def _stage(self, stage: str, device: torch.device) -> tuple[torch.Tensor, sp.csr_matrix, torch.Tensor]:
        """(is_head [n_items], history [n_users, n_items] csr, rankable [n_items] bool) of ``stage``."""
        if stage not in self._stage_cache:
            split = self._split
            spec = split.stage(stage)
            is_head = torch.zeros(split.n_items, dtype=torch.bool)
            is_head[torch.as_tensor(spec.segments.get("head", np.array([], dtype=np.int64)), dtype=torch.long)] = True
            history = StageIndex.of(split, stage).history  # the evaluator's, built once per split and stage
            rankable = torch.zeros(split.n_items, dtype=torch.bool)
            rankable[torch.as_tensor(spec.candidates if spec.candidates is not None else np.arange(split.n_items))] = True
            self._stage_cache[stage] = (is_head, history, rankable)
        is_head, history, rankable = self._stage_cache[stage]
        return is_head.to(device), history, rankable.to(device)

    def _xquad(self, scores: torch.Tensor, users: torch.Tensor, stage: str) -> torch.Tensor:
        is_head, history, rankable = self._stage(stage, scores.device)
        seen = dense_rows(history, users.cpu().numpy(), scores.shape[1], scores.device)  # [B, n_items]
        n_seen = seen.sum(1).float()
        n_tail = (seen & ~is_head).sum(1).float()
        p_tail = torch.where(n_seen > 0, n_tail / n_seen.clamp(min=1), torch.full_like(n_seen, 0.5))  # [B]
        open_scores = scores.masked_fill(seen | ~rankable | ~torch.isfinite(scores), float("-inf"))
        depth = min(self.settings.depth, scores.shape[1])
        values, index = open_scores.topk(depth, dim=1)  # [B, N]
        valid = torch.isfinite(values)
        low = torch.where(valid, values, torch.full_like(values, float("inf"))).min(1, keepdim=True).values
        high = torch.where(valid, values, torch.full_like(values, float("-inf"))).max(1, keepdim=True).values
        rel = torch.where(valid, (values - low) / (high - low).clamp(min=1e-12), torch.zeros_like(values))
        tail = ~is_head[index]  # [B, N]
        lam = self.settings.lam
        taken = ~valid
        listed, listed_tail = torch.zeros_like(p_tail), torch.zeros_like(p_tail)
        out = scores.clone()
        top = torch.where(valid, values, torch.full_like(values, -1e30)).max(1).values.clamp(min=-1e30)  # [B]
        arange = torch.arange(len(scores), device=scores.device)
        for step in range(depth):
            share_tail = torch.where(listed > 0, listed_tail / listed.clamp(min=1), torch.zeros_like(listed))
            share_head = torch.where(listed > 0, 1 - share_tail, torch.zeros_like(listed))
            bonus = torch.where(tail, (p_tail * (1 - share_tail))[:, None], ((1 - p_tail) * (1 - share_head))[:, None])
            gain = ((1 - lam) * rel + lam * bonus).masked_fill(taken, float("-inf"))
            best = gain.argmax(1)
            ok = torch.isfinite(gain[arange, best])
            item = index[arange, best]
            out[arange[ok], item[ok]] = top[ok] + 1 + (depth - step)  # above every item not re-ranked, in pick order
            taken[arange[ok], best[ok]] = True
            listed = listed + ok.float()
            listed_tail = listed_tail + (ok & tail[arange, best]).float()
        return out


class Reweight:
    """``tail=reweight``: popularity-aware training.

    ``weight``: the loss of each training positive is multiplied by ``pop_i ** -alpha``, normalised to
    mean 1 over the training interactions (torch models). ``negatives``: negatives are drawn with
    probability proportional to ``pop_i ** alpha`` instead of uniformly (torch models under the BPR loss, and
    RecBole models trained with sampled negatives, through RecBole's ``train_neg_sample_args.distribution:
    popularity`` over the training interactions).
    ``alpha`` in [0, 2]; 0 is uniform over the training items: the plain model for recexp's torch models,
    while a RecBole model's own sampler also draws items no training interaction has.
    """

    def __init__(self, method: str = "weight", alpha: float = 0.5):
        if method not in REWEIGHT_METHODS:
            raise ConfigError(f"tail.method={method!r} is unknown for tail=reweight; choose one of {', '.join(REWEIGHT_METHODS)}.")
        self.method = method
        self.alpha = check_number("tail.alpha", alpha, low=0, high=MAX_ALPHA, rule=f"a number in [0, {MAX_ALPHA:g}]")

    def describe(self) -> dict[str, Any]:
        return {"tail": "reweight", "tail_method": self.method, "tail_alpha": self.alpha}

    def wrap(self, model: Recommender) -> Recommender:
        """The model itself, set to train popularity-aware (:meth:`~recexp.interfaces.Recommender.reweight`),
        or a ConfigError where it cannot."""
        model.reweight(self.method, self.alpha)
        return model
