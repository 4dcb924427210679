"""Benchmark cases for ``scripts/bench.py``.

Each module here exposes ``NAME`` (the case name used by ``--only``) and
``run(quick: bool) -> list[dict]``; every dict is one row with the keys
``name, params, value, unit, baseline, baseline_value, ratio`` (see ``bench.py``).
The baseline is always measured in the same run, never hard-coded.
"""
