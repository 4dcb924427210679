"""Preparing days for experiments: synthetic or GAIA files -> DayData (+ training trips)."""
from __future__ import annotations

import dataclasses
import datetime
import re
import warnings
from pathlib import Path

import numpy as np

from fedrl.config import ConfigError, require_in_range
from fedrl.data.city import DAY_S, CityConfig, fare_function, generate_day
from fedrl.data.gaia import CHENGDU_BOUNDS, Bounds, DataError, Orders, load_drivers, load_orders
from fedrl.data.grid import local_projection
from fedrl.dispatch.schedule import build_day, order_fares
from fedrl.dispatch.types import SimConfig
from fedrl.dispatch.value import offline_policy_evaluation

# GAIA's Chengdu timestamps are Unix seconds; its days are local (China Standard Time) days.
LOCAL_UTC_OFFSET_S = 8 * 3600
# Orders outside the file's local day above this share make ``gaia_days`` raise; below it
# they are dropped with a warning (a ride started just before midnight, say).
MAX_OUTSIDE_SHARE = 0.01
_DAY_NAME = re.compile(r"order_(\d{8})")


def pretrain_value(orders: Orders, day_start: int, cfg: SimConfig, bounds: Bounds = CHENGDU_BOUNDS,
                   *, fare_fn=None):
    """Xu et al.'s offline policy evaluation on a day of historical trips -> V [T, G].

    Orders without ``reward`` are priced by ``fare_fn(straight_km, hour)`` (e.g.
    ``fedrl.data.city.fare_function(city)``), the same function ``build_day`` uses."""
    proj = local_projection(bounds)
    ox, oy = proj.to_xy(orders.pickup_lon, orders.pickup_lat)
    dx, dy = proj.to_xy(orders.dropoff_lon, orders.dropoff_lat)
    t0 = (orders.start - day_start).astype(np.float64)
    fare = order_fares(orders.reward, ox, oy, dx, dy, t0, fare_fn)
    dur = (orders.stop - orders.start).astype(np.float64)
    value, _ = offline_policy_evaluation(t0, dur, ox, oy, dx, dy, fare, cfg)
    return value


def synthetic_days(city: CityConfig, seed: int):
    """(evaluation day, previous day for training): two seeds of the same city."""
    return generate_day(city, seed), generate_day(dataclasses.replace(
        city, hours=24.0, start_hour=0.0), seed + 1_000)


def local_midnight(date: datetime.date) -> int:
    """Unix time of local (UTC+8) midnight starting ``date``."""
    tz = datetime.timezone(datetime.timedelta(seconds=LOCAL_UTC_OFFSET_S))
    return int(datetime.datetime(date.year, date.month, date.day, tzinfo=tz).timestamp())


def file_day_start(path, orders: Orders, *, max_outside_share: float = MAX_OUTSIDE_SHARE) -> int:
    """Local midnight of the day an order file holds.

    The day comes from the file name when it is GAIA's ``order_YYYYMMDD`` (the generator
    writes such names), else from the most common local date of the ride starts (one early
    ride must not move the whole day, as the earliest start did). Orders starting outside
    that day: more than ``max_outside_share`` of them raise :class:`DataError` naming the
    file; fewer give a warning (they are outside the simulated window and dropped)."""
    require_in_range("max_outside_share", max_outside_share, 0.0, 1.0)
    path = Path(path)
    if len(orders) == 0:
        raise DataError(path, 0, "empty file", "no orders")
    match = _DAY_NAME.fullmatch(path.name)
    start, from_name = None, False
    if match:
        try:
            start = local_midnight(datetime.datetime.strptime(match.group(1), "%Y%m%d").date())
        except ValueError:   # e.g. order_20161399: not a date, fall back to the data
            start = None
        from_name = start is not None
    if start is None:
        local_day = (orders.start + LOCAL_UTC_OFFSET_S) // DAY_S
        days, counts = np.unique(local_day, return_counts=True)
        start = int(days[np.argmax(counts)] * DAY_S - LOCAL_UTC_OFFSET_S)
    outside = int(np.sum((orders.start < start) | (orders.start >= start + DAY_S)))
    if outside:
        share = outside / len(orders)
        day = datetime.datetime.fromtimestamp(start, datetime.timezone(
            datetime.timedelta(seconds=LOCAL_UTC_OFFSET_S))).strftime("%Y-%m-%d")
        detail = (f"{outside} of {len(orders)} orders ({100 * share:.2f} %) start outside "
                  f"the file's local day {day} (UTC+8, from "
                  f"{'the file name' if from_name else 'the most common date'})")
        if share > max_outside_share:
            raise DataError(path, 0, "orders outside the day",
                            f"{detail}; more than max_outside_share={max_outside_share:g}")
        warnings.warn(f"{path}: {detail}; they are dropped", stacklevel=2)
    return start


def driver_file(data_dir) -> Path | None:
    """The ``drivers_*`` file ``gaia_days`` uses (the last in name order), or None."""
    files = sorted(Path(data_dir).glob("drivers_*"))
    return files[-1] if files else None


def gaia_days(data_dir: str, city: CityConfig, *, max_outside_share: float = MAX_OUTSIDE_SHARE):
    """Orders from GAIA files in ``data_dir`` (``order_*``); drivers from ``drivers_*`` when
    present, else synthetic shifts. With several order files the last is evaluated and the
    one before it trains the values; with one file it does both (flagged as ``leak``).
    Each file's day: :func:`file_day_start`."""
    root = Path(data_dir)
    files = sorted(root.glob("order_*"))
    if not files:
        raise ConfigError(f"data_dir={data_dir!r} holds no order_* file")
    eval_orders, _ = load_orders(files[-1], bounds=city.bounds)
    day_start = file_day_start(files[-1], eval_orders, max_outside_share=max_outside_share)
    if len(files) == 1:
        train_orders, train_start = eval_orders, day_start
    else:
        train_orders, _ = load_orders(files[-2], bounds=city.bounds)
        train_start = file_day_start(files[-2], train_orders,
                                     max_outside_share=max_outside_share)
    drv_file = driver_file(root)
    if drv_file is not None:
        drivers, _ = load_drivers(drv_file, bounds=city.bounds)
    else:
        drivers = generate_day(dataclasses.replace(city, day_start=day_start), 0).drivers
    return {"orders": eval_orders, "drivers": drivers, "day_start": day_start,
            "train_orders": train_orders, "train_day_start": train_start,
            "leak": len(files) == 1, "files": [f.name for f in files],
            "driver_file": None if drv_file is None else drv_file.name}


def prepare(city: CityConfig, cfg: SimConfig, seed: int, *, data_dir: str | None = None,
            num_batches: int | None = None):
    """DayData of the evaluation window and the pretrained value table. Orders without
    ``reward_units`` are priced by the city's tariff (``fare_function(city)``) in both."""
    cfg.validate()
    if data_dir:
        src = gaia_days(data_dir, city)
    else:
        ev, train = synthetic_days(city, seed)
        src = {"orders": ev.orders, "drivers": ev.drivers, "day_start": city.day_start,
               "train_orders": train.orders, "train_day_start": city.day_start, "leak": False,
               "files": [], "driver_file": None}
    fare_fn = fare_function(city)
    nb = num_batches or int(round(city.hours * 3600 / cfg.batch_s))
    day, info = build_day(src["orders"], src["drivers"], cfg, bounds=city.bounds,
                          day_start=src["day_start"], t_start_s=city.start_hour * 3600,
                          num_batches=nb, seed=seed, fare_fn=fare_fn)
    value = pretrain_value(src["train_orders"], src["train_day_start"], cfg, city.bounds,
                           fare_fn=fare_fn)
    return day, info, value, src
