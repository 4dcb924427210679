"""scripts/bench.py: every case discovered, the JSON layout all cases share (with provenance),
ratios oriented so that > 1 means "ours is better", and clear errors for bad arguments. The
benchmarks' figures themselves are not asserted (speed targets live in the benchmarks)."""
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench.py"
DOCUMENTED = {"fed_dqn", "fed_dropout", "hospital_env", "dp_round", "secure_sum", "matching",
              "dispatch_day"}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@functools.cache
def _module():
    spec = importlib.util.spec_from_file_location("fedrl_bench_script", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_documented_case_is_discovered():
    assert set(_module().discover()) == DOCUMENTED


def test_a_quick_case_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = _bench("--quick", "--only", "secure_sum", "--json", str(out), "--host-devices", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"device", "cases", "argv", "xla_flags", "wall_s", "provenance"} <= set(data)
    assert data["argv"][:3] == ["--quick", "--only", "secure_sum"]
    assert data["device"].startswith("cpu") and data["wall_s"] > 0
    assert "git_commit" in data["provenance"] and data["provenance"]["versions"]["jax"]
    rows = data["cases"]
    assert len(rows) >= 2
    keys = set(_module().ROW_KEYS)
    assert all(set(row) == keys and row["name"] == "secure_sum" for row in rows)
    timed = [row for row in rows if row["baseline_value"] is not None]
    assert timed, "phe is in requirements.txt: the Paillier baseline must be measured"
    for row in timed:   # times: ratio = baseline / ours, > 1 when ours is faster
        assert row["unit"] == "s" and row["value"] > 0
        assert row["ratio"] == pytest.approx(row["baseline_value"] / row["value"], rel=1e-6)
    assert proc.stdout.count("| secure_sum |") == len(rows)   # the printed table


@pytest.mark.parametrize("args, message", [
    (("--only", "nope"), "unknown case(s) ['nope']; available: ['dispatch_day'"),
    (("--host-devices", "-1"), "--host-devices must be >= 0"),
    (("--intra-op-threads", "-2"), "--intra-op-threads must be >= 0"),
])
def test_bad_arguments_are_refused_with_a_message(args, message):
    proc = _bench(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
