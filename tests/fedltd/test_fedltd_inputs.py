"""Regression (review findings 12, 13): bad Fed-LTD settings are refused with a ConfigError
naming the field, and run-time knobs cannot switch on what the static config compiled out."""
import math

import pytest

from fedrl.config import ConfigError
from fedrl.fedltd import protocol
from fedrl.fedltd.config import FedLTDConfig
from fedrl.fedltd.encoding import LSHConfig
from fedrl.fedltd.market import MarketConfig


@pytest.mark.parametrize("change, match", [
    ({"collision_bonus": math.inf}, "collision_bonus"),   # inf weights: nothing matched
    ({"collision_bonus": None}, "collision_bonus"),
    ({"mix": "0.5"}, "mix"),
    ({"aggregation_period": True}, "aggregation_period"),  # bools are not integers
    ({"server_k": True}, "server_k"),
    ({"share_models": "no"}, "share_models"),              # a truthy string is not "on"
    ({"decline_far_pairs": "no"}, "decline_far_pairs"),
    ({"weight_lower": -5.0}, "weight_lower"),              # the server never matches <= 0
    ({"lsh": LSHConfig(num_tables=True)}, "num_tables"),
])
def test_bad_fedltd_fields_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        FedLTDConfig(**change).validate()


@pytest.mark.parametrize("change, match", [
    ({"shares": ("a",)}, "shares"), ({"spatial_skew": "x"}, "spatial_skew"),
    ({"shares": (math.nan, 1.0)}, "shares"),
])
def test_bad_market_fields_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        MarketConfig(**change).validate()


def test_knobs_cannot_switch_on_what_the_config_compiled_out():
    with pytest.raises(ConfigError, match="share_models"):
        protocol.Knobs.of(FedLTDConfig(share_models=False), share_models=True)
    with pytest.raises(ConfigError, match="share_decisions"):
        protocol.Knobs.of(FedLTDConfig(share_decisions=False), share_decisions=True)
    with pytest.raises(ConfigError, match="bucket_width_m"):
        protocol.Knobs.of(FedLTDConfig(lsh=LSHConfig(kind="exact")), bucket_width_m=500.0)
    # switching off, or leaving the defaults, stays allowed
    k = protocol.Knobs.of(FedLTDConfig(share_models=False), share_decisions=False)
    assert not bool(k.share_models) and not bool(k.share_decisions)
    protocol.Knobs.of(FedLTDConfig(lsh=LSHConfig(kind="exact")))
