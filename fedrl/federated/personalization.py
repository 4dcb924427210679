"""FedPer: a shared representation with party-specific heads (personalization layers).

Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with Personalization Layers",
arXiv:1912.00818, 2019: the base layers of each client's network are trained federatedly
(FedAvg) while the last layers stay on the client; the broadcast replaces only the base. This
is the seed's "multi-task learning: shared representation + task-specific heads", each
hospital being one task.

A network's layers are split by a *leaf mask*: a pytree of Python bools with the structure of
the flax parameters, True on the leaves of the last ``personal_layers`` ``Dense`` layers (flax
names them ``Dense_0``, ``Dense_1``, ... in call order). The mask is static (decided at trace
time from the parameter names), so the round stays one jitted program with static shapes: the
shared leaves form a list that the aggregation chain sees as the whole update (clipping, noise,
quantization and the uplink size then concern what is actually sent), and the personal leaves
pass through untouched.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from fedrl.config import require

PyTree = Any

_DENSE = re.compile(r"^Dense_(\d+)$")


def _path_names(path) -> list[str]:
    return [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]


def dense_layers(params: PyTree) -> list[str]:
    """Names of the ``Dense_i`` modules in ``params``, in layer order (by i)."""
    names = {name for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
             for name in _path_names(path) if _DENSE.match(name)}
    return sorted(names, key=lambda n: int(_DENSE.match(n).group(1)))


def personal_mask(params: PyTree, personal_layers: int,
                  setting: str = "fed.personal_layers") -> PyTree:
    """Bool pytree like ``params``: True on the leaves of the last ``personal_layers`` Dense
    layers (the party's own head), False on the shared body.

    ConfigError naming ``setting`` unless 0 <= personal_layers < number of Dense layers: at
    least one layer must stay shared, or nothing would be federated.
    """
    layers = dense_layers(params)
    require(isinstance(personal_layers, int) and not isinstance(personal_layers, bool)
            and 0 <= personal_layers < len(layers),
            f"{setting} must be an integer in [0, {len(layers) - 1}] (the Q-network has "
            f"{len(layers)} Dense layers and at least one must stay shared), got "
            f"{personal_layers!r}")
    personal = set(layers[len(layers) - personal_layers:]) if personal_layers else set()
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(personal.intersection(_path_names(path))), params)


def shared_leaves(tree: PyTree, mask: PyTree) -> list:
    """The leaves of ``tree`` where ``mask`` is False, as a list (itself a pytree). ``tree`` may
    carry leading axes (a stacked cohort): only its structure must match the mask's."""
    return [leaf for leaf, personal in zip(jax.tree.leaves(tree), jax.tree.leaves(mask))
            if not personal]


def personal_leaves(tree: PyTree, mask: PyTree) -> list:
    """The leaves of ``tree`` where ``mask`` is True (the personal head), as a list; the
    complement of :func:`shared_leaves`."""
    return [leaf for leaf, personal in zip(jax.tree.leaves(tree), jax.tree.leaves(mask))
            if personal]


def merge(mask: PyTree, personal: PyTree, shared: PyTree) -> PyTree:
    """Leaf by leaf: ``personal``'s where the mask is True, ``shared``'s elsewhere (static)."""
    return jax.tree.map(lambda m, p, s: p if m else s, mask, personal, shared)


def with_shared(tree: PyTree, mask: PyTree, leaves: list) -> PyTree:
    """``tree`` with its shared leaves replaced, in order, by ``leaves`` (inverse of
    :func:`shared_leaves`)."""
    flat, treedef = jax.tree.flatten(tree)
    it = iter(leaves)
    return jax.tree.unflatten(treedef, [leaf if personal else next(it)
                                        for leaf, personal in zip(flat, jax.tree.leaves(mask))])


def num_shared_params(params: PyTree, personal_layers: int) -> int:
    """Parameters one party uploads under FedPer: those outside its last ``personal_layers``
    Dense layers (all of them for 0). ``params``: one model, no leading axis."""
    mask = personal_mask(params, personal_layers)
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in shared_leaves(params, mask)))
