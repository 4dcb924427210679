"""Smoke run of the Fed-LTD experiment: all five tables, ablations wired to the right knobs,
resume without recomputation, and clear errors for bad settings."""
import json
import math

import pytest

from experiments import fedltd
from experiments.common import execute
from fedrl.config import ConfigError

OVERRIDES = ["platforms=(2,)"]


def test_smoke_run_writes_all_tables_and_resumes(tmp_path):
    results = execute(fedltd.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=OVERRIDES,
                      progress=False)
    table = (tmp_path / "table.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4a", "Table 4b", "Table 5"):
        assert f"**{title}" in table, title
    m = results["methods"]
    seeds = results["seeds"]
    assert len(seeds) == 2
    for s in seeds:
        full = m[f"t1/fedltd/{s}"]
        assert full["cross_matched"] > 0 and full["aggregations"] > 0
        assert m[f"t1/models_only/{s}"]["cross_matched"] == 0          # knob: no decisions
        assert m[f"t1/models_only/{s}"]["aggregations"] > 0
        assert m[f"t1/decisions_only/{s}"]["aggregations"] == 0        # knob: no models
        assert m[f"t1/decisions_only/{s}"]["cross_matched"] > 0
        for name in ("single", "global", "fedltd", "no_dp"):
            assert m[f"t1/{name}/{s}"]["revenue"] > 0
        # eps = inf in table 4 is the same run as no_dp in table 1
        assert m[f"t4/eps=inf/{s}"]["revenue"] == m[f"t1/no_dp/{s}"]["revenue"]
        assert m[f"t2/K=2/single/{s}"]["platforms"] == 2
    eff = results["efficiency"]
    assert eff["he_over_masks"] > 1.0 and eff["paillier"]["seconds_measured"] > 0
    assert (tmp_path / "fedltd.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["fedltd"]["epsilon_p"] == 1.0 and "git_commit" in saved

    again = execute(fedltd.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=OVERRIDES,
                    resume=True, progress=False)
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert json.dumps(resumed["methods"], sort_keys=True) == json.dumps(saved["methods"],
                                                                       sort_keys=True)
    assert again["compile_time_s"] == 0.0     # every day run came from the finished record


@pytest.mark.parametrize("override, match", [
    ("epsilons=(1.0,0.0)", "epsilons"),
    ("fedltd.epsilon_p=-1", "epsilon_p"),
    ("platforms=(1,)", "platforms"),
    ("market.shares=(0.5,0.6)", "shares"),
    ("fedltd.lsh.kind=geohash", "kind"),
])
def test_bad_settings_are_refused_before_running(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        execute(fedltd.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=[override],
                progress=False)


def test_fedltd_is_part_of_the_reproduction():
    from experiments import reproduce
    assert "fedltd" in reproduce.EXPERIMENTS
    assert math.isinf(fedltd.PRESETS["quick"]().epsilons[-1])
