"""XLA:CPU's intra-op thread pool, sized before JAX starts its CPU backend.

XLA:CPU splits a loop fusion it deems costly into parallel tasks (``outer_dimension_partitions``
in the compiled HLO) and runs them on an intra-op thread pool with one thread per schedulable
core. For programs made of many small fixed-shape ops -- a dispatch day is ~200 us of them per
two-second batch -- handing those tasks to another thread costs more than it saves on this
2-core VM. Measured on a full-scale one-hour window (same compiled logic, same revenue, the
machine shared with another job): one platform 174-213 vs 233-290 us/batch, three platforms
under ``lax.map`` 228-231 vs 412-423 us/batch. It costs where work is split over host devices
(``run_platforms(mode="shard")``: 305-319 vs 218-225 us/batch, the two devices then share one
pool thread) and where large matmuls use several threads (``fed_dqn`` on one device).

The pool is sized from the cores the process may run on when the backend starts, and is fixed
afterwards (per-compile options cannot change it). :func:`limit_intra_op_threads` restricts the
process to ``n`` cores just while the backend starts, then gives every core back: later work
(other processes, several host devices) still runs on all of them. ``FEDRL_INTRA_OP_THREADS=n``
in the environment does the same when ``fedrl`` is first imported, for the experiments'
command lines (``FEDRL_INTRA_OP_THREADS=1 python -m experiments.dispatch ...``).
"""
from __future__ import annotations

import os

ENV_VAR = "FEDRL_INTRA_OP_THREADS"


def backend_started() -> bool:
    """Whether JAX has started its backends (after which the pool size is fixed)."""
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def limit_intra_op_threads(n: int) -> int:
    """Start JAX's backends with an XLA:CPU intra-op pool of ``n`` threads (``n`` >= 1, at most
    the cores available); returns the pool size asked for. Must run before anything touches a
    JAX device; raises ``RuntimeError`` otherwise, and ``ValueError`` for a bad ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"intra-op threads must be an integer >= 1, got {n!r}")
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("limiting XLA:CPU's intra-op threads needs os.sched_setaffinity "
                           "(Linux)")
    if backend_started():
        raise RuntimeError("JAX's backends are already started, so XLA:CPU's intra-op pool is "
                           "already sized: limit the threads before the first JAX operation "
                           f"(or set {ENV_VAR} before importing fedrl)")
    cores = sorted(os.sched_getaffinity(0))
    n = min(n, len(cores))
    os.sched_setaffinity(0, cores[:n])
    try:
        import jax
        jax.devices()   # starts the backends: the pool is sized now
    finally:
        os.sched_setaffinity(0, cores)
    return n


def from_environment() -> int | None:
    """Apply ``FEDRL_INTRA_OP_THREADS`` if it is set (before JAX's backends start)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be an integer >= 1, got {value!r}") from None
    return limit_intra_op_threads(n)
