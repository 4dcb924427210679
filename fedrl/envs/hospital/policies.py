"""Heuristic scheduling baselines for the ED environment.

Every policy has the signature ``policy(key, obs, state, params) -> int32 action`` and is
jit/vmap-able; they look at the full state (the heuristics are "clairvoyant" about who waits and
for how long, which real triage boards show). Each picks the waiting patient that the rule ranks
first and returns the queue that patient is in (actions 0/1/2; with no one waiting, action 0).
None of them uses the surge (3) or transfer (4) actions, except ``random``.

A policy only *selects a queue*: the environment then starts the chosen queue's patients in
its ``service_order`` (default: queue-entry order, the MLFQ's FIFO) and applies aging unless
``aging`` is off. Two heuristics are only their textbook discipline in a matching environment,
listed in ``HEURISTIC_ENV`` and applied by ``heuristic_params`` (the experiments evaluate them
so; under the default MLFQ environment they are queue-selection rules, nothing more):

* ``fifo``: the queue of the longest-waiting patient (since arrival). With ``HEURISTIC_ENV``
  (service by arrival, no aging) it serves the oldest patient first, and the rest of the
  interval's starts go to that queue's next-oldest patients (not the global next-oldest: one
  queue per decision).
* ``strict_priority``: the queue of the most urgent waiting patient (lowest ESI; ties: earliest
  arrival). With ``HEURISTIC_ENV`` (ESI then arrival within the queue, no aging) it is the
  classic non-preemptive priority discipline, restricted to one queue per decision. Under the
  default environment aging moves low-acuity patients into the high queue and the queue is
  served in queue-entry order, so it behaves almost exactly like ``mlfq``.
* ``mlfq``: highest non-empty MLFQ queue, FIFO by queue entry within it; starvation is
  prevented only by the environment's fixed priority boost (aging) -- the seed's MLFQ scheduler.
* ``cmu``: the c-mu rule (Cox & Smith 1961; van Mieghem 1995): serve the class maximising
  cost rate x service rate = acuity_weight[ESI] / mean service time[ESI].
* ``sept``: shortest expected processing time first (mean service time by ESI).
* ``accumulating_priority``: Kleinrock (1964) / Stanford, Taylor & Ziedins (2014) accumulating
  priority queue: a patient's priority grows linearly with its wait at a class rate b[ESI];
  serve the largest accumulated priority. ``make_accumulating_priority(rates)`` builds variants.
* ``random``: uniform over all 5 actions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from fedrl.envs.hospital.config import SERVICE_ORDERS
from fedrl.envs.hospital.env import minutes
from fedrl.envs.hospital.types import NUM_ACTIONS, WAITING, EnvParams, EnvState

Policy = Callable[[jax.Array, jax.Array, EnvState, EnvParams], jax.Array]

# Accumulation rates per ESI level [reconstructed]: halve per level, i.e. roughly inverse to the
# CTAS time-to-provider targets 15/30/60/120 min (ESI 1 doubles ESI 2).
DEFAULT_AP_RATES = (16.0, 8.0, 4.0, 2.0, 1.0)


def _serve_best(state: EnvState, score: jax.Array) -> jax.Array:
    """Queue of the waiting patient with the highest ``score`` (ties: earliest arrival)."""
    p = state.patients
    waiting = p.status == WAITING
    best = jnp.max(jnp.where(waiting, score, -jnp.inf))
    tied = waiting & (score >= best)
    who = jnp.argmin(jnp.where(tied, p.arrival, jnp.inf))
    return jnp.where(jnp.any(waiting), p.queue[who], 0).astype(jnp.int32)


def fifo(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    return _serve_best(state, jnp.zeros_like(state.patients.arrival))


def strict_priority(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    return _serve_best(state, -state.patients.esi.astype(jnp.float32))


def mlfq(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    # Within the queue FIFO is by queue entry, which the env applies itself; ranking by -queue
    # is enough to pick the queue.
    return _serve_best(state, -state.patients.queue.astype(jnp.float32))


def cmu(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    index = params.acuity_weights / params.service_mean
    return _serve_best(state, index[state.patients.esi])


def sept(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    return _serve_best(state, -params.service_mean[state.patients.esi])


def make_accumulating_priority(rates: Sequence[float] = DEFAULT_AP_RATES) -> Policy:
    rates_arr = jnp.asarray(rates, jnp.float32)

    def accumulating_priority(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
        p = state.patients
        accumulated = rates_arr[p.esi] * (minutes(state, params) - p.arrival)
        return _serve_best(state, accumulated)

    return accumulating_priority


accumulating_priority = make_accumulating_priority()


def random(key, obs, state: EnvState, params: EnvParams) -> jax.Array:
    return jax.random.randint(key, (), 0, NUM_ACTIONS, dtype=jnp.int32)


# Environment settings under which a heuristic is its textbook discipline (see the module
# docstring); heuristics not listed run in the environment as configured.
HEURISTIC_ENV: dict[str, dict[str, Any]] = {
    "fifo": {"service_order": "arrival", "aging": False},
    "strict_priority": {"service_order": "acuity_then_arrival", "aging": False},
}


def heuristic_params(name: str, params: EnvParams) -> EnvParams:
    """``params`` (one hospital or a stack) with ``HEURISTIC_ENV[name]``'s settings applied;
    unchanged for heuristics not listed. Only data fields change, so a compiled rollout over
    ``params`` is reused."""
    settings = HEURISTIC_ENV.get(name, {})
    if "service_order" in settings:
        params = params.replace(service_order=jnp.full_like(
            params.service_order, SERVICE_ORDERS.index(settings["service_order"])))
    if "aging" in settings:
        params = params.replace(aging=jnp.full_like(params.aging, settings["aging"]))
    return params


HEURISTICS: dict[str, Policy] = {
    "fifo": fifo,
    "strict_priority": strict_priority,
    "mlfq": mlfq,
    "cmu": cmu,
    "sept": sept,
    "accumulating_priority": accumulating_priority,
    "random": random,
}

__all__ = ["HEURISTICS", "HEURISTIC_ENV", "heuristic_params", "Policy", "fifo", "strict_priority",
           "mlfq", "cmu", "sept",
           "accumulating_priority", "make_accumulating_priority", "random", "DEFAULT_AP_RATES"]
