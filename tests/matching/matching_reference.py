"""Independent references for the matching tests: scipy's optimum and a NumPy validity check."""
from __future__ import annotations

import functools

import numpy as np
import scipy.optimize
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching


def optimum(weights, mask=None) -> float:
    """Max-weight matching value via scipy: clip at 0, masked pairs 0, zero pairs dropped.

    ``linear_sum_assignment`` returns min(n, m) pairs; pairs of clipped weight 0 add nothing,
    so the assignment optimum of the clipped matrix equals the matching optimum.
    """
    w = np.asarray(weights, np.float64)
    if w.size == 0:
        return 0.0
    m = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    clipped = np.where(m, np.maximum(w, 0.0), 0.0)
    rows, cols = scipy.optimize.linear_sum_assignment(clipped, maximize=True)
    return float(clipped[rows, cols].sum())


def optima(weights, masks) -> np.ndarray:
    return np.array([optimum(w, m) for w, m in zip(np.asarray(weights), np.asarray(masks))])


def max_cardinality(mask) -> int:
    """Size of a maximum-cardinality matching of the bipartite graph ``mask`` (scipy)."""
    mask = np.asarray(mask, bool)
    if mask.size == 0:
        return 0
    match = maximum_bipartite_matching(csr_matrix(mask.astype(np.int8)), perm_type="column")
    return int((match >= 0).sum())


def check_valid(result, weights, mask, allow_nonpositive=False, atol=1e-4):
    """Assert that a (possibly batched) MatchResult is a valid matching of (weights, mask).

    Each row/column used at most once, row_to_col and col_to_row consistent, only mask-True
    pairs (and only positive-weight pairs unless ``allow_nonpositive``), total == recomputed sum.
    Returns the recomputed totals (float64).
    """
    w = np.asarray(weights, np.float64)
    msk = np.asarray(mask, bool)
    r2c = np.asarray(result.row_to_col)
    c2r = np.asarray(result.col_to_row)
    total = np.asarray(result.total, np.float64)
    if w.ndim == 2:
        w, msk, r2c, c2r, total = w[None], msk[None], r2c[None], c2r[None], total[None]
    b, n, m = w.shape
    assert r2c.shape == (b, n) and c2r.shape == (b, m)
    assert r2c.dtype == np.int32 and c2r.dtype == np.int32
    assert ((r2c >= -1) & (r2c < m)).all() and ((c2r >= -1) & (c2r < n)).all()
    sums = np.zeros(b)
    for k in range(b):
        rows = np.nonzero(r2c[k] >= 0)[0]
        cols = r2c[k][rows]
        assert len(set(cols.tolist())) == len(cols), "a column is matched twice"
        assert (c2r[k][cols] == rows).all(), "col_to_row does not invert row_to_col"
        assert (c2r[k] >= 0).sum() == len(rows), "col_to_row has extra pairs"
        assert msk[k][rows, cols].all(), "a masked-out pair was matched"
        if not allow_nonpositive:
            assert (w[k][rows, cols] > 0).all(), "a pair of weight <= 0 was matched"
        sums[k] = w[k][rows, cols].sum()
    np.testing.assert_allclose(total, sums, rtol=1e-5, atol=atol)
    return sums


KINDS = ("uniform", "normal", "masked", "ties", "integer", "dispatch")


def np_instances(kind: str, b: int, n: int, m: int, seed: int = 0):
    """``b`` instances of ``kind`` and shape n x m drawn with NumPy (no JAX compile; independent
    of fedrl.matching.instances, whose kinds it mirrors)."""
    rng = np.random.default_rng(seed)
    shape = (b, n, m)
    ones = np.ones(shape, bool)
    if kind == "uniform":
        return rng.random(shape, np.float32), ones
    if kind == "normal":
        return rng.standard_normal(shape, np.float32), ones
    if kind == "masked":
        return rng.random(shape, np.float32), rng.random(shape) < 0.3
    if kind == "ties":
        return rng.integers(-1, 3, shape).astype(np.float32), ones
    if kind == "integer":
        return rng.integers(0, 101, shape).astype(np.float32), rng.random(shape) < 0.5
    assert kind == "dispatch", kind
    drivers, orders = rng.random((b, n, 2)), rng.random((b, m, 2))
    dist = np.linalg.norm(drivers[:, :, None] - orders[:, None], axis=-1)
    fare = np.exp(0.5 * rng.standard_normal((b, 1, m)))
    value = 0.2 * rng.random((b, n, 1))
    w = (1.0 - 0.01 * np.exp(np.log(20.0) * dist / 0.25)) * (fare - value)
    return w.astype(np.float32), dist < 0.25


@functools.lru_cache(maxsize=None)
def _base(kind: str):
    return np_instances(kind, 64, 12, 12, seed=KINDS.index(kind))


def batch(kind: str, n: int, m: int, size: int = 64):
    """``size`` (<= 64) instances of ``kind`` and shape n x m (n, m <= 12), shared by the tests."""
    w, mask = _base(kind)
    return w[:size, :n, :m], mask[:size, :n, :m]
