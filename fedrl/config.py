"""Configuration helpers shared by every experiment.

Configs are frozen dataclasses (one place for every knob, as in big_vision's ``get_config``).
This module validates them, applies command-line overrides (``--set env.arrival_rate=5``) and
raises :class:`ConfigError` with a message that names the offending field, never a traceback
from deep inside JAX.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import typing
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the problem."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _as_real(value: Any) -> float | None:
    """``value`` as a float if it is a real number: Python or NumPy scalars (numbers.Real) and
    concrete 0-d NumPy / JAX arrays of a real dtype; None otherwise (e.g. a traced value)."""
    if isinstance(value, numbers.Real):
        return float(value)
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape == () and getattr(dtype, "kind", None) in ("i", "u", "f"):
        try:
            return float(value)
        except Exception:  # a JAX tracer: not concrete, cannot be checked here
            return None
    return None


def require_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Validate that a number is finite and > 0 (or >= 0 with ``allow_zero``).

    Accepts Python, NumPy and 0-d JAX real scalars."""
    value_f = _as_real(value)
    ok = value_f is not None and math.isfinite(value_f)
    ok = ok and (value_f >= 0 if allow_zero else value_f > 0)
    bound = ">= 0" if allow_zero else "> 0"
    require(ok, f"{name} must be a finite number {bound}, got {value!r}")


def require_in_range(name: str, value: float, low: float, high: float, *,
                     low_open: bool = False, high_open: bool = False) -> None:
    """Validate ``low <(=) value <(=) high``; the message prints the interval.

    Accepts Python, NumPy and 0-d JAX real scalars."""
    value_f = _as_real(value)
    ok = value_f is not None and math.isfinite(value_f)
    ok = ok and (value_f > low if low_open else value_f >= low)
    ok = ok and (value_f < high if high_open else value_f <= high)
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    require(ok, f"{name} must lie in {interval}, got {value!r}")


def get_preset(presets: Mapping[str, Any], name: str, *, what: str = "experiment") -> Any:
    """Look up a named preset, listing the valid names when ``name`` is unknown."""
    if name not in presets:
        raise ConfigError(
            f"unknown preset {name!r} for {what}; choose one of {sorted(presets)}")
    return presets[name]


def _element_type(annotation):
    """T of ``tuple[T, ...]`` / ``list[T]`` when T is int, float, str or bool, else None."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if len(set(args)) == 1 and args[0] in (int, float, str, bool):
        return args[0]
    return None


def _check_element(value, element, field_path):
    """``value`` as an element of type ``element`` (ints are fine where floats are expected)."""
    ok = (isinstance(value, element) and not (element is int and isinstance(value, bool))
          or element is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{field_path} expects {element.__name__} elements, got {value!r}")
    return float(value) if element is float else value


def _coerce(text: str, annotation: Any, field_path: str) -> Any:
    """Convert the string ``text`` to the type named by ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{field_path} expects a boolean (true/false), got {text!r}")
    if annotation in (int, float, str):
        if annotation is str:
            return text
        try:
            value = float(text) if annotation is float else int(text)
        except ValueError:
            raise ConfigError(
                f"{field_path} expects {annotation.__name__}, got {text!r}") from None
        return value
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(text, arg, field_path)
            except ConfigError:
                continue
        raise ConfigError(f"{field_path} cannot take the value {text!r} (type {annotation})")
    if origin in (tuple, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"{field_path} expects a tuple literal such as (1, 2), got {text!r}") from None
        if not isinstance(value, (tuple, list)):
            value = (value,)
        element = _element_type(annotation)
        if element is not None:
            value = [_check_element(v, element, field_path) for v in value]
        return tuple(value) if origin is tuple else list(value)
    if typing.get_origin(annotation) is typing.Literal:
        if text in args:
            return text
        raise ConfigError(f"{field_path} must be one of {list(args)}, got {text!r}")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(config: Any, assignments: Iterable[str]) -> Any:
    """Return a copy of the frozen dataclass ``config`` with ``key=value`` overrides applied.

    Keys may be dotted to reach nested dataclasses (``env.num_beds=30``). Values are parsed
    according to the field's annotation. Unknown keys raise :class:`ConfigError` listing the
    valid field names.
    """
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} must have the form key=value")
        key, text = assignment.split("=", 1)
        config = _set_path(config, key.strip().split("."), text.strip(), key.strip())
    validate(config)
    return config


def _set_path(config: Any, path: list[str], text: str, full: str) -> Any:
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"cannot set {full!r}: {'.'.join(path)} is not a config section")
    names = [f.name for f in dataclasses.fields(config)]
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"unknown config field {full!r}; valid fields here: {', '.join(sorted(names))}")
    current = getattr(config, head)
    if len(path) > 1:
        new_value = _set_path(current, path[1:], text, full)
    else:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full!r} is a config section; set one of its fields instead")
        new_value = _coerce(text, _field_types(type(config))[head], full)
    return dataclasses.replace(config, **{head: new_value})


def validate(config: Any) -> None:
    """Call ``config.validate()`` (and that of nested sections) where defined."""
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        validate(getattr(config, f.name))
    check = getattr(config, "validate", None)
    if callable(check):
        check()


def to_dict(config: Any) -> dict:
    """A JSON-friendly dict of a (nested) dataclass config."""
    return dataclasses.asdict(config)
