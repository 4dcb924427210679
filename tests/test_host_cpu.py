"""fedrl.host_cpu: the XLA:CPU intra-op pool sized through FEDRL_INTRA_OP_THREADS (a fresh
process each: the pool is fixed once JAX's backend has started)."""
import os

import pytest

from fedrl import host_cpu
from tests.fresh_process import run_python

SCRIPT = """
import os
cores = os.sched_getaffinity(0)
import fedrl
import jax, jax.numpy as jnp
assert os.sched_getaffinity(0) == cores, "affinity not restored"
f = jax.jit(lambda x: jnp.exp(jnp.sin(x) * 3.0) + jnp.power(0.9, x))
hlo = f.lower(jnp.ones((4096, 1024))).compile().as_text()
print("PARTITIONS", hlo.count("outer_dimension_partitions"), len(cores))
"""


def _partitions(threads):
    out = run_python(SCRIPT, env={host_cpu.ENV_VAR: threads}, timeout=300)
    line = [ln for ln in out.splitlines() if ln.startswith("PARTITIONS")][0]
    return int(line.split()[1]), int(line.split()[2])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_one_intra_op_thread_compiles_no_parallel_tasks_and_restores_affinity():
    limited, cores = _partitions("1")
    assert limited == 0
    if cores > 1:   # XLA splits this fusion over the cores by default
        default, _ = _partitions(None)
        assert default > 0


def test_errors_name_the_problem():
    import jax
    jax.devices()   # this process's backend has started
    with pytest.raises(ValueError, match=">= 1"):
        host_cpu.limit_intra_op_threads(0)
    with pytest.raises(RuntimeError, match="already started"):
        host_cpu.limit_intra_op_threads(1)
