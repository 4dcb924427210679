"""DQNConfig refuses settings under which the agent could never take a gradient step."""
import dataclasses

import pytest

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.config import ConfigError


@pytest.mark.parametrize("change", [
    {"batch_size": 50_000},               # batch larger than the buffer can ever hold
    {"learning_starts": 100_000},         # warm-up longer than the buffer
    {"buffer_capacity": 1},               # buffer smaller than the default batch
])
def test_settings_that_never_update_are_refused(change):
    with pytest.raises(ConfigError, match="dqn.buffer_capacity"):
        make_dqn(dataclasses.replace(DQNConfig(), **change), 5)


def test_buffer_exactly_as_large_as_batch_and_warmup_is_accepted():
    make_dqn(DQNConfig(batch_size=64, learning_starts=64, buffer_capacity=64), 5)
