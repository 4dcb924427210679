"""Greedy maximum-weight matching: repeatedly take the heaviest remaining edge.

The classic 1/2-approximation (e.g. Avis, "A survey of heuristics for the weighted matching
problem", Networks 1983; Preis, STACS 1999 for the linear-time variant): each greedy edge
``e`` blocks at most two edges of an optimal matching, each of weight <= w(e) (they were still
available when ``e`` was chosen), so ``greedy >= optimum / 2``. Dispatch systems often use it
as the "nearest/best driver first" baseline.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.matching.types import MatchResult, check_problem, eligible_weights, result_from_rows


def greedy_match(weights, mask=None, *, allow_nonpositive: bool = False) -> MatchResult:
    """Greedy matching of ``weights`` (``n x m``) restricted to ``mask``; >= 1/2 of the optimum.

    ``min(n, m)`` steps of a ``lax.fori_loop``; each takes the argmax over the flattened matrix
    of still-available eligible edges (ties broken by the lowest flat index, i.e. row-major) and
    removes its row and column. Steps after the eligible edges run out change nothing.
    Edges of weight <= 0 are never taken unless ``allow_nonpositive`` (then every masked-in
    edge is eligible and the result is a maximal matching). Jit- and vmap-able.
    """
    weights, mask = check_problem(weights, mask)
    n, m = weights.shape
    if n == 0 or m == 0:
        return result_from_rows(weights, jnp.full((n,), -1, jnp.int32), m)
    w, eligible = eligible_weights(weights, mask, allow_nonpositive)
    neg = -jnp.inf
    avail0 = jnp.where(eligible, w, neg).ravel()

    def step(_, carry):
        avail, row_to_col = carry
        flat = jnp.argmax(avail)
        ok = avail[flat] > neg
        r, c = flat // m, flat % m
        row_to_col = row_to_col.at[r].set(jnp.where(ok, c, row_to_col[r]).astype(jnp.int32))
        grid = avail.reshape(n, m)
        kill = (jnp.arange(n)[:, None] == r) | (jnp.arange(m)[None, :] == c)
        avail = jnp.where(ok & kill, neg, grid).ravel()
        return avail, row_to_col

    _, row_to_col = jax.lax.fori_loop(
        0, min(n, m), step, (avail0, jnp.full((n,), -1, jnp.int32)))
    return result_from_rows(weights, row_to_col, m)
