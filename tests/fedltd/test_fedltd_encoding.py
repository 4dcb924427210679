"""EncodeRBG: MD5 against hashlib, salted digests, LSH against collision-probability formulas."""
import hashlib
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from fedrl.config import ConfigError
from fedrl.fedltd.encoding import (LSHConfig, batch_salt, bucket_codes, collision_count,
                                   digests_equal, lsh_buckets, lsh_codes, lsh_params,
                                   lsh_quality, md5_words, salted_digest)


def _hashlib_words(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.md5(data).digest(), "<u4")


# ------------------------------------------------------------------------------------- MD5

@pytest.mark.parametrize("jit", [False, True])
def test_md5_words_equals_hashlib(jit):
    # every message length 0..13 words (0..52 bytes), batched [2, 3]. Eagerly all lengths share
    # the compiled uint32 ops (cheap); under jit each length is its own program, so test two.
    rng = np.random.default_rng(int(jit))
    lengths = [6, 13] if jit else range(14)
    fn = jax.jit(md5_words) if jit else md5_words
    for n in lengths:
        words = rng.integers(0, 2 ** 32, size=(2, 3, n), dtype=np.uint32)
        got = np.asarray(fn(jnp.asarray(words)))
        assert got.shape == (2, 3, 4) and got.dtype == np.uint32
        for idx in np.ndindex(2, 3):
            data = words[idx].astype("<u4").tobytes()
            np.testing.assert_array_equal(got[idx], _hashlib_words(data))


def test_md5_words_known_vector_vmap_and_int32():
    # Shapes [2, 3, n] like the test above, so the eager uint32 ops are already compiled.
    # "abcd" (one word): MD5 = e2fc714c4727ee9395f324cd2e7f331f
    word = np.broadcast_to(np.frombuffer(b"abcd", "<u4"), (2, 3, 1))
    got = np.asarray(md5_words(jnp.asarray(word)))
    assert got[1, 2].astype("<u4").tobytes().hex() == "e2fc714c4727ee9395f324cd2e7f331f"
    words = jnp.asarray(np.random.default_rng(0).integers(0, 2 ** 32, (2, 3, 6), dtype=np.uint32))
    np.testing.assert_array_equal(jax.vmap(md5_words)(words), md5_words(words))
    # int32 words are read as their two's complement bytes
    minus_one = md5_words(jnp.full((2, 3, 1), -1, jnp.int32))
    np.testing.assert_array_equal(minus_one[0, 0], _hashlib_words(b"\xff\xff\xff\xff"))


def test_md5_words_refuses_more_than_one_block():
    with pytest.raises(ValueError, match="n <= 13"):
        md5_words(jnp.zeros((14,), jnp.uint32))


# ------------------------------------------------------------------------- salted digests

def test_salted_digest_layout_platforms_and_salts():
    salt = batch_salt(jax.random.key(0))
    assert salt.shape == (4,) and salt.dtype == jnp.uint32
    ids = jnp.asarray([[0, 1, 2], [7, -1, 123456]], jnp.int32)
    dig = salted_digest(salt, ids, 3)
    assert dig.shape == (2, 3, 4)
    for idx in np.ndindex(2, 3):
        data = struct.pack("<6I", *np.asarray(salt).tolist(), 3, int(ids[idx]) & 0xFFFFFFFF)
        np.testing.assert_array_equal(dig[idx], _hashlib_words(data))
    # equal local ids of two platforms differ; another batch salt changes every digest
    other_platform = salted_digest(salt, ids, 4)
    other_salt = salted_digest(batch_salt(jax.random.key(1)), ids, 3)
    assert not np.any(digests_equal(dig[..., None, :], other_platform.reshape(1, 1, 6, 4)))
    assert not np.any(digests_equal(dig, other_salt))
    # all 6 ids of one platform have distinct digests, and each equals itself
    flat = dig.reshape(6, 4)
    assert np.asarray(digests_equal(flat[:, None], flat[None])).sum() == 6


def test_salted_digest_traced_platform_under_jit_and_vmap():
    salt = batch_salt(jax.random.key(2))
    ids = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
    per_platform = jax.jit(jax.vmap(lambda k: salted_digest(salt, ids, k)))(jnp.arange(3))
    for k in range(3):
        np.testing.assert_array_equal(per_platform[k], salted_digest(salt, ids, k))
    with pytest.raises(ValueError, match="salt"):
        salted_digest(salt[:3], ids, 0)


# ---------------------------------------------------------------------------------- LSH

def _datar_p(c: float, r: float) -> float:
    """Collision probability of one Gaussian p-stable hash at distance c (Datar et al. 2004)."""
    t = r / c
    return 1 - 2 * norm.cdf(-t) - 2 / (math.sqrt(2 * math.pi) * t) * (1 - math.exp(-t * t / 2))


@pytest.mark.parametrize("m", [1, 2])
def test_e2lsh_collision_rate_matches_datar_formula(m):
    # Tables are independent draws, so 3000 tables of one params give 3000 samples per pair.
    r = 1000.0
    cfg = LSHConfig(kind="e2lsh", num_hashes=m, num_tables=3000, bucket_width_m=r,
                    code_hash="mix")
    params = lsh_params(jax.random.key(m), cfg)
    dists = np.array([0.1, 0.5, 1.0, 2.0, 4.0]) * r
    angle = 0.7
    x0, y0 = 12_345.0, 6_789.0
    xa, ya = np.full(5, x0), np.full(5, y0)
    xb, yb = x0 + dists * np.cos(angle), y0 + dists * np.sin(angle)
    hits = collision_count(lsh_codes(params, xa, ya, cfg), lsh_codes(params, xb, yb, cfg))
    rate = np.asarray(hits) / cfg.num_tables
    expected = np.array([_datar_p(c, r) ** m for c in dists])
    np.testing.assert_allclose(rate, expected, atol=0.03)


def test_e2lsh_near_points_collide_in_most_tables_far_points_rarely():
    r = 2000.0
    cfg = LSHConfig(kind="e2lsh", num_hashes=2, num_tables=16, bucket_width_m=r,
                    code_hash="mix")
    params = lsh_params(jax.random.key(5), cfg)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 30_000, 200), rng.uniform(0, 34_000, 200)
    theta = rng.uniform(0, 2 * np.pi, 200)
    base = lsh_codes(params, x, y, cfg)
    near = lsh_codes(params, x + 0.1 * r * np.cos(theta), y + 0.1 * r * np.sin(theta), cfg)
    far = lsh_codes(params, x + 3.5 * r * np.cos(theta), y + 3.5 * r * np.sin(theta), cfg)
    near_share = np.asarray(collision_count(base, near)) / 16
    far_share = np.asarray(collision_count(base, far)) / 16
    assert near_share.mean() > 0.75          # p(0.1 r)^2 ~ 0.85
    assert far_share.mean() < 0.05           # p(3.5 r)^2 ~ 0.013


def test_grid_known_cells_codes_and_shift_probability():
    r = 2000.0
    cfg = LSHConfig(kind="grid", num_hashes=5, num_tables=3, bucket_width_m=r)   # keyed MD5
    params = lsh_params(jax.random.key(3), cfg)
    assert params.a.shape == (3, 2, 2) and params.b.shape == (3, 2)   # num_hashes ignored
    np.testing.assert_array_equal(params.b[0], [0.0, 0.0])           # table 0 unshifted
    xs, ys = np.array([2500.0, -1.0]), np.array([4700.0, -1.0])
    buckets = lsh_buckets(params, xs, ys, cfg)
    np.testing.assert_array_equal(buckets[:, 0], [[1, 2], [-1, -1]])
    codes = lsh_codes(params, xs, ys, cfg)
    np.testing.assert_array_equal(codes, bucket_codes(buckets, params.secret, "md5"))
    # code of table 0, cell (1, 2) = first word of MD5(secret || table 0 || 1 || 2)
    data = struct.pack("<7I", *np.asarray(params.secret).tolist(), 0, 1, 2)
    assert int(codes[0, 0]) == _hashlib_words(data)[0]

    cfg = LSHConfig(kind="grid", num_tables=400, bucket_width_m=r, code_hash="mix")
    params = lsh_params(jax.random.key(4), cfg)
    bx, by = np.asarray(params.b[7])
    cx, cy = 5 * r - bx, 3 * r - by              # corner of a cell of table 7
    dx, dy = 500.0, 1200.0
    xs = np.array([cx + 10, cx + r - 10, 10_000.0, 10_000.0 + dx, 0.0])
    ys = np.array([cy + 5, cy + r - 5, 9_000.0, 9_000.0 + dy, 1999.0])
    codes = lsh_codes(params, xs, ys, cfg)
    np.testing.assert_array_equal(lsh_buckets(params, xs, ys, cfg)[4, 0], [0, 0])
    np.testing.assert_array_equal(codes, bucket_codes(lsh_buckets(params, xs, ys, cfg),
                                                      params.secret, "mix"))
    # two points in the same shifted cell of table 7 collide there
    assert int(codes[0, 7]) == int(codes[1, 7])
    # with a uniform shift, offset (dx, dy) collides w.p. (1 - dx/r)(1 - dy/r)
    rate = float(collision_count(codes[2], codes[3])) / 400
    assert abs(rate - (1 - dx / r) * (1 - dy / r)) < 0.07


@pytest.mark.parametrize("code_hash", ["md5", "mix"])
def test_distinct_bucket_tuples_rarely_share_a_code(code_hash):
    k1, k2 = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
    buckets = jnp.asarray(np.stack([k1.ravel(), k2.ravel()], -1)[:, None, :], jnp.int32)
    codes = np.asarray(bucket_codes(buckets, batch_salt(jax.random.key(9)), code_hash))[:, 0]
    # 65536 tuples: a 32-bit hash gives ~0.5 colliding pairs in expectation
    assert len(codes) - len(np.unique(codes)) <= 4


def test_lsh_quality_matches_bruteforce_numpy():
    rng = np.random.default_rng(11)
    xa, ya = rng.uniform(0, 8000, 40), rng.uniform(0, 8000, 40)
    xb, yb = rng.uniform(0, 8000, 50), rng.uniform(0, 8000, 50)
    radius = 1500.0
    for kind in ("e2lsh", "grid"):
        cfg = LSHConfig(kind=kind, num_hashes=2, num_tables=3, bucket_width_m=1500.0,
                        code_hash="mix")
        params = lsh_params(jax.random.key(12), cfg)
        got = lsh_quality(params, cfg, xa, ya, xb, yb, radius)
        # independent recomputation from the raw hash functions, comparing bucket tuples
        a, b = np.asarray(params.a), np.asarray(params.b)

        def buckets(x, y):
            x32, y32 = x.astype(np.float32), y.astype(np.float32)
            proj = x32[:, None, None] * a[..., 0] + y32[:, None, None] * a[..., 1] + b
            return np.floor(proj / np.float32(1500.0))

        ba, bb = buckets(xa, ya), buckets(xb, yb)
        cand = (ba[:, None] == bb[None]).all(-1).any(-1)
        near = np.hypot(xa[:, None] - xb[None], ya[:, None] - yb[None]) <= radius
        assert near.sum() > 20 and cand.sum() > 20
        assert got["recall"] == pytest.approx((near & cand).sum() / near.sum())
        assert got["false_pair_rate"] == pytest.approx((cand & ~near).sum() / cand.sum())
        assert got["candidates_per_a"] == pytest.approx(cand.sum() / 40)
        assert got["candidates_per_b"] == pytest.approx(cand.sum() / 50)
        assert all(isinstance(v, float) for v in got.values())
        two = lsh_quality(params, cfg, xa, ya, xb, yb, radius, min_tables=2)
        cand2 = (ba[:, None] == bb[None]).all(-1).sum(-1) >= 2
        assert two["recall"] == pytest.approx((near & cand2).sum() / near.sum())
        assert two["candidates_per_a"] == pytest.approx(cand2.sum() / 40)
        assert two["candidates_per_a"] < got["candidates_per_a"]
    exact = lsh_quality(params, LSHConfig(kind="exact"), xa, ya, xb, yb, radius)
    assert exact["recall"] == 1.0 and exact["false_pair_rate"] == 0.0


def test_lsh_deterministic_given_key_and_jittable():
    cfg = LSHConfig()
    x = jnp.linspace(0, 30_000, 7).reshape(7)
    y = jnp.linspace(0, 34_000, 7)
    p1, p2, p3 = (lsh_params(jax.random.key(s), cfg) for s in (0, 0, 1))
    np.testing.assert_array_equal(p1.a, p2.a)
    np.testing.assert_array_equal(lsh_codes(p1, x, y, cfg), lsh_codes(p2, x, y, cfg))
    assert not np.array_equal(lsh_codes(p1, x, y, cfg), lsh_codes(p3, x, y, cfg))
    jitted = jax.jit(lsh_codes, static_argnums=3)(p1, x[None], y[None], cfg)
    assert jitted.shape == (1, 7, 4) and jitted.dtype == jnp.uint32
    np.testing.assert_array_equal(jitted[0], lsh_codes(p1, x, y, cfg))
    assert float(p1.b.min()) >= 0.0 and float(p1.b.max()) < cfg.bucket_width_m
    with pytest.raises(ConfigError, match="exact"):
        lsh_codes(p1, x, y, LSHConfig(kind="exact"))


@pytest.mark.parametrize("field, value", [
    ("kind", "geohash"), ("num_hashes", 0), ("num_hashes", 9), ("num_hashes", 2.0),
    ("num_tables", 0), ("bucket_width_m", -1.0), ("bucket_width_m", float("inf")),
    ("code_hash", "sha1")])
def test_lsh_config_validate_names_the_field(field, value):
    cfg = LSHConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        cfg.validate()
    with pytest.raises(ConfigError, match=field):
        lsh_params(jax.random.key(0), cfg)
    LSHConfig().validate()


def test_bucket_width_may_be_traced():
    """A traced width (the protocol's run-time knob) gives the same tables and codes as the
    config's width; bad concrete widths are refused by name."""
    cfg = LSHConfig(kind="e2lsh", num_hashes=2, num_tables=3, bucket_width_m=1500.0)
    key = jax.random.key(7)
    ref = lsh_params(key, cfg)
    traced = jax.jit(lambda k, w: lsh_params(k, cfg, w))(key, jnp.float32(1500.0))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(traced)):
        np.testing.assert_array_equal(a, b)
    xs = jnp.linspace(0.0, 9_000.0, 50)
    np.testing.assert_array_equal(lsh_codes(ref, xs, xs[::-1], cfg),
                                  lsh_codes(traced, xs, xs[::-1], cfg))
    wide = lsh_params(key, cfg, 3000.0)
    assert float(wide.width) == 3000.0
    np.testing.assert_array_equal(wide.b, 2 * ref.b)  # offsets scale with the width
    for bad in (0.0, -1.0, float("inf"), np.array([1.0, 2.0])):
        with pytest.raises(ConfigError, match="bucket width"):
            lsh_params(key, cfg, bad)
