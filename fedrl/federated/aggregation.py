"""Aggregation of client updates as a chain of small pure transforms (optax style).

A round's client updates arrive stacked with a leading party axis in a :class:`Cohort`, along
with each party's aggregation weight (e.g. its local sample count) and a participation mask
(sampled and not dropped). A transform maps a ``Cohort`` to a ``Cohort`` (per-client steps such
as clipping or quantization), a ``Cohort`` to a single update (a reduction such as the weighted
mean or a secure sum), or a single update to a single update (server-side steps such as DP
noise). :func:`chain` composes them; every piece is jit-able and testable alone.

FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017) is ``chain(weighted_mean())`` followed by :func:`server_update` with
``optax.sgd(1.0)``; server optimizers such as FedAvgM / FedAdam (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021) are other optax optimizers in :func:`server_update`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


@struct.dataclass
class Cohort:
    """Stacked client updates (leading axis K), weights [K] and participation mask [K]."""
    updates: PyTree
    weights: jax.Array
    mask: jax.Array


class AggregationTransform(NamedTuple):
    """``init(params) -> state``; ``update(x, state, key) -> (x', state')``."""
    init: Callable[[PyTree], PyTree]
    update: Callable[[Any, PyTree, jax.Array], tuple[Any, PyTree]]


def stateless(fn: Callable[[Any, jax.Array], Any]) -> AggregationTransform:
    """A transform without state from ``fn(x, key) -> x'``."""
    return AggregationTransform(init=lambda params: (),
                                update=lambda x, state, key: (fn(x, key), state))


def chain(*transforms: AggregationTransform) -> AggregationTransform:
    """Apply ``transforms`` in order; transform i receives ``fold_in(key, i)``."""
    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(x, state, key):
        new_state = []
        for i, (t, s) in enumerate(zip(transforms, state)):
            x, s = t.update(x, s, jax.random.fold_in(key, i))
            new_state.append(s)
        return x, tuple(new_state)

    return AggregationTransform(init, update)


def _broadcast(vector: jax.Array, leaf: jax.Array) -> jax.Array:
    return vector.reshape(vector.shape + (1,) * (leaf.ndim - 1))


def weighted_sum(cohort: Cohort) -> PyTree:
    """sum_k mask_k * weight_k * update_k, leaf by leaf."""
    coef = cohort.weights * cohort.mask
    return jax.tree.map(lambda u: jnp.sum(_broadcast(coef, u) * u, axis=0), cohort.updates)


def weighted_mean() -> AggregationTransform:
    """FedAvg's reduction: sum_k m_k w_k u_k / sum_k m_k w_k (zero when nobody participates)."""
    def fn(cohort: Cohort, key):
        del key
        total = jnp.sum(cohort.weights * cohort.mask)
        safe = jnp.where(total > 0, total, 1.0)
        return jax.tree.map(lambda s: s / safe, weighted_sum(cohort))
    return stateless(fn)


def fedavg() -> AggregationTransform:
    """Plain FedAvg aggregation (weighted mean of the participating clients' updates)."""
    return chain(weighted_mean())


def server_update(params: PyTree, delta: PyTree, opt_state: optax.OptState,
                  optimizer: optax.GradientTransformation) -> tuple[PyTree, optax.OptState]:
    """Apply the aggregated update with a server optimizer.

    The aggregated delta is treated as a negative pseudo-gradient (Reddi et al. 2021), so
    ``optax.sgd(1.0)`` gives plain FedAvg (``params + delta``), ``optax.sgd(lr, momentum)``
    FedAvgM and ``optax.adam(lr)`` FedAdam.
    """
    pseudo_grad = jax.tree.map(jnp.negative, delta)
    updates, opt_state = optimizer.update(pseudo_grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
