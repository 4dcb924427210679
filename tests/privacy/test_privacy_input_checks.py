"""Regression: accounting and mechanisms take NumPy / JAX scalars (np.int64 rounds used to
crash inside dp-accounting), validate them like Python numbers, and refuse negative rounds_run
or more rounds than the configured budget."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.privacy import accounting, mechanisms


def test_numpy_and_jax_arguments_give_the_python_epsilon():
    # q = 1 (no subsampling) keeps dp-accounting fast; the types are what is tested.
    ref = accounting.epsilon(2.0, 1.0, 1, 1e-5, "rdp")
    assert accounting.epsilon(np.float32(2.0), np.float64(1.0), np.int64(1), 1e-5, "rdp") == ref
    assert accounting.epsilon(jnp.float32(2.0), 1.0, np.int32(1), np.float64(1e-5), "rdp") == ref
    rec = accounting.DPConfig(accountant="rdp", noise_multiplier=2.0, rounds=1,
                              sampling_rate=1.0).record(rounds_run=np.int64(1))
    assert rec["rounds"] == 1 and type(rec["rounds"]) is int and rec["epsilon"] == ref
    z = accounting.noise_multiplier_for_epsilon(np.float32(ref), 1.0, np.int64(1), 1e-5, "rdp")
    assert z == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("rounds_run", [-3, 1.5, True, 101])
def test_record_refuses_negative_or_non_integer_rounds_run(rounds_run):
    with pytest.raises(ConfigError, match="rounds_run"):
        accounting.DPConfig(accountant="rdp").record(rounds_run=rounds_run)
    assert accounting.DPConfig(accountant="rdp").record(rounds_run=0)["epsilon"] == 0.0


@pytest.mark.parametrize("eps", [np.float32(-1.0), jnp.float32(0.0), np.float64(math.nan),
                                 jnp.array([1.0, -1.0])])
def test_laplace_release_validates_numpy_and_jax_epsilon(eps):
    with pytest.raises(ConfigError, match="epsilon"):
        mechanisms.laplace_release(jax.random.key(0), jnp.zeros(3), eps, 0.0, 1.0)


def test_laplace_release_bounds_and_infinite_epsilon():
    with pytest.raises(ConfigError, match="finite bounds"):
        mechanisms.laplace_release(jax.random.key(0), jnp.zeros(3), 1.0, 0.0, np.float32(math.inf))
    with pytest.raises(ConfigError, match="upper > lower"):
        mechanisms.laplace_release(jax.random.key(0), jnp.zeros(3), 1.0, jnp.float32(1.0), 0.0)
    w = jnp.array([-1.0, 0.5, 3.0])
    out = mechanisms.laplace_release(jax.random.key(0), w, jnp.float32(jnp.inf), 0.0, 1.0)
    np.testing.assert_array_equal(np.asarray(out), [0.0, 0.5, 1.0])   # inf: clipping only
    ok = mechanisms.laplace_release(jax.random.key(0), w, np.float32(2.0), np.float32(0), 1.0)
    assert ok.shape == (3,)
    total = mechanisms.laplace_composition(0.1, np.int64(144))["epsilon_total"]
    assert total == pytest.approx(14.4)
