"""End-to-end smoke run of the hospital experiment's opt-in methods (fedper, fedavg_clustered,
fednova, fedavg_quantized, fedavg_dropout) under a round deadline: each one trains, is evaluated and reaches the
table with its own record (uplink, clusters, local-step caps). The other hospital tests check
their setup without training."""
import json
import math

from experiments import hospital
from experiments.common import execute

METHODS = ("fedper", "fedavg_clustered", "fednova", "fedavg_quantized", "fedavg_dropout")


def test_opt_in_methods_train_and_reach_the_table(tmp_path):
    results = execute(hospital.EXPERIMENT, "smoke", tmp_path, seed=0, progress=False,
                      overrides=[f"methods={METHODS!r}", "heuristics=('random',)",
                                 "fed.party_speeds=(1.0,0.5)", "fed.round_deadline=1.0"])
    m = results["methods"]
    assert set(m) == {*METHODS, "random"}
    steps = hospital.smoke().fed.local_steps
    for name in METHODS:
        assert m[name]["kind"] == "dqn" and m[name]["compile_time_s"] > 0, name
        assert math.isfinite(m[name]["episode_return"]), name
        # floor(speed x deadline x local_steps) for speeds 1.0 and 0.5, deadline 1.0
        assert m[name]["local_step_caps"] == [steps, steps // 2], name
    assert m["fednova"]["aggregator"] == "fednova"
    assert m["fedavg_quantized"]["uplink_bits_per_param"] == 8
    assert m["fedper"]["uplink_num_params"] < m["fedper"]["num_params"]   # the head stays home
    assert m["fedavg_clustered"]["num_clusters"] == 2
    # federated dropout at 25 %: 24 of the smoke network's 32 units per hidden layer travel
    assert m["fedavg_dropout"]["submodel_units"] == [24, 24]
    assert m["fedavg_dropout"]["uplink_num_params"] == (hospital.hospital.OBS_DIM * 24 + 24
                                                        + 24 * 24 + 24
                                                        + 24 * hospital.hospital.NUM_ACTIONS
                                                        + hospital.hospital.NUM_ACTIONS)
    assert m["fedavg_dropout"]["uplink_bytes_per_party_round"] == \
        4 * (m["fedavg_dropout"]["uplink_num_params"] + 1)
    clusters = results["cluster_assignments"]["fedavg_clustered"]
    assert len(clusters) == 2 and set(clusters) <= {0, 1}
    # FedPer's and IFCA's hospitals act with their own models: evaluated per hospital
    assert {"fedper", "fedavg_clustered"} <= set(results["per_hospital"])
    table = (tmp_path / "table.md").read_text()
    for name in METHODS:
        assert f"| {name} |" in table, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["fed"]["round_deadline"] == 1.0
