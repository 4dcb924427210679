"""Every knob of the emergency-department (ED) scheduling environment, in one frozen dataclass.

Defaults follow ``spec/domain.md`` part A (sources there); values marked [reconstructed] are
design choices of this implementation, documented in ``docs/hospital_env.md``. Times are in
minutes, rates in arrivals per hour, costs in unscaled reward units (the reward is multiplied
by ``reward_scale`` at the end so DQN targets are O(1)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

from fedrl.config import ConfigError, require, require_in_range, require_positive

NUM_ESI = 5
NUM_QUEUES = 3
# Within-queue service orders; the index is EnvParams.service_order.
SERVICE_ORDERS = ("queue_entry", "arrival", "acuity_then_arrival")

# Canadian ED hour-of-day arrival multipliers (EDSim data, mean 1.0), hours 0..23.
HOUR_MULTIPLIERS = (.74, .62, .51, .45, .43, .48, .46, .71, .93, 1.10, 1.25, 1.45,
                    1.39, 1.36, 1.33, 1.35, 1.34, 1.30, 1.25, 1.32, 1.19, 1.07, 1.02, .93)
# [assumption, Monday peak] Mon..Sun.
DAY_MULTIPLIERS = (1.12, 1.04, 1.00, 0.99, 0.98, 0.93, 0.94)


@dataclasses.dataclass(frozen=True)
class HospitalConfig:
    """Configuration of one ED (and of the heterogeneous family built by ``make_hospitals``)."""

    # --- arrivals: non-homogeneous Poisson (rate = annual/8760 * hour mult * day mult) ---
    annual_visits: float = 40_000.0
    hour_multipliers: Tuple[float, ...] = HOUR_MULTIPLIERS
    day_multipliers: Tuple[float, ...] = DAY_MULTIPLIERS
    # ESI 1..5 shares (US totals fit).
    esi_shares: Tuple[float, ...] = (0.01, 0.16, 0.43, 0.31, 0.09)
    # ESI level -> MLFQ queue at triage (0 high, 1 medium, 2 low).
    esi_queue: Tuple[int, ...] = (0, 0, 1, 2, 2)

    # --- patients ---
    service_mean_minutes: Tuple[float, ...] = (60.0, 45.0, 35.0, 20.0, 12.0)  # provider time
    service_cv: float = 0.7
    los_mean_minutes: Tuple[float, ...] = (220.0, 280.0, 237.0, 157.0, 135.0)  # bed LOS (NHAMCS)
    los_cv: float = 0.8  # [reconstructed]
    admit_prob: Tuple[float, ...] = (0.32, 0.32, 0.155, 0.031, 0.036)
    boarding_mean_minutes: float = 120.0  # extra bed time of admitted patients [reconstructed]
    # Patience before leaving without being seen (exponential); <= 0 means "never leaves".
    patience_mean_minutes: Tuple[float, ...] = (0.0, 0.0, 240.0, 150.0, 120.0)
    # Time-to-provider targets (CTAS) for the "seen within target" metric.
    target_minutes: Tuple[float, ...] = (0.0, 15.0, 30.0, 60.0, 120.0)

    # --- resources ---
    # Physicians on duty by shift: day [shift_starts[0], shift_starts[1]), evening, night.
    physicians_by_shift: Tuple[float, ...] = (3.0, 2.0, 1.0)
    shift_starts: Tuple[int, ...] = (8, 16, 0)  # [reconstructed] evening covers the peak
    # Concurrent patients one physician manages [reconstructed].
    patients_per_physician: float = 1.75
    num_beds: int = 26
    # Equipment units (monitors / imaging slots) available by shift [reconstructed].
    equipment_by_shift: Tuple[float, ...] = (5.0, 4.0, 3.0)
    # ESI levels whose provider phase needs one equipment unit [reconstructed]: ESI 1-3.
    equipment_needed: Tuple[bool, ...] = (True, True, True, False, False)
    staffing_factor: float = 1.0  # multiplies physicians and equipment (hospital heterogeneity)

    # --- MLFQ and decisions ---
    boost_threshold_minutes: float = 60.0  # aging: wait in a queue longer than this -> move up
    # MLFQ aging (priority boost) on/off. Off turns the queues into fixed triage classes (the
    # setting under which "strict priority" and "FIFO" are the textbook disciplines).
    aging: bool = True
    # Order in which the served queue's patients start (see SERVICE_ORDERS): "queue_entry"
    # (the MLFQ's FIFO by time of entering the current queue; default), "arrival" (FIFO by
    # arrival at the ED), "acuity_then_arrival" (lowest ESI level first, then arrival).
    service_order: str = "queue_entry"
    decision_interval_minutes: float = 5.0
    episode_steps: int = 288  # one day of 5-minute decisions; 2016 for a week
    start_day: int = -1  # day of week of the first decision (0 = Monday); -1 = random per episode
    # After serving the chosen queue, leftover capacity serves the other queues in priority order
    # (work-conserving).  Off by default: the decision is which single queue to serve [recon.].
    spill_to_other_queues: bool = False

    # --- fixed-size arrays ---
    max_patients: int = 96  # patient slots (waiting + in beds); arrivals beyond are diverted
    max_arrivals_per_step: int = 8  # Poisson arrivals beyond this in one interval are diverted
    max_transfers_in_per_step: int = 4
    event_buffer_size: int = 16  # per-step log of patients leaving the waiting room (metrics)
    # Service starts per decision (the rest wait for the next one); bounds an unrolled loop.
    max_starts_per_step: int = 8

    # --- action 3: surge resource ---
    surge_physicians: float = 1.0
    surge_beds: int = 2
    surge_equipment: int = 1
    surge_duration_minutes: float = 240.0
    surge_cost: float = 300.0  # per surge_duration of surge bought (pro rata when extending)

    # --- action 4: transfer out ---
    transfer_fixed_cost: float = 300.0  # ambulance, handover, risk [reconstructed]
    transfer_delay_minutes: float = 60.0  # delay charged like waiting: w_wait*weight*delay

    # --- reward (seed): -w_wait*sum(w_esi*wait_min) - w_var*var(q) + w_bonus*done_high - overutil
    # (costs are in acuity-weighted waiting minutes; see reward.py) ---
    acuity_weights: Tuple[float, ...] = (30.0, 15.0, 1.0, 1.0, 1.0)  # Lee & Lee 2020 (KTAS)
    w_wait: float = 1.0
    w_var: float = 10.0
    w_bonus: float = 50.0
    overutil_threshold: float = 0.9
    overutil_penalty: float = 20.0
    # "accumulated": seed's snapshot sum of current waits; "increment": dt per waiting patient.
    wait_cost_mode: str = "accumulated"
    reward_scale: float = 0.01

    # --- observation normalisation ---
    obs_queue_scale: float = 10.0  # queue lengths / this
    obs_arrival_scale: float = 10.0  # predicted arrivals next hour / this

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        require_positive("annual_visits", self.annual_visits)
        _tuple("hour_multipliers", self.hour_multipliers, 24, allow_zero=True)
        require(sum(self.hour_multipliers) > 0, "hour_multipliers must not all be zero")
        _tuple("day_multipliers", self.day_multipliers, 7, allow_zero=True)
        require(sum(self.day_multipliers) > 0, "day_multipliers must not all be zero")
        _shares("esi_shares", self.esi_shares)
        require(len(self.esi_queue) == NUM_ESI
                and all(isinstance(q, int) and 0 <= q < NUM_QUEUES for q in self.esi_queue),
                f"esi_queue must hold {NUM_ESI} queue indices in 0..{NUM_QUEUES - 1}, "
                f"got {self.esi_queue!r}")
        _tuple("service_mean_minutes", self.service_mean_minutes, NUM_ESI)
        require_positive("service_cv", self.service_cv)
        _tuple("los_mean_minutes", self.los_mean_minutes, NUM_ESI)
        require_positive("los_cv", self.los_cv)
        _tuple("admit_prob", self.admit_prob, NUM_ESI, allow_zero=True)
        for p in self.admit_prob:
            require_in_range("admit_prob", p, 0.0, 1.0)
        require_positive("boarding_mean_minutes", self.boarding_mean_minutes, allow_zero=True)
        _tuple("patience_mean_minutes", self.patience_mean_minutes, NUM_ESI, allow_zero=True)
        _tuple("target_minutes", self.target_minutes, NUM_ESI, allow_zero=True)
        _tuple("physicians_by_shift", self.physicians_by_shift, 3, allow_zero=True)
        require(len(self.shift_starts) == 3
                and all(isinstance(h, int) and 0 <= h < 24 for h in self.shift_starts)
                and len(set(self.shift_starts)) == 3,
                f"shift_starts must be 3 distinct hours in 0..23, got {self.shift_starts!r}")
        require_positive("patients_per_physician", self.patients_per_physician)
        require(isinstance(self.num_beds, int) and self.num_beds >= 1,
                f"num_beds must be an integer >= 1, got {self.num_beds!r}")
        _tuple("equipment_by_shift", self.equipment_by_shift, 3, allow_zero=True)
        require(len(self.equipment_needed) == NUM_ESI,
                f"equipment_needed must have {NUM_ESI} entries, got {self.equipment_needed!r}")
        require_positive("staffing_factor", self.staffing_factor)
        require_positive("boost_threshold_minutes", self.boost_threshold_minutes)
        require(isinstance(self.aging, bool), f"aging must be a bool, got {self.aging!r}")
        require(self.service_order in SERVICE_ORDERS,
                f"service_order must be one of {SERVICE_ORDERS}, got {self.service_order!r}")
        require_positive("decision_interval_minutes", self.decision_interval_minutes)
        for name in ("episode_steps", "max_patients", "max_arrivals_per_step",
                     "max_transfers_in_per_step", "event_buffer_size", "max_starts_per_step"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1,
                    f"{name} must be an integer >= 1, got {value!r}")
        horizon = self.episode_steps * self.decision_interval_minutes
        require(horizon < 131_072, f"episode_steps * decision_interval_minutes must stay below "
                f"131072 minutes (~91 days, float32 clock resolution), got {horizon}")
        require(isinstance(self.start_day, int) and -1 <= self.start_day <= 6,
                f"start_day must be -1 (random) or 0..6, got {self.start_day!r}")
        require_positive("surge_physicians", self.surge_physicians, allow_zero=True)
        require(isinstance(self.surge_beds, int) and self.surge_beds >= 0,
                f"surge_beds must be an integer >= 0, got {self.surge_beds!r}")
        require(isinstance(self.surge_equipment, int) and self.surge_equipment >= 0,
                f"surge_equipment must be an integer >= 0, got {self.surge_equipment!r}")
        require_positive("surge_duration_minutes", self.surge_duration_minutes, allow_zero=True)
        for name in ("surge_cost", "transfer_fixed_cost", "transfer_delay_minutes", "w_wait",
                     "w_var", "w_bonus", "overutil_penalty"):
            require_positive(name, getattr(self, name), allow_zero=True)
        _tuple("acuity_weights", self.acuity_weights, NUM_ESI, allow_zero=True)
        require_in_range("overutil_threshold", self.overutil_threshold, 0.0, 1.0)
        require(self.wait_cost_mode in ("accumulated", "increment"),
                f"wait_cost_mode must be 'accumulated' or 'increment', "
                f"got {self.wait_cost_mode!r}")
        require_positive("reward_scale", self.reward_scale)
        require_positive("obs_queue_scale", self.obs_queue_scale)
        require_positive("obs_arrival_scale", self.obs_arrival_scale)

    @property
    def arrivals_per_hour(self) -> float:
        return self.annual_visits / 8760.0


def _tuple(name: str, values, length: int, *, allow_zero: bool = False) -> None:
    require(isinstance(values, (tuple, list)) and len(values) == length,
            f"{name} must have {length} entries, got {values!r}")
    for v in values:
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        require(ok, f"{name} entries must be finite and {'>= 0' if allow_zero else '> 0'}, "
                    f"got {values!r}")


def _shares(name: str, values) -> None:
    _tuple(name, values, NUM_ESI, allow_zero=True)
    total = sum(values)
    require(abs(total - 1.0) < 1e-3, f"{name} must sum to 1, got {values!r} (sum {total:.4f})")


__all__ = ["ConfigError", "HospitalConfig", "NUM_ESI", "NUM_QUEUES", "SERVICE_ORDERS",
           "HOUR_MULTIPLIERS",
           "DAY_MULTIPLIERS"]
