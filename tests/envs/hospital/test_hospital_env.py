"""ED environment: invariants, determinism, jit/vmap, each action's effect, aging, LWBS, config."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedrl.config import ConfigError
from fedrl.envs.hospital import (
    NUM_ACTIONS, OBS_DIM, HospitalConfig, check_invariants, hospital_configs, make_hospitals,
    make_params, reset, route_transfers, step, step_env)
from fedrl.envs.hospital.types import EMPTY, IN_BED, WAITING, WITH_PROVIDER

# Small static shapes shared by every test in this file (one compilation per function).
SMALL = HospitalConfig(max_patients=32, episode_steps=24, max_arrivals_per_step=6,
                       event_buffer_size=8, annual_visits=60_000.0)


def _rollout(key, params, num_steps):
    """Random actions through ``step`` (auto-reset included); per-step invariants and obs."""
    obs0, state0 = reset(key, params)

    def body(carry, k):
        _, state = carry
        k_a, k_s = jax.random.split(k)
        action = jax.random.randint(k_a, (), 0, NUM_ACTIONS)
        obs, state, reward, done, info = step(k_s, state, action, params)
        return (obs, state), {"inv": check_invariants(state), "obs": obs, "reward": reward,
                              "done": done, "action": action, "arrived": state.counters.arrived,
                              "counters": state.counters}

    return jax.lax.scan(body, (obs0, state0), jax.random.split(key, num_steps))


rollout_jit = jax.jit(_rollout, static_argnums=2)
STEPS = 30  # one rollout length for all tests: a single compilation
step_env_jit = jax.jit(step_env)
vstep_env_jit = jax.jit(jax.vmap(step_env))


def _no_arrivals(params, boost=1e4):
    """No new arrivals and (by default) no aging, so a step's effect is the action's alone."""
    return params.replace(arrivals_per_minute=jnp.zeros_like(params.arrivals_per_minute),
                          boost_threshold=jnp.full_like(params.boost_threshold, boost))


def _state_with(params, patients, step_index=12, **state_kw):
    """A state whose first slots hold the given waiting patients (dicts: esi 1..5, queue,
    arrival, optional queue_entry / deadline / service / bed / status / equipment)."""
    _, state = reset(jax.random.PRNGKey(0), params)
    p = state.patients
    for i, d in enumerate(patients):
        status = d.get("status", WAITING)
        p = p.replace(
            status=p.status.at[i].set(status),
            esi=p.esi.at[i].set(d["esi"] - 1),
            queue=p.queue.at[i].set(d.get("queue", -1) if status == WAITING else -1),
            arrival=p.arrival.at[i].set(d["arrival"]),
            queue_entry=p.queue_entry.at[i].set(d.get("queue_entry", d["arrival"])),
            deadline=p.deadline.at[i].set(d.get("deadline", jnp.inf)),
            service_left=p.service_left.at[i].set(d.get("service", 30.0)),
            bed_left=p.bed_left.at[i].set(d.get("bed", 100.0)),
            needs_equipment=p.needs_equipment.at[i].set(d.get("equipment", False)))
    n = len(patients)
    counters = state.counters.replace(
        arrived=jnp.int32(n),
        started=jnp.int32(sum(d.get("status", WAITING) >= WITH_PROVIDER for d in patients)),
        provider_done=jnp.int32(sum(d.get("status", WAITING) == IN_BED for d in patients)))
    return state.replace(patients=p, counters=counters, step=jnp.int32(step_index),
                         start_day=jnp.int32(2), **state_kw)


def _queues(state):
    p = state.patients
    return [int(jnp.sum((p.status == WAITING) & (p.queue == q))) for q in range(3)]


def _all_true(inv):
    for name, value in inv.items():
        assert bool(np.all(np.asarray(value))), f"invariant {name} violated"


# ----------------------------------------------------------------------------- invariants
@settings(max_examples=3, deadline=None)
@given(visits=st.floats(20_000, 150_000), beds=st.integers(2, 30),
       ppp=st.floats(0.5, 3.0), boost=st.floats(5.0, 120.0), spill=st.booleans(),
       mode=st.sampled_from(["accumulated", "increment"]), seed=st.integers(0, 2**16))
def test_invariants_hold_every_step_random_policy(visits, beds, ppp, boost, spill, mode, seed):
    cfg = dataclasses.replace(SMALL, annual_visits=visits, num_beds=beds,
                              patients_per_physician=ppp, boost_threshold_minutes=boost,
                              spill_to_other_queues=spill, wait_cost_mode=mode)
    (_, final), out = rollout_jit(jax.random.PRNGKey(seed), make_params(cfg), STEPS)
    _all_true(out["inv"])
    obs = np.asarray(out["obs"])
    assert obs.shape == (STEPS, OBS_DIM) and obs.dtype == np.float32
    assert np.all(np.isfinite(obs)) and obs.min() >= 0.0 and obs.max() < 20.0
    done = np.asarray(out["done"])
    # Truncation exactly at the horizon, then auto-reset (counters restart).
    assert list(np.nonzero(done)[0]) == [23]
    arrived = np.asarray(out["arrived"])
    assert arrived[23] == 0 and arrived[22] > 0


def test_overload_diverts_and_conserves():
    cfg = dataclasses.replace(SMALL, annual_visits=400_000.0, num_beds=2,
                              physicians_by_shift=(0.5, 0.5, 0.5))
    _, out = rollout_jit(jax.random.PRNGKey(3), make_params(cfg), STEPS)
    _all_true(out["inv"])
    c = out["counters"]  # per step; index 23 is already the next episode (auto-reset)
    assert int(c.diverted[22]) > 0 and int(c.lwbs[22]) > 0


# ----------------------------------------------------------------------------- determinism
def test_same_key_same_trajectory_and_jit_matches_eager():
    params = make_params(SMALL)
    key = jax.random.PRNGKey(7)
    (_, s1), o1 = rollout_jit(key, params, STEPS)
    (_, s2), o2 = rollout_jit(key, params, STEPS)
    jax.tree.map(np.testing.assert_array_equal, (s1, o1), (s2, o2))
    (_, s3), _ = rollout_jit(jax.random.PRNGKey(8), params, STEPS)
    assert int(s3.counters.arrived) != int(s1.counters.arrived) or not np.array_equal(
        np.asarray(s3.patients.arrival), np.asarray(s1.patients.arrival))

    # Un-jitted (op by op) against jitted, from a mid-episode state with patients waiting; one
    # eager step costs seconds of per-op compilation, so the "rollout" here is short.
    (_, state), _ = rollout_jit(key, params, STEPS)
    for t, action in enumerate((4, 0)):  # transfer, then serve high
        k = jax.random.fold_in(key, t)
        eager = step_env(k, state, jnp.int32(action), params)
        jitted = step_env_jit(k, state, jnp.int32(action), params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4),
                     eager, jitted)
        state = jitted[1]


def test_vmap_over_heterogeneous_hospitals_matches_single():
    params = make_hospitals(SMALL, 3, jax.random.PRNGKey(1))
    assert params.arrivals_per_minute.shape == (3,)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    _, states = jax.vmap(reset)(keys, params)
    one = jax.tree.map(lambda x: x[1], params)
    state1 = jax.tree.map(lambda x: x[1], states)
    for t in range(8):
        k = jax.random.split(jax.random.fold_in(keys[0], t), 3)
        actions = jnp.array([t % 3, (t + 1) % 5, 2], jnp.int32)
        obs, states, rewards, _, _ = vstep_env_jit(k, states, actions, params)
        obs1, state1, reward1, _, _ = step_env_jit(k[1], state1, actions[1], one)
        assert obs.shape == (3, OBS_DIM)
        np.testing.assert_allclose(obs[1], obs1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rewards[1], reward1, rtol=1e-5, atol=1e-6)
    _all_true(check_invariants(states))
    assert int(states.counters.arrived[1]) == int(state1.counters.arrived)
    assert len(set(np.asarray(states.counters.arrived).tolist())) > 1


# ----------------------------------------------------------------------------- actions
PATIENTS = [dict(esi=2, queue=0, arrival=10.0), dict(esi=2, queue=0, arrival=5.0),
            dict(esi=3, queue=1, arrival=20.0), dict(esi=4, queue=2, arrival=0.0),
            dict(esi=5, queue=2, arrival=30.0)]


@pytest.mark.parametrize("action", [0, 1, 2])
def test_serving_a_queue_takes_from_that_queue_fifo(action):
    params = _no_arrivals(make_params(SMALL))
    state = _state_with(params, PATIENTS)
    before = _queues(state)
    _, new, _, _, info = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(action), params)
    after = _queues(new)
    expected = list(before)
    expected[action] = 0  # enough free staff (>= 4) and beds for the whole queue
    assert after == expected
    assert int(info["starts"]) == before[action]
    _all_true(check_invariants(new))
    seen = np.asarray(info["event_kind"]) == 1
    waits = np.sort(np.asarray(info["event_wait"])[seen])
    arrivals = sorted(d["arrival"] for d in PATIENTS if d["queue"] == action)
    np.testing.assert_allclose(waits, np.sort(60.0 - np.asarray(arrivals)))


def test_fifo_within_queue_when_capacity_is_short():
    cfg = dataclasses.replace(SMALL, num_beds=1)
    params = _no_arrivals(make_params(cfg))
    state = _state_with(params, PATIENTS)
    _, new, _, _, _ = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(0), params)
    status = np.asarray(new.patients.status)
    assert status[1] != WAITING and status[0] == WAITING  # arrival 5 before arrival 10


def test_empty_chosen_queue_idles_unless_spill():
    patients = [dict(esi=4, queue=2, arrival=0.0)]
    params = _no_arrivals(make_params(SMALL))
    _, new, _, _, info = step_env_jit(jax.random.PRNGKey(0), _state_with(params, patients),
                                      jnp.int32(0), params)
    assert int(info["starts"]) == 0 and _queues(new) == [0, 0, 1]
    spill = _no_arrivals(make_params(dataclasses.replace(SMALL, spill_to_other_queues=True)))
    _, new, _, _, info = step_env_jit(jax.random.PRNGKey(0), _state_with(spill, patients),
                                      jnp.int32(0), spill)
    assert int(info["starts"]) == 1 and _queues(new) == [0, 0, 0]


def test_equipment_limit_skips_patients_who_need_it():
    cfg = dataclasses.replace(SMALL, equipment_by_shift=(0.0, 0.0, 0.0), surge_equipment=0)
    params = _no_arrivals(make_params(cfg))
    patients = [dict(esi=5, queue=2, arrival=0.0, equipment=True),
                dict(esi=5, queue=2, arrival=1.0, equipment=False)]
    _, new, _, _, _ = step_env_jit(jax.random.PRNGKey(0), _state_with(params, patients),
                                   jnp.int32(2), params)
    status = np.asarray(new.patients.status)
    assert status[0] == WAITING and status[1] != WAITING


def test_surge_adds_capacity_for_its_duration_at_a_cost():
    params = _no_arrivals(make_params(SMALL))
    state = _state_with(params, PATIENTS)
    _, s_idle, r_idle, _, info_idle = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(1),
                                                   params)
    _, s_surge, r_surge, _, info = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(3),
                                                params)
    assert int(info["staff_capacity"]) == int(info_idle["staff_capacity"]) + 2  # 1 physician x 1.75
    assert int(info["beds_capacity"]) == int(info_idle["beds_capacity"]) + SMALL.surge_beds
    assert int(s_surge.counters.surges) == 1 and bool(info["surge_started"])
    assert float(info["reward_terms"]["surge_cost"]) == pytest.approx(SMALL.surge_cost)
    # The window lasts surge_duration minutes, then capacity falls back.
    steps = int(SMALL.surge_duration_minutes // SMALL.decision_interval_minutes)
    later = s_surge.replace(step=s_surge.step + steps - 2)
    _, _, _, _, info_in = step_env_jit(jax.random.PRNGKey(0), later, jnp.int32(1), params)
    _, _, _, _, info_out = step_env_jit(jax.random.PRNGKey(0), later.replace(step=later.step + 2),
                                        jnp.int32(1), params)
    assert bool(info_in["surge_active"]) and not bool(info_out["surge_active"])


def test_transfer_removes_longest_waiter_of_lowest_queue():
    params = _no_arrivals(make_params(SMALL))
    state = _state_with(params, PATIENTS)
    _, new, reward, _, info = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(4), params)
    assert int(new.counters.transferred_out) == 1 and int(info["transfers_out"]) == 1
    assert int(new.patients.status[3]) == EMPTY  # ESI 4 in queue 2, arrived at 0
    np.testing.assert_array_equal(info["transfers_out_by_esi"], [0, 0, 0, 1, 0])
    assert _queues(new) == [2, 1, 1]
    cost = SMALL.transfer_fixed_cost + SMALL.transfer_delay_minutes * 1.0  # ESI 4 weight 1
    assert float(info["reward_terms"]["transfer_cost"]) == pytest.approx(cost)
    _all_true(check_invariants(new))


def test_route_transfers_delivers_to_next_hospital():
    params = make_hospitals(SMALL, 3, jax.random.PRNGKey(1))
    params = params.replace(arrivals_per_minute=jnp.zeros_like(params.arrivals_per_minute))
    _, states = jax.vmap(reset)(jax.random.split(jax.random.PRNGKey(0), 3), params)
    out = jnp.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 2, 0, 0, 0]], jnp.int32)
    routed = route_transfers(states, out)
    np.testing.assert_array_equal(routed.pending_transfers_in,
                                  [[0, 2, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
    _, new, _, _, _ = vstep_env_jit(jax.random.split(jax.random.PRNGKey(1), 3), routed,
                                    jnp.full((3,), 3, jnp.int32), params)
    np.testing.assert_array_equal(new.counters.transferred_in, [2, 1, 0])
    np.testing.assert_array_equal(new.counters.arrived, [2, 1, 0])
    esi0 = np.asarray(new.patients.esi[0])[np.asarray(new.patients.status[0]) != EMPTY]
    assert sorted(esi0.tolist()) == [1, 1]  # ESI 2 (index 1)
    _all_true(check_invariants(new))


def test_aging_boosts_a_long_waiter_one_queue():
    params = _no_arrivals(make_params(SMALL), boost=30.0)
    t0 = 12 * 5.0
    patients = [dict(esi=5, queue=2, arrival=0.0, queue_entry=t0 - 28.0),  # 33 min at t1
                dict(esi=4, queue=2, arrival=50.0)]
    # Serve queue 0 (empty) so nobody starts; only the clock moves.
    _, new, _, _, _ = step_env_jit(jax.random.PRNGKey(0), _state_with(params, patients),
                                   jnp.int32(0), params)
    assert int(new.patients.queue[0]) == 1 and int(new.patients.queue[1]) == 2
    assert float(new.patients.queue_entry[0]) == pytest.approx(t0 + 5.0)
    assert int(new.counters.boosts) == 1


def test_lwbs_when_patience_runs_out_and_high_acuity_never_leave():
    params = _no_arrivals(make_params(SMALL))
    patients = [dict(esi=4, queue=2, arrival=0.0, deadline=62.0),
                dict(esi=3, queue=1, arrival=0.0, deadline=90.0),
                dict(esi=1, queue=0, arrival=0.0)]
    _, new, _, _, info = step_env_jit(jax.random.PRNGKey(0), _state_with(params, patients),
                                      jnp.int32(0), params)
    assert int(new.counters.lwbs) == 1 and int(new.patients.status[0]) == EMPTY
    assert int(new.patients.status[1]) == WAITING
    lwbs = np.asarray(info["event_kind"]) == 2
    np.testing.assert_allclose(np.asarray(info["event_wait"])[lwbs], [62.0])
    # Sampled patience: ESI 1-2 never get a finite deadline.
    (_, final), _ = rollout_jit(jax.random.PRNGKey(5), make_params(SMALL), STEPS)
    p = final.patients
    high = (np.asarray(p.status) == WAITING) & (np.asarray(p.esi) <= 1)
    assert np.all(np.isinf(np.asarray(p.deadline)[high]))


def test_reward_terms_match_hand_computation():
    params = _no_arrivals(make_params(SMALL))
    patients = [dict(esi=1, queue=0, arrival=30.0), dict(esi=3, queue=1, arrival=0.0),
                dict(esi=5, queue=2, arrival=0.0)]
    state = _state_with(params, patients)
    # Action 2 serves the ESI 5 patient; ESI 1 and ESI 3 keep waiting until t1 = 65.
    _, _, reward, _, info = step_env_jit(jax.random.PRNGKey(0), state, jnp.int32(2), params)
    wait = 30.0 * (65.0 - 30.0) + 1.0 * 65.0  # acuity-weighted minutes
    var = np.var([1, 1, 0])
    expected = -(wait + 10.0 * var) * SMALL.reward_scale
    assert float(reward) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- generator/config
def test_make_hospitals_is_deterministic_and_heterogeneous():
    key = jax.random.PRNGKey(4)
    a = make_hospitals(SMALL, 5, key)
    b = make_hospitals(SMALL, 5, key)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    cfgs = hospital_configs(SMALL, 5, key)
    visits = [c.annual_visits for c in cfgs]
    assert visits == sorted(visits) and 15_000 <= visits[0] < 25_000 and visits[-1] > 60_000
    assert max(visits) <= 90_000
    assert cfgs[-1].esi_shares[1] > cfgs[0].esi_shares[1]  # larger leans tertiary
    assert len({c.day_multipliers for c in cfgs}) == 5
    per_visit = [c.staffing_factor / c.annual_visits for c in cfgs]
    assert max(per_visit) / min(per_visit) > 1.1  # staffing is not just proportional
    c = make_hospitals(SMALL, 5, jax.random.PRNGKey(5))
    assert not np.array_equal(np.asarray(a.arrivals_per_minute), np.asarray(c.arrivals_per_minute))


@pytest.mark.parametrize("field,value", [
    ("annual_visits", -1.0), ("esi_shares", (0.5, 0.5, 0.5, 0.0, 0.0)),
    ("service_mean_minutes", (60.0, 45.0, -1.0, 20.0, 12.0)), ("num_beds", 0),
    ("episode_steps", 0), ("decision_interval_minutes", 0.0), ("admit_prob", (2.0, 0, 0, 0, 0)),
    ("wait_cost_mode", "quadratic"), ("shift_starts", (8, 8, 0)), ("hour_multipliers", (1.0,)),
    ("reward_scale", 0.0), ("start_day", 9), ("overutil_threshold", 1.5)])
def test_config_errors_name_the_field(field, value):
    cfg = dataclasses.replace(HospitalConfig(), **{field: value})
    with pytest.raises(ConfigError, match=field):
        cfg.validate()
    with pytest.raises(ConfigError, match=field):
        make_params(cfg)


def test_num_hospitals_must_be_positive():
    with pytest.raises(ConfigError, match="num_hospitals"):
        make_hospitals(HospitalConfig(), 0, jax.random.PRNGKey(0))


def test_default_config_is_valid_and_constants():
    HospitalConfig().validate()
    assert (NUM_ACTIONS, OBS_DIM) == (5, 12)
    obs, state = reset(jax.random.PRNGKey(0), make_params(HospitalConfig()))
    assert obs.shape == (OBS_DIM,) and obs.dtype == jnp.float32
    # Forecast of the next hour at midnight = rate x hour-0 multiplier x day multiplier.
    cfg = HospitalConfig()
    day = int(state.start_day)
    hour_mult = cfg.hour_multipliers[0] / np.mean(cfg.hour_multipliers)
    day_mult = cfg.day_multipliers[day] / np.mean(cfg.day_multipliers)
    expected = cfg.annual_visits / 8760.0 * hour_mult * day_mult / cfg.obs_arrival_scale
    assert float(obs[11]) == pytest.approx(expected, rel=1e-4)
