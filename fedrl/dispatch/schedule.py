"""Host-side, once per day: bucket orders and shift events into padded per-batch arrays.

The jitted day is one ``lax.scan`` over batches; its inputs are a :class:`DayData` whose
``events`` have a leading batch axis ([num_batches, max_orders_per_batch] with masks). Several
platforms' days are padded to common sizes and stacked on a leading platform axis
(:func:`stack_days`) for ``jax.vmap``.
"""
from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedrl.config import ConfigError
from fedrl.data.gaia import Drivers as DriverTable
from fedrl.data.gaia import Orders, Bounds
from fedrl.data.grid import local_projection
from fedrl.dispatch.types import Arrivals, BatchEvents, SimConfig


@struct.dataclass
class DayData:
    """Everything the jitted day needs: per-batch events and per-driver static data."""
    events: BatchEvents        # leading axis: batch
    driver_x: jnp.ndarray      # f32[D] shift-start position
    driver_y: jnp.ndarray
    shift_end: jnp.ndarray     # f32[D] seconds since day start
    exists: jnp.ndarray        # bool[D]
    online0: jnp.ndarray       # bool[D] on shift when the window starts (idle at init)
    t_start: jnp.ndarray       # f32[] seconds since day start of the first batch


@dataclasses.dataclass
class DayInfo:
    """Host-side facts about a built day (not traced)."""
    num_batches: int
    num_orders: int
    num_drivers: int
    max_arrivals: int
    arrivals_dropped: int   # orders beyond max_arrivals in a batch (0 unless capped)


def _pad_to(n: int, multiple: int = 4) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def order_fares(reward, ox, oy, dx, dy, t_rel, fare_fn):
    """Fares of orders: ``reward`` (the file's reward_units) when present, else
    ``fare_fn(straight_km, hour_of_day)`` from the straight-line trip (metres) and the start
    time (seconds after the local midnight); ``fedrl.data.city.fare_function(city)`` is the
    city's tariff. Without either: ConfigError (no silent default tariff)."""
    if reward is not None:
        return np.asarray(reward, np.float64)
    if fare_fn is None:
        raise ConfigError("the orders have no reward_units column: pass fare_fn (e.g. "
                          "fedrl.data.city.fare_function(city)) to price them")
    straight_km = np.hypot(np.asarray(dx) - ox, np.asarray(dy) - oy) / 1000.0
    return np.asarray(fare_fn(straight_km, (np.asarray(t_rel, np.float64) / 3600.0) % 24.0),
                      np.float64)


def expected_waiting(batch_of, num_batches: int, cfg: SimConfig) -> float:
    """Orders expected to wait at once with ``exponential`` patience: the busiest 10 minutes'
    arrivals per batch times the mean patience in batches (Little's law, every order
    unmatched: the pool size that never drops an order)."""
    window = max(1, int(round(600.0 / cfg.batch_s)))
    counts = np.bincount(batch_of, minlength=num_batches).astype(np.float64)
    if counts.size == 0:
        return 0.0
    per_window = np.convolve(counts, np.ones(min(window, counts.size)), mode="valid")
    return float(per_window.max() / min(window, counts.size) * cfg.patience_mean_s / cfg.batch_s)


def build_day(orders: Orders, drivers: DriverTable, cfg: SimConfig, *, bounds: Bounds,
              day_start: int, t_start_s: float, num_batches: int, seed: int,
              fare_fn=None, max_arrivals: int | None = None,
              patience_s: np.ndarray | None = None) -> tuple[DayData, DayInfo]:
    """Pre-bucket a day: orders by arrival batch, driver shifts as on/offline events.

    ``t_start_s`` is the simulated window's start in seconds after ``day_start`` (Unix time of
    the local midnight). Orders without ``reward`` are priced by ``fare_fn(straight_km,
    hour)`` (:func:`order_fares`; required then). Patience (``exponential`` mode) is drawn
    here from ``numpy.random.default_rng(seed)``, unless ``patience_s`` gives each of
    ``orders`` its own (seconds, aligned with ``orders``: days built from subsets of one order
    table then share each order's draw); with it, a pending pool smaller than the
    orders expected to wait at the busiest time (:func:`expected_waiting`) gives a warning
    (new orders are dropped when the pool is full, counted in ``pending_overflow``).
    """
    cfg.validate()
    if not (isinstance(num_batches, (int, np.integer)) and num_batches >= 1):
        raise ConfigError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    proj = local_projection(bounds)
    dt = cfg.batch_s
    t_rel = (orders.start - day_start).astype(np.float64)
    b = np.floor((t_rel - t_start_s) / dt).astype(np.int64)
    keep = (b >= 0) & (b < num_batches)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(b[idx], kind="stable")]
    bi = b[idx]
    ox, oy = proj.to_xy(orders.pickup_lon[idx], orders.pickup_lat[idx])
    dx, dy = proj.to_xy(orders.dropoff_lon[idx], orders.dropoff_lat[idx])
    duration = np.maximum((orders.stop[idx] - orders.start[idx]).astype(np.float64), dt)
    fare = order_fares(None if orders.reward is None else orders.reward[idx], ox, oy, dx, dy,
                       t_rel[idx], fare_fn)
    if cfg.patience == "exponential":
        waiting = expected_waiting(bi, num_batches, cfg)
        if waiting > cfg.max_pending:
            warnings.warn(
                f"sim.max_pending={cfg.max_pending} is below the ~{waiting:.0f} orders that wait "
                f"at once at the busiest time when few are matched, with exponential patience (mean "
                f"{cfg.patience_mean_s:g} s): orders arriving to a full pool are dropped "
                "(pending_overflow); raise sim.max_pending", stacklevel=2)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 300]))
    if patience_s is not None:
        patience_s = np.asarray(patience_s, np.float64)
        if patience_s.shape != (len(orders),) or not np.all(np.isfinite(patience_s)) \
                or np.any(patience_s < 0):
            raise ConfigError(f"patience_s must hold one finite patience >= 0 (seconds) per "
                              f"order ({len(orders)}), got shape {patience_s.shape}")
    if cfg.patience == "exponential":
        patience = (rng.exponential(cfg.patience_mean_s, len(idx)) if patience_s is None
                    else patience_s[idx])
    else:
        patience = np.zeros(len(idx))
    counts = np.bincount(bi, minlength=num_batches)
    need = int(counts.max()) if len(counts) else 0
    cap = _pad_to(need) if max_arrivals is None else int(max_arrivals)
    rank = np.arange(len(bi)) - np.repeat(np.cumsum(counts) - counts, counts)
    fits = rank < cap
    dropped = int((~fits).sum())

    def grid(values, fill, dtype):
        out = np.full((num_batches, cap), fill, dtype)
        out[bi[fits], rank[fits]] = np.asarray(values)[fits]
        return out

    arrivals = Arrivals(
        valid=grid(np.ones(len(idx), bool), False, bool),
        order=grid(idx, -1, np.int32),
        ox=grid(ox, 0, np.float32), oy=grid(oy, 0, np.float32),
        dx=grid(dx, 0, np.float32), dy=grid(dy, 0, np.float32),
        fare=grid(fare, 0, np.float32), duration=grid(duration, 0, np.float32),
        patience=grid(patience, 0, np.float32))

    # drivers whose shift overlaps the window; shift events in batches
    s_rel = (drivers.shift_start - day_start).astype(np.float64)
    e_rel = (drivers.shift_end - day_start).astype(np.float64)
    t_end = t_start_s + num_batches * dt
    dkeep = np.flatnonzero((e_rel > t_start_s) & (s_rel < t_end))
    on_b = np.floor((s_rel[dkeep] - t_start_s) / dt).astype(np.int64)
    off_b = np.floor((e_rel[dkeep] - t_start_s) / dt).astype(np.int64)
    local = np.arange(len(dkeep))
    # Drivers already on shift start idle in the initial state, not as one huge batch-0 event
    # (the per-batch event width would otherwise be the size of that wave for every batch).
    online0 = on_b < 0
    online = _event_grid(on_b[~online0], local[~online0], num_batches)
    in_window = off_b < num_batches
    offline = _event_grid(off_b[in_window], local[in_window], num_batches)
    x, y = proj.to_xy(drivers.lon[dkeep], drivers.lat[dkeep])
    events = BatchEvents(arrivals=arrivals, online=online, offline=offline)
    day = DayData(events=events, driver_x=np.asarray(x, np.float32),
                  driver_y=np.asarray(y, np.float32), shift_end=e_rel[dkeep].astype(np.float32),
                  exists=np.ones(len(dkeep), bool), online0=online0,
                  t_start=np.float32(t_start_s))
    info = DayInfo(num_batches, len(idx), len(dkeep), cap, dropped)
    return jax.device_put(day), info   # (device_put: no eager program per array shape)


def _event_grid(batch_of, ids, num_batches) -> np.ndarray:
    order = np.argsort(batch_of, kind="stable")
    batch_of, ids = batch_of[order], ids[order]
    counts = np.bincount(batch_of, minlength=num_batches)
    cap = _pad_to(int(counts.max()) if len(counts) and counts.size else 1)
    rank = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((num_batches, cap), -1, np.int32)
    out[batch_of, rank] = ids
    return out


def _pad_axis(x, size: int, axis: int, fill):
    x = np.asarray(x)
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths, constant_values=fill)


def stack_days(days: list[DayData]) -> DayData:
    """Pad per-platform days to common sizes and stack them on a leading platform axis."""
    # stacked on the host, then one transfer (an eager jnp.stack compiles a program per shape)
    return jax.device_put(stack_days_host(days))


def stack_days_host(days: list[DayData]) -> DayData:
    """:func:`stack_days` with NumPy leaves (no transfer to the device)."""
    nb = {int(d.events.online.shape[0]) for d in days}
    if len(nb) != 1:
        raise ConfigError(f"stacked days must have the same number of batches, got {nb}")
    A = max(int(d.events.arrivals.valid.shape[1]) for d in days)
    Son = max(int(d.events.online.shape[1]) for d in days)
    Soff = max(int(d.events.offline.shape[1]) for d in days)
    D = max(int(d.driver_x.shape[0]) for d in days)
    fills = {"valid": False, "order": -1}
    out = []
    for d in days:
        arr = Arrivals(**{f.name: _pad_axis(getattr(d.events.arrivals, f.name), A, 1,
                                            fills.get(f.name, 0))
                          for f in dataclasses.fields(Arrivals)})
        ev = BatchEvents(arr, _pad_axis(d.events.online, Son, 1, -1),
                         _pad_axis(d.events.offline, Soff, 1, -1))
        out.append(DayData(ev, _pad_axis(d.driver_x, D, 0, 0.0), _pad_axis(d.driver_y, D, 0, 0.0),
                           _pad_axis(d.shift_end, D, 0, 0.0), _pad_axis(d.exists, D, 0, False),
                           _pad_axis(d.online0, D, 0, False), np.asarray(d.t_start)))
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *out)


def split_by_platform(orders: Orders, drivers: DriverTable, order_platform: np.ndarray,
                      driver_platform: np.ndarray, num_platforms: int):
    """[(orders_k, drivers_k)] for k < num_platforms."""
    return [(orders.subset(order_platform == k), drivers.subset(driver_platform == k))
            for k in range(num_platforms)]
