"""Exact maximum-weight bipartite matching with optax's JAX Hungarian algorithm.

The solver is ``optax.assignment.hungarian_algorithm`` (Kuhn, "The Hungarian method for the
assignment problem", Naval Res. Logist. Q. 1955; optax's version follows the Scenic
implementation, Dehghani et al. 2022). It solves the *assignment* problem: exactly
``min(n, m)`` pairs of minimum cost. We turn it into a *matching* solver as follows.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

from fedrl.matching.types import MatchResult, check_problem, eligible_weights, result_from_rows


def hungarian_match(weights, mask=None, *, allow_nonpositive: bool = False) -> MatchResult:
    """Exact maximum-weight matching of ``weights`` (``n x m``) restricted to ``mask``.

    Reduction: let ``w' = weights`` on eligible pairs (mask True and weight > 0) and ``w' = 0``
    elsewhere. Solve the assignment problem ``max sum w'`` over ``min(n, m)`` pairs (optax's
    Hungarian on cost ``-w'``) and drop the pairs with ``w' = 0``. This is exact:

    * every feasible matching M (eligible pairs only) can be completed to a ``min(n, m)``-pair
      assignment by adding pairs of ``w' >= 0``, so ``w(M) <= max_assignment w'``;
    * dropping the zero pairs of the optimal assignment A leaves a feasible matching (only
      eligible pairs have ``w' > 0``) of value ``w'(A)``.

    So the result attains the upper bound. Ties between a zero-weight edge and no edge are
    resolved as "no edge". With ``allow_nonpositive=True`` the weights are shifted as described
    in :func:`fedrl.matching.types.eligible_weights` (assignment semantics).

    Jit- and vmap-able (optax's loops are ``lax`` loops). ``iterations`` is 0.
    """
    weights, mask = check_problem(weights, mask)
    n, m = weights.shape
    if n == 0 or m == 0:
        return result_from_rows(weights, jnp.full((n,), -1, jnp.int32), m)
    w, eligible = eligible_weights(weights, mask, allow_nonpositive)
    rows, cols = optax.assignment.hungarian_algorithm(-w)
    keep = eligible[rows, cols] & (w[rows, cols] > 0)
    row_to_col = jnp.full((n,), -1, jnp.int32).at[rows].set(
        jnp.where(keep, cols, -1).astype(jnp.int32))
    return result_from_rows(weights, row_to_col, m)
