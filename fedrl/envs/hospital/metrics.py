"""Evaluation of a scheduling policy on one hospital.

``rollout`` (pure JAX: ``lax.scan`` over the episode's steps, ``vmap`` over episodes; jit it or
vmap it over stacked hospitals) returns per-step traces and the final states; ``summarize``
turns them into scalar metrics on the host with NumPy; ``evaluate`` does both.

Per-patient waits come from the env's fixed-size per-step event buffer (patients leaving the
waiting room: seen, LWBS, transferred) plus the patients still waiting at the horizon, whose
wait is censored at the horizon. Definitions:

* waits: seen = arrival to provider start; LWBS = arrival to leaving; transferred = arrival
  to transfer + ``transfer_delay_minutes`` (the delay the reward charges: the wait goes on
  elsewhere); still waiting at the horizon = censored at the horizon (a lower bound);
* ``acuity_weighted_wait``: sum(acuity_weight[ESI] * wait) / sum(acuity_weight[ESI]) over every
  patient who entered a queue (seen, LWBS, transferred, or censored), minutes; NaN if nobody;
* ``door_to_provider_median`` / ``_p90``: wait of the patients who were seen, minutes; read them
  with ``never_seen_share``, the share of patients who entered a queue and were not seen (LWBS,
  transferred, still waiting at the horizon): a policy that sees few patients quickly has
  small quantiles and a large never-seen share;
* ``within_target``: hits / decided patients, where a hit is a patient seen with wait <= CTAS
  target[ESI] + dt (the target 0 for ESI 1 means "at the first decision after arrival"), and
  the decided patients are everyone who entered a queue except those still waiting at the
  horizon and still under their target (``target_undecided`` counts them): LWBS, transferred
  and still-waiting-past-target patients are misses. ``within_target_seen_only`` is the share
  among the seen (the old, optimistic definition);
* ``worst_class_p95_wait``: max over ESI levels of the 95th percentile of the wait of all
  patients of that level (censored ones included: a starvation check); NaN with no patients;
* ``lwbs_rate``, ``diverted_rate``, ``transfer_rate``: share of arrivals; ``utilisation_*``: busy /
  capacity over the whole horizon (ratio of sums); ``utilisation``: mean of staff and beds;
* ``episode_return``: mean sum of rewards; ``transfers``, ``surges``: per episode;
  ``throughput_per_day``: discharges per 24 h; ``mean_los``: arrival-to-discharge minutes.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from fedrl.envs.hospital.env import minutes, reset, step_env
from fedrl.envs.hospital.types import (
    EVENT_LWBS, EVENT_SEEN, EVENT_TRANSFERRED, WAITING, EnvParams)

_TRACE_KEYS = ("event_kind", "event_wait", "event_esi", "events_dropped", "staff_busy",
               "staff_capacity", "beds_busy", "beds_capacity", "equipment_busy",
               "equipment_capacity", "completed", "los_sum", "transfers_out", "surge_started",
               "surge_active")


@functools.partial(jax.jit, static_argnames=("policy", "num_episodes"))
def rollout(policy, params: EnvParams, key: jax.Array, num_episodes: int):
    """Run ``num_episodes`` full episodes of ``policy``; returns (traces, final) pytrees with a
    leading episode axis (traces also have a step axis)."""

    def episode(k):
        k_reset, k_run = jax.random.split(k)
        obs, state = reset(k_reset, params)

        def body(carry, k_t):
            obs, state = carry
            k_act, k_env = jax.random.split(k_t)
            action = policy(k_act, obs, state, params)
            obs, state, reward, _, info = step_env(k_env, state, action, params)
            out = {name: info[name] for name in _TRACE_KEYS}
            out["reward"] = reward
            out["action"] = action
            return (obs, state), out

        (_, state), traces = jax.lax.scan(body, (obs, state),
                                          jax.random.split(k_run, params.max_steps))
        p = state.patients
        final = {"counters": state.counters,
                 "censored_mask": p.status == WAITING,
                 "censored_wait": minutes(state, params) - p.arrival,
                 "censored_esi": p.esi}
        return traces, final

    return jax.vmap(episode)(jax.random.split(key, num_episodes))


def _percentile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def summarize(traces, final, params: EnvParams) -> dict[str, float]:
    """Scalar metrics (floats) from ``rollout``'s output for one hospital."""
    tr = jax.tree.map(np.asarray, traces)
    fi = jax.tree.map(np.asarray, final)
    weights = np.asarray(params.acuity_weights, np.float64)
    targets = np.asarray(params.target_minutes, np.float64)
    num_episodes, num_steps = tr["reward"].shape

    kind = tr["event_kind"].ravel()
    wait = tr["event_wait"].ravel().astype(np.float64)
    esi = tr["event_esi"].ravel()
    # A transferred patient is charged transfer_delay more minutes of waiting (as the reward
    # does): the wait continues at the receiving ED. Otherwise "always transfer" would look
    # like the shortest wait.
    wait = np.where(kind == EVENT_TRANSFERRED, wait + float(params.transfer_delay), wait)
    left = kind != 0
    censored = fi["censored_mask"]
    cens_wait = fi["censored_wait"][censored].astype(np.float64)
    cens_esi = fi["censored_esi"][censored]
    all_wait = np.concatenate([wait[left], cens_wait])
    all_esi = np.concatenate([esi[left], cens_esi])
    seen = kind == EVENT_SEEN
    seen_wait, seen_esi = wait[seen], esi[seen]
    # "Seen within target" over everyone who entered a queue: seen in time = hit; LWBS,
    # transferred, or still waiting past the target at the horizon = miss; still waiting and
    # under the target = undecided, left out. (Counting only the seen would let a policy that
    # never sees ESI 1-2 score 1.0.)
    slack = targets + params.dt
    seen_hit = seen_wait <= slack[seen_esi]
    not_seen = (kind == EVENT_LWBS) | (kind == EVENT_TRANSFERRED)
    cens_late = cens_wait > slack[cens_esi]
    decided = seen_wait.size + int(np.sum(not_seen)) + int(np.sum(cens_late))
    nan = float("nan")

    w = weights[all_esi]
    out = {
        "acuity_weighted_wait": float(np.sum(w * all_wait) / np.sum(w))
        if w.size and np.sum(w) > 0 else nan,
        "mean_wait": float(np.mean(all_wait)) if all_wait.size else nan,
        "door_to_provider_median": _percentile(seen_wait, 50),
        "door_to_provider_p90": _percentile(seen_wait, 90),
        # entered a queue but not seen (LWBS, transferred, still waiting at the horizon): read
        # the seen-only door-to-provider quantiles next to it
        "never_seen_share": float(1.0 - seen_wait.size / all_wait.size) if all_wait.size else nan,
        "within_target": float(np.sum(seen_hit)) / decided if decided else nan,
        "within_target_seen_only": float(np.mean(seen_hit)) if seen_wait.size else nan,
        "target_undecided": float(np.sum(~cens_late)),
    }
    p95s = []
    for level in range(5):
        waits = all_wait[all_esi == level]
        p95 = _percentile(waits, 95)
        out[f"p95_wait_esi{level + 1}"] = p95
        if waits.size:
            p95s.append(p95)
    out["worst_class_p95_wait"] = max(p95s) if p95s else nan

    c = fi["counters"]
    arrived = max(int(np.sum(c.arrived)), 1)
    out["lwbs_rate"] = float(np.sum(c.lwbs)) / arrived
    out["diverted_rate"] = float(np.sum(c.diverted)) / arrived
    out["transfer_rate"] = float(np.sum(c.transferred_out)) / arrived
    ratio = lambda b, cap: float(np.sum(tr[b]) / max(np.sum(tr[cap]), 1))  # noqa: E731
    out["utilisation_staff"] = ratio("staff_busy", "staff_capacity")
    out["utilisation_beds"] = ratio("beds_busy", "beds_capacity")
    out["utilisation_equipment"] = ratio("equipment_busy", "equipment_capacity")
    out["utilisation"] = 0.5 * (out["utilisation_staff"] + out["utilisation_beds"])
    out["episode_return"] = float(np.mean(np.sum(tr["reward"], axis=1)))
    out["transfers"] = float(np.mean(np.sum(tr["transfers_out"], axis=1)))
    out["surges"] = float(np.mean(np.sum(tr["surge_started"], axis=1)))
    out["surge_active_share"] = float(np.mean(tr["surge_active"]))
    days = num_episodes * num_steps * params.dt / 1440.0
    out["throughput_per_day"] = float(np.sum(tr["completed"])) / days
    out["arrivals_per_day"] = float(np.sum(c.arrived)) / days
    out["mean_los"] = float(np.sum(tr["los_sum"]) / max(np.sum(tr["completed"]), 1))
    out["seen"] = float(seen.sum())
    out["lwbs_events"] = float(np.sum(kind == EVENT_LWBS))
    out["transfer_events"] = float(np.sum(kind == EVENT_TRANSFERRED))
    out["events_dropped"] = float(np.sum(tr["events_dropped"]))
    return out


def evaluate(policy, params: EnvParams, key: jax.Array, num_episodes: int) -> dict[str, float]:
    """Metrics of ``policy(key, obs, state, params)`` on one hospital (unstacked ``params``)."""
    traces, final = rollout(policy, params, key, int(num_episodes))
    return summarize(traces, final, params)


__all__ = ["evaluate", "rollout", "summarize"]
