"""Federated Dropout (Caldas et al. 2018): sub-model extraction against a masked NumPy network,
the coverage mean against a NumPy per-coordinate mean, and the federated round against a
reconstruction from per-party sub-model training."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.config import ConfigError
from fedrl.federated import submodel
from fedrl.federated.aggregation import Cohort, dp_fedavg, fedavg, fednova, quantized_fedavg
from fedrl.federated.round import FederatedConfig, make_federated_round
from tests import toy_env

DQN_CFG = DQNConfig(hidden_sizes=(8, 6), batch_size=8, buffer_capacity=200, learning_starts=16,
                    epsilon_decay_steps=100, target_update_every=10, learning_rate=1e-2,
                    gamma=0.5)
STEPS = 40


def _np(tree):
    return jax.tree.map(lambda x: np.array(x, np.float64), tree)


def _numpy_masked_q(params, obs, keep_masks, scales):
    """Q-values of the FULL network with each hidden layer's dropped units zeroed and the kept
    ones multiplied by ``scales[l]``: what the sub-model must compute."""
    p = _np(params)["params"]
    x = np.asarray(obs, np.float64)
    for l, (m, s) in enumerate(zip(keep_masks, scales)):
        x = np.maximum(x @ p[f"Dense_{l}"]["kernel"] + p[f"Dense_{l}"]["bias"], 0.0) * m * s
    last = f"Dense_{len(keep_masks)}"
    return x @ p[last]["kernel"] + p[last]["bias"]


@pytest.mark.parametrize("rescale", [True, False])
def test_submodel_computes_the_full_network_with_dropped_units(rescale):
    dqn = make_dqn(DQN_CFG, 3)
    params = dqn.init_params(jax.random.key(0), 5)
    # non-zero biases, so that a misplaced bias would show
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape),
                          params)
    kept = submodel.kept_units(DQN_CFG.hidden_sizes, 0.5)
    assert kept == (4, 3)
    units = submodel.sample_units(jax.random.key(2), DQN_CFG.hidden_sizes, kept)
    assert [u.shape for u in units] == [(4,), (3,)]
    assert all(len(set(np.asarray(u).tolist())) == len(u) for u in units)    # distinct units
    sub_dqn = submodel.submodel_dqn(dqn, kept, rescale)
    sub = submodel.extract(params, units)
    obs = jax.random.normal(jax.random.key(3), (7, 5))
    masks = [np.isin(np.arange(w), np.asarray(u)) for w, u in zip(DQN_CFG.hidden_sizes, units)]
    scales = [w / k if rescale else 1.0 for w, k in zip(DQN_CFG.hidden_sizes, kept)]
    np.testing.assert_allclose(sub_dqn.q_values(sub, obs),
                               _numpy_masked_q(params, obs, masks, scales), rtol=1e-5, atol=1e-5)
    # the sub-model is a smaller network of exactly num_submodel_params parameters
    assert sum(x.size for x in jax.tree.leaves(sub)) == submodel.num_submodel_params(params, kept) \
        == 5 * 4 + 4 + 4 * 3 + 3 + 3 * 3 + 3


def test_embed_inverts_extract_and_coverage_marks_the_submodel():
    params = make_dqn(DQN_CFG, 3).init_params(jax.random.key(0), 5)
    units = submodel.sample_units(jax.random.key(4), (8, 6), (5, 2))
    sub = submodel.extract(params, units)
    new_sub = jax.tree.map(lambda x: x + 1.0, sub)
    pasted = submodel.embed(new_sub, params, units)
    jax.tree.map(np.testing.assert_array_equal, submodel.extract(pasted, units), new_sub)
    cov = submodel.coverage(params, units)
    # exactly the sub-model's coordinates changed, and coverage marks exactly those
    changed = jax.tree.map(lambda a, b: np.asarray(a != b, np.float32), pasted, params)
    jax.tree.map(np.testing.assert_array_equal, changed, cov)
    assert sum(float(np.sum(c)) for c in jax.tree.leaves(cov)) == \
        submodel.num_submodel_params(params, (5, 2))
    # output layer: every action's column is kept, only the kept rows
    np.testing.assert_array_equal(np.asarray(cov["params"]["Dense_2"]["kernel"]).any(axis=1),
                                  np.isin(np.arange(6), np.asarray(units[1])))
    assert submodel.kept_units((256, 256), 0.25) == (192, 192)
    assert submodel.kept_units((3,), 0.9) == (1,)         # never fewer than one unit
    with pytest.raises(ConfigError, match=r"fed.submodel_rate must lie in \[0.0, 1.0\)"):
        submodel.kept_units((8,), 1.0)


def test_optimizer_moments_are_cut_and_pasted_with_the_weights():
    dqn = make_dqn(DQN_CFG, 3)
    params = dqn.init_params(jax.random.key(0), 5)
    opt = dqn.optimizer.init(params)
    opt = jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32 else x + 3, opt)
    units = submodel.sample_units(jax.random.key(5), (8, 6), (4, 3))
    structure = jax.tree.structure(params)
    cut = submodel.map_params_like(lambda p: submodel.extract(p, units), structure, opt)
    adam = cut[1][0]
    assert jax.tree.map(jnp.shape, adam.mu) == jax.tree.map(
        jnp.shape, submodel.extract(params, units))
    assert int(adam.count) == 3                         # non-parameter leaves kept as they are
    moved = jax.tree.map(lambda x: x * 2, cut)
    back = submodel.map_params_like(lambda s, f: submodel.embed(s, f, units), structure,
                                    moved, opt)
    cov = submodel.coverage(params, units)
    for new, old in ((back[1][0].mu, opt[1][0].mu), (back[1][0].nu, opt[1][0].nu)):
        jax.tree.map(lambda n, o, c: np.testing.assert_array_equal(
            n, np.where(np.asarray(c) > 0, 2 * np.asarray(o), o)), new, old, cov)
    assert int(back[1][0].count) == 6


def test_coverage_mean_is_a_per_coordinate_weighted_mean():
    rng = np.random.default_rng(0)
    k, d = 5, 7
    u = rng.normal(size=(k, d)).astype(np.float32)
    cov = (rng.uniform(size=(k, d)) < 0.5).astype(np.float32)
    cov[:, 0] = 0.0                                      # a coordinate nobody trained
    cov[1:, 1] = 0.0                                     # ... and one only party 0 trained
    w = rng.uniform(1, 3, size=k).astype(np.float32)
    mask = np.array([True, True, False, True, True])
    updates = {"a": jnp.asarray(u * cov)}                # zero-filled, as the round sends them
    cohort = Cohort(updates=updates, weights=jnp.asarray(w), mask=jnp.asarray(mask),
                    coverage={"a": jnp.asarray(cov)})
    coef = (w * mask)[:, None] * cov
    den = coef.sum(0)
    expected = np.where(den > 0, (coef * u).sum(0) / np.where(den > 0, den, 1), 0.0)
    out, _ = fedavg().update(cohort, fedavg().init(updates), jax.random.key(0))
    np.testing.assert_allclose(out["a"], expected, rtol=1e-5, atol=1e-6)
    assert float(out["a"][0]) == 0.0 and np.isclose(float(out["a"][1]), u[0, 1])
    # without coverage: the plain weighted mean of the zero-filled updates (zero_fill)
    plain, _ = fedavg().update(cohort.replace(coverage=None), fedavg().init(updates),
                              jax.random.key(0))
    np.testing.assert_allclose(plain["a"], ((w * mask)[:, None] * u * cov).sum(0)
                               / (w * mask).sum(), rtol=1e-5, atol=1e-6)
    assert fedavg().honours_coverage and quantized_fedavg(8).honours_coverage
    assert fednova().honours_coverage and not dp_fedavg(1.0, 1.0, 2.0).honours_coverage


@pytest.mark.parametrize("draw,aggregation,rescale,poisson", [
    ("per_party", "coverage", True, False),
    ("per_round", "zero_fill", False, True)])
def test_federated_dropout_round_matches_per_party_submodel_training(draw, aggregation, rescale,
                                                                     poisson):
    k, rate = 4, 0.5
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)
    # the second case: Poisson sampling and client dropout, so that some parties sit a round
    # out (keeping their whole state) and some train but are not averaged
    extra = dict(sampling="poisson", sampling_rate=0.7, dropout_rate=0.3) if poisson else {}
    cfg = FederatedConfig(num_rounds=2, local_steps=STEPS, submodel_rate=rate,
                          submodel_draw=draw, submodel_aggregation=aggregation,
                          submodel_rescale=rescale, **extra)
    env_params = toy_env.stacked_params(k)
    rnd = make_federated_round(dqn, toy_env.ENV, env_params, cfg)
    kept = submodel.kept_units(DQN_CFG.hidden_sizes, rate)
    sub_dqn = submodel.submodel_dqn(dqn, kept, rescale=rescale)
    train = jax.jit(lambda s, keys: sub_dqn.train_parties(toy_env.ENV, s, env_params, keys,
                                                          STEPS))
    key = jax.random.key(11)
    state = rnd.init(jax.random.key(0))
    structure = jax.tree.structure(state.global_params)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    seen = set()
    for r in range(2):
        before = jax.tree.map(np.asarray, state)
        g = _np(before.global_params)
        rkey = jax.random.fold_in(key, r)
        k_sample, _, k_drop, k_train, _ = jax.random.split(rkey, 5)
        sampled = (np.asarray(jax.random.uniform(k_sample, (k,))) < cfg.sampling_rate
                   if poisson else np.ones(k, bool))
        survived = np.asarray(jax.random.uniform(k_drop, (k,))) >= cfg.dropout_rate
        averaged = sampled & survived
        k_units = jax.random.fold_in(rkey, submodel.SUBMODEL_KEY_SALT)
        units = [[np.asarray(u) for u in submodel.sample_units(
            jax.random.fold_in(k_units, i) if draw == "per_party" else k_units,
            DQN_CFG.hidden_sizes, kept)] for i in range(k)]
        # Each party's sub-model cut out of the broadcast (NumPy indexing), trained alone.
        cut = [functools.partial(_numpy_extract, units=u) for u in units]
        parts = [jax.tree.map(lambda x: x[i], before.parties) for i in range(k)]
        parts = [p.replace(params=cut[i](before.global_params),
                           target_params=cut[i](before.global_params),
                           opt_state=submodel.map_params_like(cut[i], structure, p.opt_state))
                 for i, p in enumerate(parts)]
        keys = jax.vmap(lambda i: jax.random.fold_in(k_train, i))(jnp.arange(k))
        expected, _ = train(jax.tree.map(lambda *x: np.stack(x), *parts), keys)
        mine = [jax.tree.map(lambda x: np.asarray(x[i]), expected) for i in range(k)]
        trained_full = [_numpy_embed(mine[i].params, g, units[i]) for i in range(k)]
        cov = [_numpy_embed(jax.tree.map(np.ones_like, cut[i](g)),
                            jax.tree.map(np.zeros_like, g), units[i]) for i in range(k)]
        state, metrics = rnd.step(state, key)
        after = jax.tree.map(np.asarray, state.parties)
        assert int(metrics["participants"]) == int(averaged.sum())
        for i in range(k):
            mine_after = jax.tree.map(lambda x: x[i], after)
            if not sampled[i]:       # sat the round out: its whole state as it was
                jax.tree.map(np.testing.assert_array_equal, mine_after,
                             jax.tree.map(lambda x: x[i], before.parties))
                continue
            seen.add("trained")
            # the global weights (and target) with its own trained sub-model pasted in, and its
            # Adam moments written back into its full-size ones (step count advanced)
            jax.tree.map(close, _np(mine_after.params), trained_full[i])
            jax.tree.map(close, _np(mine_after.target_params),
                         _numpy_embed(mine[i].target_params, g, units[i]))
            full_opt = jax.tree.map(lambda x: x[i], before.parties.opt_state)
            jax.tree.map(close, jax.tree.map(np.asarray, mine_after.opt_state),
                         submodel.map_params_like(
                             lambda a, b, u=units[i]: _numpy_embed(a, b, u), structure,
                             mine[i].opt_state, full_opt))
        # NumPy FedAvg (equal weights: equal budgets) over the averaged parties, per coordinate
        # over those whose sub-model holds it, or with zero updates outside a sub-model
        new = _np(state.global_params)
        for leaf_i in range(len(jax.tree.leaves(g))):
            g_leaf = jax.tree.leaves(g)[leaf_i]
            deltas = np.stack([jax.tree.leaves(t)[leaf_i] - g_leaf for t in trained_full])
            c = np.stack([jax.tree.leaves(cv)[leaf_i] for cv in cov])[averaged]
            deltas = deltas[averaged]
            if aggregation == "coverage":
                n = c.sum(0)
                mean = np.where(n > 0, deltas.sum(0) / np.maximum(n, 1), 0.0)
            else:
                mean = deltas.mean(0) if len(deltas) else 0.0
            close(jax.tree.leaves(new)[leaf_i], g_leaf + mean)
            if draw == "per_round" and averaged.any():   # one sub-model: nothing else moves
                np.testing.assert_array_equal(
                    jax.tree.leaves(new)[leaf_i][c[0] == 0], g_leaf[c[0] == 0])
        if poisson:
            seen.add(("sampled", tuple(sampled), tuple(averaged)))
    assert "trained" in seen
    if poisson:   # the draws above did leave parties out of the sample and of the mean
        rounds = [x for x in seen if x != "trained"]
        assert any(not all(s) for _, s, _ in rounds)
        assert any(a != s for _, s, a in rounds)


def _numpy_index(num_layers, units):
    rows = [None] + list(units)
    cols = list(units) + [None]
    return rows, cols


def _numpy_extract(params, units):
    """The sub-model by NumPy fancy indexing (independent of submodel.extract)."""
    layers = params["params"]
    rows, cols = _numpy_index(len(layers), units)
    out = {}
    for l, (r, c) in enumerate(zip(rows, cols)):
        kernel, bias = np.asarray(layers[f"Dense_{l}"]["kernel"]), np.asarray(
            layers[f"Dense_{l}"]["bias"])
        r = np.arange(kernel.shape[0]) if r is None else r
        c = np.arange(kernel.shape[1]) if c is None else c
        out[f"Dense_{l}"] = {"kernel": kernel[np.ix_(r, c)], "bias": bias[c]}
    return {"params": out}


def _numpy_embed(sub, full, units):
    rows, cols = _numpy_index(len(full["params"]), units)
    out = {}
    for l, (r, c) in enumerate(zip(rows, cols)):
        kernel = np.array(full["params"][f"Dense_{l}"]["kernel"])
        bias = np.array(full["params"][f"Dense_{l}"]["bias"])
        r = np.arange(kernel.shape[0]) if r is None else r
        c = np.arange(kernel.shape[1]) if c is None else c
        kernel[np.ix_(r, c)] = sub["params"][f"Dense_{l}"]["kernel"]
        bias[c] = sub["params"][f"Dense_{l}"]["bias"]
        out[f"Dense_{l}"] = {"kernel": kernel, "bias": bias}
    return {"params": out}


def test_federated_dropout_config_errors():
    dqn = make_dqn(DQN_CFG, toy_env.NUM_CONTEXTS)

    def build(aggregator=None, **kw):
        make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2), FederatedConfig(**kw),
                             aggregator)
    for kw, match in [({"submodel_rate": 1.0}, r"fed.submodel_rate must lie in \[0.0, 1.0\)"),
                      ({"submodel_rate": -0.1}, "fed.submodel_rate"),
                      ({"submodel_rate": True}, "fed.submodel_rate must be a number"),
                      ({"submodel_rate": 0.05}, r"drops no unit of hidden layers \(8, 6\)"),
                      ({"submodel_draw": "per_step"}, "fed.submodel_draw must be"),
                      ({"submodel_aggregation": "mean"}, "fed.submodel_aggregation must be"),
                      ({"submodel_rescale": 1}, "fed.submodel_rescale must be true or false"),
                      ({"submodel_rate": 0.5, "aggregation": "none"}, "aggregation='fedavg'"),
                      ({"submodel_rate": 0.5, "personal_layers": 1}, "not implemented"),
                      ({"submodel_rate": 0.5, "num_clusters": 2}, "not implemented")]:
        with pytest.raises(ConfigError, match=match):
            build(**kw)
    # coverage needs a mean that reads it; DP sums zero-filled updates
    with pytest.raises(ConfigError, match="submodel_aggregation='zero_fill'"):
        build(dp_fedavg(1.0, 1.0, 2.0), submodel_rate=0.5, sampling="poisson",
              sampling_rate=0.5, submodel_draw="per_party")
    dp = dict(sampling="poisson", sampling_rate=0.5, submodel_rate=0.5)
    build(dp_fedavg(1.0, 1.0, 2.0), submodel_aggregation="zero_fill", submodel_draw="per_party",
          **dp)
    build(dp_fedavg(1.0, 1.0, 2.0), **dp)        # per_round: one sub-model, nothing to cover
    # NumPy scalars are numbers too
    FederatedConfig(submodel_rate=np.float32(0.25), submodel_rescale=np.bool_(False)).validate()


def test_hospital_experiment_refuses_a_no_op_rate_before_training():
    from experiments import hospital
    cfg = dataclasses.replace(hospital.smoke(), methods=("fedavg", "fedavg_dropout"),
                              submodel_rate=0.001)
    with pytest.raises(ConfigError, match="submodel_rate=0.001 drops no unit"):
        cfg.validate()
