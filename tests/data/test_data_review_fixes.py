"""Regression tests of the dispatch-core review (data side): loader timestamps and platform
files, CityConfig validation, empty windows, make_city arguments, the city's fare function."""
import importlib.util
import pathlib

import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.data.city import (CityConfig, fare, fare_function, generate_day, summarize_day,
                             write_day)
from fedrl.data.gaia import DataError, load_orders, load_platforms, platform_index

ROW = "a1,{s},{e},104.05,30.65,104.10,30.70"


@pytest.mark.parametrize("start,what", [("1477958400.5", "not a whole number"),
                                        ("-5", "outside [0, 2^53]"),
                                        ("9007199254740993", "outside [0, 2^53]"),
                                        ("1e30", "outside [0, 2^53]")])
def test_bad_timestamps_are_refused_with_a_clear_reason(tmp_path, start, what):
    path = tmp_path / "order_ts"
    path.write_text(ROW.format(s=1477958400, e=1477959000).replace("a1", "a0") + "\n"
                    + ROW.format(s=start, e=9007199254740993) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: bad timestamp: ride_start_timestamp") as err:
        load_orders(path)
    assert what in str(err.value)
    orders, report = load_orders(path, lenient=True)
    assert len(orders) == 1 and report.skipped == {"bad timestamp": 1}


def test_timestamps_up_to_2_pow_53_load_exactly(tmp_path):
    path = tmp_path / "order_big"
    path.write_text(ROW.format(s=2 ** 53 - 1, e=2 ** 53) + "\n"
                    + ROW.format(s="1477958400.0", e=1477959000).replace("a1", "a2") + "\n")
    orders, _ = load_orders(path)
    assert orders.start.tolist() == [2 ** 53 - 1, 1477958400]
    assert orders.stop.tolist() == [2 ** 53, 1477959000]


def test_platform_file_non_ascii_digit_and_missing_id(tmp_path):
    path = tmp_path / "platforms_x"
    path.write_text("order,a1,0\norder,a2,\u00b2\ndriver,d1,1\n")   # "²".isdigit() is True
    with pytest.raises(DataError, match=f"{path}:2: non-numeric field"):
        load_platforms(path)
    plat, report = load_platforms(path, lenient=True)
    assert plat == {"order": {"a1": 0}, "driver": {"d1": 1}}
    assert report.skipped == {"non-numeric field": 1}
    with pytest.raises(DataError, match=rf"{path}:0: missing id: order id 'a9' \(row 2"):
        platform_index(np.asarray(["a1", "a9"]), plat["order"], path=path)


@pytest.mark.parametrize("field,value", [
    ("night_surcharge", -2.0), ("fare_per_km", float("nan")), ("fare_per_km", -1.0),
    ("fare_base_km", -1.0), ("hop_sigma", -1.0), ("hop_median_km", 0.0),
    ("min_trip_km", -1.0), ("hotspot_dest_share", 2.0), ("num_hotspots", 2.5),
    ("num_hotspots", True), ("hotspot_sigma_km", (0.0, 0.0)), ("hotspot_sigma_km", (-1, 2)),
    ("speed_kmh", (20.0,)), ("shift_hours", (4.0, 10.0, 12.0)), ("day_start", "x"),
    ("orders_per_day", 1e12)])
def test_city_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"city.{field}"):
        CityConfig(**{field: value}).validate()


def test_generator_with_no_order_in_the_window_gives_an_empty_day(tmp_path):
    day = generate_day(CityConfig(scale=0.01, hours=0.0001, start_hour=8.0), seed=0)
    assert len(day.orders) == 0 and len(day.drivers) == 80
    assert summarize_day(day)["orders"] == 0
    meta = write_day(tmp_path, day, gps=False)
    orders, _ = load_orders(tmp_path / meta["files"]["orders"])
    assert len(orders) == 0
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        generate_day(CityConfig(scale=0.01, hours=0.1), seed=-1)


def test_make_city_negative_seed_is_an_argparse_error(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_city", pathlib.Path(__file__).resolve().parents[2] / "scripts" / "make_city.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as info:
        module.main(["--out", str(tmp_path), "--seed", "-1"])
    assert info.value.code == 2
    assert "argument --seed: must be an integer >= 0, got -1" in capsys.readouterr().err


def test_fare_function_prices_straight_km_with_the_city_road_factor():
    city = CityConfig(fare_per_km=3.0, road_factor=1.5, night_surcharge=0.5)
    fn = fare_function(city)
    km, hour = np.array([1.0, 4.0, 4.0]), np.array([8.0, 8.0, 23.5])
    # by hand: 8 + 3 * max(0, 1.5 km x - 2), +50 % at night
    np.testing.assert_allclose(fn(km, hour), [8.0, 8.0 + 3.0 * 4.0, 1.5 * (8.0 + 3.0 * 4.0)])
    np.testing.assert_allclose(fn(km, hour), fare(km * 1.5, hour, city))
