"""EncodeRBG: what a platform reveals of its residual bipartite graph to the Fed-LTD server.

Fed-LTD (Wang et al., "Fed-LTD: Towards Cross-Platform Ride Hailing via Federated Learning to
Dispatch", KDD 2022) shares each platform's residual graph (drivers and orders left unmatched
after local dispatch) with a server that looks for near *cross-platform* driver/order pairs. The
server must learn neither ids nor coordinates, so a platform sends

* ids as salted MD5 digests (RFC 1321): ``MD5(salt || platform || id)``. The salt is drawn per
  batch from a key the platforms share and the server never sees, so the *digests* of one batch
  cannot be linked to another batch nor brute-forced over the small id space [reconstructed].
  The *location codes* below are a different matter: by default their keyed hash uses one
  secret for the whole day, so the same place gets the same L-code tuple in every batch, and
  the server can link an idle driver who has not moved (and orders from one spot) across
  batches by that tuple (with 4 grid tables, 2 km cells, the tuple is unique within a batch for
  ~97 % of 60 and ~73 % of 1000 uniform drivers in a 30 x 34 km city).
  ``LSHConfig.rekey_codes_per_batch`` re-keys the code hash per batch (collisions within a batch
  are unchanged) and removes that link;
* locations as locality-sensitive hash codes: p-stable E2LSH (Datar, Immorlica, Indyk, Mirrokni,
  "Locality-sensitive hashing scheme based on p-stable distributions", SoCG 2004),
  ``h(x) = floor((a . x + b) / r)`` with Gaussian ``a``, ``m`` hashes ANDed per table and ``L``
  tables ORed, or shifted square grids. The bucket integers of a table are folded into one
  uint32 code by a keyed hash, so the server learns only which points share a bucket.

Everything here is pure ``jax.numpy`` on uint32 words, so it runs inside ``jit``, ``vmap`` and
``lax.scan`` (the whole simulated day is one jitted scan): MD5 is written out, not ``hashlib``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedrl.config import ConfigError, require, require_positive

__all__ = ["md5_words", "salted_digest", "batch_salt", "digests_equal", "LSHConfig", "LSHParams",
           "lsh_params", "lsh_buckets", "bucket_codes", "lsh_codes", "collision_count",
           "lsh_quality"]

# ---------------------------------------------------------------------------------------------
# MD5 (RFC 1321), one 512-bit block.

# Per-step additive constants T[i] = floor(2^32 |sin(i + 1)|) and left-rotation amounts
# (RFC 1321, section 3.4).
_MD5_K = tuple(int(abs(math.sin(i + 1)) * 2 ** 32) & 0xFFFFFFFF for i in range(64))
_MD5_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_MD5_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_EMPTY = (0xD98C1DD4, 0x04B2008F, 0x980980E9, 0x7E42F8EC)   # MD5(b"") as 4 LE words
MD5_MAX_WORDS = 13   # 4 n bytes + 0x80 byte + 8 length bytes must fit in 64 bytes


def _u32(value: int) -> jax.Array:
    return jnp.uint32(value & 0xFFFFFFFF)


def _rotl(x: jax.Array, s: int) -> jax.Array:
    return (x << _u32(s)) | (x >> _u32(32 - s))


def _as_uint32(x: jax.Array) -> jax.Array:
    """Reinterpret 32-bit integers as uint32 (two's complement: -1 -> 0xFFFFFFFF)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint32:
        return x
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"expected integer words, got dtype {x.dtype}")
    return jax.lax.bitcast_convert_type(x.astype(jnp.int32), jnp.uint32)


def md5_words(words: jax.Array) -> jax.Array:
    """MD5 (RFC 1321) of the little-endian byte string of ``words``.

    ``words``: uint32[..., n] with n <= 13, so that the 4 n message bytes, the 0x80 pad byte and
    the 8-byte bit length fit one 512-bit block. Returns uint32[..., 4]: the chaining words
    (A, B, C, D) after the block, i.e. the 16 digest bytes are the little-endian bytes of these
    four words (``np.frombuffer(hashlib.md5(b).digest(), '<u4')``). Batched over the leading
    dims; the 64 steps are unrolled at trace time (straight-line uint32 code, jit/vmap-able).
    """
    words = _as_uint32(words)
    n = words.shape[-1] if words.ndim else 0
    if words.ndim == 0 or n > MD5_MAX_WORDS:
        raise ValueError(f"md5_words takes uint32[..., n] with n <= {MD5_MAX_WORDS} words "
                         f"(one 512-bit block), got shape {words.shape}")
    batch = words.shape[:-1]
    if n == 0:
        # The digest of the empty string is a constant; XLA's constant folding of the 64 steps
        # logs "algebraic simplifier ... stuck" warnings, so hand it the known value instead.
        return jnp.broadcast_to(jnp.asarray(_MD5_EMPTY, jnp.uint32), batch + (4,))
    zero = jnp.zeros(batch, jnp.uint32)
    # Padding (RFC 1321 3.1-3.2): a 1 bit (byte 0x80, the low byte of word n in little-endian
    # order), zeros, then the message length in bits as a 64-bit little-endian integer.
    block = [words[..., j] for j in range(n)] + [zero + _u32(0x80)]
    block += [zero] * (14 - len(block)) + [zero + _u32(32 * n), zero]
    a, b, c, d = (zero + _u32(v) for v in _MD5_INIT)
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = f + a + _u32(_MD5_K[i]) + block[g]
        a, d, c, b = d, c, b, b + _rotl(f, _MD5_S[i])
    return jnp.stack([a + _u32(_MD5_INIT[0]), b + _u32(_MD5_INIT[1]),
                      c + _u32(_MD5_INIT[2]), d + _u32(_MD5_INIT[3])], axis=-1)


def batch_salt(key: jax.Array) -> jax.Array:
    """uint32[4] salt (128 bits) from a PRNG key.

    [reconstructed] The platforms derive the key per batch from a seed they share (e.g.
    ``fold_in(shared_key, batch)``); the server never sees it, so it cannot recompute digests of
    guessed ids, and digests of two batches cannot be linked.
    """
    return jax.random.bits(key, (4,), jnp.uint32)


def salted_digest(salt: jax.Array, ids: jax.Array, platform) -> jax.Array:
    """``MD5(salt[0..3] || uint32(platform) || uint32(id))`` -> uint32[..., 4] for ids[...].

    Byte layout (24 bytes, all words little-endian): ``struct.pack('<6I', *salt, platform, id)``.
    Negative ids (e.g. -1 padding) are hashed as their two's complement uint32. The platform
    index is hashed with the id [reconstructed], so equal local ids of two platforms get
    different digests. ``platform`` is a Python int or a traced int32 scalar.
    """
    ids = _as_uint32(ids)
    salt = _as_uint32(salt)
    if salt.shape != (4,):
        raise ValueError(f"salt must be uint32[4] (see batch_salt), got shape {salt.shape}")
    platform = _as_uint32(jnp.asarray(platform, jnp.int32) if isinstance(platform, int)
                          else platform)
    if platform.ndim != 0:
        raise ValueError(f"platform must be a scalar, got shape {platform.shape}")
    words = [jnp.broadcast_to(s, ids.shape) for s in salt]
    words += [jnp.broadcast_to(platform, ids.shape), ids]
    return md5_words(jnp.stack(words, axis=-1))


def _word_equalities(a, b) -> list[jax.Array]:
    """``a[..., w] == b[..., w]`` for each word w of the (short) last axis, broadcasting the
    leading dims. Combined elementwise by the callers: a bool/int reduction over the last axis
    is a slow row reduction on XLA:CPU."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return [a[..., w] == b[..., w] for w in range(jnp.broadcast_shapes(a.shape, b.shape)[-1])]


def digests_equal(a: jax.Array, b: jax.Array) -> jax.Array:
    """bool[...]: all 4 digest words equal (broadcasting over the leading dims)."""
    return functools.reduce(jnp.logical_and, _word_equalities(a, b))


# ---------------------------------------------------------------------------------------------
# Locality-sensitive hashing of locations.

LSH_KINDS = ("e2lsh", "grid", "exact")
CODE_HASHES = ("md5", "mix")


@dataclasses.dataclass(frozen=True)
class LSHConfig:
    """Location hashing of the residual graph (hashable: a static jit argument).

    kind: ``"e2lsh"`` p-stable LSH (Datar et al. 2004); ``"grid"`` shifted square grids of width
      r, axis-aligned (the two axes are the table's two hashes, so ``num_hashes`` is ignored);
      ``"exact"`` no hashing: oracle/test mode in which the server gets true distances — NOT
      private; the protocol handles it, :func:`lsh_codes` refuses it.
    num_hashes: m hash functions ANDed inside a table (two points share a table's code when all
      m bucket integers agree). e2lsh only.
    num_tables: L tables ORed (a candidate pair shares >= 1 table).
    bucket_width_m: r in metres; defaults to the 2 km pick-up radius [reconstructed].
    code_hash: how a table's m bucket integers become one uint32 code [reconstructed]:
      ``"md5"`` keyed MD5 (secret salt from the LSH key) truncated to its first word — one-way,
      the server learns only equality of codes; ``"mix"`` a keyed multiply-xorshift (murmur3
      fmix32) chain — cheaper but invertible, so a curious server could recover relations
      between bucket integers. Both give distinct m-tuples colliding with probability ~2^-32.
    """
    kind: str = "e2lsh"
    num_hashes: int = 2
    num_tables: int = 4
    bucket_width_m: float = 2000.0
    code_hash: str = "md5"
    # re-key the code hash every batch (a fresh secret from the batch's key, shared by the
    # platforms, never by the server): the bucket integers stay, so collisions *within* a
    # batch are unchanged, but a point's codes differ from batch to batch and the server
    # can no longer link an idle driver (or a spot) across batches by its code tuple.
    # Off: one secret per day (codes cached per driver; the linkability of review finding
    # 1). Costs one code hash of every sent driver per batch (docs/fedltd_encoding.md)
    rekey_codes_per_batch: bool = False

    def validate(self) -> None:
        require(self.kind in LSH_KINDS,
                f"kind must be one of {list(LSH_KINDS)}, got {self.kind!r}")
        is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        require(is_int(self.num_hashes) and 1 <= self.num_hashes <= 8,
                f"num_hashes must be an int in [1, 8] (the keyed MD5 code hashes 4 salt words, "
                f"the table index and the m buckets in one block), got {self.num_hashes!r}")
        require(is_int(self.num_tables) and self.num_tables >= 1,
                f"num_tables must be an int >= 1, got {self.num_tables!r}")
        require_positive("bucket_width_m", self.bucket_width_m)
        require(isinstance(self.rekey_codes_per_batch, (bool, np.bool_)),
                f"rekey_codes_per_batch must be a bool, got {self.rekey_codes_per_batch!r}")
        require(self.code_hash in CODE_HASHES,
                f"code_hash must be one of {list(CODE_HASHES)}, got {self.code_hash!r}")

    @property
    def hashes_per_table(self) -> int:
        """m actually used: the two grid axes for ``grid``, ``num_hashes`` otherwise."""
        return 2 if self.kind == "grid" else self.num_hashes


@struct.dataclass
class LSHParams:
    """Hash functions shared by the platforms, derived from a key the server does not know.

    a: f32[L, m, 2] projection directions (grid: the x and y unit vectors).
    b: f32[L, m] offsets in [0, r) (grid: the shift of each table; table 0 unshifted).
    secret: uint32[4] key of the code hash (without it the server could hash every bucket
      tuple of the city itself and read off the buckets).
    width: f32[] the bucket width r in metres (an array, so that one compiled Fed-LTD day
      serves every width: ``protocol.Knobs.bucket_width_m``).
    """
    a: jax.Array
    b: jax.Array
    secret: jax.Array
    width: jax.Array


def lsh_params(key: jax.Array, cfg: LSHConfig, width=None) -> LSHParams:
    """Draw the L tables of hash functions. ``"exact"`` gets e2lsh-shaped params it never uses,
    so the protocol's state has one pytree structure whatever the kind.

    ``width``: the bucket width r in metres, default ``cfg.bucket_width_m``; it may be traced
    (a run-time knob of the compiled day). A concrete width must be finite and > 0.
    """
    cfg.validate()
    if width is None:
        width = cfg.bucket_width_m
    if isinstance(width, (int, float, np.number, np.ndarray)):  # concrete: check it here
        w = np.asarray(width, np.float64)
        if w.shape != () or not np.isfinite(w) or not w > 0:
            raise ConfigError(f"bucket width must be a finite scalar > 0 metres, got {width!r}")
    return _lsh_params(key, jnp.asarray(width, jnp.float32), cfg)


# jit with the config static: one compiled program instead of many small eager ops (this is
# called eagerly, once per run / per key); inside an outer jit it is simply inlined.
@functools.partial(jax.jit, static_argnames="cfg")
def _lsh_params(key: jax.Array, r: jax.Array, cfg: LSHConfig) -> LSHParams:
    key_a, key_b, key_s = jax.random.split(key, 3)
    num_tables, m = cfg.num_tables, cfg.hashes_per_table
    if cfg.kind == "grid":
        a = jnp.broadcast_to(jnp.eye(2, dtype=jnp.float32), (num_tables, 2, 2))
        b = jax.random.uniform(key_b, (num_tables, 2), jnp.float32, 0.0, r)
        b = b.at[0].set(0.0)   # table 0 is the plain grid (known cells; easy to read in tests)
    else:
        # 2-stable (Gaussian) directions for the Euclidean distance (Datar et al. 2004, 3.1).
        a = jax.random.normal(key_a, (num_tables, m, 2), jnp.float32)
        b = jax.random.uniform(key_b, (num_tables, m), jnp.float32, 0.0, r)
    # uniform() can round up to r in float32; keep b in [0, r).
    b = jnp.where(b >= r, 0.0, b)
    return LSHParams(a=a, b=b, secret=jax.random.bits(key_s, (4,), jnp.uint32), width=r)


@functools.partial(jax.jit, static_argnames="cfg")
def lsh_buckets(params: LSHParams, x: jax.Array, y: jax.Array, cfg: LSHConfig) -> jax.Array:
    """int32[..., L, m]: the bucket integers floor((a . (x, y) + b) / r) of every table (r is
    ``params.width``; ``cfg`` gives the kind and table counts)."""
    x = jnp.asarray(x, jnp.float32)[..., None, None]
    y = jnp.asarray(y, jnp.float32)[..., None, None]
    proj = x * params.a[..., 0] + y * params.a[..., 1] + params.b
    return jnp.floor(proj / params.width).astype(jnp.int32)


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijective multiply-xorshift avalanche."""
    h = h ^ (h >> _u32(16))
    h = h * _u32(0x85EBCA6B)
    h = h ^ (h >> _u32(13))
    h = h * _u32(0xC2B2AE35)
    return h ^ (h >> _u32(16))


def bucket_codes(buckets: jax.Array, secret: jax.Array, code_hash: str = "md5") -> jax.Array:
    """uint32[..., L]: fold each table's m bucket integers (int32[..., L, m]) into one code.

    The table index is hashed in too, so equal tuples in different tables get unrelated codes.
    """
    buckets = _as_uint32(buckets)
    secret = _as_uint32(secret)
    num_tables, m = buckets.shape[-2:]
    table = jnp.broadcast_to(jnp.arange(num_tables, dtype=jnp.uint32), buckets.shape[:-1])
    if code_hash == "md5":
        salt = jnp.broadcast_to(secret, buckets.shape[:-1] + (4,))
        return md5_words(jnp.concatenate([salt, table[..., None], buckets], axis=-1))[..., 0]
    if code_hash == "mix":
        # Each step is a bijection of the next bucket integer for a fixed running state, so
        # tuples differing only in their last integer never collide; others collide ~2^-32.
        h = _fmix32(secret[0] ^ (table * _u32(0x9E3779B1)) ^ secret[1])
        for j in range(m):
            h = _fmix32((h * _u32(0x9E3779B1) + secret[2]) ^ buckets[..., j])
        return h ^ secret[3]
    raise ValueError(f"code_hash must be one of {list(CODE_HASHES)}, got {code_hash!r}")


@functools.partial(jax.jit, static_argnames="cfg")   # eager callers get one program, not ~700 ops
def lsh_codes(params: LSHParams, x: jax.Array, y: jax.Array, cfg: LSHConfig) -> jax.Array:
    """uint32[..., L]: per table, the m integers floor((a . (x, y) + b) / r) hashed to one code.

    x, y in metres, any (equal or broadcastable) leading shape. Distinct m-tuples collide with
    probability about 2^-32 (a 32-bit keyed hash), negligible next to the LSH's own false pairs.
    Padded slots get codes like any point: the protocol must mask them out of the candidates.
    """
    if cfg.kind == "exact":
        raise ConfigError("kind='exact' has no hash codes: the server compares true distances "
                          "(oracle mode, not private); the protocol must handle it")
    return bucket_codes(lsh_buckets(params, x, y, cfg), params.secret, cfg.code_hash)


def collision_count(codes_a: jax.Array, codes_b: jax.Array) -> jax.Array:
    """int32[...]: number of tables in which the codes are equal, broadcasting the leading dims.

    For all pairs pass ``codes_a[:, None, :]`` and ``codes_b[None, :, :]`` (-> [Na, Nb]). A pair
    is a candidate when the count is >= 1 (OR over tables; AND over the m hashes is already in
    each code).
    """
    return sum(e.astype(jnp.int32) for e in _word_equalities(codes_a, codes_b))


def lsh_quality(params: LSHParams, cfg: LSHConfig, xa, ya, xb, yb, radius_m: float,
                min_tables: int = 1) -> dict:
    """Candidate quality of the hashing over all pairs (a_i, b_j), for experiment table 4.

    A pair is a candidate when its codes agree in >= ``min_tables`` tables (1: the plain OR over
    tables; a larger threshold trades recall for fewer false pairs).
    recall: share of the near pairs (distance <= radius_m) that are candidates.
    false_pair_rate: share of the colliding pairs that are not near.
    candidates_per_a / candidates_per_b: mean number of colliding partners of a point of each
    side; near_per_a: mean number of true near partners of an a point (for scale).
    Computed on the host (NumPy, [Na, Nb, L] pairs): an analysis helper, not for the jitted day.
    ``"exact"`` returns the oracle (candidates = near pairs). NaN where a share is 0/0.
    """
    xa, ya, xb, yb = (np.asarray(v, np.float64).ravel() for v in (xa, ya, xb, yb))
    dist = np.hypot(xa[:, None] - xb[None, :], ya[:, None] - yb[None, :])
    near = dist <= radius_m
    if cfg.kind == "exact":
        cand = near
    else:
        ca = np.asarray(lsh_codes(params, xa.astype(np.float32), ya.astype(np.float32), cfg))
        cb = np.asarray(lsh_codes(params, xb.astype(np.float32), yb.astype(np.float32), cfg))
        cand = (ca[:, None, :] == cb[None, :, :]).sum(axis=-1) >= min_tables
    n_near, n_cand = int(near.sum()), int(cand.sum())

    def share(num: int, den: int) -> float:
        return float(num / den) if den else float("nan")

    return {
        "recall": share(int((near & cand).sum()), n_near),
        "false_pair_rate": share(int((cand & ~near).sum()), n_cand),
        "candidates_per_a": share(n_cand, len(xa)),
        "candidates_per_b": share(n_cand, len(xb)),
        "near_per_a": share(n_near, len(xa)),
        "near_pairs": float(n_near),
        "candidate_pairs": float(n_cand),
    }
