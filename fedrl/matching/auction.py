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
slower still); competing bids are resolved by a max over the one-hot bid matrix when it is
small (compacted rounds, dispatch-sized problems) and by scatter-max over the bidders above.
The first forward round of a phase is dense (all released rows bid); later rounds gather only
the first ``bidders_per_round`` active bidders (4 by default), because after the first round a
phase has only a few active bidders and a dense round would spend O(n m) on settled ones (any
subset of bidders may bid, so this is still the auction: between Gauss-Seidel and Jacobi).
Under ``vmap`` every ``while_loop`` runs until the slowest problem of the batch is done, and
phases are synchronised across the batch.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedrl.config import ConfigError
from fedrl.matching.types import MatchResult, check_problem, eligible_weights, result_from_rows
from fedrl.ops import first_true

_NEG = -jnp.inf
_ONE_HOT_MAX = 8192  # bidders x objects up to which bids are resolved densely


def _bids(values, prices, eps, candidates, ids, num_bidders):
    """Bids of the candidate bidders and the objects' choice among them (shared by both rounds).

    ``values`` [r, objects] are the candidates' weights minus prices (-inf where ineligible),
    ``ids`` [r] their bidder indices. Best and second best by max + masked max and the best
    index by a min over an iota (XLA's argmax is a variadic reduce, slow on CPU; ``lax.top_k``
    is slower still). Objects resolve competing bids by max/min over the one-hot bid matrix
    when it has at most ``_ONE_HOT_MAX`` entries, else by scatter-max/min over the bidders
    (O(bidders)); both give the same result; ties between equal offers go to the lowest index.
    Returns (best, new_profit, settling, top, has_bid, winner, won).
    """
    no = values.shape[1]
    beta = jnp.max(values, axis=1)
    iota = jnp.arange(no, dtype=jnp.int32)
    # (the min runs in float32: XLA:CPU rewrites an int32 min over > 32 entries into a slow
    # reduce_window, measured)
    best = jnp.min(jnp.where(values == beta[:, None], iota.astype(jnp.float32)[None, :],
                             no - 1), axis=1).astype(jnp.int32)
    omega = jnp.max(jnp.where(iota[None, :] == best[:, None], _NEG, values), axis=1)
    bidding = candidates & (beta > eps)
    settling = candidates & ~bidding
    # The floor 0 is the value of staying unmatched (the private dummy object).
    new_profit = jnp.maximum(omega - eps, 0.0)
    # Price offered for the best object: w - new_profit = beta + p_best - new_profit.
    offer = jnp.where(bidding, beta + prices[best] - new_profit, _NEG)
    # Each object keeps its best offer: a max over the one-hot bid matrix [r, objects] when it
    # is small (compacted rounds, dispatch-sized problems: dense reductions beat XLA:CPU's
    # scatters, which run element by element), else a scatter-max (O(r), large dense rounds).
    one_hot = values.shape[0] * no <= _ONE_HOT_MAX
    if one_hot:
        bid_on = (best[:, None] == iota[None, :]) & bidding[:, None]
        top = jnp.max(jnp.where(bid_on, offer[:, None], _NEG), axis=0)
    else:
        top = jnp.full((no,), _NEG, values.dtype).at[best].max(offer)
    has_bid = top > _NEG
    claim = jnp.where(bidding & (offer >= top[best]), ids, num_bidders)
    if one_hot:
        winner = jnp.min(jnp.where(bid_on, claim[:, None], num_bidders), axis=0)
    else:
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
    idx = first_true(active, width)  # nb where there are fewer than width
    valid = idx < nb
    best, new_profit, settling, top, has_bid, winner, won = _bids(
        wm[jnp.minimum(idx, nb - 1)] - prices[None, :], prices, eps, valid, idx, nb)
    displaced = (own >= 0) & has_bid[jnp.maximum(own, 0)]
    # write back to the bidders' slots through a one-hot [width, bidders] (indices distinct)
    at = idx[:, None] == jnp.arange(nb, dtype=jnp.int32)[None, :]
    wins = jnp.any(at & won[:, None], axis=0)
    own = jnp.where(wins, jnp.sum(jnp.where(at & won[:, None], best[:, None], 0), axis=0),
                    jnp.where(displaced, -1, own))
    owner = jnp.where(has_bid, winner, owner)
    prices = jnp.where(has_bid, top, prices)
    new_profits = jnp.sum(jnp.where(at & won[:, None], new_profit[:, None], 0.0), axis=0)
    profits = jnp.where(wins, new_profits,
                        jnp.where(jnp.any(at & settling[:, None], axis=0), 0.0, profits))
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


class _Options(NamedTuple):
    """Static options of one auction run (see :func:`auction_match`)."""
    eps_start: float
    eps_factor: float
    eps_final: float | None
    tol: float
    reverse_each_phase: bool
    warm_start: bool
    exact_integer: bool
    reset_stale: bool
    first_rounds: int
    bidders_per_round: int | None


_NO_LIMIT = jnp.iinfo(jnp.int32).max


def _constants(w, elig, o: _Options):
    """Per-problem constants of the bidding: (integral, masked weights)."""
    integral = jnp.all(jnp.where(elig, w == jnp.round(w), True)) & o.exact_integer
    # Ineligible pairs at -inf once, so a round needs no select for the mask.
    return integral, jnp.where(elig, w, _NEG)


def _eps_range(w, elig, o: _Options, size=None):
    """(eps_last, eps_first) of the scaling schedule; ``size``: the problem size the default
    eps_final is relative to (None: the block's ``min(n, m)``, rows after ``_prepare``)."""
    k = w.shape[0] if size is None else jnp.maximum(size, 1)
    scale = jnp.max(jnp.where(elig, w, 0.0))
    integral, _ = _constants(w, elig, o)
    if o.eps_final is None:
        e_rel = o.tol * scale / k
        eps_last = jnp.where(integral, jnp.minimum(e_rel, 1.0 / (k + 1)), e_rel)
    else:
        eps_last = jnp.asarray(o.eps_final, w.dtype)
    eps_first = jnp.maximum(o.eps_start * scale, eps_last)
    return eps_last, eps_first


def _initial_state(w, elig, o: _Options, size=None):
    """Zero prices, nothing matched, first phase: the optimistic one (or the schedule's). The
    state carries the problem's eps range (``size``: see :func:`_eps_range`), so that the
    bidding needs no size of its own."""
    n, m = w.shape
    eps_last, eps_first = _eps_range(w, elig, o, size)
    return dict(p=jnp.zeros((m,), w.dtype), pi=jnp.zeros((n,), w.dtype),
                eps_last=eps_last.astype(w.dtype), eps_first=eps_first.astype(w.dtype),
                r2c=jnp.full((n,), -1, jnp.int32), c2r=jnp.full((m,), -1, jnp.int32),
                eps=jnp.where(o.first_rounds > 0, eps_last, eps_first).astype(w.dtype),
                it=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
                optimistic=jnp.asarray(o.first_rounds > 0),
                resume=jnp.zeros((), bool), in_reverse=jnp.zeros((), bool),
                limit=jnp.asarray(_NO_LIMIT, jnp.int32))


def _auction_core(w, elig, s, max_iters, o: _Options):
    """Run the auction from state ``s`` (n <= m: rows bid forward) until it is done or has
    made ``max_iters`` bidding rounds in all (``s["it"]`` counts them; may be traced).

    Resumable: when the budget stops a phase in its forward or reverse part, the state says so
    (``resume``) and a later call with a larger budget continues that phase exactly where it
    stopped, so a run split into several calls makes the same rounds as one call (what
    :func:`auction_match_batch` relies on). Such a stop reports ``done=False`` even if a
    certificate happens to hold at that moment.
    """
    n, m = w.shape
    integral, wm = _constants(w, elig, o)
    eps_last, eps_first = s["eps_last"], s["eps_first"]
    wmt = wm.T
    width = o.bidders_per_round

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
        return ~active_rows(s) & jnp.where(integral, gap < 0.5, gap <= o.tol * total)

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

    def start_phase(s):
        # Warm start: keep the pairs that already satisfy eps-CS for the new eps (then
        # pi_i = w_ij - p_j is unchanged); every other row restarts unmatched with its exact
        # best profit, which satisfies (I) with eps = 0. With reset_stale, the prices of
        # unmatched columns are first set to 0 (any p >= 0 is a valid start), which may release
        # more pairs, so repeat until no pair is released.
        eps = s["eps"]

        def release(c):
            r2c, c2r, p, _ = c
            if o.reset_stale:
                p = jnp.where(c2r >= 0, p, 0.0)
            values = wm - p[None, :]
            best = jnp.max(values, axis=1)
            held = jnp.take_along_axis(values, jnp.maximum(r2c, 0)[:, None], axis=1)[:, 0]
            keep = (r2c >= 0) & (held >= best - eps) & o.warm_start
            c2r = jnp.where((c2r >= 0) & keep[jnp.maximum(c2r, 0)], c2r, -1)
            changed = jnp.any((r2c >= 0) & ~keep)
            return jnp.where(keep, r2c, -1), c2r, p, changed

        r2c, c2r, p, _ = jax.lax.while_loop(
            lambda c: c[3], release, (s["r2c"], s["c2r"], s["p"], jnp.ones((), bool)))
        values = wm - p[None, :]
        best = jnp.max(values, axis=1)
        held = jnp.take_along_axis(values, jnp.maximum(r2c, 0)[:, None], axis=1)[:, 0]
        pi = jnp.where(r2c >= 0, held, jnp.maximum(best, 0.0))
        # The optimistic first phase (eps = eps_final from zero prices) gets first_rounds
        # forward rounds; easy problems (few conflicts) finish there, the others keep the
        # prices (valid for any larger eps) and continue with the scaling schedule.
        limit = jnp.where(s["optimistic"], s["it"] + o.first_rounds, _NO_LIMIT)
        s = dict(s, pi=pi, r2c=r2c, c2r=c2r, p=p, limit=limit.astype(jnp.int32))
        # The first round of a phase has many bidders (all released rows): one dense round.
        return jax.lax.cond(active_rows(s) & (s["it"] < jnp.minimum(limit, max_iters)),
                            lambda s: forward(s, dense=True), lambda s: s, s)

    def phase(s):
        eps = s["eps"]
        last = eps <= eps_last
        # A phase stopped by the budget resumes where it stopped (no release, no dense round).
        s = jax.lax.cond(s["resume"], lambda s: s, start_phase, s)
        limit = jnp.minimum(s["limit"], max_iters)
        s = jax.lax.while_loop(lambda s: active_rows(s) & (s["it"] < limit), forward, s)
        cut = active_rows(s)
        cut_by_budget = cut & (s["it"] < s["limit"])
        done = certified(s) & ~s["in_reverse"]  # False when the reverse part began
        # A phase stopped in its reverse part goes on with it (the decision to run reverse
        # rounds was taken when its forward part ended, not at the resumption).
        do_reverse = s["in_reverse"] | (~done & ~cut & (last | o.reverse_each_phase))
        s = jax.lax.while_loop(
            lambda s: do_reverse & active_cols(s) & (s["it"] < max_iters), reverse, s)
        stopped_in_reverse = do_reverse & active_cols(s)
        interrupted = cut_by_budget | stopped_in_reverse
        done = (done | certified(s) | (last & ~active_rows(s) & ~active_cols(s))) & ~interrupted
        restart = s["optimistic"] & ~done
        eps_next = jnp.where(restart, eps_first, jnp.maximum(eps * o.eps_factor, eps_last))
        return dict(s, eps=jnp.where(interrupted, eps, eps_next), done=done,
                    optimistic=s["optimistic"] & interrupted, resume=interrupted,
                    in_reverse=stopped_in_reverse)

    return jax.lax.while_loop(lambda s: ~s["done"] & (s["it"] < max_iters), phase, s)


def _prepare(weights, mask, allow_nonpositive: bool):
    """(w, eligible) with the smaller side as rows (transposed when n > m)."""
    w, elig = eligible_weights(weights, mask, allow_nonpositive)
    if w.shape[0] > w.shape[1]:
        w, elig = w.T, elig.T
    return w, elig


def _result(weights, s) -> MatchResult:
    """MatchResult in the original orientation from a final auction state."""
    n, m = weights.shape
    r2c = s["r2c"]
    if n > m:
        # r2c here maps original columns to original rows; invert it.
        target = jnp.where(r2c >= 0, r2c, n)
        r2c = jnp.full((n,), -1, jnp.int32).at[target].set(
            jnp.arange(m, dtype=jnp.int32), mode="drop")
    return result_from_rows(weights, r2c, m, iterations=s["it"], converged=s["done"])


def _options(max_iters, *, eps_start, eps_factor, eps_final, tol, reverse_each_phase,
             warm_start, exact_integer, reset_stale, first_rounds, bidders_per_round) -> _Options:
    """Check the options of :func:`auction_match` (ConfigError naming the bad one) and pack
    the static ones."""
    if not 0.0 < eps_factor < 1.0:
        raise ConfigError(f"eps_factor must lie in (0, 1), got {eps_factor!r}")
    if not eps_start > 0.0:
        raise ConfigError(f"eps_start must be > 0, got {eps_start!r}")
    if eps_final is not None and not eps_final > 0.0:
        raise ConfigError(f"eps_final must be > 0 or None, got {eps_final!r}")
    if not tol > 0.0:
        raise ConfigError(f"tol must be > 0, got {tol!r}")
    if not (isinstance(max_iters, int) and 0 <= max_iters <= _NO_LIMIT):
        raise ConfigError(f"max_iters must be an int in [0, 2**31 - 1], got {max_iters!r}")
    if not (isinstance(first_rounds, int) and first_rounds >= 0):
        raise ConfigError(f"first_rounds must be an int >= 0, got {first_rounds!r}")
    if bidders_per_round is not None and not (
            isinstance(bidders_per_round, int) and bidders_per_round >= 1):
        raise ConfigError(f"bidders_per_round must be an int >= 1 or None, "
                          f"got {bidders_per_round!r}")
    return _Options(eps_start, eps_factor, eps_final, tol, reverse_each_phase, warm_start,
                    exact_integer, reset_stale, first_rounds, bidders_per_round)


# Default bidders per round of the compacted bidding core (module docstring); dispatch's
# size-class rule for vmapped platforms depends on it (fedrl.dispatch.types.SimConfig).
DEFAULT_BIDDERS_PER_ROUND = 4


def auction_match(weights, mask=None, *, eps_start: float = 0.02, eps_factor: float = 0.1,
                  eps_final: float | None = None, tol: float = 1e-3, max_iters: int = 100_000,
                  reverse_each_phase: bool = True, warm_start: bool = True,
                  exact_integer: bool = True, reset_stale: bool = False,
                  first_rounds: int = 16,
                  bidders_per_round: int | None = DEFAULT_BIDDERS_PER_ROUND,
                  allow_nonpositive: bool = False, eps_size=None) -> MatchResult:
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
      eps_size: the ``min(n, m)`` that the default ``eps_final`` is relative to (None: this
        block's); may be traced. A problem padded into a larger block with masked rows and
        columns, given its own ``min(n, m)`` here, is solved exactly as unpadded (the padding
        never bids, is never bid for and adds nothing to the dual bound), provided both
        blocks have more bidding rows than ``bidders_per_round`` (the round kind is chosen
        from the static shape). The dispatch simulator relies on it when platforms share a
        size class (``fedrl.dispatch.dispatchers.solve_graph``).

    The smaller side bids forward (the problem is transposed when n > m). Jit- and vmap-able;
    ``iterations`` counts bidding rounds (forward + reverse).
    """
    opts = _options(max_iters, eps_start=eps_start, eps_factor=eps_factor, eps_final=eps_final,
                    tol=tol, reverse_each_phase=reverse_each_phase, warm_start=warm_start,
                    exact_integer=exact_integer, reset_stale=reset_stale,
                    first_rounds=first_rounds, bidders_per_round=bidders_per_round)
    weights, mask = check_problem(weights, mask)
    n, m = weights.shape
    if n == 0 or m == 0:
        return result_from_rows(weights, jnp.full((n,), -1, jnp.int32), m)
    w, elig = _prepare(weights, mask, allow_nonpositive)
    s = _auction_core(w, elig, _initial_state(w, elig, opts, eps_size), max_iters, opts)
    return _result(weights, s)


def auction_match_batch(weights, mask=None, *, chunk: int = 24, first_iters: int | None = None,
                        growth: int | None = None, min_staged: int = 128,
                        allow_nonpositive: bool = False,
                        **options) -> MatchResult:
    """:func:`auction_match` over a leading batch axis, with the hard problems finished apart.

    Under a plain ``vmap`` every bidding round and every scaling phase runs until the slowest
    problem of the batch is done, so a batch costs about (its hardest problem's rounds) x (the
    cost of a round over *all* problems). On dispatch-shaped batches half the problems finish in
    the optimistic first phase (16 rounds) while the rest need 20-90 [measured: 256 x 16x48
    ``dispatch`` instances, 127 of them beyond 16 rounds]. So [reconstructed]:

    1. all problems run for ``first_iters`` bidding rounds (default: the optimistic phase's
       ``first_rounds``, 16);
    2. the problems not yet done are gathered ``chunk`` at a time and *resumed* from their
       state under ``vmap`` with the full ``max_iters`` (a ``while_loop`` over chunks). With
       ``growth`` set, this runs in stages whose budgets grow by that factor (32, 64, ...),
       so that a chunk costs its slowest member's rounds within the stage only; each stage
       costs a phase-synchronisation overhead, and on 256 x 16x48 dispatch instances one
       stage measured fastest.

    The auction state is resumable (a phase stopped by the budget continues where it stopped),
    so each problem makes exactly the rounds it makes alone: the result equals
    :func:`auction_match` on each problem (tested for several ``first_iters`` / ``growth`` /
    ``chunk``),
    with the same guarantee, and no round is made twice. ``iterations`` counts each
    problem's rounds.

    Args:
      weights: f32[B, n, m]; mask: bool[B, n, m] or None.
      chunk: problems per resumed group (>= 1).
      min_staged: batches smaller than this run the plain ``vmap`` (measured on 64 x 64x128
        dispatch instances: the plain vmap was faster there).
      first_iters: round budget of step 1 (None: ``first_rounds``; 0 turns staging off).
      growth: budget factor between stages (int >= 2); None (default): one stage that resumes
        every unfinished problem with the full ``max_iters`` (measured fastest on 256 x 16x48
        dispatch instances: each stage costs a phase-synchronisation overhead).
      allow_nonpositive, options: as in :func:`auction_match` (``max_iters`` bounds the total).
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 3:
        raise ConfigError(f"weights must have shape [batch, n, m], got {weights.shape}")
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        weights = weights.astype(jnp.float32)  # as auction_match does (check_problem)
    if mask is None:
        mask = jnp.ones(weights.shape, bool)
    mask = jnp.asarray(mask)
    if mask.shape != weights.shape:
        raise ConfigError(f"mask shape {mask.shape} does not match weights shape {weights.shape}")
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ConfigError(f"chunk must be an int >= 1, got {chunk!r}")
    if growth is not None and not (isinstance(growth, int) and growth >= 2):
        raise ConfigError(f"growth must be an int >= 2 or None, got {growth!r}")
    if not (isinstance(min_staged, int) and min_staged >= 0):
        raise ConfigError(f"min_staged must be an int >= 0, got {min_staged!r}")
    # auction_match's own defaults and checks, applied once whichever path runs
    defaults = {k: v.default for k, v in inspect.signature(auction_match).parameters.items()
                if k not in ("weights", "mask", "allow_nonpositive", "eps_size")}
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown auction option(s) {sorted(unknown)}; "
                          f"choose from {sorted(defaults)}")
    kw = {**defaults, **options}
    max_iters = kw.pop("max_iters")
    opts = _options(max_iters, **kw)
    k1 = kw["first_rounds"] if first_iters is None else first_iters
    if not (isinstance(k1, int) and k1 >= 0):
        raise ConfigError(f"first_iters must be an int >= 0 or None, got {first_iters!r}")
    B, n, m = weights.shape
    if k1 == 0 or k1 >= max_iters or B < min_staged or B == 0 or n == 0 or m == 0:
        return jax.vmap(lambda w, msk: auction_match(
            w, msk, max_iters=max_iters, allow_nonpositive=allow_nonpositive, **kw)
        )(weights, mask)
    w, elig = jax.vmap(lambda a, b: _prepare(*check_problem(a, b), allow_nonpositive))(
        weights, mask)
    run = jax.vmap(lambda w, e, s, budget: _auction_core(w, e, s, budget, opts),
                   in_axes=(0, 0, 0, None))
    states = run(w, elig, jax.vmap(lambda a, b: _initial_state(a, b, opts))(w, elig),
                 jnp.asarray(k1, jnp.int32))

    def unfinished(states):
        return ~states["done"] & (states["it"] < max_iters)

    def chunk_step(carry):
        states, todo, budget = carry
        idx = first_true(todo, chunk)  # B where there are fewer than chunk
        src = jnp.minimum(idx, B - 1)
        part = run(w[src], elig[src], jax.tree.map(lambda a: a[src], states), budget)
        tgt = jnp.where(idx < B, idx, B)
        states = jax.tree.map(lambda a, b: a.at[tgt].set(b, mode="drop"), states, part)
        return states, todo.at[tgt].set(False, mode="drop"), budget

    def stage(carry):
        states, budget = carry
        if growth is None:
            budget = jnp.asarray(max_iters, jnp.int32)
        else:  # (no int32 overflow for budgets near 2**31)
            budget = jnp.where(budget > max_iters // growth, max_iters, budget * growth)
        states, _, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), chunk_step,
                                          (states, unfinished(states), budget))
        return states, budget

    states, _ = jax.lax.while_loop(lambda c: jnp.any(unfinished(c[0])), stage,
                                   (states, jnp.asarray(k1, jnp.int32)))
    return jax.vmap(_result)(weights, states)
