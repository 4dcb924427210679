"""IFCA: clustered federated learning by loss-based cluster identity estimation.

Ghosh, Chung, Yin, Ramchandran, "An Efficient Framework for Clustered Federated Learning",
NeurIPS 2020 (Algorithm 1, model averaging). The server keeps C models; each round every
selected party evaluates the loss of each of them on its own data and joins the cluster of the
smallest loss (the argmin is its cluster identity estimate), trains that cluster's model
locally, and the server averages the updates within each cluster. This is the seed's
"clustered FL: group similar hospitals".

For a DQN party "its own data" is its replay buffer and "the loss" is the DQN's TD loss
(:meth:`fedrl.agents.dqn.DQN.loss`) on one batch sampled from it [reconstructed; the paper is
about supervised losses]. The target network of cluster c's loss is cluster c's model itself
when the round syncs the target at its start (``fed.sync_target_each_round``, the default):
the loss is then exactly the one the party would start local training with after joining c,
i.e. the Bellman residual of model c on the party's experience. Without the sync, the party's
own target network is used (as in its local training).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedrl.agents import replay
from fedrl.agents.dqn import DQN

PyTree = Any

# Round key -> cluster-choice key: ``fold_in(round_key, CLUSTER_KEY_SALT)``, then
# ``fold_in(., party_id)`` per party. A large constant, so that it cannot coincide with the
# round's ``split(round_key, 5)`` keys (a fold_in of a small integer d can equal split output d-5).
CLUSTER_KEY_SALT = 0x1FCA


def initial_assignment(key: jax.Array, num_parties: int, num_clusters: int) -> jax.Array:
    """A random balanced assignment [K] int32: party perm[j] joins cluster j mod C, so every
    cluster starts with members when K >= C [reconstructed: parties keep it until their
    replay buffer holds a batch, i.e. for the first round]."""
    perm = jax.random.permutation(key, num_parties)
    return jnp.zeros((num_parties,), jnp.int32).at[perm].set(
        jnp.arange(num_parties, dtype=jnp.int32) % num_clusters)


def cluster_losses(dqn: DQN, cluster_params: PyTree, buffers: replay.ReplayBuffer,
                   own_targets: PyTree, keys: jax.Array, use_cluster_target: bool) -> jax.Array:
    """[P, C] TD loss of each cluster model (leading axis C on ``cluster_params``) on one batch
    of ``dqn.config.batch_size`` transitions from each party's buffer (leading axis P on
    ``buffers``, ``own_targets``, ``keys``); party p's batch is ``replay.sample(buffer_p,
    keys[p])``, the same batch for every cluster."""
    def one_party(buffer, own_target, key):
        batch = replay.sample(buffer, key, dqn.config.batch_size)

        def one_cluster(params):
            return dqn.loss(params, params if use_cluster_target else own_target, batch)
        return jax.vmap(one_cluster)(cluster_params)
    return jax.vmap(one_party)(buffers, own_targets, keys)


def choose_clusters(losses: jax.Array, previous: jax.Array, can_estimate: jax.Array
                    ) -> jax.Array:
    """IFCA's cluster identity estimate argmin_c loss[p, c] (ties: the lowest index), or the
    party's ``previous`` cluster where ``can_estimate`` is False (no usable batch yet, or the
    party is not in this round)."""
    # a NaN loss (a batch holding NaN) never wins: jnp.argmin would return its index
    safe = jnp.where(jnp.isnan(losses), jnp.inf, losses)
    return jnp.where(can_estimate, jnp.argmin(safe, axis=1).astype(jnp.int32), previous)
