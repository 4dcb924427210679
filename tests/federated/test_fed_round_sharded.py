"""The federated round spread over several devices (``shard_map`` over a ``parties`` axis)
computes what it computes on one device. Run in a subprocess with 8 CPU host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts)."""
import textwrap

from tests.fresh_process import run_python

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)
    from fedrl.agents.dqn import DQNConfig, make_dqn
    from fedrl.federated.round import FederatedConfig, make_federated_round
    from tests import toy_env

    assert jax.local_device_count() == 8, jax.devices()
    dqn = make_dqn(DQNConfig(hidden_sizes=(16, 16), batch_size=16, buffer_capacity=500,
                             learning_starts=32, epsilon_decay_steps=200,
                             target_update_every=25), toy_env.NUM_CONTEXTS)

    def run(devices, **fed):
        cfg = FederatedConfig(num_rounds=2, local_steps=50, devices=devices, **fed)
        rnd = make_federated_round(dqn, toy_env.ENV, toy_env.stacked_params(5), cfg)
        state = rnd.init(jax.random.key(0))
        for r in range(2):
            state, metrics = rnd.step(state, jax.random.key(7))
        # With one party per device the parties' state stays split between rounds.
        split = not state.parties.buffer.data.obs.sharding.is_fully_replicated
        assert split == (rnd.num_devices == 5), (rnd.num_devices, split)
        return rnd.num_devices, jax.tree.map(np.asarray, (state.global_params, state.parties))

    # Fixed cohort on automatic devices (one per party: 5, state kept split); Poisson sampling
    # with unequal budgets (the masked-update branch) on 4 devices (5 parties padded to 8).
    for devices, expected_n, fed in ((0, 5, {}),
                                     (4, 4, {"sampling": "poisson", "sampling_rate": 0.6,
                                             "min_local_fraction": 0.5})):
        n1, one = run(1, **fed)
        n, many = run(devices, **fed)
        assert (n1, n) == (1, expected_n), (devices, n1, n)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     many, one)
    # An explicit device count above the cohort is capped at one device per party.
    from fedrl.federated.round import party_mesh
    assert party_mesh(8, cohort=5).devices.size == 5 and party_mesh(0, cohort=3).devices.size == 3
    print("SHARDED-OK")
""")


def test_round_over_8_host_devices_equals_one_device():
    assert "SHARDED-OK" in run_python(SCRIPT, host_devices=8)
