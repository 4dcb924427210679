"""A multi-platform ride-hailing market: one city's day split across K platforms.

Host-side, once per setting. Orders and drivers are assigned to platforms by market share
(optionally spatially skewed, :func:`fedrl.data.city.split_platforms`); each platform's value
table is pre-trained (Xu et al.'s offline policy evaluation) on *its own share* of the previous
day, and the global baseline (one platform owning everything) on the whole previous day, so
that every method starts from the same kind of value learning on the data it could see.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.config import ConfigError, require, require_positive
from fedrl.data.city import CityConfig, fare_function, split_platforms
from fedrl.data.grid import local_projection
from fedrl.dispatch.day import gaia_days, pretrain_value, synthetic_days
from fedrl.dispatch.schedule import DayData, DayInfo, build_day, stack_days, stack_days_host
from fedrl.dispatch.types import SimConfig


@dataclasses.dataclass(frozen=True)
class MarketConfig:
    """How the city is split: market shares (sum to 1) and spatial skew (0: none)."""
    shares: tuple = (0.5, 0.3, 0.2)
    spatial_skew: float = 0.0
    # drivers may be split with other shares than orders (supply imbalance across
    # platforms); None: the same shares
    driver_shares: tuple | None = None

    def validate(self) -> None:
        for name in ("shares", "driver_shares"):
            s = getattr(self, name)
            if s is None:
                continue
            real = lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool)
            require(isinstance(s, (tuple, list)) and len(s) >= 1
                    and all(real(x) and math.isfinite(x) and x > 0 for x in s)
                    and abs(sum(s) - 1) < 1e-6,
                    f"market.{name} must be positive numbers that sum to 1, got {s!r}")
        require(self.driver_shares is None or len(self.driver_shares) == len(self.shares),
                f"market.driver_shares {self.driver_shares} must have as many platforms as "
                f"market.shares {self.shares}")
        require_positive("market.spatial_skew", self.spatial_skew, allow_zero=True)

    @property
    def num_platforms(self) -> int:
        return len(self.shares)


@dataclasses.dataclass
class Market:
    days: DayData            # [K] stacked, padded platform days
    values: jnp.ndarray      # [K, T, G] pretrained on each platform's own history
    global_day: DayData      # the unsplit day (one platform owning everything)
    global_value: jnp.ndarray
    infos: list              # DayInfo per platform
    global_info: DayInfo
    order_share: list        # realised shares of orders / drivers per platform
    driver_share: list
    train_eval_same_day: bool
    # orders each platform's value table was pretrained on ([K]; the first aggregation's
    # weights with FedLTDConfig.first_round_weights="training_orders")
    train_orders: list = dataclasses.field(default_factory=list)


def _assign(x_m, shares, skew, width_m, seed, salt):
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), salt]))
    return split_platforms(x_m, shares, rng=rng, width_m=width_m, spatial_skew=skew)


def prepare_market(city: CityConfig, cfg: SimConfig, market: MarketConfig, seed: int, *,
                   data_dir: str | None = None, pretrain: bool = True) -> Market:
    """Build the K platform days, their pretrained values and the global reference."""
    market.validate()
    if data_dir:
        src = gaia_days(data_dir, city)
        orders, drivers, day_start = src["orders"], src["drivers"], src["day_start"]
        train, train_start, leak = src["train_orders"], src["train_day_start"], src["leak"]
    else:
        ev, prev = synthetic_days(city, seed)
        orders, drivers, day_start = ev.orders, ev.drivers, city.day_start
        train, train_start, leak = prev.orders, city.day_start, False
    proj = local_projection(city.bounds)
    width = city.bounds.width_m
    K = market.num_platforms
    d_shares = market.driver_shares or market.shares
    op = _assign(proj.to_xy(orders.pickup_lon, orders.pickup_lat)[0], market.shares,
                 market.spatial_skew, width, seed, 11)
    dp = _assign(proj.to_xy(drivers.lon, drivers.lat)[0], d_shares, market.spatial_skew,
                 width, seed, 12)
    tp = _assign(proj.to_xy(train.pickup_lon, train.pickup_lat)[0], market.shares,
                 market.spatial_skew, width, seed, 13)
    nb = int(round(city.hours * 3600 / cfg.batch_s))
    fare_fn = fare_function(city)   # prices order files without reward_units (both uses)
    # each order's patience is drawn once, before the split: an order has the same patience
    # in its platform's day and in the global day (common random numbers; review finding 7)
    patience = (np.random.default_rng(np.random.SeedSequence([int(seed), 14])).exponential(
        cfg.patience_mean_s, len(orders)) if cfg.patience == "exponential" else None)
    build = lambda o, d, s, pat: build_day(o, d, cfg, bounds=city.bounds, day_start=day_start,
                                           t_start_s=city.start_hour * 3600, num_batches=nb,
                                           seed=s, fare_fn=fare_fn, patience_s=pat)
    parts = [build(orders.subset(op == k), drivers.subset(dp == k), seed * 100 + k,
                   None if patience is None else patience[op == k]) for k in range(K)]
    if any(info.num_orders == 0 for _, info in parts):
        raise ConfigError(f"a platform got no order in the window (shares {market.shares}); "
                          "enlarge the city or the window")
    global_day, global_info = build(orders, drivers, seed * 100 + 99, patience)

    def value_of(train_orders):
        if not pretrain or len(train_orders) == 0:
            from fedrl.dispatch.value import init_value
            return init_value(cfg)
        return pretrain_value(train_orders, train_start, cfg, city.bounds, fare_fn=fare_fn)

    values = jax.device_put(np.stack([np.asarray(value_of(train.subset(tp == k)))
                                      for k in range(K)]))
    return Market(days=stack_days([d for d, _ in parts]), values=values,
                  global_day=global_day, global_value=jnp.asarray(value_of(train)),
                  infos=[i for _, i in parts], global_info=global_info,
                  order_share=(np.bincount(op, minlength=K) / max(len(op), 1)).tolist(),
                  driver_share=(np.bincount(dp, minlength=K) / max(len(dp), 1)).tolist(),
                  train_eval_same_day=bool(leak),
                  train_orders=[int(np.sum(tp == k)) for k in range(K)])


def pad_together(stacks: list) -> list:
    """Pad several stacked days ([K_i] leading axis each, same number of batches) to common
    shapes, so that seeds and settings share one compiled program; returns them in order."""
    # on the host (eager slicing of device arrays compiles a program per shape), one
    # transfer per result
    counts = [int(s.driver_x.shape[0]) for s in stacks]
    host = [jax.tree.map(np.asarray, s) for s in stacks]
    flat = [jax.tree.map(lambda a, k=k: a[k], s) for s, n in zip(host, counts)
            for k in range(n)]
    stacked = stack_days_host(flat)
    out, start = [], 0
    for n in counts:
        out.append(jax.device_put(jax.tree.map(lambda a, s=start, n=n: a[s:s + n], stacked)))
        start += n
    return out
