"""hungarian_match and greedy_match against scipy (optax's Hungarian test pattern)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from fedrl.config import ConfigError
from fedrl.matching import MATCHERS, greedy_match, hungarian_match, match

from matching_reference import KINDS, batch, check_valid, max_cardinality, optima, optimum

FNS = [hungarian_match, greedy_match]
IDS = ["hungarian", "greedy"]


@pytest.mark.parametrize("fn", FNS, ids=IDS)
@pytest.mark.parametrize("n,m", [(0, 0), (0, 3), (3, 0), (1, 1), (1, 3), (3, 1)])
def test_small_sizes(fn, n, m):
    w = jax.random.normal(jax.random.key(n * 10 + m), (n, m))
    mask = jnp.ones((n, m), bool).at[:, :1].set(n != 3)  # 3 x 1 has its only column masked out
    res = fn(w, mask)
    assert res.row_to_col.shape == (n,) and res.col_to_row.shape == (m,)
    assert res.total.shape == () and res.iterations.shape == () and bool(res.converged)
    total = check_valid(res, w, mask)
    opt = optimum(w, mask)
    if fn is hungarian_match:
        assert total == pytest.approx(opt, abs=1e-5)
    else:
        assert total >= opt / 2 - 1e-6


# 64 instances of each of the 6 kinds per shape (1152 instances), compiled once per shape.
@pytest.mark.parametrize("n,m", [(8, 8), (5, 12), (12, 5)])
def test_hungarian_exact_and_greedy_half_on_random_batches(n, m):
    hung = jax.jit(jax.vmap(hungarian_match))
    greedy = jax.jit(jax.vmap(greedy_match))
    for kind in KINDS:
        w, mask = batch(kind, n, m)
        opt = optima(w, mask)
        totals = check_valid(hung(w, mask), w, mask)
        np.testing.assert_allclose(totals, opt, rtol=1e-5, atol=1e-4, err_msg=kind)
        g = check_valid(greedy(w, mask), w, mask)
        assert (g >= opt / 2 - 1e-5).all(), kind
        assert (g <= opt + 1e-4).all(), kind


def test_greedy_takes_heaviest_edge_first():
    # The classic bad case: greedy takes 3 and blocks the two 2s (optimum 4), ratio 3/4.
    w = jnp.array([[3.0, 2.0], [2.0, 0.0]])
    res = greedy_match(w)
    assert res.row_to_col.tolist() == [0, -1] and float(res.total) == 3.0
    assert float(hungarian_match(w).total) == 4.0


def test_nonpositive_and_masked_pairs_stay_unmatched():
    w = jnp.array([[-1.0, 0.0, 5.0], [2.0, -3.0, 0.0]])
    mask = jnp.array([[True, True, False], [True, True, True]])
    for name, fn in MATCHERS.items():
        res = fn(w, mask)
        assert res.row_to_col.tolist() == [-1, 0], name
        assert res.col_to_row.tolist() == [1, -1, -1], name
        assert float(res.total) == 2.0, name


def test_allow_nonpositive_gives_max_cardinality_then_max_weight():
    w, mask = batch("normal", 8, 8)
    mask = mask & (np.random.default_rng(0).random(mask.shape) < 0.3)
    res = jax.jit(jax.vmap(lambda a, b: hungarian_match(a, b, allow_nonpositive=True)))(w, mask)
    check_valid(res, w, mask, allow_nonpositive=True)
    sizes = (np.asarray(res.row_to_col) >= 0).sum(1)
    assert (sizes == [max_cardinality(mk) for mk in mask]).all()
    g = jax.jit(jax.vmap(lambda a, b: greedy_match(a, b, allow_nonpositive=True)))(w, mask)
    check_valid(g, w, mask, allow_nonpositive=True)
    assert ((np.asarray(g.row_to_col) >= 0).sum(1) * 2 >= sizes).all()  # maximal >= max / 2
    # Full mask: the same value as scipy's linear_sum_assignment on the raw weights.
    full = jax.jit(jax.vmap(lambda a, b: hungarian_match(a, b, allow_nonpositive=True)))(
        w, np.ones_like(mask))
    for k in range(8):
        r, c = scipy.optimize.linear_sum_assignment(w[k], maximize=True)
        assert float(full.total[k]) == pytest.approx(float(w[k][r, c].sum()), abs=1e-4)


def test_match_vmaps_leading_axes_and_validates():
    w, mask = batch("masked", 5, 12, size=6)
    solve = jax.jit(lambda a, b: match(a, b, method="greedy"))
    res = solve(w.reshape(2, 3, 5, 12), mask.reshape(2, 3, 5, 12))
    assert res.row_to_col.shape == (2, 3, 5) and res.total.shape == (2, 3)
    flat = jax.tree.map(lambda x: np.asarray(x).reshape((6,) + x.shape[2:]), res)
    totals = check_valid(flat, w, mask)
    assert (totals >= optima(w, mask) / 2 - 1e-5).all()
    assert set(MATCHERS) == {"auction", "hungarian", "greedy"}
    with pytest.raises(ConfigError, match="unknown matching method"):
        match(w, mask, method="simplex")
    with pytest.raises(ConfigError, match="mask shape"):
        match(w, mask[..., :3])
    with pytest.raises(ConfigError, match="2-D"):
        hungarian_match(w)


def test_instance_generator_kinds():
    from fedrl.matching.instances import random_instances
    w, mask = random_instances(jax.random.key(0), 3, 4, 6, "dispatch")
    assert w.shape == mask.shape == (3, 4, 6) and mask.dtype == jnp.bool_
    with pytest.raises(ValueError, match="unknown instance kind"):
        random_instances(jax.random.key(0), 1, 2, 2, "bogus")
