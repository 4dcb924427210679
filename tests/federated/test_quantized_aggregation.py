"""b-bit quantized FedAvg: unbiased, on the grid, within one step; its uplink size."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.federated import aggregation
from fedrl.federated.aggregation import Cohort
from fedrl.federated.aggregators import AggregatorConfig, build_aggregator, uplink_bytes_per_party
from fedrl.federated.round import FederatedConfig

RNG = np.random.default_rng(0)
UPDATES = {"w": RNG.normal(size=(3, 4, 5)).astype(np.float32) * np.float32(0.3),
           "b": RNG.normal(size=(3, 5)).astype(np.float32)}
UPDATES["b"][2] = 0.0
UPDATES["w"][2] = 0.0          # client 2 sends an all-zero update


def _quantize_many(bits, keys):
    transform = aggregation.scaled_stochastic_quantize(bits)
    cohort = Cohort(updates=jax.tree.map(jnp.asarray, UPDATES), weights=jnp.ones(3),
                    mask=jnp.ones(3, bool))
    one = lambda k: transform.update(cohort, (), k)[0].updates  # noqa: E731
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(keys))


@pytest.mark.parametrize("bits", [2, 8])
def test_quantized_updates_are_on_the_grid_within_one_step_and_unbiased(bits):
    draws = 4000
    q = _quantize_many(bits, jax.random.split(jax.random.key(1), draws))
    levels = 2 ** (bits - 1) - 1
    # NumPy reference of each client's range: the largest |coordinate| over its whole update.
    scale = np.maximum(np.abs(UPDATES["w"]).reshape(3, -1).max(1), np.abs(UPDATES["b"]).max(1))
    for name, u in UPDATES.items():
        s = scale.reshape((1, 3) + (1,) * (u.ndim - 1))
        step = np.where(s > 0, s, 1.0) / levels
        codes = q[name] / step
        # On the b-bit grid: integer codes in [-L, L] (b bits per coordinate) ...
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert np.abs(np.round(codes)).max() <= levels
        # ... one of the two grid points around the value (error < one step) ...
        assert np.all(np.abs(q[name] - u[None]) <= step * (1 + 1e-5))
        # ... and unbiased: the mean over draws is within 5 standard errors of the value
        # (a Bernoulli rounding has variance <= step^2 / 4 per coordinate).
        stderr = step[0] / 2 / np.sqrt(draws)
        assert np.all(np.abs(q[name].mean(0) - u) <= 5 * stderr + 1e-7), name
    np.testing.assert_array_equal(q["w"][:, 2], 0.0)   # zero update: zero, no NaN


def test_quantized_aggregator_is_fedavg_of_the_quantized_updates():
    agg, record = build_aggregator(AggregatorConfig(kind="quantized", quantize_bits=8), 3,
                                   FederatedConfig())
    assert record is None
    weights = np.array([3.0, 1.0, 2.0], np.float32)
    mask = np.array([True, True, False])
    cohort = Cohort(updates=jax.tree.map(jnp.asarray, UPDATES), weights=jnp.asarray(weights),
                    mask=jnp.asarray(mask))
    key = jax.random.key(7)
    got = jax.jit(agg.update)(cohort, agg.init(None), key)[0]
    # Same key path as the chain: transform 0 (the quantizer) gets fold_in(key, 0).
    rounded = jax.jit(aggregation.scaled_stochastic_quantize(8).update)(
        cohort, (), jax.random.fold_in(key, 0))[0].updates
    coef = weights * mask / np.sum(weights * mask)
    for name in UPDATES:
        expected = np.tensordot(coef, np.asarray(rounded[name]), axes=1)
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-5, atol=1e-7)
        # and within one 8-bit step (largest range / 127) of the unquantized FedAvg
        exact = np.tensordot(coef, UPDATES[name], axes=1)
        step = max(np.abs(UPDATES["w"][:2]).max(), np.abs(UPDATES["b"][:2]).max()) / 127
        assert np.max(np.abs(np.asarray(got[name]) - exact)) <= step * (1 + 1e-5)


def test_uplink_bytes_per_party():
    d = 70_405
    assert uplink_bytes_per_party(AggregatorConfig(), d) == 4 * d + 4
    assert uplink_bytes_per_party(AggregatorConfig(kind="quantized", quantize_bits=8), d) \
        == d + 8
    assert uplink_bytes_per_party(AggregatorConfig(kind="quantized", quantize_bits=3), 5) \
        == 2 + 8                                   # 15 bits packed in 2 bytes
    assert uplink_bytes_per_party(AggregatorConfig(kind="dp"), d) == 4 * d


@pytest.mark.parametrize("bits", [1, 17, 8.0])
def test_bad_quantize_bits_is_refused(bits):
    with pytest.raises(ConfigError, match="aggregator.quantize_bits"):
        dataclasses.replace(AggregatorConfig(kind="quantized"), quantize_bits=bits).validate()
