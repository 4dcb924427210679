"""Experiment days: GAIA files written by the generator load into the same DayData."""
import numpy as np

from fedrl.data.city import CityConfig, generate_day, write_day
from fedrl.dispatch.day import prepare
from fedrl.dispatch.types import SimConfig


def test_prepare_from_gaia_files_matches_synthetic(tmp_path):
    city = CityConfig(scale=0.005, hours=1.0, start_hour=8.0)
    cfg = SimConfig(max_pending=16)
    day_syn, info_syn, value_syn, _ = prepare(city, cfg, seed=4)
    # the same evaluation day written as GAIA files (train day = same file: flagged as leak)
    write_day(tmp_path, generate_day(city, 4), gps=False)
    day_file, info_file, _, src = prepare(city, cfg, seed=4, data_dir=str(tmp_path))
    assert src["leak"] and src["files"] == ["order_20161101"]
    assert info_file.num_orders == info_syn.num_orders > 0
    assert info_file.num_drivers == info_syn.num_drivers
    a, b = day_syn.events.arrivals, day_file.events.arrivals
    np.testing.assert_array_equal(np.asarray(a.valid), np.asarray(b.valid))
    np.testing.assert_allclose(np.asarray(a.ox), np.asarray(b.ox), atol=0.2)  # 1e-6 deg
    np.testing.assert_allclose(np.asarray(a.fare), np.asarray(b.fare), atol=0.01)
    assert np.asarray(value_syn).max() > 0
