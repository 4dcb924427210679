"""Synthetic Chengdu-like city: one day of orders and driver shifts in the GAIA file format.

The Didi GAIA data cannot be downloaded here, so experiments run on a generator calibrated to
the published Chengdu figures (shared/spec/domain.md part B):

* bounding box of the Chengdu release (~30 x 34 km), ~231k orders/day at ``scale=1``;
* weekday demand bimodal (07-09 and 17:30-19:30 peaks) with a night trough ~0.15x the mean;
* origins/destinations: a mixture of Gaussian hotspots ("residential" and "business"; mornings
  flow residential -> business, evenings the reverse [assumption]) plus a uniform background;
* trip distance = straight line x road factor 1.3, speed U(20, 25) km/h [assumption];
* fare = 8 + 1.9/km beyond 2 km, +20 % at night (23:00-06:00) (Chengdu 2016 tariff shape);
* drivers: 4k-8k per day (8k at scale 1), shifts U(4, 10) h, shift starts following demand
  one hour early (measured at scale 1, seed 0: 3,256 online at the evening peak, above the
  spec's 1.5k-3k; see docs/dispatch.md);
* a split of drivers and orders over K platforms by market share, optionally spatially skewed
  (platform k is ``exp(spatial_skew)`` times stronger in its own vertical strip of the city).

Everything is vectorised NumPy driven by one ``numpy.random.Generator(seed)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np

from fedrl.config import ConfigError, require, require_in_range, require_positive
from fedrl.data.gaia import CHENGDU_BOUNDS, Bounds, Drivers, Orders
from fedrl.data.grid import local_projection

DAY_S = 86_400
# 2016-11-01 00:00 in China Standard Time (UTC+8), the first day of the Chengdu release.
DEFAULT_DAY_START = 1_477_929_600


@dataclasses.dataclass(frozen=True)
class CityConfig:
    scale: float = 1.0                 # multiplies orders and drivers
    orders_per_day: float = 231_000.0  # at scale 1 (Chengdu, Nov 2016)
    drivers_per_day: float = 8_000.0   # at scale 1 (4k-8k in the data; upper end, see docs)
    day_start: int = DEFAULT_DAY_START
    hours: float = 24.0                # generate only [0, hours) of the day (quick runs)
    start_hour: float = 0.0
    night_trough: float = 0.15         # demand at 03-05 h relative to the daily mean
    num_hotspots: int = 14
    hotspot_sigma_km: tuple = (0.8, 2.0)
    background_share: float = 0.25
    road_factor: float = 1.3
    speed_kmh: tuple = (20.0, 25.0)
    fare_base: float = 8.0
    fare_base_km: float = 2.0
    fare_per_km: float = 1.9
    night_surcharge: float = 0.2
    shift_hours: tuple = (4.0, 10.0)
    min_trip_km: float = 0.5
    hotspot_dest_share: float = 0.35
    hop_median_km: float = 3.0
    hop_sigma: float = 0.6
    bounds: Bounds = CHENGDU_BOUNDS

    def validate(self) -> None:
        require_positive("city.scale", self.scale)
        require_positive("city.orders_per_day", self.orders_per_day)
        require_positive("city.drivers_per_day", self.drivers_per_day)
        # the generator holds a day in memory (~100 bytes per order): refuse absurd sizes
        require(self.scale * self.orders_per_day <= 1e8,
                f"city.orders_per_day x city.scale ({self.scale * self.orders_per_day:g}) must "
                "be <= 1e8")
        require(self.scale * self.drivers_per_day <= 1e7,
                f"city.drivers_per_day x city.scale ({self.scale * self.drivers_per_day:g}) must "
                "be <= 1e7")
        require(isinstance(self.day_start, int) and not isinstance(self.day_start, bool)
                and self.day_start >= 0, f"city.day_start must be a Unix time (int >= 0), got "
                f"{self.day_start!r}")
        require_in_range("city.hours", self.hours, 0.0, 24.0, low_open=True)
        require_in_range("city.start_hour", self.start_hour, 0.0, 24.0, high_open=True)
        require(self.start_hour + self.hours <= 24.0 + 1e-9,
                f"city.start_hour + city.hours must be <= 24, got {self.start_hour + self.hours}")
        require_in_range("city.night_trough", self.night_trough, 0.0, 1.0, low_open=True)
        require_in_range("city.background_share", self.background_share, 0.0, 1.0)
        require(isinstance(self.num_hotspots, int) and not isinstance(self.num_hotspots, bool)
                and self.num_hotspots >= 2,
                f"city.num_hotspots must be an integer >= 2, got {self.num_hotspots!r}")
        for name, upper in (("hotspot_sigma_km", None), ("speed_kmh", None),
                            ("shift_hours", 24.0)):
            pair = getattr(self, name)
            ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
                  and all(_finite_real(v) for v in pair) and 0 < pair[0] <= pair[1]
                  and (upper is None or pair[1] <= upper))
            within = "" if upper is None else f" <= {upper:g}"
            require(ok, f"city.{name} must be (low, high) with 0 < low <= high{within}, "
                        f"got {pair!r}")
        require_positive("city.road_factor", self.road_factor)
        require_positive("city.fare_base", self.fare_base, allow_zero=True)
        require_positive("city.fare_base_km", self.fare_base_km, allow_zero=True)
        require_positive("city.fare_per_km", self.fare_per_km, allow_zero=True)
        # a night discount is allowed, a negative fare is not
        require(_finite_real(self.night_surcharge) and self.night_surcharge >= -1.0,
                f"city.night_surcharge must be a finite number >= -1 (fares stay >= 0), got "
                f"{self.night_surcharge!r}")
        require_positive("city.min_trip_km", self.min_trip_km, allow_zero=True)
        require_in_range("city.hotspot_dest_share", self.hotspot_dest_share, 0.0, 1.0)
        require_positive("city.hop_median_km", self.hop_median_km)
        require_positive("city.hop_sigma", self.hop_sigma, allow_zero=True)
        require(isinstance(self.bounds, Bounds) and self.bounds.lon_min < self.bounds.lon_max
                and self.bounds.lat_min < self.bounds.lat_max,
                f"city.bounds must be a Bounds with min < max, got {self.bounds!r}")


def _finite_real(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(float(value)))


def demand_profile(minutes: np.ndarray, night_trough: float = 0.15) -> np.ndarray:
    """Relative demand (mean 1 over the day) at minute-of-day: bimodal weekday curve.

    Day plateau 07:00-22:00 plus Gaussian peaks at 08:00 and 18:30 (sd 45 min), smoothed
    shoulders; the floor is set so that 03:00-05:00 sits at ``night_trough`` x the mean.
    """
    h = np.asarray(minutes, np.float64) / 60.0
    plateau = 1.0 / (1.0 + np.exp(-(h - 6.8) * 2.0)) * 1.0 / (1.0 + np.exp((h - 22.5) * 1.5))
    peaks = 1.1 * np.exp(-0.5 * ((h - 8.0) / 0.75) ** 2) + \
        1.2 * np.exp(-0.5 * ((h - 18.5) / 0.75) ** 2)
    shape = plateau + peaks
    full = np.arange(24 * 60) / 60.0
    full_shape = (1.0 / (1.0 + np.exp(-(full - 6.8) * 2.0)) / (1.0 + np.exp((full - 22.5) * 1.5))
                  + 1.1 * np.exp(-0.5 * ((full - 8.0) / 0.75) ** 2)
                  + 1.2 * np.exp(-0.5 * ((full - 18.5) / 0.75) ** 2))
    # floor f such that (f + shape(4h)) / mean(f + shape) == night_trough
    s_night, s_mean = float(full_shape[240]), float(full_shape.mean())
    floor = max(0.0, (night_trough * s_mean - s_night) / (1.0 - night_trough))
    return (shape + floor) / (s_mean + floor)


@dataclasses.dataclass
class CityDay:
    """A generated day: orders (GAIA format), drivers, and hotspot metadata."""
    orders: Orders
    drivers: Drivers
    hotspots: np.ndarray   # [H, 4]: x, y, sigma (m), kind (0 residential, 1 business)
    config: CityConfig
    seed: int


def _hotspots(cfg: CityConfig, rng: np.random.Generator, w: float, h: float) -> np.ndarray:
    n = cfg.num_hotspots
    # Centre-weighted placement: Chengdu is radial (ring roads around Tianfu Square).
    xy = np.stack([rng.normal(w / 2, w / 5, n), rng.normal(h / 2, h / 5, n)], 1)
    xy = np.clip(xy, [0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    sigma = rng.uniform(*cfg.hotspot_sigma_km, n) * 1000.0
    kind = (np.arange(n) % 2).astype(np.float64)
    return np.concatenate([xy, sigma[:, None], kind[:, None]], 1)


def _sample_points(rng, n, hot, weights, cfg, w, h):
    """n points from the hotspot mixture (rows of ``weights`` per point) + uniform background."""
    pts = np.empty((n, 2))
    background = rng.random(n) < cfg.background_share
    pts[background] = rng.uniform([0, 0], [w, h], (int(background.sum()), 2))
    idx = np.flatnonzero(~background)
    cum = np.cumsum(weights[idx], axis=1)
    comp = (rng.random(len(idx))[:, None] * cum[:, -1:] > cum).sum(1)
    pts[idx] = hot[comp, :2] + rng.normal(size=(len(idx), 2)) * hot[comp, 2:3]
    return np.clip(pts, [1.0, 1.0], [w - 1.0, h - 1.0])


def fare(distance_km, hour_of_day, cfg: CityConfig):
    """Chengdu-like tariff: base + per-km beyond the included distance, night surcharge."""
    base = cfg.fare_base + cfg.fare_per_km * np.maximum(0.0, distance_km - cfg.fare_base_km)
    night = (hour_of_day >= 23.0) | (hour_of_day < 6.0)
    return np.round(base * np.where(night, 1.0 + cfg.night_surcharge, 1.0), 2)


def fare_function(cfg: CityConfig):
    """The city's tariff as ``fn(straight_km, hour_of_day) -> fare``: the straight-line
    distance times ``cfg.road_factor`` priced by :func:`fare`, as the generator prices its
    trips. It prices order files without ``reward_units`` wherever fares are needed (the
    simulated day, ``schedule.build_day``, and the value pre-training,
    ``dispatch.day.pretrain_value``), so both use the same fares."""
    cfg.validate()

    def priced(straight_km, hour_of_day):
        return fare(np.asarray(straight_km, np.float64) * cfg.road_factor,
                    np.asarray(hour_of_day, np.float64), cfg)
    return priced


def generate_day(cfg: CityConfig, seed: int) -> CityDay:
    """Generate one day (or ``cfg.hours`` of it) of orders and driver shifts.

    A window too short (or a scale too small) to hold any order gives a day without orders
    (its drivers are still generated)."""
    cfg.validate()
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0,
            f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4_602_906]))
    proj = local_projection(cfg.bounds)
    w, h = cfg.bounds.width_m, cfg.bounds.height_m
    hot = _hotspots(cfg, rng, w, h)

    # --- order times: inhomogeneous Poisson over the generated window -------------------
    minutes = np.arange(24 * 60)
    rate = demand_profile(minutes, cfg.night_trough) * cfg.orders_per_day * cfg.scale / (24 * 60)
    lo, hi = int(round(cfg.start_hour * 60)), int(round((cfg.start_hour + cfg.hours) * 60))
    counts = rng.poisson(rate[lo:hi])
    t_sec = (np.repeat(np.arange(lo, hi), counts) * 60 + rng.uniform(0, 60, counts.sum()))
    t_sec = np.sort(t_sec)
    n = len(t_sec)
    hour = t_sec / 3600.0

    # --- origins/destinations: residential->business in the morning, reverse in evening ---
    kind = hot[:, 3]
    morning = np.exp(-0.5 * ((hour - 8.0) / 1.5) ** 2)[:, None]
    evening = np.exp(-0.5 * ((hour - 18.5) / 1.5) ** 2)[:, None]
    base_w = np.ones((n, len(hot)))
    origin_w = base_w + 2.0 * morning * (kind == 0) + 2.0 * evening * (kind == 1)
    dest_w = base_w + 2.0 * morning * (kind == 1) + 2.0 * evening * (kind == 0)
    origin = _sample_points(rng, n, hot, origin_w, cfg, w, h)
    dest = _sample_points(rng, n, hot, dest_w, cfg, w, h)
    # Gravity-like trip lengths: most trips are a log-normal hop from the origin (median
    # ``hop_median_km``) towards anywhere; the rest go to a hotspot [assumption fitted to
    # Chengdu's ~15-20 min mean trip]. Too-short trips are stretched to ``min_trip_km``.
    hop = rng.random(n) >= cfg.hotspot_dest_share
    ang = rng.uniform(0, 2 * np.pi, hop.sum())
    length = rng.lognormal(math.log(cfg.hop_median_km * 1000.0), cfg.hop_sigma, hop.sum())
    dest[hop] = origin[hop] + np.stack([np.cos(ang), np.sin(ang)], 1) * length[:, None]
    vec = dest - origin
    dist = np.linalg.norm(vec, axis=1)
    short = dist < cfg.min_trip_km * 1000.0
    ang = rng.uniform(0, 2 * np.pi, short.sum())
    vec[short] = np.stack([np.cos(ang), np.sin(ang)], 1) * cfg.min_trip_km * 1000.0 * 1.5
    dest = np.clip(origin + vec, [1.0, 1.0], [w - 1.0, h - 1.0])

    road_km = np.linalg.norm(dest - origin, axis=1) * cfg.road_factor / 1000.0
    speed = rng.uniform(*cfg.speed_kmh, n)
    duration = np.maximum(60.0, road_km / speed * 3600.0)
    start = cfg.day_start + np.floor(t_sec).astype(np.int64)
    stop = start + np.round(duration).astype(np.int64)
    plon, plat = proj.to_lonlat(origin[:, 0], origin[:, 1])
    dlon, dlat = proj.to_lonlat(dest[:, 0], dest[:, 1])
    ids = _hex_ids(rng, n)
    orders = Orders(order_id=ids, start=start, stop=stop,
                    pickup_lon=np.round(plon, 6), pickup_lat=np.round(plat, 6),
                    dropoff_lon=np.round(dlon, 6), dropoff_lat=np.round(dlat, 6),
                    reward=fare(road_km, hour % 24.0, cfg))

    # --- drivers: shifts following demand, started one hour ahead ---------------------------
    # The whole day's drivers are generated even for a partial window (the simulator keeps
    # those whose shift overlaps it), so a window sees the right number online.
    nd = max(1, int(round(cfg.drivers_per_day * cfg.scale)))
    start_rate = demand_profile((minutes + 60) % (24 * 60), cfg.night_trough) + 0.3
    p = start_rate / start_rate.sum()
    s_min = rng.choice(24 * 60, size=nd, p=p) + rng.uniform(0, 1, nd)
    length_h = rng.uniform(*cfg.shift_hours, nd)
    s_start = cfg.day_start + np.floor(s_min * 60).astype(np.int64)
    s_end = np.minimum(s_start + np.round(length_h * 3600).astype(np.int64),
                       cfg.day_start + DAY_S)
    loc = _sample_points(rng, nd, hot, np.ones((nd, len(hot))), cfg, w, h)
    lon, lat = proj.to_lonlat(loc[:, 0], loc[:, 1])
    drivers = Drivers(np.asarray([f"d{seed:04d}_{i:06d}" for i in range(nd)]), s_start, s_end,
                      np.round(lon, 6), np.round(lat, 6))
    return CityDay(orders, drivers, hot, cfg, int(seed))


def _hex_ids(rng, n) -> np.ndarray:
    if n == 0:   # no order in the window: no id (and no draw, which changes nothing after it)
        return np.zeros(0, dtype="<U32")
    raw = rng.integers(0, 2 ** 63, size=(n, 2), dtype=np.int64)
    ids = np.char.add(np.char.zfill(np.char.mod("%x", raw[:, 0]), 16),
                      np.char.zfill(np.char.mod("%x", raw[:, 1]), 16))
    if len(np.unique(ids)) != n:  # astronomically unlikely; never silently duplicate
        raise RuntimeError("order id collision; use another seed")
    return ids


# ------------------------------------------------------------------------------------------
# Platform split
# ------------------------------------------------------------------------------------------
def split_platforms(x_m: np.ndarray, shares, *, rng: np.random.Generator,
                    width_m: float, spatial_skew: float = 0.0) -> np.ndarray:
    """Assign items at x coordinates ``x_m`` to platforms by market share.

    ``shares`` sums to 1 (e.g. (0.5, 0.3, 0.2)). With ``spatial_skew > 0`` platform k is
    ``exp(spatial_skew)`` times more likely inside its own vertical strip of the city
    ([reconstructed] "a platform strong in some districts"); shares then hold only roughly.
    """
    shares = np.asarray(shares, np.float64)
    if shares.ndim != 1 or len(shares) < 1 or np.any(shares <= 0) or abs(shares.sum() - 1) > 1e-6:
        raise ConfigError(f"platform shares must be positive and sum to 1, got {tuple(shares)}")
    if not (math.isfinite(spatial_skew) and spatial_skew >= 0):
        raise ConfigError(f"spatial_skew must be a finite number >= 0, got {spatial_skew}")
    k = len(shares)
    strip = np.clip((x_m / width_m * k).astype(int), 0, k - 1)
    weight = np.tile(shares, (len(x_m), 1))
    weight[np.arange(len(x_m)), strip] *= math.exp(spatial_skew)
    cum = np.cumsum(weight, 1)
    return (rng.random(len(x_m))[:, None] * cum[:, -1:] > cum).sum(1).astype(np.int32)


# ------------------------------------------------------------------------------------------
# Writing files
# ------------------------------------------------------------------------------------------
def write_orders(path, orders: Orders, *, with_reward: bool = True) -> None:
    cols = [orders.order_id, orders.start.astype(str), orders.stop.astype(str),
            np.char.mod("%.6f", orders.pickup_lon), np.char.mod("%.6f", orders.pickup_lat),
            np.char.mod("%.6f", orders.dropoff_lon), np.char.mod("%.6f", orders.dropoff_lat)]
    if with_reward and orders.reward is not None:
        cols.append(np.char.mod("%.2f", orders.reward))
    _write_rows(path, cols)


def write_drivers(path, drivers: Drivers) -> None:
    _write_rows(path, [drivers.driver_id, drivers.shift_start.astype(str),
                       drivers.shift_end.astype(str), np.char.mod("%.6f", drivers.lon),
                       np.char.mod("%.6f", drivers.lat)])


def write_gps(path, day: CityDay) -> None:
    """A minimal GPS file: each driver's shift-start and shift-end ping (order_id ``0``), both
    at the shift-start position (the generator does not track where a shift ends)."""
    d = day.drivers
    ids = np.concatenate([d.driver_id, d.driver_id])
    ts = np.concatenate([d.shift_start, d.shift_end]).astype(str)
    lon = np.char.mod("%.6f", np.concatenate([d.lon, d.lon]))
    lat = np.char.mod("%.6f", np.concatenate([d.lat, d.lat]))
    _write_rows(path, [ids, np.full(len(ids), "0"), ts, lon, lat])


def write_platforms(path, order_ids, order_platform, driver_ids, driver_platform) -> None:
    kinds = np.concatenate([np.full(len(order_ids), "order"), np.full(len(driver_ids), "driver")])
    ids = np.concatenate([np.asarray(order_ids, str), np.asarray(driver_ids, str)])
    plat = np.concatenate([order_platform, driver_platform]).astype(str)
    _write_rows(path, [kinds, ids, plat])


def _write_rows(path, cols) -> None:
    from fedrl.results import atomic_write_text
    if len(cols[0]) == 0:
        atomic_write_text(path, "")
        return
    joined = cols[0].astype(object)
    for c in cols[1:]:
        joined = joined + "," + np.asarray(c).astype(object)
    atomic_write_text(path, "\n".join(joined.tolist()) + "\n")


def day_stamp(day_start: int) -> str:
    import datetime
    tz = datetime.timezone(datetime.timedelta(hours=8))
    return datetime.datetime.fromtimestamp(day_start, tz).strftime("%Y%m%d")


def write_day(out_dir, day: CityDay, *, shares=(1.0,), spatial_skew: float = 0.0,
              gps: bool = True) -> dict:
    """Write order_YYYYMMDD, drivers_YYYYMMDD, platforms_YYYYMMDD(, gps_YYYYMMDD), city.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = day_stamp(day.config.day_start)
    rng = np.random.default_rng(np.random.SeedSequence([day.seed, 77]))
    proj = local_projection(day.config.bounds)
    ox, _ = proj.to_xy(day.orders.pickup_lon, day.orders.pickup_lat)
    dx, _ = proj.to_xy(day.drivers.lon, day.drivers.lat)
    width = day.config.bounds.width_m
    op = split_platforms(ox, shares, rng=rng, width_m=width, spatial_skew=spatial_skew)
    dp = split_platforms(dx, shares, rng=rng, width_m=width, spatial_skew=spatial_skew)
    files = {"orders": out / f"order_{stamp}", "drivers": out / f"drivers_{stamp}",
             "platforms": out / f"platforms_{stamp}"}
    write_orders(files["orders"], day.orders)
    write_drivers(files["drivers"], day.drivers)
    write_platforms(files["platforms"], day.orders.order_id, op, day.drivers.driver_id, dp)
    if gps:
        files["gps"] = out / f"gps_{stamp}"
        write_gps(files["gps"], day)
    summary = summarize_day(day)
    summary["platform_order_share"] = np.bincount(op, minlength=len(shares)).tolist()
    summary["platform_driver_share"] = np.bincount(dp, minlength=len(shares)).tolist()
    meta = {"seed": day.seed, "config": dataclasses.asdict(day.config), "shares": list(shares),
            "spatial_skew": spatial_skew, "files": {k: v.name for k, v in files.items()},
            "summary": summary,
            "checksum_orders": hashlib.md5(files["orders"].read_bytes()).hexdigest()}
    from fedrl.results import atomic_write_json
    atomic_write_json(out / "city.json", meta)
    return meta


def summarize_day(day: CityDay) -> dict:
    """Calibration figures: orders, drivers, online drivers at peak, night/mean demand."""
    o, d = day.orders, day.drivers
    t0 = day.config.day_start
    minute = ((o.start - t0) // 60).astype(int)
    per_min = np.bincount(minute, minlength=24 * 60)[:24 * 60]
    grid = np.arange(0, 24 * 3600, 600) + t0
    online = ((d.shift_start[None, :] <= grid[:, None]) & (d.shift_end[None, :] > grid[:, None])).sum(1)
    return {"orders": int(len(o)), "drivers": int(len(d)),
            "online_peak": int(online.max()), "online_mean": float(online.mean()),
            "orders_per_2s_mean": float(len(o) / (day.config.hours * 1800)),
            "orders_per_2s_peak": float(per_min.max() / 30.0),
            "mean_fare": float(o.reward.mean()) if len(o) else 0.0,
            "mean_trip_min": float(((o.stop - o.start) / 60).mean()) if len(o) else 0.0}
