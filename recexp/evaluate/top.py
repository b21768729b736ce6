"""The top-k items of score rows, each row without its user's history and the items outside the ranking.

torch.topk cannot skip items, so it needs a masked copy of every batch, and at one thread it costs about
3-4 ns an item, most of it a per-row partial sort; on a CPU with large catalogs it sorts only the scores of
the blocks with the highest maxima (:func:`blockwise_topk`). On CPU a compiled pass (numba, :mod:`recexp.evaluate.kernels`)
copies a row once into a scratch buffer with its history at -inf, takes the maxima of 16-score blocks in one
vector pass, finds from them a floor that at least k scores reach, and sorts only the scores at or above it
(about 1.4 ns an item at ml-100k's size, 0.6 at 25k items). Loading that pass takes about half a second, so a
CPU run loads it in a background thread when it starts (:func:`load_compiled_in_background`) and ranks with
torch.topk until it is there, as other devices always do; a process that evaluates without a run loads it
once it has ranked :data:`COMPILE_AFTER` scores. Both give the same values, and the same items wherever the
k best values are distinct and no other equals the k-th.
"""
from __future__ import annotations

import atexit
import threading

import numpy as np
import torch

# Scores ranked by torch.topk on CPU, outside a run, before the compiled pass is loaded: saving about 2 ns a
# score, the pass repays its loading (about 0.5 s) after some 250M; a long run or a large catalog gets there early.
COMPILE_AFTER = 100_000_000
_ranked_by_topk = 0
_loaded = threading.Event()  # set once the compiled pass is imported and its machine code loaded
# The largest k the compiled pass ranks: its sorted buffer grows with k, torch.topk's partial sort hardly
# (at k = 1,001 the pass took 11x torch.topk's time at 1,682 items; at k = 101 about as long)
COMPILED_MAX_K = 64
WIDTH = 16  # scores a block holds, in torch.topk's blockwise path as in the compiled pass


def largest(scores: torch.Tensor, rows: np.ndarray, history: tuple[np.ndarray, np.ndarray], history_rows: np.ndarray,
            allowed: torch.Tensor, k: int, columns: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """The ``k`` best values of ``scores[rows]`` [R, n_items] among the ``allowed`` [n_items] items outside each
    row's history (row ``history_rows[i]`` of the CSR ``history = (indptr, indices)``, sorted indices).
    ``columns`` [n_items]: the column of ``scores`` holding each item's score, for rows in a model's own item
    order (None: column j is item j). The compiled pass ranks such rows as they are (the history and the
    banned items mapped to their columns, the best columns back to items), torch.topk a reordered copy.

    Returns (values [R, k] descending, -inf for empty slots; items [R, k]; NaN/+inf count [R] over the whole row;
    whether the row has a finite score anywhere [R])."""
    global _ranked_by_topk
    if scores.device.type == "cpu":
        if not compiled_loaded() and _ranked_by_topk >= COMPILE_AFTER:
            load_compiled()
        if compiled_loaded() and k <= COMPILED_MAX_K:
            return compiled_largest(scores, rows, history, history_rows, allowed, k, columns)
        _ranked_by_topk += len(rows) * scores.shape[1]
    return masked_largest(scores, rows, history, history_rows, allowed, k, columns)


def compiled_loaded() -> bool:
    """Whether this process has loaded the compiled pass (it then takes every CPU ranking)."""
    return _loaded.is_set()


def load_compiled() -> None:
    """Import the compiled pass and load its machine code (from numba's disk cache, or compiled the first time)."""
    from recexp.evaluate import kernels

    kernels.warm_up()
    _loaded.set()


def load_compiled_in_background() -> None:
    """:func:`load_compiled` in a background thread, unless it is loaded or loading: CPU rankings take the compiled
    pass once it is there, and torch.topk until then (a run trains meanwhile)."""
    global _loading
    with _start:
        if _loading is None:
            _loading = threading.Thread(target=load_compiled, name="recexp-compiled-ranking", daemon=True)
            _loading.start()
            atexit.register(_loading.join, 60)  # a process that ends early does not end inside LLVM's loading


_start, _loading = threading.Lock(), None


def compiled_largest(scores, rows, history, history_rows, allowed, k, columns=None):
    """:func:`largest` by the compiled pass over CPU scores."""
    from recexp.evaluate.kernels import largest_rows  # numba: imported, and its cache loaded, on first use

    array = scores.detach().float().numpy()  # a view where the model gave float32
    banned, history_rows = ~allowed.cpu().numpy(), np.asarray(history_rows, dtype=np.int64)
    if columns is not None:  # in the model's columns: each row's history, and the items and columns not ranked
        own = columns.cpu().numpy()
        history, history_rows = _in_columns(history, history_rows, own), np.arange(len(rows), dtype=np.int64)
        banned_columns = np.ones(array.shape[1], dtype=np.bool_)
        banned_columns[own[~banned]] = False
        banned = banned_columns
    values = np.full((len(rows), k), -np.inf, dtype=np.float32)
    items = np.full((len(rows), k), -1, dtype=np.int64)
    broken, finite = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
    largest_rows(array, np.asarray(rows, dtype=np.int64), history[0], history[1], history_rows, np.flatnonzero(banned),
                 values, items, broken, finite)
    if columns is not None:  # the best columns back to items; the columns of no item (RecBole's padding) not counted
        item_of = np.full(array.shape[1] + 1, -1, dtype=np.int64)  # its last entry: -1's, an empty slot's
        item_of[own] = np.arange(len(own))
        items = item_of[items]
        outside = array[np.ix_(np.asarray(rows), np.flatnonzero(item_of[:-1] < 0))]
        broken -= (np.isnan(outside) | np.isposinf(outside)).sum(1)
        finite -= np.isfinite(outside).sum(1)
    return torch.from_numpy(values), torch.from_numpy(items), broken, finite > 0


def _in_columns(history: tuple[np.ndarray, np.ndarray], rows: np.ndarray, columns: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The CSR ``history``'s ``rows`` as a CSR of their own (row i: ``rows[i]``), items replaced by their ``columns``."""
    indptr = history[0]
    lengths = indptr[rows + 1] - indptr[rows]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), columns[csr_entries(history, rows)[1]]


def masked_largest(scores, rows, history, history_rows, allowed, k, columns=None):
    """:func:`largest` by torch.topk over a masked copy (any device; on a CPU, among the best blocks' scores)."""
    part = item_order_rows(scores, rows, columns)
    broken, finite = non_finite(part)
    masked = mask(part, history, history_rows, allowed)
    values, items = blockwise_topk(masked, k) if masked.device.type == "cpu" else masked.topk(k, dim=1)
    return values, items, broken, finite


def blockwise_topk(part: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``part.topk(k, dim=1)`` for a contiguous ``part`` [R, n], found among the scores of the k 16-score blocks with
    the highest maxima (block b: columns b, b + n // 16, ...; the last n % 16 columns are always read): the same
    values, and the same items wherever the k best values are distinct and no other equals the k-th. On a CPU,
    torch.topk's partial sort of a whole row costs about 3.5 ns a score; the block maxima are one vector pass,
    and a sort of n / 16."""
    n_rows, n = part.shape
    n_blocks = n // WIDTH
    if n_blocks < 16 * k:  # torch.topk's cost per row outweighs the saving (evaluations at ml-100k's size: 7% slower)
        return tuple(part.topk(k, dim=1))
    maxima = part.as_strided((n_rows, WIDTH, n_blocks), (part.stride(0), n_blocks, 1)).amax(dim=1)
    blocks = maxima.topk(k, dim=1).indices  # every score among the k best is in one of these blocks
    within = n_blocks * torch.arange(WIDTH, device=part.device)
    candidates = torch.cat([(blocks.unsqueeze(1) + within.view(1, WIDTH, 1)).reshape(n_rows, WIDTH * k),
                            torch.arange(WIDTH * n_blocks, n, device=part.device).expand(n_rows, -1)], dim=1)
    best = part.gather(1, candidates).topk(k, dim=1)
    return best.values, candidates.gather(1, best.indices)


def item_order_rows(scores: torch.Tensor, rows: np.ndarray, columns: torch.Tensor | None = None) -> torch.Tensor:
    """A float copy of ``scores[rows]`` with its columns in item order (``columns``: as in :func:`largest`)."""
    part = scores.index_select(0, torch.as_tensor(rows, device=scores.device))  # a faster row copy than indexing
    return (part if columns is None else part.index_select(1, columns.to(part.device))).float()


def non_finite(part: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(NaN/+inf count [R], whether the row has a finite score [R]) of ``part`` [R, n_items]. Only rows whose sum
    is not finite are counted: torch's elementwise tests cost about 20 times a sum on CPU."""
    broken, finite = np.zeros(len(part), dtype=np.int64), np.ones(len(part), dtype=np.bool_)
    odd = (~part.sum(1).isfinite()).nonzero()[:, 0]
    if len(odd):
        rows, picked = part[odd], odd.cpu().numpy()
        broken[picked] = (rows.isnan() | rows.isposinf()).sum(1).cpu().numpy()
        finite[picked] = rows.isfinite().any(1).cpu().numpy()
    return broken, finite


def mask(part: torch.Tensor, history: tuple[np.ndarray, np.ndarray], history_rows: np.ndarray,
         allowed: torch.Tensor) -> torch.Tensor:
    """``part`` [R, n_items] (a copy, written in place) with each row's history and the items not ``allowed`` at -inf."""
    row, col = csr_entries(history, history_rows)
    part[torch.as_tensor(row, device=part.device), torch.as_tensor(col, device=part.device)] = float("-inf")
    return part if bool(allowed.all()) else part.masked_fill_(~allowed, float("-inf"))


def csr_entries(matrix: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, column) of every entry of the CSR ``matrix = (indptr, indices)``'s ``rows``."""
    indptr, indices = matrix
    starts, lengths = indptr[rows], indptr[np.asarray(rows) + 1] - indptr[rows]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.arange(len(rows)), lengths), indices[np.repeat(starts, lengths) + within]


def among(items: np.ndarray, matrix: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """[R, k] bool: whether ``items[i, j]`` is in row ``rows[i]`` of the CSR ``matrix = (indptr, indices)``, each
    row's indices sorted (-1: never). A compiled scan of each row where the compiled pass is loaded, else
    :func:`among_by_keys`."""
    items, rows = np.ascontiguousarray(items, dtype=np.int64), np.asarray(rows, dtype=np.int64)
    if not compiled_loaded():
        return among_by_keys(items, matrix, rows)
    from recexp.evaluate.kernels import among_rows

    found = np.zeros(items.shape, dtype=np.bool_)
    among_rows(items, matrix[0], matrix[1], rows, found)
    return found


def among_by_keys(items: np.ndarray, matrix: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """:func:`among` in numpy: each (row, item) pair is one key, looked up among the rows' entries' keys."""
    position, column = csr_entries(matrix, rows)
    width = int(max(items.max(initial=-1), column.max(initial=-1))) + 2  # keys i * width + item + 1 never collide
    keys = position * width + column + 1  # ascending: positions ascend, and each row's indices are sorted
    if not len(keys):
        return np.zeros(items.shape, dtype=bool)
    wanted = np.arange(len(items))[:, None] * width + items + 1  # item -1 gives a key no entry has
    return keys[np.searchsorted(keys, wanted).clip(max=len(keys) - 1)] == wanted
