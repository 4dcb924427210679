"""Non-IID techniques of the federated round: FedPer personal heads and IFCA clusters, checked
against independent re-computations (local training from the expected broadcast, NumPy FedAvg,
a NumPy TD loss)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.agents import replay
from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.config import ConfigError
from fedrl.federated import clustering, personalization
from fedrl.federated.aggregators import AggregatorConfig, build_aggregator, uplink_bytes_per_party
from fedrl.federated.round import (ClusteredFederatedState, FederatedConfig, FederatedState,
                                   make_federated_round, party_models)
from tests import toy_env

# One hidden layer: Dense_0 is the body, Dense_1 the Q head.
DQN_CFG = DQNConfig(hidden_sizes=(8,), batch_size=8, buffer_capacity=200, learning_starts=16,
                    epsilon_decay_steps=100, target_update_every=10, learning_rate=1e-2,
                    gamma=0.5)
STEPS = 40


def _copy(tree):
    return jax.tree.map(np.array, tree)


def _layers(params):
    return params["params"]


def test_personal_mask_uplink_and_config_errors():
    dqn = make_dqn(dataclasses.replace(DQN_CFG, hidden_sizes=(8, 8)), 4)
    params = dqn.init_params(jax.random.key(0), 4)
    mask = personalization.personal_mask(params, 2)
    assert {name: all(jax.tree.leaves(m)) for name, m in _layers(mask).items()} == \
        {"Dense_0": False, "Dense_1": True, "Dense_2": True}
    assert not any(jax.tree.leaves(personalization.personal_mask(params, 0)))
    # body 4x8+8 = 40 shared parameters; the two head layers (72 + 36) are never sent
    assert personalization.num_shared_params(params, 2) == 40
    assert personalization.num_shared_params(params, 0) == 40 + 72 + 36
    # the head's leaves and the body's partition the parameters (72 + 36 and 40 of them)
    head = personalization.personal_leaves(params, mask)
    body = personalization.shared_leaves(params, mask)
    assert sum(x.size for x in head) == 72 + 36 and sum(x.size for x in body) == 40
    assert len(head) + len(body) == len(jax.tree.leaves(params))
    assert uplink_bytes_per_party(AggregatorConfig(), 40) == 4 * 41
    assert uplink_bytes_per_party(AggregatorConfig(), 40, num_clusters=3) == 4 * 41 + 4
    with pytest.raises(ConfigError, match=r"fed.personal_layers must be an integer in \[0, 2\]"):
        personalization.personal_mask(params, 3)

    def build(**kw):
        make_federated_round(make_dqn(DQN_CFG, 4), toy_env.ENV, toy_env.stacked_params(2),
                             FederatedConfig(**kw))
    for kw, match in [({"personal_layers": -1}, "fed.personal_layers must be an integer >= 0"),
                      ({"personal_layers": 2}, r"fed.personal_layers must be .* \[0, 1\]"),
                      ({"num_clusters": 0}, "fed.num_clusters must be an integer >= 1"),
                      ({"personal_layers": 1, "num_clusters": 2}, "not implemented"),
                      ({"num_clusters": 2, "aggregation": "none"}, "aggregation='fedavg'")]:
        with pytest.raises(ConfigError, match=match):
            build(**kw)
    fed = FederatedConfig(num_clusters=2, sampling="poisson", sampling_rate=0.5)
    for kind in ("dp", "secure"):
        with pytest.raises(ConfigError, match=f"aggregator.kind={kind} with fed.num_clusters=2"):
            build_aggregator(AggregatorConfig(kind=kind), 4, fed)
    build_aggregator(AggregatorConfig(kind="quantized"), 4, fed)   # supported per cluster


def test_fedper_keeps_heads_local_and_averages_bodies():
    k = 3
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=STEPS, personal_layers=1)
    env_params = toy_env.stacked_params(k)
    rnd = make_federated_round(dqn, toy_env.ENV, env_params, cfg)
    train = jax.jit(lambda s, keys: dqn.train_parties(toy_env.ENV, s, env_params, keys, STEPS))
    key = jax.random.key(11)
    state = rnd.init(jax.random.key(0))
    assert type(state) is FederatedState
    initial_head = _copy(_layers(state.global_params)["Dense_1"])
    for r in range(2):
        before = _copy(state)
        # Independent reconstruction of the broadcast: the global body with each party's own
        # head (online and target); then each party trains alone with its round key.
        start = {"params": {
            "Dense_0": jax.tree.map(lambda g: np.broadcast_to(g, (k,) + g.shape),
                                    _layers(before.global_params)["Dense_0"]),
            "Dense_1": _layers(before.parties.params)["Dense_1"]}}
        k_train = jax.random.split(jax.random.fold_in(key, r), 5)[3]
        keys = jax.vmap(lambda i: jax.random.fold_in(k_train, i))(jnp.arange(k))
        expected, _ = train(jax.tree.map(jnp.asarray, before.parties.replace(
            params=start, target_params=start)), keys)
        state, metrics = rnd.step(state, key)
        assert int(metrics["participants"]) == k and "clusters" not in metrics
        # Every party's weights, its head included, are its own locally trained ones.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     state.parties.params, expected.params)
        # The body is FedAvg of the trained bodies (equal weights: equal budgets) ...
        for leaf in ("kernel", "bias"):
            g = _layers(before.global_params)["Dense_0"][leaf]
            trained = np.asarray(_layers(expected.params)["Dense_0"][leaf])
            np.testing.assert_allclose(_layers(state.global_params)["Dense_0"][leaf],
                                       g + np.mean(trained - g[None], axis=0),
                                       rtol=1e-5, atol=1e-6)
        # ... while the server's head is never touched.
        jax.tree.map(np.testing.assert_array_equal, _layers(state.global_params)["Dense_1"],
                     initial_head)
    heads = np.asarray(_layers(state.parties.params)["Dense_1"]["kernel"])
    assert not np.allclose(heads[0], heads[1]) and not np.allclose(heads[1], heads[2])
    # What each party acts with: the new global body and its own head.
    models = party_models(state, cfg)
    np.testing.assert_array_equal(_layers(models)["Dense_1"]["kernel"], heads)
    np.testing.assert_array_equal(_layers(models)["Dense_0"]["kernel"][2],
                                  _layers(state.global_params)["Dense_0"]["kernel"])


def _numpy_td_loss(params, batch, gamma):
    """Double-DQN Huber TD loss of a one-hidden-layer MLP whose target network is itself."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), _layers(params))

    def q(obs):
        h = np.maximum(obs @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    obs, nxt = np.asarray(batch.obs, np.float64), np.asarray(batch.next_obs, np.float64)
    action = np.asarray(batch.action)
    q_taken = q(obs)[np.arange(len(action)), action]
    q_next = q(nxt)[np.arange(len(action)), np.argmax(q(nxt), axis=1)]
    td = q_taken - (np.asarray(batch.reward) + gamma * (1 - np.asarray(batch.terminated))
                    * q_next)
    return np.mean(np.where(np.abs(td) <= 1, 0.5 * td ** 2, np.abs(td) - 0.5))


def test_ifca_picks_the_argmin_cluster_and_separates_two_kinds_of_party():
    # Parties 0-1 are rewarded for naming the context, parties 2-3 penalised for it: two
    # groups that need opposite Q-functions.
    env_params = toy_env.stacked_params(4).replace(
        reward_scale=jnp.array([[1.0], [1.0], [-1.0], [-1.0]]))
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=4, local_steps=STEPS, num_clusters=2)
    rnd = make_federated_round(dqn, toy_env.ENV, env_params, cfg)
    key = jax.random.key(100)
    state = rnd.init(jax.random.key(0))
    assert isinstance(state, ClusteredFederatedState)
    w0 = np.asarray(_layers(state.global_params)["Dense_0"]["kernel"])
    assert w0.shape[0] == 2 and not np.allclose(w0[0], w0[1])     # distinct random models
    first = np.asarray(state.clusters)
    assert sorted(first.tolist()) == [0, 0, 1, 1] and first[0] != first[1]   # mixed start
    for r in range(4):
        before = _copy(state)
        state, metrics = rnd.step(state, key)
        got = np.asarray(state.clusters)
        np.testing.assert_array_equal(metrics["clusters"], got)
        if r == 0:   # empty buffers: no estimate yet, everyone keeps the initial assignment
            np.testing.assert_array_equal(got, first)
            assert np.all(np.isnan(metrics["cluster_losses"]))
            continue
        # Independent re-computation: each party's batch from its own buffer with its
        # cluster-choice key, a NumPy TD loss per cluster model, the argmin.
        k_cluster = jax.random.fold_in(jax.random.fold_in(key, r), clustering.CLUSTER_KEY_SALT)
        losses = np.zeros((4, 2))
        for i in range(4):
            batch = replay.sample(jax.tree.map(lambda x: x[i], before.parties.buffer),
                                  jax.random.fold_in(k_cluster, i), DQN_CFG.batch_size)
            for c in range(2):
                losses[i, c] = _numpy_td_loss(jax.tree.map(lambda x: x[c],
                                                           before.global_params),
                                              batch, DQN_CFG.gamma)
        np.testing.assert_allclose(metrics["cluster_losses"], losses, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got, np.argmin(losses, axis=1))
        np.testing.assert_array_equal(metrics["cluster_sizes"], np.bincount(got, minlength=2))
    # The two kinds of party end in different clusters, each kind together.
    assert got[0] == got[1] and got[2] == got[3] and got[0] != got[2], got
    models = party_models(state, cfg)
    np.testing.assert_array_equal(_layers(models)["Dense_1"]["bias"][3],
                                  _layers(state.global_params)["Dense_1"]["bias"][got[3]])


def test_ifca_averages_within_clusters_and_keeps_empty_clusters():
    # Two parties, three clusters: at least one cluster has no member in every round.
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=STEPS, num_clusters=3,
                          server_optimizer="momentum", min_local_fraction=0.5)
    rnd = make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2), cfg)
    state = rnd.init(jax.random.key(1))
    for _ in range(2):
        before = _copy(state)
        state, _ = rnd.step(state, jax.random.key(2))
        chosen = np.asarray(state.clusters)
        steps = np.asarray(state.parties.steps) - np.asarray(before.parties.steps)
        for c in range(3):
            new = jax.tree.map(lambda x: np.asarray(x[c]), state.global_params)
            old = jax.tree.map(lambda x: x[c], before.global_params)
            if c not in chosen:   # no member: model and server momentum exactly unchanged
                jax.tree.map(np.testing.assert_array_equal, new, old)
                jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[c], b[c]),
                             state.server_opt_state, before.server_opt_state)
                continue
            # Members' FedAvg (weights: transitions) through FedAvgM (lr 1, momentum 0.9):
            # new = old + mean - 0.9 * previous trace (optax's trace holds -update).
            members = np.flatnonzero(chosen == c)
            w = steps[members] / steps[members].sum()
            mean = jax.tree.map(lambda p, g: np.tensordot(w, np.asarray(p)[members] - g[None],
                                                          axes=1), state.parties.params, old)
            momentum = jax.tree.map(lambda x: np.asarray(x[c]),
                                    before.server_opt_state[0].trace)
            jax.tree.map(lambda n, o, m, t: np.testing.assert_allclose(
                n, o + m - 0.9 * t, rtol=1e-4, atol=1e-5), new, old, mean, momentum)
