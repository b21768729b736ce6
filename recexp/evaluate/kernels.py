"""The compiled pass of :func:`recexp.evaluate.top.compiled_largest` (numba, cached on disk after the first run).

Imported only when that pass is loaded (:func:`recexp.evaluate.top.load_compiled`): importing numba and loading
its cache takes about half a second, more than the pass saves on a small evaluation.
"""
from __future__ import annotations

import numba
import numpy as np

WIDTH = 16  # scores a block holds: item j is in block j % n_blocks, so a block's maximum is one vector max per row
COUNTED = 256  # values ranked by counting (a vector loop of COUNTED^2 at most); more are kept in a sorted buffer


@numba.njit(cache=True, nogil=True)
def largest_rows(scores, rows, indptr, indices, history_rows, banned, values, items, broken, finite):  # pragma: no cover
    """The k best of each of ``scores[rows]`` into ``values`` and ``items``; ``broken`` and ``finite``: how many of the
    row's scores are NaN or +inf, and how many finite."""
    k, n = values.shape[1], scores.shape[1]
    n_blocks = (n + WIDTH - 1) // WIDTH
    lowest, top = np.float32(-np.inf), np.float32(np.inf)
    row_copy = np.full(n_blocks * WIDTH, lowest, dtype=np.float32)  # the row, unrankable scores at -inf
    block, reached = np.empty(n_blocks, dtype=np.float32), np.empty(n_blocks, dtype=np.float32)
    counts = np.empty(n_blocks, dtype=np.int32)
    candidates, candidate_items = np.empty(n_blocks * WIDTH, dtype=np.float32), np.empty(n_blocks * WIDTH, dtype=np.int64)
    for out in range(len(rows)):
        row = scores[rows[out]]
        bad, good = 0, 0
        for j in range(n):  # branch-free: one vector loop
            v = row[j]
            bad += (v != v) | (v == top)
            good += (v > lowest) & (v < top)
            row_copy[j] = v
        if bad:
            for j in range(n):
                if not row_copy[j] < top:
                    row_copy[j] = lowest
        broken[out], finite[out] = bad, good
        for h in range(indptr[history_rows[out]], indptr[history_rows[out] + 1]):
            row_copy[indices[h]] = lowest
        for j in banned:
            row_copy[j] = lowest
        for b in range(n_blocks):  # vectorised across blocks
            m = row_copy[b]
            for i in range(1, WIDTH):
                v = row_copy[i * n_blocks + b]
                m = v if v > m else m
            block[b] = m
        floor = _floor(block, k, reached, counts)
        c = 0  # the scores at or above the floor: only blocks whose maximum reaches it hold any
        for b in range(n_blocks):
            if block[b] >= floor and block[b] > lowest:
                for i in range(WIDTH):
                    j = i * n_blocks + b
                    v = row_copy[j]
                    candidates[c], candidate_items[c] = v, j
                    c += (v >= floor) & (v > lowest)
        _keep_best(candidates, candidate_items, c, values[out], items[out])


@numba.njit(cache=True, nogil=True)
def _floor(block, k, reached, counts):  # pragma: no cover
    """A value with at least ``k`` of the ``block`` maxima at or above it (-inf when there are fewer blocks), as high
    as cheaply found: the smallest of k group maxima, then the k-th largest block maximum when few reach that."""
    n_blocks = len(block)
    if n_blocks < k:
        return np.float32(-np.inf)
    floor = np.float32(np.inf)
    for g in range(k):  # group g: blocks g, g + k, ...; each group's maximum is a different block's
        m = block[g]
        for b in range(g + k, n_blocks, k):
            m = block[b] if block[b] > m else m
        floor = m if m < floor else floor
    s = 0
    for b in range(n_blocks):  # the maxima at or above it, gathered without a branch
        reached[s] = block[b]
        s += block[b] >= floor
    if s > COUNTED:  # ties, or a large k: counting would cost s^2
        return floor
    _count_at_least(reached[:s], reached[:s], counts)
    for q in range(s):  # branch-free: the largest with at least k at or above it
        floor = reached[q] if (counts[q] >= k) & (reached[q] > floor) else floor
    return floor


@numba.njit(cache=True, nogil=True)
def _count_at_least(values, of, counts):  # pragma: no cover
    """``counts[p]``: how many ``values`` are at least ``of[p]`` (vectorised over p, no branches)."""
    counts[: len(of)] = 0
    for v in values:
        for p in range(len(of)):
            counts[p] += np.int32(1) if v >= of[p] else np.int32(0)


@numba.njit(cache=True, nogil=True)
def _keep_best(candidates, candidate_items, c, best, best_items):  # pragma: no cover
    """The best ``len(best)`` of the first ``c`` candidates into ``best`` (descending; equal values by item) and their
    items into ``best_items``: placed by rank where there are few, kept in a sorted buffer otherwise."""
    k = len(best)
    if c <= COUNTED:
        for q in range(c):  # rank = how many come first: larger, or equal with a smaller item (one vector loop)
            v, item, rank = candidates[q], candidate_items[q], 0
            for p in range(c):
                rank += (candidates[p] > v) | ((candidates[p] == v) & (candidate_items[p] < item))
            if rank < k:
                best[rank], best_items[rank] = v, item
        return
    for q in range(c):
        v, item = candidates[q], candidate_items[q]
        if q >= k and (v < best[k - 1] or (v == best[k - 1] and item > best_items[k - 1])):
            continue
        p = min(q, k - 1)  # insert, keeping the buffer sorted
        while p > 0 and (best[p - 1] < v or (best[p - 1] == v and best_items[p - 1] > item)):
            best[p], best_items[p] = best[p - 1], best_items[p - 1]
            p -= 1
        best[p], best_items[p] = v, item


@numba.njit(cache=True, nogil=True)
def among_rows(items, indptr, indices, rows, found):  # pragma: no cover
    """``found[i, j]``: whether ``items[i, j]`` is in row ``rows[i]`` of the CSR (indptr, indices); a row is scanned."""
    for i in range(items.shape[0]):
        start, end = indptr[rows[i]], indptr[rows[i] + 1]
        for j in range(items.shape[1]):
            item = items[i, j]
            for h in range(start, end):
                if indices[h] == item:
                    found[i, j] = True
                    break


def warm_up() -> None:
    """Load (or compile) the machine code of both passes for the argument types recexp gives them."""
    indptr, indices, rows = np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    scores = np.zeros((1, 4), dtype=np.float32)
    for layout in (scores, scores[:, ::2]):  # a model's own rows, and a view (a row shared by every user)
        largest_rows(layout, rows, indptr, indices, rows, indices, np.full((1, 1), -np.inf, dtype=np.float32),
                     np.full((1, 1), -1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    among_rows(np.zeros((1, 1), dtype=np.int64), indptr, indices, rows, np.zeros((1, 1), dtype=np.bool_))
