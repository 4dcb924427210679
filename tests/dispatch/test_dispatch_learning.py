"""Edge weights, TD(0), offline policy evaluation and candidate edges vs NumPy references."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dispatch_setup import SMALL
from fedrl.dispatch import simulator as sim
from fedrl.dispatch.dispatchers import build_graph, candidate_weights, compact_rows, solve_graph
from fedrl.dispatch.types import IDLE, Arrivals
from fedrl.dispatch.value import (offline_policy_evaluation, td0_update, trip_transitions,
                                  value_grid)
from fedrl.dispatch.weights import cancel_probability


_weights = jax.jit(candidate_weights, static_argnames=("cfg", "kind"))
_cands = jax.jit(sim.candidate_edges, static_argnames=("cfg",))


def _np_cell(x, y, cfg):
    """Hexagon = nearest cell centre (brute force), independent of the cube rounding."""
    c = value_grid(cfg).centers.astype(np.float64)
    d = (np.asarray(x, np.float64).reshape(-1, 1) - c[None, :, 0]) ** 2 + \
        (np.asarray(y, np.float64).reshape(-1, 1) - c[None, :, 1]) ** 2
    return d.argmin(1).reshape(np.shape(x))


@pytest.fixture(scope="module")
def mid_state(small_day):
    """State after the small day, a random value table, and fresh orders near idle drivers."""
    state, _ = sim.run_day(small_day, jax.random.PRNGKey(0), SMALL)
    rng = np.random.default_rng(0)
    value = rng.normal(5.0, 3.0, (SMALL.num_slots, value_grid(SMALL).num_cells))
    state = state.replace(value=jnp.asarray(value, jnp.float32),
                          pending=state.pending.replace(valid=jnp.zeros_like(
                              state.pending.valid)))  # room for the injected orders
    d = jax.tree.map(np.asarray, state.drivers)
    idle = np.flatnonzero(d.status == IDLE)
    assert len(idle) >= 3
    A = 6
    pick = rng.choice(idle, A)
    ang = rng.uniform(0, 2 * np.pi, A)
    rad = rng.uniform(0, 1800, A)
    ox = d.x[pick] + rad * np.cos(ang)
    oy = d.y[pick] + rad * np.sin(ang)
    arr = Arrivals(valid=np.ones(A, bool), order=np.arange(A, dtype=np.int32) + 10_000,
                   ox=ox.astype(np.float32), oy=oy.astype(np.float32),
                   dx=rng.uniform(0, 20_000, A).astype(np.float32),
                   dy=rng.uniform(0, 20_000, A).astype(np.float32),
                   fare=rng.uniform(10, 50, A).astype(np.float32),
                   duration=rng.uniform(300, 3000, A).astype(np.float32),
                   patience=np.full(A, 100.0, np.float32))
    now = sim.now_of(state, small_day.t_start, SMALL)
    state = sim.arrive_orders(state, jax.tree.map(jnp.asarray, arr), now, SMALL)
    return state, now


def test_cancel_curve_matches_kdd_cup():
    d = jnp.array([0.0, 1000.0, 2000.0])
    p = np.asarray(cancel_probability(d, SMALL))
    np.testing.assert_allclose(p, [0.01, 0.01 * math.sqrt(20.0), 0.2], rtol=1e-5)


def test_candidate_edges_are_the_k_nearest_idle_drivers(mid_state):
    state, _ = mid_state
    cands = _cands(state, SMALL)
    d = jax.tree.map(np.asarray, state.drivers)
    p = jax.tree.map(np.asarray, state.pending)
    idle = np.flatnonzero(d.status == IDLE)
    checked = 0
    for slot in np.flatnonzero(p.valid):
        dist = np.hypot(d.x[idle] - p.ox[slot], d.y[idle] - p.oy[slot])
        near = np.sort(dist[dist <= SMALL.radius_m])[:SMALL.k_nearest]
        got = np.sort(np.asarray(cands.dist[slot])[np.asarray(cands.mask[slot])])
        np.testing.assert_allclose(got, near, rtol=1e-4, atol=0.5)
        drivers = np.asarray(cands.driver[slot])[np.asarray(cands.mask[slot])]
        assert (d.status[drivers] == IDLE).all() and len(set(drivers)) == len(drivers)
        checked += len(near) > 0
    assert checked >= 2
    assert not np.asarray(cands.mask)[~p.valid].any()


@pytest.mark.parametrize("classes", [(2,), (4, 8), (6,)])
def test_candidate_classes_give_the_full_search(mid_state, classes):
    """The pending-count switch of candidate_edges equals searching every pending slot."""
    state, _ = mid_state
    full = _cands(state, dataclasses.replace(SMALL, candidate_classes=()))
    got = _cands(state, dataclasses.replace(SMALL, candidate_classes=classes))
    assert int(np.sum(np.asarray(state.pending.valid))) == 6  # class 2 overflows, 6 is exact
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_edge_weights_match_numpy(mid_state):
    state, now = mid_state
    cands = _cands(state, SMALL)
    d = jax.tree.map(np.asarray, state.drivers)
    p = jax.tree.map(np.asarray, state.pending)
    V = np.asarray(state.value, np.float64)
    for kind in ("ltd", "myopic", "nearest"):
        w = np.asarray(_weights(state, cands, now, SMALL, kind))
        for slot, j in zip(*np.nonzero(np.asarray(cands.mask))):
            drv = int(cands.driver[slot, j])
            dist = float(cands.dist[slot, j])
            p_done = 1.0 - 0.01 * math.exp(math.log(20.0) / 2000.0 * dist)
            if kind == "myopic":
                ref = p_done * p.fare[slot]
            elif kind == "nearest":
                # most pairs first: weights in [1, 1 + 1/(n + 1)], n = min(8, 16, 24) pairs
                ref = 1.0 + (2000.0 - dist) / (2000.0 * (8 + 1))
            else:
                dt = dist / 3.0 + p.duration[slot]
                s_next = int((now + dt) // 600)
                v_next = V[s_next, _np_cell(p.dx[slot], p.dy[slot], SMALL)] if s_next < 144 else 0
                v_here = V[int(now // 600), _np_cell(d.x[drv], d.y[drv], SMALL)]
                ref = p_done * (p.fare[slot] + 0.9 ** (dt / 600.0) * v_next - v_here)
            assert w[slot, j] == pytest.approx(ref, rel=1e-4, abs=1e-3), (kind, slot, j)
    assert np.asarray(cands.mask).sum() >= 3


def test_graph_is_a_faithful_dense_copy_and_hungarian_is_optimal(mid_state):
    state, now = mid_state
    cands = _cands(state, SMALL)
    weight = _weights(state, cands, now, SMALL, "myopic")

    @jax.jit
    def graph_of(cands, weight):
        row_slot, sub, sub_w, _ = compact_rows(cands, weight, SMALL.max_rows)
        return (row_slot,) + build_graph(sub, sub_w, state.drivers.status.shape[0], SMALL)

    row_slot, graph, dropped = graph_of(cands, weight)
    cols = np.asarray(graph.col_driver)
    used = cols[cols >= 0]
    assert len(np.unique(used)) == len(used)
    W, mask = np.asarray(graph.weight), np.asarray(graph.mask)
    # every kept candidate edge appears once, with its weight, under its driver's column
    for r, slot in enumerate(np.asarray(row_slot)):
        if slot < 0:
            continue
        for j in np.flatnonzero(np.asarray(cands.mask[slot])):
            c = np.flatnonzero(cols == int(cands.driver[slot, j]))
            if len(c):
                assert mask[r, c[0]] and W[r, c[0]] == pytest.approx(float(weight[slot, j]))
    assert mask.sum() == sum(int(cands.mask[s].sum()) for s in np.asarray(row_slot) if s >= 0) \
        or int(dropped) > 0
    from fedrl.matching import match
    res = match(graph.weight, graph.mask, method="hungarian")
    cost = np.where(mask, W, 0.0)
    r, c = linear_sum_assignment(cost, maximize=True)
    assert float(res.total) == pytest.approx(cost[r, c].sum(), rel=1e-5)
    # the size-class switch solves the same problem on a top-left block
    for sizes in (((4, 12),), ((2, 4), (4, 8))):
        cfg = dataclasses.replace(SMALL, size_classes=sizes)
        rows = np.asarray(jax.jit(lambda g: solve_graph(g, cfg, "hungarian"))(graph))
        got = sum(W[i, j] for i, j in enumerate(rows) if j >= 0 and mask[i, j] and W[i, j] > 0)
        assert got == pytest.approx(cost[r, c].sum(), rel=1e-5)


@pytest.mark.parametrize("idle", ["elapsed", "slot"])
def test_td0_update_matches_numpy(idle):
    cfg = dataclasses.replace(SMALL, td_idle_discount=idle)
    rng = np.random.default_rng(1)
    V = rng.normal(size=(cfg.num_slots, value_grid(cfg).num_cells)).astype(np.float32)
    n = 40
    # several drivers share cells so that synchronous increments must add up
    x = rng.choice(rng.uniform(0, 5000, 8), n).astype(np.float32)
    y = rng.choice(rng.uniform(0, 5000, 8), n).astype(np.float32)
    valid = rng.random(n) < 0.9
    matched = rng.random(n) < 0.4
    w = rng.normal(10, 5, n).astype(np.float32)
    t = 8 * 3600 + 123.0
    out = np.asarray(td0_update(jnp.asarray(V), t, x, y, valid, matched, w, cfg))
    ref = V.astype(np.float64).copy()
    slot = int(t // 600)
    cells = _np_cell(x, y, cfg)
    # unmatched target: gamma per 10-min slot -> 0.9 ** (2 s / 600 s) per batch ("elapsed")
    g = 0.9 ** (2.0 / 600.0) if idle == "elapsed" else 0.9
    for i in range(n):
        if not valid[i]:
            continue
        v_old = V[slot, cells[i]]  # synchronous: increments use V before the batch
        ref[slot, cells[i]] += 0.025 * w[i] if matched[i] else 0.025 * (g * v_old - v_old)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _np_neighbors(cfg):
    """Adjacent hexagons by centre distance (sqrt(3) * radius), independent of the grid code."""
    c = value_grid(cfg).centers.astype(np.float64)
    d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
    adj = np.abs(d - math.sqrt(3) * cfg.value_cell_m) < 1.0
    return [np.flatnonzero(a) for a in adj]


def _np_smooth_fill(v, n, nbrs, smooth, rings, slot_mean):
    """Loop re-computation of value.smooth_values and value.fill_unvisited for one slot."""
    val, wt = v.copy(), np.where(n > 0, n, 0.0)
    for _ in range(smooth):
        nv, nw = val.copy(), wt.copy()
        for c in range(len(v)):
            tw = wt[c] + sum(wt[j] for j in nbrs[c])
            if tw > 0:
                nv[c] = (wt[c] * val[c] + sum(wt[j] * val[j] for j in nbrs[c])) / tw
            nw[c] = tw
        val, wt = nv, nw
    smoothed = val.copy()
    known = n > 0
    fw = np.where(known, n, 0.0)
    for _ in range(rings):
        nv, nw, nk = val.copy(), fw.copy(), known.copy()
        for c in np.flatnonzero(~known):
            tw = sum(fw[j] for j in nbrs[c] if known[j])
            if tw > 0:
                nv[c] = sum(fw[j] * val[j] for j in nbrs[c] if known[j]) / tw
                nw[c], nk[c] = tw, True
        val, fw, known = nv, nw, nk
    if slot_mean and n.sum() > 0:
        val = np.where(known, val, (n * smoothed).sum() / n.sum())
    return val


@pytest.mark.parametrize("variant", ["trips_only", "default"])
def test_offline_policy_evaluation_matches_sequential_numpy(variant):
    cfg = dataclasses.replace(SMALL, slot_s=1800.0)  # 48 slots keep the reference loop short
    if variant == "trips_only":   # Xu et al.'s plain trip evaluation
        cfg = dataclasses.replace(cfg, value_gap_s=0.0, value_smooth_rings=0,
                                  value_fill_rings=0, value_fill_slot_mean=False)
    rng = np.random.default_rng(2)
    n = 300
    t0 = rng.uniform(0, 86_400, n)
    dur = rng.uniform(300, 7200, n)
    pts = rng.choice(rng.uniform(0, 6000, (6, 2)).ravel(), (n, 4))  # few cells: repeats
    fare = rng.uniform(8, 60, n)
    V, N = offline_policy_evaluation(t0, dur, pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3], fare,
                                     cfg)
    slot0, _, T, _ = trip_transitions(t0, dur, pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3], cfg)
    c0, c1 = _np_cell(pts[:, 0], pts[:, 1], cfg), _np_cell(pts[:, 2], pts[:, 3], cfg)
    S = cfg.num_slots
    Vr = np.zeros((S, value_grid(cfg).num_cells))
    Nr = np.zeros_like(Vr)
    g = cfg.gamma
    g_gap = g ** (cfg.value_gap_s / cfg.slot_s)
    nbrs = _np_neighbors(cfg)
    for s in range(S - 1, -1, -1):          # backward over time slots
        for i in np.flatnonzero(slot0 == s):  # one trip at a time, step size 1/N(s)
            Ti = T[i]
            r_gamma = sum(g ** k * fare[i] / Ti for k in range(Ti))
            nxt = Vr[s + Ti, c1[i]] if s + Ti < S else 0.0
            Nr[s, c0[i]] += 1
            Vr[s, c0[i]] += (g_gap * (r_gamma + g ** Ti * nxt) - Vr[s, c0[i]]) / Nr[s, c0[i]]
        Vr[s] = _np_smooth_fill(Vr[s], Nr[s], nbrs, cfg.value_smooth_rings,
                                cfg.value_fill_rings, cfg.value_fill_slot_mean)
    np.testing.assert_allclose(np.asarray(N), Nr)
    np.testing.assert_allclose(np.asarray(V), Vr, rtol=1e-4, atol=1e-3)
    assert (Nr > 0).sum() > 50
    if variant == "default":  # the fill reached states without trips
        assert ((Nr == 0) & (np.abs(Vr) > 0)).sum() > 50
