"""Full ranking of one stage: every user with positives ranks the stage's candidates, per segment.

Items the user already has in the stage's history are removed, the remaining candidates are
ranked (ties fall to a fixed random item order), and ranking, list, catalog and exposure metrics
are computed from the top-K lists. An item segment has two views: ``tail`` restricts the ranking (and
the positives) to its items; ``tail_full`` ranks every candidate and counts only the segment's
positives (what the user actually sees: a tail item must beat the head items to be listed).
Popularity-bias metrics (list, catalog and exposure kinds) are read off full lists only, so a
restricted segment reports ranking metrics alone; exposure metrics (PopREO, PopRSP) are one value
per stage, on the ``all`` segment.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recexp.errors import TrainingError
from recexp.evaluate.metrics import ExposureContext, ListContext, Metric, metric_key
from recexp.interfaces import Recommender, Split


FULL = "_full"  # suffix naming an item segment's full-ranking view: tail -> tail_full


def full_view_of(name: str, segments: dict) -> str | None:
    """``'tail_full'`` -> ``'tail'`` when ``tail`` is an item segment other than ``all``; else None."""
    base = name[: -len(FULL)] if name.endswith(FULL) else None
    return base if base in segments and base != "all" else None


@dataclass
class SegmentRanking:
    """One segment's result: mean metrics, per-user values, and the top-K lists behind them."""

    metrics: dict[str, float]
    per_user: pd.DataFrame  # columns segment, user (raw token), n_pos, <metric@k>...
    topk: np.ndarray  # [U, maxK] item ids, -1 for empty slots
    users: np.ndarray  # [U] internal user ids


def rank_stage(
    model: Recommender,
    split: Split,
    stage: str,
    segments: tuple[str, ...],
    metrics: list[Metric],
    ks: list[int],
    batch_size: int,
    tie_seed: int,
    device: torch.device,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict[str, SegmentRanking]:
    """Rank every user with positives in ``stage`` (of ``shard=(rank, world)``: users ``u % world == rank``).

    An item segment ranks its items for every user; its full view (``<segment>_full``) ranks every
    candidate and counts only the segment's positives; a user segment ranks every candidate for its users.
    """
    spec = split.stage(stage)
    positives = user_items(split.positives(stage), split.n_users, split.n_items)
    history = user_items(split.history(stage), split.n_users, split.n_items)
    users = np.flatnonzero(np.diff(positives.indptr) > 0)
    if shard is not None:
        users = users[users % shard[1] == shard[0]]
    everything = np.arange(split.n_items)
    counted = {n: item_mask(spec.segments.get(full_view_of(n, spec.segments) or n, everything), spec.candidates,
                            split.n_items, device) for n in segments}  # whose positives count
    candidates = item_mask(everything, spec.candidates, split.n_items, device)
    masks = {n: candidates if full_view_of(n, spec.segments) or torch.equal(counted[n], candidates) else counted[n]
             for n in segments}  # what is ranked: `all`, the full views and user segments share one ranking
    shared = {id(m) for m in masks.values() if sum(other is m for other in masks.values()) > 1}
    members = {n: user_mask(spec.user_segments[n], split.n_users) for n in segments if n in spec.user_segments}
    order = torch.randperm(split.n_items, generator=torch.Generator().manual_seed(tie_seed)).to(device)
    max_k = max(ks)
    collected: dict[str, list] = {n: [] for n in segments}
    with torch.no_grad():
        for start in tqdm(range(0, len(users), batch_size), desc=f"rank {stage}", disable=not progress, leave=False):
            batch = users[start : start + batch_size]
            scores = model.score(torch.as_tensor(batch, device=device), stage).to(device, torch.float32)
            check_scores(scores, model, stage)
            pos = dense_rows(positives, batch, split.n_items, device)
            scores = scores.masked_fill(dense_rows(history, batch, split.n_items, device), float("-inf"))
            ranked: dict[int, tuple] = {}  # id(mask) -> top-k of the whole batch, for masks several segments rank by
            for name, mask in masks.items():
                rows = torch.as_tensor(members[name][batch], device=device) if name in members else None
                keep = _keep(pos, counted[name], rows)
                k = min(max_k, int(mask.sum()))
                if id(mask) in shared:
                    if id(mask) not in ranked:
                        ranked[id(mask)] = _top(scores, mask, k, order)
                    top = tuple(t[keep] for t in ranked[id(mask)])
                else:
                    top = _top(scores[keep], mask, k, order)
                collected[name].append(_hits(top, pos[keep], counted[name], batch[keep.cpu().numpy()]))
    context = ListContext(
        popularity=torch.as_tensor(np.bincount(split.train["item"], minlength=split.n_items), device=device),
        is_tail=_tail_mask(spec.segments.get("head", np.array([], dtype=np.int64)), split.n_items, device),
    )
    exposure = exposure_context(spec.segments.get("head", np.array([], dtype=np.int64)), spec.candidates,
                                positives, history)
    out = {}
    for name, parts in collected.items():
        if parts and sum(len(p[0]) for p in parts) > 0:
            restricted = name in spec.segments and name != "all"
            kinds = ("ranking",) if restricted else ("ranking", "list", "catalog") + (("exposure",) if name == "all" else ())
            chosen = [m for m in metrics if m.kind in kinds]
            out[name] = _summarise(name, parts, int(masks[name].sum()), chosen, ks, context, split.dataset.user_tokens,
                                   exposure)
    return out


def exposure_context(head: np.ndarray, candidates: np.ndarray, positives: sp.csr_matrix,
                     history: sp.csr_matrix) -> ExposureContext:
    """Per-user positives and rankable candidates in the head and the tail (candidates outside ``head``)."""
    n_items = positives.shape[1]
    is_head = np.zeros(n_items, dtype=bool)
    is_head[head] = True
    is_candidate = np.zeros(n_items, dtype=bool)
    is_candidate[candidates] = True
    groups = np.stack([is_candidate & is_head, is_candidate & ~is_head], axis=1).astype(np.float64)  # [n_items, 2]
    pos = np.asarray(positives.astype(np.float64) @ groups)
    seen = np.asarray((history.astype(bool).astype(np.float64)) @ groups)
    return ExposureContext(is_head=is_head, positives=pos, rankable=groups.sum(0)[None, :] - seen)


def check_scores(scores: torch.Tensor, model: Recommender, stage: str) -> None:
    """A TrainingError when scores [B, n_items] hold NaN or +inf, or a user has no finite score at all:
    such a model diverged, and ranking its scores would give quiet nonsense."""
    broken = int(scores.isnan().sum() + scores.isposinf().sum())
    empty = int((~torch.isfinite(scores)).all(dim=-1).sum()) if scores.dim() == 2 and scores.shape[-1] else 0
    if broken or empty:
        raise TrainingError(
            f"{getattr(model, 'name', None) or type(getattr(model, 'module', model)).__name__} gave non-finite scores at stage {stage!r} "
            f"({broken} NaN/+inf, {empty} users without a finite score): training diverged. Lower trainer.lr, "
            "or set trainer.mixed_precision=no."
        )


def _summarise(name, parts, n_candidates, metrics, ks, context, user_tokens, exposure) -> SegmentRanking:
    users = np.concatenate([p[0] for p in parts])
    topk = torch.cat([p[1] for p in parts])
    hits = torch.cat([p[2] for p in parts])
    pos_len = torch.cat([p[3] for p in parts])
    columns = {"segment": name, "user": user_tokens[users], "n_pos": pos_len.cpu().numpy().astype(int)}
    topk_np = topk.cpu().numpy()
    catalog = {}
    for k in ks:
        kk = min(k, topk.shape[1])
        for metric in metrics:
            key = metric_key(metric, k)
            if metric.kind == "ranking":
                columns[key] = metric.fn(hits, pos_len, kk).cpu().numpy()
            elif metric.kind == "list":
                columns[key] = metric.fn(topk, context, kk).cpu().numpy()
            elif metric.kind == "catalog":
                catalog[key] = metric.fn(topk_np[:, :k], n_candidates)
            elif metric.kind == "exposure":
                catalog[key] = metric.fn(topk_np, hits.cpu().numpy(), users, exposure, kk)
    frame = pd.DataFrame(columns)
    summary = {c: float(frame[c].mean()) for c in frame.columns if "@" in c}
    summary.update(catalog)
    summary["n_users"] = float(len(users))
    return SegmentRanking(summary, frame, topk_np, users)


def _top(scores, mask, k, order):
    """Top-k among the ``mask`` items of every row of ``scores`` [B, n_items]; ties fall to the fixed random
    ``order``. Returns (topk item ids [B, k], -1 for empty slots; filled [B, k] bool)."""
    best = scores.masked_fill(~mask, float("-inf"))[:, order].topk(k, dim=1)
    filled = best.values > float("-inf")
    return torch.where(filled, order[best.indices], -1), filled


def _keep(pos, counted, rows=None):
    """[B] bool: users with positives among the ``counted`` items (and among ``rows`` [B] bool, if given)."""
    keep = (pos & counted).any(1)
    return keep if rows is None else keep & rows


def _hits(top, pos, counted, users):
    """``users`` [U] with their top-k lists ``top`` and positives ``pos`` [U, n_items]; only ``counted``
    items count as hits. Returns (users [U], topk [U, k], hits [U, k], pos_len [U])."""
    topk, filled = top
    seg_pos = pos & counted
    hits = torch.gather(seg_pos, 1, topk.clamp(min=0)) & filled
    return users, topk, hits, seg_pos.sum(1).double()


def _tail_mask(head: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    is_tail = torch.ones(n_items, dtype=torch.bool, device=device)
    is_tail[torch.as_tensor(head, dtype=torch.long, device=device)] = False
    return is_tail


def user_items(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """[n_users, n_items] boolean matrix of each user's items in ``frame``."""
    return sp.csr_matrix(
        (np.ones(len(frame), dtype=bool), (frame["user"].to_numpy(), frame["item"].to_numpy())),
        shape=(n_users, n_items),
    )


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    block = matrix[rows]
    out = torch.zeros(len(rows), n_items, dtype=torch.bool)
    coo = block.tocoo()
    out[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = True
    return out.to(device)


def user_mask(users: np.ndarray, n_users: int) -> np.ndarray:
    """[n_users] bool, True for ``users``."""
    mask = np.zeros(n_users, dtype=bool)
    mask[users] = True
    return mask


def item_mask(items: np.ndarray, candidates: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[torch.as_tensor(np.intersect1d(items, candidates), dtype=torch.long)] = True
    return mask.to(device)
