"""Evaluation metrics: hand-computed values on handcrafted traces, consistency with counters."""
import dataclasses

import jax
import numpy as np
import pytest

from fedrl.envs.hospital import HEURISTICS, HospitalConfig, make_params, rollout, summarize
from fedrl.envs.hospital.types import Counters

SMALL = HospitalConfig(max_patients=32, episode_steps=24, max_arrivals_per_step=6,
                       event_buffer_size=8, annual_visits=60_000.0)


def _handcrafted():
    """One episode of 2 steps with an event buffer of 3 (kinds: 1 seen, 2 LWBS, 3 transfer)."""
    a = lambda x, dtype=np.float32: np.asarray([x], dtype)  # noqa: E731  (episode axis)
    traces = {
        "event_kind": a([[1, 2, 0], [1, 3, 1]], np.int32),
        "event_wait": a([[4.0, 50.0, 0.0], [20.0, 70.0, 130.0]]),
        "event_esi": a([[0, 3, 0], [2, 4, 4]], np.int32),  # ESI 1, 4 | ESI 3, 5, 5
        "events_dropped": a([0, 0], np.int32),
        "staff_busy": a([2.0, 3.0]), "staff_capacity": a([4, 4], np.int32),
        "beds_busy": a([10.0, 12.0]), "beds_capacity": a([20, 20], np.int32),
        "equipment_busy": a([1.0, 0.0]), "equipment_capacity": a([2, 2], np.int32),
        "completed": a([1, 2], np.int32), "los_sum": a([100.0, 300.0]),
        "transfers_out": a([0, 1], np.int32), "surge_started": a([True, False], bool),
        "surge_active": a([True, True], bool), "reward": a([-1.0, -2.0]),
        "action": a([0, 4], np.int32),
    }
    z = np.zeros(1, np.int32)
    counters = Counters(arrived=z + 10, started=z + 3, provider_done=z, completed=z + 3,
                        transferred_out=z + 1, transferred_in=z, lwbs=z + 1, diverted=z + 2,
                        admitted=z, surges=z + 1, boosts=z)
    final = {"counters": counters, "censored_mask": np.array([[True, False]]),
             "censored_wait": np.array([[30.0, 0.0]], np.float32),
             "censored_esi": np.array([[1, 0]], np.int32)}  # one ESI 2 still waiting
    return traces, final


def test_summarize_matches_hand_computation():
    traces, final = _handcrafted()
    m = summarize(traces, final, make_params(SMALL))
    # Everyone who entered a queue: waits 4 50 20 70+60 130 30 (the transfer is charged its
    # 60 min transfer delay), weights 30 1 1 1 1 15.
    assert m["acuity_weighted_wait"] == pytest.approx((120 + 50 + 20 + 130 + 130 + 450) / 49)
    assert m["mean_wait"] == pytest.approx(np.mean([4, 50, 20, 130, 130, 30]))
    seen = np.array([4.0, 20.0, 130.0])
    assert m["door_to_provider_median"] == pytest.approx(20.0)
    assert m["door_to_provider_p90"] == pytest.approx(20.0 + 0.8 * 110.0)
    assert m["never_seen_share"] == pytest.approx(3 / 6)
    # Targets + dt: ESI1 4<=5 yes, ESI3 20<=35 yes, ESI5 130<=125 no; the LWBS and the transfer
    # are misses; the ESI 2 still waiting 30 > 15+5 is a miss: 2 hits of 6 decided.
    assert m["within_target"] == pytest.approx(2 / 6)
    assert m["within_target_seen_only"] == pytest.approx(2 / 3)
    assert m["target_undecided"] == 0
    assert m["p95_wait_esi5"] == pytest.approx(130.0)
    assert m["worst_class_p95_wait"] == pytest.approx(130.0)
    assert m["p95_wait_esi2"] == pytest.approx(30.0)
    assert m["lwbs_rate"] == pytest.approx(0.1) and m["diverted_rate"] == pytest.approx(0.2)
    assert m["transfer_rate"] == pytest.approx(0.1)
    assert m["utilisation_staff"] == pytest.approx(5 / 8)
    assert m["utilisation_beds"] == pytest.approx(22 / 40)
    assert m["utilisation"] == pytest.approx((5 / 8 + 22 / 40) / 2)
    assert m["utilisation_equipment"] == pytest.approx(1 / 4)
    assert m["episode_return"] == pytest.approx(-3.0)
    assert m["transfers"] == 1.0 and m["surges"] == 1.0
    assert m["mean_los"] == pytest.approx(400 / 3)
    assert m["throughput_per_day"] == pytest.approx(3 / (2 * 5 / 1440))
    assert m["seen"] == len(seen) and m["lwbs_events"] == 1 and m["transfer_events"] == 1


def test_censored_under_target_is_undecided_and_empty_episode_is_nan():
    traces, final = _handcrafted()
    final = {**final, "censored_wait": np.array([[10.0, 0.0]], np.float32)}  # ESI 2, 10 <= 20
    m = summarize(traces, final, make_params(SMALL))
    assert m["within_target"] == pytest.approx(2 / 5) and m["target_undecided"] == 1
    traces = {**traces, "event_kind": np.zeros_like(traces["event_kind"])}
    final = {**final, "censored_mask": np.zeros_like(final["censored_mask"])}
    m = summarize(traces, final, make_params(SMALL))
    for name in ("acuity_weighted_wait", "mean_wait", "worst_class_p95_wait", "within_target",
                 "door_to_provider_median", "never_seen_share"):
        assert np.isnan(m[name]), name


def test_never_seeing_the_high_queue_misses_its_targets():
    # Review finding: a policy that never serves ESI 1-2 scored 1.0 "within target" because
    # only seen patients counted. Here the ESI 3-5 patients are all seen in time and the
    # ESI 1-2 ones are still waiting at the horizon, past their targets.
    traces, final = _handcrafted()
    traces = {**traces, "event_kind": np.asarray([[[1, 0, 0], [1, 1, 0]]], np.int32),
              "event_wait": np.asarray([[[3.0, 0, 0], [20.0, 50.0, 0]]], np.float32),
              "event_esi": np.asarray([[[4, 0, 0], [2, 3, 0]]], np.int32)}
    final = {**final, "censored_mask": np.array([[True, True]]),
             "censored_wait": np.array([[40.0, 90.0]], np.float32),
             "censored_esi": np.array([[0, 1]], np.int32)}
    m = summarize(traces, final, make_params(SMALL))
    assert m["within_target_seen_only"] == 1.0
    assert m["within_target"] == pytest.approx(3 / 5)
    assert m["never_seen_share"] == pytest.approx(2 / 5)
    assert m["door_to_provider_median"] == pytest.approx(20.0)


def test_rollout_events_agree_with_counters():
    params = make_params(dataclasses.replace(SMALL, annual_visits=90_000.0))
    traces, final = rollout(HEURISTICS["strict_priority"], params, jax.random.PRNGKey(0), 4)
    kind = np.asarray(traces["event_kind"])
    c = final["counters"]
    assert int(np.sum(traces["events_dropped"])) == 0
    np.testing.assert_array_equal(np.sum(kind == 1, axis=(1, 2)), c.started)
    np.testing.assert_array_equal(np.sum(kind == 2, axis=(1, 2)), c.lwbs)
    np.testing.assert_array_equal(np.sum(kind == 3, axis=(1, 2)), c.transferred_out)
    np.testing.assert_array_equal(np.sum(traces["completed"], axis=1), c.completed)
    # Waits are non-negative and each seen patient's wait is a whole number of minutes
    # since arrival up to a decision boundary: wait + arrival offset lands on the 5-min grid.
    waits = np.asarray(traces["event_wait"])[kind == 1]
    assert np.all(waits >= 0) and np.all(waits < 24 * 5)
    m = summarize(traces, final, params)
    assert all(isinstance(v, float) for v in m.values())
    assert 0 < m["utilisation_staff"] <= 1.5 and 0 < m["utilisation_beds"] <= 1.0
    # Every patient who arrived and was not diverted is either still in the ED, gone, or
    # recorded: seen + LWBS + transferred + censored == arrived - diverted - (still) nobody else.
    censored = np.sum(final["censored_mask"])
    recorded = m["seen"] + m["lwbs_events"] + m["transfer_events"] + censored
    assert recorded == int(np.sum(c.arrived) - np.sum(c.diverted))
