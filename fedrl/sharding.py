"""Spreading a leading axis (parties, platforms) over local devices with ``jax.shard_map``.

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` makes N host devices; each runs
its shard on its own thread, which is how a program made of many small ops uses more than one
core (XLA:CPU runs them single-threaded). On a GPU host the devices are the GPUs.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from fedrl.config import require


def local_mesh(axis: str, devices: int = 0, size: int | None = None, *,
               setting: str = "devices") -> Mesh:
    """A 1-D mesh named ``axis`` over the first ``devices`` local devices (0 = all of them),
    never more than ``size`` (the length of the axis to split). ``setting`` names the config
    field in the error raised when more devices are asked for than exist."""
    require(isinstance(devices, int) and devices >= 0,
            f"{setting} must be an int >= 0 (0 = every local device), got {devices!r}")
    available = jax.local_devices()
    n = len(available) if devices == 0 else devices
    require(n <= len(available), f"{setting}={devices} but only {len(available)} local "
            f"device(s) exist (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    n = min(n, n if size is None else max(size, 1))
    return Mesh(np.asarray(available[:n]), (axis,))


def padded_size(size: int, mesh: Mesh) -> int:
    """``size`` rounded up to a multiple of the mesh's device count."""
    return -(-size // mesh.devices.size) * mesh.devices.size


def pad_leading(tree, padded: int):
    """Pad every leaf's leading axis to ``padded`` with copies of its first entry (static: no
    copy when nothing is padded). The copies do the same work as the others and are meant to
    be discarded with :func:`unpad_leading`."""
    size = jax.tree.leaves(tree)[0].shape[0]
    if padded == size:
        return tree
    first = jnp.zeros((padded - size,), jnp.int32)
    return jax.tree.map(lambda x: jnp.concatenate([x, x[first]]), tree)


def unpad_leading(tree, size: int):
    """The first ``size`` entries of every leaf's leading axis."""
    if jax.tree.leaves(tree)[0].shape[0] == size:
        return tree
    return jax.tree.map(lambda x: x[:size], tree)


def split_leading(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` over pytrees whose leading axis is split over ``mesh`` (its one axis): each device
    calls ``fn`` on its own block. The leading axis must be a multiple of the device count
    (see :func:`pad_leading`). With one device, ``fn`` itself.

    The blocks are independent (no collectives), so the varying-axes check is off: loops whose
    carries start from constants (``lax.scan`` over a day from a fresh state) would otherwise
    need ``pcast`` annotations that change nothing here.
    """
    if mesh.devices.size == 1:
        return fn
    spec = PartitionSpec(mesh.axis_names[0])
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
