"""fedrl.host_cpu: the XLA:CPU intra-op pool sized through FEDRL_INTRA_OP_THREADS (a fresh
process each: the pool is fixed once JAX's backend has started)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrl import host_cpu

ROOT = Path(__file__).resolve().parents[1]

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
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop(host_cpu.ENV_VAR, None)
    if threads is not None:
        env[host_cpu.ENV_VAR] = threads
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PARTITIONS")][0]
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
