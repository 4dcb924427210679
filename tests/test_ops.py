"""fedrl.ops against NumPy: running counts, n-th True, first True indices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedrl.ops import first_true, nth_true, prefix_count, prefix_sum

masks = st.lists(st.booleans(), min_size=0, max_size=70).map(lambda b: np.array(b, bool))


@settings(max_examples=60, deadline=None)
@given(masks)
def test_prefix_count_equals_cumsum(mask):
    np.testing.assert_array_equal(prefix_count(jnp.asarray(mask)), np.cumsum(mask))


def test_prefix_sum_along_an_axis():
    x = np.random.default_rng(0).integers(-5, 5, (4, 9, 3))
    for axis in (0, 1, -1):
        np.testing.assert_array_equal(prefix_sum(jnp.asarray(x), axis), np.cumsum(x, axis))


@settings(max_examples=60, deadline=None)
@given(masks, st.integers(0, 12), st.sampled_from([None, -1, 999]))
def test_first_true_equals_nonzero(mask, size, fill):
    ref = np.flatnonzero(mask)[:size]
    fill_ref = len(mask) if fill is None else fill
    ref = np.concatenate([ref, np.full(size - len(ref), fill_ref)]).astype(np.int32)
    out = first_true(jnp.asarray(mask), size, fill)
    assert out.dtype == jnp.int32 and out.shape == (size,)
    np.testing.assert_array_equal(out, ref)


def test_first_true_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    mask = rng.random((6, 40)) < 0.2
    for size in (4, 16):  # both code paths (masked minima / prefix count)
        out = jax.jit(jax.vmap(lambda m: first_true(m, size)))(jnp.asarray(mask))
        ref = jax.vmap(lambda m: jnp.nonzero(m, size=size, fill_value=40)[0])(mask)
        np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="1-D"):
        first_true(jnp.asarray(mask), 3)


def test_nth_true():
    mask = np.array([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0]], bool)
    out = nth_true(jnp.asarray(mask), jnp.array([[0, 1, 2, 3]] * 2).T)
    # row r, n = 0..3: index of the (n+1)-th True or 5 when there is none
    np.testing.assert_array_equal(out, [[1, 5], [2, 5], [4, 5], [5, 5]])


def test_first_true_counts_nonzero_entries_and_rejects_bad_sizes():
    ints = jnp.array([0, 2, 1, 0, -1])
    for size in (3, 10):  # both code paths
        np.testing.assert_array_equal(first_true(ints, size),
                                      jnp.nonzero(ints, size=size, fill_value=5)[0])
    with pytest.raises(ValueError, match="size"):
        first_true(ints, -1)


@pytest.mark.parametrize("shape, axis", [((12, 40), -1), ((40, 12), 0), ((3, 9, 30), 1),
                                         ((2, 4, 17), -1), ((8, 0), -1)])
def test_prefix_count_matmul_route_is_exact(shape, axis):
    """Many rows take the matmul route, few rows the scan: both equal NumPy's cumsum, also
    inside jit and vmap and for non-bool masks (nonzero entries count)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, shape) * (rng.random(shape) < 0.6)
    ref = np.cumsum(x != 0, axis=axis)
    out = prefix_count(jnp.asarray(x), axis)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(jax.jit(prefix_count, static_argnums=1)(x, axis), ref)
    if len(shape) >= 2 and shape[-1]:
        batched = jax.vmap(lambda m: prefix_count(m, -1))(jnp.asarray(x))
        np.testing.assert_array_equal(batched, np.cumsum(x != 0, axis=-1))


def test_prefix_count_matmul_route_exact_on_long_rows():
    """Counts up to 4,000 in one row of 16 (the float32 matmul stays exact below 2^24)."""
    mask = np.ones((16, 4000), bool)
    mask[::3, ::7] = False
    np.testing.assert_array_equal(prefix_count(jnp.asarray(mask)), np.cumsum(mask, axis=-1))
