"""Tests of the DQN agent: replay buffer, loss, update, vmapped training and learning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.agents import replay
from fedrl.agents.dqn import DQNConfig, Transition, make_dqn
from fedrl.config import ConfigError
from tests import toy_env

SMALL = DQNConfig(hidden_sizes=(32, 32), batch_size=32, buffer_capacity=2000, learning_starts=64,
                  epsilon_decay_steps=300, target_update_every=50, learning_rate=1e-3, gamma=0.5)


def test_replay_ring_buffer_matches_numpy():
    buf = replay.init({"x": jnp.zeros((2,))}, capacity=5)
    expected = []
    for step in range(4):
        items = {"x": jnp.arange(6.0).reshape(3, 2) + 10 * step}
        valid = jnp.array([True, step % 2 == 0, True])
        buf = replay.add_batch(buf, items, valid)
        expected += [np.asarray(items["x"][i]) for i in range(3) if bool(valid[i])]
    # The ring keeps the last `capacity` valid items, in write order starting at position.
    last = np.stack(expected[-5:])
    pos = int(buf.position)
    stored = np.asarray(buf.data["x"])
    np.testing.assert_array_equal(np.roll(stored, -pos, axis=0), last)
    assert int(buf.size) == 5
    sample = replay.sample(buf, jax.random.key(0), 64)["x"]
    assert {tuple(r) for r in np.asarray(sample)} <= {tuple(r) for r in last}


def _numpy_mlp(params, x):
    layers = params["params"]
    names = sorted(layers, key=lambda n: int(n.split("_")[1]))
    for i, name in enumerate(names):
        x = x @ np.asarray(layers[name]["kernel"]) + np.asarray(layers[name]["bias"])
        if i < len(names) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_loss_matches_numpy(double, loss):
    cfg = DQNConfig(hidden_sizes=(8,), double_dqn=double, loss=loss, gamma=0.9)
    dqn = make_dqn(cfg, 3)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    params, target = dqn.init_params(k1, 4), dqn.init_params(k2, 4)
    rng = np.random.default_rng(0)
    batch = Transition(obs=rng.normal(size=(16, 4)).astype(np.float32) * 3,
                       action=rng.integers(0, 3, 16).astype(np.int32),
                       reward=rng.normal(size=16).astype(np.float32) * 2,
                       next_obs=rng.normal(size=(16, 4)).astype(np.float32),
                       terminated=(rng.random(16) < 0.3).astype(np.float32))
    q = _numpy_mlp(params, batch.obs)[np.arange(16), batch.action]
    q_next_t = _numpy_mlp(target, batch.next_obs)
    if double:
        q_next = q_next_t[np.arange(16), _numpy_mlp(params, batch.next_obs).argmax(1)]
    else:
        q_next = q_next_t.max(1)
    td = q - (batch.reward + 0.9 * (1 - batch.terminated) * q_next)
    if loss == "huber":
        expected = np.mean(np.where(np.abs(td) <= 1, 0.5 * td ** 2, np.abs(td) - 0.5))
    else:
        expected = np.mean(0.5 * td ** 2)
    got = dqn.loss(params, target, jax.tree.map(jnp.asarray, batch))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)





def test_vmapped_training_equals_per_party_loop():
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(3)
    keys = jax.random.split(jax.random.key(2), 3)
    states = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(keys, env_params)
    train = lambda s, p, k: dqn.train(toy_env.ENV, s, p, k, 120)
    vmapped, _ = jax.jit(jax.vmap(train))(states, env_params, keys)
    for i in range(3):
        one = jax.tree.map(lambda x: x[i], states)
        single, _ = jax.jit(train)(one, jax.tree.map(lambda x: x[i], env_params), keys[i])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6),
                     vmapped.params, single.params)
        assert int(vmapped.updates[i]) == int(single.updates) > 0


@pytest.mark.parametrize("budgets,gating,chunk", [
    (None, "switch", 0), ((120, 70, 0), "switch", 0), ((120, 70, 0), "mask", 0),
    ((120, 70, 0), "switch", 2), (None, "switch", 1)])
def test_train_parties_equals_vmapped_training(budgets, gating, chunk):
    """The cohort trainer (scan over steps of a vmap over agents, update decided once per step
    for all) matches vmap of the single-agent training, also with unequal budgets, where its
    masked-update branch runs (and one agent sits the whole run out), and when it trains the
    agents in groups (``chunk``: two groups and a rest of one; three groups of one)."""
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(3)
    keys = jax.random.split(jax.random.key(2), 3)
    states = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(keys, env_params)
    b = jnp.full((3,), 120) if budgets is None else jnp.asarray(budgets)
    expected, exp_summary = jax.jit(jax.vmap(
        lambda s, p, k, n: dqn.train(toy_env.ENV, s, p, k, 120, n)))(states, env_params, keys, b)
    got, summary = jax.jit(lambda s, p, k: dqn.train_parties(
        toy_env.ENV, s, p, k, 120, None if budgets is None else b, gating=gating,
        chunk=chunk))(
            states, env_params, keys)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-6),
                 (got.params, got.target_params, got.opt_state),
                 (expected.params, expected.target_params, expected.opt_state))
    for name in ("updates", "steps"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    jax.tree.map(np.testing.assert_array_equal, got.buffer, expected.buffer)
    for name in ("updates", "transitions", "episodes"):
        np.testing.assert_array_equal(summary[name], exp_summary[name])
    np.testing.assert_allclose(summary["loss"], exp_summary["loss"], rtol=1e-4, atol=1e-6)
    assert int(got.updates[0]) > 0
    if budgets is not None:  # an agent with budget 0 has not moved at all
        jax.tree.map(lambda a, e: np.testing.assert_array_equal(a[2], e[2]), got, states)


@pytest.mark.parametrize("chunk", [-1, 1.5, True])
def test_train_parties_refuses_a_bad_chunk(chunk):
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(2)
    keys = jax.random.split(jax.random.key(5), 2)
    states = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(keys, env_params)
    with pytest.raises(ConfigError, match="chunk must be an integer >= 0"):
        dqn.train_parties(toy_env.ENV, states, env_params, keys, 3, chunk=chunk)


@pytest.mark.parametrize("gating", ["switch", "mask"])
def test_train_parties_syncs_the_target_only_on_an_update(gating):
    """The target sync is due when the update counter is a multiple of target_update_every;
    on steps without an update (here: the buffer is still warming up) it must not fire, even
    when the counter already is a multiple (0 here) and the online network differs from the
    target (as after a broadcast without target sync)."""
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(2)
    keys = jax.random.split(jax.random.key(5), 2)
    states = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(keys, env_params)
    states = states.replace(params=jax.tree.map(lambda x: x + 1.0, states.params))
    steps = SMALL.learning_starts // 2
    got, summary = jax.jit(lambda s: dqn.train_parties(toy_env.ENV, s, env_params, keys,
                                                       steps, gating=gating))(states)
    assert int(jnp.sum(summary["updates"])) == 0
    jax.tree.map(np.testing.assert_array_equal, got.target_params, states.target_params)
    jax.tree.map(np.testing.assert_array_equal, got.params, states.params)


def test_same_seed_same_result_and_parties_explore_independently():
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(2)

    def run(seed):
        keys = jax.random.split(jax.random.key(seed), 2)
        states = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(keys, env_params)
        return jax.jit(jax.vmap(lambda s, p, k: dqn.train(toy_env.ENV, s, p, k, 50)))(
            states, env_params, keys)[0]

    a, b = run(7), run(7)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    # Two parties with identical environments but their own keys take different actions.
    actions = np.asarray(a.buffer.data.action)
    assert not np.array_equal(actions[0], actions[1])


def test_dqn_learns_toy_task_beyond_random():
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = toy_env.stacked_params(1)
    state = jax.vmap(lambda k, p: dqn.init_state(k, toy_env.ENV, p))(
        jax.random.key(3)[None], env_params)
    state, _ = jax.jit(jax.vmap(lambda s, p, k: dqn.train(toy_env.ENV, s, p, k, 800)))(
        state, env_params, jax.random.key(4)[None])
    params = jax.tree.map(lambda x: x[0], state.params)
    obs = jnp.eye(toy_env.NUM_CONTEXTS)
    greedy = np.asarray(jnp.argmax(dqn.q_values(params, obs), -1))
    # A random policy is right 1/4 of the time; the learned greedy policy must be right always.
    np.testing.assert_array_equal(greedy, np.arange(toy_env.NUM_CONTEXTS))


def test_inactive_agent_is_frozen():
    dqn = make_dqn(SMALL, toy_env.NUM_CONTEXTS)
    env_params = jax.tree.map(lambda x: x[0], toy_env.stacked_params(1))
    state = dqn.init_state(jax.random.key(0), toy_env.ENV, env_params)
    new, summary = jax.jit(lambda s: dqn.train(toy_env.ENV, s, env_params, jax.random.key(1),
                                               40, budget=0))(state)
    jax.tree.map(np.testing.assert_array_equal, new, state)
    assert int(summary["transitions"]) == 0


@pytest.mark.parametrize("field,value,match", [
    ("gamma", 1.5, "dqn.gamma"), ("learning_rate", -1.0, "dqn.learning_rate"),
    ("batch_size", 0, "dqn.batch_size"), ("loss", "l1", "dqn.loss"),
    ("hidden_sizes", (), "dqn.hidden_sizes")])
def test_config_errors_name_the_field(field, value, match):
    import dataclasses
    with pytest.raises(ConfigError, match=match):
        make_dqn(dataclasses.replace(DQNConfig(), **{field: value}), 5)
