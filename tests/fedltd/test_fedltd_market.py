"""Markets: with exponential patience an order's patience is one draw, shared by its platform's
day and the global reference day (common random numbers; review finding 7)."""
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.data.city import CityConfig, fare_function
from fedrl.dispatch.day import synthetic_days
from fedrl.dispatch.schedule import build_day
from fedrl.dispatch.types import SimConfig
from fedrl.fedltd.market import MarketConfig, prepare_market

CFG = SimConfig(max_pending=64, max_rows=8, max_columns=24, bucket_slots=24,
                calendar_batches=2_400, calendar_slots=16, size_classes=(),
                patience="exponential", patience_mean_s=60.0)
CITY = CityConfig(scale=0.04, hours=0.1, start_hour=8.0)   # 180 batches


def _patience(days):
    arrivals = days.events.arrivals
    return np.sort(np.asarray(arrivals.patience)[np.asarray(arrivals.valid)])


def test_platform_days_and_the_global_day_share_each_orders_patience():
    market = prepare_market(CITY, CFG, MarketConfig(shares=(0.5, 0.3, 0.2)), seed=2,
                            pretrain=False)
    platforms, global_ = _patience(market.days), _patience(market.global_day)
    assert platforms.size == global_.size > 10
    # before the fix the global day drew its own patience: same distribution, other values
    np.testing.assert_array_equal(platforms, global_)
    assert np.unique(global_).size == global_.size   # real draws, not a constant


def test_build_day_refuses_patience_not_aligned_with_the_orders():
    ev, _ = synthetic_days(CITY, 0)
    with pytest.raises(ConfigError, match="patience_s"):
        build_day(ev.orders, ev.drivers, CFG, bounds=CITY.bounds, day_start=CITY.day_start,
                  t_start_s=CITY.start_hour * 3600, num_batches=180, seed=0,
                  fare_fn=fare_function(CITY), patience_s=np.ones(3))
