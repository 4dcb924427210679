"""Functional (Gymnax-style) emergency-department scheduling environment with an MLFQ.

One decision every ``dt`` minutes (default 5). Within a step, in this order:

1. action 3 (surge) extends the surge window; action 4 (transfer) sends one waiting patient out;
2. service starts: free capacity (a physician slot AND a bed, plus an equipment unit for ESI
   levels that need one) takes waiting patients from the chosen queue, FIFO by queue entry time
   (``service_order``: or by arrival, or by ESI level then arrival).
   If the chosen queue is empty, or the action is 3/4, no one starts this interval, unless
   ``spill`` is set (leftover capacity then serves the other queues in priority order);
3. the clock advances dt: provider phases and bed stays run down; finished provider phases free
   the physician slot and equipment, finished bed stays free the bed (discharge / admission);
4. Poisson arrivals of [t, t+dt) (and patients routed in by ``route_transfers``) are triaged
   into the queue of their ESI level; no free slot -> diverted;
5. waiting ESI 3-5 patients whose patience ran out leave without being seen (LWBS);
6. aging (MLFQ priority boost, unless ``aging`` is off): a patient who waited in its queue
   longer than the boost threshold moves up one queue and its queue clock restarts;
7. reward at t+dt (``reward.py``); done when the horizon is reached (truncation).

``step`` auto-resets at the horizon (Gymnax); ``step_env`` does not (used by ``metrics``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.envs.hospital.reward import reward_terms, total_reward
from fedrl.envs.hospital.types import (
    EMPTY, EVENT_LWBS, EVENT_NONE, EVENT_SEEN, EVENT_TRANSFERRED, IN_BED, NUM_ACTIONS, OBS_DIM,
    WAITING, WITH_PROVIDER, Counters, EnvParams, EnvState, Patients)

NUM_QUEUES = 3
NEVER = jnp.float32(jnp.inf)
# Sort-key stride between queue-order classes; queue entry times stay below it (~91 days,
# checked by HospitalConfig.validate), and float32 then resolves ~0.03 min.
_ORDER_STRIDE = 131072.0


# ----------------------------------------------------------------------------- clocks & rates
def minutes(state: EnvState, params: EnvParams) -> jax.Array:
    return state.step.astype(jnp.float32) * params.dt


def _hour_day(t: jax.Array, start_day: jax.Array) -> tuple[jax.Array, jax.Array]:
    whole = jnp.floor(t).astype(jnp.int32)
    return (whole // 60) % 24, (start_day + whole // 1440) % 7


def arrival_rate(params: EnvParams, t: jax.Array, start_day: jax.Array) -> jax.Array:
    """Arrivals per minute at time t (piecewise constant by hour and day)."""
    hour, day = _hour_day(t, start_day)
    return params.arrivals_per_minute * params.hour_multipliers[hour] * params.day_multipliers[day]


def capacities(params: EnvParams, state: EnvState, t: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(staff slots, beds, equipment units) available at time t, surge included."""
    hour, _ = _hour_day(t, state.start_day)
    surge = (t < state.surge_until).astype(jnp.int32)
    staff = params.staff_by_hour[hour] + surge * params.surge_staff
    beds = params.num_beds + surge * params.surge_beds
    equipment = params.equipment_by_hour[hour] + surge * params.surge_equipment
    return staff, beds, equipment


def usage(patients: Patients) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(staff slots, beds, equipment units) in use."""
    with_provider = patients.status == WITH_PROVIDER
    staff = jnp.sum(with_provider, dtype=jnp.int32)
    beds = jnp.sum(patients.status >= WITH_PROVIDER, dtype=jnp.int32)
    equipment = jnp.sum(with_provider & patients.needs_equipment, dtype=jnp.int32)
    return staff, beds, equipment


def queue_lengths(patients: Patients) -> jax.Array:
    waiting = patients.status == WAITING
    return jnp.sum(waiting[None, :] & (patients.queue[None, :] == jnp.arange(NUM_QUEUES)[:, None]),
                   axis=1, dtype=jnp.int32)


# ----------------------------------------------------------------------------- reset / obs
def _empty_patients(n: int) -> Patients:
    zf = jnp.zeros((n,), jnp.float32)
    zi = jnp.zeros((n,), jnp.int32)
    zb = jnp.zeros((n,), bool)
    return Patients(status=zi, esi=zi, queue=zi - 1, arrival=zf, queue_entry=zf, deadline=zf,
                    service_left=zf, bed_left=zf, needs_equipment=zb, admitted=zb)


def _clear(p: Patients, mask: jax.Array) -> Patients:
    """Empty the slots in ``mask`` (attributes zeroed so masks stay checkable)."""
    z = lambda x, v: jnp.where(mask, jnp.asarray(v, x.dtype), x)  # noqa: E731
    return Patients(status=z(p.status, EMPTY), esi=z(p.esi, 0), queue=z(p.queue, -1),
                    arrival=z(p.arrival, 0.0), queue_entry=z(p.queue_entry, 0.0),
                    deadline=z(p.deadline, 0.0), service_left=z(p.service_left, 0.0),
                    bed_left=z(p.bed_left, 0.0), needs_equipment=z(p.needs_equipment, False),
                    admitted=z(p.admitted, False))


def _vacate(p: Patients, mask: jax.Array) -> Patients:
    """Mark slots empty; their attributes are zeroed once at the end of the step (cheaper)."""
    return p.replace(status=jnp.where(mask, EMPTY, p.status), queue=jnp.where(mask, -1, p.queue))


def _zero_counters() -> Counters:
    z = jnp.zeros((), jnp.int32)
    return Counters(arrived=z, started=z, provider_done=z, completed=z, transferred_out=z,
                    transferred_in=z, lwbs=z, diverted=z, admitted=z, surges=z, boosts=z)


def reset(key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    """Empty ED at midnight; day of week ``params.start_day`` or uniform when it is -1."""
    state = _reset_state(key, params)
    return observation(state, params), state


def _reset_state(key: jax.Array, params: EnvParams) -> EnvState:
    day = jnp.where(params.start_day >= 0, params.start_day,
                    jax.random.randint(key, (), 0, 7, dtype=jnp.int32))
    state = EnvState(patients=_empty_patients(params.max_patients), counters=_zero_counters(),
                     step=jnp.zeros((), jnp.int32), start_day=day.astype(jnp.int32),
                     surge_until=jnp.zeros((), jnp.float32),
                     pending_transfers_in=jnp.zeros((5,), jnp.int32))
    return state


def observation(state: EnvState, params: EnvParams) -> jax.Array:
    """The seed's 12 features, scaled to O(1) (see docs/hospital_env.md):

    [0:3] queue lengths / obs_queue_scale; [3:6] mean acuity (6-ESI)/5 of each queue (0 if
    empty); [6:9] free fraction of beds, staff slots, equipment; [9] hour of day / 24
    (fractional); [10] day of week / 7; [11] expected arrivals in the next hour (from the
    hospital's own rate profile) / obs_arrival_scale.
    """
    p = state.patients
    t = minutes(state, params)
    waiting = p.status == WAITING
    in_q = waiting[None, :] & (p.queue[None, :] == jnp.arange(NUM_QUEUES)[:, None])
    counts = jnp.sum(in_q, axis=1).astype(jnp.float32)
    acuity = (5 - p.esi).astype(jnp.float32) / 5.0  # ESI 1 -> 1.0, ESI 5 -> 0.2
    mean_acuity = jnp.sum(jnp.where(in_q, acuity[None, :], 0.0), axis=1) / jnp.maximum(counts, 1)
    staff_cap, bed_cap, eq_cap = capacities(params, state, t)
    staff_busy, bed_busy, eq_busy = usage(p)
    free = lambda cap, busy: jnp.clip((cap - busy) / jnp.maximum(cap, 1), 0.0, 1.0)  # noqa
    whole = jnp.floor(t)
    hour_frac = jnp.mod(whole, 1440.0) / 1440.0
    _, day = _hour_day(t, state.start_day)
    per_hour = max(1, int(round(60.0 / params.dt)))
    ahead = t + params.dt * jnp.arange(per_hour, dtype=jnp.float32)
    forecast = jnp.sum(arrival_rate(params, ahead, state.start_day)) * (60.0 / per_hour)
    obs = jnp.concatenate([
        counts / params.obs_queue_scale, mean_acuity,
        jnp.stack([free(bed_cap, bed_busy), free(staff_cap, staff_busy), free(eq_cap, eq_busy)]),
        jnp.stack([hour_frac, day.astype(jnp.float32) / 7.0,
                   forecast / params.obs_arrival_scale])])
    return obs.astype(jnp.float32)


# ----------------------------------------------------------------------------- helpers
def _poisson_inverse_cdf(u: jax.Array, lam: jax.Array, k_max: int) -> jax.Array:
    """Poisson(lam) draw from one uniform by inverse CDF over 0..k_max (fixed cost, no loop)."""
    k = jnp.arange(k_max, dtype=jnp.float32)
    log_pmf = -lam + k * jnp.log(jnp.maximum(lam, 1e-30)) - jax.lax.lgamma(k + 1.0)
    cdf = jnp.cumsum(jnp.exp(log_pmf))
    return jnp.sum(u > cdf).astype(jnp.int32)


def _events(kinds: list, waits: list, esis: list, size: int):
    """Compact per-step "left the waiting room" events into a fixed buffer of ``size``."""
    kind = jnp.concatenate([jnp.atleast_1d(k) for k in kinds]).astype(jnp.int32)
    wait = jnp.concatenate([jnp.atleast_1d(w) for w in waits]).astype(jnp.float32)
    esi = jnp.concatenate([jnp.atleast_1d(e) for e in esis]).astype(jnp.int32)
    (idx,) = jnp.nonzero(kind != EVENT_NONE, size=size, fill_value=kind.shape[0])
    valid = idx < kind.shape[0]

    def take(x, fill):
        return jnp.where(valid, x.at[idx].get(mode="fill", fill_value=fill), fill)

    dropped = jnp.maximum(jnp.sum(kind != EVENT_NONE) - size, 0)
    return {"event_kind": take(kind, EVENT_NONE), "event_wait": take(wait, 0.0),
            "event_esi": take(esi, 0), "events_dropped": dropped.astype(jnp.int32)}


# ----------------------------------------------------------------------------- dynamics
def step_env(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
    """One decision interval without auto-reset. Returns (obs, state, reward, done, info)."""
    state, reward, done, info = transition(key, state, action, params)
    return observation(state, params), state, reward, done, info


def transition(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
    """The dynamics of one interval: (state, reward, done, info), no observation, no reset."""
    action = jnp.asarray(action, jnp.int32)
    n = params.max_patients
    dt = params.dt
    t0 = minutes(state, params)
    t1 = t0 + dt
    p = state.patients
    c = state.counters
    slot = jnp.arange(n)

    # 1a. action 3: surge. The window becomes max(current end, t0 + duration); the cost is
    # charged pro rata for the minutes added, so re-requesting an active surge is cheap but useless.
    surge_req = action == 3
    new_until = jnp.where(surge_req, jnp.maximum(state.surge_until, t0 + params.surge_duration),
                          state.surge_until)
    added = new_until - jnp.maximum(state.surge_until, t0)
    added = jnp.where(surge_req, jnp.maximum(added, 0.0), 0.0)
    surge_cost = params.surge_cost * added / jnp.maximum(params.surge_duration, 1e-6)
    surge_started = surge_req & (state.surge_until <= t0) & (params.surge_duration > 0)
    state = state.replace(surge_until=new_until)

    # 1b. action 4: transfer out the longest-waiting patient of the lowest-priority non-empty
    # queue (low acuity is safest to send elsewhere) [reconstructed].
    waiting = p.status == WAITING
    lowest = jnp.max(jnp.where(waiting, p.queue, -1))
    cand = waiting & (p.queue == lowest)
    who = jnp.argmin(jnp.where(cand, p.arrival, NEVER))
    do_transfer = (action == 4) & jnp.any(waiting)
    moved = do_transfer & (slot == who)
    tr_esi = p.esi[who]
    tr_wait = t0 - p.arrival[who]
    transfer_cost = jnp.where(
        do_transfer,
        params.transfer_fixed_cost
        + params.w_wait * params.acuity_weights[tr_esi] * params.transfer_delay, 0.0)
    transfers_by_esi = jnp.where(do_transfer, jax.nn.one_hot(tr_esi, 5, dtype=jnp.int32), 0)
    p = _vacate(p, moved)

    # 2. service starts at t0.
    staff_cap, bed_cap, eq_cap = capacities(params, state, t0)
    staff_busy, bed_busy, eq_busy = usage(p)
    free_staff = jnp.maximum(staff_cap - staff_busy, 0)
    free_beds = jnp.maximum(bed_cap - bed_busy, 0)
    free_eq = jnp.maximum(eq_cap - eq_busy, 0)
    waiting = p.status == WAITING
    big = NUM_QUEUES + 2
    chosen = jnp.where(p.queue == action, 0, big)
    spill_order = jnp.where(action < NUM_QUEUES, jnp.where(p.queue == action, 0, 1 + p.queue),
                            p.queue)
    order = jnp.where(params.spill, spill_order, chosen)
    eligible = waiting & (order < big)
    # Greedy in (queue order, queue entry time, slot) order: each pick takes a physician slot
    # and a bed; an equipment-needing patient is skipped once equipment runs out. At most
    # ``max_starts`` picks per interval (static unrolled argmins: a full sort of the slots was
    # the slowest op of the step on CPU).
    # Within-queue order (params.service_order, config.SERVICE_ORDERS): 0 queue entry time
    # (the MLFQ's FIFO; the default key is kept bit-for-bit), 1 arrival time, 2 ESI level then
    # arrival. ESI becomes a sub-class below the queue order (5 levels per order class); with
    # ``spill`` the keys reach ~20 strides, where float32 still resolves ~0.25 min of arrival.
    by_acuity = params.service_order == 2
    klass = jnp.where(by_acuity, order * 5 + p.esi, order).astype(jnp.float32)
    clock = jnp.where(params.service_order == 0, p.queue_entry, p.arrival)
    sort_key = klass * _ORDER_STRIDE + clock
    cap = jnp.minimum(free_staff, free_beds)
    start = jnp.zeros((n,), bool)
    eq_used = jnp.zeros((), jnp.int32)
    for _ in range(params.max_starts):
        n_started = jnp.sum(start, dtype=jnp.int32)
        cand = eligible & ~start & (~p.needs_equipment | (eq_used < free_eq))
        who_s = jnp.argmin(jnp.where(cand, sort_key, NEVER))
        ok = cand[who_s] & (n_started < cap)
        start = start | ((slot == who_s) & ok)
        eq_used = eq_used + (ok & p.needs_equipment[who_s]).astype(jnp.int32)
    start_wait = t0 - p.arrival
    start_esi = p.esi
    p = p.replace(status=jnp.where(start, WITH_PROVIDER, p.status),
                  queue=jnp.where(start, -1, p.queue))
    n_start = jnp.sum(start, dtype=jnp.int32)

    # 3. the clock runs dt: provider phases, then bed stays (leftover time carries over).
    with_provider = p.status == WITH_PROVIDER
    in_bed_before = p.status == IN_BED
    # Resource-minutes used during [t0, t1), as a mean number of busy units over the interval
    # (utilisation measured this way does not depend on where in the interval a phase ends).
    staff_occ = jnp.sum(jnp.where(with_provider, jnp.minimum(p.service_left, dt), 0.0)) / dt
    eq_occ = jnp.sum(jnp.where(with_provider & p.needs_equipment,
                               jnp.minimum(p.service_left, dt), 0.0)) / dt
    in_ed = jnp.where(with_provider, p.service_left + p.bed_left, p.bed_left)
    bed_occ = jnp.sum(jnp.where(p.status >= WITH_PROVIDER, jnp.minimum(in_ed, dt), 0.0)) / dt
    service_left = jnp.where(with_provider, p.service_left - dt, p.service_left)
    provider_done = with_provider & (service_left <= 0)
    bed_left = jnp.where(in_bed_before, p.bed_left - dt, p.bed_left)
    bed_left = jnp.where(provider_done, p.bed_left + service_left, bed_left)
    service_left = jnp.where(provider_done, 0.0, service_left)
    status = jnp.where(provider_done, IN_BED, p.status)
    discharged = (status == IN_BED) & (bed_left <= 0)
    los = jnp.where(discharged, t1 + bed_left - p.arrival, 0.0)
    high_done = jnp.sum(provider_done & (p.esi <= 1), dtype=jnp.int32)
    admitted_now = jnp.sum(discharged & p.admitted, dtype=jnp.int32)
    p = p.replace(status=status, service_left=service_left, bed_left=bed_left)
    p = _vacate(p, discharged)

    # 4. arrivals during [t0, t1) plus transfers routed in, triaged into free slots.
    m, mt = params.max_arrivals, params.max_transfers_in
    # One RNG call for everything this interval (threefry dominates small ops on CPU):
    # columns 0 ESI, 1 arrival offset, 2 admission, 3 boarding, 4 patience, 5-6 Box-Muller
    # normals (service, LOS), 7 (row 0) Poisson count.
    u = jax.random.uniform(key, (m + mt, 8))
    radius = jnp.sqrt(-2.0 * jnp.log1p(-u[:, 5]))
    z = jnp.stack([radius * jnp.cos(2 * jnp.pi * u[:, 6]),
                   radius * jnp.sin(2 * jnp.pi * u[:, 6])], axis=1)
    lam = arrival_rate(params, t0, state.start_day) * dt
    n_pois = _poisson_inverse_cdf(u[0, 7], lam, 4 * m + 8)
    n_in = jnp.sum(state.pending_transfers_in)
    esi_pois = jnp.sum(u[:m, 0:1] >= params.esi_cdf[None, :4], axis=1)
    esi_in = jnp.sum(jnp.cumsum(state.pending_transfers_in)[None, :4]
                     <= jnp.arange(mt)[:, None], axis=1)
    esi = jnp.concatenate([esi_pois, esi_in]).astype(jnp.int32)
    arrive = t0 + u[:, 1] * dt
    service = jnp.exp(params.service_mu[esi] + params.service_sigma[esi] * z[:, 0])
    los_draw = jnp.exp(params.los_mu[esi] + params.los_sigma[esi] * z[:, 1])
    admitted = u[:, 2] < params.admit_prob[esi]
    boarding = jnp.where(admitted, -params.boarding_mean * jnp.log1p(-u[:, 3]), 0.0)
    patience = -params.patience_mean[esi] * jnp.log1p(-u[:, 4])
    deadline = jnp.where(params.patience_mean[esi] > 0, arrive + patience, NEVER)
    # The r-th free slot (slot order) receives the r-th valid candidate: Poisson arrivals
    # first, then transfers in. Gathers into the slots (cheaper than scatters on CPU).
    n_pois_c = jnp.minimum(n_pois, m)
    n_valid = n_pois_c + jnp.minimum(n_in, mt)
    free = p.status == EMPTY
    free_rank = jnp.cumsum(free) - 1
    placed = free & (free_rank < n_valid)
    cand = jnp.clip(jnp.where(free_rank < n_pois_c, free_rank, m + free_rank - n_pois_c),
                    0, m + mt - 1)
    put = lambda x, v: jnp.where(placed, v.astype(x.dtype)[cand], x)  # noqa: E731
    p = Patients(
        status=jnp.where(placed, WAITING, p.status), esi=put(p.esi, esi),
        queue=put(p.queue, params.esi_queue[esi]), arrival=put(p.arrival, arrive),
        queue_entry=put(p.queue_entry, arrive), deadline=put(p.deadline, deadline),
        service_left=put(p.service_left, service),
        bed_left=put(p.bed_left, jnp.maximum(los_draw - service, 0.0) + boarding),
        needs_equipment=put(p.needs_equipment, params.equipment_needed[esi]),
        admitted=put(p.admitted, admitted))
    n_placed = jnp.sum(placed, dtype=jnp.int32)
    n_arrived = n_pois + n_in
    n_diverted = n_arrived - n_placed

    # 5. leave without being seen (patience ran out by t1).
    waiting = p.status == WAITING
    lwbs = waiting & (p.deadline <= t1)
    lwbs_wait = p.deadline - p.arrival
    lwbs_esi = p.esi
    p = _vacate(p, lwbs)

    # 6. aging: waited in the current queue longer than the threshold -> up one queue.
    waiting = p.status == WAITING
    boost = (waiting & (p.queue > 0) & (t1 - p.queue_entry > params.boost_threshold)
             & params.aging)
    p = p.replace(queue=jnp.where(boost, p.queue - 1, p.queue),
                  queue_entry=jnp.where(boost, t1, p.queue_entry))
    p = _clear(p, p.status == EMPTY)

    counters = Counters(
        arrived=c.arrived + n_arrived, started=c.started + n_start,
        provider_done=c.provider_done + jnp.sum(provider_done, dtype=jnp.int32),
        completed=c.completed + jnp.sum(discharged, dtype=jnp.int32),
        transferred_out=c.transferred_out + do_transfer.astype(jnp.int32),
        transferred_in=c.transferred_in + n_in,
        lwbs=c.lwbs + jnp.sum(lwbs, dtype=jnp.int32), diverted=c.diverted + n_diverted,
        admitted=c.admitted + admitted_now, surges=c.surges + surge_started.astype(jnp.int32),
        boosts=c.boosts + jnp.sum(boost, dtype=jnp.int32))
    state = state.replace(patients=p, counters=counters, step=state.step + 1,
                          pending_transfers_in=jnp.zeros_like(state.pending_transfers_in))

    # 7. reward and info at t1.
    qlen = queue_lengths(p)
    util = jnp.maximum(staff_occ / jnp.maximum(staff_cap, 1), bed_occ / jnp.maximum(bed_cap, 1))
    terms = reward_terms(p, t1, qlen, high_done, util, surge_cost, transfer_cost, params)
    reward = total_reward(terms, params)
    done = state.step >= params.max_steps
    info = {
        "truncated": done, "terminated": jnp.zeros((), bool),
        "discount": jnp.ones((), jnp.float32),
        "transfers_out": do_transfer.astype(jnp.int32), "transfers_out_by_esi": transfers_by_esi,
        "surge_started": surge_started, "surge_active": t0 < state.surge_until,
        "arrivals": n_arrived, "diverted": n_diverted, "starts": n_start,
        "lwbs": jnp.sum(lwbs, dtype=jnp.int32), "high_acuity_done": high_done,
        "completed": jnp.sum(discharged, dtype=jnp.int32), "los_sum": jnp.sum(los),
        "queue_lengths": qlen,
        # mean busy units over the interval and the capacity during it
        "staff_busy": staff_occ, "staff_capacity": staff_cap,
        "beds_busy": bed_occ, "beds_capacity": bed_cap,
        "equipment_busy": eq_occ, "equipment_capacity": eq_cap, "utilisation": util,
        "reward_terms": terms,
    }
    info.update(_events(
        [jnp.where(do_transfer, EVENT_TRANSFERRED, EVENT_NONE),
         jnp.where(start, EVENT_SEEN, EVENT_NONE), jnp.where(lwbs, EVENT_LWBS, EVENT_NONE)],
        [tr_wait, start_wait, lwbs_wait], [tr_esi, start_esi, lwbs_esi], params.event_buffer))
    return state, reward, done, info


def step(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
    """``step_env`` with Gymnax auto-reset: at the horizon the returned obs/state are a fresh
    episode's; reward, done and info describe the transition that ended the episode."""
    key_step, key_reset = jax.random.split(key)
    state_st, reward, done, info = transition(key_step, state, action, params)
    state_re = _reset_state(key_reset, params)
    state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state_re, state_st)
    return observation(state, params), state, reward, done, info


def route_transfers(states: EnvState, transfers_out_by_esi: jax.Array) -> EnvState:
    """Optional federated coupling: hospital k's transfers arrive at hospital (k+1) % K.

    ``states`` is stacked over K hospitals and ``transfers_out_by_esi`` is ``info
    ["transfers_out_by_esi"]`` of the same step ([K, 5]). The patients are queued in
    ``pending_transfers_in`` and enter the receiving ED during its next step as arrivals of the
    same ESI level (counted in ``arrived`` and ``transferred_in``).
    """
    incoming = jnp.roll(transfers_out_by_esi.astype(jnp.int32), 1, axis=0)
    return states.replace(pending_transfers_in=states.pending_transfers_in + incoming)


__all__ = ["reset", "step", "step_env", "transition", "observation", "route_transfers",
           "arrival_rate",
           "capacities", "usage", "queue_lengths", "minutes", "OBS_DIM", "NUM_ACTIONS"]
