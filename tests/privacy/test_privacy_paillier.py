"""Paillier baseline: homomorphic sum of the fixed-point vectors equals the plain sum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("phe")

from fedrl.privacy import paillier, quantization  # noqa: E402


def test_paillier_sum_equals_plain_sum_of_fixed_point_vectors():
    fp = quantization.FixedPoint(scale=2.0 ** 10, bits=32, value_bound=1.0)
    x = jax.random.uniform(jax.random.key(0), (3, 5), minval=-1.0, maxval=1.0)
    q = jax.vmap(lambda k, v: quantization.encode(k, v, fp))(jax.random.split(jax.random.key(1), 3), x)
    ints = np.asarray(quantization.to_signed(q, fp)).tolist()
    total = paillier.paillier_sum(ints, key_bits=512)   # tiny key: a correctness test only
    assert total == np.sum(ints, axis=0).tolist()
    assert total == np.asarray(quantization.to_signed(quantization.ring_sum(q, fp), fp)).tolist()
