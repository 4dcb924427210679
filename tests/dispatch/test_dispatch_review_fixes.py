"""Regression tests of the dispatch-core review: the day of a GAIA file, fares of files
without reward_units, pool overflow, the nearest dispatcher's max-cardinality weights,
validation at the entry points, the TD update at the end of the day, file-driven experiment
blocks. Tiny shapes only (the whole file runs in a few seconds)."""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from fedrl.config import ConfigError
from fedrl.data.city import CityConfig, fare_function, generate_day, write_day, write_orders
from fedrl.data.gaia import CHENGDU_BOUNDS, DataError
from fedrl.dispatch.day import file_day_start, gaia_days, prepare, pretrain_value
from fedrl.dispatch.dispatchers import solve_graph
from fedrl.dispatch.metrics import overflow_note, overflow_total
from fedrl.dispatch.schedule import build_day
from fedrl.dispatch.simulator import init_state
from fedrl.dispatch.types import Graph, SimConfig
from fedrl.dispatch.value import td0_update, value_at, value_grid
from fedrl.dispatch.weights import edge_weights, nearest_pairs_bound

DAY0 = 1_477_929_600          # 2016-11-01 00:00 UTC+8
CITY = CityConfig(scale=0.01, hours=1.0, start_hour=8.0)


@pytest.fixture(scope="module")
def city_day():
    return generate_day(CITY, seed=2)


def _write_with_extra_rows(tmp_path, day, name, extra_starts):
    """The day's 8-column order file with extra rides starting at ``extra_starts``."""
    path = tmp_path / name
    write_orders(path, day.orders)
    extra = "".join(f"zz{i},{t},{t + 600},104.05,30.65,104.10,30.70,20.00\n"
                    for i, t in enumerate(extra_starts))
    path.write_text(extra + path.read_text())
    return path


def test_one_early_ride_does_not_move_the_day(tmp_path, city_day):
    """Finding 1: the day comes from order_YYYYMMDD, not from the earliest ride."""
    _write_with_extra_rows(tmp_path, city_day, "order_20161101", [DAY0 - 120])
    n = len(city_day.orders)
    assert n > 100  # one ride is < 1 % of the file
    with pytest.warns(UserWarning, match=rf"order_20161101: 1 of {n + 1} orders .* outside"):
        src = gaia_days(str(tmp_path), CITY)
    assert src["day_start"] == src["train_day_start"] == DAY0


def test_day_from_the_most_common_date_and_too_many_outside(tmp_path, city_day):
    path = _write_with_extra_rows(tmp_path, city_day, "rides.csv", [DAY0 - 120])
    from fedrl.data.gaia import load_orders
    orders, _ = load_orders(path)
    with pytest.warns(UserWarning, match="the most common date"):
        assert file_day_start(path, orders) == DAY0
    # a file named for another day: every order is outside it
    with pytest.raises(DataError, match=r"order_20161102:0: orders outside the day: .*2016-11-02"):
        file_day_start(tmp_path / "order_20161102", orders)
    # 5 % of the rides the day before: more than max_outside_share
    many = _write_with_extra_rows(tmp_path, city_day, "order_x",
                                  [DAY0 - 3_600] * (len(city_day.orders) // 19 + 1))
    many_orders, _ = load_orders(many)
    with pytest.raises(DataError, match="order_x:0: orders outside the day"):
        file_day_start(many, many_orders)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a clean file: no warning
        orders, _ = load_orders(_write_with_extra_rows(tmp_path, city_day, "order_y", []))
        assert file_day_start(tmp_path / "order_y", orders) == DAY0


def test_empty_training_file_is_a_clear_error(tmp_path, city_day):
    """Finding 9."""
    write_orders(tmp_path / "order_20161101", city_day.orders)
    (tmp_path / "order_20161031").write_text("")
    with pytest.raises(DataError, match=r"order_20161031:0: empty file"):
        gaia_days(str(tmp_path), CITY)


def test_seven_column_file_is_priced_by_the_city_tariff_in_both_uses(tmp_path):
    """Finding 2: build_day and pretrain_value price a file without reward_units with the
    experiment's CityConfig (here a non-default tariff), passed from prepare."""
    city = dataclasses.replace(CITY, scale=0.005, fare_per_km=3.0)
    day = generate_day(city, seed=1)
    write_day(tmp_path, day, gps=False)
    write_orders(tmp_path / "order_20161101", day.orders, with_reward=False)
    cfg = SimConfig(max_pending=16)
    built, info, value, src = prepare(city, cfg, seed=1, data_dir=str(tmp_path))
    assert src["orders"].reward is None and info.num_orders > 20
    a = built.events.arrivals
    valid = np.asarray(a.valid)
    order = np.asarray(a.order)[valid]
    # the generator's fares (coordinates rounded to 1e-6 degrees: fares to the cent)
    np.testing.assert_allclose(np.asarray(a.fare)[valid], day.orders.reward[order], atol=0.02)
    # values trained on the file equal values trained on the generator's fares
    ref = pretrain_value(day.orders, DAY0, cfg, city.bounds)
    np.testing.assert_allclose(np.asarray(value), np.asarray(ref), rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="no reward_units column: pass fare_fn"):
        build_day(src["orders"], src["drivers"], cfg, bounds=city.bounds, day_start=DAY0,
                  t_start_s=8 * 3600, num_batches=10, seed=0)
    np.testing.assert_allclose(fare_function(city)(np.array([3.0]), np.array([8.0])),
                               [8.0 + 3.0 * (3.0 * 1.3 - 2.0)])


def test_small_pool_with_exponential_patience_warns_and_overflow_is_shown(city_day):
    """Finding 3: build_day warns when the pool is below the orders that can wait at once;
    the experiments' tables show capacity overflow."""
    cfg = SimConfig(patience="exponential", max_pending=8)
    kw = dict(bounds=CHENGDU_BOUNDS, day_start=DAY0, t_start_s=8 * 3600, num_batches=900,
              seed=0)
    with pytest.warns(UserWarning, match="sim.max_pending=8 is below the ~"):
        build_day(city_day.orders, city_day.drivers, cfg, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_day(city_day.orders, city_day.drivers, SimConfig(), **kw)      # one_batch
        build_day(city_day.orders, city_day.drivers,
                  dataclasses.replace(cfg, max_pending=1_000), **kw)
    over = {"pending_overflow": 12.0, "bucket_overflow": 0.0, "row_overflow": 1.0}
    methods = {"myopic/hungarian": {"overflow": over}, "ltd/hungarian": {"overflow": {
        k: 0.0 for k in over}}}
    assert overflow_total(methods["myopic/hungarian"]) == 13.0
    note = overflow_note(methods)
    assert "WARNING" in note
    assert "pending_overflow > 0 in 1 of 2 runs (total 12, at most 12 per run: " \
        "myopic/hungarian)" in note and "row_overflow > 0 in 1 of 2 runs" in note
    assert "ltd/hungarian" not in note and overflow_note({"ltd": methods["ltd/hungarian"]}) == ""
    from experiments.dispatch import HEADER, table_row
    row = table_row("myopic/hungarian@8000drivers", {
        "revenue": 1.0, "answer_rate": 0.5, "completion_rate": 0.4, "cancellation_rate": 0.1,
        "mean_pickup_m": 900.0, "driver_idle_share": 0.2, "us_per_batch": 100.0,
        "overflow": over})
    assert len(row) == len(HEADER) and row[HEADER.index("overflow")] == 13


def _nearest_instances(rng, count, n, m):
    """Sparse graphs with pick-ups of 100 m or 1,900 m (where fewer, nearer pairs tempt)."""
    out = []
    for _ in range(count):
        mask = rng.random((n, m)) < 0.3
        dist = np.where(rng.random((n, m)) < 0.5, 100.0, 1_900.0) + rng.uniform(0, 50, (n, m))
        out.append((np.where(mask, dist, 0.0), mask))
    D = np.array([[100., 1900., 0], [0, 100., 1900.], [1900., 0, 0]])   # the review's case
    mask = np.zeros((n, m), bool)
    mask[:3, :3] = D > 0
    dist = np.zeros((n, m))
    dist[:3, :3] = D
    return out + [(dist, mask)]


def _max_cardinality_min_distance(dist, mask):
    """scipy: the most pairs, then the least total distance (big-M weights in float64)."""
    r, c = linear_sum_assignment(np.where(mask, 1e7 - dist, 0.0), maximize=True)
    keep = mask[r, c]
    return int(keep.sum()), float(dist[r[keep], c[keep]].sum())


def test_nearest_weights_give_max_cardinality_with_auction_and_scipy():
    """Finding 4: any k+1 pairs outweigh any k pairs; the auction (its tolerance for nearest)
    returns the most pairs, as the exact optimum of the weights does."""
    cfg = SimConfig(dispatcher="nearest", matcher="auction", max_pending=8, max_rows=8,
                    max_columns=12, size_classes=())
    n = nearest_pairs_bound(cfg)
    assert n == 8
    solve = jax.jit(lambda g: solve_graph(g, cfg, "auction"))
    rng = np.random.default_rng(0)
    for dist, mask in _nearest_instances(rng, 40, 8, 12):
        w = np.where(mask, np.asarray(edge_weights("nearest", jnp.asarray(dist, jnp.float32),
                                                   0, 0, 0, 0, 0, 0, 0, None, cfg)), 0.0)
        assert w[mask].min() >= 1.0 and w[mask].max() <= 1.0 + 1.0 / (n + 1) + 1e-6
        pairs, best_dist = _max_cardinality_min_distance(dist, mask)
        # exact max-weight matching of the weights (float64): most pairs, least distance
        r, c = linear_sum_assignment(w, maximize=True)
        keep = mask[r, c]
        assert int(keep.sum()) == pairs
        assert dist[r[keep], c[keep]].sum() == pytest.approx(best_dist, abs=1.0)
        # the auction through the dispatcher's solve (float32)
        g = Graph(jnp.asarray(w, jnp.float32), jnp.asarray(mask), jnp.asarray(dist, jnp.float32),
                  jnp.arange(12, dtype=jnp.int32))
        rows = np.asarray(solve(g))
        got = [(i, j) for i, j in enumerate(rows) if j >= 0 and mask[i, j]]
        assert len(got) == pairs
        assert len({j for _, j in got}) == len(got)
        total = sum(w[i, j] for i, j in got)
        assert total >= w[r[keep], c[keep]].sum() * (1 - 1e-3) - 1e-5


def test_entry_points_validate_the_config(city_day):
    """Finding 5: bad knobs are ConfigErrors naming the field at build_day, init_state and
    run_day, not deep JAX or NumPy errors."""
    kw = dict(bounds=CHENGDU_BOUNDS, day_start=DAY0, t_start_s=8 * 3600, num_batches=4, seed=0)
    for field, value in (("batch_s", 0.0), ("k_nearest", 0), ("max_pending", 0),
                         ("gamma", float("nan"))):
        bad = dataclasses.replace(SimConfig(), **{field: value})
        with pytest.raises(ConfigError, match=f"sim.{field}"):
            build_day(city_day.orders, city_day.drivers, bad, **kw)
    day, _ = build_day(city_day.orders, city_day.drivers, SimConfig(), **kw)
    bad = dataclasses.replace(SimConfig(), k_nearest=0)
    with pytest.raises(ConfigError, match="sim.k_nearest"):
        init_state(day, bad)
    from fedrl.dispatch.simulator import run_day
    with pytest.raises(ConfigError, match="sim.k_nearest"):
        run_day(day, jax.random.PRNGKey(0), bad)


@pytest.mark.parametrize("field,value", [
    ("size_classes", (8, 24)), ("size_classes", (("a", 2),)), ("size_classes", ((8,),)),
    ("candidate_classes", 8), ("candidate_classes", (2.5,)), ("value_gap_s", float("inf")),
    ("value_gap_s", "600"), ("td_online", "no"), ("measure_gap", 1),
    ("match_nonpositive", "yes"), ("value_fill_slot_mean", 0), ("k_nearest", True),
    ("pickup_road_factor", 0.8), ("value_cell_m", 1.0), ("size_classes", ((4, 24),)),
    ("size_classes", ((16, 8),)), ("size_classes", ((8, 40), (12, 24)))])
def test_sim_config_errors_name_the_field(field, value):
    """Finding 6 (((4, 24),) and ((16, 8),): the auction's class rule under vmap, rows in
    (4, columns]); ((8, 40), (12, 24)): classes not nested, so a platform solved on the class
    shared across the platform vmap would lose its columns 24..39 (session 11 review)."""
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(SimConfig(), **{field: value}).validate()
    if field == "size_classes" and value == ((4, 24),):
        dataclasses.replace(SimConfig(), matcher="hungarian", size_classes=value).validate()


def test_td_update_at_the_end_of_the_day_is_terminal():
    """Finding 11: at t = 24 h value_at reads 0 and td0_update writes nothing."""
    cfg = SimConfig()
    rng = np.random.default_rng(0)
    V = jnp.asarray(rng.uniform(1, 5, (cfg.num_slots, value_grid(cfg).num_cells)), jnp.float32)
    x, y = jnp.asarray([5_000.0, 9_000.0]), jnp.asarray([7_000.0, 3_000.0])
    valid, matched = jnp.asarray([True, True]), jnp.asarray([True, False])
    weight = jnp.asarray([3.0, 0.0])
    assert np.all(np.asarray(value_at(V, 86_400.0, x, y, cfg)) == 0.0)
    same = td0_update(V, 86_400.0, x, y, valid, matched, weight, cfg)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(V))
    before = td0_update(V, 86_398.0, x, y, valid, matched, weight, cfg)
    changed = np.argwhere(np.asarray(before) != np.asarray(V))
    assert len(changed) == 2 and set(changed[:, 0]) == {cfg.num_slots - 1}


def test_file_driven_dispatch_runs_have_one_block(tmp_path):
    """Finding 7: a data folder with a drivers_* file gives one table block."""
    from experiments.dispatch import PRESETS, supply_blocks
    config = PRESETS["quick"]()
    assert supply_blocks(config)[0] == (8_000.0, 20_000.0)
    (tmp_path / "drivers_20161101").write_text("")
    levels, drv, notes = supply_blocks(dataclasses.replace(config, data_dir=str(tmp_path)))
    assert len(levels) == 1 and drv.name == "drivers_20161101"
    assert "supply_levels (8000.0, 20000.0) ignored" in notes[0]
    (tmp_path / "drivers_20161101").unlink()
    assert supply_blocks(dataclasses.replace(config, data_dir=str(tmp_path)))[0] == (8_000.0,
                                                                                     20_000.0)
