"""Maximum-weight bipartite matching in JAX: the dispatch core of Fed-LTD.

All matchers share one signature and one result type::

    matcher(weights: f32[n, m], mask: bool[n, m] | None = None, **options) -> MatchResult

rows = drivers/agents, columns = orders/objects, any ``n x m`` (including 0 and rectangular
both ways). They compute a maximum-weight *matching*, not a perfect assignment: only pairs with
``mask`` True may match and pairs with weight <= 0 are never taken (``allow_nonpositive=False``)
so nodes may stay unmatched. All are jit-able and vmap-able over a leading batch axis.

* :func:`auction_match` - Bertsekas' auction with epsilon scaling (forward/reverse), within
  ``min(n, m) * eps_final`` of the optimum; exact for integer weights by default.
* :func:`auction_match_batch` - the auction over a batch, hard problems resumed apart.
* :func:`hungarian_match` - exact, optax's JAX Hungarian algorithm.
* :func:`greedy_match` - heaviest edge first, >= 1/2 of the optimum.
* :func:`match` - ``match(weights, mask, method="auction"|"hungarian"|"greedy", **opts)``,
  vmaps over leading batch axes; :data:`MATCHERS` maps method names to matchers.
"""
from fedrl.matching.auction import auction_match, auction_match_batch
from fedrl.matching.greedy import greedy_match
from fedrl.matching.hungarian import hungarian_match
from fedrl.matching.types import MatchResult
from fedrl.matching.api import MATCHERS, match

__all__ = ["MatchResult", "auction_match", "auction_match_batch", "hungarian_match", "greedy_match",
           "match", "MATCHERS"]
