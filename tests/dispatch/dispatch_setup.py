"""Shared small city and simulator config for the dispatch tests.

The full city and its 2-platform split are padded to common shapes and stacked, so every test
reuses one compiled ``run_day`` (slices of the stack) and one ``run_platforms``.
"""
import warnings

import jax
import numpy as np
import pytest

from fedrl.data.city import CityConfig, generate_day, split_platforms
from fedrl.data.gaia import CHENGDU_BOUNDS
from fedrl.data.grid import local_projection
from fedrl.dispatch.schedule import build_day, split_by_platform, stack_days
from fedrl.dispatch.types import SimConfig

# Small capacities keep compile time low; the city is scaled so they still bind sometimes.
# Exponential patience exercises waiting orders; one matrix size keeps compile time low
# (the size-class switch is tested on its own in test_dispatch_learning.py).
SMALL = SimConfig(max_pending=16, max_rows=8, max_columns=24, bucket_slots=24,
                  calendar_batches=2_400, calendar_slots=16, matcher="hungarian",
                  dispatcher="ltd", patience="exponential", size_classes=())
CITY = CityConfig(scale=0.02, hours=0.5, start_hour=8.0)
NUM_BATCHES = 240
SHARES = (0.6, 0.4)


@pytest.fixture(scope="session")
def small_city():
    return generate_day(CITY, seed=3)


@pytest.fixture(scope="session")
def all_days(small_city):
    return stacked_days(small_city)


def stacked_days(small_city):
    """Stack of [whole city, platform 0, platform 1], padded to common shapes."""
    rng = np.random.default_rng(0)
    proj = local_projection(CHENGDU_BOUNDS)
    ox, _ = proj.to_xy(small_city.orders.pickup_lon, small_city.orders.pickup_lat)
    dx, _ = proj.to_xy(small_city.drivers.lon, small_city.drivers.lat)
    w = CHENGDU_BOUNDS.width_m
    op = split_platforms(ox, SHARES, rng=rng, width_m=w)
    dp = split_platforms(dx, SHARES, rng=rng, width_m=w)
    parts = [(small_city.orders, small_city.drivers)] + split_by_platform(
        small_city.orders, small_city.drivers, op, dp, len(SHARES))
    days = []
    for k, (orders, drivers) in enumerate(parts):
        with warnings.catch_warnings():
            # the pool is small on purpose (overflow is exercised): no "raise max_pending" hint
            warnings.filterwarnings("ignore", message="sim.max_pending", category=UserWarning)
            day, info = build_day(orders, drivers, SMALL, bounds=CHENGDU_BOUNDS,
                                  day_start=CITY.day_start, t_start_s=CITY.start_hour * 3600,
                                  num_batches=NUM_BATCHES, seed=k)
        assert info.num_orders > 20 and info.num_drivers > 10
        days.append(day)
    return stack_days(days)


@pytest.fixture(scope="session")
def small_day(all_days):
    return jax.tree.map(lambda a: a[0], all_days)
