"""The seed's reward for the ED scheduler, with every weight in the config.

    r = reward_scale * ( - w_wait * sum_{waiting} acuity_weight[esi] * wait_minutes
                         - w_var  * var(queue lengths)
                         + w_bonus * (# ESI 1-2 patients whose provider phase ended this step)
                         - overutil_penalty * [utilisation > overutil_threshold]
                         - surge cost - transfer cost )

``wait_minutes`` is the patient's current wait since arrival ("accumulated", the seed's snapshot
sum, which grows quadratically for long waiters and so discourages starvation) or the interval
length dt ("increment": the episode sum is then the total weighted waiting time). With waits in
minutes the wait term dominates the variance and bonus terms, as the seed's weights suggest;
``reward_scale`` = 0.01 brings a busy step to O(1) [reconstructed]. Acuity weights
30/15/1/1/1 follow Lee & Lee (2020, KTAS). Utilisation is the bottleneck max(staff busy /
staff capacity, beds busy / beds), busy units averaged over the interval [reconstructed].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.envs.hospital.types import WAITING, EnvParams, Patients


def reward_terms(patients: Patients, now: jax.Array, queue_lengths: jax.Array,
                 high_acuity_done: jax.Array, utilisation: jax.Array, surge_cost: jax.Array,
                 transfer_cost: jax.Array, params: EnvParams) -> dict[str, jax.Array]:
    """Unscaled reward components (all >= 0; signs applied in :func:`total_reward`)."""
    waiting = patients.status == WAITING
    weight = params.acuity_weights[patients.esi]
    wait_min = jnp.where(params.wait_accumulated, now - patients.arrival, params.dt)
    wait = jnp.sum(jnp.where(waiting, weight * wait_min, 0.0))
    return {
        "wait": params.w_wait * wait,
        "queue_var": params.w_var * jnp.var(queue_lengths.astype(jnp.float32)),
        "high_acuity_bonus": params.w_bonus * high_acuity_done.astype(jnp.float32),
        "overutil": jnp.where(utilisation > params.overutil_threshold,
                              params.overutil_penalty, 0.0),
        "surge_cost": surge_cost,
        "transfer_cost": transfer_cost,
    }


def total_reward(terms: dict[str, jax.Array], params: EnvParams) -> jax.Array:
    raw = (terms["high_acuity_bonus"] - terms["wait"] - terms["queue_var"] - terms["overutil"]
           - terms["surge_cost"] - terms["transfer_cost"])
    return (params.reward_scale * raw).astype(jnp.float32)
