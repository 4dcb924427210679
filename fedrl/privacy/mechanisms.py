"""One-shot DP mechanisms: analytic and classical Gaussian, Laplace with basic composition.

* Analytic Gaussian mechanism (Balle & Wang, "Improving the Gaussian Mechanism for
  Differential Privacy: Analytical Calibration and Optimal Denoising", ICML 2018): the
  smallest sigma for which N(0, sigma^2) noise on a query of L2 sensitivity Delta is
  (eps, delta)-DP, for every eps > 0. Computed by ``dp_accounting.get_sigma_gaussian``.
* Classical Gaussian mechanism (Dwork & Roth 2014, Thm A.1):
  sigma = Delta sqrt(2 ln(1.25/delta)) / eps, proved only for 0 < eps < 1 (the seed's
  formula). Kept for comparison; it refuses eps >= 1 (at delta = 1e-5 it is not even
  (eps, delta)-DP above eps ~ 8.4: eps = 10 gives a true eps of 10.39).
* Laplace mechanism (Dwork, McSherry, Nissim, Smith, TCC 2006) for Fed-LTD's edge weights:
  clip w to [lower, upper] (sensitivity Delta = upper - lower) and add Laplace(Delta/eps);
  each release is (eps, 0)-DP and k releases compose to k*eps by *basic* composition.
"""
from __future__ import annotations

import math
import numbers

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np

from fedrl.config import ConfigError, require, require_in_range, require_positive


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest Gaussian noise std giving (eps, delta)-DP for one release (Balle & Wang 2018)."""
    require_positive("epsilon", epsilon)
    require_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    require_positive("sensitivity", sensitivity)
    return sensitivity * float(dp_accounting.get_sigma_gaussian(epsilon, delta))


def classical_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """sigma = Delta sqrt(2 ln(1.25/delta)) / eps (Dwork & Roth 2014, Thm A.1); 0 < eps < 1 only."""
    require_positive("epsilon", epsilon)
    require_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    require_positive("sensitivity", sensitivity)
    if epsilon >= 1.0:
        raise ConfigError(
            f"classical_gaussian_sigma: epsilon={epsilon} >= 1. The classical bound "
            "sigma = Delta*sqrt(2 ln(1.25/delta))/eps is proved only for eps < 1; above that it "
            "adds too much noise and, for large eps, too little (at delta=1e-5, eps=10 gives a "
            "true eps of 10.39). Use analytic_gaussian_sigma (Balle & Wang 2018) instead.")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def laplace_release(key: jax.Array, w: jax.Array, epsilon: float, lower: float,
                    upper: float) -> jax.Array:
    """(eps, 0)-DP release of a vector of weights: clip(w, lower, upper) + Laplace(Delta/eps).

    Delta = upper - lower is the per-coordinate sensitivity once w is clipped to the range
    (one record changes one weight by at most Delta). Each coordinate is its own release of
    privacy cost eps: use :func:`laplace_composition` for their total. ``epsilon = inf`` means
    no noise (the clipped weights; Fed-LTD's no-DP setting); NaN or eps <= 0 is a ConfigError.
    """
    # Validate concrete values at call time (Python, NumPy and JAX numbers or arrays); traced
    # values (under jit) cannot be checked here.
    if not _is_traced(epsilon):
        e = np.asarray(epsilon)
        require(e.dtype.kind in "iuf" and bool(np.all(e > 0)),
                f"laplace_release: epsilon must be > 0 (inf: clipping only, no noise), got "
                f"{epsilon!r}")
    if not (_is_traced(lower) or _is_traced(upper)):
        lo, up = np.asarray(lower), np.asarray(upper)
        require(lo.dtype.kind in "iuf" and up.dtype.kind in "iuf"
                and bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(up)))
                and bool(np.all(up > lo)),
                f"laplace_release needs finite bounds with upper > lower, got [{lower}, {upper}]")
    scale = (upper - lower) / epsilon
    clipped = jnp.clip(w, lower, upper)
    return clipped + scale * jax.random.laplace(key, clipped.shape, clipped.dtype)


def laplace_composition(epsilon_per_release: float, releases: int) -> dict:
    """Total (eps, 0) of ``releases`` Laplace releases by basic (sequential) composition.

    Basic composition: epsilons add, eps_total = k * eps. It is loose for large k (advanced
    composition or PLD accounting of the Laplace mechanism would be tighter); we report the
    simple, always-valid bound and say so.
    """
    require_positive("epsilon_per_release", epsilon_per_release)
    require(isinstance(releases, numbers.Integral) and not isinstance(releases, bool)
            and releases >= 0, f"releases must be an integer >= 0, got {releases!r}")
    releases = int(releases)
    epsilon_per_release = float(epsilon_per_release)
    return {"epsilon_per_release": epsilon_per_release, "releases": releases,
            "epsilon_total": epsilon_per_release * releases, "delta": 0.0,
            "composition": "basic (sequential) composition: epsilons add"}
