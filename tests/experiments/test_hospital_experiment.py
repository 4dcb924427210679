"""End-to-end smoke run of the hospital experiment: every method and heuristic, all outputs."""
import json

import pytest

from experiments import hospital
from experiments.common import execute
from fedrl.config import ConfigError


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hospital")
    return out, execute(hospital.EXPERIMENT, "smoke", out, seed=0, progress=False)


def test_smoke_run_writes_every_method_and_output(smoke_run):
    out, results = smoke_run
    expected = {"fedavg", "fedavg_personalized", "local", "centralized",
                *hospital.smoke().heuristics}
    assert set(results["methods"]) == expected
    for name, metrics in results["methods"].items():
        for key, _ in hospital.COLUMNS:
            assert key in metrics, (name, key)
        assert 0.0 <= metrics["lwbs_rate"] <= 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["num_hospitals"] == 2 and saved["compile_time_s"] > 0
    assert len(saved["per_hospital"]["local"]) == 2
    table = (out / "table.md").read_text()
    assert "fedavg_personalized" in table and "strict_priority" in table
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "wait_by_method.png").stat().st_size > 1000


def test_resume_after_completion_recomputes_nothing(smoke_run, monkeypatch):
    out, results = smoke_run
    # Pretend the run was interrupted after finishing every DQN method: with --resume no
    # training may happen again, and the metrics must be the saved ones.
    (out / "results.json").unlink()
    monkeypatch.setattr(hospital, "train_method",
                        lambda *a, **k: pytest.fail("a finished method was retrained"))
    again = execute(hospital.EXPERIMENT, "smoke", out, seed=0, resume=True, progress=False)
    assert again["methods"]["fedavg"] == results["methods"]["fedavg"]


@pytest.mark.parametrize("assignment,match", [
    ("num_hospitals=0", "num_hospitals must be >= 1"),
    ("methods=('fedprox',)", "methods has unknown entries"),
    ("fed.local_steps=-5", "fed.local_steps"),
    ("env.annual_visits=-100", "annual_visits"),
    ("dqn.gamma=2", "dqn.gamma"),
    ("aggregator.kind=dp", "fed.sampling='poisson'"),
    ("fed.clients_per_round=9", "exceeds num_hospitals=2"),
    ("fed.server_learning_rate=inf", "fed.server_learning_rate must be a finite number > 0"),
])
def test_bad_config_is_refused_with_the_field_named(assignment, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        execute(hospital.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=[assignment],
                progress=False)


def test_interrupted_training_resumes_from_checkpoint_and_matches(tmp_path):
    import dataclasses

    import jax
    import numpy as np

    from experiments.common import RunContext
    from fedrl.envs import hospital as env

    cfg = dataclasses.replace(hospital.smoke(), num_hospitals=2, checkpoint_every=1,
                              fed=dataclasses.replace(hospital.smoke().fed, num_rounds=3,
                                                      local_steps=32))
    params = env.make_hospitals(cfg.env, 2, jax.random.key(0))
    key = jax.random.key(5)
    ctx = RunContext(tmp_path, cfg, 0, resume=False, progress=False)
    full, _, curve, _ = hospital.train_method("fedavg", cfg, params, key, ctx)
    # The run left its round-2 checkpoint (the method was never marked finished): a resumed
    # run restores it, trains only the last round and ends in the same state.
    assert ctx.checkpoint_path("fedavg").exists()
    resumed_ctx = RunContext(tmp_path, cfg, 0, resume=True, progress=False)
    calls = []
    original = resumed_ctx.progress
    resumed_ctx.progress = lambda it, **kw: calls.append(list(it)) or original(calls[-1], **kw)
    resumed, _, curve2, _ = hospital.train_method("fedavg", cfg, params, key, resumed_ctx)
    assert calls == [[2]]
    jax.tree.map(np.testing.assert_allclose, resumed.global_params, full.global_params)
    np.testing.assert_array_equal(curve2, curve)
