"""Smoke run of the privacy-utility experiment: DP and DP + secure aggregation on hospitals."""
import json

import pytest

from experiments import privacy_utility
from experiments.common import execute
from fedrl.config import ConfigError
from fedrl.privacy import accounting


def test_smoke_run_reports_epsilon_and_secure_equals_plain(tmp_path):
    results = execute(privacy_utility.EXPERIMENT, "smoke", tmp_path, seed=0,
                      overrides=["local_baseline=false"], progress=False)
    methods = results["methods"]
    assert {"fedavg", "fedavg+secure", "dp z=1", "dp+secure z=1"} <= set(methods)
    cfg = privacy_utility.smoke()
    record = methods["dp z=1"]["privacy"]
    expected = accounting.epsilon(1.0, cfg.base.fed.sampling_rate, cfg.base.fed.num_rounds,
                                  cfg.delta, "pld")
    assert record["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert record["delta"] == cfg.delta and record["accountant"] == "pld"
    # Secure aggregation changes nothing but fixed-point rounding of the aggregate.
    assert 0.0 <= methods["dp+secure z=1"]["max_param_diff_vs_plain"] < 1e-3
    assert 0.0 <= methods["fedavg+secure"]["max_param_diff_vs_plain"] < 1e-3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["dp z=1"]["privacy"]["sampling"] == "poisson"
    assert "epsilon (PLD)" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "privacy_utility.png").stat().st_size > 1000


def test_fixed_cohorts_are_refused_for_dp(tmp_path):
    with pytest.raises(ConfigError, match="poisson"):
        execute(privacy_utility.EXPERIMENT, "smoke", tmp_path, seed=0,
                overrides=["base.fed.sampling=fixed"], progress=False)
