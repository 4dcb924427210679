"""A uniform replay buffer that lives in JAX arrays (a ring buffer).

Fixed capacity, static shapes, pure ``add``/``sample``: it jits, sits inside ``lax.scan`` and
vmaps over parties (a stacked buffer per party). We keep this 40-line buffer rather than
flashbax's flat buffer because the federated round needs batched adds of ``E`` transitions per
step (one per environment a party runs) and a per-party valid-size counter; both are one line
here.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any


@struct.dataclass
class ReplayBuffer:
    data: PyTree          # each leaf [capacity, ...]
    position: jax.Array   # next write index (int32)
    size: jax.Array       # number of valid items (int32, <= capacity)

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def init(example: PyTree, capacity: int) -> ReplayBuffer:
    """An empty buffer whose items have the structure, shapes and dtypes of ``example``."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
                        example)
    return ReplayBuffer(data=data, position=jnp.zeros((), jnp.int32),
                        size=jnp.zeros((), jnp.int32))


def add_batch(buffer: ReplayBuffer, items: PyTree, valid: jax.Array | None = None) -> ReplayBuffer:
    """Append a batch of items (leading axis E); items with ``valid`` False are not stored."""
    num = jax.tree.leaves(items)[0].shape[0]
    if valid is None:
        valid = jnp.ones((num,), bool)
    capacity = buffer.capacity
    offsets = jnp.cumsum(valid.astype(jnp.int32)) - 1
    # Invalid items are written to an out-of-range index, which ``mode="drop"`` discards.
    idx = jnp.where(valid, (buffer.position + offsets) % capacity, capacity)
    data = jax.tree.map(lambda d, x: d.at[idx].set(x, mode="drop"), buffer.data, items)
    count = jnp.sum(valid.astype(jnp.int32))
    return ReplayBuffer(data=data, position=(buffer.position + count) % capacity,
                        size=jnp.minimum(buffer.size + count, capacity))


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> PyTree:
    """Sample ``batch_size`` items uniformly with replacement among the valid ones."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[idx], buffer.data)
