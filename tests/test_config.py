"""Tests of config overrides and validation errors."""
import dataclasses
from typing import Literal, Optional

import pytest

from fedrl.config import ConfigError, get_preset, override, require_in_range, require_positive


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    sizes: tuple[int, ...] = (4, 4)
    flag: bool = False

    def validate(self):
        require_positive("inner.rate", self.rate)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "a"
    count: int = 3
    mode: Literal["x", "y"] = "x"
    limit: Optional[int] = None
    inner: Inner = Inner()


def test_override_parses_types_and_nested_fields():
    cfg = override(Outer(), ["count=7", "inner.rate=2.5", "inner.sizes=(8, 16)", "inner.flag=true",
                             "mode=y", "limit=none", "name=b"])
    assert cfg == Outer(name="b", count=7, mode="y", limit=None,
                        inner=Inner(rate=2.5, sizes=(8, 16), flag=True))
    assert override(Outer(), ["limit=5"]).limit == 5


@pytest.mark.parametrize("assignment,match", [
    ("nope=1", "unknown config field 'nope'"),
    ("inner.nope=1", "unknown config field 'inner.nope'"),
    ("count=abc", "count expects int"),
    ("inner.flag=maybe", "boolean"),
    ("mode=z", "must be one of"),
    ("inner=3", "config section"),
    ("count", "key=value"),
    ("inner.rate=-1", "inner.rate must be a finite number > 0"),
    ("inner.sizes=('a',)", "inner.sizes expects int elements, got 'a'"),
    ("inner.sizes=(1.5, 2)", "inner.sizes expects int elements, got 1.5"),
    ("inner.sizes=(True,)", "inner.sizes expects int elements"),
])
def test_override_errors_name_the_problem(assignment, match):
    with pytest.raises(ConfigError, match=match):
        override(Outer(), [assignment])


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown preset 'fast'.*\['paper', 'quick', 'smoke'\]"):
        get_preset({"smoke": 1, "quick": 2, "paper": 3}, "fast")


def test_range_checks():
    require_in_range("q", 0.5, 0.0, 1.0, low_open=True)
    with pytest.raises(ConfigError, match=r"q must lie in \(0.0, 1.0\]"):
        require_in_range("q", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(ConfigError, match="nan"):
        require_positive("x", float("nan"))
