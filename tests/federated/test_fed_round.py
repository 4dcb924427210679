"""Tests of FedAvg and the jitted federated DQN round."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.config import ConfigError
from fedrl.federated.aggregation import Cohort, fedavg, server_update
from fedrl.federated.round import FederatedConfig, make_federated_round
from tests import toy_env

DQN_CFG = DQNConfig(hidden_sizes=(16, 16), batch_size=16, buffer_capacity=500, learning_starts=32,
                    epsilon_decay_steps=200, target_update_every=25, learning_rate=1e-3)


def _run_aggregator(cohort):
    agg = fedavg()
    return jax.jit(agg.update)(cohort, agg.init(None), jax.random.key(0))[0]


def test_fedavg_equals_numpy_weighted_mean():
    rng = np.random.default_rng(0)
    updates = {"w": rng.normal(size=(5, 3, 2)).astype(np.float32),
               "b": rng.normal(size=(5, 2)).astype(np.float32)}
    weights = rng.integers(1, 100, 5).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    got = _run_aggregator(Cohort(updates=jax.tree.map(jnp.asarray, updates),
                                 weights=jnp.asarray(weights), mask=jnp.asarray(mask)))
    coef = weights * mask / np.sum(weights * mask)
    for name in updates:
        expected = np.tensordot(coef, updates[name], axes=1)
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_fedavg_is_identity_on_identical_clients():
    leaf = jnp.linspace(-2.0, 3.0, 12).reshape(3, 4)
    cohort = Cohort(updates={"w": jnp.stack([leaf] * 4)}, weights=jnp.array([1.0, 5.0, 2.0, 9.0]),
                    mask=jnp.ones(4, bool))
    np.testing.assert_allclose(_run_aggregator(cohort)["w"], leaf, rtol=1e-6)
    # And the FedAvg server step (sgd with lr 1) moves the global weights by exactly the mean.
    params = {"w": jnp.ones((3, 4))}
    opt = optax.sgd(1.0)
    new, _ = server_update(params, {"w": leaf}, opt.init(params), opt)
    np.testing.assert_allclose(new["w"], 1.0 + leaf, rtol=1e-6)


def _round(num_parties=3, **fed):
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(**{"num_rounds": 2, "local_steps": 60, **fed})
    return dqn, make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(num_parties), cfg)


def test_single_party_fedavg_global_equals_trained_local_weights():
    _, rnd = _round(num_parties=1)
    state = rnd.init(jax.random.key(0))
    state, metrics = rnd.step(state, jax.random.key(1))
    party = jax.tree.map(lambda x: x[0], state.parties.params)
    chex.assert_trees_all_close(state.global_params, party, rtol=1e-5, atol=1e-6)
    assert int(metrics["updates"]) > 0


def test_party_groups_give_the_same_round():
    """fed.party_chunk trains the cohort in groups (here two and a rest of one, with unequal
    budgets, on one device so that it holds all three): the same round as training all
    parties at once."""
    states = []
    for chunk in (0, 2):
        _, rnd = _round(num_parties=3, min_local_fraction=0.5, party_chunk=chunk, devices=1)
        state, _ = rnd.step(rnd.init(jax.random.key(0)), jax.random.key(5))
        states.append(state)
    chex.assert_trees_all_close(states[1].global_params, states[0].global_params,
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(states[1].parties.params, states[0].parties.params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(states[1].parties.updates, states[0].parties.updates)


def test_round_global_update_is_weighted_mean_of_party_deltas():
    _, rnd = _round(num_parties=3, min_local_fraction=0.5)
    state = rnd.init(jax.random.key(0))
    before = state.global_params
    # step donates its input: give it a copy so that `before` stays readable.
    new, metrics = rnd.step(jax.tree.map(jnp.copy, state), jax.random.key(5))
    # The parties' stored params are their trained weights; their budgets differ.
    counts = np.asarray(new.parties.steps, dtype=np.float64)
    assert len(set(counts.tolist())) > 1
    expected = jax.tree.map(
        lambda p, g: g + np.tensordot(counts / counts.sum(), np.asarray(p) - np.asarray(g)[None],
                                      axes=1), new.parties.params, before)
    chex.assert_trees_all_close(new.global_params, expected, rtol=1e-4, atol=1e-5)
    assert int(metrics["participants"]) == 3


def test_fixed_cohort_trains_only_selected_parties():
    _, rnd = _round(num_parties=4, clients_per_round=2)
    state = rnd.init(jax.random.key(0))
    state, metrics = rnd.step(state, jax.random.key(3))
    steps = np.asarray(state.parties.steps)
    assert sorted(steps.tolist()) == [0, 0, 60, 60]
    assert int(metrics["participants"]) == 2


def test_poisson_round_leaves_unsampled_parties_where_they_were():
    _, rnd = _round(num_parties=6, sampling="poisson", sampling_rate=0.5)
    state = rnd.init(jax.random.key(0))
    before = jax.tree.map(np.asarray, state.parties)
    new, metrics = rnd.step(jax.tree.map(jnp.copy, state), jax.random.key(4))
    steps = np.asarray(new.parties.steps)
    moved = steps == 60
    assert 0 < moved.sum() < 6 and set(steps.tolist()) <= {0, 60}
    assert int(metrics["transitions"]) == 60 * moved.sum()
    for i in np.flatnonzero(~moved):  # env, buffer and counters untouched
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b[i]),
                     (new.parties.env_state, new.parties.buffer, new.parties.updates),
                     (before.env_state, before.buffer, before.updates))


def test_poisson_unsampled_party_keeps_its_fine_tuned_model():
    # A party that trained in round 1 and is left out of round 2 keeps its own online and
    # target weights and Adam moments (fedavg_personalized evaluates them), not the broadcast
    # global model (it used to take the broadcast: review finding, session 11).
    _, rnd = _round(num_parties=6, sampling="poisson", sampling_rate=0.5)
    state = rnd.init(jax.random.key(0))
    state, _ = rnd.step(state, jax.random.key(4))
    trained_1 = np.asarray(state.parties.steps) == 60
    after_1 = jax.tree.map(np.array, state.parties)
    new, _ = rnd.step(jax.tree.map(jnp.copy, state), jax.random.key(5))
    left_out = trained_1 & (np.asarray(new.parties.steps) == 60)
    assert left_out.any() and (np.asarray(new.parties.steps) > 60).any()
    w = lambda tree, i: np.concatenate([np.ravel(x[i]) for x in jax.tree.leaves(tree)])
    for i in np.flatnonzero(left_out):
        for field in ("params", "target_params", "opt_state"):
            np.testing.assert_array_equal(w(getattr(new.parties, field), i),
                                          w(getattr(after_1, field), i))
        # and that model is not the global one it would have received
        assert not np.allclose(w(new.parties.params, i), w(
            jax.tree.map(lambda g: g[None], state.global_params), 0))


def test_local_only_keeps_parties_apart_and_global_fixed():
    # With target_update_every=0 ("round sync only"), which also checks that a local-only
    # party syncs its target to its own weights at each round start (it used to stay at its
    # random initialisation for the whole run: no broadcast, no sync on update).
    dqn = make_dqn(dataclasses.replace(DQN_CFG, target_update_every=0), toy_env.NUM_CONTEXTS)
    rnd = make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2),
                               FederatedConfig(num_rounds=2, local_steps=60, aggregation="none"))
    state = rnd.init(jax.random.key(0))
    g0 = jax.tree.map(np.asarray, state.global_params)
    target0 = jax.tree.map(np.array, state.parties.target_params)
    state, _ = rnd.step(state, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, state.global_params, g0)
    a, b = (jax.tree.map(lambda x: x[i], state.parties.params) for i in range(2))
    assert not np.allclose(jax.tree.leaves(a)[0], jax.tree.leaves(b)[0])
    after_round_1 = jax.tree.map(np.array, state.parties.params)
    assert not all(np.array_equal(x, y) for x, y in
                   zip(jax.tree.leaves(target0), jax.tree.leaves(after_round_1)))
    state, metrics = rnd.step(state, jax.random.key(1))
    assert int(metrics["updates"]) > 0
    jax.tree.map(np.testing.assert_array_equal, state.parties.target_params, after_round_1)


def test_round_is_deterministic_and_compiles_once():
    def run():
        _, rnd = _round(num_parties=2, sampling="poisson", sampling_rate=0.7, dropout_rate=0.2)
        chex.clear_trace_counter()
        step = chex.assert_max_traces(rnd.step.__wrapped__, n=1)
        jitted = jax.jit(step)
        state = rnd.init(jax.random.key(0))
        for _ in range(3):
            state, _ = jitted(state, jax.random.key(9))
        return state
    a, b = run(), run()
    jax.tree.map(np.testing.assert_array_equal, a.global_params, b.global_params)
    assert int(a.round) == 3


@pytest.mark.parametrize("change,match", [
    ({"num_rounds": 0}, "fed.num_rounds"), ({"sampling_rate": -0.1}, "fed.sampling_rate"),
    ({"dropout_rate": 1.0}, "fed.dropout_rate"), ({"clients_per_round": 9}, "clients_per_round"),
    ({"aggregation": "fedprox"}, "fed.aggregation"), ({"devices": -1}, "fed.devices"),
    ({"devices": 64}, "fed.devices=64 but only"), ({"update_gating": "cond"}, "update_gating"),
    ({"party_chunk": -1}, "fed.party_chunk"), ({"party_chunk": 2.0}, "fed.party_chunk")])
def test_round_config_errors(change, match):
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = dataclasses.replace(FederatedConfig(), **change)
    with pytest.raises(ConfigError, match=match):
        make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(3), cfg)


def test_zero_parties_is_refused():
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    with pytest.raises(ConfigError, match="at least one party"):
        make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(0), FederatedConfig())
