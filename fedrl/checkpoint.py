"""Atomic checkpoints of pytrees with flax serialization.

A checkpoint is one msgpack file written atomically (``fedrl.results.atomic_write_bytes``),
so an interrupted run resumes from the last complete checkpoint and never reads a torn one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from fedrl.config import ConfigError
from fedrl.results import atomic_write_bytes


def save(path: str | os.PathLike, tree: Any) -> None:
    """Serialize ``tree`` (arrays, dicts, dataclasses, scalars) to ``path`` atomically."""
    atomic_write_bytes(path, serialization.to_bytes(tree))


def restore(path: str | os.PathLike, target: Any) -> Any:
    """Read a checkpoint into the structure of ``target``; a clear error if it does not fit."""
    path = Path(path)
    data = path.read_bytes()
    advice = "run without --resume or with the config that wrote it"
    try:
        restored = serialization.from_bytes(target, data)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"checkpoint {path} does not match the current configuration ({err}); {advice}"
        ) from err
    # from_bytes keeps the saved arrays whatever the target's shapes: check them here, so a
    # changed config is refused now rather than failing deep inside the restored computation
    for (where, new), old in zip(jax.tree_util.tree_leaves_with_path(restored),
                                 jax.tree.leaves(target)):
        if np.shape(new) != np.shape(old) or np.result_type(new) != np.result_type(old):
            raise ConfigError(
                f"checkpoint {path} does not match the current configuration: "
                f"{jax.tree_util.keystr(where)} is {np.result_type(new)}{list(np.shape(new))} "
                f"there, {np.result_type(old)}{list(np.shape(old))} now; {advice}")
    return restored


def exists(path: str | os.PathLike) -> bool:
    return Path(path).is_file()
