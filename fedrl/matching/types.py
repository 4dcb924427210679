"""The result type shared by every matcher and the input preparation they have in common.

Every matcher solves the same problem, a *maximum-weight bipartite matching*: rows (drivers,
agents) and columns (orders, objects) of an ``n x m`` weight matrix, each row and each column
used at most once, only pairs with ``mask`` True may match, and the sum of the matched weights
is maximal. It is not a perfect assignment: a pair with weight <= 0 is never worth taking
(it cannot raise the total), so by default such pairs are treated as absent and nodes may stay
unmatched. ``allow_nonpositive=True`` switches to *assignment* semantics instead: among the
matchings of maximum cardinality in the masked graph, the one of maximum weight (what
``scipy.optimize.linear_sum_assignment`` computes when the mask is all True).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from fedrl.config import ConfigError


@struct.dataclass
class MatchResult:
    """A matching of an ``n x m`` problem (leading batch axes when produced under ``vmap``).

    Attributes:
      row_to_col: i32[n], the column matched to each row, or -1.
      col_to_row: i32[m], the row matched to each column, or -1.
      total: f32[], the sum of the (original) weights of the matched pairs.
      iterations: i32[], iterations the matcher ran (bidding rounds for the auction; 0 for the
        non-iterative matchers).
      converged: bool[], False when an iteration bound was hit before the method finished
        (the matching is still valid, but its optimality guarantee does not hold).
    """
    row_to_col: jax.Array
    col_to_row: jax.Array
    total: jax.Array
    iterations: jax.Array
    converged: jax.Array


def check_problem(weights, mask) -> tuple[jax.Array, jax.Array]:
    """Validate shapes and return ``(weights as float, mask as bool)``.

    Raises :class:`fedrl.config.ConfigError` (a ``ValueError``) naming the problem instead of a
    JAX shape error deep inside a loop.
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 2:
        raise ConfigError(
            f"weights must be a 2-D [n_rows, n_cols] matrix, got shape {weights.shape}; "
            "use jax.vmap (or fedrl.matching.match, which vmaps) for batches")
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        weights = weights.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(weights.shape, bool)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != weights.shape:
            raise ConfigError(
                f"mask shape {mask.shape} does not match weights shape {weights.shape}")
        mask = mask.astype(bool)
    return weights, mask


def eligible_weights(weights: jax.Array, mask: jax.Array, allow_nonpositive: bool
                     ) -> tuple[jax.Array, jax.Array]:
    """Return ``(w, eligible)``: the weights a max-weight matcher should maximise and the edges.

    Default semantics: eligible = mask & (weights > 0), and ``w`` is ``weights`` there and 0
    elsewhere. With ``allow_nonpositive`` (assignment semantics) every masked-in pair is eligible
    and its weight is shifted up by ``B = (k + 1) * (spread + 1) + max(0, -min w)`` with
    ``k = min(n, m)`` and ``spread = max w - min w`` over the masked-in pairs: then every
    eligible weight is >= 1 and one more matched pair is worth more than any weight difference
    among matchings of the same size (``(c+1)(B + wmin) > c(B + wmax)`` for ``c <= k``), so a
    max-weight matching of the shifted weights is a max-cardinality matching of maximum weight.
    The shift costs float32 precision when ``k * spread`` is large compared to the weights.
    """
    if not allow_nonpositive:
        eligible = mask & (weights > 0)
        return jnp.where(eligible, weights, 0.0), eligible
    k = min(weights.shape)
    big = jnp.finfo(weights.dtype).max
    wmax = jnp.max(jnp.where(mask, weights, -big), initial=-big)
    wmin = jnp.min(jnp.where(mask, weights, big), initial=big)
    any_edge = jnp.any(mask)
    wmax = jnp.where(any_edge, wmax, 0.0)
    wmin = jnp.where(any_edge, wmin, 0.0)
    shift = (k + 1) * (wmax - wmin + 1.0) + jnp.maximum(0.0, -wmin)
    return jnp.where(mask, weights + shift, 0.0), mask


def result_from_rows(weights: jax.Array, row_to_col: jax.Array, m: int,
                     iterations=0, converged=True) -> MatchResult:
    """Build a :class:`MatchResult` from ``row_to_col`` (-1 = unmatched): inverse map and total."""
    n = weights.shape[0]
    row_to_col = row_to_col.astype(jnp.int32)
    matched = row_to_col >= 0
    # Unmatched rows scatter to an out-of-range index, which mode="drop" discards.
    target = jnp.where(matched, row_to_col, m)
    col_to_row = jnp.full((m,), -1, jnp.int32).at[target].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")
    if n and m:
        picked = jnp.take_along_axis(weights, jnp.maximum(row_to_col, 0)[:, None], axis=1)[:, 0]
        total = jnp.sum(jnp.where(matched, picked, 0.0))
    else:
        total = jnp.zeros((), weights.dtype)
    return MatchResult(row_to_col=row_to_col, col_to_row=col_to_row,
                       total=total.astype(weights.dtype),
                       iterations=jnp.asarray(iterations, jnp.int32),
                       converged=jnp.asarray(converged, bool))
