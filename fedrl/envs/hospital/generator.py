"""Build ``EnvParams`` from a ``HospitalConfig``: one hospital, or K heterogeneous (non-IID) ones.

``make_hospitals`` draws the heterogeneity of spec/domain.md part A [assumption]: annual volume
15k-90k (log-spaced, hospital 0 smallest), ESI mix between a tertiary (2/30/50/15/3 %) and a
community (0.5/10/38/38/13.5 %) centre (larger hospitals lean tertiary), staffing +-30 % around
the workload-proportional level, and perturbed weekday profiles. Everything is a deterministic
function of the key.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.config import ConfigError
from fedrl.envs.hospital.config import SERVICE_ORDERS, HospitalConfig
from fedrl.envs.hospital.types import EnvParams

TERTIARY_ESI = (0.02, 0.30, 0.50, 0.15, 0.03)
COMMUNITY_ESI = (0.005, 0.10, 0.38, 0.38, 0.135)
MIN_VISITS, MAX_VISITS = 15_000.0, 90_000.0


def _lognormal(mean: np.ndarray, cv: float) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a lognormal with the given mean and coefficient of variation."""
    sigma2 = math.log1p(cv * cv)
    return np.log(mean) - sigma2 / 2.0, np.full_like(mean, math.sqrt(sigma2))


def _by_hour(values_by_shift, shift_starts) -> np.ndarray:
    """Per-shift values for each of 24 hours (hour h: the last shift started at or before h)."""
    out = np.zeros(24)
    order = sorted(range(3), key=lambda i: shift_starts[i])
    for h in range(24):
        current = order[-1]  # before the earliest start, the latest-starting shift (overnight)
        for i in order:
            if shift_starts[i] <= h:
                current = i
        out[h] = values_by_shift[current]
    return out


def _slots(units: np.ndarray, per_unit: float) -> np.ndarray:
    """Integer concurrent slots; at least one whenever some capacity is on duty."""
    slots = np.floor(units * per_unit + 0.5)
    return np.where(units > 0, np.maximum(slots, 1), 0).astype(np.int32)


def make_params(cfg: HospitalConfig) -> EnvParams:
    """Validate ``cfg`` and turn it into arrays (one hospital, no leading axis)."""
    cfg.validate()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    service_mean = np.asarray(cfg.service_mean_minutes, np.float64)
    service_mu, service_sigma = _lognormal(service_mean, cfg.service_cv)
    los_mu, los_sigma = _lognormal(np.asarray(cfg.los_mean_minutes, np.float64), cfg.los_cv)
    shares = np.asarray(cfg.esi_shares, np.float64)
    shares = shares / shares.sum()
    hour = np.asarray(cfg.hour_multipliers, np.float64)
    day = np.asarray(cfg.day_multipliers, np.float64)
    physicians = _by_hour(cfg.physicians_by_shift, cfg.shift_starts) * cfg.staffing_factor
    equipment = _by_hour(cfg.equipment_by_shift, cfg.shift_starts) * cfg.staffing_factor
    return EnvParams(
        arrivals_per_minute=f32(cfg.annual_visits / (365.0 * 24.0 * 60.0)),
        hour_multipliers=f32(hour / hour.mean()),
        day_multipliers=f32(day / day.mean()),
        esi_cdf=f32(np.cumsum(shares)),
        esi_queue=jnp.asarray(cfg.esi_queue, jnp.int32),
        service_mu=f32(service_mu), service_sigma=f32(service_sigma),
        los_mu=f32(los_mu), los_sigma=f32(los_sigma),
        service_mean=f32(service_mean),
        admit_prob=f32(cfg.admit_prob),
        boarding_mean=f32(cfg.boarding_mean_minutes),
        patience_mean=f32(cfg.patience_mean_minutes),
        target_minutes=f32(cfg.target_minutes),
        staff_by_hour=jnp.asarray(_slots(physicians, cfg.patients_per_physician)),
        equipment_by_hour=jnp.asarray(_slots(equipment, 1.0)),
        num_beds=jnp.asarray(cfg.num_beds, jnp.int32),
        equipment_needed=jnp.asarray(cfg.equipment_needed, bool),
        boost_threshold=f32(cfg.boost_threshold_minutes),
        aging=jnp.asarray(cfg.aging, bool),
        service_order=jnp.asarray(SERVICE_ORDERS.index(cfg.service_order), jnp.int32),
        start_day=jnp.asarray(cfg.start_day, jnp.int32),
        surge_staff=jnp.asarray(
            int(math.floor(cfg.surge_physicians * cfg.patients_per_physician + 0.5)), jnp.int32),
        surge_beds=jnp.asarray(cfg.surge_beds, jnp.int32),
        surge_equipment=jnp.asarray(cfg.surge_equipment, jnp.int32),
        surge_duration=f32(cfg.surge_duration_minutes),
        surge_cost=f32(cfg.surge_cost),
        transfer_fixed_cost=f32(cfg.transfer_fixed_cost),
        transfer_delay=f32(cfg.transfer_delay_minutes),
        acuity_weights=f32(cfg.acuity_weights),
        w_wait=f32(cfg.w_wait), w_var=f32(cfg.w_var), w_bonus=f32(cfg.w_bonus),
        overutil_threshold=f32(cfg.overutil_threshold),
        overutil_penalty=f32(cfg.overutil_penalty),
        reward_scale=f32(cfg.reward_scale),
        obs_queue_scale=f32(cfg.obs_queue_scale),
        obs_arrival_scale=f32(cfg.obs_arrival_scale),
        spill=jnp.asarray(cfg.spill_to_other_queues, bool),
        wait_accumulated=jnp.asarray(cfg.wait_cost_mode == "accumulated", bool),
        dt=float(cfg.decision_interval_minutes),
        max_steps=int(cfg.episode_steps),
        max_patients=int(cfg.max_patients),
        max_arrivals=int(cfg.max_arrivals_per_step),
        max_transfers_in=int(cfg.max_transfers_in_per_step),
        event_buffer=int(cfg.event_buffer_size),
        max_starts=int(cfg.max_starts_per_step),
    )


def _mean_service(cfg: HospitalConfig, shares) -> float:
    return float(np.dot(shares, cfg.service_mean_minutes))


def _mean_bed_time(cfg: HospitalConfig, shares) -> float:
    bed = np.maximum(np.asarray(cfg.los_mean_minutes), np.asarray(cfg.service_mean_minutes))
    bed = bed + np.asarray(cfg.admit_prob) * cfg.boarding_mean_minutes
    return float(np.dot(shares, bed))


def hospital_configs(cfg: HospitalConfig, num_hospitals: int, key: jax.Array
                     ) -> list[HospitalConfig]:
    """The K per-hospital configs behind ``make_hospitals`` (useful for tables and docs).

    Hospital k's volume is log-spaced over [15k, 90k] visits/year with a stratified jitter, so
    hospital 0 is the smallest and K-1 the largest. The tertiary share of the ESI mix rises with
    size (plus noise); physicians, equipment and beds scale with the hospital's workload relative
    to ``cfg`` (volume x mean service / bed time), times a staffing factor in [0.7, 1.3] (beds
    [0.85, 1.15]) [assumption]. Weekday multipliers get lognormal noise (sigma 0.1), renormalised.
    """
    if not isinstance(num_hospitals, int) or num_hospitals < 1:
        raise ConfigError(f"num_hospitals must be an integer >= 1, got {num_hospitals!r}")
    cfg.validate()
    base_shares = np.asarray(cfg.esi_shares)
    base_service = _mean_service(cfg, base_shares)
    base_bed = _mean_bed_time(cfg, base_shares)
    out = []
    for k in range(num_hospitals):
        u = np.asarray(jax.random.uniform(jax.random.fold_in(key, k), (5,)), np.float64)
        size = (k + 0.25 + 0.5 * u[0]) / num_hospitals  # stratified in [0, 1]
        visits = MIN_VISITS * (MAX_VISITS / MIN_VISITS) ** size
        tertiary = float(np.clip(size + 0.3 * (u[1] - 0.5), 0.0, 1.0))
        shares = tertiary * np.asarray(TERTIARY_ESI) + (1 - tertiary) * np.asarray(COMMUNITY_ESI)
        shares = shares / shares.sum()
        staff_factor = 0.7 + 0.6 * u[2]
        bed_factor = 0.85 + 0.3 * u[3]
        load = visits / cfg.annual_visits
        staff_scale = load * _mean_service(cfg, shares) / base_service * staff_factor
        bed_scale = load * _mean_bed_time(cfg, shares) / base_bed * bed_factor
        noise = np.exp(0.1 * np.asarray(
            jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, k), 1), (7,))))
        day = np.asarray(cfg.day_multipliers) * noise
        out.append(dataclasses.replace(
            cfg,
            annual_visits=float(visits),
            esi_shares=tuple(float(s) for s in shares),
            staffing_factor=float(cfg.staffing_factor * staff_scale),
            num_beds=int(max(2, round(cfg.num_beds * bed_scale))),
            day_multipliers=tuple(float(d) for d in day / day.mean()),
        ))
    return out


def make_hospitals(cfg: HospitalConfig, num_hospitals: int, key: jax.Array) -> EnvParams:
    """K heterogeneous hospitals stacked along a leading axis (``jax.vmap`` over axis 0)."""
    params = [make_params(c) for c in hospital_configs(cfg, num_hospitals, key)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params)


__all__ = ["make_params", "make_hospitals", "hospital_configs", "TERTIARY_ESI", "COMMUNITY_ESI"]
