"""Tabular state values V(time slot, hexagon) and their learning (Xu et al., KDD 2018).

Xu, Z. et al., "Large-Scale Order Dispatch in On-Demand Ride-Hailing Platforms: A Learning and
Planning Approach", KDD 2018 -- the local dispatcher of Fed-LTD (Wang et al., KDD 2022, [20]).

Two learners, both offered (shared/spec/fedltd.md step 1):

* :func:`offline_policy_evaluation` -- Xu et al.'s offline evaluation from historical trips:
  a trip from state s0 = (slot t0, origin cell) lasting T slots with fare R is the transition
  s0 -> s1 = (t0 + T, destination cell) with the fare spread over the trip,
  ``R_gamma = sum_{t<T} gamma^t R / T``, and the update ``V(s0) += 1/N(s0) (R_gamma +
  gamma^T V(s1) - V(s0))`` applied backward over time slots (so V(s1) is final when used).
  Because every trip moves forward by >= 1 slot, the sequential 1/N updates of one slot equal
  the batch mean ``(N V + sum targets) / (N + n)``, which is what the code computes.
  Only trips are used (Xu et al. also use idle driver transitions, which GAIA order files do
  not contain) [reconstructed]; three corrections stand in for them (``SimConfig``; all 0 /
  False give the plain trip evaluation): ``value_gap_s`` discounts each target by the driver
  time between trips (idle wait + pick-up), so that V is the value of an *idle* driver;
  ``value_smooth_rings`` averages each state with its neighbouring cells (count-weighted);
  ``value_fill_rings`` / ``value_fill_slot_mean`` give states without trips the value of
  nearby visited ones instead of 0. See docs/dispatch.md for the measurements behind them.
* :func:`td0_update` -- the online TD(0) rule of the KDD Cup 2020 code used by Fed-LTD
  (alpha = 0.025): a matched driver's ``V(loc) += alpha * w(u, v)`` with w the edge weight
  (advantage), an unmatched candidate driver's ``V(loc) += alpha * (g V(loc) - V(loc))`` with
  ``g = gamma ** (batch_s / slot_s)`` the discount of the 2-s batch it waited (gamma is per
  10-minute slot; ``td_idle_discount="slot"`` keeps the first version's ``g = gamma``).
  Updates of one batch are synchronous: all increments use V before the batch and add up when
  several drivers share a cell [reconstructed]. Only drivers that were candidates in the batch
  are updated as "unmatched" [reconstructed: idle drivers without any order nearby carry no
  information about the batch].

Default: the learning-to-dispatch dispatcher starts from the offline evaluation of a previous
day and then runs online TD(0) (``SimConfig.td_online=True``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.data.grid import Grid, hex_grid
from fedrl.dispatch.types import SimConfig


@functools.lru_cache(maxsize=16)
def value_grid(cfg: SimConfig) -> Grid:
    """The hexagonal grid of the value table for this city geometry."""
    return hex_grid(cfg.width_m, cfg.height_m, cfg.value_cell_m)


def init_value(cfg: SimConfig) -> jnp.ndarray:
    return jnp.zeros((cfg.num_slots, value_grid(cfg).num_cells), jnp.float32)


def time_slot(t, cfg: SimConfig):
    """Slot index of time t (seconds since midnight); may be >= num_slots past the day."""
    return jnp.floor(t / cfg.slot_s).astype(jnp.int32)


def value_at(value, t, x, y, cfg: SimConfig):
    """V(slot(t), cell(x, y)); 0 beyond the last slot of the day (terminal)."""
    slot = time_slot(t, cfg)
    cell = value_grid(cfg).cell_of_xy(x, y)
    inside = slot < value.shape[0]
    return jnp.where(inside, value[jnp.clip(slot, 0, value.shape[0] - 1), cell], 0.0)


def idle_discount(cfg: SimConfig) -> float:
    """Discount of one unmatched batch in the TD target (see ``SimConfig.td_idle_discount``)."""
    if cfg.td_idle_discount == "slot":
        return cfg.gamma
    return cfg.gamma ** (cfg.batch_s / cfg.slot_s)


def td0_update(value, t, x, y, valid, matched, weight, cfg: SimConfig):
    """Online TD(0) of one batch for drivers at (x, y) (any shape; ``valid`` masks padding).

    matched: ``V += alpha * weight``; unmatched: ``V += alpha * (g - 1) * V`` with ``g`` the
    discount of one batch: ``gamma ** (batch_s / slot_s)`` (``td_idle_discount="elapsed"``,
    gamma is per time slot) or ``gamma`` (``"slot"``, the per-batch rule of the first version).
    At ``t >= 24 h`` (the last batch of a full day dispatches at 86,400 s) nothing is updated:
    V is terminal there, as in ``value_at``.
    """
    raw = time_slot(t, cfg)
    # at or past the end of the day V is terminal (value_at reads 0 there): nothing to learn,
    # rather than writing into the last slot, which the weights never read at that time
    valid = valid & (raw < value.shape[0])
    slot = jnp.clip(raw, 0, value.shape[0] - 1)
    cell = value_grid(cfg).cell_of_xy(x, y)
    v = value[slot, cell]
    delta = jnp.where(matched, cfg.alpha * weight, cfg.alpha * (idle_discount(cfg) - 1.0) * v)
    delta = jnp.where(valid, delta, 0.0)
    flat = slot * value.shape[1] + cell
    flat = jnp.where(valid, flat, value.size)  # out of range -> dropped
    return (value.reshape(-1).at[flat.reshape(-1)].add(delta.reshape(-1), mode="drop")
            .reshape(value.shape))


# ------------------------------------------------------------------------------------------
# Offline policy evaluation
# ------------------------------------------------------------------------------------------
def trip_transitions(t0_s, duration_s, ox, oy, dx, dy, cfg: SimConfig):
    """Trips -> (slot0, cell0, T slots, cell1) as NumPy arrays; T = max(1, round(dur/slot))."""
    grid = value_grid(cfg)
    slot0 = np.floor(np.asarray(t0_s) / cfg.slot_s).astype(np.int64)
    T = np.maximum(1, np.round(np.asarray(duration_s) / cfg.slot_s)).astype(np.int64)
    return slot0, grid.cell_of_xy_np(ox, oy), T, grid.cell_of_xy_np(dx, dy)


def offline_policy_evaluation(t0_s, duration_s, ox, oy, dx, dy, fare, cfg: SimConfig):
    """Xu et al.'s offline policy evaluation from historical trips -> (V [T, G], N [T, G]).

    A jitted backward ``lax.scan`` over time slots; trips are pre-bucketed by start slot.
    """
    slot0, cell0, T, cell1 = trip_transitions(t0_s, duration_s, ox, oy, dx, dy, cfg)
    fare = np.asarray(fare, np.float64)
    gamma = cfg.gamma
    if gamma < 1.0:
        r_gamma = fare / T * (1.0 - gamma ** T) / (1.0 - gamma)
    else:
        r_gamma = fare.copy()
    S, G = cfg.num_slots, value_grid(cfg).num_cells
    keep = (slot0 >= 0) & (slot0 < S)
    slot0, cell0, T, cell1, r_gamma = (a[keep] for a in (slot0, cell0, T, cell1, r_gamma))
    order = np.argsort(slot0, kind="stable")
    slot0, cell0, T, cell1, r_gamma = (a[order] for a in (slot0, cell0, T, cell1, r_gamma))
    counts = np.bincount(slot0, minlength=S)
    # trips per slot padded to a power of two (masked rows are dropped by the scan's scatters,
    # so results do not depend on it): platforms and seeds of similar size then share one
    # compiled scan instead of compiling one per trip count (~1 s each)
    cap = 1 << (max(1, int(counts.max()) if len(counts) else 1) - 1).bit_length()
    rank = np.arange(len(slot0)) - np.repeat(np.cumsum(counts) - counts, counts)

    def grid(values, fill, dtype):
        out = np.full((S, cap), fill, dtype)
        out[slot0, rank] = values
        return out

    xs = (grid(np.ones(len(slot0), bool), False, bool), grid(cell0, 0, np.int32),
          grid(T, 1, np.int32), grid(cell1, 0, np.int32), grid(r_gamma, 0.0, np.float32))
    nbrs = jnp.asarray(value_grid(cfg).neighbors, jnp.int32)
    V, N = _ope_scan(jnp.asarray(np.arange(S, dtype=np.int32)), *map(jnp.asarray, xs), nbrs,
                     S=S, G=G, gamma=float(gamma), rings=cfg.value_fill_rings,
                     slot_mean=cfg.value_fill_slot_mean, smooth=cfg.value_smooth_rings,
                     gap_discount=float(gamma ** (cfg.value_gap_s / cfg.slot_s)))
    return V, N


def smooth_values(v, n, nbrs, rings: int):
    """Count-weighted mean of each cell's value over the cell and its neighbours, ``rings``
    times [reconstructed]: a shrinkage of noisy per-state means (a morning state has a handful
    of trips) towards their surroundings; cells with no sample in reach keep ``v``."""
    ok = nbrs >= 0
    safe = jnp.maximum(nbrs, 0)
    wt = jnp.where(n > 0, n, 0.0)
    val = v
    for _ in range(rings):
        w_nb = jnp.where(ok, wt[safe], 0.0)
        w_sum = wt + jnp.sum(w_nb, axis=1)
        s_sum = wt * val + jnp.sum(w_nb * val[safe], axis=1)
        val = jnp.where(w_sum > 0, s_sum / jnp.maximum(w_sum, 1e-30), val)
        wt = w_sum
    return val


def fill_unvisited(v, n, nbrs, rings: int, slot_mean: bool):
    """Values of one slot's unvisited cells (``n == 0``) from visited ones [reconstructed].

    A trip-only table has no sample for most (slot, cell) states (at scale 0.25 about 70 % of
    the cells of a morning slot); leaving them at 0 makes every trip *into* such a cell look
    worthless, so the dispatcher refuses it. Each ring sets a still-unknown cell to the
    weighted mean of its known neighbours (weights: counts, then the filled cells' neighbour
    weight); cells still unknown after ``rings`` rings get the count-weighted slot mean.
    ``nbrs`` [G, 6] (-1 padded). Works on jnp arrays (also inside the OPE scan).
    """
    known = n > 0
    wt = jnp.where(known, n, 0.0)
    val = jnp.where(known, v, 0.0)
    ok = nbrs >= 0
    safe = jnp.maximum(nbrs, 0)
    for _ in range(rings):
        w_nb = jnp.where(ok, wt[safe], 0.0)
        s_nb = jnp.sum(w_nb * val[safe], axis=1)
        w_sum = jnp.sum(w_nb, axis=1)
        new = ~known & (w_sum > 0)
        val = jnp.where(new, s_nb / jnp.maximum(w_sum, 1e-30), val)
        wt = jnp.where(new, w_sum, wt)
        known = known | new
    if slot_mean:
        total = jnp.sum(jnp.where(n > 0, n, 0.0))
        mean = jnp.sum(jnp.where(n > 0, n * v, 0.0)) / jnp.maximum(total, 1.0)
        val = jnp.where(known, val, jnp.where(total > 0, mean, 0.0))
        known = known | (total > 0)
    return jnp.where(known, val, v)


@functools.partial(jax.jit, static_argnames=("S", "G", "gamma", "rings", "slot_mean",
                                               "smooth", "gap_discount"))
def _ope_scan(slots, valid, cell0, T, cell1, r_gamma, nbrs, *, S, G, gamma, rings, slot_mean,
              smooth, gap_discount):
    def body(carry, xs):
        V, N = carry
        slot, ok, c0, t, c1, r = xs
        s1 = slot + t
        nxt = jnp.where(s1 < S, V[jnp.clip(s1, 0, S - 1), c1], 0.0)
        # an idle driver first waits and drives to the pick-up (value_gap_s), then earns the trip
        target = gap_discount * (r + (gamma ** t.astype(jnp.float32)) * nxt)
        c0m = jnp.where(ok, c0, G)
        add_n = jnp.zeros(G, jnp.float32).at[c0m].add(1.0, mode="drop")
        add_t = jnp.zeros(G, jnp.float32).at[c0m].add(target, mode="drop")
        n_old, v_old = N[slot], V[slot]
        n_new = n_old + add_n
        v_new = jnp.where(n_new > 0, (n_old * v_old + add_t) / jnp.maximum(n_new, 1.0), v_old)
        # every slot is visited once, so V of later slots is final (and filled) when used
        v_new = fill_unvisited(smooth_values(v_new, n_new, nbrs, smooth), n_new, nbrs, rings,
                               slot_mean)
        return (V.at[slot].set(v_new), N.at[slot].set(n_new)), None

    init = (jnp.zeros((S, G), jnp.float32), jnp.zeros((S, G), jnp.float32))
    xs = tuple(a[::-1] for a in (slots, valid, cell0, T, cell1, r_gamma))
    (V, N), _ = jax.lax.scan(body, init, xs)
    return V, N
