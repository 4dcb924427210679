"""Timing helpers shared by the benchmark cases (this module has no ``run``: not a case)."""
from __future__ import annotations

import time

import jax
import numpy as np


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, each waited for with
    ``block_until_ready`` (call ``fn`` once before to keep compilation out)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median wall time of each ``fn()`` (each waited for), their calls interleaved so that
    the speed drift of a shared machine hits all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def compiled_round(rnd, key=None):
    """(AOT-compiled round step, state after one warm-up round that fills the replay buffers,
    compile seconds) for a ``FederatedRound``."""
    key = jax.random.key(1) if key is None else key
    state = rnd.init(jax.random.key(2))
    t0 = time.perf_counter()
    step = jax.jit(rnd.step.__wrapped__).lower(state, key).compile()
    compile_s = time.perf_counter() - t0
    state, _ = step(state, key)
    jax.block_until_ready(state)
    return step, state, compile_s
