"""Batched ride-hailing dispatch simulator: composable pure steps, one ``lax.scan`` per day.

One batch (``SimConfig.batch_s``, 2 s by default) at time ``now`` is

    state = advance_time(state, events, cfg)        # trip ends, shifts on/off
    state = arrive_orders(state, events.arrivals)   # new orders enter pending slots
    cands = candidate_edges(state, cfg)             # k nearest idle drivers within the radius
    assignment, graph, ... = local_dispatch(...)    # weights + matching (dispatchers.py)
    state = apply_assignments(state, assignment, key, cfg)  # cancel or serve, drivers busy
    state = learn(state, graph, assignment, cfg)    # online TD(0) (value.py)
    state = expire_orders(state, cfg)               # patience ran out
    state = account(state, cfg)                     # driver-time counters

Between ``local_dispatch`` and ``expire_orders`` the residual graph (pending orders still
unassigned, idle drivers still listed) is what :func:`residual_graph` returns; a second-stage
(cross-platform) assignment can be applied with :func:`serve_orders` on the order's platform and
:func:`dispatch_drivers` on the driver's platform, which together make
:func:`apply_assignments`. Everything is jit/vmap-able with fixed shapes.

Idle drivers are kept in a bucket table (square cells of ``bucket_cell_m`` >= radius, ``S``
slots each), updated incrementally with O(events) scatters, so a batch never scans all drivers
except for a few fused counters. Trip ends go into a calendar ring indexed by batch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fedrl.config import ConfigError
from fedrl.dispatch.dispatchers import local_dispatch, shared_class
from fedrl.dispatch.schedule import DayData
from fedrl.dispatch.types import (BUSY, IDLE, OFFLINE, PLATFORM_AXIS, Assignment, BatchEvents,
                                  BatchLog, Candidates, Drivers, Graph, Pending, SimConfig,
                                  SimState, Totals)
from fedrl.dispatch.value import init_value, td0_update
from fedrl.dispatch.weights import cancel_probability, trip_time
from fedrl.ops import nth_true, prefix_count
from fedrl.sharding import local_mesh, pad_leading, padded_size, split_leading, unpad_leading


def init_state(day: DayData, cfg: SimConfig, value=None) -> SimState:
    """All drivers offline at their shift-start position, nothing pending.

    Validates ``cfg`` (a static Python value, also under ``jit``: ``run_day`` and
    ``run_platforms`` start here), so a bad knob is a ConfigError naming the field."""
    cfg.validate()
    D = day.driver_x.shape[0]
    P = cfg.max_pending
    drivers = Drivers(status=jnp.full((D,), OFFLINE, jnp.int32), x=day.driver_x, y=day.driver_y,
                      shift_end=day.shift_end, bucket_cell=jnp.full((D,), -1, jnp.int32),
                      bucket_slot=jnp.full((D,), -1, jnp.int32), exists=day.exists)
    zf = jnp.zeros((P,), jnp.float32)
    pending = Pending(valid=jnp.zeros((P,), bool), order=jnp.full((P,), -1, jnp.int32),
                      ox=zf, oy=zf, dx=zf, dy=zf, fare=zf, duration=zf, expiry=zf)
    nb = cfg.bucket_cols * cfg.bucket_rows
    state = SimState(
        batch=jnp.zeros((), jnp.int32), drivers=drivers, pending=pending,
        bucket=jnp.full((nb, cfg.bucket_slots), -1, jnp.int32),
        bucket_x=jnp.zeros((nb, cfg.bucket_slots), jnp.float32),
        bucket_y=jnp.zeros((nb, cfg.bucket_slots), jnp.float32),
        calendar=jnp.full((cfg.calendar_batches, cfg.calendar_slots), -1, jnp.int32),
        cal_count=jnp.zeros((cfg.calendar_batches,), jnp.int32),
        cal_stamp=jnp.full((cfg.calendar_batches,), -1, jnp.int32),
        value=init_value(cfg) if value is None else jnp.asarray(value, jnp.float32),
        totals=Totals.zeros())
    # drivers on shift at the window start: idle and listed (one wide insert, outside the scan)
    ids = jnp.arange(D, dtype=jnp.int32)
    state = _set_status(state, ids, day.online0, IDLE)
    return bucket_insert(state, ids, day.online0, cfg)


def now_of(state: SimState, t_start, cfg: SimConfig):
    """Dispatch time of the current batch: the end of its arrival window."""
    return t_start + (state.batch.astype(jnp.float32) + 1.0) * cfg.batch_s


def bucket_cell_of(x, y, cfg: SimConfig):
    col = jnp.clip(jnp.floor(x / cfg.bucket_cell_m).astype(jnp.int32), 0, cfg.bucket_cols - 1)
    row = jnp.clip(jnp.floor(y / cfg.bucket_cell_m).astype(jnp.int32), 0, cfg.bucket_rows - 1)
    return row * cfg.bucket_cols + col


def _rank_among_equal(keys, valid):
    """For each valid entry, how many earlier valid entries share its key.

    Small vectors (per-batch events) use an n x n comparison; long ones (the initial wave of
    drivers) a stable sort.
    """
    n = keys.shape[0]
    if n > 128:
        k = jnp.where(valid, keys, jnp.iinfo(jnp.int32).max)
        order = jnp.argsort(k, stable=True)
        sk = k[order]
        pos = jnp.arange(n, dtype=jnp.int32)
        new_run = jnp.concatenate([jnp.ones((1,), bool), sk[1:] != sk[:-1]])
        start = jax.lax.associative_scan(jnp.maximum, jnp.where(new_run, pos, 0))
        return jnp.zeros((n,), jnp.int32).at[order].set(pos - start)
    earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]
    same = (keys[:, None] == keys[None, :]) & valid[None, :] & earlier
    return jnp.sum(same, axis=1).astype(jnp.int32)


def bucket_insert(state: SimState, ids, valid, cfg: SimConfig) -> SimState:
    """List idle drivers ``ids`` in the bucket of their position (first free slots)."""
    d = state.drivers
    safe = jnp.maximum(ids, 0)
    cell = bucket_cell_of(d.x[safe], d.y[safe], cfg)
    rank = _rank_among_equal(cell, valid)
    free = state.bucket[cell] < 0                              # [E, S]
    slot = nth_true(free, rank)
    ok = valid & (slot < free.shape[1])
    slot = jnp.minimum(slot, free.shape[1] - 1)
    nb = state.bucket.shape[0]
    tcell = jnp.where(ok, cell, nb)
    bucket = state.bucket.at[tcell, slot].set(ids, mode="drop")
    bucket_x = state.bucket_x.at[tcell, slot].set(d.x[safe], mode="drop")
    bucket_y = state.bucket_y.at[tcell, slot].set(d.y[safe], mode="drop")
    D = d.status.shape[0]
    tgt = jnp.where(valid, ids, D)
    drivers = d.replace(bucket_cell=d.bucket_cell.at[tgt].set(jnp.where(ok, cell, -1),
                                                              mode="drop"),
                        bucket_slot=d.bucket_slot.at[tgt].set(jnp.where(ok, slot, -1),
                                                              mode="drop"))
    totals = state.totals.replace(
        bucket_overflow=state.totals.bucket_overflow + jnp.sum(valid & ~ok))
    return state.replace(bucket=bucket, bucket_x=bucket_x, bucket_y=bucket_y, drivers=drivers,
                         totals=totals)


def bucket_remove(state: SimState, ids, valid) -> SimState:
    """Unlist drivers ``ids`` from the bucket table."""
    d = state.drivers
    safe = jnp.maximum(ids, 0)
    cell, slot = d.bucket_cell[safe], d.bucket_slot[safe]
    listed = valid & (slot >= 0)
    nb = state.bucket.shape[0]
    bucket = state.bucket.at[jnp.where(listed, cell, nb), slot].set(-1, mode="drop")
    D = d.status.shape[0]
    tgt = jnp.where(valid, ids, D)
    drivers = d.replace(bucket_cell=d.bucket_cell.at[tgt].set(-1, mode="drop"),
                        bucket_slot=d.bucket_slot.at[tgt].set(-1, mode="drop"))
    return state.replace(bucket=bucket, drivers=drivers)


def _set_status(state: SimState, ids, valid, status) -> SimState:
    D = state.drivers.status.shape[0]
    new = state.drivers.status.at[jnp.where(valid, ids, D)].set(status, mode="drop")
    return state.replace(drivers=state.drivers.replace(status=new))


def advance_time(state: SimState, events: BatchEvents, now, cfg: SimConfig) -> SimState:
    """Trips ending by ``now`` free their drivers (idle, or offline past shift end); shifts
    starting go idle; shifts ending take idle drivers offline (busy ones leave at trip end)."""
    H = cfg.calendar_batches
    row = state.batch % H
    live = state.cal_stamp[row] == state.batch
    n_done = jnp.where(live, state.cal_count[row], 0)
    done = jnp.where(jnp.arange(cfg.calendar_slots) < n_done, state.calendar[row], -1)
    done_ok = done >= 0
    safe = jnp.maximum(done, 0)
    back_idle = done_ok & (state.drivers.shift_end[safe] > now)
    state = _set_status(state, done, done_ok & back_idle, IDLE)
    state = _set_status(state, done, done_ok & ~back_idle, OFFLINE)
    on = events.online
    on_ok = on >= 0
    on_ok = on_ok & (state.drivers.status[jnp.maximum(on, 0)] == OFFLINE)
    state = _set_status(state, on, on_ok, IDLE)
    state = bucket_insert(state, jnp.concatenate([done, on]),
                          jnp.concatenate([done_ok & back_idle, on_ok]), cfg)
    off = events.offline
    off_ok = (off >= 0) & (state.drivers.status[jnp.maximum(off, 0)] == IDLE)
    state = bucket_remove(state, off, off_ok)
    return _set_status(state, off, off_ok, OFFLINE)


def arrive_orders(state: SimState, arrivals, now, cfg: SimConfig) -> SimState:
    """Put the batch's orders into free pending slots (overflow is dropped and counted)."""
    p = state.pending
    P = p.valid.shape[0]
    free = ~p.valid
    rank = prefix_count(arrivals.valid) - 1
    slot = nth_true(jnp.broadcast_to(free, (rank.shape[0], P)), rank)
    ok = arrivals.valid & (slot < P)
    tgt = jnp.where(ok, slot, P)
    expiry = now + arrivals.patience if cfg.patience == "exponential" else jnp.full_like(
        arrivals.patience, -jnp.inf)
    put = lambda dst, src: dst.at[tgt].set(src, mode="drop")
    pending = Pending(valid=put(p.valid, True), order=put(p.order, arrivals.order),
                      ox=put(p.ox, arrivals.ox), oy=put(p.oy, arrivals.oy),
                      dx=put(p.dx, arrivals.dx), dy=put(p.dy, arrivals.dy),
                      fare=put(p.fare, arrivals.fare), duration=put(p.duration, arrivals.duration),
                      expiry=put(p.expiry, expiry))
    t = state.totals
    totals = t.replace(arrived=t.arrived + jnp.sum(arrivals.valid),
                       pending_overflow=t.pending_overflow + jnp.sum(arrivals.valid & ~ok))
    return state.replace(pending=pending, totals=totals)


def _k_smallest(dist, k: int, method: str):
    """Indices and values of the k smallest entries per row (inf = invalid)."""
    if method == "top_k":
        neg, idx = jax.lax.top_k(-dist, k)
        return idx, -neg
    if method == "sort":
        n = dist.shape[1]
        vals, idx = jax.lax.sort_key_val(dist, jnp.broadcast_to(jnp.arange(n), dist.shape),
                                         dimension=1)
        return idx[:, :k], vals[:, :k]
    rows = jnp.arange(dist.shape[0])
    idx, vals = [], []
    for _ in range(k):  # k argmin passes (measured ~10x slower than lax.top_k here, see docs)
        j = jnp.argmin(dist, axis=1)
        idx.append(j)
        vals.append(dist[rows, j])
        dist = dist.at[rows, j].set(jnp.inf)
    return jnp.stack(idx, 1), jnp.stack(vals, 1)


def _search(state: SimState, ox, oy, valid, cfg: SimConfig):
    """k nearest listed idle drivers within the radius of the points (ox, oy) [R] ->
    (driver i32[R, k] (-1 none), dist f32[R, k], mask bool[R, k])."""
    col = jnp.clip(jnp.floor(ox / cfg.bucket_cell_m).astype(jnp.int32), 0, cfg.bucket_cols - 1)
    row = jnp.clip(jnp.floor(oy / cfg.bucket_cell_m).astype(jnp.int32), 0, cfg.bucket_rows - 1)
    offs = jnp.array([-1, 0, 1], jnp.int32)
    cc = col[:, None, None] + offs[None, None, :]
    rr = row[:, None, None] + offs[None, :, None]
    inside = (cc >= 0) & (cc < cfg.bucket_cols) & (rr >= 0) & (rr < cfg.bucket_rows)
    cell = jnp.clip(rr, 0, cfg.bucket_rows - 1) * cfg.bucket_cols + jnp.clip(
        cc, 0, cfg.bucket_cols - 1)                                  # [R, 3, 3]
    R = ox.shape[0]
    cell = cell.reshape(R, 9)
    ids = state.bucket[cell]                                         # [R, 9, S] row gathers
    ids = jnp.where(inside.reshape(R, 9)[:, :, None], ids, -1).reshape(R, -1)
    bx = state.bucket_x[cell].reshape(R, -1)
    by = state.bucket_y[cell].reshape(R, -1)
    dist = jnp.hypot(bx - ox[:, None], by - oy[:, None]) * cfg.pickup_road_factor
    ok = (ids >= 0) & valid[:, None] & (dist <= cfg.radius_m)
    dist = jnp.where(ok, dist, jnp.inf)
    idx, vals = _k_smallest(dist, cfg.k_nearest, cfg.topk_method)
    mask = jnp.isfinite(vals)
    driver = jnp.where(mask, jnp.take_along_axis(ids, idx, axis=1), -1)
    return driver, jnp.where(mask, vals, 0.0), mask


def candidate_edges(state: SimState, cfg: SimConfig, axis_name=None) -> Candidates:
    """For each pending order, its k nearest listed idle drivers within ``radius_m``.

    Searches the 3x3 bucket cells around the order's origin (cells >= radius wide). The
    search ([rows, 9 * bucket_slots] distances and a top-k) runs on the smallest class of
    ``cfg.candidate_classes`` that holds the valid pending orders (``lax.switch``; the orders
    are gathered to the front and the results scattered back to their slots, so the result is
    the same as searching all ``max_pending`` slots): most batches have a few pending orders.
    ``axis_name``: see :data:`PLATFORM_AXIS` (any class that holds the orders gives the same
    candidates, so a shared class changes nothing but the cost).
    """
    p = state.pending
    P = p.valid.shape[0]
    sizes = cfg.pending_sizes
    if len(sizes) == 1:
        return Candidates(*_search(state, p.ox, p.oy, p.valid, cfg))

    def branch(R):
        def run(state):
            # slots of the first R valid pending orders (P: none)
            slot = nth_true(jnp.broadcast_to(p.valid, (R, P)), jnp.arange(R, dtype=jnp.int32))
            src = jnp.minimum(slot, P - 1)
            driver, dist, mask = _search(state, p.ox[src], p.oy[src], slot < P, cfg)
            k = driver.shape[1]
            put = lambda fill, x: jnp.full((P, k), fill, x.dtype).at[slot].set(x, mode="drop")
            return put(-1, driver), put(0.0, dist), put(False, mask)
        return run

    n_valid = jnp.sum(p.valid)
    index = jnp.sum(jnp.array([n_valid > r for r in sizes[:-1]], jnp.int32))
    return Candidates(*jax.lax.switch(shared_class(index, axis_name), [branch(r) for r in sizes],
                                      state))


def calendar_entries(state: SimState, cfg: SimConfig):
    """Live trip ends: (driver ids [H, Sc], mask [H, Sc]) for batches >= the current one."""
    slots = jnp.arange(cfg.calendar_slots)[None, :]
    live = (state.cal_stamp >= state.batch)[:, None] & (slots < state.cal_count[:, None])
    return state.calendar, live & (state.calendar >= 0)


def residual_graph(state: SimState):
    """The residual bipartite graph after local matching: (pending order mask [P], listed idle
    driver mask [D]). Orders keep their fields in ``state.pending``; drivers in
    ``state.drivers`` (positions x, y)."""
    listed = (state.drivers.status == IDLE) & (state.drivers.bucket_slot >= 0)
    return state.pending.valid, listed


def serve_orders(state: SimState, assigned, cancelled, dist) -> SimState:
    """Order side of assignments: assigned pending slots leave the pool; completed ones (not
    cancelled) earn their fare. ``assigned``/``cancelled`` bool[P], ``dist`` f32[P]."""
    p, t = state.pending, state.totals
    served = assigned & ~cancelled
    totals = t.replace(matched=t.matched + jnp.sum(assigned),
                       cancelled=t.cancelled + jnp.sum(assigned & cancelled),
                       completed=t.completed + jnp.sum(served),
                       revenue=t.revenue + jnp.sum(jnp.where(served, p.fare, 0.0)),
                       pickup_m=t.pickup_m + jnp.sum(jnp.where(served, dist, 0.0)))
    pending = p.replace(valid=p.valid & ~assigned, order=jnp.where(assigned, -1, p.order))
    return state.replace(pending=pending, totals=totals)


def dispatch_drivers(state: SimState, driver, go, dist, duration, dest_x, dest_y, now,
                     cfg: SimConfig) -> SimState:
    """Driver side: drivers ``driver[i]`` with ``go[i]`` become busy until pick-up + trip
    ends and will reappear idle at (dest_x, dest_y). Vectors of any common length."""
    state = bucket_remove(state, driver, go)
    state = _set_status(state, driver, go, BUSY)
    D = state.drivers.status.shape[0]
    tgt = jnp.where(go, driver, D)
    d = state.drivers
    state = state.replace(drivers=d.replace(x=d.x.at[tgt].set(dest_x, mode="drop"),
                                            y=d.y.at[tgt].set(dest_y, mode="drop")))
    H, Sc = cfg.calendar_batches, cfg.calendar_slots
    t_end = now + trip_time(dist, duration, cfg)
    # first batch whose dispatch time reaches t_end, at least the next one, within the ring
    ahead = jnp.ceil((t_end - now) / cfg.batch_s).astype(jnp.int32)
    clamped = go & (ahead > H - 1)  # trip longer than the ring: the driver returns early
    ahead = jnp.clip(ahead, 1, H - 1)
    target = state.batch + ahead
    row = target % H
    rank = _rank_among_equal(row, go)
    base = jnp.where(state.cal_stamp[row] == target, state.cal_count[row], 0)  # stale row: 0
    slot = base + rank
    ok = go & (slot < Sc)
    calendar = state.calendar.at[jnp.where(ok, row, H), slot].set(driver, mode="drop")
    row_go = jnp.where(go, row, H)
    cal_count = state.cal_count.at[row_go].set(base, mode="drop").at[row_go].add(1, mode="drop")
    cal_stamp = state.cal_stamp.at[row_go].set(target, mode="drop")
    t = state.totals
    return state.replace(calendar=calendar, cal_count=cal_count, cal_stamp=cal_stamp,
                         totals=t.replace(
        calendar_overflow=t.calendar_overflow + jnp.sum(go & ~ok),
        calendar_clamped=t.calendar_clamped + jnp.sum(clamped)))


def apply_assignments(state: SimState, assignment: Assignment, key, now,
                      cfg: SimConfig) -> SimState:
    """Assignments of one platform (its orders to its drivers): each assigned order cancels
    with probability cancel(d) (its driver stays idle), otherwise the driver goes busy."""
    assigned = assignment.driver >= 0
    u = jax.random.uniform(key, assignment.driver.shape)
    cancelled = assigned & (u < cancel_probability(assignment.dist, cfg))
    p = state.pending
    state = serve_orders(state, assigned, cancelled, assignment.dist)
    return dispatch_drivers(state, assignment.driver, assigned & ~cancelled, assignment.dist,
                            p.duration, p.dx, p.dy, now, cfg)


def learn(state: SimState, graph: Graph, assignment: Assignment, now, cfg: SimConfig,
          pre_x=None, pre_y=None) -> SimState:
    """Online TD(0) over the batch's candidate drivers (value.td0_update), at their positions
    before dispatch (``pre_x``/``pre_y`` [M]); matched drivers learn from their edge weight."""
    cols = graph.col_driver
    valid = cols >= 0
    matched_col = jnp.zeros(cols.shape, bool)
    weight_col = jnp.zeros(cols.shape, jnp.float32)
    # column of each assigned driver: compare against the column list (M x P, small)
    hit = (cols[:, None] == assignment.driver[None, :]) & valid[:, None]
    matched_col = jnp.any(hit, axis=1)
    weight_col = jnp.sum(jnp.where(hit, assignment.weight[None, :], 0.0), axis=1)
    value = td0_update(state.value, now, pre_x, pre_y, valid, matched_col, weight_col, cfg)
    return state.replace(value=value)


def expire_orders(state: SimState, now, cfg: SimConfig) -> SimState:
    """Drop pending orders whose patience ends before the next dispatch."""
    p = state.pending
    gone = p.valid & (p.expiry < now + cfg.batch_s)
    t = state.totals
    return state.replace(pending=p.replace(valid=p.valid & ~gone,
                                           order=jnp.where(gone, -1, p.order)),
                         totals=t.replace(expired=t.expired + jnp.sum(gone)))


def account(state: SimState, cfg: SimConfig) -> SimState:
    """Driver-time counters (fused reductions over D) and advance the batch index."""
    s = state.drivers.status
    idle = jnp.sum(s == IDLE).astype(jnp.float32)
    busy = jnp.sum(s == BUSY).astype(jnp.float32)
    t = state.totals
    totals = t.replace(idle_s=t.idle_s + idle * cfg.batch_s, busy_s=t.busy_s + busy * cfg.batch_s,
                       online_s=t.online_s + (idle + busy) * cfg.batch_s)
    return state.replace(totals=totals, batch=state.batch + 1)


def dispatch_batch(state: SimState, events: BatchEvents, key, t_start, cfg: SimConfig,
                   axis_name=None):
    """First half of a batch, up to the residual graph: events, local matching, TD(0).

    Returns (state, BatchLog without its closing fields, now, the local Assignment per pending
    slot (valid before the assigned orders left the pool)). Between this and
    :func:`close_batch` the state's residual graph (:func:`residual_graph`) is what a
    second-stage (cross-platform) matching may still use. ``axis_name``: the platform axis when
    called under ``jax.vmap`` over platforms (:data:`PLATFORM_AXIS`), else None.
    """
    now = now_of(state, t_start, cfg)
    key = jax.random.fold_in(key, state.batch)
    state = advance_time(state, events, now, cfg)
    state = arrive_orders(state, events.arrivals, now, cfg)
    cands = candidate_edges(state, cfg, axis_name)
    assignment, graph, total, exact, dropped = local_dispatch(state, cands, now, cfg, axis_name)
    col = jnp.maximum(graph.col_driver, 0)
    pre_x, pre_y = state.drivers.x[col], state.drivers.y[col]
    revenue_before = state.totals.revenue
    state = apply_assignments(state, assignment, key, now, cfg)
    if cfg.td_online and cfg.dispatcher == "ltd":
        state = learn(state, graph, assignment, now, cfg, pre_x, pre_y)
    t = state.totals
    state = state.replace(totals=t.replace(row_overflow=t.row_overflow + dropped[0],
                                           column_overflow=t.column_overflow + dropped[1]))
    log = BatchLog(pending=jnp.sum(state.pending.valid), idle=jnp.zeros((), jnp.int32),
                   matched=jnp.sum(assignment.driver >= 0), revenue=revenue_before, total=total,
                   exact=exact, rows=jnp.sum(jnp.any(graph.mask, axis=1)),
                   cols=jnp.sum(graph.col_driver >= 0))
    return state, log, now, assignment


def close_batch(state: SimState, log: BatchLog, now, cfg: SimConfig):
    """Second half of a batch: expire orders, count driver time, advance the batch index.

    ``log.revenue`` holds the revenue before the batch (from :func:`dispatch_batch`) and
    becomes the batch's revenue; ``log.idle`` the idle drivers after expiry.
    """
    state = expire_orders(state, now, cfg)
    idle = jnp.sum(state.drivers.status == IDLE)
    state = account(state, cfg)
    return state, log.replace(idle=idle, revenue=state.totals.revenue - log.revenue)


def step(state: SimState, events: BatchEvents, key, t_start, cfg: SimConfig, axis_name=None):
    """One batch of single-platform dispatch -> (state, BatchLog)."""
    state, log, now, _ = dispatch_batch(state, events, key, t_start, cfg, axis_name)
    return close_batch(state, log, now, cfg)


def simulate_day(state: SimState, day: DayData, key, cfg: SimConfig, axis_name=None):
    """The whole day as one ``lax.scan`` over batches -> (final state, BatchLog[num_batches])."""
    def body(carry, events):
        return step(carry, events, key, day.t_start, cfg, axis_name)
    return jax.lax.scan(body, state, day.events)


@functools.partial(jax.jit, static_argnames=("cfg",))
def run_day(day: DayData, key, cfg: SimConfig, value=None):
    """Jitted single-platform day from a fresh state (``value``: initial V table)."""
    return simulate_day(init_state(day, cfg, value), day, key, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "devices"))
def run_platforms(days: DayData, keys, cfg: SimConfig, values=None, mode: str = "vmap",
                  devices: int = 0):
    """K platforms in one program over a leading platform axis of days/keys/values.

    ``mode="vmap"`` batches the platforms (``jax.vmap``); ``mode="map"`` runs them one after
    another with ``lax.map`` (same results; on CPU it avoids paying for the slowest platform's
    matcher iterations in every platform, see docs/dispatch.md); ``mode="shard"`` splits the
    platforms over ``devices`` local devices (0 = all, at most K; ``jax.shard_map``), each
    running its block with ``lax.map`` (K is padded to a multiple of the device count with
    copies of the first platform, discarded). On a 2-core CPU with 2 host devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=2``) this uses both cores.
    """
    if mode not in ("vmap", "map", "shard"):
        raise ConfigError(f"mode must be vmap, map or shard, got {mode!r}")
    if values is None:
        values = jnp.broadcast_to(init_value(cfg), (keys.shape[0],) + init_value(cfg).shape)

    def one(args, axis_name=None):
        d, k, v = args
        return simulate_day(init_state(d, cfg, v), d, k, cfg, axis_name)

    if mode == "vmap":
        return jax.vmap(lambda d, k, v: one((d, k, v), PLATFORM_AXIS),
                        axis_name=PLATFORM_AXIS)(days, keys, values)
    if mode == "map":
        return jax.lax.map(one, (days, keys, values))
    num = keys.shape[0]
    mesh = local_mesh("platforms", devices, num, setting="devices")
    block = split_leading(lambda d, k, v: jax.lax.map(one, (d, k, v)), mesh)
    return unpad_leading(block(*pad_leading((days, keys, values), padded_size(num, mesh))), num)
