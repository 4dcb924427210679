"""Heuristic baselines: each rule's choice on handcrafted states, jit/vmap, and a sanity ranking."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.envs.hospital import HEURISTICS, HospitalConfig, evaluate, make_params, reset
from fedrl.envs.hospital.policies import make_accumulating_priority
from fedrl.envs.hospital.types import WAITING

SMALL = HospitalConfig(max_patients=32, episode_steps=24, max_arrivals_per_step=6,
                       event_buffer_size=8, annual_visits=60_000.0)
PARAMS = make_params(SMALL)


def _state(patients, step_index=12):
    """Waiting patients given as (esi 1..5, queue, arrival minutes)."""
    _, state = reset(jax.random.PRNGKey(0), PARAMS)
    p = state.patients
    for i, (esi, queue, arrival) in enumerate(patients):
        p = p.replace(status=p.status.at[i].set(WAITING), esi=p.esi.at[i].set(esi - 1),
                      queue=p.queue.at[i].set(queue), arrival=p.arrival.at[i].set(arrival),
                      queue_entry=p.queue_entry.at[i].set(arrival))
    return state.replace(patients=p, step=jnp.int32(step_index))


def _act(name, patients, policy=None):
    policy = policy or HEURISTICS[name]
    state = _state(patients)
    action = policy(jax.random.PRNGKey(0), jnp.zeros(12), state, PARAMS)
    assert action.dtype == jnp.int32 and action.shape == ()
    return int(action)


# A boosted ESI 5 sits in the high queue; an ESI 3 in medium; an ESI 4 arrived first.
MIXED = [(5, 0, 10.0), (3, 1, 20.0), (4, 2, 0.0)]


@pytest.mark.parametrize("name,expected", [
    ("fifo", 2),  # ESI 4 arrived first
    ("strict_priority", 1),  # most urgent triage level is ESI 3 (ignores the boost)
    ("mlfq", 0),  # highest non-empty queue
    ("cmu", 0),  # ESI 5: 1/12 per minute beats ESI 3 (1/35) and ESI 4 (1/20)
    ("sept", 0),  # ESI 5 has the shortest mean service
    ("accumulating_priority", 1),  # 4*40 (ESI 3) > 2*60 (ESI 4) > 1*50 (ESI 5)
])
def test_each_rule_picks_its_patient(name, expected):
    assert _act(name, MIXED) == expected


def test_rules_differ_on_urgent_patients():
    urgent = [(2, 0, 55.0), (5, 2, 0.0)]  # ESI 2 waited 5 min, ESI 5 waited 60 min
    assert _act("strict_priority", urgent) == 0
    assert _act("cmu", urgent) == 0  # 15/45 > 1/12
    assert _act("fifo", urgent) == 2
    # Accumulated priority lets a long waiter overtake: 8 * 5 = 40 < 1 * 60 = 60 ...
    assert _act("accumulating_priority", urgent) == 2
    # ... unless the urgent class accumulates fast enough (here 16 * 5 = 80 > 60).
    steep = make_accumulating_priority((32.0, 16.0, 4.0, 2.0, 1.0))
    assert _act("ap_steep", urgent, steep) == 0


def test_nobody_waiting_gives_action_zero():
    for name, policy in HEURISTICS.items():
        if name != "random":
            assert _act(name, [], policy) == 0


def test_policies_jit_and_vmap_over_states():
    states = jax.tree.map(lambda *xs: jnp.stack(xs), _state(MIXED), _state([(2, 0, 50.0)]),
                          _state([]))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    for name, policy in HEURISTICS.items():
        actions = jax.jit(jax.vmap(policy, in_axes=(0, None, 0, None)))(
            keys, jnp.zeros(12), states, PARAMS)
        assert actions.shape == (3,) and actions.dtype == jnp.int32
        assert np.all((np.asarray(actions) >= 0) & (np.asarray(actions) < 5))
    draws = jax.vmap(HEURISTICS["random"], in_axes=(0, None, None, None))(
        jax.random.split(jax.random.PRNGKey(2), 200), jnp.zeros(12), _state(MIXED), PARAMS)
    assert set(np.asarray(draws).tolist()) == {0, 1, 2, 3, 4}


def test_strict_priority_beats_random_on_acuity_weighted_wait():
    # A busy small ED (fixed seed): priority must cut the acuity-weighted wait clearly.
    params = make_params(dataclasses.replace(SMALL, annual_visits=90_000.0))
    key = jax.random.PRNGKey(0)
    sp = evaluate(HEURISTICS["strict_priority"], params, key, 4)
    rnd = evaluate(HEURISTICS["random"], params, key, 4)
    # (random also sheds load by transferring ~1 in 5 decisions, so the margin is moderate)
    assert sp["acuity_weighted_wait"] < 0.85 * rnd["acuity_weighted_wait"]
    assert sp["episode_return"] > rnd["episode_return"]
    assert sp["transfers"] == 0 and rnd["transfers"] > 0
