"""Round sync only (target_update_every=0) needs the round sync (its effect on local-only
training is tested in test_fed_round.py::test_local_only_keeps_parties_apart_and_global_fixed),
and the server optimizer's learning-rate default and momentum range."""
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.config import ConfigError
from fedrl.federated.aggregation import server_update
from fedrl.federated.round import (FederatedConfig, make_federated_round, make_server_optimizer,
                                   server_learning_rate)
from tests import toy_env

ROUND_SYNC_ONLY = DQNConfig(hidden_sizes=(8,), batch_size=8, buffer_capacity=64,
                            learning_starts=8, epsilon_decay_steps=50, target_update_every=0)


def test_round_sync_only_without_round_sync_is_refused():
    dqn = make_dqn(ROUND_SYNC_ONLY, toy_env.NUM_CONTEXTS)
    with pytest.raises(ConfigError, match="target_update_every=0"):
        make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(2),
                             FederatedConfig(sync_target_each_round=False))


@pytest.mark.parametrize("opt,expected_step", [("sgd", 0.5), ("momentum", 0.5), ("adam", 1e-2)])
def test_server_learning_rate_default_per_optimizer(opt, expected_step):
    cfg = FederatedConfig(server_optimizer=opt)
    assert cfg.server_learning_rate is None
    params = {"w": jnp.zeros((3,))}
    optimizer = make_server_optimizer(cfg)
    new, _ = server_update(params, {"w": jnp.full((3,), 0.5)}, optimizer.init(params), optimizer)
    # First step: sgd/momentum move by lr * delta = 0.5; Adam by ~lr (it normalises the delta;
    # at lr 1, the old default, every weight moved by ~1 per round).
    np.testing.assert_allclose(np.asarray(new["w"]), expected_step, rtol=1e-2)
    assert server_learning_rate(FederatedConfig(server_optimizer=opt,
                                                server_learning_rate=0.3)) == 0.3


@pytest.mark.parametrize("momentum", [-3.0, 1.0, 5.0])
def test_server_momentum_outside_unit_interval_is_refused(momentum):
    with pytest.raises(ConfigError, match="fed.server_momentum"):
        FederatedConfig(server_optimizer="momentum", server_momentum=momentum).validate()
