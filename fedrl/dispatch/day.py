"""Preparing days for experiments: synthetic or GAIA files -> DayData (+ training trips)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedrl.config import ConfigError
from fedrl.data.city import CityConfig, generate_day
from fedrl.data.gaia import CHENGDU_BOUNDS, Bounds, DataError, Orders, load_drivers, load_orders
from fedrl.data.grid import local_projection
from fedrl.dispatch.schedule import build_day
from fedrl.dispatch.types import SimConfig
from fedrl.dispatch.value import offline_policy_evaluation


def pretrain_value(orders: Orders, day_start: int, cfg: SimConfig, bounds: Bounds = CHENGDU_BOUNDS):
    """Xu et al.'s offline policy evaluation on a day of historical trips -> V [T, G]."""
    proj = local_projection(bounds)
    ox, oy = proj.to_xy(orders.pickup_lon, orders.pickup_lat)
    dx, dy = proj.to_xy(orders.dropoff_lon, orders.dropoff_lat)
    fare = orders.reward if orders.reward is not None else np.full(len(orders), 20.0)
    t0 = (orders.start - day_start).astype(np.float64)
    dur = (orders.stop - orders.start).astype(np.float64)
    value, _ = offline_policy_evaluation(t0, dur, ox, oy, dx, dy, fare, cfg)
    return value


def synthetic_days(city: CityConfig, seed: int):
    """(evaluation day, previous day for training): two seeds of the same city."""
    return generate_day(city, seed), generate_day(dataclasses.replace(
        city, hours=24.0, start_hour=0.0), seed + 1_000)


def gaia_days(data_dir: str, city: CityConfig):
    """Orders from GAIA files in ``data_dir`` (``order_*``); drivers from ``drivers_*`` when
    present, else synthetic shifts. With several order files the last is evaluated and the
    one before it trains the values; with one file it does both (flagged as ``leak``)."""
    root = Path(data_dir)
    files = sorted(root.glob("order_*"))
    if not files:
        raise ConfigError(f"data_dir={data_dir!r} holds no order_* file")
    eval_orders, _ = load_orders(files[-1], bounds=city.bounds)
    train_orders = eval_orders if len(files) == 1 else load_orders(files[-2], bounds=city.bounds)[0]
    if len(eval_orders) == 0:
        raise DataError(files[-1], 0, "empty file", "no orders")
    day_start = int(eval_orders.start.min() // 86_400 * 86_400 - 8 * 3600)
    if eval_orders.start.min() - day_start >= 86_400:
        day_start += 86_400
    train_start = int(train_orders.start.min() // 86_400 * 86_400 - 8 * 3600)
    if train_orders.start.min() - train_start >= 86_400:
        train_start += 86_400
    drv_files = sorted(root.glob("drivers_*"))
    if drv_files:
        drivers, _ = load_drivers(drv_files[-1], bounds=city.bounds)
    else:
        drivers = generate_day(dataclasses.replace(city, day_start=day_start), 0).drivers
    return {"orders": eval_orders, "drivers": drivers, "day_start": day_start,
            "train_orders": train_orders, "train_day_start": train_start,
            "leak": len(files) == 1, "files": [f.name for f in files]}


def prepare(city: CityConfig, cfg: SimConfig, seed: int, *, data_dir: str | None = None,
            num_batches: int | None = None):
    """DayData of the evaluation window and the pretrained value table."""
    if data_dir:
        src = gaia_days(data_dir, city)
    else:
        ev, train = synthetic_days(city, seed)
        src = {"orders": ev.orders, "drivers": ev.drivers, "day_start": city.day_start,
               "train_orders": train.orders, "train_day_start": city.day_start, "leak": False,
               "files": []}
    nb = num_batches or int(round(city.hours * 3600 / cfg.batch_s))
    day, info = build_day(src["orders"], src["drivers"], cfg, bounds=city.bounds,
                          day_start=src["day_start"], t_start_s=city.start_hour * 3600,
                          num_batches=nb, seed=seed)
    value = pretrain_value(src["train_orders"], src["train_day_start"], cfg, city.bounds)
    return day, info, value, src
