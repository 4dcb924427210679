"""Hospital experiment: the opt-in non-IID methods (fedper, fedavg_clustered): their setup,
uplink figures, table notes and config errors (no training here)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import hospital
from experiments.common import execute
from fedrl.config import ConfigError
from fedrl.federated.round import ClusteredFederatedState, FederatedState


def test_noniid_methods_are_opt_in_with_their_own_fed_config():
    default = hospital.HospitalExperimentConfig()
    assert "fedper" not in default.methods and "fedavg_clustered" not in default.methods
    assert default.personal_layers == 1 and default.num_clusters == 2
    cfg = dataclasses.replace(hospital.smoke(), methods=("fedavg", "fedper", "fedavg_clustered"),
                              personal_layers=2, num_clusters=3, num_hospitals=3)
    cfg.validate()
    with pytest.raises(ConfigError, match="num_clusters=3 exceeds num_hospitals=2"):
        dataclasses.replace(cfg, num_hospitals=2).validate()
    params = {"leaf": np.zeros((cfg.num_hospitals, 3))}
    fedper = hospital.method_setup("fedper", cfg, params)[1]
    clustered = hospital.method_setup("fedavg_clustered", cfg, params)[1]
    assert (fedper.personal_layers, fedper.num_clusters) == (2, 1)
    assert (clustered.personal_layers, clustered.num_clusters) == (0, 3)
    assert hospital.method_setup("fedavg", cfg, params)[1] == cfg.fed
    assert hospital.method_aggregator("fedper", cfg).kind == "fedavg"


def _params(cfg, clusters=1):
    """One model of the smoke network on the hospital observation (abstract: no compute)."""
    dqn = hospital.make_dqn(cfg.dqn, hospital.hospital.NUM_ACTIONS)
    obs_dim = jax.eval_shape(hospital.hospital.reset, jax.random.key(0), jax.tree.map(
        lambda x: x[0], hospital.hospital.make_hospitals(cfg.env, 1, jax.random.key(0))))[0]
    one = jax.eval_shape(lambda k: dqn.init_params(k, obs_dim.shape[-1]), jax.random.key(0))
    shape = (clusters,) if clusters > 1 else ()
    return jax.tree.map(lambda s: jnp.zeros(shape + s.shape, s.dtype), one)


def test_uplink_counts_only_what_each_method_sends():
    cfg = dataclasses.replace(hospital.smoke(), methods=("fedavg", "fedper", "fedavg_clustered"))
    params = _params(cfg)
    d = sum(int(x.size) for x in jax.tree.leaves(params))
    head = 32 * hospital.hospital.NUM_ACTIONS + hospital.hospital.NUM_ACTIONS   # Dense_2
    state = FederatedState(global_params=params, server_opt_state=None, aggregator_state=None,
                           parties=None, round=None)
    fedavg = hospital.uplink_record("fedavg", cfg, cfg.fed, state)
    fed_per = dataclasses.replace(cfg.fed, personal_layers=1)
    fedper = hospital.uplink_record("fedper", cfg, fed_per, state)
    assert fedavg["uplink_bytes_per_party_round"] == 4 * (d + 1)
    assert fedper["num_params"] == d and fedper["uplink_num_params"] == d - head
    assert fedper["uplink_bytes_per_party_round"] == 4 * (d - head + 1)
    assert fedper["expected_uplink_bytes_per_round"] == 2 * 4 * (d - head + 1)
    clustered_state = ClusteredFederatedState(
        global_params=_params(cfg, clusters=2), server_opt_state=None, aggregator_state=None,
        parties=None, round=None, clusters=jnp.array([1, 0], jnp.int32))
    fed_c = dataclasses.replace(cfg.fed, num_clusters=2)
    clustered = hospital.uplink_record("fedavg_clustered", cfg, fed_c, clustered_state)
    assert clustered["num_params"] == d and clustered["cluster_assignment"] == [1, 0]
    assert clustered["uplink_bytes_per_party_round"] == 4 * (d + 1) + 4
    # ... and the table notes both, with the cluster membership.
    methods = {"fedavg": {"kind": "dqn", **fedavg}, "fedper": {"kind": "dqn", **fedper},
               "fedavg_clustered": {"kind": "dqn", **clustered}}
    table = hospital._tables(cfg, methods, {}, [1.0, 2.0])
    assert f"`fedper` {4 * (d - head + 1):,} bytes" in table
    assert f"{d - head:,} shared of {d:,} parameters" in table
    assert "cluster 0: hospitals [1]; cluster 1: hospitals [0]" in table


@pytest.mark.parametrize("assignment,match", [
    ("personal_layers=3", r"personal_layers must be an integer in \[1, 2\]"),   # 3 Dense layers
    ("personal_layers=0", "personal_layers must be"),
    ("num_clusters=1", "num_clusters must be an integer >= 2"),
    ("fed.personal_layers=1", "instead of fed.personal_layers"),
    ("fed.num_clusters=2", "instead of fed.personal_layers / fed.num_clusters"),
])
def test_bad_noniid_settings_are_refused(assignment, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        execute(hospital.EXPERIMENT, "smoke", tmp_path, seed=0, overrides=[assignment],
                progress=False)
