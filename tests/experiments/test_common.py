"""Tests of the experiment conventions: outputs, provenance, atomic writes and --resume."""
import dataclasses
import json

import numpy as np
import pytest

from experiments.common import Experiment, Report, execute, main
from fedrl.config import ConfigError, require
from fedrl.results import atomic_write_json


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    rounds: int = 4
    fail_at: int = -1

    def validate(self):
        require(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")


CALLS = []


class Interrupted(RuntimeError):
    pass


def toy_run(cfg, seed, ctx):
    methods = {}
    for method in ("a", "b"):
        saved = ctx.done(method)
        if saved is not None:
            methods[method] = saved
            continue
        ckpt = ctx.restore_checkpoint(method, {"round": 0, "total": np.zeros(())})
        start, total = (0, 0.0) if ckpt is None else (int(ckpt["round"]), float(ckpt["total"]))
        for r in ctx.progress(range(start, cfg.rounds), desc=method):
            CALLS.append((method, r))
            if method == "b" and r == cfg.fail_at:
                raise Interrupted
            total += seed + r
            ctx.save_checkpoint(method, {"round": r + 1, "total": np.asarray(total)})
        methods[method] = {"total": total}
        ctx.finish(method, methods[method])
    return Report(methods=methods, table="| m | total |\n|---|---|\n", compile_time_s=0.5)


TOY = Experiment(name="toy", presets={"smoke": ToyConfig, "quick": ToyConfig}, run=toy_run)


def test_outputs_carry_config_seed_and_provenance(tmp_path):
    results = execute(TOY, "smoke", tmp_path, seed=3, overrides=["rounds=2"], progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["config"] == {"rounds": 2, "fail_at": -1} and saved["seed"] == 3
    assert saved["methods"]["a"]["total"] == 3 + 4
    assert {"jax", "flax", "optax", "numpy"} <= set(saved["versions"])
    assert "git_commit" in saved and saved["device"]["platform"] == "cpu"
    assert (tmp_path / "table.md").read_text().startswith("| m |")


def test_resume_skips_finished_work(tmp_path):
    CALLS.clear()
    with pytest.raises(Interrupted):
        execute(TOY, "smoke", tmp_path, seed=1, overrides=["fail_at=2"], progress=False)
    assert CALLS == [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1), ("b", 2)]
    CALLS.clear()
    # Same config (fail_at is part of it, so it stays) but resumed: method a is not recomputed,
    # b restarts from its checkpoint at round 2 and fails there again.
    with pytest.raises(Interrupted):
        execute(TOY, "smoke", tmp_path, seed=1, overrides=["fail_at=2"], resume=True,
                progress=False)
    assert CALLS == [("b", 2)]


def test_resume_completes_and_matches_uninterrupted_run(tmp_path):
    with pytest.raises(Interrupted):
        execute(TOY, "smoke", tmp_path / "r", seed=1, overrides=["fail_at=2"], progress=False)
    # A different config must not silently reuse the checkpoints.
    with pytest.raises(ConfigError, match="another config or seed"):
        execute(TOY, "smoke", tmp_path / "r", seed=1, resume=True, progress=False)
    full = execute(TOY, "smoke", tmp_path / "full", seed=1, progress=False)
    assert full["methods"]["b"]["total"] == sum(1 + r for r in range(4))


def test_cli_reports_config_errors_with_exit_status_2(tmp_path, capsys):
    assert main(TOY, ["--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(TOY, ["--preset", "smoke", "--out", str(tmp_path), "--set", "rounds=0"]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"x": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_resume_refuses_another_seed_even_before_a_method_finished(tmp_path):
    # interrupted inside the first method: only a checkpoint of "a" exists
    def first_method_interrupted(cfg, seed, ctx):
        ctx.save_checkpoint("a", {"round": 1, "total": np.zeros(())})
        raise Interrupted
    early = Experiment(name="toy", presets={"smoke": ToyConfig}, run=first_method_interrupted)
    with pytest.raises(Interrupted):
        execute(early, "smoke", tmp_path, seed=5, progress=False)
    with pytest.raises(ConfigError, match="another config or seed"):
        execute(TOY, "smoke", tmp_path, seed=6, resume=True, progress=False)
    with pytest.raises(ConfigError, match="another config or seed"):
        execute(TOY, "smoke", tmp_path, seed=5, overrides=["rounds=3"], resume=True,
                progress=False)


def test_checkpoint_of_another_shape_is_a_config_error(tmp_path):
    from fedrl import checkpoint
    path = tmp_path / "c.msgpack"
    checkpoint.save(path, {"w": np.zeros((3,), np.float32), "n": np.zeros((), np.int32)})
    restored = checkpoint.restore(path, {"w": np.ones((3,), np.float32),
                                         "n": np.ones((), np.int32)})
    assert np.all(restored["w"] == 0)
    with pytest.raises(ConfigError, match=r"\['w'\] is float32\[3\] there, float32\[5\] now"):
        checkpoint.restore(path, {"w": np.ones((5,), np.float32), "n": np.ones((), np.int32)})
    with pytest.raises(ConfigError, match="int32"):
        checkpoint.restore(path, {"w": np.ones((3,), np.float32), "n": np.ones((), np.float32)})


def test_malformed_data_is_one_line_and_exit_2(tmp_path, capsys):
    from fedrl.data.gaia import DataError

    def bad_data(cfg, seed, ctx):
        raise DataError(tmp_path / "order_x", 5, "non-numeric field", "start='abc'")
    bad = Experiment(name="toy", presets={"smoke": ToyConfig}, run=bad_data)
    assert main(bad, ["--preset", "smoke", "--out", str(tmp_path / "o")]) == 2
    assert f"error: {tmp_path / 'order_x'}:5: non-numeric field" in capsys.readouterr().err


def test_compile_cache_is_reused_across_runs(tmp_path):
    """--compile-cache: the first run stores its programs; a second run (another --out) loads
    every one of them (JAX logs each hit with its key under JAX_LOG_COMPILES), stores nothing
    new and gives the same results; both record the folder. Run as subprocesses: JAX's cache
    is set once per process."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    cache = tmp_path / "cache"
    root = Path(__file__).resolve().parents[2]

    def run(out):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.dispatch", "--preset", "smoke", "--out",
             str(tmp_path / out), "--compile-cache", str(cache), "--no-progress"],
            capture_output=True, text=True, cwd=root, timeout=600,
            env={**os.environ, "JAX_LOG_COMPILES": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / out / "results.json").read_text()), proc.stderr

    first, _ = run("a")
    stored = sorted(p.name for p in cache.iterdir())
    assert stored, "nothing was stored in the compilation cache"
    second, log = run("b")
    for entry in stored:   # files are named <key>-cache
        key = entry.removesuffix("-cache")
        assert f"Persistent compilation cache hit for '{key.split('-')[0]}' with key '{key}'" \
            in log, entry
    assert sorted(p.name for p in cache.iterdir()) == stored
    assert first["compile_cache"] == second["compile_cache"] == str(cache)

    def outcomes(results):   # every metric but the timings
        return {m: {k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")
                    and "us_per" not in k} for m, r in results["methods"].items()}
    assert outcomes(first) == outcomes(second)


def test_an_uncreatable_compile_cache_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(TOY, ["--preset", "smoke", "--out", str(tmp_path / "o"),
                      "--compile-cache", str(blocker / "sub")]) == 2
    assert "--compile-cache" in capsys.readouterr().err
