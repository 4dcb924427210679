"""Atomic checkpoints of pytrees with flax serialization.

A checkpoint is one msgpack file written atomically (``fedrl.results.atomic_write_bytes``),
so an interrupted run resumes from the last complete checkpoint and never reads a torn one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax import serialization

from fedrl.results import atomic_write_bytes


def save(path: str | os.PathLike, tree: Any) -> None:
    """Serialize ``tree`` (arrays, dicts, dataclasses, scalars) to ``path`` atomically."""
    atomic_write_bytes(path, serialization.to_bytes(tree))


def restore(path: str | os.PathLike, target: Any) -> Any:
    """Read a checkpoint into the structure of ``target``; a clear error if it does not fit."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return serialization.from_bytes(target, data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"checkpoint {path} does not match the current configuration ({err}); "
            "run without --resume or with the config that wrote it") from err


def exists(path: str | os.PathLike) -> bool:
    return Path(path).is_file()
