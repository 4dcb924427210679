"""Local dispatch of one platform: candidate weights -> dense graph -> max-weight matching.

Dispatchers (``SimConfig.dispatcher``): ``nearest`` (most orders served, then the least total
pick-up distance), ``myopic``
(max expected revenue) and ``ltd`` (learning-to-dispatch, Xu et al. KDD 2018), each solved by
the matcher named in ``SimConfig.matcher`` through ``fedrl.matching.match`` (Bertsekas auction,
exact Hungarian, or greedy). Rows of the matrix are pending-order slots, columns the distinct
candidate drivers of the batch (at most ``max_columns``; extra drivers are dropped and counted).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.dispatch.types import Assignment, Candidates, Graph, SimConfig, SimState
from fedrl.dispatch.weights import edge_weights, nearest_auction_tol
from fedrl.ops import prefix_count


def run_matcher(weight, mask, method: str, allow_nonpositive: bool = False, **opts):
    """``fedrl.matching.match`` (imported lazily so data-only users need not import it)."""
    from fedrl.matching import match
    return match(weight, mask, method=method, allow_nonpositive=allow_nonpositive, **opts)


def candidate_weights(state: SimState, cands: Candidates, now, cfg: SimConfig,
                      kind: str | None = None):
    """Edge weights [P, k] of the candidate edges for dispatcher ``kind``."""
    p, d = state.pending, state.drivers
    drv = jnp.maximum(cands.driver, 0)
    w = edge_weights(kind or cfg.dispatcher, cands.dist, p.fare[:, None], p.duration[:, None],
                     p.dx[:, None], p.dy[:, None], d.x[drv], d.y[drv], now, state.value, cfg)
    return jnp.where(cands.mask, w, 0.0)


def build_graph(cands: Candidates, weight, num_drivers: int, cfg: SimConfig):
    """Dense [P, M] graph over distinct candidate drivers -> (Graph, dropped column count).

    Columns are assigned in order of first appearance (row-major over [P, k]); the first
    occurrence of each driver is found with a scatter-min into a [D] scratch array, which
    costs O(P k) rather than a sort.
    """
    P, k = cands.driver.shape
    M = cfg.max_columns
    flat_ids = cands.driver.reshape(-1)
    flat_ok = cands.mask.reshape(-1)
    pos = jnp.arange(P * k, dtype=jnp.int32)
    big = jnp.int32(P * k)
    first_pos = jnp.full((num_drivers,), big, jnp.int32).at[
        jnp.where(flat_ok, flat_ids, num_drivers)].min(pos, mode="drop")
    rep = jnp.where(flat_ok, first_pos[jnp.maximum(flat_ids, 0)], big)
    is_first = flat_ok & (rep == pos)
    col_rank = prefix_count(is_first) - 1
    col_of_pos = jnp.where(is_first, col_rank, -1)
    col = jnp.where(flat_ok, col_of_pos[jnp.clip(rep, 0, P * k - 1)], -1)
    keep = flat_ok & (col >= 0) & (col < M)
    dropped = jnp.sum(is_first & (col_rank >= M))
    rows = jnp.repeat(jnp.arange(P, dtype=jnp.int32), k)
    r_idx = jnp.where(keep, rows, P)
    c_idx = jnp.where(keep, col, M)
    W = jnp.zeros((P, M), jnp.float32).at[r_idx, c_idx].set(weight.reshape(-1), mode="drop")
    mask = jnp.zeros((P, M), bool).at[r_idx, c_idx].set(True, mode="drop")
    dist = jnp.zeros((P, M), jnp.float32).at[r_idx, c_idx].set(cands.dist.reshape(-1),
                                                                mode="drop")
    col_driver = jnp.full((M,), -1, jnp.int32).at[
        jnp.where(is_first & (col_rank < M), col_rank, M)].set(flat_ids, mode="drop")
    return Graph(W, mask, dist, col_driver), dropped


def assignment_from_match(graph: Graph, row_to_col, nonpositive: bool = False) -> Assignment:
    """Matcher output (row -> column) -> per-pending-slot driver, distance, weight."""
    P = graph.weight.shape[0]
    col = jnp.asarray(row_to_col, jnp.int32)
    ok = col >= 0
    c = jnp.maximum(col, 0)
    rows = jnp.arange(P)
    ok = ok & graph.mask[rows, c]
    if not nonpositive:
        ok = ok & (graph.weight[rows, c] > 0)
    return Assignment(driver=jnp.where(ok, graph.col_driver[c], -1),
                      dist=jnp.where(ok, graph.dist[rows, c], 0.0),
                      weight=jnp.where(ok, graph.weight[rows, c], 0.0))


def compact_rows(cands: Candidates, weight, max_rows: int):
    """Keep the first ``max_rows`` pending slots that have any candidate edge.

    Most pending orders (waiting out their patience) have no idle driver nearby; dropping their
    empty rows keeps the matrix small (the matchers are O(n^2 m) or worse). Returns
    (row_slot i32[R] (-1 unused), compacted candidates, weights, count of rows left out).
    """
    P = cands.driver.shape[0]
    has = jnp.any(cands.mask, axis=1)
    rank = prefix_count(has) - 1
    keep = has & (rank < max_rows)
    row_slot = jnp.full((max_rows,), -1, jnp.int32).at[jnp.where(keep, rank, max_rows)].set(
        jnp.arange(P, dtype=jnp.int32), mode="drop")
    src = jnp.maximum(row_slot, 0)
    ok = (row_slot >= 0)[:, None]
    sub = Candidates(driver=jnp.where(ok, cands.driver[src], -1),
                     dist=jnp.where(ok, cands.dist[src], 0.0), mask=ok & cands.mask[src])
    return row_slot, sub, jnp.where(ok, weight[src], 0.0), jnp.sum(has & ~keep)


def expand_rows(assignment: Assignment, row_slot, num_slots: int) -> Assignment:
    """Compacted-row assignment -> per pending slot (unlisted slots get no driver)."""
    tgt = jnp.where(row_slot >= 0, row_slot, num_slots)
    put = lambda fill, x: jnp.full((num_slots,), fill, x.dtype).at[tgt].set(x, mode="drop")
    return Assignment(driver=put(-1, assignment.driver), dist=put(0.0, assignment.dist),
                      weight=put(0.0, assignment.weight))


def shared_class(index, axis_name=None):
    """A size-class ``index``, maxed over the vmapped platform axis ``axis_name`` (if given) so
    that every platform of the batch takes the same ``lax.switch`` branch
    (:data:`fedrl.dispatch.types.PLATFORM_AXIS`)."""
    return index if axis_name is None else jax.lax.pmax(index, axis_name)


def matcher_options(cfg: SimConfig, method: str) -> dict:
    """Extra matcher options of a dispatcher: the auction on ``nearest`` weights gets a
    tolerance tight enough to return a matching with the most pairs
    (``weights.nearest_auction_tol``); the other cases use the matcher's defaults."""
    if method == "auction" and cfg.dispatcher == "nearest":
        return {"tol": nearest_auction_tol(cfg)}
    return {}


def solve_graph(graph: Graph, cfg: SimConfig, method: str, axis_name=None):
    """Row -> column matching of ``graph`` on the smallest size class that holds it.

    Rows and columns of the graph are compacted to the front (``compact_rows`` and first-
    appearance column order), so the top-left ``r x c`` block holds every edge when the batch
    has at most r rows and c columns; ``lax.switch`` then runs only that block's matcher.

    Under ``jax.vmap`` over platforms with ``axis_name`` (``types.PLATFORM_AXIS``) every
    platform of the batch is solved in the largest class any of them needs, and gets the
    same matching as in its own class: the exact matchers' optimum does not depend on the
    padding, and the auction is given its own class's size for its eps (``eps_size``), which
    makes the padding inert as long as every class has more rows than the auction's
    ``bidders_per_round`` (4; the default classes have 8 and more). So a platform's dispatch
    never depends on the other platforms' load (tested); the sharing changes only the cost.
    """
    R, M = graph.weight.shape
    n_rows = jnp.sum(jnp.any(graph.mask, axis=1))
    n_cols = jnp.sum(graph.col_driver >= 0)
    sizes = cfg.matrix_sizes
    nonpos = cfg.match_nonpositive

    def branch(r, c):
        def solve(w, mask, own_size):
            opts = {} if own_size is None else {"eps_size": own_size}
            opts.update(matcher_options(cfg, method))
            res = run_matcher(w[:r, :c], mask[:r, :c], method, nonpos, **opts)
            return jnp.full((R,), -1, jnp.int32).at[:r].set(res.row_to_col.astype(jnp.int32))
        return solve

    if len(sizes) == 1:
        return branch(*sizes[0])(graph.weight, graph.mask, None)
    # With classes, a batch without any edge (common: orders but no idle driver nearby) takes
    # an empty branch instead of the smallest matcher's setup.
    empty = lambda w, mask, own_size: jnp.full((R,), -1, jnp.int32)
    sizes = ((0, 0),) + sizes
    fits = jnp.array([(n_rows <= r) & (n_cols <= c) for r, c in sizes])
    index = jnp.sum(jnp.cumsum(fits) == 0)  # first class that fits; the last always fits
    own_size = None
    if axis_name is not None and method == "auction":
        own_size = jnp.array([min(r, c) for r, c in sizes], jnp.int32)[index]
    return jax.lax.switch(shared_class(index, axis_name),
                          [empty] + [branch(r, c) for r, c in sizes[1:]], graph.weight, graph.mask,
                          own_size)


def local_dispatch(state: SimState, cands: Candidates, now, cfg: SimConfig, axis_name=None):
    """Weights, graph and matching of one platform (``axis_name``: see :func:`solve_graph`).

    Returns (Assignment per pending slot, Graph [R, M], total, exact, dropped) where ``exact``
    is the Hungarian optimum of the same graph when ``cfg.measure_gap`` (for the auction's
    optimality gap), else equal to ``total``; ``dropped`` counts rows/columns left out.
    """
    weight = candidate_weights(state, cands, now, cfg)
    P = cands.driver.shape[0]
    row_slot, sub, sub_w, rows_dropped = compact_rows(cands, weight, min(cfg.max_rows, P))
    graph, cols_dropped = build_graph(sub, sub_w, state.drivers.status.shape[0], cfg)
    nonpos = cfg.match_nonpositive
    rows = solve_graph(graph, cfg, cfg.matcher, axis_name)
    compact = assignment_from_match(graph, rows, nonpos)
    total = jnp.sum(compact.weight)
    if cfg.measure_gap:
        exact_rows = solve_graph(graph, cfg, "hungarian", axis_name)
        exact = jnp.sum(assignment_from_match(graph, exact_rows, nonpos).weight)
    else:
        exact = total
    return (expand_rows(compact, row_slot, P), graph, total, exact,
            (rows_dropped, cols_dropped))
