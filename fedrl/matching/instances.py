"""Random matching instances for tests and benchmarks (numbers only, no simulator).

``random_instances(key, batch, n, m, kind)`` returns ``(weights f32[batch, n, m],
mask bool[batch, n, m])``. Kinds:

* ``uniform``  - weights U(0, 1), all pairs allowed (easy for auctions: few conflicts);
* ``normal``   - weights N(0, 1): about half the pairs are not worth taking;
* ``masked``   - U(0, 1) with 30 % of the pairs allowed;
* ``ties``     - integers in {-1, 0, 1, 2}: many equal weights;
* ``integer``  - integers in [0, 100], 50 % of the pairs allowed;
* ``dispatch`` - a ride-hailing batch: drivers and orders uniform in the unit square, a pair is
  allowed when the pick-up distance is below 0.25 (about 15 % of the pairs), and the weight is
  ``(1 - cancel(d)) * (fare_j - v_i)`` with log-normal fares and small driver-location values,
  as in Fed-LTD's advantage edge weights. All nearby drivers want the same expensive orders,
  which is what makes auctions run price wars (the hard case for epsilon scaling).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

KINDS = ("uniform", "normal", "masked", "ties", "integer", "dispatch")


def random_instances(key: jax.Array, batch: int, n: int, m: int, kind: str = "uniform"):
    """Sample ``batch`` problems of shape ``n x m``; see the module docstring for the kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown instance kind {kind!r}; choose one of {KINDS}")
    return _sample(key, batch, n, m, kind)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _sample(key, batch, n, m, kind):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    shape = (batch, n, m)
    ones = jnp.ones(shape, bool)
    if kind == "uniform":
        return jax.random.uniform(k1, shape), ones
    if kind == "normal":
        return jax.random.normal(k1, shape), ones
    if kind == "masked":
        return jax.random.uniform(k1, shape), jax.random.uniform(k2, shape) < 0.3
    if kind == "ties":
        return jax.random.randint(k1, shape, -1, 3).astype(jnp.float32), ones
    if kind == "integer":
        w = jax.random.randint(k1, shape, 0, 101).astype(jnp.float32)
        return w, jax.random.uniform(k2, shape) < 0.5
    if kind == "dispatch":
        drivers = jax.random.uniform(k1, (batch, n, 2))
        orders = jax.random.uniform(k2, (batch, m, 2))
        dist = jnp.linalg.norm(drivers[:, :, None, :] - orders[:, None, :, :], axis=-1)
        fare = jnp.exp(0.5 * jax.random.normal(k3, (batch, 1, m)))
        value = 0.2 * jax.random.uniform(k4, (batch, n, 1))
        p_done = 1.0 - 0.01 * jnp.exp(jnp.log(20.0) * dist / 0.25)
        return p_done * (fare - value), dist < 0.25
    raise AssertionError(kind)
