"""Fixed point, Shamir sharing and mask-based secure aggregation (Bonawitz et al. 2017)."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedrl.config import ConfigError
from fedrl.privacy import quantization, shamir
from fedrl.privacy import secure_aggregation as sa
from fedrl.privacy.quantization import FixedPoint

FP32 = FixedPoint(scale=2.0 ** 16, bits=32, value_bound=1.0)
FP16 = FixedPoint(scale=2.0 ** 8, bits=16, value_bound=1.0)


def _encode(key, x, fp):
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, v: quantization.encode(k, v, fp))(keys, x)


def _plain(q, active, fp):
    return np.asarray(quantization.ring_sum(jnp.where(jnp.asarray(active)[:, None], q, 0), fp))


@pytest.mark.parametrize("fp", [FP32, FP16], ids=["b32", "b16"])
def test_encode_decode_round_trip_and_unbiased(fp):
    x = jax.random.uniform(jax.random.key(0), (20_000,), minval=-1.2, maxval=1.2)
    q = quantization.encode(jax.random.key(1), x, fp)
    assert q.dtype == jnp.uint32 and int(q.max()) <= fp.ring_mask
    clipped = np.clip(np.asarray(x), -1, 1)
    back = np.asarray(quantization.decode(q, fp))
    assert np.max(np.abs(back - clipped)) <= 1.0 / fp.scale + 1e-6
    # Stochastic rounding is unbiased: mean error ~ 0 (std of the mean ~ 0.5/scale/141).
    err = back - clipped
    assert abs(err.mean()) < 4 * 0.5 / fp.scale / np.sqrt(err.size)
    signed = np.asarray(quantization.to_signed(q, fp))
    assert signed.min() < 0 < signed.max()


@pytest.mark.parametrize("fp", [FP32, FP16], ids=["b32", "b16"])
@pytest.mark.parametrize("self_masks", [False, True])
def test_masked_sum_equals_plain_quantized_sum_bit_for_bit(fp, self_masks):
    x = jax.random.uniform(jax.random.key(2), (6, 257), minval=-1, maxval=1)
    q = _encode(jax.random.key(3), x, fp)
    active = np.array([1, 0, 1, 1, 1, 0], bool)
    total = jax.jit(sa.masked_ring_sum, static_argnums=(3, 4))(
        jax.random.key(4), q, jnp.asarray(active), fp, self_masks)
    np.testing.assert_array_equal(np.asarray(total), _plain(q, active, fp))
    # ...and dequantizes to the float sum within K / (2 scale) per coordinate... at most K/scale.
    err = np.asarray(quantization.decode(total, fp)) - np.asarray(x)[active].sum(0)
    assert np.max(np.abs(err)) <= active.sum() / fp.scale


def test_masks_cancel_only_in_the_sum():
    seeds = sa.pair_seeds(jax.random.key(5), 4)
    np.testing.assert_array_equal(np.asarray(seeds), np.asarray(seeds).transpose(1, 0, 2))
    masks = sa.pairwise_masks(seeds, jnp.ones((4, 4), bool), 64, FP32)
    assert np.all(np.asarray(quantization.ring_sum(masks, FP32)) == 0)
    assert np.all(np.asarray(masks) != 0)


def test_single_masked_vector_is_uniform_on_the_ring_while_sum_is_exact():
    dim, k = 65_536, 3
    x = jnp.full((k, dim), 0.25)  # a constant input: maximally non-uniform
    q = _encode(jax.random.key(6), x, FP32)
    seeds = sa.pair_seeds(jax.random.key(7), k)
    y = np.asarray(sa.mask_inputs(q, seeds, jnp.ones(k, bool), FP32))
    top_byte = lambda v: np.bincount((v >> 24).astype(np.int64), minlength=256)  # noqa: E731
    assert stats.chisquare(top_byte(y[0])).pvalue > 1e-3
    assert stats.chisquare(top_byte(np.asarray(q[0]))).pvalue < 1e-12
    lows = (y[0] & 0xFFFF).astype(np.int64)  # low bits uniform too
    assert stats.chisquare(np.bincount(lows >> 8, minlength=256)).pvalue > 1e-3
    np.testing.assert_array_equal(np.asarray(quantization.ring_sum(jnp.asarray(y), FP32)),
                                  _plain(q, np.ones(k, bool), FP32))


@pytest.mark.parametrize("dropped", [[], [0], [4], [1, 3], [0, 2, 5]])
@pytest.mark.parametrize("self_masks", [False, True])
def test_dropout_recovery_is_exact(dropped, self_masks):
    k = 7
    x = jax.random.uniform(jax.random.key(8), (k, 33), minval=-1, maxval=1)
    q = _encode(jax.random.key(9), x, FP32)
    mask = np.zeros(k, bool)
    mask[dropped] = True
    out = sa.secure_aggregate(jax.random.key(10), q, FP32, dropped=mask, threshold=4,
                              use_self_masks=self_masks, rng=random.Random(1))
    np.testing.assert_array_equal(out.ring_sum, _plain(q, ~mask, FP32))
    assert out.recovered_pair_seeds == len(dropped) * (k - len(dropped))
    assert out.recovered_self_seeds == ((k - len(dropped)) if self_masks else 0)
    # Without the recovery the survivors' masked sum is garbage: the recovery matters.
    if dropped:
        raw = quantization.ring_sum(jnp.where(jnp.asarray(~mask)[:, None],
                                              jnp.asarray(out.masked_inputs), 0), FP32)
        assert not np.array_equal(np.asarray(raw), _plain(q, ~mask, FP32))


def test_too_few_survivors_abort():
    q = _encode(jax.random.key(11), jnp.zeros((7, 33)), FP32)   # shapes as above: no recompile
    with pytest.raises(sa.SecureAggregationAborted, match="threshold"):
        sa.secure_aggregate(jax.random.key(12), q, FP32, dropped=[1, 1, 1, 1, 0, 0, 0],
                            threshold=4)


def test_wrap_around_is_refused():
    fp = FixedPoint(scale=2.0 ** 8, bits=16, value_bound=1.0)   # |q| <= 256, 2^15 - 1 limit
    assert fp.max_parties() == 127
    fp.check_parties(127)
    with pytest.raises(ConfigError, match="wrap"):
        fp.check_parties(128)
    q = jnp.zeros((128, 4), jnp.uint32)
    with pytest.raises(ConfigError, match="wrap"):
        sa.masked_ring_sum(jax.random.key(0), q, jnp.ones(128, bool), fp)
    with pytest.raises(ConfigError, match="bits"):
        FixedPoint(bits=64).validate()
    with pytest.raises(ConfigError):
        FixedPoint(scale=2.0 ** 20, bits=16).validate()


def test_shamir_threshold():
    rng = random.Random(0)
    secret = 2 ** 63 + 12345
    shares = shamir.split(secret, n_shares=7, threshold=4, rng=rng)
    for subset in ([0, 1, 2, 3], [6, 2, 4, 1], [0, 1, 2, 3, 4, 5, 6]):
        assert shamir.reconstruct([shares[i] for i in subset]) == secret
    assert shamir.reconstruct(shares[:3]) != secret
    with pytest.raises(ConfigError):
        shamir.split(secret, 3, 4, rng)


def test_masking_program_does_not_grow_with_party_count():
    """No Python loop over parties: the traced program has the same size for any K (given the
    same remainder modulo the party batch of lax.map)."""
    def size(k):
        seeds = sa.pair_seeds(jax.random.key(0), k)
        jaxpr = jax.make_jaxpr(lambda s, p: sa.pairwise_masks(s, p, 16, FP32))(
            seeds, jnp.ones((k, k), bool))
        return len(jaxpr.jaxpr.eqns), len(jaxpr.eqns[0].params["jaxpr"].eqns)
    assert size(3) == size(6)
    assert size(16) == size(64)
