"""Fixed-point encoding of real vectors into the ring Z_{2^b} with stochastic rounding.

Secure aggregation (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017) sums integers modulo 2^b, so each client's (clipped) update is
first mapped to fixed point: ``q = stochastic_round(clip(x, -B, B) * scale)``, stored in two's
complement modulo 2^b. Stochastic rounding (floor plus a Bernoulli of the fractional part) is
unbiased, E[q] = x * scale, so the quantization error of a sum of K clients is zero-mean with
std at most sqrt(K)/(2*scale) per coordinate (cf. the distributed discrete Gaussian of
Kairouz, Liu, Steinke, ICML 2021, which uses the same randomized rounding).

Ring arithmetic is done in ``uint32``, whose addition wraps modulo 2^32 natively in XLA;
for b < 32 the result is reduced with ``& (2^b - 1)``. b = 64 would need ``jax_enable_x64``
and is not supported: 32 bits is the supported ring [reconstructed choice; privacy.md allows
32 or 64]. The encoding is exact only while the signed sum stays inside
[-2^(b-1), 2^(b-1)): :meth:`FixedPoint.check_parties` refuses any party count for which
``n_parties * ceil(B * scale)`` could wrap.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.config import ConfigError, require, require_positive

MAX_BITS = 32


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """Fixed-point format: step ``1/scale``, values clipped to [-value_bound, value_bound],
    ring Z_{2^bits} (2 <= bits <= 32)."""
    scale: float = 2.0 ** 16
    bits: int = 32
    value_bound: float = 1.0

    def validate(self) -> None:
        require(isinstance(self.bits, int) and 2 <= self.bits <= MAX_BITS,
                f"FixedPoint.bits must be an integer in [2, {MAX_BITS}] (uint32 ring; 64-bit "
                f"rings need jax_enable_x64 and are not supported), got {self.bits!r}")
        require_positive("FixedPoint.scale", self.scale)
        require_positive("FixedPoint.value_bound", self.value_bound)
        require(self.max_abs_int <= self.half_modulus - 1,
                f"FixedPoint: value_bound * scale = {self.value_bound * self.scale:g} does not "
                f"fit the signed {self.bits}-bit ring (needs ceil(B*scale) < 2^{self.bits - 1})")

    @property
    def max_abs_int(self) -> int:
        """Largest |q| a single client can send.

        :func:`encode` works in float32 and clips to this value, so it must be a float32
        number: the largest float32 <= ceil(B*scale). Taking ceil(B*scale) itself would be
        wrong when float32 cannot represent it (e.g. 2^30 - 10): the float32 clip bound
        rounds *up*, a client could send more than ``max_abs_int``, and
        :meth:`check_parties` (exact integer arithmetic) could accept a party count whose
        sum wraps the ring.
        """
        return _largest_float32_at_most(int(math.ceil(self.value_bound * self.scale)))

    @property
    def half_modulus(self) -> int:
        return 2 ** (self.bits - 1)

    @property
    def ring_mask(self) -> int:
        return 2 ** self.bits - 1

    def max_parties(self) -> int:
        """Most parties whose sum provably cannot wrap the modulus."""
        return (self.half_modulus - 1) // self.max_abs_int

    def check_parties(self, n_parties: int) -> None:
        """Raise ConfigError if ``n_parties`` clients' sum could wrap the ring."""
        self.validate()
        if n_parties * self.max_abs_int > self.half_modulus - 1:
            raise ConfigError(
                f"secure aggregation of {n_parties} parties could wrap Z_2^{self.bits}: "
                f"{n_parties} x ceil(value_bound*scale) = {n_parties} x {self.max_abs_int} "
                f"> 2^{self.bits - 1} - 1; lower scale or value_bound, or use at most "
                f"{self.max_parties()} parties")


def _largest_float32_at_most(m: int) -> int:
    """Largest integer-valued float32 <= m (m >= 0), as an exact Python int."""
    f = np.float32(m)
    if int(f) > m:  # float32 rounded up: step one ulp down
        f = np.nextafter(f, np.float32(0))
    return int(f)


def _reduce(q: jax.Array, fp: FixedPoint) -> jax.Array:
    return q if fp.bits == 32 else q & jnp.uint32(fp.ring_mask)


def encode(key: jax.Array, x: jax.Array, fp: FixedPoint) -> jax.Array:
    """Clip to [-B, B], scale, round stochastically (unbiased), map to Z_{2^b} as uint32."""
    y = jnp.clip(x.astype(jnp.float32), -fp.value_bound, fp.value_bound) * fp.scale
    low = jnp.floor(y)
    up = jax.random.uniform(key, y.shape, jnp.float32) < (y - low)
    # Clip in float before the cast: float32 rounding of B*scale must not overflow int32,
    # and no |q| may exceed max_abs_int, which check_parties relies on. max_abs_int is
    # float32-representable, so this float32 bound is exactly max_abs_int (not rounded up).
    m = np.float32(fp.max_abs_int)
    q = jnp.clip(low + up, -m, m).astype(jnp.int32)
    return _reduce(jax.lax.bitcast_convert_type(q, jnp.uint32), fp)


def to_signed(q: jax.Array, fp: FixedPoint) -> jax.Array:
    """Ring element in [0, 2^b) -> signed int32 in [-2^(b-1), 2^(b-1)) (sign extension)."""
    shift = jnp.uint32(32 - fp.bits)
    return jax.lax.bitcast_convert_type(_reduce(q, fp) << shift, jnp.int32) >> shift.astype(jnp.int32)


def decode(q: jax.Array, fp: FixedPoint) -> jax.Array:
    """Ring element (a single client's value or a sum) -> float32."""
    return to_signed(q, fp).astype(jnp.float32) / jnp.float32(fp.scale)


def ring_sum(q: jax.Array, fp: FixedPoint, axis: int = 0) -> jax.Array:
    """Sum modulo 2^b (uint32 addition wraps; dtype pinned so x64 mode cannot widen it)."""
    return _reduce(jnp.sum(q, axis=axis, dtype=jnp.uint32), fp)


def ring_neg(q: jax.Array, fp: FixedPoint) -> jax.Array:
    """Additive inverse modulo 2^b."""
    return _reduce(jnp.uint32(0) - q, fp)


def ring_add(a: jax.Array, b: jax.Array, fp: FixedPoint) -> jax.Array:
    """a + b modulo 2^b."""
    return _reduce(a + b, fp)


def ring_sub(a: jax.Array, b: jax.Array, fp: FixedPoint) -> jax.Array:
    """a - b modulo 2^b."""
    return _reduce(a - b, fp)


def ring_reduce(q: jax.Array, fp: FixedPoint) -> jax.Array:
    """uint32 values reduced modulo 2^b (identity for b = 32)."""
    return _reduce(q, fp)


def stochastic_round(key: jax.Array, x: jax.Array, fp: FixedPoint) -> jax.Array:
    """Quantize-dequantize (float -> fixed point -> float): the rounding a client's update
    undergoes before secure aggregation, without any masking."""
    return decode(encode(key, x, fp), fp).astype(x.dtype)
