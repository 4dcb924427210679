"""Run a Python snippet in a fresh process: settings that JAX reads once at start-up (host
device count, XLA:CPU's intra-op pool) cannot change inside the test session."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(script: str, *, host_devices: int | None = None, paths=(), env=None,
               timeout: float = 600) -> str:
    """Run ``script`` on CPU (compiled with most optimizations off, like the suite) with
    ``host_devices`` CPU devices and the repo root plus ``paths`` importable; assert it exits
    0 and return its stdout. ``env``: extra variables (a None value removes one)."""
    full = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)])}
    if host_devices is not None:
        # keeps the session's flags (tests/conftest.py: the compile-time setting)
        full["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                             f"--xla_force_host_platform_device_count={host_devices}").strip()
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout
