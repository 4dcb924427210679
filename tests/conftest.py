"""Test-session settings.

Most of the suite's time on a 2-core CI machine is XLA compilation, not computation: the tests
run small shapes once. ``jax_disable_most_optimizations`` roughly halves compile time, and
XLA:CPU's legacy (non-MLIR) fusion emitters halve it again (a Fed-LTD day: 12.5 -> 4.7 s, a
hospital round: 8.4 -> 3.1 s); neither changes what the programs compute (benchmarks and
experiments run with XLA's defaults). ``XLA_FLAGS`` must be set before JAX creates its CPU
client; subprocesses (``tests/fresh_process.py``) inherit it. XLA aborts on a flag it does not
know, so the flag is first tried in a throw-away process (a jaxlib that dropped the legacy
emitters runs the suite without it, only slower); xdist workers inherit the outcome.
"""
import os
import subprocess
import sys

TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    try:
        return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                              capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


if "FEDRL_TEST_XLA_FLAGS" not in os.environ:   # once per session (the xdist controller)
    os.environ["FEDRL_TEST_XLA_FLAGS"] = TEST_XLA_FLAGS if _xla_accepts(TEST_XLA_FLAGS) else ""
_extra = os.environ["FEDRL_TEST_XLA_FLAGS"]
if _extra and _extra not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_extra}".strip()

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

# The heaviest test modules (compile-bound: 40-170 s each on 2 CI cores), slowest first. With
# ``--dist loadfile --no-loadscope-reorder`` (pytest.ini) each module runs on one xdist worker,
# so its module-scoped fixtures and jit caches are built once, not once per worker, and these
# modules start first, so that the two workers finish together (the small modules fill in).
HEAVY_FIRST = (
    "tests/fedltd/test_fedltd_protocol.py",
    "tests/experiments/test_fedltd_experiment.py",
    "tests/matching/test_matching_auction.py",
    "tests/experiments/test_hospital_experiment.py",
    "tests/experiments/test_privacy_utility_experiment.py",
    "tests/experiments/test_hospital_opt_in_methods.py",
    "tests/federated/test_fed_round.py",
    "tests/federated/test_fed_round_sharded.py",
    "tests/agents/test_dqn.py",
    "tests/federated/test_fed_heterogeneity.py",
    "tests/dispatch/test_dispatch_simulator.py",
    "tests/envs/hospital/test_hospital_env.py",
    "tests/test_ops.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable
