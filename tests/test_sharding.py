"""fedrl.sharding on the devices this process has (one CPU device in the test run; the
multi-device paths run in subprocesses: tests/federated/test_fed_round_sharded.py and
tests/dispatch/test_dispatch_sharded.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.sharding import local_mesh, pad_leading, padded_size, split_leading, unpad_leading


def test_pad_and_unpad_leading():
    tree = {"a": jnp.arange(3.0), "b": jnp.arange(6).reshape(3, 2)}
    padded = pad_leading(tree, 5)
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 0, 0])  # copies of entry 0
    np.testing.assert_array_equal(padded["b"][3:], [[0, 1], [0, 1]])
    jax.tree.map(np.testing.assert_array_equal, unpad_leading(padded, 3), tree)
    assert pad_leading(tree, 3) is tree and unpad_leading(tree, 3) is tree


def test_local_mesh_and_split_on_one_device():
    mesh = local_mesh("parties", 0, size=7)
    assert mesh.axis_names == ("parties",) and mesh.devices.size == jax.local_device_count()
    assert padded_size(7, mesh) % mesh.devices.size == 0 and padded_size(7, mesh) >= 7
    if mesh.devices.size == 1:
        fn = lambda x: x * 2  # noqa: E731
        assert split_leading(fn, mesh) is fn


@pytest.mark.parametrize("devices", [-1, 1.5, jax.local_device_count() + 1])
def test_local_mesh_errors_name_the_setting(devices):
    with pytest.raises(ConfigError, match="fed.devices"):
        local_mesh("parties", devices, setting="fed.devices")
