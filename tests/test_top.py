"""The evaluator's top-k of masked score rows: the compiled CPU pass against torch.topk over a masked copy."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recexp.evaluate import top
from recexp.evaluate.top import among, among_by_keys, compiled_largest, masked_largest, non_finite


def history_of(n_rows, n_items, density, seed):
    matrix = sp.random(n_rows, n_items, density=density, format="csr", random_state=seed)
    matrix.sort_indices()
    return matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)


def test_non_finite_counts_as_the_elementwise_tests_do():
    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[1.0, 2.0, 3.0], [nan, 1.0, inf], [-inf, -inf, -inf], [3e38, 3e38, 1.0], [-inf, 2.0, nan],
                         [inf, -inf, 0.0]])  # row 3's sum overflows although every score is finite
    broken, finite = non_finite(rows)
    assert broken.tolist() == (rows.isnan() | rows.isposinf()).sum(1).tolist() == [0, 2, 0, 0, 1, 1]
    assert finite.tolist() == rows.isfinite().any(1).tolist() == [True, True, False, True, True, True]


@pytest.mark.parametrize("n_items", [7, 300, 1682, 25000])
@pytest.mark.parametrize("k", [1, 21, 60])
def test_compiled_pass_matches_topk_over_a_masked_copy(n_items, k):
    generator = torch.Generator().manual_seed(n_items + k)
    scores = torch.randn(40, n_items, generator=generator)
    scores[5, : n_items // 2] = float("-inf")  # a model's own -inf: not rankable
    scores[6] = float("-inf")
    history = history_of(40, n_items, 0.05, k)
    indptr, indices = history
    for row in (7, 8):  # the highest scores in the history: the guessed floor leaves too few rankable above it
        seen = indices[indptr[row] : indptr[row + 1]]
        scores[row, seen] = 10.0 + torch.rand(len(seen), generator=generator)
    allowed = torch.rand(n_items, generator=generator) > 0.2
    rows = np.array([3, 5, 6, 7, 8, 0, 39, 3])  # any rows, in any order, repeated
    k, before = min(k, n_items), scores.clone()
    ours = compiled_largest(scores, rows, history, rows[::-1], allowed, k)
    reference = masked_largest(scores, rows, history, rows[::-1], allowed, k)
    assert torch.equal(ours[0], reference[0])
    filled = reference[0] > float("-inf")
    assert torch.equal(ours[1][filled], reference[1][filled])  # distinct random values: the same items
    assert (ours[1][~filled] == -1).all()
    assert np.array_equal(ours[3], reference[3]) and not ours[3][2]  # row 6 has no finite score
    assert torch.equal(scores, before)  # read, never written


@pytest.mark.parametrize("n_items, k", [(300, 1), (4385, 11), (25000, 21), (13064, 51)])
def test_blockwise_topk_is_torch_topk(n_items, k):
    """The same values always, the same items where the best values are distinct (ties are the caller's)."""
    assert n_items // top.WIDTH >= 16 * k  # large enough to be ranked blockwise, its last block partial
    generator = torch.Generator().manual_seed(n_items + k)
    distinct = torch.randn(30, n_items, generator=generator)
    distinct[3, : n_items - 5] = float("-inf")  # fewer finite scores than k
    distinct[4] = float("-inf")
    tied = torch.randint(0, 3, (30, n_items), generator=generator).float()
    for part in (distinct, tied):
        values, items = top.blockwise_topk(part, k)
        reference = part.topk(k, dim=1)
        assert torch.equal(values, reference.values)
        assert torch.equal(part.gather(1, items), values) and all(len(set(row)) == len(row) for row in items.tolist())
    assert torch.equal(top.blockwise_topk(distinct, k)[1][5:], distinct.topk(k, dim=1).indices[5:])
    assert top.blockwise_topk(distinct[:0], k)[0].shape == (0, k)  # a batch without users


@pytest.mark.parametrize("ties", [False, True])
def test_rows_in_a_models_own_column_order_rank_as_their_reordered_copy(ties):
    """``columns``: item i's score is in column columns[i] of rows wider than the catalog (RecBole's padding column)."""
    generator = torch.Generator().manual_seed(int(ties))
    n_items, k = 1682, 21
    own = torch.randint(0, 5, (30, n_items + 1), generator=generator).float() if ties else torch.randn(30, n_items + 1,
                                                                                                      generator=generator)
    columns = torch.randperm(n_items, generator=generator) + 1
    own[0, 0] = float("nan")  # the padding column: neither a broken score
    own[1, 0], own[1, 1:] = 1.0, float("-inf")  # nor the only finite one
    history, allowed, rows = history_of(30, n_items, 0.05, 7), torch.rand(n_items, generator=generator) > 0.1, np.arange(30)
    reordered = own.index_select(1, columns)
    reference = masked_largest(reordered, rows, history, rows, allowed, k)
    for ranked in (compiled_largest(own, rows, history, rows, allowed, k, columns),
                   masked_largest(own, rows, history, rows, allowed, k, columns)):
        assert torch.equal(ranked[0], reference[0])
        assert torch.equal(reordered.gather(1, ranked[1].clamp(min=0)), ranked[0])  # each item carries its own score
        assert np.array_equal(ranked[2], reference[2]) and np.array_equal(ranked[3], reference[3])
        assert ranked[2][0] == 0 and not ranked[3][1]
    if not ties:  # distinct values: the same items
        filled = reference[0] > float("-inf")
        assert torch.equal(compiled_largest(own, rows, history, rows, allowed, k, columns)[1][filled], reference[1][filled])


@pytest.mark.parametrize("levels", [1, 3, 50])
@pytest.mark.parametrize("n_items", [40, 1682, 25000])
def test_compiled_pass_matches_topk_on_tied_scores(levels, n_items):
    """Few distinct values: many blocks and candidates reach the floor (the sorted-buffer paths)."""
    generator = torch.Generator().manual_seed(levels)
    scores = torch.randint(0, levels, (12, n_items), generator=generator).float()
    history = history_of(12, n_items, 0.05, levels)
    allowed, rows, k = torch.ones(n_items, dtype=torch.bool), np.arange(12), 21
    values, items, _, _ = compiled_largest(scores, rows, history, rows, allowed, k)
    reference = masked_largest(scores, rows, history, rows, allowed, k)
    assert torch.equal(values, reference[0])
    assert torch.equal(scores.gather(1, items), values)  # each item carries its value
    indptr, indices = history
    for row in rows:  # none from the history, none twice; equal values by item
        assert not set(items[row].tolist()) & set(indices[indptr[row] : indptr[row + 1]].tolist())
        assert len(set(items[row].tolist())) == k
        for a, b in zip(range(k - 1), range(1, k)):
            assert values[row, a] > values[row, b] or items[row, a] < items[row, b]


def test_compiled_pass_reads_views_and_counts_non_finite_scores():
    base = torch.tensor([0.5, float("nan"), 2.0, float("inf"), -1.0, 3.0])
    expanded = base.expand(3, -1)  # a shared row, as a popularity model gives: not contiguous, never written
    history = (np.array([0, 1, 1, 3]), np.array([5, 0, 2]))
    values, items, broken, finite = compiled_largest(expanded, np.arange(3), history, np.arange(3),
                                                     torch.ones(6, dtype=torch.bool), 2)
    assert broken.tolist() == [2, 2, 2] and finite.all()
    assert items.tolist() == [[2, 0], [5, 2], [5, 4]] and values[0].tolist() == [2.0, 0.5]
    half = compiled_largest(torch.tensor([[1.0, 4.0, 2.0]], dtype=torch.bfloat16), np.arange(1),
                            (np.array([0, 0]), np.array([], dtype=np.int64)), np.arange(1), torch.ones(3, dtype=torch.bool), 2)
    assert half[1].tolist() == [[1, 2]]


@pytest.mark.parametrize("lookup", [among, among_by_keys])
def test_among_finds_items_in_csr_rows(lookup):
    top.load_compiled()  # among takes the compiled scan

    matrix = (np.array([0, 2, 2, 5]), np.array([1, 4, 0, 3, 9]))
    items = np.array([[4, 1, -1], [1, 2, 3], [9, 3, 1]])
    assert lookup(items, matrix, np.array([0, 1, 2])).tolist() == [[True, True, False], [False] * 3, [True, True, False]]


@pytest.mark.parametrize("lookup", [among, among_by_keys])
def test_among_agrees_with_a_set_lookup_on_random_rows(lookup):
    top.load_compiled()

    rng = np.random.default_rng(0)
    matrix = history_of(30, 500, 0.04, 1)
    rows = rng.integers(0, 30, 50)
    items = rng.integers(-1, 500, (50, 20))
    items[:, 0] = [matrix[1][matrix[0][r]] if matrix[0][r + 1] > matrix[0][r] else -1 for r in rows]  # some hits
    expected = [[item in set(matrix[1][matrix[0][r] : matrix[0][r + 1]]) for item in row] for r, row in zip(rows, items)]
    found = lookup(items, matrix, rows)
    assert found.tolist() == expected and found[:, 0].sum() > 20


@pytest.mark.subprocess
def test_a_process_loads_the_compiled_pass_only_after_ranking_enough_scores():
    code = """
import sys, numpy as np, torch
from recexp.evaluate import top
args = (torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), np.arange(4),
        (np.array([0, 2, 2, 2, 3]), np.array([1, 7, 3])), np.arange(4), torch.ones(50, dtype=torch.bool), 3)
top.COMPILE_AFTER = 300
first = top.largest(*args)
top.largest(*args)  # 200 scores ranked by torch.topk before, 400 after: still under 300 before it
assert 'numba' not in sys.modules and not top.compiled_loaded()
third = top.largest(*args)
assert top.compiled_loaded() and 'numba' in sys.modules
assert torch.equal(first[0], third[0]) and torch.equal(first[1], third[1])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.subprocess
def test_a_run_loads_the_compiled_pass_in_the_background():
    code = """
import sys, numpy as np, torch
from recexp.evaluate import top
args = (torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), np.arange(4),
        (np.array([0, 2, 2, 2, 3]), np.array([1, 7, 3])), np.arange(4), torch.ones(50, dtype=torch.bool), 3)
first = top.largest(*args)  # ranked by torch.topk: nothing loaded
assert not top.compiled_loaded() and 'numba' not in sys.modules
top.load_compiled_in_background()
top.load_compiled_in_background()  # one thread, however often a run asks
top._loading.join()
assert top.compiled_loaded()
again = top.largest(*args)
assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_large_k_is_ranked_by_topk_even_with_the_compiled_pass_loaded(monkeypatch):
    top.load_compiled()
    used = []
    monkeypatch.setattr(top, "masked_largest", lambda *args: used.append("topk") or masked_largest(*args))
    monkeypatch.setattr(top, "compiled_largest", lambda *args: used.append("compiled") or compiled_largest(*args))
    scores, allowed = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)), torch.ones(500, dtype=torch.bool)
    history = history_of(3, 500, 0.05, 0)
    for k in (top.COMPILED_MAX_K, top.COMPILED_MAX_K + 1):
        top.largest(scores, np.arange(3), history, np.arange(3), allowed, k)
    assert used == ["compiled", "topk"]
