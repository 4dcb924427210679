"""One-shot mechanisms: analytic vs classical Gaussian, Laplace release and composition."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedrl.config import ConfigError
from fedrl.privacy import mechanisms


def _gaussian_delta(eps, sigma, sensitivity=1.0):
    """Exact delta(eps) of the Gaussian mechanism (Balle & Wang 2018, Thm 8), via scipy."""
    a = sensitivity / (2 * sigma)
    b = eps * sigma / sensitivity
    return stats.norm.cdf(a - b) - math.exp(eps) * stats.norm.cdf(-a - b)


@pytest.mark.parametrize("eps", [0.5, 1.0, 4.0])
def test_analytic_gaussian_is_tight(eps):
    sigma = mechanisms.analytic_gaussian_sigma(eps, 1e-5, sensitivity=2.0)
    assert _gaussian_delta(eps, sigma, 2.0) == pytest.approx(1e-5, rel=1e-3)


def test_classical_gaussian_formula_and_refusal():
    sigma = mechanisms.classical_gaussian_sigma(0.5, 1e-5, sensitivity=2.0)
    assert sigma == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25e5)) / 0.5)
    # Valid but loose below eps = 1: more noise than the analytic mechanism needs.
    assert sigma > mechanisms.analytic_gaussian_sigma(0.5, 1e-5, sensitivity=2.0)
    for eps in (1.0, 10.0):
        with pytest.raises(ConfigError, match="eps < 1"):
            mechanisms.classical_gaussian_sigma(eps, 1e-5)
    # The reason: at eps = 10 the classical sigma gives delta > 1e-5 (not (10, 1e-5)-DP).
    sigma10 = math.sqrt(2 * math.log(1.25e5)) / 10
    assert _gaussian_delta(10.0, sigma10) > 1e-5


def test_laplace_release_scale_and_clipping():
    n = 200_000
    w = jnp.concatenate([jnp.full(n, 0.3), jnp.full(n, 5.0)])  # 5.0 lies above the range
    out = np.asarray(mechanisms.laplace_release(jax.random.key(0), w, 0.5, 0.0, 1.0))
    b = (1.0 - 0.0) / 0.5
    inside, clipped = out[:n] - 0.3, out[n:] - 1.0
    assert stats.kstest(inside, stats.laplace(scale=b).cdf).pvalue > 1e-3
    assert np.mean(np.abs(inside)) == pytest.approx(b, rel=0.02)   # E|X| = b
    assert np.median(clipped) == pytest.approx(0.0, abs=0.03)      # centred on upper bound
    # Half the scale is distinguishable: the test could fail.
    assert stats.kstest(inside, stats.laplace(scale=b / 2).cdf).pvalue < 1e-6


def test_laplace_release_jits_and_validates():
    out = jax.jit(mechanisms.laplace_release, static_argnums=(2, 3, 4))(
        jax.random.key(1), jnp.zeros(4), 1.0, -1.0, 1.0)
    assert out.shape == (4,)
    with pytest.raises(ConfigError):
        mechanisms.laplace_release(jax.random.key(1), jnp.zeros(4), 0.0, 0.0, 1.0)
    with pytest.raises(ConfigError):
        mechanisms.laplace_release(jax.random.key(1), jnp.zeros(4), 1.0, 1.0, 1.0)


def test_laplace_basic_composition():
    rec = mechanisms.laplace_composition(0.1, 144)
    assert rec["epsilon_total"] == pytest.approx(14.4)
    assert "basic" in rec["composition"]
    with pytest.raises(ConfigError):
        mechanisms.laplace_composition(-0.1, 3)
