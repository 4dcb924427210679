"""Bertsekas' auction algorithm for maximum-weight bipartite matching, with epsilon scaling.

References: D. P. Bertsekas, "The auction algorithm: a distributed relaxation method for the
assignment problem", Annals of Operations Research 14, 1988 (auction, Jacobi bidding, epsilon
scaling); D. P. Bertsekas and D. A. Castañon, "A forward/reverse auction algorithm for
asymmetric assignment problems", Computational Optimization and Applications 1, 1992
(reverse auction to fix the prices of objects left unassigned in rectangular problems).

Problem and duals. Maximise ``sum w_ij x_ij`` over matchings in the eligible graph (mask True,
``w > 0``). LP dual: row profits ``pi_i >= 0``, column prices ``p_j >= 0`` with
``pi_i + p_j >= w_ij``. We keep the *eps-complementary-slackness* invariant

    (I)  pi >= 0, p >= 0, pi_i + p_j >= w_ij - eps for every eligible (i, j),
         pi_i + p_j = w_ij for every matched pair,

and stop when every unmatched row has ``pi_i = 0`` and every unmatched column ``p_j = 0``. Then
for any matching M: ``w(M) <= sum_M (pi_i + p_j + eps) <= sum pi + sum p + |M| eps
= w(ours) + |M| eps``, i.e. the result is within ``min(n, m) * eps`` of the optimum.

Rectangular problems (design choice). Staying unmatched is worth 0 for a row (a private dummy
column of value 0 and constant price 0, never materialised: it is the floor 0 in the bid), so
rows never need more columns. But a plain *forward* auction with eps scaling is not optimal for
max-weight matching: a column that was bought in an earlier scaling phase keeps its positive
price even if nobody buys it in the last phase, which breaks "unmatched column => p_j = 0" (the
gap is then bounded by those stale prices, not by eps). Instead of padding to a square
``(n+m) x (n+m)`` problem (5x the work for 16x48 dispatch batches, and the dummy rows start
price wars on equal-valued dummy columns under Jacobi bidding), each scaling phase runs

1. *forward* rounds: unmatched rows with ``pi_i > 0`` bid for columns (Jacobi: all at once,
   every column takes its best bid) until none is left; then
2. *reverse* rounds (Bertsekas & Castañon): unmatched columns with ``p_j > 0`` bid for rows in
   the same way on the transposed problem (rows' "prices" are the profits ``pi``) until none is
   left. Reverse rounds never unmatch a row, so when they end the stopping rule holds.

A bid of row i: best value ``beta = max_j w_ij - p_j`` at ``j*``, second best ``omega`` (floored
at 0, the value of staying unmatched). If ``beta <= eps`` the row stays unmatched (``pi_i = 0``
keeps (I)); else it takes ``j*`` with profit ``pi_i = max(omega - eps, 0)`` and price
``p_j* = w_ij* - pi_i`` (a raise of at least eps). Reverse bids are the same with roles swapped.

Epsilon scaling: phase k uses ``eps_k = max(eps_start * scale * eps_factor**k, eps_final)``
with ``scale = max eligible weight``; prices carry over between phases, assignments restart and
``pi`` is reset to ``max(0, max_j w_ij - p_j)`` (which satisfies (I) with eps = 0).

Default final eps: ``tol * scale / k`` with ``k = min(n, m)``, so the gap ``<= tol * scale <=
tol * optimum`` (the optimum is at least the heaviest eligible edge): a guaranteed *relative*
gap of ``tol`` (1e-3). When all eligible weights are integers it is further capped at
``1 / (k + 1)`` so the gap is < 1 and the result is exactly optimal. Float32 caveat: prices
live on the scale of the weights, so ``eps_final`` must stay well above the float32 spacing of
``scale`` (about ``scale * 1.2e-7``), e.g. integer weights up to ~1e4 with k up to ~100.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.config import ConfigError
from fedrl.matching.types import MatchResult, check_problem, eligible_weights, result_from_rows

_NEG = -jnp.inf


def _bid_round(w, elig, prices, profits, own, owner, eps):
    """One Jacobi bidding round: every active bidder (unmatched, profit > 0) bids at once.

    ``w``/``elig`` are [bidders, objects]; ``prices`` [objects]; ``profits`` [bidders];
    ``own`` bidder -> object (-1 unmatched); ``owner`` object -> bidder (-1 unmatched).
    Best and second best by argmax + masked max (``lax.top_k`` is much slower on CPU in loops).
    """
    nb, no = w.shape
    values = jnp.where(elig, w - prices[None, :], _NEG)
    best = jnp.argmax(values, axis=1)
    is_best = jnp.arange(no)[None, :] == best[:, None]
    beta = jnp.max(values, axis=1)
    omega = jnp.max(jnp.where(is_best, _NEG, values), axis=1)
    active = (own < 0) & (profits > 0)
    bidding = active & (beta > eps)
    settling = active & ~bidding
    # The floor 0 is the value of staying unmatched (the private dummy object).
    new_profit = jnp.maximum(omega - eps, 0.0)
    w_best = jnp.take_along_axis(w, best[:, None], axis=1)[:, 0]
    offers = jnp.where(is_best & bidding[:, None], (w_best - new_profit)[:, None], _NEG)
    top = jnp.max(offers, axis=0)
    winner = jnp.argmax(offers, axis=0).astype(jnp.int32)
    has_bid = top > _NEG
    won = bidding & (winner[best] == jnp.arange(nb))
    displaced = (own >= 0) & has_bid[jnp.maximum(own, 0)]
    own = jnp.where(won, best.astype(jnp.int32), jnp.where(displaced, -1, own))
    owner = jnp.where(has_bid, winner, owner)
    prices = jnp.where(has_bid, top, prices)
    profits = jnp.where(won, new_profit, jnp.where(settling, 0.0, profits))
    return prices, profits, own, owner


def _auction_core(w, elig, eps_start, eps_factor, eps_final, tol, max_iters, reverse_each_phase):
    """Auction on a problem with n <= m (rows bid forward). Returns (row_to_col, iters, ok)."""
    n, m = w.shape
    k = n
    scale = jnp.max(jnp.where(elig, w, 0.0))
    if eps_final is None:
        e_rel = tol * scale / k
        integral = jnp.all(jnp.where(elig, w == jnp.round(w), True))
        eps_last = jnp.where(integral, jnp.minimum(e_rel, 1.0 / (k + 1)), e_rel)
    else:
        eps_last = jnp.asarray(eps_final, w.dtype)
    eps_first = jnp.maximum(eps_start * scale, eps_last)
    wt, eligt = w.T, elig.T

    def active_rows(s):
        return jnp.any((s["r2c"] < 0) & (s["pi"] > 0))

    def active_cols(s):
        return jnp.any((s["c2r"] < 0) & (s["p"] > 0))

    def forward(s):
        p, pi, r2c, c2r = _bid_round(w, elig, s["p"], s["pi"], s["r2c"], s["c2r"], s["eps"])
        return dict(s, p=p, pi=pi, r2c=r2c, c2r=c2r, it=s["it"] + 1)

    def reverse(s):
        pi, p, c2r, r2c = _bid_round(wt, eligt, s["pi"], s["p"], s["c2r"], s["r2c"], s["eps"])
        return dict(s, p=p, pi=pi, r2c=r2c, c2r=c2r, it=s["it"] + 1)

    def phase(s):
        eps = s["eps"]
        last = eps <= eps_last
        pi = jnp.maximum(jnp.max(jnp.where(elig, w - s["p"][None, :], _NEG), axis=1), 0.0)
        s = dict(s, pi=pi, r2c=jnp.full((n,), -1, jnp.int32), c2r=jnp.full((m,), -1, jnp.int32))
        s = jax.lax.while_loop(lambda s: active_rows(s) & (s["it"] < max_iters), forward, s)
        do_reverse = last | reverse_each_phase
        s = jax.lax.while_loop(
            lambda s: do_reverse & active_cols(s) & (s["it"] < max_iters), reverse, s)
        finished = last & ~active_rows(s) & ~active_cols(s)
        return dict(s, eps=jnp.maximum(eps * eps_factor, eps_last), done=finished)

    s = dict(p=jnp.zeros((m,), w.dtype), pi=jnp.zeros((n,), w.dtype),
             r2c=jnp.full((n,), -1, jnp.int32), c2r=jnp.full((m,), -1, jnp.int32),
             eps=eps_first.astype(w.dtype), it=jnp.zeros((), jnp.int32),
             done=jnp.zeros((), bool))
    s = jax.lax.while_loop(lambda s: ~s["done"] & (s["it"] < max_iters), phase, s)
    return s["r2c"], s["it"], s["done"]


def auction_match(weights, mask=None, *, eps_start: float = 0.25, eps_factor: float = 0.2,
                  eps_final: float | None = None, tol: float = 1e-3, max_iters: int = 100_000,
                  reverse_each_phase: bool = True,
                  allow_nonpositive: bool = False) -> MatchResult:
    """Max-weight matching by a Jacobi forward/reverse auction with epsilon scaling.

    Guarantee (when ``converged``): ``total >= optimum - min(n, m) * eps_final``. With the
    default ``eps_final=None`` that is ``total >= (1 - tol) * optimum``, and exact when all
    eligible weights are integers (see the module docstring for the proof and float32 caveat).

    Args:
      weights: f32[n, m]; rows are drivers, columns orders. Any shape incl. 0 and rectangular.
      mask: bool[n, m] or None; only pairs with mask True may match.
      eps_start: first eps as a fraction of the largest eligible weight.
      eps_factor: eps shrinks by this factor per scaling phase (0 < factor < 1).
      eps_final: absolute final eps (> 0); None = ``tol * max_w / min(n, m)``, capped at
        ``1 / (min(n, m) + 1)`` for integer weights.
      tol: relative optimality tolerance used when ``eps_final`` is None.
      max_iters: bound on bidding rounds (forward + reverse, all phases); when hit the result
        is a valid matching with ``converged=False`` and no optimality guarantee.
      reverse_each_phase: run reverse rounds in every phase (True) or only in the last one.
      allow_nonpositive: assignment semantics (max cardinality, then max weight); see
        :func:`fedrl.matching.types.eligible_weights`.

    The smaller side bids forward (the problem is transposed when n > m), which keeps the
    per-round work at O(n m) and the number of bidders small. Jit- and vmap-able; under vmap
    the loops run until the slowest problem of the batch is done.
    """
    if not 0.0 < eps_factor < 1.0:
        raise ConfigError(f"eps_factor must lie in (0, 1), got {eps_factor!r}")
    if not eps_start > 0.0:
        raise ConfigError(f"eps_start must be > 0, got {eps_start!r}")
    if eps_final is not None and not eps_final > 0.0:
        raise ConfigError(f"eps_final must be > 0 or None, got {eps_final!r}")
    if not tol > 0.0:
        raise ConfigError(f"tol must be > 0, got {tol!r}")
    if not (isinstance(max_iters, int) and max_iters >= 0):
        raise ConfigError(f"max_iters must be an int >= 0, got {max_iters!r}")
    weights, mask = check_problem(weights, mask)
    n, m = weights.shape
    if n == 0 or m == 0:
        return result_from_rows(weights, jnp.full((n,), -1, jnp.int32), m)
    w, elig = eligible_weights(weights, mask, allow_nonpositive)
    transpose = n > m
    if transpose:
        w, elig = w.T, elig.T
    r2c, iters, ok = _auction_core(w, elig, eps_start, eps_factor, eps_final, tol, max_iters,
                                   reverse_each_phase)
    if transpose:
        # r2c here maps original columns to original rows; invert it.
        target = jnp.where(r2c >= 0, r2c, n)
        r2c = jnp.full((n,), -1, jnp.int32).at[target].set(
            jnp.arange(m, dtype=jnp.int32), mode="drop")
    return result_from_rows(weights, r2c, m, iterations=iters, converged=ok)
