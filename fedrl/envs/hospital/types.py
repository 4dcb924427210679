"""Pytrees of the ED environment: parameters (data, so hospitals can be stacked) and state.

``EnvParams`` holds per-hospital numbers as arrays; the few static fields (array sizes, episode
length, decision interval) are ``pytree_node=False`` so that ``make_hospitals``
can stack K hospitals along a leading axis and ``jax.vmap`` over them (all hospitals of one
stack share the static fields).

``EnvState`` is a fixed-capacity table of patient slots plus scalar clocks and cumulative
counters (Gymnax-style functional state).
"""
from __future__ import annotations

import jax
from flax import struct

# Patient slot status.
EMPTY = 0
WAITING = 1  # in an MLFQ queue
WITH_PROVIDER = 2  # being seen: holds a physician slot, a bed and (maybe) an equipment unit
IN_BED = 3  # provider done; holds the bed until discharge/admission (LOS + boarding)

# Kinds of "left the waiting room" events logged per step for the metrics.
EVENT_NONE = 0
EVENT_SEEN = 1
EVENT_LWBS = 2
EVENT_TRANSFERRED = 3

NUM_ACTIONS = 5
OBS_DIM = 12
ACTION_NAMES = ("serve_high", "serve_medium", "serve_low", "surge_resource", "transfer_out")


@struct.dataclass
class EnvParams:
    """One hospital (or K stacked hospitals, leading axis K on every array field)."""

    arrivals_per_minute: jax.Array  # [] base rate (annual mean)
    hour_multipliers: jax.Array  # [24]
    day_multipliers: jax.Array  # [7]
    esi_cdf: jax.Array  # [5] cumulative ESI shares
    esi_queue: jax.Array  # [5] int32
    service_mu: jax.Array  # [5] lognormal log-mean of provider time (minutes)
    service_sigma: jax.Array  # [5]
    los_mu: jax.Array  # [5] lognormal log-mean of bed length of stay (minutes)
    los_sigma: jax.Array  # [5]
    service_mean: jax.Array  # [5] (used by the c-mu policy)
    admit_prob: jax.Array  # [5]
    boarding_mean: jax.Array  # []
    patience_mean: jax.Array  # [5]; <= 0: never leaves
    target_minutes: jax.Array  # [5]
    staff_by_hour: jax.Array  # [24] int32 concurrent patient slots of physicians on duty
    equipment_by_hour: jax.Array  # [24] int32
    num_beds: jax.Array  # [] int32
    equipment_needed: jax.Array  # [5] bool
    boost_threshold: jax.Array  # [] minutes
    aging: jax.Array  # [] bool: MLFQ priority boost on
    service_order: jax.Array  # [] int32 index into config.SERVICE_ORDERS (within-queue order)
    start_day: jax.Array  # [] int32, -1 random
    surge_staff: jax.Array  # [] int32 extra physician slots while a surge is active
    surge_beds: jax.Array  # [] int32
    surge_equipment: jax.Array  # [] int32
    surge_duration: jax.Array  # [] minutes
    surge_cost: jax.Array  # []
    transfer_fixed_cost: jax.Array  # []
    transfer_delay: jax.Array  # [] minutes
    acuity_weights: jax.Array  # [5]
    w_wait: jax.Array
    w_var: jax.Array
    w_bonus: jax.Array
    overutil_threshold: jax.Array
    overutil_penalty: jax.Array
    reward_scale: jax.Array
    obs_queue_scale: jax.Array
    obs_arrival_scale: jax.Array
    spill: jax.Array  # [] bool: leftover capacity serves the other queues (work-conserving)
    wait_accumulated: jax.Array  # [] bool: seed's accumulated-wait cost (else dt increments)
    # static (shared by a stack of hospitals)
    dt: float = struct.field(pytree_node=False, default=5.0)
    max_steps: int = struct.field(pytree_node=False, default=288)
    max_patients: int = struct.field(pytree_node=False, default=96)
    max_arrivals: int = struct.field(pytree_node=False, default=8)
    max_transfers_in: int = struct.field(pytree_node=False, default=4)
    event_buffer: int = struct.field(pytree_node=False, default=16)
    max_starts: int = struct.field(pytree_node=False, default=8)


@struct.dataclass
class Patients:
    """Fixed-capacity patient table; a slot is in use iff ``status != EMPTY``."""

    status: jax.Array  # [N] int32
    esi: jax.Array  # [N] int32, 0..4 (ESI level - 1); 0 in empty slots
    queue: jax.Array  # [N] int32, 0..2 while WAITING, -1 otherwise
    arrival: jax.Array  # [N] float32 minutes since episode start
    queue_entry: jax.Array  # [N] float32 time of entering the current queue (aging clock, FIFO)
    deadline: jax.Array  # [N] float32 arrival + patience (LWBS); +inf if never leaves
    service_left: jax.Array  # [N] float32 provider minutes (sampled at arrival, runs down)
    bed_left: jax.Array  # [N] float32 bed minutes after the provider phase
    needs_equipment: jax.Array  # [N] bool
    admitted: jax.Array  # [N] bool


@struct.dataclass
class Counters:
    """Cumulative counts since the episode start (int32 scalars).

    Conservation (checked by ``check_invariants``):
      arrived == waiting + with_provider + in_bed + completed + transferred_out + lwbs + diverted
      started == with_provider + in_bed + completed
      provider_done == in_bed + completed
    ``arrived`` counts every arrival including transfers in and diverted ones.
    """

    arrived: jax.Array
    started: jax.Array
    provider_done: jax.Array
    completed: jax.Array
    transferred_out: jax.Array
    transferred_in: jax.Array
    lwbs: jax.Array
    diverted: jax.Array
    admitted: jax.Array
    surges: jax.Array
    boosts: jax.Array


@struct.dataclass
class EnvState:
    patients: Patients
    counters: Counters
    step: jax.Array  # [] int32 decisions taken this episode
    start_day: jax.Array  # [] int32 day of week at t=0 (0 = Monday)
    surge_until: jax.Array  # [] float32 minutes; surge active while time < surge_until
    pending_transfers_in: jax.Array  # [5] int32 patients routed here by route_transfers, by ESI
