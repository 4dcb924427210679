"""System heterogeneity in the federated round: non-finite updates excluded, per-party speeds
with a round deadline (adaptive local steps, stragglers), FedNova's normalized averaging."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.federated.aggregators import AggregatorConfig, build_aggregator
from fedrl.config import ConfigError
from fedrl.federated.aggregation import Cohort, fedavg, fednova
from fedrl.federated.round import (FederatedConfig, local_step_caps, make_federated_round,
                                   party_staleness, staleness_weight)
from tests import toy_env

DQN_CFG = DQNConfig(hidden_sizes=(8,), batch_size=8, buffer_capacity=200, learning_starts=16,
                    epsilon_decay_steps=100, target_update_every=10, learning_rate=1e-3)


def _toy_params(reward_scales):
    k = len(reward_scales)
    return toy_env.ToyParams(horizon=jnp.full((k, 1), 8, jnp.int32),
                             reward_scale=jnp.asarray(reward_scales, jnp.float32)[:, None])


def _one_round(env_params, kind="fedavg", key=1, **fed):
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(**{"num_rounds": 1, "local_steps": 30, **fed})
    k = env_params.horizon.shape[0]
    # (z = 1: the DP record's epsilon is not under test, and at z = 0.1 its accounting alone
    # takes ~12 s)
    agg, _ = build_aggregator(AggregatorConfig(kind=kind, noise_multiplier=1.0,
                                               accountant="rdp"), k, cfg)
    rnd = make_federated_round(dqn, toy_env.ENV, env_params, cfg, agg)
    state = rnd.init(jax.random.key(0))
    before = jax.tree.map(np.asarray, state.global_params)
    new, metrics = rnd.step(state, jax.random.key(key))
    return before, new, metrics


@pytest.mark.parametrize("kind,fed", [("fedavg", {}), ("secure", {}),
                                      ("dp", {"sampling": "poisson", "sampling_rate": 1.0})])
def test_nonfinite_update_is_excluded(kind, fed):
    # Party 1's rewards are NaN: its TD loss, gradients and weights become NaN.
    before, new, metrics = _one_round(_toy_params([1.0, np.nan, 2.0]), kind, **fed)
    trained = jax.tree.map(np.asarray, new.parties.params)
    assert not all(np.all(np.isfinite(x[1])) for x in jax.tree.leaves(trained))
    assert int(metrics["nonfinite_updates"]) == 1
    assert int(metrics["participants"]) == 2
    for leaf in jax.tree.leaves(new.global_params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    if kind in ("fedavg", "secure"):
        # The weighted mean of the two finite parties' deltas (equal transition counts); the
        # secure mean up to its fixed-point rounding.
        expected = jax.tree.map(lambda p, g: g + (p[0] - g + p[2] - g) / 2, trained, before)
        tol = 1e-6 if kind == "fedavg" else 1e-4
        for got, want in zip(jax.tree.leaves(new.global_params), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=tol)


def test_secure_round_below_min_participants_keeps_the_server():
    # A secure sum with one participant aborts (its masked vector would be its update in the
    # clear); the round then keeps the global model and FedAvgM's momentum as in a round
    # without participants (the momentum used to move the model on the zero update).
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=30, sampling="poisson", sampling_rate=0.5,
                          server_optimizer="momentum")
    agg, _ = build_aggregator(AggregatorConfig(kind="secure"), 3, cfg)
    assert agg.min_participants == 2
    rnd = make_federated_round(dqn, toy_env.ENV, _toy_params([1.0, 1.5, 2.0]), cfg, agg)
    state = rnd.init(jax.random.key(0))
    copy = lambda t: jax.tree.map(jnp.copy, t)
    first = next(out for k in range(64) if int((out := rnd.step(copy(state), jax.random.key(k)))
                                                [1]["participants"]) >= 2)[0]
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(first.server_opt_state))
    new, metrics = next(out for k in range(64, 128) if int(
        (out := rnd.step(copy(first), jax.random.key(k)))[1]["participants"]) == 1)
    for a, b in zip(jax.tree.leaves((new.global_params, new.server_opt_state)),
                    jax.tree.leaves((first.global_params, first.server_opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_secure_fixed_cohort_below_min_participants_is_refused():
    cfg = FederatedConfig(clients_per_round=1)
    agg, _ = build_aggregator(AggregatorConfig(kind="secure"), 3, cfg)
    with pytest.raises(ConfigError, match="every round would abort"):
        make_federated_round(make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS), toy_env.ENV,
                             _toy_params([1.0, 1.0, 1.0]), cfg, agg)


@pytest.mark.parametrize("fed", [{}, {"sync_target_each_round": False}])
def test_a_diverged_party_recovers_at_the_next_broadcast(fed):
    """A party whose optimizer state (and, without the round-start target sync, its target
    network) went non-finite restarts them at the broadcast and sends a finite update again;
    before, its NaN Adam moments made every later update NaN (excluded for good)."""
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=30, **fed)
    rnd = make_federated_round(dqn, toy_env.ENV, _toy_params([1.0, 1.0, 2.0]), cfg)
    state = rnd.init(jax.random.key(0))
    poison = lambda tree: jax.tree.map(
        lambda x: x.at[1].set(jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
    parties = state.parties.replace(opt_state=poison(state.parties.opt_state))
    if fed:
        parties = parties.replace(target_params=poison(parties.target_params))
    clean, _ = rnd.step(jax.tree.map(jnp.copy, state), jax.random.key(1))
    new, metrics = rnd.step(state.replace(parties=parties), jax.random.key(1))
    assert int(metrics["nonfinite_updates"]) == 0 and int(metrics["participants"]) == 3
    for leaf in jax.tree.leaves((new.global_params, new.parties.params,
                                 new.parties.opt_state)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # the healthy parties are untouched; in round 0 a fresh optimizer state is the initial
    # one, so with only the optimizer poisoned the whole round equals the clean round
    same = (lambda t: t) if not fed else (lambda t: jax.tree.map(lambda x: x[::2], t))
    jax.tree.map(np.testing.assert_array_equal, same(new.parties), same(clean.parties))
    if not fed:
        jax.tree.map(np.testing.assert_array_equal, new.global_params, clean.global_params)


def test_a_fedper_party_with_a_diverged_head_restarts_it_from_the_servers_copy():
    """FedPer: a party whose personal head (and so its Adam moments) went non-finite takes the
    server's copy of the head at the broadcast and sends a finite update; the other parties'
    round is unchanged bit for bit. Before, its NaN head made every update NaN (excluded)."""
    from fedrl.federated import personalization
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=30, personal_layers=1)
    rnd = make_federated_round(dqn, toy_env.ENV, _toy_params([1.0, 1.0, 2.0]), cfg)
    state = rnd.init(jax.random.key(0))
    mask = personalization.personal_mask(state.global_params, 1)
    head = lambda tree: jax.tree.map(lambda m, x: x.at[1].set(jnp.nan) if m else x, mask, tree)
    opt_nan = jax.tree.map(
        lambda x: x.at[1].set(jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        state.parties.opt_state)
    parties = state.parties.replace(params=head(state.parties.params), opt_state=opt_nan)
    clean, _ = rnd.step(jax.tree.map(jnp.copy, state), jax.random.key(1))
    new, metrics = rnd.step(state.replace(parties=parties), jax.random.key(1))
    assert int(metrics["nonfinite_updates"]) == 0 and int(metrics["participants"]) == 3
    for leaf in jax.tree.leaves((new.global_params, new.parties.params)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    healthy = lambda t: jax.tree.map(lambda x: x[::2], t)
    jax.tree.map(np.testing.assert_array_equal, healthy(new.parties), healthy(clean.parties))
    # all parties start from the same initial head in round 0, so even party 1's round equals
    # the clean one: the server's copy is that initial head
    jax.tree.map(np.testing.assert_array_equal, new.parties.params, clean.parties.params)


def test_local_step_caps_and_validation():
    cfg = FederatedConfig(local_steps=30, party_speeds=(1.0, 0.5, 0.03, 2.0), round_deadline=0.8)
    np.testing.assert_array_equal(local_step_caps(cfg, 4), [24, 12, 0, 30])
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 steps.
    cfg = FederatedConfig(local_steps=100, party_speeds=(0.29,), round_deadline=1.0)
    np.testing.assert_array_equal(local_step_caps(cfg, 1), [29])
    np.testing.assert_array_equal(local_step_caps(FederatedConfig(local_steps=7), 2), [7, 7])
    with pytest.raises(ConfigError, match="fed.party_speeds has 2 entries"):
        local_step_caps(FederatedConfig(party_speeds=(1.0, 2.0), round_deadline=1.0), 3)
    for bad in [dict(party_speeds=(1.0, 0.0)), dict(party_speeds=(1.0, float("nan"))),
                dict(party_speeds=()), dict(round_deadline=0.0), dict(round_deadline=-1.0)]:
        name = "fed.party_speeds" if "party_speeds" in bad else "fed.round_deadline"
        with pytest.raises(ConfigError, match=name):
            FederatedConfig(**bad).validate()
    with pytest.raises(ConfigError, match="fed.party_speeds"):
        make_federated_round(make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS), toy_env.ENV,
                             toy_env.stacked_params(3),
                             FederatedConfig(party_speeds=(1.0, 2.0), round_deadline=1.0))


def _fednova_numpy(updates, mask, tau):
    """FedNova, Wang et al. 2020: d = tau_eff sum_k p_k Delta_k / tau_k over the participants
    with tau_k > 0, p_k equal shares (not the round's transition counts, which grow with tau_k
    under a deadline), tau_eff = sum_k p_k tau_k."""
    keep = mask & (tau > 0)
    p = keep / np.sum(keep)
    tau_eff = np.sum(p * tau)
    safe = np.where(tau > 0, tau, 1.0)
    return {n: tau_eff * np.tensordot(p / safe, u.astype(np.float64), 1)
            for n, u in updates.items()}


def _aggregate(agg, cohort):
    return jax.jit(agg.update)(cohort, agg.init(None), jax.random.key(0))[0]


def test_fednova_equals_numpy_and_fedavg_with_equal_tau():
    rng = np.random.default_rng(3)
    updates = {"w": rng.normal(size=(6, 3, 2)).astype(np.float32),
               "b": rng.normal(size=(6, 2)).astype(np.float32)}
    weights = rng.integers(5, 50, 6).astype(np.float32)
    mask = np.array([True, True, False, True, True, True])
    tau = np.array([10, 3, 7, 0, 25, 1], np.int32)
    cohort = Cohort(updates=jax.tree.map(jnp.asarray, updates), weights=jnp.asarray(weights),
                    mask=jnp.asarray(mask), local_updates=jnp.asarray(tau))
    got = _aggregate(fednova(), cohort)
    want = _fednova_numpy(updates, mask, tau)
    plain = _aggregate(fedavg(), cohort)
    # the cohort's weights (the round's transition counts) do not enter FedNova's shares
    reweighted = _aggregate(fednova(), cohort.replace(weights=jnp.asarray(weights[::-1])))
    for n in updates:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(reweighted[n], got[n])
        assert not np.allclose(got[n], plain[n], rtol=1e-3)   # unequal tau: not FedAvg
    equal = cohort.replace(local_updates=jnp.full((6,), 4, jnp.int32),
                           weights=jnp.ones((6,), jnp.float32))
    for a, b in zip(jax.tree.leaves(_aggregate(fednova(), equal)),
                    jax.tree.leaves(_aggregate(fedavg(), equal))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Nobody with an update: a zero update, not a NaN.
    none = cohort.replace(local_updates=jnp.zeros((6,), jnp.int32))
    for leaf in jax.tree.leaves(_aggregate(fednova(), none)):
        np.testing.assert_array_equal(leaf, 0.0)
    with pytest.raises(ConfigError, match="local_updates"):
        _aggregate(fednova(), cohort.replace(local_updates=None))


def test_deadline_fednova_round_matches_numpy():
    """One FedNova round under a deadline with random budgets and a straggler: the budgets, the
    straggler mask and the global update, all recomputed independently."""
    k, steps, frac = 3, 30, 0.5
    speeds = (1.0, 0.6, 0.02)
    before, new, m = _one_round(toy_env.stacked_params(k), "fednova", min_local_fraction=frac,
                                party_speeds=speeds, round_deadline=0.9)
    caps = np.array([27, 16, 0])    # floor(speed * 0.9 * 30), by hand
    # The round's random budgets, re-derived from its key (fixed cohort of everyone).
    rkey = jax.random.fold_in(jax.random.key(1), 0)
    k_sample, k_budget = jax.random.split(rkey, 5)[:2]
    idx = np.asarray(jax.random.permutation(k_sample, k))
    u = np.asarray(jax.random.uniform(k_budget, (k,), minval=frac, maxval=1.0))[idx]
    budget = np.zeros(k, int)
    budget[idx] = np.minimum(np.ceil(u * steps).astype(int), caps[idx])
    np.testing.assert_array_equal(m["party_steps"], budget)
    np.testing.assert_array_equal(new.parties.steps, budget)
    assert int(m["stragglers"]) == 1 and int(m["participants"]) == 2
    tau = np.asarray(new.parties.updates)          # local gradient steps this round
    assert tau[2] == 0 and tau[0] != tau[1]
    trained = jax.tree.map(np.asarray, new.parties.params)
    deltas = {str(i): p - g[None] for i, (p, g) in enumerate(
        zip(jax.tree.leaves(trained), jax.tree.leaves(before)))}
    want = _fednova_numpy(deltas, np.array([True, True, False]), tau)
    for i, (got, g) in enumerate(zip(jax.tree.leaves(new.global_params),
                                     jax.tree.leaves(before))):
        np.testing.assert_allclose(got, g + want[str(i)], rtol=1e-5, atol=1e-6)


def test_party_staleness_and_async_config_errors():
    cfg = FederatedConfig(max_staleness=3, party_speeds=(1.0, 0.5, 0.4, 1 / 3, 0.1, 2.0))
    np.testing.assert_array_equal(party_staleness(cfg, 6), [0, 1, 2, 2, 3, 0])
    np.testing.assert_array_equal(party_staleness(FederatedConfig(max_staleness=2), 2), [0, 0])
    np.testing.assert_allclose(staleness_weight(jnp.array([0, 1, 3]), 0.5),
                               [1.0, 2 ** -0.5, 0.5], rtol=1e-6)
    for bad, name in [(dict(max_staleness=-1), "fed.max_staleness"),
                      (dict(staleness_exponent=-0.5), "fed.staleness_exponent"),
                      (dict(max_staleness=1, personal_layers=1), "fed.max_staleness"),
                      (dict(max_staleness=1, num_clusters=2), "fed.max_staleness")]:
        with pytest.raises(ConfigError, match=name):
            FederatedConfig(**bad).validate()


def test_async_round_trains_from_stale_models_and_shrinks_their_updates():
    """FedAsync in rounds: party 1 (speed 0.5, staleness 1) trains from the global model of
    the previous round and its update is scaled by (1 + 1)^-0.5; recomputed in NumPy."""
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=2, local_steps=30, party_speeds=(1.0, 0.5),
                          max_staleness=1, staleness_exponent=0.5)
    rnd = make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2), cfg)
    state = rnd.init(jax.random.key(0))
    g0 = jax.tree.map(np.asarray, state.global_params)
    state, _ = rnd.step(state, jax.random.key(1))
    g1 = jax.tree.map(np.asarray, state.global_params)
    np.testing.assert_array_equal(jax.tree.leaves(state.history)[0][0], jax.tree.leaves(g0)[0])
    state, m = rnd.step(state, jax.random.key(1))
    np.testing.assert_array_equal(m["staleness"], [0, 1])
    trained = jax.tree.map(np.asarray, state.parties.params)
    shrink = np.array([1.0, 2 ** -0.5])
    for got, t, a, b, h in zip(jax.tree.leaves(state.global_params), jax.tree.leaves(trained),
                               jax.tree.leaves(g1), jax.tree.leaves(g0),
                               jax.tree.leaves(state.history)):
        start = np.stack([a, b])                    # party 0 from g1, party 1 from g0
        want = a + np.tensordot(shrink / 2, t - start, 1)   # equal step counts
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(h[0], a)      # the ring now holds g1


def test_fednova_opposite_progress_cancels_whatever_the_step_counts():
    """The review's case: two parties with opposite per-step progress and tau = (10, 2), their
    weights the round's transition counts (10, 2). FedNova with equal shares gives d = 0; with
    the counts as shares it gave +5.78 (the bias towards the fast party it should remove)."""
    g = np.array([1.0, -1.0], np.float32)
    tau = np.array([10, 2], np.int32)
    cohort = Cohort(updates={"w": jnp.asarray((tau * g)[:, None])},
                    weights=jnp.asarray(tau, jnp.float32), mask=jnp.ones((2,), bool),
                    local_updates=jnp.asarray(tau))
    np.testing.assert_allclose(_aggregate(fednova(), cohort)["w"], [0.0], atol=1e-6)


def test_round_without_participants_keeps_the_server_state():
    """A cohort of one drawn from a fast party and a straggler: the rounds that draw the
    straggler have no participant and leave the global model and FedAvgM's momentum exactly as
    they were (before, the momentum moved the model on the zero update)."""
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    cfg = FederatedConfig(num_rounds=8, local_steps=20, clients_per_round=1,
                          party_speeds=(1.0, 1e-3), round_deadline=1.0,
                          server_optimizer="momentum")
    rnd = make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2), cfg)
    state = rnd.init(jax.random.key(0))
    seen = set()
    for r in range(8):
        before = jax.tree.map(np.asarray, (state.global_params, state.server_opt_state))
        state, m = rnd.step(state, jax.random.key(3))
        after = jax.tree.map(np.asarray, (state.global_params, state.server_opt_state))
        empty = int(m["participants"]) == 0
        seen.add(empty)
        moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                             jax.tree.leaves(after)))
        assert moved != empty, (r, empty)
    assert seen == {True, False}


def test_dp_chains_release_every_round():
    from fedrl.federated import aggregation
    assert aggregation.dp_fedavg(1.0, 1.0, 2.0).releases_every_round
    assert not aggregation.fedavg().releases_every_round
    assert not aggregation.fednova().releases_every_round


@pytest.mark.parametrize("fed, k, name", [
    (dict(party_speeds=(1e-3, 1e-3), round_deadline=1.0), 2, "every party is a straggler"),
    (dict(max_staleness=2), 2, "needs fed.party_speeds"),
    (dict(max_staleness=5, num_rounds=3, party_speeds=(1.0, 0.5)), 2, "fed.max_staleness=5"),
])
def test_impossible_heterogeneity_settings_are_refused(fed, k, name):
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    with pytest.raises(ConfigError, match=name):
        make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(k),
                             FederatedConfig(**{"local_steps": 20, **fed}))
