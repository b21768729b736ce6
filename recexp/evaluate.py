"""One evaluator for every model: full ranking over the split's candidates, per segment.

For each user with positives in the stage, items the user already has in its history (train, plus
valid at test time) are removed, the remaining candidates are ranked, and metrics are computed from
the top-K list. A segment restricts the ranking (and the positives) to its items.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recexp.errors import ConfigError
from recexp.interfaces import Recommender, Split

# --- accuracy metrics: hits [U, K] bool (rank order), pos_len [U] -> per-user values [U] at cut-off k


def _recall(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(1) / pos_len


def _precision(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(1) / k


def _hit(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].any(1).double()


def _mrr(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k]
    first = top.double().argmax(1)
    return torch.where(top.any(1), 1.0 / (first + 1).double(), torch.zeros_like(first, dtype=torch.float64))


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def _ndcg(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].double() * disc).sum(1)
    ideal_len = torch.clamp(pos_len, max=k).long()
    idcg = torch.cumsum(disc, 0)[ideal_len - 1]
    return dcg / idcg


def _map(hits: torch.Tensor, pos_len: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k].double()
    precision_at = top.cumsum(1) / torch.arange(1, k + 1, device=hits.device, dtype=torch.float64)
    return (precision_at * top).sum(1) / torch.clamp(pos_len, max=k)


ACCURACY: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "recall": _recall,
    "precision": _precision,
    "hit": _hit,
    "mrr": _mrr,
    "ndcg": _ndcg,
    "map": _map,
}

# --- beyond-accuracy metrics on the top-K item ids [U, K]


# Slots holding -1 are empty: the user had fewer than K rankable items.


def _slot_mean(values: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    filled = topk >= 0
    return (values.double() * filled).sum(1) / filled.sum(1).clamp(min=1)


def _avg_popularity(topk: torch.Tensor, popularity: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user mean training popularity of the top-k items (RecBole's AveragePopularity)."""
    return _slot_mean(popularity[topk[:, :k].clamp(min=0)], topk[:, :k])


def _tail_share(topk: torch.Tensor, is_tail: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user share of the top-k items that are tail items (APLT; RecBole's TailPercentage)."""
    return _slot_mean(is_tail[topk[:, :k].clamp(min=0)], topk[:, :k])


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Distinct recommended items over the items that could be recommended."""
    return len(np.unique(topk[topk >= 0])) / n_items


def gini_index(topk: np.ndarray, n_items: int) -> float:
    """Inequality of how often items are recommended (0 = even, 1 = one item), as RecBole computes it."""
    filled = topk[topk >= 0]
    counts = np.sort(np.unique(filled, return_counts=True)[1])
    idx = np.arange(n_items - len(counts) + 1, n_items + 1)
    return float(np.sum((2 * idx - n_items - 1) * counts) / filled.size / n_items)


PER_USER_BEYOND = ("averagepopularity", "aplt")
LIST_LEVEL = ("itemcoverage", "gini")
ALL_METRICS = (*ACCURACY, *PER_USER_BEYOND, *LIST_LEVEL)
SMALLER_IS_BETTER = frozenset({"gini", "averagepopularity"})


@dataclass
class Evaluation:
    """Mean metrics per segment (``{segment: {"ndcg@10": ...}}``) and the per-user values behind them."""

    metrics: dict[str, dict[str, float]]
    per_user: pd.DataFrame  # columns: segment, user, n_pos, <metric@k>...
    topk: dict[str, np.ndarray] = field(default_factory=dict)  # segment -> [U, maxK] item ids
    users: dict[str, np.ndarray] = field(default_factory=dict)  # segment -> [U] user ids


@dataclass(frozen=True)
class Evaluator:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])  # cut-offs K
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    batch_size: int = 512  # users scored per batch
    tie_seed: int = 0  # equal scores are ordered by a fixed random item permutation drawn from this seed

    def __post_init__(self):
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise ConfigError(f"Unknown evaluator metrics {unknown}; choose from {', '.join(ALL_METRICS)}.")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"evaluator.ks must be positive integers, got {self.ks}.")

    def evaluate(
        self,
        model: Recommender,
        split: Split,
        stage: str,
        device: torch.device | str = "cpu",
        segments: tuple[str, ...] | None = None,
        progress: bool = False,
    ) -> Evaluation:
        """Rank every user with positives in ``stage`` and score each requested segment."""
        device = torch.device(device)
        names = segments or tuple(split.segments[stage])
        positives = _user_items(split.frame(stage), split.n_users, split.n_items)
        history = _user_items(split.history(stage), split.n_users, split.n_items)
        users = np.flatnonzero(np.diff(positives.indptr) > 0)
        popularity = torch.as_tensor(np.bincount(split.train["item"], minlength=split.n_items), device=device)
        is_tail = torch.ones(split.n_items, dtype=torch.bool, device=device)
        is_tail[torch.as_tensor(_head(split, stage), device=device)] = False
        masks = {n: _item_mask(split.segments[stage][n], split.candidates[stage], split.n_items, device) for n in names}
        order = torch.randperm(split.n_items, generator=torch.Generator().manual_seed(self.tie_seed)).to(device)
        max_k = max(self.ks)
        collected: dict[str, list] = {n: [] for n in names}
        batches = range(0, len(users), self.batch_size)
        with torch.no_grad():
            for start in tqdm(batches, desc=f"eval {stage}", disable=not progress, leave=False):
                batch = users[start : start + self.batch_size]
                scores = model.score(torch.as_tensor(batch, device=device), stage).to(device, torch.float32)
                pos = _dense(positives, batch, split.n_items, device)
                scores = scores.masked_fill(_dense(history, batch, split.n_items, device), float("-inf"))
                for name, mask in masks.items():
                    collected[name].append(_rank(scores, pos, mask, batch, min(max_k, int(mask.sum())), order))
        return self._summarise(collected, masks, popularity, is_tail, split.dataset.user_tokens)

    def _summarise(self, collected, masks, popularity, is_tail, user_tokens) -> Evaluation:
        means, frames, topks, seg_users = {}, [], {}, {}
        for name, parts in collected.items():
            if not parts or sum(len(p[0]) for p in parts) == 0:
                continue
            users = np.concatenate([p[0] for p in parts])
            topk = torch.cat([p[1] for p in parts])
            hits = torch.cat([p[2] for p in parts])
            pos_len = torch.cat([p[3] for p in parts])
            columns = {"segment": name, "user": user_tokens[users], "n_pos": pos_len.cpu().numpy().astype(int)}
            for k in self.ks:
                kk = min(k, topk.shape[1])
                for metric in self.metrics:
                    if metric in ACCURACY:
                        columns[f"{metric}@{k}"] = ACCURACY[metric](hits, pos_len, kk).cpu().numpy()
                    elif metric == "averagepopularity":
                        columns[f"{metric}@{k}"] = _avg_popularity(topk, popularity, kk).cpu().numpy()
                    elif metric == "aplt":
                        columns[f"{metric}@{k}"] = _tail_share(topk, is_tail, kk).cpu().numpy()
            frame = pd.DataFrame(columns)
            summary = {c: float(frame[c].mean()) for c in frame.columns if "@" in c}
            topk_np = topk.cpu().numpy()
            n_candidates = int(masks[name].sum())
            for k in self.ks:
                if "itemcoverage" in self.metrics:
                    summary[f"itemcoverage@{k}"] = item_coverage(topk_np[:, :k], n_candidates)
                if "gini" in self.metrics:
                    summary[f"gini@{k}"] = gini_index(topk_np[:, :k], n_candidates)
            summary["n_users"] = float(len(users))
            means[name] = summary
            frames.append(frame)
            topks[name] = topk_np
            seg_users[name] = users
        per_user = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return Evaluation(metrics=means, per_user=per_user, topk=topks, users=seg_users)


def _rank(scores, pos, mask, batch, k, order):
    """Top-k of each user with positives in the segment; ties fall to the fixed random ``order``.

    Returns (users [U], topk item ids [U, k] with -1 for empty slots, hits [U, k], pos_len [U]).
    """
    seg_pos = pos & mask
    pos_len = seg_pos.sum(1)
    keep = pos_len > 0
    masked = scores[keep].masked_fill(~mask, float("-inf"))
    best = masked[:, order].topk(k, dim=1)
    filled = best.values > float("-inf")
    topk = torch.where(filled, order[best.indices], -1)
    hits = torch.gather(seg_pos[keep], 1, topk.clamp(min=0)) & filled
    return batch[keep.cpu().numpy()], topk, hits, pos_len[keep].double()


def _head(split: Split, stage: str) -> np.ndarray:
    return split.segments[stage].get("head", np.array([], dtype=np.int64))


def _user_items(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """[n_users, n_items] boolean matrix of each user's items in ``frame``."""
    return sp.csr_matrix(
        (np.ones(len(frame), dtype=bool), (frame["user"].to_numpy(), frame["item"].to_numpy())),
        shape=(n_users, n_items),
    )


def _dense(matrix: sp.csr_matrix, rows: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    block = matrix[rows]
    out = torch.zeros(len(rows), n_items, dtype=torch.bool)
    coo = block.tocoo()
    out[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = True
    return out.to(device)


def _item_mask(items: np.ndarray, candidates: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[torch.as_tensor(np.intersect1d(items, candidates), dtype=torch.long)] = True
    return mask.to(device)
