"""GAIA loaders: round trip of the generator's files, every malformed case, lenient mode."""
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.data.city import (CityConfig, demand_profile, generate_day, split_platforms,
                             summarize_day, write_day)
from fedrl.data.gaia import (CHENGDU_BOUNDS, DataError, load_drivers, load_gps, load_orders,
                             load_platforms)
from fedrl.data.grid import hex_grid, local_projection, square_grid

GOOD = "a1,1477990000,1477990600,104.05,30.65,104.10,30.70"


@pytest.fixture(scope="module")
def small_day():
    return generate_day(CityConfig(scale=0.01, hours=3.0, start_hour=7.0), seed=11)


def test_round_trip_of_generated_files(tmp_path, small_day):
    meta = write_day(tmp_path, small_day, shares=(0.5, 0.3, 0.2))
    orders, report = load_orders(tmp_path / meta["files"]["orders"])
    src = small_day.orders
    assert report.kept == len(src) == len(orders) and report.num_skipped == 0
    np.testing.assert_array_equal(orders.order_id, src.order_id)
    np.testing.assert_array_equal(orders.start, src.start)
    np.testing.assert_array_equal(orders.stop, src.stop)
    for f in ("pickup_lon", "pickup_lat", "dropoff_lon", "dropoff_lat"):
        np.testing.assert_allclose(getattr(orders, f), getattr(src, f), atol=1e-6)
    np.testing.assert_allclose(orders.reward, src.reward, atol=5e-3)
    drivers, _ = load_drivers(tmp_path / meta["files"]["drivers"])
    np.testing.assert_array_equal(drivers.driver_id, small_day.drivers.driver_id)
    np.testing.assert_array_equal(drivers.shift_end, small_day.drivers.shift_end)
    plat, _ = load_platforms(tmp_path / meta["files"]["platforms"])
    assert set(plat["order"]) == set(src.order_id.tolist())
    assert set(plat["order"].values()) <= {0, 1, 2}
    gps, _ = load_gps(tmp_path / meta["files"]["gps"])
    assert len(gps) == 2 * len(drivers)


def test_seven_column_file_has_no_reward(tmp_path):
    path = tmp_path / "order_7"
    path.write_text(GOOD + "\n" + GOOD.replace("a1", "a2") + "\n")
    orders, _ = load_orders(path)
    assert orders.reward is None and len(orders) == 2


BAD_CASES = {
    "wrong column count": "a2,1477990000,1477990600,104.05,30.65,104.10",
    "non-numeric field": "a2,1477990000,xx,104.05,30.65,104.10,30.70",

    "end before start": "a2,1477990600,1477990000,104.05,30.65,104.10,30.70",
    "outside bounding box": "a2,1477990000,1477990600,116.40,39.90,104.10,30.70",
    "duplicate order id": GOOD,
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_malformed_line_names_file_line_and_reason(tmp_path, reason):
    path = tmp_path / "order_bad"
    path.write_text("\n".join([GOOD, GOOD.replace("a1", "a0"), BAD_CASES[reason]]) + "\n")
    with pytest.raises(DataError) as info:
        load_orders(path)
    err = info.value
    assert err.line == 3 and err.reason == reason and err.path == str(path)
    assert f"{path}:3: {reason}" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("start,reason", [("inf", "non-numeric field"),
                                          ("1e30", "bad timestamp")])
def test_timestamps_that_do_not_fit_int64_are_refused(tmp_path, start, reason):
    path = tmp_path / "order_ts"
    path.write_text(GOOD + f"\na2,{start},2e30,104.05,30.65,104.10,30.70\n")
    with pytest.raises(DataError, match=f"{path}:2: {reason}: ride_start_timestamp"):
        load_orders(path)
    orders, report = load_orders(path, lenient=True)
    assert len(orders) == 1 and report.skipped == {reason: 1}


def test_binary_file_is_a_data_error(tmp_path):
    path = tmp_path / "order_bin"
    path.write_bytes(GOOD.encode() + b"\n\xff\xfe,1,2\n")
    with pytest.raises(DataError, match=f"{path}:2: not UTF-8 text"):
        load_orders(path, lenient=True)


def test_mixed_column_counts_are_an_error(tmp_path):
    path = tmp_path / "order_mixed"
    path.write_text(GOOD + ",12.5\n" + GOOD.replace("a1", "a2") + "\n")
    with pytest.raises(DataError, match=r":2: wrong column count"):
        load_orders(path)


def test_lenient_mode_skips_and_counts_per_reason(tmp_path):
    lines = [GOOD] + [BAD_CASES[r] for r in sorted(BAD_CASES)] + \
        [GOOD.replace("a1", "z9"), BAD_CASES["non-numeric field"].replace("a2", "a7")]
    path = tmp_path / "order_lenient"
    path.write_text("\n".join(lines) + "\n")
    orders, report = load_orders(path, lenient=True)
    assert orders.order_id.tolist() == ["a1", "a2", "z9"] or \
        orders.order_id.tolist() == ["a1", "z9"]
    # "a2" lines: the first malformed a2 lines are skipped; the duplicate-of-a1 line too
    assert report.skipped["non-numeric field"] == 2
    assert report.skipped["duplicate order id"] == 1
    assert report.skipped["end before start"] == 1
    assert report.skipped["outside bounding box"] == 1
    assert report.skipped["wrong column count"] == 1
    assert report.kept + report.num_skipped == len(lines)


def test_gps_and_driver_errors(tmp_path):
    gps = tmp_path / "gps"
    gps.write_text("d1,o1,1477990000,104.05,30.65\nd1,o1,1477990003,104.05\n")
    with pytest.raises(DataError, match=r"gps:2: wrong column count"):
        load_gps(gps)
    trace, report = load_gps(gps, lenient=True)
    assert len(trace) == 1 and report.skipped == {"wrong column count": 1}
    drv = tmp_path / "drivers"
    drv.write_text("d1,100,50,104.05,30.65\n")
    with pytest.raises(DataError, match=r"drivers:1: end before start"):
        load_drivers(drv)
    assert load_orders(gps, bounds=None, lenient=True)[1].skipped == {"wrong column count": 2}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="order_none"):
        load_orders(tmp_path / "order_none")


def test_generator_calibration():
    day = generate_day(CityConfig(scale=0.05), seed=0)
    s = summarize_day(day)
    assert abs(s["orders"] - 0.05 * 231_000) < 0.05 * 0.05 * 231_000
    prof = demand_profile(np.arange(1440))
    assert prof.mean() == pytest.approx(1.0, abs=1e-6)
    assert prof[240] == pytest.approx(0.15, abs=0.01)            # night trough
    assert prof[8 * 60] > 1.8 and prof[18 * 60 + 30] > 1.8        # morning/evening peaks
    assert 10 < s["mean_fare"] < 40 and 10 < s["mean_trip_min"] < 40
    assert 0.05 * 1500 <= s["online_peak"] <= 0.05 * 3500
    lo, hi = np.array([CHENGDU_BOUNDS.lon_min, CHENGDU_BOUNDS.lat_min]), \
        np.array([CHENGDU_BOUNDS.lon_max, CHENGDU_BOUNDS.lat_max])
    pts = np.stack([day.orders.dropoff_lon, day.orders.dropoff_lat], 1)
    assert ((pts >= lo) & (pts <= hi)).all()
    again = generate_day(CityConfig(scale=0.05), seed=0)
    np.testing.assert_array_equal(again.orders.order_id, day.orders.order_id)


def test_platform_split_shares_and_errors():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 30_000, 20_000)
    k = split_platforms(x, (0.5, 0.3, 0.2), rng=rng, width_m=30_000)
    np.testing.assert_allclose(np.bincount(k) / len(k), [0.5, 0.3, 0.2], atol=0.02)
    skew = split_platforms(x, (1 / 3, 1 / 3, 1 / 3), rng=rng, width_m=30_000, spatial_skew=2.0)
    west = x < 10_000
    assert (skew[west] == 0).mean() > 0.6 and (skew[~west] == 0).mean() < 0.3
    with pytest.raises(ConfigError, match="shares"):
        split_platforms(x, (0.5, 0.6), rng=rng, width_m=30_000)
    for bad in (-5.0, float("nan")):
        with pytest.raises(ConfigError, match="spatial_skew must be a finite number >= 0"):
            split_platforms(x, (0.5, 0.5), rng=rng, width_m=30_000, spatial_skew=bad)


def test_grids_cell_of_and_neighbours():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, [29_700, 33_800], (5_000, 2)).astype(np.float32)
    hexes = hex_grid(29_700, 33_800, 600)
    cells = hexes.cell_of_xy_np(pts[:, 0], pts[:, 1])
    d2 = ((pts[:, None, :] - hexes.centers[None]) ** 2).sum(-1)
    assert (d2.argmin(1) == cells).all()
    for row in (hexes.rows // 2, hexes.rows // 2 + 1):  # even and odd rows
        c = row * hexes.cols + hexes.cols // 2
        nb = hexes.neighbors[c]
        assert (nb >= 0).all() and len(set(nb.tolist())) == 6
        np.testing.assert_allclose(np.linalg.norm(hexes.centers[nb] - hexes.centers[c], axis=1),
                                   np.sqrt(3) * 600, rtol=1e-5)
    assert (hexes.neighbors[0] == -1).sum() >= 3  # corner cell
    squares = square_grid(29_700, 33_800, 1_000)
    cells = squares.cell_of_xy_np(pts[:, 0], pts[:, 1])
    assert (np.abs(squares.centers[cells] - pts) <= 500 + 1e-3).all()
    proj = local_projection(CHENGDU_BOUNDS)
    x, y = proj.to_xy(CHENGDU_BOUNDS.lon_max, CHENGDU_BOUNDS.lat_max)
    assert 29_000 < x < 30_500 and 33_000 < y < 34_500
    with pytest.raises(ConfigError, match="radius_m"):
        hex_grid(1000, 1000, 0.0)


def test_make_city_script(tmp_path):
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "make_city", pathlib.Path(__file__).resolve().parents[2] / "scripts" / "make_city.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--scale", "0.002", "--seed", "1",
                        "--platforms", "2", "--shares", "0.7,0.3", "--no-gps"]) == 0
    assert (tmp_path / "city.json").exists() and (tmp_path / "order_20161101").exists()
    assert module.main(["--out", str(tmp_path), "--platforms", "2", "--shares", "1.0"]) == 2
