"""auction_match: validity, optimality bounds vs scipy, rectangular both ways, vmap/jit, bounds."""
import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedrl.config import ConfigError
from fedrl.matching import auction_match, auction_match_batch, match

from matching_reference import (KINDS, batch, check_valid, max_cardinality, np_instances,
                                optima, optimum)

TOL = 1e-3  # the default relative tolerance of auction_match


def assert_within_tol(totals, opt, kind=""):
    # Guarantee: total >= (1 - tol) * optimum (a little float32 slack on top).
    assert (totals >= (1 - TOL) * opt - 1e-4).all(), (kind, np.max(opt - totals))
    assert (totals <= opt + 1e-4).all(), kind


@pytest.mark.parametrize("n,m", [(0, 0), (0, 4), (4, 0), (1, 1), (1, 4), (4, 1)])
def test_small_sizes(n, m):
    w = jax.random.normal(jax.random.key(n * 10 + m), (n, m))
    res = jax.jit(auction_match)(w)
    assert res.row_to_col.shape == (n,) and res.col_to_row.shape == (m,)
    assert bool(res.converged)
    totals = check_valid(res, w, np.ones((n, m), bool))
    assert totals[0] == pytest.approx(optimum(w), abs=1e-5)
    if (n, m) == (4, 1):  # jit == no jit
        eager = auction_match(w)
        np.testing.assert_array_equal(eager.row_to_col, res.row_to_col)
        assert float(eager.total) == float(res.total)


# 64 instances of each of the 6 kinds per shape (1152 instances), one compile per shape.
@pytest.mark.parametrize("n,m", [(8, 8), (5, 12), (12, 5)])
def test_valid_and_within_tolerance_on_random_batches(n, m):
    solve = jax.jit(jax.vmap(auction_match))
    for kind in KINDS:
        w, mask = batch(kind, n, m)
        res = solve(w, mask)
        assert np.asarray(res.converged).all(), kind
        totals = check_valid(res, w, mask)
        opt = optima(w, mask)
        assert_within_tol(totals, opt, kind)
        if kind in ("ties", "integer"):
            # Integer weights: exact (eps_final < 1 / min(n, m), certificate gap < 1).
            np.testing.assert_array_equal(totals, opt, err_msg=kind)


def test_dispatch_shaped_batch_and_vmap_equals_loop():
    # 64 dispatch-like problems of 16 x 48 (the simulator's batch shape): gap < 0.1 %.
    w, mask = np_instances("dispatch", 64, 16, 48, seed=11)
    batched = jax.jit(jax.vmap(auction_match))(w, mask)
    totals = check_valid(batched, w, mask)
    assert np.asarray(batched.converged).all()
    assert_within_tol(totals, optima(w, mask))
    # vmap == per-instance results, and jit == no jit.
    single = jax.jit(auction_match)
    for k in range(3):
        one = single(w[k], mask[k])
        np.testing.assert_array_equal(one.row_to_col, batched.row_to_col[k])
        np.testing.assert_array_equal(one.col_to_row, batched.col_to_row[k])
        assert int(one.iterations) == int(batched.iterations[k])


@pytest.mark.parametrize("first_iters,growth,chunk", [(None, None, 8), (5, 2, 8), (16, 3, 40)])
def test_staged_batch_equals_vmap(first_iters, growth, chunk):
    """auction_match_batch (resumed stages) == vmapped auction_match, rounds included."""
    w, mask = np_instances("dispatch", 48, 16, 48, seed=12)
    plain = jax.jit(jax.vmap(auction_match))(w, mask)
    assert int(np.sum(np.asarray(plain.iterations) > 16)) > 2 * 8  # several resumed chunks
    staged = jax.jit(functools.partial(auction_match_batch, chunk=chunk, min_staged=0,
                                       first_iters=first_iters, growth=growth))(w, mask)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(staged)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_staged_batch_through_match_transposed_and_assignment():
    """match() passes the batch options on; n > m problems and assignment semantics too."""
    w, mask = np_instances("normal", 12, 9, 5, seed=3)
    for allow in (False, True):
        plain = jax.jit(jax.vmap(functools.partial(auction_match, allow_nonpositive=allow)))(
            w, mask)
        staged = jax.jit(lambda a, b: match(a, b, method="auction", allow_nonpositive=allow,
                                            min_staged=0, chunk=4, first_iters=2))(
            w.reshape(2, 6, 9, 5), mask.reshape(2, 6, 9, 5))
        staged = jax.tree.map(lambda x: x.reshape((12,) + x.shape[2:]), staged)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(staged)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


RESUME_VARIANTS = {
    "defaults": {},
    "no-reverse-each-phase+reset-stale": dict(reverse_each_phase=False, reset_stale=True,
                                              first_rounds=3),
    "cold-phases+jacobi": dict(warm_start=False, bidders_per_round=None),
}


@pytest.mark.parametrize("variant", sorted(RESUME_VARIANTS))
def test_auction_resumes_exactly(variant):
    """A run cut by max_iters at any round (and again 2 rounds later) and resumed makes the
    same rounds as one run, in every state field (mid-forward, mid-reverse, at phase ends; a
    resumption that re-decided whether to run the reverse part diverged on about 1 problem in
    3 here)."""
    from fedrl.matching import auction as A
    opts = A._Options(0.02, 0.1, None, TOL, True, True, True, False, 16, 4)._replace(
        **RESUME_VARIANTS[variant])
    w, mask = np_instances("dispatch", 24, 16, 48, seed=5)
    we, el = jax.vmap(lambda a, b: A._prepare(a, b, False))(jnp.asarray(w), jnp.asarray(mask))
    run = jax.jit(jax.vmap(lambda w, e, s, b: A._auction_core(w, e, s, b, opts),
                           in_axes=(0, 0, 0, None)))
    s0 = jax.vmap(lambda a, b: A._initial_state(a, b, opts))(we, el)
    full = run(we, el, s0, 100_000)
    assert np.asarray(full["done"]).all()
    for cut in range(int(np.max(full["it"])) + 1):
        resumed = run(we, el, run(we, el, run(we, el, s0, cut), cut + 2), 100_000)
        assert set(resumed) == set(full)
        for key in full:
            np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(full[key]),
                                          err_msg=f"{key} after a cut at round {cut}")


def test_one_hot_and_scatter_bids_agree(monkeypatch):
    """The two ways of resolving competing bids (one-hot reductions on small bid matrices,
    scatter-max/min above) give the same runs, ties included."""
    from fedrl.matching import auction as A
    results = {}
    for limit in (A._ONE_HOT_MAX, 0):
        monkeypatch.setattr(A, "_ONE_HOT_MAX", limit)
        for n, m in ((6, 9), (9, 6)):
            # 8 instances of every kind in one batch (one compile per shape and width)
            w, mask = (np.concatenate(x) for x in zip(
                *(np_instances(kind, 8, n, m, seed=2) for kind in KINDS)))
            for width in (None, 2):
                fn = jax.jit(jax.vmap(functools.partial(auction_match, bidders_per_round=width)))
                results[limit, n, width] = jax.tree.map(np.asarray, fn(w, mask))
    for (limit, *rest), res in results.items():
        if limit == 0:
            jax.tree.map(np.testing.assert_array_equal, res, results[(A._ONE_HOT_MAX, *rest)])


def test_batch_regressions():
    """Found in review: int32 budget overflow (hang), integer weights, empty batch."""
    w, mask = np_instances("dispatch", 4, 10, 30, seed=1)
    ref = jax.jit(jax.vmap(auction_match))(w, mask)
    for growth in (None, 2):  # max_iters near 2**31: the budget must not wrap around
        res = jax.jit(functools.partial(auction_match_batch, min_staged=0,
                                        max_iters=2**31 - 1, growth=growth))(w, mask)
        jax.tree.map(np.testing.assert_array_equal, res, ref)
    ints = np.random.default_rng(0).integers(-3, 9, (6, 4, 5))
    staged = jax.jit(functools.partial(auction_match_batch, min_staged=0, first_iters=1))(ints)
    plain = jax.jit(jax.vmap(auction_match))(ints)
    assert staged.total.dtype == plain.total.dtype == jnp.float32
    jax.tree.map(np.testing.assert_array_equal, staged, plain)
    empty = auction_match_batch(np.zeros((0, 3, 4), np.float32), min_staged=0)
    assert empty.row_to_col.shape == (0, 3)


def test_batch_option_errors():
    w, mask = np_instances("uniform", 4, 3, 3, seed=0)
    with pytest.raises(ConfigError, match="chunk"):
        auction_match_batch(w, mask, chunk=0)
    with pytest.raises(ConfigError, match="growth"):
        auction_match_batch(w, mask, growth=1)
    for min_staged in (0, 128):  # the same errors on the staged and the plain path
        with pytest.raises(ConfigError, match="unknown auction option"):
            auction_match_batch(w, mask, min_staged=min_staged, eps_strat=0.1)
        with pytest.raises(ConfigError, match="eps_factor"):
            auction_match_batch(w, mask, min_staged=min_staged, eps_factor=2.0)
        with pytest.raises(ConfigError, match="max_iters"):
            auction_match_batch(w, mask, min_staged=min_staged, max_iters=None)
        with pytest.raises(ConfigError, match="first_rounds"):
            auction_match_batch(w, mask, min_staged=min_staged, first_rounds=-3)


def test_eps_cs_bound_without_certificate():
    # tol tiny => the duality certificate (almost) never stops it early, so the run goes down to
    # eps_final and the eps-CS bound total >= opt - min(n, m) * eps_final must hold on its own.
    eps_final = 0.02
    solve = jax.jit(jax.vmap(functools.partial(auction_match, eps_final=eps_final, tol=1e-9,
                                               exact_integer=False)))
    for kind in ("uniform", "normal", "dispatch"):
        w, mask = batch(kind, 5, 12)
        res = solve(w, mask)
        totals = check_valid(res, w, mask)
        opt = optima(w, mask)
        assert (totals >= opt - 5 * eps_final - 1e-5).all(), kind


def test_iteration_bound_gives_valid_unconverged_matching():
    w, mask = batch("dispatch", 12, 12)
    res = jax.jit(jax.vmap(functools.partial(auction_match, max_iters=1)))(w, mask)
    check_valid(res, w, mask)
    conv = np.asarray(res.converged)
    assert (np.asarray(res.iterations) <= 1).all()
    # Not converged <=> stopped by the bound (problems solved in 1 round may converge).
    assert (np.asarray(res.iterations)[~conv] == 1).all()
    assert (~conv).sum() > len(conv) // 2
    opt = optima(w, mask)
    assert_within_tol(check_valid(res, w, mask)[conv], opt[conv])


def test_allow_nonpositive_gives_max_cardinality():
    w, mask = batch("normal", 8, 8)
    mask = mask & (np.random.default_rng(1).random(mask.shape) < 0.3)
    res = jax.jit(jax.vmap(functools.partial(auction_match, allow_nonpositive=True)))(w, mask)
    check_valid(res, w, mask, allow_nonpositive=True)
    sizes = (np.asarray(res.row_to_col) >= 0).sum(1)
    assert (sizes == [max_cardinality(mk) for mk in mask]).all()


def test_bad_options_raise_config_errors():
    w = jnp.ones((2, 3))
    with pytest.raises(ConfigError, match="eps_factor"):
        auction_match(w, eps_factor=1.5)
    with pytest.raises(ConfigError, match="eps_final"):
        auction_match(w, eps_final=0.0)
    with pytest.raises(ConfigError, match="max_iters"):
        auction_match(w, max_iters=-1)
    with pytest.raises(ConfigError, match="2-D"):
        auction_match(jnp.ones(3))


# Property test on one padded 6 x 6 shape (one compile): any sub-problem n x m <= 6 x 6 with
# weights in [-5, 5] and a random mask, embedded with padding masked out.
_padded = jax.jit(auction_match)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_property_padded_subproblems(n, m, data):
    w = data.draw(hnp.arrays(np.float32, (n, m), elements=st.floats(-5, 5, width=32)))
    mask = data.draw(hnp.arrays(np.bool_, (n, m)))
    wp = np.zeros((6, 6), np.float32)
    mp = np.zeros((6, 6), bool)
    wp[:n, :m], mp[:n, :m] = w, mask
    res = _padded(wp, mp)
    assert bool(res.converged)
    total = check_valid(res, wp, mp)[0]
    assert (np.asarray(res.row_to_col)[n:] == -1).all() and (np.asarray(res.col_to_row)[m:] == -1).all()
    opt = optimum(w, mask)
    assert opt * (1 - TOL) - 1e-4 <= total <= opt + 1e-4


def test_pure_jacobi_and_reset_stale_options_are_valid_and_within_tolerance():
    # bidders_per_round=None: every active bidder bids every round (the dense Jacobi path).
    solve = jax.jit(jax.vmap(functools.partial(auction_match, reset_stale=True,
                                               bidders_per_round=None)))
    for kind in KINDS:
        w, mask = batch(kind, 5, 12)
        res = solve(w, mask)
        assert np.asarray(res.converged).all(), kind
        assert_within_tol(check_valid(res, w, mask), optima(w, mask), kind)


def test_eps_size_makes_padding_inert():
    """A problem padded into a larger block with masked rows and columns, solved with its own
    ``eps_size``, gives exactly the unpadded result, rounds included (the dispatch simulator's
    shared size classes rely on it; rows <= columns in both, so neither is transposed, and
    more rows than ``bidders_per_round``). Without ``eps_size`` the larger block's smaller eps
    changes the rounds and, on ties, the matching: that is what makes the test bite."""
    solve = jax.jit(jax.vmap(auction_match))
    padded_solve = jax.jit(jax.vmap(lambda w, m, k: auction_match(w, m, eps_size=k)))
    B, (N, M) = 16, (32, 64)
    differs = 0
    for n, m in ((8, 8), (12, 12), (24, 48)):
        for kind in ("dispatch", "ties", "integer"):
            w, mask = np_instances(kind, B, n, m, seed=n * m)
            wp, mp = np.zeros((B, N, M), np.float32), np.zeros((B, N, M), bool)
            wp[:, :n, :m], mp[:, :n, :m] = w, mask
            own = solve(w, mask)
            pad = padded_solve(wp, mp, jnp.full((B,), min(n, m), jnp.int32))
            np.testing.assert_array_equal(np.asarray(pad.row_to_col)[:, :n],
                                          np.asarray(own.row_to_col), err_msg=kind)
            assert (np.asarray(pad.row_to_col)[:, n:] == -1).all()
            np.testing.assert_array_equal(pad.iterations, own.iterations, err_msg=kind)
            plain = solve(wp, mp)
            differs += int(np.any(np.asarray(plain.iterations) != np.asarray(own.iterations)))
    assert differs > 0
