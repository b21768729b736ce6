"""Full ranking of one stage: every user with positives ranks the stage's candidates, per segment.

Items the user already has in the stage's history are removed (``evaluator.mask_history``), the remaining candidates are
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
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recexp.errors import TrainingError
from recexp.evaluate.metrics import ExposureContext, ListContext, Metric, metric_key
from recexp.evaluate.top import among, item_order_rows, largest, mask
from recexp.interfaces import Scorer, Split, scorer_name

FULL = "_full"  # suffix naming an item segment's full-ranking view: tail -> tail_full


def full_view_of(name: str, segments: dict) -> str | None:
    """``'tail_full'`` -> ``'tail'`` when ``tail`` is an item segment other than ``all``; else None."""
    base = name[: -len(FULL)] if name.endswith(FULL) else None
    return base if base in segments and base != "all" else None


@dataclass
class SegmentRanking:
    """One segment's result: mean metrics, per-user values, and the top-K lists behind them."""

    metrics: dict[str, float]
    columns: dict[str, object]  # segment, user (raw token), n_pos, <metric@k>...: one value or [U] values each
    topk: np.ndarray  # [U, maxK] item ids, -1 for empty slots
    users: np.ndarray  # [U] internal user ids

    @cached_property
    def per_user(self) -> pd.DataFrame:
        """The per-user values as a table, built when first read (validation only reads ``metrics``)."""
        return pd.DataFrame(self.columns)


@dataclass(frozen=True)
class StageIndex:
    """What ranking a stage reads of its split, built once per split and stage (validation runs every epoch)."""

    users: np.ndarray  # [U] the users with positives, ascending
    positives: sp.csr_matrix  # [n_users, n_items] bool
    history: sp.csr_matrix  # [n_users, n_items] bool
    user_history: tuple[np.ndarray, np.ndarray]  # (indptr [U + 1], sorted indices) of the history of `users`
    user_positives: tuple[np.ndarray, np.ndarray]  # the same of their positives
    targets: sp.csr_matrix  # [U, n_items] float64: the positives of `users`, for counting them per item subset

    @classmethod
    def of(cls, split: Split, stage: str, mask_history: bool = True) -> StageIndex:
        """The index of ``stage``; without ``mask_history`` its history is empty: nothing is removed from a ranking."""
        key = ("ranking", stage, mask_history)
        if key not in split.derived:
            positives = user_items(split.positives(stage), split.n_users, split.n_items)
            history = user_items(split.history(stage) if mask_history else split.history(stage).iloc[:0], split.n_users,
                                 split.n_items)
            users = np.flatnonzero(np.diff(positives.indptr) > 0)
            seen, targets = history[users], positives[users]
            seen.sort_indices()
            targets.sort_indices()
            split.derived[key] = cls(users, positives, history, *((m.indptr.astype(np.int64), m.indices.astype(np.int64))
                                                                  for m in (seen, targets)), targets.astype(np.float64))
        return split.derived[key]


def rank_stage(
    model: Scorer,
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
    mask_history: bool = True,
    item_columns: torch.Tensor | None = None,
) -> dict[str, SegmentRanking]:
    """Rank every user with positives in ``stage`` (of ``shard=(rank, world)``: users ``u % world == rank``), each
    without the items of their history unless ``mask_history`` is False. ``item_columns`` [n_items]: the column
    of each item in the rows ``model.score`` gives, for a model that scores in an order of its own (None: column
    j is item j).

    An item segment ranks its items for every user; its full view (``<segment>_full``) ranks every
    candidate and counts only the segment's positives; a user segment ranks every candidate for its users.
    """
    spec, index = split.stage(stage), StageIndex.of(split, stage, mask_history)
    rows = np.arange(len(index.users))  # positions in index.users
    if shard is not None:
        rows = rows[index.users % shard[1] == shard[0]]
    everything = np.arange(split.n_items)
    counted = {n: item_mask(spec.segments.get(full_view_of(n, spec.segments) or n, everything), spec.candidates,
                            split.n_items, device) for n in segments}  # whose positives count
    candidates = item_mask(everything, spec.candidates, split.n_items, device)
    masks = {n: None if full_view_of(n, spec.segments) or torch.equal(counted[n], candidates) else counted[n]
             for n in segments}  # a restricted ranking's items; None: all candidates (`all`, full views, user segments)
    n_ranked = {n: int((candidates if m is None else m).sum()) for n, m in masks.items()}  # items each one ranks
    n_pos = {n: torch.as_tensor(index.targets @ counted[n].cpu().numpy().astype(np.float64), device=device)
             for n in segments}  # [U] positives among the counted items
    members = {n: torch.as_tensor(user_mask(spec.user_segments[n], split.n_users)[index.users], device=device)
               for n in segments if n in spec.user_segments}
    order = torch.randperm(split.n_items, generator=torch.Generator().manual_seed(tie_seed)).to(device)
    max_k = max(ks)
    width = split.n_items if item_columns is None else int(item_columns.max()) + 1  # the least a row holds
    collected: dict[str, list] = {n: [] for n in segments}
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc=f"rank {stage}", disable=not progress, leave=False):
            batch = rows[start : start + batch_size]
            scores = model.score(torch.as_tensor(index.users[batch], device=device), stage)
            if (scores.dim() != 2 or len(scores) != len(batch) or scores.shape[1] < width
                    or (item_columns is None and scores.shape[1] != width)):
                raise TrainingError(f"{type(model).__name__}.score gave shape {tuple(scores.shape)} for {len(batch)} users; "
                                    f"a recommender scores every item: [{len(batch)}, {split.n_items}].")
            at = torch.as_tensor(batch, device=device)
            shared = None  # the top-k of every candidate, for every user of the batch: all the full rankings read it
            if any(m is None for m in masks.values()):
                shared = _top(scores, np.arange(len(batch)), index.user_history, batch, candidates,
                              min(max_k, n_ranked[next(n for n, m in masks.items() if m is None)]), order, model, stage,
                              item_columns)
            for name, ranked in masks.items():
                keep = (n_pos[name][at] > 0) & (members[name][at] if name in members else True)
                if ranked is None:
                    top = tuple(t[keep] for t in shared)
                else:  # a restricted ranking: its users, its items
                    chosen = keep.nonzero()[:, 0].cpu().numpy()
                    top = _top(scores, chosen, index.user_history, batch[chosen], ranked, min(max_k, n_ranked[name]),
                               order, model, stage, item_columns)
                collected[name].append(_hits(top, batch[keep.cpu().numpy()], index, counted[name], n_pos[name]))
    return _summaries(collected, split, spec, metrics, ks, n_ranked, index.positives, index.history, device)


def _summaries(collected, split, spec, metrics, ks, n_ranked, positives, history, device) -> dict[str, SegmentRanking]:
    """Each segment's metrics from its ``collected`` batches; ``n_ranked[name]``: how many items its ranking ranks."""
    head = spec.segments.get("head", np.array([], dtype=np.int64))
    wanted = {m.kind for m in metrics}  # the list and exposure contexts are built only for metrics that read them
    context = ListContext(
        popularity=torch.as_tensor(np.bincount(split.train["item"], minlength=split.n_items), device=device),
        is_tail=_tail_mask(head, split.n_items, device),
    ) if "list" in wanted else None
    exposure = exposure_context(head, spec.candidates, positives, history) if "exposure" in wanted else None
    out = {}
    for name, parts in collected.items():
        if parts and sum(len(p[0]) for p in parts) > 0:
            restricted = name in spec.segments and name != "all"
            kinds = ("ranking",) if restricted else ("ranking", "list", "catalog") + (("exposure",) if name == "all" else ())
            chosen = [m for m in metrics if m.kind in kinds]
            out[name] = _summarise(name, parts, n_ranked[name], chosen, ks, context, split.dataset.user_tokens,
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


def check_scores(scores: torch.Tensor, model: Scorer, stage: str) -> None:
    """A TrainingError when scores [B, n_items] hold NaN or +inf, or a user has no finite score at all:
    such a model diverged, and ranking its scores would give quiet nonsense."""
    if scores.dim() == 2 and scores.shape[-1] and bool(scores.amax(dim=-1).isfinite().all()):
        return  # one pass: NaN and +inf carry into a row's maximum, which is -inf when no score is finite
    broken = int(scores.isnan().sum() + scores.isposinf().sum())
    empty = int((~torch.isfinite(scores)).all(dim=-1).sum()) if scores.dim() == 2 and scores.shape[-1] else 0
    _refuse_non_finite(broken, empty, model, stage)


def _refuse_non_finite(broken: int, empty: int, model: Scorer, stage: str) -> None:
    if broken or empty:
        raise TrainingError(
            f"{scorer_name(model)} gave non-finite scores at stage {stage!r} "
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
    summary = {c: float(np.mean(v, dtype=np.float64)) for c, v in columns.items() if "@" in c}
    summary.update(catalog)
    summary["n_users"] = float(len(users))
    return SegmentRanking(summary, columns, topk_np, users)


def _top(scores, rows, history, history_rows, allowed, k, order, model, stage, columns=None):
    """Top-k of the ``rows`` of ``scores`` [B, n_items] among the ``allowed`` [n_items] items outside each row's
    history (row ``history_rows[i]`` of the CSR ``history``), after refusing non-finite scores. Returns (topk item
    ids [R, k], -1 for empty slots; filled [R, k] bool).

    Ties fall to the fixed random ``order``: a row with equal scores is ranked as torch.topk ranks it permuted
    by ``order`` (``row[order].topk(k)``), as recexp always has, so lists and metrics stay those of earlier
    runs. Permuting every row costs several times the top-k itself, so the plain top-(k+1) is taken and only
    rows where two of those values are equal and finite (a tie inside the list or across its end) are
    ranked again through ``order``; elsewhere the values alone decide, the same way. ``columns``: as in
    :func:`~recexp.evaluate.top.largest`.
    """
    values, items, broken, finite = largest(scores, rows, history, history_rows, allowed, min(k + 1, len(allowed)), columns)
    _refuse_non_finite(int(broken.sum()), int((~finite).sum()), model, stage)
    best = values.cpu().numpy()  # a few values a row: numpy's tests cost a fraction of torch's per-call overhead
    picked = np.flatnonzero(((best[:, 1:] == best[:, :-1]) & (best[:, 1:] > -np.inf)).any(1))
    values, items = values[:, :k].to(order.device), items[:, :k].to(order.device)
    if len(picked):
        tied = torch.as_tensor(picked, device=order.device)
        part = mask(item_order_rows(scores, rows[picked], columns), history, history_rows[picked], allowed)
        again = part.index_select(1, order).topk(k, dim=1)  # part[:, order], 3x faster on CPU
        values[tied], items[tied] = again.values, order[again.indices]
    filled = values > float("-inf")
    return torch.where(filled, items, -1), filled


def _hits(top, rows, index, counted, n_pos):
    """The top-k lists ``top`` of the users at positions ``rows`` [U] of ``index.users``, with ``n_pos`` [all
    positions] positives among the ``counted`` items, the only ones that count as hits.
    Returns (users [U], topk [U, k], hits [U, k], pos_len [U])."""
    topk, filled = top
    found = torch.as_tensor(among(topk.cpu().numpy(), index.user_positives, rows), device=topk.device)
    return index.users[rows], topk, found & counted[topk.clamp(min=0)] & filled, n_pos[torch.as_tensor(rows, device=topk.device)]


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
    """[len(rows), n_items] bool on ``device`` of the sparse ``matrix``'s ``rows``."""
    coo = matrix[rows].tocoo()
    out = torch.zeros(len(rows), n_items, dtype=torch.bool, device=device)
    out[tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in (coo.row, coo.col))] = True
    return out


def user_mask(users: np.ndarray, n_users: int) -> np.ndarray:
    """[n_users] bool, True for ``users``."""
    mask = np.zeros(n_users, dtype=bool)
    mask[users] = True
    return mask


def item_mask(items: np.ndarray, candidates: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    """[n_items] bool, True for the ``items`` that are ``candidates``."""
    mask, allowed = torch.zeros(n_items, dtype=torch.bool), torch.zeros(n_items, dtype=torch.bool)
    mask[torch.as_tensor(items, dtype=torch.long)] = True
    allowed[torch.as_tensor(candidates, dtype=torch.long)] = True
    return (mask & allowed).to(device)
