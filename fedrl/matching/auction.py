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
with ``scale = max eligible weight``. Prices carry over between phases; pairs that still satisfy
eps-CS for the new eps are kept (warm start) and every other row restarts unmatched with
``pi_i = max(0, max_j w_ij - p_j)`` (which satisfies (I) with eps = 0). [reconstructed]
Before the schedule, an *optimistic phase* runs at ``eps_final`` from zero prices for at most
``first_rounds`` forward rounds: problems with few conflicts (uniform weights) finish there in a
handful of rounds, where scaling would cost several phases; the others keep its prices (a valid
start for any larger eps) and continue with the schedule. ``reset_stale=True`` sets the prices
of columns left unmatched at a phase start to 0 (any p >= 0 is a valid start; kept pairs that
are no longer eps-CS are released until none is), which removes the need for reverse rounds but
throws away the price information of contested columns: faster on easy instances, several
times slower on dispatch-like ones, hence off by default.

Stopping. (a) *A posteriori certificate*, checked at the end of each phase's forward and reverse
parts: for any prices ``q >= 0``, ``D(q) = sum_i max(0, max_j w_ij - q_j) + sum_j q_j`` is an
upper bound on the optimum (weak LP duality); we take the smaller of ``D(p)`` and ``D(p with
unmatched columns at 0)``. Once no row is active and ``D - total <= tol * total`` the matching
is provably within the relative gap ``tol``; for integer weights (``exact_integer``) we stop
only when ``D - total < 0.5``, which proves exactness. (b) *eps-CS bound*: at the end of the
last phase (``eps = eps_final``) the stopping rule of (I) gives ``total >= optimum -
min(n, m) * eps_final``. The default ``eps_final = tol * scale / min(n, m)`` (capped at
``1 / (min(n, m) + 1)`` for integer weights) makes (b) imply the same relative gap ``tol``
(the optimum is at least the heaviest eligible edge) and exactness for integer weights.

Float32 caveat: prices live on the scale of the weights, so ``eps_final`` must stay well above
the float32 spacing of ``scale`` (about ``scale * 1.2e-7``), e.g. integer weights up to ~1e4
with ``min(n, m)`` up to ~100; the certificate is computed in the weights' dtype as well.

Speed notes. The smaller side bids forward. Best / second best use max + masked max and the
best index a min over an iota (argmax is a slow variadic reduce on XLA:CPU, ``lax.top_k``
slower still); competing bids are resolved by scatter-max over the bidders rather than a dense
bid matrix. The first forward round of a phase is dense (all released rows bid); later rounds
gather only the first ``bidders_per_round`` active bidders (4 by default), because after the
first round a phase has only a few active bidders and a dense round would spend O(n m) on
settled ones (any subset of bidders may bid, so this is still the auction: between
Gauss-Seidel and Jacobi). Under ``vmap`` every ``while_loop`` runs until the slowest problem of
the batch is done, and phases are synchronised across the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.config import ConfigError
from fedrl.matching.types import MatchResult, check_problem, eligible_weights, result_from_rows

_NEG = -jnp.inf


def _bids(values, prices, eps, candidates, ids, num_bidders):
    """Bids of the candidate bidders and the objects' choice among them (shared by both rounds).

    ``values`` [r, objects] are the candidates' weights minus prices (-inf where ineligible),
    ``ids`` [r] their bidder indices. Best and second best by max + masked max and the best
    index by a min over an iota (XLA's argmax is a variadic reduce, slow on CPU; ``lax.top_k``
    is slower still). Objects resolve competing bids with scatter-max/min over the bidders
    (O(bidders), not a dense bid matrix); ties between equal offers go to the lowest index.
    Returns (best, new_profit, settling, top, has_bid, winner, won).
    """
    no = values.shape[1]
    beta = jnp.max(values, axis=1)
    iota = jnp.arange(no, dtype=jnp.int32)
    best = jnp.min(jnp.where(values == beta[:, None], iota[None, :], no - 1), axis=1)
    omega = jnp.max(jnp.where(iota[None, :] == best[:, None], _NEG, values), axis=1)
    bidding = candidates & (beta > eps)
    settling = candidates & ~bidding
    # The floor 0 is the value of staying unmatched (the private dummy object).
    new_profit = jnp.maximum(omega - eps, 0.0)
    # Price offered for the best object: w - new_profit = beta + p_best - new_profit.
    offer = jnp.where(bidding, beta + prices[best] - new_profit, _NEG)
    top = jnp.full((no,), _NEG, values.dtype).at[best].max(offer)
    has_bid = top > _NEG
    claim = jnp.where(bidding & (offer >= top[best]), ids, num_bidders)
    winner = jnp.full((no,), num_bidders, jnp.int32).at[best].min(claim)
    won = bidding & (winner[best] == ids)
    return best, new_profit, settling, top, has_bid, winner, won


def _bid_round(wm, prices, profits, own, owner, eps):
    """One Jacobi bidding round: every active bidder (unmatched, profit > 0) bids at once.

    ``wm`` is [bidders, objects] with ineligible pairs at -inf; ``prices`` [objects];
    ``profits`` [bidders]; ``own`` bidder -> object (-1 unmatched); ``owner`` object -> bidder
    (-1 unmatched).
    """
    nb, _ = wm.shape
    active = (own < 0) & (profits > 0)
    rows = jnp.arange(nb, dtype=jnp.int32)
    best, new_profit, settling, top, has_bid, winner, won = _bids(
        wm - prices[None, :], prices, eps, active, rows, nb)
    displaced = (own >= 0) & has_bid[jnp.maximum(own, 0)]
    own = jnp.where(won, best, jnp.where(displaced, -1, own))
    owner = jnp.where(has_bid, winner, owner)
    prices = jnp.where(has_bid, top, prices)
    profits = jnp.where(won, new_profit, jnp.where(settling, 0.0, profits))
    return prices, profits, own, owner


def _bid_round_compact(wm, prices, profits, own, owner, eps, width):
    """Like :func:`_bid_round`, but only the first ``width`` active bidders bid this round.

    Any subset of the unmatched bidders may bid in an auction round (the invariant and the
    termination argument hold bidder by bidder), so this is still Bertsekas' auction, between
    Gauss-Seidel (width 1) and Jacobi (width = all). Their weight rows are gathered first, so a
    round costs O(width * objects) instead of O(bidders * objects): late rounds of a phase have
    only a few active bidders, and the dense round wastes most of its work on settled ones.
    """
    nb, _ = wm.shape
    active = (own < 0) & (profits > 0)
    idx = jnp.nonzero(active, size=width, fill_value=nb)[0].astype(jnp.int32)
    valid = idx < nb
    best, new_profit, settling, top, has_bid, winner, won = _bids(
        wm[jnp.minimum(idx, nb - 1)] - prices[None, :], prices, eps, valid, idx, nb)
    displaced = (own >= 0) & has_bid[jnp.maximum(own, 0)]
    own = jnp.where(displaced, -1, own)
    own = own.at[jnp.where(won, idx, nb)].set(best, mode="drop")
    owner = jnp.where(has_bid, winner, owner)
    prices = jnp.where(has_bid, top, prices)
    profits = profits.at[jnp.where(won | settling, idx, nb)].set(
        jnp.where(won, new_profit, 0.0), mode="drop")
    return prices, profits, own, owner


def _dual_bound(wm, p, c2r):
    """An upper bound on the optimum from column prices (LP weak duality).

    For any prices p >= 0, ``pi_i = max(0, max_j w_ij - p_j)`` is dual feasible, so
    ``sum pi + sum p >= optimum``. We evaluate it at p and at p with the prices of unmatched
    columns set to 0 (stale prices from earlier scaling phases) and keep the smaller bound.
    """
    def bound(q):
        return jnp.sum(jnp.maximum(jnp.max(wm - q[None, :], axis=1), 0.0)) + jnp.sum(q)
    return jnp.minimum(bound(p), bound(jnp.where(c2r >= 0, p, 0.0)))


def _auction_core(w, elig, eps_start, eps_factor, eps_final, tol, max_iters, reverse_each_phase,
                  warm_start, exact_integer, reset_stale, first_rounds, width):
    """Auction on a problem with n <= m (rows bid forward). Returns (row_to_col, iters, ok)."""
    n, m = w.shape
    k = n
    scale = jnp.max(jnp.where(elig, w, 0.0))
    integral = jnp.all(jnp.where(elig, w == jnp.round(w), True)) & exact_integer
    if eps_final is None:
        e_rel = tol * scale / k
        eps_last = jnp.where(integral, jnp.minimum(e_rel, 1.0 / (k + 1)), e_rel)
    else:
        eps_last = jnp.asarray(eps_final, w.dtype)
    eps_first = jnp.maximum(eps_start * scale, eps_last)
    # Ineligible pairs at -inf once, so a round needs no select for the mask.
    wm = jnp.where(elig, w, _NEG)
    wmt = wm.T

    def active_rows(s):
        return jnp.any((s["r2c"] < 0) & (s["pi"] > 0))

    def active_cols(s):
        return jnp.any((s["c2r"] < 0) & (s["p"] > 0))

    def certified(s):
        # A posteriori: optimum - total <= dual bound - total. With integer weights a gap
        # below 1 proves exactness (0.5 leaves room for float rounding in the bound).
        held = jnp.take_along_axis(w, jnp.maximum(s["r2c"], 0)[:, None], axis=1)[:, 0]
        total = jnp.sum(jnp.where(s["r2c"] >= 0, held, 0.0))
        gap = _dual_bound(wm, s["p"], s["c2r"]) - total
        return ~active_rows(s) & jnp.where(integral, gap < 0.5, gap <= tol * total)

    def forward(s, dense=False):
        if dense or width is None or width >= n:
            p, pi, r2c, c2r = _bid_round(wm, s["p"], s["pi"], s["r2c"], s["c2r"], s["eps"])
        else:
            p, pi, r2c, c2r = _bid_round_compact(wm, s["p"], s["pi"], s["r2c"], s["c2r"],
                                                 s["eps"], width)
        return dict(s, p=p, pi=pi, r2c=r2c, c2r=c2r, it=s["it"] + 1)

    def reverse(s):
        if width is None or width >= m:
            pi, p, c2r, r2c = _bid_round(wmt, s["pi"], s["p"], s["c2r"], s["r2c"], s["eps"])
        else:
            pi, p, c2r, r2c = _bid_round_compact(wmt, s["pi"], s["p"], s["c2r"], s["r2c"],
                                                 s["eps"], width)
        return dict(s, p=p, pi=pi, r2c=r2c, c2r=c2r, it=s["it"] + 1)

    def phase(s):
        eps = s["eps"]
        last = eps <= eps_last
        # Warm start: keep the pairs that already satisfy eps-CS for the new eps (then
        # pi_i = w_ij - p_j is unchanged); every other row restarts unmatched with its exact
        # best profit, which satisfies (I) with eps = 0. With reset_stale, the prices of
        # unmatched columns are first set to 0 (any p >= 0 is a valid start), which may release
        # more pairs, so repeat until no pair is released.
        def release(c):
            r2c, c2r, p, _ = c
            if reset_stale:
                p = jnp.where(c2r >= 0, p, 0.0)
            values = wm - p[None, :]
            best = jnp.max(values, axis=1)
            held = jnp.take_along_axis(values, jnp.maximum(r2c, 0)[:, None], axis=1)[:, 0]
            keep = (r2c >= 0) & (held >= best - eps) & warm_start
            c2r = jnp.where((c2r >= 0) & keep[jnp.maximum(c2r, 0)], c2r, -1)
            changed = jnp.any((r2c >= 0) & ~keep)
            return jnp.where(keep, r2c, -1), c2r, p, changed

        r2c, c2r, p, _ = jax.lax.while_loop(
            lambda c: c[3], release, (s["r2c"], s["c2r"], s["p"], jnp.ones((), bool)))
        values = wm - p[None, :]
        best = jnp.max(values, axis=1)
        held = jnp.take_along_axis(values, jnp.maximum(r2c, 0)[:, None], axis=1)[:, 0]
        pi = jnp.where(r2c >= 0, held, jnp.maximum(best, 0.0))
        s = dict(s, pi=pi, r2c=r2c, c2r=c2r, p=p)
        # The optimistic first phase (eps = eps_final from zero prices) gets first_rounds
        # forward rounds; easy problems (few conflicts) finish there, the others keep the
        # prices (valid for any larger eps) and continue with the scaling schedule.
        limit = jnp.where(s["optimistic"], s["it"] + first_rounds, max_iters)
        limit = jnp.minimum(limit, max_iters)
        # The first round of a phase has many bidders (all released rows): one dense round.
        s = jax.lax.cond(active_rows(s) & (s["it"] < limit),
                         lambda s: forward(s, dense=True), lambda s: s, s)
        s = jax.lax.while_loop(lambda s: active_rows(s) & (s["it"] < limit), forward, s)
        cut = active_rows(s)
        done = certified(s)
        do_reverse = ~done & ~cut & (last | reverse_each_phase)
        s = jax.lax.while_loop(
            lambda s: do_reverse & active_cols(s) & (s["it"] < max_iters), reverse, s)
        done = done | certified(s) | (last & ~active_rows(s) & ~active_cols(s))
        restart = s["optimistic"] & ~done
        eps_next = jnp.where(restart, eps_first, jnp.maximum(eps * eps_factor, eps_last))
        return dict(s, eps=eps_next, done=done, optimistic=jnp.zeros((), bool))

    s = dict(p=jnp.zeros((m,), w.dtype), pi=jnp.zeros((n,), w.dtype),
             r2c=jnp.full((n,), -1, jnp.int32), c2r=jnp.full((m,), -1, jnp.int32),
             eps=jnp.where(first_rounds > 0, eps_last, eps_first).astype(w.dtype),
             it=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
             optimistic=jnp.asarray(first_rounds > 0))
    s = jax.lax.while_loop(lambda s: ~s["done"] & (s["it"] < max_iters), phase, s)
    return s["r2c"], s["it"], s["done"]


def auction_match(weights, mask=None, *, eps_start: float = 0.02, eps_factor: float = 0.1,
                  eps_final: float | None = None, tol: float = 1e-3, max_iters: int = 100_000,
                  reverse_each_phase: bool = True, warm_start: bool = True,
                  exact_integer: bool = True, reset_stale: bool = False,
                  first_rounds: int = 16, bidders_per_round: int | None = 4,
                  allow_nonpositive: bool = False) -> MatchResult:
    """Max-weight matching by a Jacobi forward/reverse auction with epsilon scaling.

    Guarantee (when ``converged``): ``total >= (1 - tol) * optimum`` (relative gap at most
    ``tol``, by the duality certificate or by the eps-CS bound, see the module docstring), and
    ``total == optimum`` when all eligible weights are integers and ``exact_integer``. With an
    explicit ``eps_final`` the eps-CS bound reads ``total >= optimum - min(n, m) * eps_final``.

    Args:
      weights: f32[n, m]; rows are drivers, columns orders. Any shape incl. 0 and rectangular.
      mask: bool[n, m] or None; only pairs with mask True may match.
      eps_start: first eps as a fraction of the largest eligible weight.
      eps_factor: eps shrinks by this factor per scaling phase (0 < factor < 1).
      eps_final: absolute final eps (> 0); None = ``tol * max_w / min(n, m)``, capped at
        ``1 / (min(n, m) + 1)`` for integer weights.
      tol: relative optimality tolerance (> 0) for the certificate and the default eps_final.
      max_iters: bound on bidding rounds (forward + reverse, all phases); when hit the result
        is a valid matching with ``converged=False`` and no optimality guarantee.
      reverse_each_phase: run reverse rounds in every phase (True) or only in the last one.
      warm_start: keep eps-CS pairs from one phase to the next (False: restart all rows).
      exact_integer: when all eligible weights are integers, run until optimality is proved.
      reset_stale: zero the prices of unmatched columns at each phase start (see above).
      first_rounds: forward-round budget of the optimistic phase at eps_final (0: off).
      bidders_per_round: how many active bidders bid per round after the first (dense) round
        of a phase; their rows are gathered so a round costs O(width * m). None = all (pure
        Jacobi). Any subset may bid in an auction round, so the guarantee is unchanged.
      allow_nonpositive: assignment semantics (max cardinality, then max weight); see
        :func:`fedrl.matching.types.eligible_weights`.

    The smaller side bids forward (the problem is transposed when n > m). Jit- and vmap-able;
    ``iterations`` counts bidding rounds (forward + reverse).
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
    if not (isinstance(first_rounds, int) and first_rounds >= 0):
        raise ConfigError(f"first_rounds must be an int >= 0, got {first_rounds!r}")
    if bidders_per_round is not None and not (
            isinstance(bidders_per_round, int) and bidders_per_round >= 1):
        raise ConfigError(f"bidders_per_round must be an int >= 1 or None, "
                          f"got {bidders_per_round!r}")
    weights, mask = check_problem(weights, mask)
    n, m = weights.shape
    if n == 0 or m == 0:
        return result_from_rows(weights, jnp.full((n,), -1, jnp.int32), m)
    w, elig = eligible_weights(weights, mask, allow_nonpositive)
    transpose = n > m
    if transpose:
        w, elig = w.T, elig.T
    r2c, iters, ok = _auction_core(w, elig, eps_start, eps_factor, eps_final, tol, max_iters,
                                   reverse_each_phase, warm_start, exact_integer,
                                   reset_stale, first_rounds, bidders_per_round)
    if transpose:
        # r2c here maps original columns to original rows; invert it.
        target = jnp.where(r2c >= 0, r2c, n)
        r2c = jnp.full((n,), -1, jnp.int32).at[target].set(
            jnp.arange(m, dtype=jnp.int32), mode="drop")
    return result_from_rows(weights, r2c, m, iterations=iters, converged=ok)


def auction_match_batch(weights, mask=None, *, chunk: int = 32, first_iters: int | None = None,
                        **options) -> MatchResult:
    """:func:`auction_match` over a leading batch axis, with the hard problems re-solved apart.

    Under a plain ``vmap`` every bidding round and every scaling phase runs until the slowest
    problem of the batch is done, so a batch costs about (its hardest problem's rounds) x (the
    cost of a round over *all* problems). On dispatch-shaped batches half the problems finish in
    the optimistic first phase (16 rounds) while a few need 80-150 rounds [measured: 256 x 16x48
    ``dispatch`` instances, 127 of them beyond 16 rounds]. So [reconstructed]:

    1. all problems run with ``max_iters = first_iters`` (default: the optimistic phase's
       ``first_rounds``, 16);
    2. the unconverged ones are gathered, ``chunk`` at a time, and solved from scratch with
       the full ``max_iters`` under ``vmap`` (a ``while_loop`` over chunks).

    A problem that converges in step 1 ran exactly the rounds it runs alone, and step 2 is the
    plain auction, so with the default ``first_iters`` each problem's result equals
    ``auction_match`` on it alone (tested), with the same guarantee. Other ``first_iters`` may
    stop a problem at a certificate met mid-phase (a different matching within the same
    tolerance). ``iterations`` reports the rounds of the run that produced the result.

    Args:
      weights: f32[B, n, m]; mask: bool[B, n, m] or None.
      chunk: problems per re-solve (>= 1); smaller chunks make the hard tail cheaper per round.
        Batches of at most ``2 * chunk`` problems run the plain ``vmap``.
      first_iters: round budget of step 1 (None: ``first_rounds``; 0 turns staging off).
      options: :func:`auction_match` options (``max_iters`` bounds step 2).
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 3:
        raise ConfigError(f"weights must have shape [batch, n, m], got {weights.shape}")
    if mask is None:
        mask = jnp.ones(weights.shape, bool)
    mask = jnp.asarray(mask)
    if mask.shape != weights.shape:
        raise ConfigError(f"mask shape {mask.shape} does not match weights shape {weights.shape}")
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ConfigError(f"chunk must be an int >= 1, got {chunk!r}")
    max_iters = options.pop("max_iters", 100_000)
    k1 = options.get("first_rounds", 16) if first_iters is None else first_iters
    if not (isinstance(k1, int) and k1 >= 0):
        raise ConfigError(f"first_iters must be an int >= 0 or None, got {first_iters!r}")
    B = weights.shape[0]

    def solve(budget):
        return jax.vmap(lambda w, m: auction_match(w, m, max_iters=budget, **options))

    if k1 == 0 or k1 >= max_iters or B <= 2 * chunk:
        # small batches: the re-solve would be most of the batch again (measured on 64 x
        # 64x128 dispatch instances: 1.53 vs 1.29 ms/problem for the plain vmap)
        return solve(max_iters)(weights, mask)
    first = solve(k1)(weights, mask)

    def body(carry):
        res, todo = carry
        idx = jnp.nonzero(todo, size=chunk, fill_value=B)[0]
        ok = idx < B
        src = jnp.minimum(idx, B - 1)
        part = solve(max_iters)(weights[src], mask[src] & ok[:, None, None])
        tgt = jnp.where(ok, idx, B)
        res = jax.tree.map(lambda a, b: a.at[tgt].set(b, mode="drop"), res, part)
        return res, todo.at[tgt].set(False, mode="drop")

    res, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (first, ~first.converged))
    return res
