"""Hospital experiment: relative metrics, the centralized reference's budget under client
sampling, and settings that could never train (no training here: config and bookkeeping)."""
import dataclasses

import numpy as np
import pytest

from experiments import hospital
from experiments.common import execute
from fedrl.config import ConfigError, override


def _methods(random_r, central_r):
    return {"random": {"kind": "heuristic", "episode_return": random_r},
            "fedavg": {"kind": "dqn", "episode_return": -400.0},
            "fedavg_personalized": {"kind": "dqn", "episode_return": -500.0},
            "local": {"kind": "dqn", "episode_return": -6000.0},
            "centralized": {"kind": "dqn", "episode_return": central_r}}


def test_quality_vs_centralized_is_undefined_when_centralized_does_not_beat_random():
    methods = _methods(random_r=-300.0, central_r=-1000.0)
    hospital._add_relative_metrics(hospital.smoke(), methods, {}, None)
    # Before: (R - R_rand) / (R_c - R_rand) with a negative denominator ranked local (-6000)
    # above fedavg (-400).
    assert all(m["quality_vs_centralized"] is None for m in methods.values()
               if m["kind"] == "dqn")
    assert hospital._central_not_above_random(methods)


def test_quality_vs_centralized_when_centralized_beats_random():
    methods = _methods(random_r=-600.0, central_r=-200.0)
    hospital._add_relative_metrics(hospital.smoke(), methods, {}, None)
    assert methods["fedavg"]["quality_vs_centralized"] == pytest.approx(0.5)
    assert methods["centralized"]["quality_vs_centralized"] == pytest.approx(1.0)
    assert not hospital._central_not_above_random(methods)


def test_rounds_to_target_not_given_to_the_personalized_row():
    methods = _methods(random_r=-600.0, central_r=-200.0)
    curves = {"fedavg": np.array([-700.0, -300.0]), "local": np.array([-900.0, -800.0]),
              "centralized": np.array([-250.0, -100.0])}
    hospital._add_relative_metrics(hospital.smoke(), methods, curves, -350.0)
    assert methods["fedavg"]["rounds_to_target"] == 2
    assert methods["centralized"]["rounds_to_target"] == 1
    assert methods["local"]["rounds_to_target"] is None
    # Its models are never evaluated on the curve: no value (the table shows "-").
    assert "rounds_to_target" not in methods["fedavg_personalized"]


def test_curve_misleads_flags_a_held_out_collapse_the_curve_missed():
    methods = _methods(random_r=-600.0, central_r=-200.0)
    methods["fedavg"]["episode_return"] = -30_000.0   # IFCA at the quick preset, seed 0
    curves = {"fedavg": np.array([np.nan, -500.0, np.nan, -100.0]),   # reached the target
              "local": np.array([np.nan, -900.0, np.nan, -800.0]),    # never reached it
              "centralized": np.array([np.nan, -300.0, np.nan, -250.0])}
    # local's held-out return (-6000) is below random's too, but its curve never got there
    hospital._add_relative_metrics(hospital.smoke(), methods, curves, -350.0)
    assert methods["fedavg"]["curve_last_return"] == -100.0
    assert methods["fedavg"]["curve_misleads"] is True
    assert methods["local"]["curve_misleads"] is False          # its curve said so already
    assert methods["centralized"]["curve_misleads"] is False    # held-out above random
    assert "curve_misleads" not in methods["fedavg_personalized"]   # not on the curve
    table = hospital._tables(hospital.smoke(), methods, {}, [1.0, 2.0])
    assert "WARNING: held-out return below random's" in table
    assert "`fedavg` -30,000.0 on the held-out episodes vs -100.0" in table
    assert "`local`" not in table.split("WARNING")[1].split("\n")[0]


def test_no_curve_warning_without_a_collapse():
    methods = _methods(random_r=-600.0, central_r=-200.0)
    curves = {"fedavg": np.array([-700.0, -300.0]), "local": np.array([-900.0, -800.0]),
              "centralized": np.array([-250.0, -100.0])}
    hospital._add_relative_metrics(hospital.smoke(), methods, curves, -350.0)
    assert not any(m.get("curve_misleads") for m in methods.values())
    assert "WARNING" not in hospital._tables(hospital.smoke(), methods, {}, [1.0, 2.0])


def test_default_target_is_strict_priority():
    assert hospital.HospitalExperimentConfig().target_heuristic == "strict_priority"


@pytest.mark.parametrize("assignments,expected_steps", [
    ([], 96),                                                       # defaults: unchanged
    (["fed.sampling=poisson", "fed.sampling_rate=0.5"], 48),
    (["num_hospitals=4", "fed.clients_per_round=1"], 24),
    (["fed.dropout_rate=0.5"], 96),     # dropped parties keep their experience: no scaling
])
def test_centralized_gets_the_parties_expected_experience(assignments, expected_steps):
    cfg = override(hospital.smoke(), assignments)
    k = cfg.num_hospitals
    p = hospital.participation_rate(cfg.fed, k)
    assert hospital.centralized_local_steps(cfg.fed, k) == expected_steps
    # Expected transitions per hospital per round: a party's p * local_steps; the centralized
    # agent steps every hospital once per step (before: local_steps, i.e. 1/p times more).
    assert expected_steps == pytest.approx(p * cfg.fed.local_steps, abs=0.5)


def test_centralized_method_setup_uses_the_scaled_budget():
    import jax

    cfg = override(hospital.smoke(), ["fed.sampling=poisson", "fed.sampling_rate=0.5"])
    params = {"leaf": np.zeros((cfg.num_hospitals, 3))}   # only its leading axis K is read
    _, fed_cfg, stacked = hospital.method_setup("centralized", cfg, params)
    assert fed_cfg.local_steps == 48 and fed_cfg.sampling == "fixed"
    assert jax.tree.leaves(stacked)[0].shape[:2] == (1, cfg.num_hospitals)
    _, fed_local, _ = hospital.method_setup("local", cfg, params)
    assert fed_local.local_steps == 96 and fed_local.sampling == "poisson"


@pytest.mark.parametrize("assignment,match", [
    ("dqn.batch_size=5000", "dqn.buffer_capacity"),
    ("dqn.learning_starts=100000", "dqn.buffer_capacity"),
    ("dqn.buffer_capacity=1", "dqn.buffer_capacity"),
    ("dqn.learning_starts=192", "fed.num_rounds \\* fed.local_steps"),   # smoke: 2 x 96
    ("fed.server_momentum=-3", "fed.server_momentum"),
    ("quantize_bits=1", "quantize_bits"),
])
def test_settings_that_could_never_train_are_refused(assignment, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        execute(hospital.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=[assignment],
                progress=False)


def test_quantized_method_is_opt_in_and_federated():
    assert "fedavg_quantized" not in hospital.HospitalExperimentConfig().methods
    cfg = dataclasses.replace(hospital.smoke(), methods=("fedavg", "fedavg_quantized"),
                              quantize_bits=4)
    cfg.validate()
    agg = hospital.method_aggregator("fedavg_quantized", cfg)
    assert agg.kind == "quantized" and agg.quantize_bits == 4
    assert hospital.method_aggregator("fedavg", cfg) == cfg.aggregator
