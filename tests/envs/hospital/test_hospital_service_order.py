"""Within-queue service order and the aging switch: the heuristics' textbook disciplines.

Regression for the review finding that ``strict_priority`` and ``fifo`` only pick a queue and the
environment then serves that queue in queue-entry order with aging on (so they behaved like the
MLFQ). ``heuristic_params`` gives them their own environment settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.envs.hospital import (
    HEURISTICS, ConfigError, HospitalConfig, heuristic_params, make_params, reset)
from fedrl.envs.hospital.env import transition
from fedrl.envs.hospital.types import WAITING, WITH_PROVIDER

# Essentially no arrivals and one physician slot, so exactly one patient starts per decision.
ONE_SLOT = HospitalConfig(max_patients=16, episode_steps=48, physicians_by_shift=(1., 1., 1.),
                          patients_per_physician=1.0, annual_visits=1.0)
PARAMS = make_params(ONE_SLOT)
# Jitted once (all configs below share the static fields): eager op-by-op calls of the
# unrolled start loop cost ~15 s of per-op compilation.
TRANSITION = jax.jit(transition)


def _state(patients, step_index, params=PARAMS):
    """Waiting patients given as (esi 1..5, queue, arrival, queue entry) minutes."""
    _, s = reset(jax.random.PRNGKey(0), params)
    p = s.patients
    for i, (esi, queue, arrival, entry) in enumerate(patients):
        p = p.replace(status=p.status.at[i].set(WAITING), esi=p.esi.at[i].set(esi - 1),
                      queue=p.queue.at[i].set(queue), arrival=p.arrival.at[i].set(arrival),
                      queue_entry=p.queue_entry.at[i].set(entry),
                      deadline=p.deadline.at[i].set(jnp.inf),
                      service_left=p.service_left.at[i].set(30.0),
                      bed_left=p.bed_left.at[i].set(30.0),
                      needs_equipment=p.needs_equipment.at[i].set(esi <= 3))
    return s.replace(patients=p, step=jnp.int32(step_index))


def _started(name, patients, step_index, params):
    """(action, ESI levels of the patients who started) after one decision of ``name``."""
    s = _state(patients, step_index, params)
    action = jax.jit(HEURISTICS[name])(jax.random.PRNGKey(0), jnp.zeros(12), s, params)
    s2, *_ = TRANSITION(jax.random.PRNGKey(1), s, action, params)
    status = np.asarray(s2.patients.status)
    return int(action), [patients[i][0] for i in range(len(patients))
                         if status[i] == WITH_PROVIDER]


# The reviewer's scenarios (t0 = 140 and 80 min). BOOSTED: an ESI 5 that arrived at 0 and was
# boosted into the high queue at 130, and an ESI 2 that arrived at 135.
BOOSTED = [(5, 0, 0.0, 130.0), (2, 0, 135.0, 135.0)]
# ESI 5 arrived at 0 (boosted into the high queue at 70), ESI 2 arrived at 60.
OLDEST_BOOSTED_LATER = [(5, 0, 0.0, 70.0), (2, 0, 60.0, 60.0)]


def test_default_environment_serves_queue_entry_order():
    # Documented behaviour under the MLFQ environment: the policy only picks queue 0; the
    # environment starts whoever entered queue 0 first.
    assert _started("strict_priority", BOOSTED, 28, PARAMS) == (0, [5])
    assert _started("fifo", OLDEST_BOOSTED_LATER, 16, PARAMS) == (0, [2])


def test_strict_priority_environment_serves_most_urgent_first():
    params = heuristic_params("strict_priority", PARAMS)
    assert _started("strict_priority", BOOSTED, 28, params) == (0, [2])


def test_fifo_environment_serves_oldest_arrival_first():
    params = heuristic_params("fifo", PARAMS)
    assert _started("fifo", OLDEST_BOOSTED_LATER, 16, params) == (0, [5])


def test_acuity_order_breaks_ties_by_arrival_and_respects_spill_order():
    # Two ESI 2s (the later one entered the queue first) and an ESI 1: ESI 1, then the ESI 2
    # that arrived first. With spill, the chosen queue still goes before the other queues.
    two = make_params(HospitalConfig(**{**ONE_SLOT.__dict__, "patients_per_physician": 2.0,
                                        "service_order": "acuity_then_arrival"}))
    patients = [(2, 0, 50.0, 50.0), (2, 0, 40.0, 60.0), (1, 0, 55.0, 55.0)]
    s = _state(patients, 16, two)
    s2, *_ = TRANSITION(jax.random.PRNGKey(1), s, jnp.int32(0), two)
    assert np.asarray(s2.patients.status)[:3].tolist() == [WAITING, WITH_PROVIDER, WITH_PROVIDER]
    spill = two.replace(spill=jnp.asarray(True))
    patients = [(1, 0, 50.0, 50.0), (3, 1, 0.0, 0.0), (4, 2, 10.0, 10.0)]
    s2, *_ = TRANSITION(jax.random.PRNGKey(1), _state(patients, 16, spill), jnp.int32(2), spill)
    # chosen queue 2 (ESI 4) first, then queue 0 (ESI 1) before queue 1 (ESI 3)
    assert np.asarray(s2.patients.status)[:3].tolist() == [WITH_PROVIDER, WAITING, WITH_PROVIDER]


def test_aging_switch():
    # An ESI 4 waiting 70 min in the low queue at t1: boosted with aging, not without.
    patients = [(4, 2, 0.0, 0.0)]
    no_staff = make_params(HospitalConfig(**{**ONE_SLOT.__dict__,
                                             "physicians_by_shift": (0., 0., 0.)}))
    for aging, queue in ((True, 1), (False, 2)):
        params = no_staff.replace(aging=jnp.asarray(aging))
        s2, *_ = TRANSITION(jax.random.PRNGKey(1), _state(patients, 13, params), jnp.int32(0),
                            params)
        assert int(s2.patients.queue[0]) == queue
        assert int(s2.counters.boosts) == int(aging)


def test_heuristic_params_on_stacked_hospitals_and_config_validation():
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), PARAMS)
    out = heuristic_params("strict_priority", stacked)
    assert out.service_order.tolist() == [2, 2] and out.aging.tolist() == [False, False]
    assert heuristic_params("mlfq", PARAMS) is PARAMS
    with pytest.raises(ConfigError, match="service_order"):
        make_params(HospitalConfig(service_order="lifo"))
    with pytest.raises(ConfigError, match="aging"):
        make_params(HospitalConfig(aging=1))
