"""Local dispatch of one platform: candidate weights -> dense graph -> max-weight matching.

Dispatchers (``SimConfig.dispatcher``): ``nearest`` (greedy nearest driver), ``myopic``
(max expected revenue) and ``ltd`` (learning-to-dispatch, Xu et al. KDD 2018), each solved by
the matcher named in ``SimConfig.matcher`` through ``fedrl.matching.match`` (Bertsekas auction,
exact Hungarian, or greedy). Rows of the matrix are pending-order slots, columns the distinct
candidate drivers of the batch (at most ``max_columns``; extra drivers are dropped and counted).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.dispatch.types import Assignment, Candidates, Graph, SimConfig, SimState
from fedrl.dispatch.weights import edge_weights


def run_matcher(weight, mask, method: str):
    """``fedrl.matching.match`` (imported lazily so data-only users need not import it)."""
    from fedrl.matching import match
    return match(weight, mask, method=method)


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
    col_rank = jnp.cumsum(is_first.astype(jnp.int32)) - 1
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


def assignment_from_match(graph: Graph, row_to_col) -> Assignment:
    """Matcher output (row -> column) -> per-pending-slot driver, distance, weight."""
    P = graph.weight.shape[0]
    col = jnp.asarray(row_to_col, jnp.int32)
    ok = col >= 0
    c = jnp.maximum(col, 0)
    rows = jnp.arange(P)
    ok = ok & graph.mask[rows, c] & (graph.weight[rows, c] > 0)
    return Assignment(driver=jnp.where(ok, graph.col_driver[c], -1),
                      dist=jnp.where(ok, graph.dist[rows, c], 0.0),
                      weight=jnp.where(ok, graph.weight[rows, c], 0.0))


def local_dispatch(state: SimState, cands: Candidates, now, cfg: SimConfig):
    """Weights, graph and matching of one platform -> (Assignment, Graph, total, exact, dropped).

    ``exact`` is the Hungarian optimum of the same graph when ``cfg.measure_gap`` (for the
    auction's optimality gap), else equal to ``total``.
    """
    weight = candidate_weights(state, cands, now, cfg)
    graph, dropped = build_graph(cands, weight, state.drivers.status.shape[0], cfg)
    result = run_matcher(graph.weight, graph.mask, cfg.matcher)
    assignment = assignment_from_match(graph, result.row_to_col)
    total = jnp.sum(assignment.weight)
    if cfg.measure_gap:
        exact_res = run_matcher(graph.weight, graph.mask, "hungarian")
        exact = jnp.sum(assignment_from_match(graph, exact_res.row_to_col).weight)
    else:
        exact = total
    return assignment, graph, total, exact, dropped
