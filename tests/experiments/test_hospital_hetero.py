"""Hospital experiment: the opt-in fednova method and system heterogeneity (hospital speeds,
round deadline): setup, per-hospital local steps, table note, config errors (no training)."""
import dataclasses

import numpy as np
import pytest

from experiments import hospital
from experiments.common import execute
from fedrl.config import ConfigError


def _cfg(**fed):
    cfg = hospital.smoke()
    return dataclasses.replace(cfg, methods=("fedavg", "fednova", "local", "centralized"),
                               fed=dataclasses.replace(cfg.fed, **fed))


def test_fednova_is_opt_in_and_speeds_reach_every_method_but_centralized():
    assert "fednova" not in hospital.HospitalExperimentConfig().methods
    cfg = _cfg(party_speeds=(1.0, 0.25), round_deadline=0.5)
    cfg.validate()
    assert hospital.method_aggregator("fednova", cfg).kind == "fednova"
    assert hospital.method_aggregator("fedavg", cfg).kind == "fedavg"
    params = {"leaf": np.zeros((cfg.num_hospitals, 3))}
    for method in ("fedavg", "fednova", "local"):
        assert hospital.method_setup(method, cfg, params)[1].party_speeds == (1.0, 0.25)
    central = hospital.method_setup("centralized", cfg, params)[1]
    assert central.party_speeds is None and central.round_deadline is None
    # smoke: local_steps 96 -> floor(1.0 * 0.5 * 96) = 48, floor(0.25 * 0.5 * 96) = 12
    record = hospital.heterogeneity_record("fednova", cfg, cfg.fed)
    assert record["local_step_caps"] == [48, 12] and record["stragglers"] == 0
    assert hospital.heterogeneity_record("centralized", cfg, central) == {}
    assert hospital.heterogeneity_record("fedavg", hospital.smoke(), hospital.smoke().fed) == {}
    slow = _cfg(party_speeds=(1.0, 0.01), round_deadline=0.5)
    assert hospital.heterogeneity_record("fedavg", slow, slow.fed)["stragglers"] == 1


def test_visit_speeds_and_table_note():
    assert hospital.visit_speeds([20_000.0, 50_000.0, 5_000.0]) == (0.4, 1.0, 0.1)
    cfg = _cfg(party_speeds=(1.0, 0.25), round_deadline=0.5)
    row = {"kind": "dqn", **hospital.heterogeneity_record("fednova", cfg, cfg.fed)}
    table = hospital._tables(cfg, {"fednova": row}, {}, [1.0, 2.0])
    assert "round deadline 0.5" in table
    assert "0: speed 1.00, 48 steps, 1: speed 0.25, 12 steps" in table


@pytest.mark.parametrize("assignment,match", [
    ("fed.party_speeds=(1.0,)", "fed.party_speeds has 1 entries"),
    ("fed.party_speeds=(1.0, -2.0)", "fed.party_speeds must be"),
    ("fed.round_deadline=0", "fed.round_deadline"),
    ("hospital_speeds='beds'", "hospital_speeds must be one of"),
])
def test_bad_heterogeneity_settings_are_refused(assignment, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        execute(hospital.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=[assignment],
                progress=False)
