"""Regression: under DP + secure aggregation, the stochastically rounded (quantized) client
update the server sums must have L2 norm <= C, the sensitivity the Gaussian noise is
calibrated to (rounding can add up to sqrt(D)/scale to a C-clipped update's norm)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.federated import aggregation as agg
from fedrl.privacy.quantization import FixedPoint

C, D, K = 0.7, 1000, 5
SCALE = 2.0 ** 8 / C          # coarse grid: sqrt(D)/scale = 0.086 C, so the effect is visible


def _cohort(seed):
    """Large updates (clipped by any C) in random and in worst-case directions: all coordinates
    equal, each just above a grid point after clipping so rounding up is likely."""
    u = np.asarray(jax.random.normal(jax.random.key(seed), (K, D))) * 5.0
    u[0] = 1.0
    u[1] = np.sign(u[1])
    updates = {"a": jnp.asarray(u[:, :600]), "b": jnp.asarray(u[:, 600:].reshape(K, 20, 20))}
    return agg.Cohort(updates=updates,
                      weights=jnp.ones(K), mask=jnp.ones(K))


def _norms(updates):
    leaves = [np.asarray(l, np.float64) for l in jax.tree.leaves(updates)]
    flat = np.concatenate([l.reshape(l.shape[0], -1) for l in leaves], 1)
    return np.linalg.norm(flat, axis=1)


def test_quantized_clipped_update_norm_never_exceeds_clip_norm():
    fp = FixedPoint(scale=SCALE, bits=32, value_bound=C)
    chain = agg.chain(agg.clip_updates_for_quantization(C, fp), agg.stochastic_quantize(fp))
    run = jax.jit(lambda c, k: chain.update(c, chain.init(None), k)[0])
    worst = max(_norms(run(_cohort(s), jax.random.key(100 + s)).updates).max() for s in range(8))
    assert worst <= C
    # Not vacuous: the tighter clip costs only sqrt(D)/scale of the norm.
    assert worst > C - 2 * math.sqrt(D) / SCALE
    assert agg.quantized_clip_norm(C, SCALE, D) == pytest.approx(C - math.sqrt(D) / SCALE, rel=1e-4)


def test_dp_secure_fedavg_sums_quantized_updates_of_norm_at_most_c():
    """Through the whole dp_secure_fedavg chain (z = 0, one party at a time, denominator 1):
    the aggregate is that party's quantized update."""
    chain = agg.dp_secure_fedavg(C, 0.0, 1.0, scale=SCALE)
    run = jax.jit(lambda c, k: chain.update(c, chain.init(None), k)[0])
    norms = []
    for s in range(2):
        c = _cohort(s)
        for k in range(K):
            out = run(c.replace(mask=jnp.zeros(K).at[k].set(1.0)), jax.random.key(s))
            norms.append(_norms(jax.tree.map(lambda l: l[None], out))[0])
    assert max(norms) <= C


def test_too_coarse_fixed_point_is_a_config_error():
    with pytest.raises(ConfigError, match="too coarse"):
        agg.quantized_clip_norm(1.0, 10.0, 10_000)
