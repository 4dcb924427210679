"""Platforms spread over host devices (``run_platforms(mode="shard")``) compute what the
one-device ``lax.map`` computes. Run in a subprocess with 2 CPU host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before JAX starts)."""
import textwrap
from pathlib import Path

from tests.fresh_process import run_python

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from fedrl.data.city import generate_day
    from fedrl.dispatch import simulator as sim
    from dispatch_setup import CITY, SMALL, stacked_days

    assert jax.local_device_count() == 2, jax.devices()
    days = stacked_days(generate_day(CITY, seed=3))   # 3 platforms: padded to 4 on 2 devices
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    one, log1 = sim.run_platforms(days, keys, SMALL, mode="map")
    two, log2 = sim.run_platforms(days, keys, SMALL, mode="shard")
    assert float(np.min(two.totals.completed)) > 0
    jax.tree.map(np.testing.assert_array_equal, (two, log2), (one, log1))
    try:
        sim.run_platforms(days, keys, SMALL, mode="shard", devices=3)
    except ValueError as err:
        assert "devices=3" in str(err), err
    else:
        raise AssertionError("3 devices on a 2-device host did not raise")
    print("SHARDED-OK")
""")


def test_platforms_over_2_host_devices_equal_one_device():
    out = run_python(SCRIPT, host_devices=2, paths=[Path(__file__).resolve().parent])
    assert "SHARDED-OK" in out
