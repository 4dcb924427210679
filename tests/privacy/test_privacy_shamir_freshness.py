"""Regression: secure_aggregate's default Shamir randomness is fresh per round key (it used to
be random.Random(0) on every call, repeating the polynomials' coefficients every round), and
thresholds t <= K/2 are refused."""
import jax
import jax.numpy as jnp
import pytest

from fedrl.config import ConfigError
from fedrl.privacy import secure_aggregation as sa
from fedrl.privacy import shamir
from fedrl.privacy.quantization import FixedPoint

FP = FixedPoint(scale=2.0 ** 8, bits=32, value_bound=1.0)
K = 5


def _first_sharing(monkeypatch, key):
    """(secret, shares) of the first seed secure_aggregate Shamir-shares under ``key``."""
    calls = []
    real = shamir.split

    def spy(secret, n, t, rng):
        shares = real(secret, n, t, rng)
        calls.append((secret, shares))
        return shares
    monkeypatch.setattr(shamir, "split", spy)
    sa.secure_aggregate(key, jnp.zeros((K, 3), jnp.uint32), FP)
    monkeypatch.setattr(shamir, "split", real)
    return calls[0]


def test_default_shamir_coefficients_differ_between_rounds(monkeypatch):
    s1, sh1 = _first_sharing(monkeypatch, jax.random.key(1))
    s2, sh2 = _first_sharing(monkeypatch, jax.random.key(2))
    # With repeated coefficients f2 - f1 is the constant s2 - s1: one share of round 2 plus
    # the reconstructed round-1 polynomial would reveal s2.
    same_poly = all((b[1] - a[1]) % shamir.PRIME == (s2 - s1) % shamir.PRIME
                    for a, b in zip(sh1, sh2))
    assert not same_poly
    # Reproducible for the same round key.
    assert _first_sharing(monkeypatch, jax.random.key(1)) == (s1, sh1)


@pytest.mark.parametrize("t", [1, 2, K + 1, 2.5, True])
def test_threshold_at_most_half_or_invalid_is_refused(t):
    with pytest.raises(ConfigError, match="threshold"):
        sa.secure_aggregate(jax.random.key(0), jnp.zeros((K, 3), jnp.uint32), FP, threshold=t)


def test_threshold_above_half_is_accepted():
    out = sa.secure_aggregate(jax.random.key(0), jnp.zeros((K, 3), jnp.uint32), FP, threshold=3,
                              dropped=[0, 0, 1, 0, 0])
    assert out.survivors.sum() == 4 and int(out.ring_sum.sum()) == 0
