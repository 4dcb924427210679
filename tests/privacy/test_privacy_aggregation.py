"""Aggregation transforms: clipping, fixed denominator, DP noise, quantization, secure sum,
the constructors (fedavg, dp_fedavg, secure_fedavg, dp_secure_fedavg) and server optimizers."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedrl.config import ConfigError
from fedrl.federated import aggregation as agg
from fedrl.privacy.quantization import FixedPoint

K = 6


def _cohort(scale=1.0, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    updates = {"w": scale * jax.random.normal(k1, (K, 4, 3)),
               "b": scale * jax.random.normal(k2, (K, 3))}
    weights = jnp.arange(1.0, K + 1)
    mask = jnp.array([1, 1, 0, 1, 1, 1.0])
    return agg.Cohort(updates, weights, mask)


def _apply(transform, cohort, key=jax.random.key(42), jit=True):
    fn = lambda c, k: transform.update(c, transform.init(None), k)[0]  # noqa: E731
    return (jax.jit(fn) if jit else fn)(cohort, key)


def _flat(updates):
    """[K, D] from a stacked update pytree ([1, D] from an aggregated one, after u[None])."""
    b, w = np.asarray(updates["b"]), np.asarray(updates["w"])
    return np.concatenate([b.reshape(b.shape[0], -1), w.reshape(w.shape[0], -1)], axis=1)


@pytest.mark.parametrize("jit", [True, False])
def test_fedavg_equals_numpy_weighted_mean(jit):
    c = _cohort()
    out = _apply(agg.fedavg(), c, jit=jit)
    coef = np.asarray(c.weights * c.mask)
    for name in ("w", "b"):
        expected = np.tensordot(coef, np.asarray(c.updates[name]), axes=1) / coef.sum()
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=1e-5, atol=1e-6)


def test_clip_updates_bounds_norms_and_leaves_small_updates_alone():
    big = _cohort(scale=3.0)
    small = _cohort(scale=0.01)
    clip = agg.clip_updates(1.0)
    clipped = _apply(clip, big).updates
    norms = np.linalg.norm(_flat(clipped), axis=1)
    assert np.all(norms <= 1.0 + 1e-5)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)       # all were larger than C
    # Direction kept.
    cos = np.sum(_flat(clipped) * _flat(big.updates), 1) / np.linalg.norm(_flat(big.updates), axis=1)
    np.testing.assert_allclose(cos, norms, rtol=1e-5)
    untouched = _apply(clip, small).updates
    chex.assert_trees_all_close(untouched, small.updates)
    with pytest.raises(ConfigError, match="clip_norm"):
        agg.clip_updates(0.0)


def test_chain_composition_clip_then_fixed_denominator():
    c = _cohort(scale=2.0)
    out = _apply(agg.chain(agg.clip_updates(1.5), agg.fixed_denominator_mean(4.0)), c)
    flat = _flat(c.updates)
    factor = np.minimum(1.0, 1.5 / np.linalg.norm(flat, axis=1))
    expected = (np.asarray(c.mask) * factor) @ flat / 4.0   # unweighted, fixed denominator
    np.testing.assert_allclose(_flat(jax.tree.map(lambda u: u[None], out))[0], expected,
                               rtol=1e-5, atol=1e-6)
    # dp_fedavg with z = 0 is exactly this chain.
    zero_noise = _apply(agg.dp_fedavg(1.5, 0.0, 4.0), c)
    chex.assert_trees_all_close(zero_noise, out, rtol=1e-6, atol=1e-7)


def test_dp_noise_std_is_z_c_over_expected_clients():
    z, clip, n_clients, q = 1.3, 0.7, 40, 0.25
    expected = q * n_clients
    big = agg.Cohort({"v": jnp.ones((K, 50_000)) * 0.01}, jnp.ones(K), jnp.ones(K))
    noisy = _apply(agg.dp_fedavg(clip, z, expected), big)["v"]
    clean = _apply(agg.dp_fedavg(clip, 0.0, expected), big)["v"]
    noise = np.asarray(noisy - clean)
    target = z * clip / expected
    # 50k samples: the std estimate is within ~0.6% (1 sigma); 3% tolerance.
    assert np.std(noise) == pytest.approx(target, rel=0.03)
    assert abs(np.mean(noise)) < 5 * target / np.sqrt(noise.size)
    # A variant that puts z*C on the mean (forgetting the denominator) fails this test.
    assert abs(z * clip - target) / target > 0.03
    # Different keys give different noise, the same key the same noise.
    again = _apply(agg.dp_fedavg(clip, z, expected), big)["v"]
    other = _apply(agg.dp_fedavg(clip, z, expected), big, key=jax.random.key(7))["v"]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(noisy))
    assert not np.allclose(np.asarray(other), np.asarray(noisy))


def test_dp_secure_equals_dp_alone_up_to_quantization():
    c = _cohort(scale=0.5)
    clip, z, expected = 1.0, 1.1, 3.0
    key = jax.random.key(3)
    dp = _apply(agg.dp_fedavg(clip, z, expected), c, key)
    dp_secure = _apply(agg.dp_secure_fedavg(clip, z, expected), c, key)
    # The same noise key: the gap is the quantization of <= K clients (step C/2^16) plus the
    # tighter clip C' = (C - sqrt(D) C/2^16)(1 - 1e-5) that keeps each quantized update's
    # norm <= C (moves a clipped coordinate |u| <= C by at most C (sqrt(D)/2^16 + 1e-5)).
    d = 4 * 3 + 3
    bound = K * clip * (1 / 2 ** 16 + np.sqrt(d) / 2 ** 16 + 1e-5) / expected
    for out in (dp_secure,):
        gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(dp), jax.tree.leaves(out)))
        assert 0 < gap <= bound
    # Whereas the noise itself is much larger than the gap.
    no_noise = _apply(agg.dp_fedavg(clip, 0.0, expected), c, key)
    assert float(jnp.max(jnp.abs(dp["w"] - no_noise["w"]))) > 100 * bound


def test_secure_fedavg_equals_fedavg_up_to_quantization():
    c = _cohort(scale=0.5)
    fp = FixedPoint(scale=2.0 ** 16, bits=32, value_bound=4.0)
    plain = _apply(agg.fedavg(), c)
    secure = _apply(agg.secure_fedavg(fp, weight_cap=float(K)), c)
    chex.assert_trees_all_close(secure, plain, atol=5 * K / 2 ** 16)
    unweighted = _apply(agg.secure_fedavg(fp), c)
    expected = _apply(agg.fedavg(), c.replace(weights=jnp.ones(K)))
    chex.assert_trees_all_close(unweighted, expected, atol=5 * K / 2 ** 16)
    empty = _apply(agg.secure_fedavg(fp), c.replace(mask=jnp.zeros(K)))
    assert all(float(jnp.max(jnp.abs(l))) == 0 for l in jax.tree.leaves(empty))


def test_secure_sum_matches_plain_sum_and_refuses_wrap():
    c = _cohort(scale=0.3)
    fp = FixedPoint(scale=2.0 ** 12, bits=32, value_bound=2.0)
    secure = _apply(agg.secure_sum(fp), c)
    plain = _apply(agg.sum_updates(), c)
    chex.assert_trees_all_close(secure, plain, atol=K / 2 ** 12)
    tight = FixedPoint(scale=2.0 ** 12, bits=16, value_bound=2.0)   # max 3 parties
    with pytest.raises(ConfigError, match="wrap"):
        _apply(agg.secure_sum(tight), c)


def test_secure_sum_aborts_below_min_participants():
    # A lone party has no pairwise mask: its "masked" vector would be its update in the clear,
    # so the server aborts below min_participants (default 2) and the sum is zero.
    fp = FixedPoint(scale=2.0 ** 12, bits=32, value_bound=2.0)
    c = _cohort(scale=0.3)
    one = c.replace(mask=jnp.array([0, 0, 0, 1, 0, 0.0]))
    two = c.replace(mask=jnp.array([0, 1, 0, 1, 0, 0.0]))
    zero = lambda t: all(float(jnp.max(jnp.abs(l))) == 0 for l in jax.tree.leaves(t))
    assert zero(_apply(agg.secure_sum(fp), one))
    assert zero(_apply(agg.secure_fedavg(fp), one))
    chex.assert_trees_all_close(_apply(agg.secure_sum(fp), two),
                                _apply(agg.sum_updates(), two), atol=2 / 2 ** 12)
    assert not zero(_apply(agg.secure_sum(fp, min_participants=1), one))
    assert zero(_apply(agg.secure_sum(fp, min_participants=3), two))
    # under DP the noise is still released in an aborted round (noise only, no update)
    key = jax.random.key(7)
    aborted = _apply(agg.dp_secure_fedavg(1.0, 1.0, 3.0), one, key)
    noise_only = _apply(agg.dp_secure_fedavg(1.0, 1.0, 3.0), c.replace(mask=jnp.zeros(K)), key)
    chex.assert_trees_all_equal(aborted, noise_only)
    assert not zero(aborted)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="min_participants"):
            agg.secure_sum(fp, min_participants=bad)


def test_stochastic_quantize_on_grid_and_unbiased():
    fp = FixedPoint(scale=4.0, bits=16, value_bound=2.0)
    cohort = agg.Cohort({"v": jnp.full((K, 40_000), 0.3)}, jnp.ones(K), jnp.ones(K))
    out = np.asarray(_apply(agg.stochastic_quantize(fp), cohort).updates["v"])
    assert set(np.unique(out)) == {0.25, 0.5}
    assert out.mean() == pytest.approx(0.3, abs=3e-3)   # unbiased; deterministic rounding -> 0.25


def test_server_optimizers():
    params = {"a": jnp.array([1.0, 2.0])}
    delta = {"a": jnp.array([0.5, -1.0])}
    opt = agg.fedavg_optimizer()
    new, _ = agg.server_update(params, delta, opt.init(params), opt)
    np.testing.assert_allclose(new["a"], [1.5, 1.0])
    opt = agg.fedavgm_optimizer(learning_rate=1.0, momentum=0.5)
    state = opt.init(params)
    p1, state = agg.server_update(params, delta, state, opt)
    p2, _ = agg.server_update(p1, delta, state, opt)
    np.testing.assert_allclose(p2["a"] - p1["a"], 1.5 * np.array([0.5, -1.0]))  # momentum
    opt = agg.fedadam_optimizer(learning_rate=0.1)
    new, _ = agg.server_update(params, delta, opt.init(params), opt)
    ref = optax.adam(0.1, b1=0.9, b2=0.99, eps=1e-3)
    upd, _ = ref.update(jax.tree.map(jnp.negative, delta), ref.init(params), params)
    chex.assert_trees_all_close(new, optax.apply_updates(params, upd))
    assert float(new["a"][0]) > 1.0  # moves along +delta
