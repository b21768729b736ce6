"""The compiled pass of :func:`recexp.evaluate.top.compiled_largest` (numba, cached on disk after the first run).

Imported only when that pass is used: importing numba and loading its cache takes about half a second, more
than the pass saves on a small evaluation.
"""
from __future__ import annotations

import numba
import numpy as np

CHUNK = 16  # scores compared against the floor at once (one vector compare); a chunk with none above is skipped


@numba.njit(cache=True, nogil=True)
def largest_rows(scores, rows, indptr, indices, history_rows, allowed, values, items, broken, finite):  # pragma: no cover
    k, n = values.shape[1], scores.shape[1]
    # Floors guessed from every stride-th score of a row (about 16k of them): its rank-th largest has about 2k
    # scores of the row above it, its 2rank-th about 4k. Scanning above a guess inserts far fewer scores than
    # scanning from -inf; a guess with fewer than k rankable scores above it is followed by the next one.
    stride = max(16, n // (16 * k))
    rank = max(1, (2 * k + stride - 1) // stride)
    sample = np.empty(2 * rank, dtype=scores.dtype)
    lowest = scores.dtype.type(-np.inf)
    for out in range(len(rows)):
        row, best, best_items = scores[rows[out]], values[out], items[out]
        start, end = indptr[history_rows[out]], indptr[history_rows[out] + 1]
        _sample_largest(row, stride, sample)
        for guess in (sample[rank - 1], sample[2 * rank - 1], lowest):
            best[:], best_items[:] = lowest, -1
            filled, bad, seen_finite = _scan(row, indices, start, end, allowed, guess, best, best_items)
            if filled == k or guess == lowest:
                break
        broken[out], finite[out] = bad, seen_finite


@numba.njit(cache=True, nogil=True)
def _sample_largest(row, stride, sample):  # pragma: no cover
    """``sample``: the largest finite scores among every stride-th of ``row``, descending (-inf when fewer)."""
    sample[:] = -np.inf
    last, top = len(sample) - 1, row.dtype.type(np.inf)
    for j in range(0, len(row), stride):
        v = row[j]
        if v > sample[last] and v < top:
            p = last
            while p > 0 and sample[p - 1] < v:
                sample[p] = sample[p - 1]
                p -= 1
            sample[p] = v


@numba.njit(cache=True, nogil=True)
def _scan(row, indices, h, end, allowed, floor, best, best_items):  # pragma: no cover
    """Keep the k best rankable scores of ``row`` above ``floor`` in ``best`` (sorted, descending) and their items
    in ``best_items``; count NaN/+inf scores and whether there is a finite one (above ``floor``, or any when it is
    -inf). Returns (how many are kept, NaN/+inf count, finite seen)."""
    k, n, top = len(best), len(row), row.dtype.type(np.inf)
    filled, bad, seen_finite = 0, 0, False
    for chunk in range(0, n, CHUNK):
        if chunk + CHUNK <= n:  # a whole chunk: a fixed-length loop the compiler turns into vector compares
            below = True
            for j in range(chunk, chunk + CHUNK):
                below &= row[j] <= floor  # False above the floor, and for NaN
            if below:
                continue
        for j in range(chunk, min(chunk + CHUNK, n)):
            v = row[j]
            if v <= floor:
                continue
            if v != v or v == top:
                bad += 1
                continue
            seen_finite = True  # v > floor >= -inf: with floor -inf, the first finite score of a row gets here
            while h < end and indices[h] < j:  # the history pointer moves only here: O(history) a row
                h += 1
            if (h < end and indices[h] == j) or not allowed[j]:
                continue
            if filled < k:  # the first k are appended, then sorted once
                best[filled], best_items[filled] = v, j
                filled += 1
                if filled == k:
                    _sort_descending(best, best_items, k)
                    floor = best[k - 1]
                continue
            p = k - 1  # insert v, keeping the buffer sorted
            while p > 0 and best[p - 1] < v:
                best[p], best_items[p] = best[p - 1], best_items[p - 1]
                p -= 1
            best[p], best_items[p] = v, j
            floor = best[k - 1]
    if filled < k:
        _sort_descending(best, best_items, filled)
    return filled, bad, seen_finite


@numba.njit(cache=True, nogil=True)
def _sort_descending(values, items, length):  # pragma: no cover
    """Insertion sort of ``values[:length]`` (descending, equal values in their order) and ``items`` alongside."""
    for i in range(1, length):
        v, item, p = values[i], items[i], i
        while p > 0 and values[p - 1] < v:
            values[p], items[p] = values[p - 1], items[p - 1]
            p -= 1
        values[p], items[p] = v, item


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
