"""Regression: a client's fixed-point value never exceeds FixedPoint.max_abs_int, also when
ceil(B * scale) is not a float32 number (the float32 clip bound used to round up, so two
parties accepted by check_parties could wrap the ring)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.privacy import quantization
from fedrl.privacy.quantization import FixedPoint

# ceil(B*scale) = 2^30 - 10 (not a float32), 2^31 - 1 (rounds up to 2^31: int32 overflow),
# 63.99 * 2^25 (not a float32), and an ordinary, exactly representable format.
CASES = [FixedPoint(scale=2.0 ** 20, bits=32, value_bound=(2 ** 30 - 10) / 2 ** 20),
         FixedPoint(scale=2.0 ** 31 - 1, bits=32, value_bound=1.0),
         FixedPoint(scale=2.0 ** 25, bits=32, value_bound=63.99),
         FixedPoint(scale=2.0 ** 16, bits=32, value_bound=1.0)]


@pytest.mark.parametrize("fp", CASES, ids=["2^30-10", "2^31-1", "63.99", "exact"])
def test_encoded_magnitude_never_exceeds_max_abs_int(fp):
    fp.validate()
    m = fp.max_abs_int
    assert m <= np.ceil(fp.value_bound * fp.scale) and float(np.float32(m)) == m
    x = jnp.array([fp.value_bound, -fp.value_bound, 1e9, -1e9, jnp.inf, -jnp.inf, 0.5])
    signed = np.asarray(quantization.to_signed(quantization.encode(jax.random.key(0), x, fp), fp))
    assert np.abs(signed.astype(np.int64)).max() <= m
    # The largest party count check_parties accepts, all at the bound, sums without wrapping.
    k = fp.max_parties()
    fp.check_parties(k)
    q = jnp.broadcast_to(quantization.encode(jax.random.key(1), jnp.full((4,), 1e9), fp), (k, 4))
    total = np.asarray(quantization.to_signed(quantization.ring_sum(q, fp), fp)).astype(np.int64)
    np.testing.assert_array_equal(total, k * m)


def test_two_party_sum_of_the_reviewer_repro_is_positive():
    fp = CASES[0]
    fp.check_parties(2)
    q = quantization.encode(jax.random.key(0), jnp.full((2, 3), 5000.0), fp)   # 2 parties
    decoded = np.asarray(quantization.decode(quantization.ring_sum(q, fp), fp))
    np.testing.assert_allclose(decoded, 2 * fp.value_bound, rtol=1e-6)
