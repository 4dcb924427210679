"""Wall time of one simulated dispatch day: jitted lax.scan vs a Python loop with scipy.

Ours: ``fedrl.dispatch.simulator.run_day`` / ``run_platforms`` (one jitted ``lax.scan`` over
43,200 two-second batches at Chengdu scale; 3 platforms as a ``vmap``, a ``lax.map``, and, with
several local devices (``scripts/bench.py --host-devices``, default one per core), split over
the devices with ``shard_map``), learning-to-dispatch weights with the JAX auction. Compile
time is reported in its own rows.

Baseline, measured in the same run: the same batch logic written with NumPy and driven by a
Python loop over batches, one ``scipy.optimize.linear_sum_assignment`` per batch (the usual
research-code structure). It runs every batch of the same day from the same initial state (no
extrapolation: an earlier version timed 900 batches at the morning peak and multiplied by 48,
which overstated the loop's cost, since night batches have few orders and cost it little while
the jitted step costs the same fixed-shape work in every batch).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from fedrl.data.city import CityConfig, generate_day, split_platforms
from fedrl.data.gaia import CHENGDU_BOUNDS
from fedrl.data.grid import local_projection
from fedrl.dispatch.day import pretrain_value
from fedrl.dispatch.schedule import build_day, split_by_platform, stack_days
from fedrl.dispatch.simulator import run_day, run_platforms
from fedrl.dispatch.types import SimConfig
from fedrl.dispatch.value import idle_discount, value_grid
from fedrl.sharding import local_mesh

from bench_cases.timing import interleaved_medians

NAME = "dispatch_day"
REPEATS = 2  # interleaved timings of every variant and baseline (a full day each)


class NumpyDispatch:
    """The simulator's batch step in NumPy (idle set, brute-force k nearest, scipy matching,
    online TD(0) on the candidate drivers)."""

    def __init__(self, day, cfg: SimConfig, value, seed: int):
        self.cfg = cfg
        ev = jax.tree.map(np.asarray, day.events)
        self.ev = ev
        self.x = np.asarray(day.driver_x, np.float64).copy()
        self.y = np.asarray(day.driver_y, np.float64).copy()
        self.shift_end = np.asarray(day.shift_end, np.float64)
        self.t_start = float(day.t_start)
        D = len(self.x)
        self.status = np.zeros(D, np.int8)       # 0 offline, 1 idle, 2 busy
        self.busy_until = np.full(D, np.inf)
        self.pending = []                        # list of dict rows
        self.value = np.asarray(value, np.float64).copy()
        self.g_idle = idle_discount(cfg)
        self.grid = value_grid(cfg)
        self.rng = np.random.default_rng(seed)
        self.revenue = 0.0
        self.rate = cfg.cancel_rate_per_m

    def _v(self, t, x, y):
        slot = np.floor(t / self.cfg.slot_s).astype(int)
        cell = self.grid.cell_of_xy_np(np.asarray(x, np.float32), np.asarray(y, np.float32))
        ok = slot < self.value.shape[0]
        return np.where(ok, self.value[np.clip(slot, 0, self.value.shape[0] - 1), cell], 0.0)

    def _learn(self, now, cand, rows, cs, W):
        """Online TD(0) of fedrl.dispatch.value.td0_update on the batch's candidate drivers."""
        cfg = self.cfg
        matched = np.zeros(len(cand), bool)
        weight = np.zeros(len(cand))
        for r, c in zip(rows, cs):
            if W[r, c] > 0:
                matched[c], weight[c] = True, W[r, c]
        slot = min(int(now // cfg.slot_s), self.value.shape[0] - 1)
        cell = self.grid.cell_of_xy_np(self.x[cand].astype(np.float32),
                                       self.y[cand].astype(np.float32))
        v = self.value[slot, cell]
        delta = np.where(matched, cfg.alpha * weight, cfg.alpha * (self.g_idle - 1.0) * v)
        np.add.at(self.value[slot], cell, delta)

    def step(self, b: int) -> None:
        cfg = self.cfg
        now = self.t_start + (b + 1) * cfg.batch_s
        done = np.flatnonzero((self.status == 2) & (self.busy_until <= now))
        self.status[done] = np.where(self.shift_end[done] > now, 1, 0)
        on = self.ev.online[b]
        on = on[on >= 0]
        self.status[on[self.status[on] == 0]] = 1
        off = self.ev.offline[b]
        off = off[off >= 0]
        self.status[off[self.status[off] == 1]] = 0
        a = self.ev.arrivals
        for j in np.flatnonzero(a.valid[b]):
            if len(self.pending) < cfg.max_pending:
                self.pending.append(dict(ox=a.ox[b, j], oy=a.oy[b, j], dx=a.dx[b, j],
                                         dy=a.dy[b, j], fare=a.fare[b, j],
                                         dur=a.duration[b, j],
                                         exp=now + a.patience[b, j]))
        idle = np.flatnonzero(self.status == 1)
        if self.pending and len(idle):
            P = len(self.pending)
            ox = np.array([p["ox"] for p in self.pending])
            oy = np.array([p["oy"] for p in self.pending])
            dist = np.hypot(self.x[idle][None, :] - ox[:, None], self.y[idle][None, :] - oy[:, None])
            k = min(cfg.k_nearest, len(idle))
            near = np.argpartition(dist, k - 1, axis=1)[:, :k]
            nd = np.take_along_axis(dist, near, 1)
            ok = nd <= cfg.radius_m
            cols = np.unique(near[ok])
            if len(cols):
                W = np.zeros((P, len(cols)))
                col_pos = np.searchsorted(cols, near)              # column of each candidate
                drv = idle[near]                                     # [P, k] driver ids
                dur = np.array([p["dur"] for p in self.pending])[:, None]
                fare = np.array([p["fare"] for p in self.pending])[:, None]
                pdx = np.array([p["dx"] for p in self.pending])[:, None]
                pdy = np.array([p["dy"] for p in self.pending])[:, None]
                dt = nd / cfg.pickup_speed_ms + dur
                p_done = 1.0 - np.minimum(1.0, cfg.cancel_p0 * np.exp(self.rate * nd))
                w = p_done * (fare + cfg.gamma ** (dt / cfg.slot_s) *
                              self._v(now + dt, np.broadcast_to(pdx, nd.shape),
                                      np.broadcast_to(pdy, nd.shape)) -
                              self._v(now, self.x[drv], self.y[drv]))
                rr = np.broadcast_to(np.arange(P)[:, None], nd.shape)
                W[rr[ok], col_pos[ok]] = np.maximum(w[ok], 0.0)
                rows, cs = linear_sum_assignment(W, maximize=True)
                self._learn(now, idle[cols], rows, cs, W)
                served = []
                for r, c in zip(rows, cs):
                    if W[r, c] <= 0:
                        continue
                    drv = idle[cols[c]]
                    p = self.pending[r]
                    d = math.hypot(self.x[drv] - p["ox"], self.y[drv] - p["oy"])
                    served.append(r)
                    if self.rng.random() < cfg.cancel_p0 * math.exp(self.rate * d):
                        continue
                    self.revenue += p["fare"]
                    self.status[drv] = 2
                    self.busy_until[drv] = now + d / cfg.pickup_speed_ms + p["dur"]
                    self.x[drv], self.y[drv] = p["dx"], p["dy"]
                for r in sorted(served, reverse=True):
                    self.pending.pop(r)
        self.pending = [p for p in self.pending if p["exp"] >= now + cfg.batch_s]


def _setup(quick: bool):
    if quick:
        city = CityConfig(scale=0.25, hours=1.0, start_hour=7.0)
    else:
        city = CityConfig(scale=1.0, hours=24.0, start_hour=0.0)
    cfg = SimConfig(dispatcher="ltd", matcher="auction", max_pending=16 if quick else 32,
                    max_rows=16 if quick else 32, max_columns=64 if quick else 96,
                    bucket_slots=48 if quick else 128)
    ev_day = generate_day(city, 0)
    train = generate_day(dataclasses.replace(city, hours=24.0, start_hour=0.0), 1000)
    value = pretrain_value(train.orders, city.day_start, cfg)
    nb = int(round(city.hours * 3600 / cfg.batch_s))
    build = lambda o, d, s: build_day(o, d, cfg, bounds=CHENGDU_BOUNDS, day_start=city.day_start,
                                      t_start_s=city.start_hour * 3600, num_batches=nb, seed=s)[0]
    one = build(ev_day.orders, ev_day.drivers, 0)
    proj = local_projection(CHENGDU_BOUNDS)
    rng = np.random.default_rng(0)
    op = split_platforms(proj.to_xy(ev_day.orders.pickup_lon, 0)[0], (1 / 3,) * 3, rng=rng,
                         width_m=CHENGDU_BOUNDS.width_m)
    dp = split_platforms(proj.to_xy(ev_day.drivers.lon, 0)[0], (1 / 3,) * 3, rng=rng,
                         width_m=CHENGDU_BOUNDS.width_m)
    parts = split_by_platform(ev_day.orders, ev_day.drivers, op, dp, 3)
    three = [build(o, d, k) for k, (o, d) in enumerate(parts)]
    return city, cfg, value, nb, one, three, nb


def _baseline_day(days, cfg, value) -> float:
    """The Python-loop baseline over every batch of the window for each platform's day (all
    drivers on shift at the start are idle, as in ours); returns the total revenue."""
    revenue = 0.0
    for i, day in enumerate(days):
        sim = NumpyDispatch(day, cfg, value, i)
        started = np.asarray(day.online0)
        sim.status[started & (sim.shift_end > float(day.t_start))] = 1
        for b in range(day.events.online.shape[0]):
            sim.step(b)
        revenue += sim.revenue
    return revenue


def run(quick: bool) -> list[dict]:
    city, cfg1, value, nb, one, three, window = _setup(quick)
    key = jax.random.PRNGKey(0)
    label = (f"scale={city.scale:g}, {city.hours:g} h from {city.start_hour:g}:00, "
             f"{nb} batches of {cfg1.batch_s:g} s, ltd")
    # per-platform capacities shrink with the platform (a third of the drivers/orders)
    cfg3 = dataclasses.replace(cfg1, max_pending=cfg1.max_pending // 2,
                               bucket_slots=cfg1.bucket_slots // 2)
    stacked, keys = stack_days(three), jax.random.split(key, 3)
    values = np.broadcast_to(np.asarray(value), (3,) + value.shape).copy()
    variants = {"1platform": (1, run_day.lower(one, key, cfg1, value), (one, key, value))}
    # the same day with the exact matcher: the simulator's default is whichever is faster
    hungarian = dataclasses.replace(cfg1, matcher="hungarian")
    variants["1platform_hungarian"] = (1, run_day.lower(one, key, hungarian, value),
                                       (one, key, value))
    modes = ["vmap", "map"] + (["shard"] if jax.local_device_count() > 1 else [])
    for mode in modes:
        variants[f"3platform_{mode}"] = (3, run_platforms.lower(stacked, keys, cfg3, values, mode),
                                         (stacked, keys, values))
    compiled, compile_s, outputs = {}, {}, {}
    for tag, (_, lowered, args) in variants.items():
        start = time.perf_counter()
        compiled[tag] = lowered.compile()
        compile_s[tag] = time.perf_counter() - start
        outputs[tag] = jax.block_until_ready(compiled[tag](*args))  # warm-up
    # ours and the baselines interleaved (the machine's speed drifts): median of the repeats
    base_revenue = {}
    # the baseline reads host (NumPy) copies of the days, made once outside its timing
    host = {1: [jax.tree.map(np.asarray, one)], 3: [jax.tree.map(np.asarray, d) for d in three]}
    host_value = np.asarray(value)

    def baseline(k):
        def fn():
            base_revenue[k] = _baseline_day(host[k], cfg1 if k == 1 else cfg3, host_value)
        return fn

    fns = {tag: functools.partial(compiled[tag], *variants[tag][2]) for tag in variants}
    fns.update({f"baseline{k}": baseline(k) for k in (1, 3)})
    times = interleaved_medians(fns, REPEATS)
    rows = []
    for tag, (k, _, _) in variants.items():
        totals = outputs[tag][0].totals
        overflow = int(sum(float(np.sum(np.asarray(getattr(totals, f)))) for f in (
            "pending_overflow", "bucket_overflow", "calendar_overflow", "calendar_clamped")))
        devices = local_mesh("platforms", 0, k).devices.size if tag.endswith("shard") else 1
        rows.append({"name": f"dispatch_day/{tag}", "params": {
            "day": label, "platforms": k, "devices": devices,
            "matcher": "hungarian" if tag.endswith("hungarian") else "auction",
            "baseline_cores": 1,  # the loop runs the platforms one after another on one core
            "revenue": round(float(np.sum(np.asarray(totals.revenue)))),
            "dropped_by_capacity": overflow,
            "baseline_window": f"all {window} batches (no extrapolation)",
            "baseline_revenue": round(base_revenue[k]), "timing": f"interleaved, median of {REPEATS}"},
            "value": times[tag], "unit": "s/day", "baseline": "python loop + numpy + scipy lsa",
            "baseline_value": times[f"baseline{k}"], "ratio": times[f"baseline{k}"] / times[tag]})
        rows.append({"name": f"dispatch_day/{tag}_compile", "params": {"platforms": k},
                     "value": compile_s[tag], "unit": "s", "baseline": None,
                     "baseline_value": None, "ratio": None})
    revenue = {r["name"]: r["params"]["revenue"] for r in rows if "revenue" in r["params"]}
    rows.append({"name": "dispatch_day/matcher", "params": {
        "day": label, "platforms": 1, "timing": f"interleaved, median of {REPEATS}",
        "revenue_auction": revenue["dispatch_day/1platform"],
        "revenue_hungarian": revenue["dispatch_day/1platform_hungarian"]},
        "value": times["1platform"], "unit": "s/day",
        "baseline": "same day, sim.matcher=hungarian (optax)",
        "baseline_value": times["1platform_hungarian"],
        "ratio": times["1platform_hungarian"] / times["1platform"]})
    return rows
