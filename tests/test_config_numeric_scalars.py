"""require_positive / require_in_range accept NumPy and 0-d JAX real scalars (they used to
refuse them with a misleading 'must be a finite number' message) and still refuse bad ones."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError, require_in_range, require_positive


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(1), jnp.float32(0.5),
                                   jnp.asarray(1, jnp.int32), np.array(0.25)])
def test_numpy_and_jax_scalars_are_accepted(value):
    require_positive("x", value)
    require_in_range("x", value, 0.0, 1.0, low_open=True)


@pytest.mark.parametrize("value", [np.float32(-1.0), jnp.float32(math.nan), np.float64(math.inf),
                                   np.array([1.0]), "1", None, np.complex64(1.0)])
def test_bad_values_are_still_refused(value):
    with pytest.raises(ConfigError, match="x must"):
        require_positive("x", value)
    with pytest.raises(ConfigError, match="x must"):
        require_in_range("x", value, 0.0, 10.0)


def test_out_of_range_numpy_scalar_is_refused_and_traced_values_are_not_checkable():
    with pytest.raises(ConfigError, match=r"lie in \(0.0, 1.0\]"):
        require_in_range("q", np.float32(1.5), 0.0, 1.0, low_open=True)
    with pytest.raises(ConfigError):
        jax.jit(lambda v: (require_positive("x", v), v)[1])(1.0)
