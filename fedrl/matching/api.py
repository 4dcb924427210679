"""One entry point for dispatchers: ``match(weights, mask, method=...)`` and the ``MATCHERS`` table."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fedrl.config import ConfigError
from fedrl.matching.auction import auction_match, auction_match_batch
from fedrl.matching.greedy import greedy_match
from fedrl.matching.hungarian import hungarian_match
from fedrl.matching.types import MatchResult

MATCHERS: dict[str, Callable[..., MatchResult]] = {
    "auction": auction_match,
    "hungarian": hungarian_match,
    "greedy": greedy_match,
}


def match(weights, mask=None, method: str = "auction", **opts) -> MatchResult:
    """Max-weight matching of ``weights`` [..., n, m] with ``mask`` (same shape or None).

    Leading axes are batch axes: the matcher is ``jax.vmap``-ed over them (equal-shape problems,
    padded and masked by the caller); the auction uses
    :func:`fedrl.matching.auction.auction_match_batch` (same per-problem results, hard problems
    resumed apart; ``chunk`` / ``first_iters`` / ``growth`` / ``min_staged`` options). ``opts``
    go to the matcher (e.g. ``max_iters`` for the auction, ``allow_nonpositive`` for all).
    Jit-able with ``method`` static.
    """
    if method not in MATCHERS:
        raise ConfigError(f"unknown matching method {method!r}; choose one of {sorted(MATCHERS)}")
    weights = jnp.asarray(weights)
    if weights.ndim < 2:
        raise ConfigError(f"weights must have shape [..., n, m], got {weights.shape}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != weights.shape:
            raise ConfigError(
                f"mask shape {mask.shape} does not match weights shape {weights.shape}")
    fn = MATCHERS[method]
    if method == "auction" and weights.ndim >= 3:
        # batches: the staged batch auction (hard problems resumed apart, same results)
        lead = weights.shape[:-2]
        flat = weights.reshape((-1,) + weights.shape[-2:])
        fmask = None if mask is None else mask.reshape(flat.shape)
        res = auction_match_batch(flat, fmask, **opts)
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), res)

    def solve(w, msk):
        return fn(w, msk, **opts)

    for _ in range(weights.ndim - 2):
        solve = jax.vmap(solve)
    if mask is None:
        mask = jnp.ones(weights.shape, bool)
    return solve(weights, mask)
