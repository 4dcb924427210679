"""Mask-based secure aggregation (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017), simulated faithfully in JAX.

Each party i holds a fixed-point vector q_i in Z_{2^b} (:mod:`fedrl.privacy.quantization`).
Every pair i < j shares a seed s_ij; party i sends

    y_i = q_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij) [+ PRG(b_i)]   (mod 2^b)

so the pairwise masks cancel in sum_i y_i and the server learns only the sum, bit for bit.
A single y_i is uniform on the ring whatever q_i is. The optional self-mask PRG(b_i)
("double masking") protects a party whose y_i arrives late after it was declared dropped; the
server removes it with Shamir shares of b_i held by the surviving parties.

Dropouts (:func:`secure_aggregate`): if party u drops after the others masked with s_uv, the
survivors hand the server Shamir t-of-n shares (:mod:`fedrl.privacy.shamir`) of s_uv, so it can
regenerate and remove PRG(s_uv). For any party the server recovers either its pair seeds
(dropped) or its self-mask seed (survived), never both, as in the paper.

Simulation, not deployment. Seeds come from ``jax.random.fold_in(round_key, pair_index)``
instead of a Diffie-Hellman key agreement, each party Shamir-shares its pair seeds directly
instead of its DH secret key [reconstructed simplification], there are no authenticated or
encrypted channels, no signatures, and the PRG is JAX's threefry, a counter-based PRNG used
here as a simulation PRG, not a vetted cryptographic construction. The masking arithmetic,
the cancellation, the dropout recovery and their costs are the protocol's.

Shapes are static: the party axis K is vmapped in batches (masking) and scanned (the
partners of a party), so a round is one jitted computation with no Python loop over parties. Simulation
cost is O(K^2 D) PRG output, as for the clients of the original protocol (SecAgg+, Bell et al.
CCS 2020, would cut it to O(K log K D) with a sparse neighbour graph; not implemented).
"""
from __future__ import annotations

import dataclasses
import functools
import random

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.config import require
from fedrl.privacy import shamir
from fedrl.privacy.quantization import (FixedPoint, ring_add, ring_neg, ring_reduce,
                                        ring_sub, ring_sum)


class SecureAggregationAborted(RuntimeError):
    """Fewer than ``threshold`` parties survived: the protocol aborts (Bonawitz et al.)."""


def seed_data(key: jax.Array) -> jax.Array:
    """Raw uint32 data of a PRNG key (typed ``jax.random.key`` or legacy ``PRNGKey``)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def prg(seed: jax.Array, dim: int, fp: FixedPoint) -> jax.Array:
    """PRG(seed): ``dim`` uniform ring elements from a raw threefry seed uint32[2]."""
    key = jax.random.wrap_key_data(seed, impl="threefry2x32")
    return ring_reduce(jax.random.bits(key, (dim,), jnp.uint32), fp)


def pair_seeds(round_key: jax.Array, n_parties: int) -> jax.Array:
    """Symmetric [K, K, 2] seeds: s_ij = s_ji = fold_in(round_key, min(i,j) * K + max(i,j))."""
    idx = jnp.arange(n_parties)
    pair_index = (jnp.minimum(idx[:, None], idx[None, :]) * n_parties
                  + jnp.maximum(idx[:, None], idx[None, :]))
    fold = jax.vmap(jax.vmap(lambda a: seed_data(jax.random.fold_in(round_key, a))))
    return fold(pair_index.astype(jnp.uint32))


def self_seeds(round_key: jax.Array, n_parties: int) -> jax.Array:
    """[K, 2] self-mask seeds b_i = fold_in(round_key, i)."""
    return jax.vmap(lambda i: seed_data(jax.random.fold_in(round_key, i)))(
        jnp.arange(n_parties, dtype=jnp.uint32))


# Parties masked per vmapped batch: bounds memory to O(PARTY_BATCH * D) and keeps the PRG's
# working set in cache (a full vmap over 50 parties x 158k coordinates was slower on CPU).
PARTY_BATCH = 8


@functools.partial(jax.jit, static_argnames=("dim", "fp", "party_batch"))
def pairwise_masks(seeds: jax.Array, partners: jax.Array, dim: int, fp: FixedPoint,
                   party_batch: int = PARTY_BATCH) -> jax.Array:
    """Row i: sum_j partners[i, j] * (+PRG(s_ij) if j > i else -PRG(s_ij)) mod 2^b.

    Parties i are vmapped in batches of ``party_batch`` (``lax.map(batch_size=...)``), the
    partners j of a party are scanned; no Python loop over parties.
    """
    n = seeds.shape[0]

    def party(args):
        i, seeds_i, partners_i = args

        def add_pair(acc, pair):
            j, seed, is_partner = pair
            m = prg(seed, dim, fp)
            m = jnp.where(j > i, m, ring_neg(m, fp))
            return ring_add(acc, jnp.where(is_partner & (j != i), m, jnp.uint32(0)), fp), None
        acc, _ = jax.lax.scan(add_pair, jnp.zeros((dim,), jnp.uint32),
                              (jnp.arange(n), seeds_i, partners_i))
        return acc

    return jax.lax.map(party, (jnp.arange(n), seeds, partners),
                       batch_size=min(party_batch, n))


@functools.partial(jax.jit, static_argnames=("fp",))
def self_masks(seeds: jax.Array, active: jax.Array, dim_like: jax.Array,
               fp: FixedPoint) -> jax.Array:
    """[K, D] PRG(b_i) for active parties, zero elsewhere."""
    dim = dim_like.shape[-1]
    m = jax.vmap(lambda s: prg(s, dim, fp))(seeds)
    return jnp.where(active[:, None], m, jnp.uint32(0))


def mask_inputs(q: jax.Array, seeds: jax.Array, active: jax.Array, fp: FixedPoint,
                self_mask_seeds: jax.Array | None = None) -> jax.Array:
    """Masked inputs y_i [K, D] of the parties in ``active`` (pairs among active parties)."""
    active = active.astype(bool)
    partners = active[:, None] & active[None, :]
    y = ring_add(q, pairwise_masks(seeds, partners, q.shape[-1], fp), fp)
    if self_mask_seeds is not None:
        y = ring_add(y, self_masks(self_mask_seeds, active, q, fp), fp)
    return y


def masked_ring_sum(key: jax.Array, q: jax.Array, active: jax.Array, fp: FixedPoint,
                    use_self_masks: bool = False) -> jax.Array:
    """Ring sum of the active parties' q through masking (no dropout after masking).

    This is the jit-able reduction used by ``aggregation.secure_sum``: parties in ``active``
    mask with each other, the server adds their y_i and, with double masking, subtracts the
    self-masks it would reconstruct from Shamir shares (regenerated directly here: with no
    dropout the outcome of the reconstruction is known). Equals ``ring_sum(q[active])``
    bit for bit.
    """
    n = q.shape[0]
    fp.check_parties(n)
    active = active.astype(bool)
    seeds = pair_seeds(jax.random.fold_in(key, 0), n)
    b = self_seeds(jax.random.fold_in(key, 1), n) if use_self_masks else None
    y = mask_inputs(q, seeds, active, fp, b)
    total = ring_sum(jnp.where(active[:, None], y, jnp.uint32(0)), fp)
    if use_self_masks:
        total = ring_sub(total, ring_sum(self_masks(b, active, q, fp), fp), fp)
    return total


# ---------------------------------------------------------------- protocol with dropouts


@dataclasses.dataclass
class SecureAggregationOutcome:
    """Result of :func:`secure_aggregate`: the ring sum over survivors and what was revealed."""
    ring_sum: np.ndarray           # uint32 [D], equals ring_sum(q[survivors])
    survivors: np.ndarray          # bool [K]
    masked_inputs: np.ndarray      # uint32 [K, D]: what the server received (dropped rows unused)
    recovered_pair_seeds: int      # Shamir reconstructions of dropped parties' pair seeds
    recovered_self_seeds: int      # Shamir reconstructions of survivors' self-mask seeds


def _to_int(seed: np.ndarray) -> int:
    return (int(seed[0]) << 32) | int(seed[1])


def _from_int(value: int) -> np.ndarray:
    return np.array([value >> 32, value & 0xFFFFFFFF], dtype=np.uint32)


def _round_rng(key: jax.Array) -> random.Random:
    """Host RNG for the Shamir coefficients, seeded by 128 bits drawn from fold_in(key, 2)."""
    words = np.asarray(jax.random.bits(jax.random.fold_in(key, 2), (4,), jnp.uint32))
    return random.Random(int.from_bytes(words.astype("<u4").tobytes(), "little"))


def secure_aggregate(key: jax.Array, q: jax.Array, fp: FixedPoint, dropped=None,
                     threshold: int | None = None, use_self_masks: bool = False,
                     rng: random.Random | None = None) -> SecureAggregationOutcome:
    """One round of the protocol with parties dropping after masking (Bonawitz et al. 2017).

    1. Setup: pair seeds s_ij and (optionally) self seeds b_i; every party Shamir-shares its
       seeds t-of-K among all parties (host-side, GF(2^127-1)).
    2. Masking (jitted, vmapped): every party computes y_i over all K parties.
    3. Parties in ``dropped`` never deliver y_i. With fewer than t survivors the protocol
       aborts (:class:`SecureAggregationAborted`).
    4. Unmasking: t survivors send shares of s_uv for each dropped u (server regenerates and
       removes those pair masks) and of b_v for each survivor v (server removes self-masks).

    ``q`` is [K, D] uint32 (``quantization.encode``d). Returns the exact ring sum over survivors.
    Host-side share cost is O(K^3 t): meant for modest K (tests use K <= 10).

    ``threshold`` t must exceed K/2 (default floor(K/2) + 1), as in Bonawitz et al.: with
    t <= K/2 two disjoint groups of parties could each reconstruct a secret, e.g. the server
    could obtain both a survivor's self seed and its pair seeds; t = 1 would publish every
    seed in a single share.

    ``rng`` draws the Shamir polynomials' coefficients. By default it is seeded from
    ``fold_in(key, 2)``: reproducible, and fresh every round as long as every round has its own
    key. (A fixed default such as ``random.Random(0)`` would repeat the coefficients every
    round: once one polynomial is reconstructed, a single share of a later round's secret would
    reveal it.) In this simulation the round key also determines the seeds themselves, so
    deriving the coefficients from it reveals nothing the key did not; a deployment would draw
    them with ``secrets.SystemRandom()`` (pass it as ``rng``; not reproducible).
    """
    q = jnp.asarray(q, jnp.uint32)
    n, dim = q.shape
    fp.check_parties(n)
    threshold = n // 2 + 1 if threshold is None else threshold
    require(isinstance(threshold, (int, np.integer)) and not isinstance(threshold, bool)
            and n < 2 * threshold <= 2 * n,
            f"secure aggregation threshold t must be an integer with K/2 < t <= K "
            f"(K = {n} parties: t in [{n // 2 + 1}, {n}]), got {threshold!r}; with t <= K/2 "
            f"disjoint groups of parties could each reconstruct a party's secret seeds")
    threshold = int(threshold)
    dropped = np.zeros(n, bool) if dropped is None else np.asarray(dropped, bool)
    require(dropped.shape == (n,), f"dropped must have shape ({n},), got {dropped.shape}")
    rng = rng if rng is not None else _round_rng(key)

    # 1. Setup and sharing.
    seeds = np.asarray(pair_seeds(jax.random.fold_in(key, 0), n))
    b = np.asarray(self_seeds(jax.random.fold_in(key, 1), n)) if use_self_masks else None
    pair_shares = {(u, v): shamir.split(_to_int(seeds[u, v]), n, threshold, rng)
                   for u in range(n) for v in range(n) if u != v}
    self_shares = ({v: shamir.split(_to_int(b[v]), n, threshold, rng) for v in range(n)}
                   if use_self_masks else {})

    # 2. Masking by every party (all K advertised keys).
    y = mask_inputs(q, jnp.asarray(seeds), jnp.ones(n, bool), fp,
                    None if b is None else jnp.asarray(b))

    # 3. Dropout.
    survivors = ~dropped
    holders = [int(h) for h in np.flatnonzero(survivors)]
    if len(holders) < threshold:
        raise SecureAggregationAborted(
            f"only {len(holders)} parties survived, fewer than the threshold t={threshold}")
    helpers = holders[:threshold]
    total = ring_sum(jnp.where(jnp.asarray(survivors)[:, None], y, jnp.uint32(0)), fp)

    # 4. Unmasking: recover s_uv of dropped u, for surviving v, from t survivors' shares.
    recovered = np.zeros_like(seeds)
    partners = np.zeros((n, n), bool)
    for u in np.flatnonzero(dropped):
        for v in holders:
            shares = [pair_shares[(u, v)][h] for h in helpers]
            recovered[v, u] = _from_int(shamir.reconstruct(shares))
            partners[v, u] = True
    if partners.any():
        # Survivor v added +-PRG(s_vu) for each dropped u; remove exactly those terms.
        dangling = ring_sum(pairwise_masks(jnp.asarray(recovered), jnp.asarray(partners),
                                           dim, fp), fp)
        total = ring_sub(total, dangling, fp)
    n_self = 0
    if use_self_masks:
        b_rec = np.zeros_like(b)
        for v in holders:
            b_rec[v] = _from_int(shamir.reconstruct([self_shares[v][h] for h in helpers]))
            n_self += 1
        own = ring_sum(self_masks(jnp.asarray(b_rec), jnp.asarray(survivors), q, fp), fp)
        total = ring_sub(total, own, fp)
    return SecureAggregationOutcome(np.asarray(total), survivors, np.asarray(y),
                                    int(partners.sum()), n_self)
