"""Tests of choosing the aggregation by config (FedAvg, secure, DP, DP + secure)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.federated.aggregation import Cohort
from fedrl.federated.aggregators import AggregatorConfig, build_aggregator
from fedrl.federated.round import FederatedConfig
from fedrl.privacy import accounting

POISSON = FederatedConfig(num_rounds=7, local_steps=50, sampling="poisson", sampling_rate=0.5)


def _cohort(k=6, seed=0):
    rng = np.random.default_rng(seed)
    return Cohort(updates={"w": jnp.asarray(rng.normal(size=(k, 5, 3)) * 0.2, jnp.float32)},
                  weights=jnp.asarray(rng.integers(10, 50, k), jnp.float32),
                  mask=jnp.asarray(rng.random(k) < 0.8))


def _aggregate(kind, fed=POISSON, **kw):
    agg, record = build_aggregator(AggregatorConfig(kind=kind, **kw), 6, fed)
    out, _ = jax.jit(agg.update)(_cohort(), agg.init(None), jax.random.key(3))
    return np.asarray(out["w"]), record


def test_secure_equals_fedavg_up_to_quantization():
    plain, none = _aggregate("fedavg")
    secure, _ = _aggregate("secure")
    assert none is None
    np.testing.assert_allclose(secure, plain, atol=1e-6)


def test_dp_secure_equals_dp_up_to_quantization_and_records_epsilon():
    dp, record = _aggregate("dp", noise_multiplier=0.8, clip_norm=0.5)
    dps, record2 = _aggregate("dp_secure", noise_multiplier=0.8, clip_norm=0.5)
    np.testing.assert_allclose(dps, dp, atol=1e-3)
    assert record == record2
    assert record["epsilon"] == pytest.approx(accounting.epsilon(0.8, 0.5, 7, 1e-5, "pld"))
    assert record["delta"] == 1e-5 and record["clip_norm"] == 0.5


def test_dp_needs_poisson_sampling():
    with pytest.raises(ConfigError, match="poisson"):
        build_aggregator(AggregatorConfig(kind="dp"), 6, FederatedConfig())


@pytest.mark.parametrize("change,match", [({"kind": "fedprox"}, "aggregator.kind"),
                                          ({"noise_multiplier": 0.0}, "noise_multiplier"),
                                          ({"delta": 1.0}, "aggregator.delta"),
                                          ({"secure_min_participants": 0},
                                           "secure_min_participants")])
def test_bad_aggregator_config(change, match):
    with pytest.raises(ConfigError, match=match):
        build_aggregator(dataclasses.replace(AggregatorConfig(), **change), 6, POISSON)
