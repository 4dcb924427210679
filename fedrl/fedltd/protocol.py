"""The Fed-LTD protocol: K ride-hailing platforms and a server, one batch at a time.

Wang, Tong, Zhou, Ren, Xu, Wu, Lv, "Fed-LTD: Towards Cross-Platform Ride Hailing via Federated
Learning to Dispatch", KDD 2022. Per batch (``../shared/spec/fedltd.md``):

1. **Local learning and dispatching** on every platform (``jax.vmap`` over platforms of
   :func:`fedrl.dispatch.simulator.dispatch_batch`): edge weights, auction matching, TD(0).
2. **Aggregation of dispatching models** every ``aggregation_period`` batches (and at the
   start of the day): the value tables are averaged through the masked secure sum and blended
   in (:mod:`fedrl.fedltd.models`).
3. **Aggregation of dispatching decisions**: each platform encodes its residual graph
   (:func:`encode_residual`: salted MD5 digests for ids, LSH codes for locations, a clipped
   order-side weight plus Laplace noise); the server (:func:`server_match`, which receives
   only those messages, a :class:`ServerView`) finds cross-platform candidate pairs from hash
   collisions, matches them with the auction and returns digest pairs; the platforms decode
   the digests and execute the pairs (:func:`execute_decisions`: the order's fare counts as
   revenue, the other platform's driver becomes busy).

The whole day is one jitted ``lax.scan`` (:func:`run_fedltd`). Steps 2 and 3 sit under
``lax.cond`` outside the platform ``vmap``, so batches without aggregation or without any
residual order skip them. The world (true positions, cancellations) is simulated with full
information; only what a platform would send crosses to the server.

Reconstructed choices are fields of :class:`fedrl.fedltd.config.FedLTDConfig`; besides those:

* a driver matched across platforms learns nothing from the trip: local TD(0) runs inside
  step 1 (:func:`dispatch_batch`), before step 3, and updates the drivers that were candidates
  of some local order (the idle update ``V(loc) += alpha (gamma V(loc) - V(loc))`` for those
  left unmatched, including any the server then dispatches; a driver no local order could
  reach gets no update); :func:`execute_decisions` makes no TD update, so neither his
  platform nor the order's learns from the served cross-platform trip. His platform learns
  the order's pick-up point and, when the trip ends, its destination (where he reappears),
  not its fare;
* LSH parameters are drawn once per day from a key the server does not know; the code hash
  keeps that day's secret unless ``lsh.rekey_codes_per_batch`` (then an idle driver who did
  not move is sent with fresh codes every batch; otherwise the server can link him across
  batches by his code tuple).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from fedrl.config import ConfigError, require
from fedrl.dispatch import dispatchers
from fedrl.dispatch.schedule import DayData
from fedrl.dispatch.simulator import (close_batch, dispatch_batch, dispatch_drivers,
                                      init_state, residual_graph, serve_orders)
from fedrl.dispatch.types import IDLE, PLATFORM_AXIS, BatchLog, Candidates, SimConfig, SimState
from fedrl.dispatch.value import init_value
from fedrl.dispatch.weights import cancel_probability, edge_weights, order_advantage
from fedrl.ops import prefix_count
from fedrl.fedltd import encoding
from fedrl.fedltd.config import FedLTDConfig
from fedrl.fedltd.models import aggregate_models
from fedrl.privacy.mechanisms import laplace_release


@struct.dataclass
class OrderMessage:
    """What a platform sends about its unmatched orders [P] (nothing else)."""
    digest: jnp.ndarray  # u32[P, 4] MD5(salt, platform, order id)
    codes: jnp.ndarray   # u32[P, L] LSH codes of the pick-up location
    weight: jnp.ndarray  # f32[P] clipped order-side weight + Laplace noise
    valid: jnp.ndarray   # bool[P]


@struct.dataclass
class DriverMessage:
    """What a platform sends about its idle drivers [R]."""
    digest: jnp.ndarray  # u32[R, 4]
    codes: jnp.ndarray   # u32[R, L]
    valid: jnp.ndarray   # bool[R]


@struct.dataclass
class ServerView:
    """Everything the server receives in step 3 (leading platform axis K)."""
    orders: OrderMessage
    drivers: DriverMessage


@struct.dataclass
class ServerDecision:
    """The server's answer: per order message row (K*P), the driver digest it gets."""
    order_digest: jnp.ndarray   # u32[N, 4]
    driver_digest: jnp.ndarray  # u32[N, 4]
    valid: jnp.ndarray          # bool[N]


@struct.dataclass
class CrossLog:
    """Per-batch record of step 3 (zeros in batches where it is skipped)."""
    candidates: jnp.ndarray    # candidate cross-platform pairs the server found
    false_pairs: jnp.ndarray   # ... of which farther apart than the pick-up radius
    near_pairs: jnp.ndarray    # true cross-platform residual pairs within the radius (orders
                               # released above weight_lower, sent drivers)
    near_found: jnp.ndarray    # ... of which the server saw as candidates (LSH recall)
    proposed: jnp.ndarray      # pairs the server returned
    declined: jnp.ndarray      # ... declined by the driver's platform (too far)
    matched: jnp.ndarray       # executed (cancellations included)
    revenue: jnp.ndarray       # fares of completed cross-platform trips
    driver_overflow: jnp.ndarray  # idle drivers beyond max_residual_drivers (not sent: a cap)
    driver_stale: jnp.ndarray     # idle drivers whose codes wait for the refresh budget
                                  # (code_refresh; not sent this batch, by design)
    server_rows_dropped: jnp.ndarray     # orders with candidates beyond server_rows
    server_columns_dropped: jnp.ndarray  # candidate drivers beyond server_columns
    rows_dropped_by_platform: jnp.ndarray  # f32[K] server_rows_dropped by order platform
    server_total: jnp.ndarray  # the server matcher's objective (noisy weights)
    server_exact: jnp.ndarray  # its exact optimum (sim.measure_gap), else server_total
    declined_unprofitable: jnp.ndarray  # pairs the order's platform declined (true weight
                                        # <= weight_lower; decline_unprofitable)

    @classmethod
    def zeros(cls, num_platforms: int = 1) -> "CrossLog":
        out = cls(*[jnp.zeros((), jnp.float32) for _ in dataclasses.fields(cls)])
        return out.replace(rows_dropped_by_platform=jnp.zeros((num_platforms,), jnp.float32))


@struct.dataclass
class Knobs:
    """Run-time (traced) switches, so that ablations share one compiled day: they can turn
    off what the static :class:`FedLTDConfig` compiled in, and set the privacy budget and the
    LSH bucket width (``fcfg.lsh.bucket_width_m`` is their default)."""
    share_models: jnp.ndarray     # bool[]
    share_decisions: jnp.ndarray  # bool[]
    epsilon_p: jnp.ndarray        # f32[] (inf: no noise)
    bucket_width_m: jnp.ndarray   # f32[] LSH bucket width r (metres)

    @classmethod
    def of(cls, fcfg: FedLTDConfig, **overrides) -> "Knobs":
        values = dict(share_models=fcfg.share_models, share_decisions=fcfg.share_decisions,
                      epsilon_p=fcfg.epsilon_p, bucket_width_m=fcfg.lsh.bucket_width_m)
        unknown = set(overrides) - set(values)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}; known: {sorted(values)}")
        values.update(overrides)
        # a knob can only switch OFF what the static config compiled in: the day drops step 2
        # / step 3 at trace time when the static flag is off, so "on" would be ignored
        for flag in ("share_models", "share_decisions"):
            if bool(values[flag]) and not getattr(fcfg, flag):
                raise ConfigError(f"knob {flag}=True cannot switch on what the static config "
                                  f"compiled out (fedltd.{flag}=False); set the config field")
        if "bucket_width_m" in overrides and fcfg.lsh.kind == "exact":
            raise ConfigError("knob bucket_width_m has no effect with lsh.kind='exact' (the "
                              "server uses true distances)")
        if not float(values["epsilon_p"]) > 0:
            raise ConfigError(f"epsilon_p must be > 0 (inf for no noise), got "
                              f"{values['epsilon_p']!r}")
        width = float(values["bucket_width_m"])
        if not (math.isfinite(width) and width > 0):
            raise ConfigError(f"bucket_width_m must be finite and > 0 metres, got "
                              f"{values['bucket_width_m']!r}")
        return cls(share_models=jnp.asarray(bool(values["share_models"])),
                   share_decisions=jnp.asarray(bool(values["share_decisions"])),
                   epsilon_p=jnp.asarray(float(values["epsilon_p"]), jnp.float32),
                   bucket_width_m=jnp.asarray(width, jnp.float32))


@struct.dataclass
class ReleaseCount:
    """How often each pending order's weight has been released (Laplace, eps_p each) so far.

    Per pending slot [K, P]: a slot keeps its order until the order leaves (matched or
    expired), so the count follows the order; ``order`` tells when a slot changed hands.
    Bookkeeping only: it reads the residual graph and never feeds back into the protocol."""
    order: jnp.ndarray   # i32[K, P] order id the count belongs to (-1: none)
    count: jnp.ndarray   # i32[K, P] releases of that order so far

    @classmethod
    def zeros(cls, pending_order) -> "ReleaseCount":
        return cls(order=jnp.full_like(pending_order, -1),
                   count=jnp.zeros_like(pending_order, jnp.int32))


def count_releases(prev: ReleaseCount, valid, order, released) -> ReleaseCount:
    """Update the per-slot release counts with one batch's residual graph: a slot holding the
    same order as before adds this batch's release, a slot with a new order starts from it,
    an empty slot resets. ``valid``/``order``/``released`` [..., P] as in ``Pending``."""
    kept = valid & (prev.order == order)
    count = jnp.where(valid, jnp.where(kept, prev.count, 0) + released.astype(jnp.int32), 0)
    return ReleaseCount(order=jnp.where(valid, order, -1), count=count)


@struct.dataclass
class FedLTDState:
    sim: SimState            # leading platform axis K
    lsh: encoding.LSHParams  # shared by the platforms for the day
    knobs: Knobs
    codes: DriverCodes       # [K] each platform's cache of its drivers' LSH codes
    releases: ReleaseCount   # [K, P] per-order release counts (privacy accounting only)
    train_orders: jnp.ndarray  # f32[K] orders each table was pretrained on (first round's
                               # weights with first_round_weights="training_orders")


@struct.dataclass
class FedLTDLog:
    local: BatchLog          # [K]; its revenue includes step 3's fares (cross.revenue again),
    #                          its matched counts local pairs only: do not add the two
    cross: CrossLog
    aggregated: jnp.ndarray  # bool: the models were aggregated in this batch
    max_releases: jnp.ndarray  # i32: most releases of one order's weight so far (pending
                               # orders after this batch's step 3); by basic composition
                               # that order has spent max_releases x eps_p


# ------------------------------------------------------------------------------ step 3


def order_weights(state: SimState, now, cfg: SimConfig):
    """Order-side weight of each pending order, computed by its platform alone.

    Learning to dispatch: ``R + gamma^dt V(dest) - V(origin)`` (fedltd.md step 3, the driver
    is near the origin so V(loc_u) ~ V(origin)); myopic and nearest dispatchers: the fare.
    """
    p = state.pending
    if cfg.dispatcher == "ltd":
        return order_advantage(p.fare, p.duration, p.ox, p.oy, p.dx, p.dy, now, state.value,
                               cfg)
    return p.fare


def listed_drivers(state: SimState, limit: int):
    """The first ``limit`` listed idle drivers -> (ids i32[limit] (-1 pad), overflow)."""
    _, listed = residual_graph(state)
    rank = prefix_count(listed) - 1
    keep = listed & (rank < limit)
    ids = jnp.full((limit,), -1, jnp.int32).at[jnp.where(keep, rank, limit)].set(
        jnp.arange(listed.shape[0], dtype=jnp.int32), mode="drop")
    return ids, jnp.sum(listed) - jnp.sum(keep)


@struct.dataclass
class DriverCodes:
    """A platform's cache of its drivers' LSH codes [D, L] and the positions they hash.

    A driver only moves when dispatched, so re-hashing every idle driver in every batch
    (L MD5 blocks each) would cost most of a batch; :func:`refresh_codes` re-hashes the few
    drivers that moved since the last batch.
    """
    codes: jnp.ndarray  # u32[D, L]
    x: jnp.ndarray      # f32[D]
    y: jnp.ndarray
    # i32[D, L, m] bucket integers when the code hash is re-keyed per batch (the codes are
    # then hashed from them in every batch); [D, 0, 0] otherwise
    buckets: jnp.ndarray


def _rekey(fcfg: FedLTDConfig) -> bool:
    return fcfg.lsh.rekey_codes_per_batch and fcfg.lsh.kind != "exact"


def _codes_fn(lsh: encoding.LSHParams, fcfg: FedLTDConfig):
    if fcfg.lsh.kind == "exact":  # oracle mode: the server uses true distances, no codes
        return lambda x, y: jnp.zeros(x.shape + (fcfg.lsh.num_tables,), jnp.uint32)
    return lambda x, y: encoding.lsh_codes(lsh, x, y, fcfg.lsh)


def _buckets_fn(lsh: encoding.LSHParams, fcfg: FedLTDConfig):
    if not _rekey(fcfg):
        return lambda x, y: jnp.zeros(x.shape + (0, 0), jnp.int32)
    return lambda x, y: encoding.lsh_buckets(lsh, x, y, fcfg.lsh)


def init_codes(drivers, lsh: encoding.LSHParams, fcfg: FedLTDConfig) -> DriverCodes:
    return DriverCodes(codes=_codes_fn(lsh, fcfg)(drivers.x, drivers.y), x=drivers.x,
                       y=drivers.y, buckets=_buckets_fn(lsh, fcfg)(drivers.x, drivers.y))


def refresh_codes(cache: DriverCodes, drivers, lsh: encoding.LSHParams,
                  fcfg: FedLTDConfig) -> DriverCodes:
    """Re-hash up to ``code_refresh`` drivers whose position changed (the rest next batch;
    until then :func:`encode_residual` does not send them)."""
    # only drivers that can be sent (listed idle) spend the refresh budget; a busy driver's
    # new position (his destination) is hashed once he is idle again
    listed = (drivers.status == IDLE) & (drivers.bucket_slot >= 0)
    moved = ((drivers.x != cache.x) | (drivers.y != cache.y)) & listed
    cap = min(fcfg.code_refresh, moved.shape[0])
    rank = prefix_count(moved) - 1
    keep = moved & (rank < cap)
    D = moved.shape[0]
    ids = jnp.full((cap,), -1, jnp.int32).at[jnp.where(keep, rank, cap)].set(
        jnp.arange(D, dtype=jnp.int32), mode="drop")
    safe = jnp.maximum(ids, 0)
    x, y = drivers.x[safe], drivers.y[safe]
    tgt = jnp.where(ids >= 0, ids, D)
    if _rekey(fcfg):   # the codes are hashed per batch from the cached bucket integers
        return cache.replace(buckets=cache.buckets.at[tgt].set(_buckets_fn(lsh, fcfg)(x, y),
                                                               mode="drop"),
                             x=cache.x.at[tgt].set(x, mode="drop"),
                             y=cache.y.at[tgt].set(y, mode="drop"))
    return cache.replace(codes=cache.codes.at[tgt].set(_codes_fn(lsh, fcfg)(x, y), mode="drop"),
                         x=cache.x.at[tgt].set(x, mode="drop"),
                         y=cache.y.at[tgt].set(y, mode="drop"))


def encode_residual(state: SimState, platform, now, salt, lsh: encoding.LSHParams, key,
                    cfg: SimConfig, fcfg: FedLTDConfig, epsilon=None,
                    cache: DriverCodes | None = None, code_secret=None):
    """EncodeRBG of one platform -> (OrderMessage, DriverMessage, sent driver ids,
    not sent i32[2] = (beyond max_residual_drivers, stale cached codes)).

    The order weights are clipped to [weight_lower, weight_upper] and released with
    Laplace(Delta / eps_p) noise (eps_p = inf: clipped only); ``epsilon`` (traced) overrides
    ``fcfg.epsilon_p``. Driver codes come from ``cache`` when given (drivers whose cached
    position is stale are not sent this batch), else are computed here. ``code_secret``
    (uint32[4], ``lsh.rekey_codes_per_batch``): this batch's key of the code hash, in place
    of the day's ``lsh.secret``.
    """
    p = state.pending
    d = state.drivers
    # never more slots than the platform has drivers (static)
    ids, overflow = listed_drivers(state, min(fcfg.max_residual_drivers, d.x.shape[0]))
    safe = jnp.maximum(ids, 0)
    rekey = code_secret is not None and fcfg.lsh.kind != "exact"
    if rekey:
        codes = lambda x, y: encoding.bucket_codes(encoding.lsh_buckets(lsh, x, y, fcfg.lsh),
                                                   code_secret, fcfg.lsh.code_hash)
    else:
        codes = _codes_fn(lsh, fcfg)
    if cache is None:
        driver_codes, fresh = codes(d.x[safe], d.y[safe]), True
    else:
        driver_codes = (encoding.bucket_codes(cache.buckets[safe], code_secret,
                                              fcfg.lsh.code_hash)
                        if rekey else cache.codes[safe])
        fresh = (cache.x[safe] == d.x[safe]) & (cache.y[safe] == d.y[safe])
    w = order_weights(state, now, cfg)
    eps = fcfg.epsilon_p if epsilon is None else epsilon
    clipped = jnp.clip(w, fcfg.weight_lower, fcfg.weight_upper)
    if isinstance(eps, float) and not fcfg.noisy:
        w = clipped
    else:
        noisy = laplace_release(key, w, eps, fcfg.weight_lower, fcfg.weight_upper)
        w = jnp.where(jnp.isfinite(eps), noisy, clipped)
    # nothing about a slot that is not in the residual graph (a slot keeps the fields of the
    # order it last held): zero codes, digest and weight
    orders = OrderMessage(
        digest=jnp.where(p.valid[:, None], encoding.salted_digest(salt, p.order, platform), 0),
        codes=jnp.where(p.valid[:, None], codes(p.ox, p.oy), 0),
        weight=jnp.where(p.valid, w, 0.0), valid=p.valid)
    sent = (ids >= 0) & fresh
    drivers = DriverMessage(
        digest=jnp.where(sent[:, None], encoding.salted_digest(salt, ids, platform), 0),
        codes=jnp.where(sent[:, None], driver_codes, 0), valid=sent)
    not_sent = jnp.stack([overflow, jnp.sum((ids >= 0) & ~sent)]).astype(jnp.int32)
    return orders, drivers, jnp.where(sent, ids, -1), not_sent


def server_config(cfg: SimConfig, fcfg: FedLTDConfig, num_orders: int) -> SimConfig:
    """The matrix sizes of the server's matching, as a SimConfig for the dispatch helpers."""
    rows = min(fcfg.server_rows, num_orders)
    return dataclasses.replace(
        cfg, max_pending=num_orders, max_rows=rows, max_columns=fcfg.server_columns,
        size_classes=((min(8, rows), min(16, fcfg.server_columns)),), match_nonpositive=False)


def _flat(x):
    return x.reshape((-1,) + x.shape[2:])


def _top_columns(hits, position, k: int):
    """Per row, the ``k`` columns with the most colliding tables, ties by smaller
    ``position`` (a permutation of the row's columns) -> (columns i32[N, k], mask).

    Each (hits, position) pair becomes one float32 score, unique within its row (exact: hits
    <= L and positions < M are small integers); then ``k`` rounds of "take the row's best
    column, strike it out". XLA:CPU vectorizes float row maxima and minima, not integer ones,
    ``argmax`` or ``lax.top_k`` (slow on CPU inside a scan)."""
    N, M = hits.shape
    score = hits.astype(jnp.float32) * M + (M - 1 - position).astype(jnp.float32)
    col = jnp.arange(M, dtype=jnp.float32)

    def take_best(s, _):
        best = jnp.max(s, axis=1)
        j = jnp.min(jnp.where(s == best[:, None], col[None, :], float(M)), axis=1)
        return jnp.where(col[None, :] == j[:, None], -1.0, s), (j, best >= M)  # >= M: hits > 0

    _, (idx, mask) = jax.lax.scan(take_best, score, None, length=k)
    return jnp.where(mask.T, idx.T.astype(jnp.int32), 0), mask.T


def _most_colliding(hits, k: int):
    """Per row, the ``k`` columns with the most colliding tables (ties: lower index first)
    -> (columns i32[N, k], mask). Same result as ranking through one running count per
    collision level (four [96, 291] x [291, 291] matmuls on the quick day, before session
    12), at a fraction of the cost (tested against a stable sort)."""
    M = hits.shape[1]
    return _top_columns(hits, jnp.arange(M, dtype=jnp.int32)[None, :], k)


def _shuffled_most_colliding(hits, k: int, key):
    """:func:`_most_colliding` with ties broken at random: the columns are read in a random
    order (one permutation per batch) from a random start per row, so equally colliding
    drivers are kept with about equal chance whatever their platform or slot, and co-located
    orders keep different drivers. Returns column indices of ``hits``.

    Column ``c`` is read at position ``(perm^-1[c] - start) mod M`` of its row; ranking by
    that position selects exactly what ranking the permuted matrix would, without gathering
    it (two [N, M] gathers, slow on CPU; tested against the permuted reading)."""
    N, M = hits.shape
    k_cols, k_start = jax.random.split(key)
    perm = jax.random.permutation(k_cols, M).astype(jnp.int32)
    start = jax.random.randint(k_start, (N,), 0, M)
    inverse = jnp.zeros((M,), jnp.int32).at[perm].set(jnp.arange(M, dtype=jnp.int32))
    position = (inverse[None, :] - start[:, None]) % M
    return _top_columns(hits, position, k)


def server_match(view: ServerView, fcfg: FedLTDConfig, scfg: SimConfig, oracle=None,
                 key=None):
    """DecodeRBG + matching on the server, from the encoded messages only.

    Candidate pairs: a driver and an order of *different* platforms whose LSH codes collide
    in at least one table; each order keeps its ``server_k`` drivers colliding in the most
    tables; the edge weight is the order's noisy weight (plus ``collision_bonus`` per share
    of colliding tables); orders released at or below ``weight_lower`` are not worth a
    driver (max-weight semantics, as in local matching). ``oracle=(dist, weight)``
    [K*P, K*R] replaces the hashes by true distances and weights (test/ablation mode
    ``lsh.kind="exact"``: not private). ``key`` (the server's per-batch key; with
    ``fcfg.server_tie_break="random"``) breaks ties among equally colliding drivers and
    shuffles the order rows before they are compacted into ``server_rows``, so that no
    platform is favoured when the matrix is full; without it ties go to the lower index.
    Returns (ServerDecision, info) with info = (candidate mask [N, K*R], total weight, order
    rows and driver columns left out of the matrix, rows left out per order platform [K],
    the exact (Hungarian) optimum of the same matrix when ``scfg.measure_gap``, else the
    total).
    """
    K, P = view.orders.valid.shape
    R = view.drivers.valid.shape[1]
    o_plat = jnp.repeat(jnp.arange(K), P)
    d_plat = jnp.repeat(jnp.arange(K), R)
    o_valid, d_valid = _flat(view.orders.valid), _flat(view.drivers.valid)
    allowed = (o_valid[:, None] & d_valid[None, :] & (o_plat[:, None] != d_plat[None, :]))
    if oracle is None:
        hits = encoding.collision_count(_flat(view.orders.codes)[:, None, :],
                                        _flat(view.drivers.codes)[None, :, :])
        released = _flat(view.orders.weight)
        cand = allowed & (hits > 0) & (released > fcfg.weight_lower)[:, None]
        weight = (released[:, None]
                  + fcfg.collision_bonus * hits.astype(jnp.float32) / fcfg.lsh.num_tables)
        dist = jnp.zeros(cand.shape, jnp.float32)
    else:
        dist, weight = oracle
        cand = allowed & (dist <= scfg.radius_m)
        score = jnp.where(cand, -dist, -jnp.inf)
    k = min(fcfg.server_k, cand.shape[1])
    shuffle = key is not None and fcfg.server_tie_break == "random"
    if shuffle:
        k_ties, k_rows = jax.random.split(key)
    if oracle is None and shuffle:
        idx, mask = _shuffled_most_colliding(jnp.where(cand, hits, 0), k, k_ties)
    elif oracle is None:
        idx, mask = _most_colliding(jnp.where(cand, hits, 0), k)
    else:
        _, idx = jax.lax.top_k(score, k)  # ties: lower index first
        mask = jnp.take_along_axis(cand, idx, axis=1)
    cands = Candidates(driver=jnp.where(mask, idx, -1).astype(jnp.int32),
                       dist=jnp.where(mask, jnp.take_along_axis(dist, idx, axis=1), 0.0),
                       mask=mask)
    w = jnp.where(mask, jnp.take_along_axis(weight, idx, axis=1), 0.0)
    N = cands.mask.shape[0]
    if shuffle:   # a random row order: the first server_rows rows are a uniform subset
        rperm = jax.random.permutation(k_rows, N).astype(jnp.int32)
        row_slot, sub, sub_w, rows_dropped = dispatchers.compact_rows(
            jax.tree.map(lambda a: a[rperm], cands), w[rperm], scfg.max_rows)
        row_slot = jnp.where(row_slot >= 0, rperm[jnp.maximum(row_slot, 0)], -1)
    else:
        row_slot, sub, sub_w, rows_dropped = dispatchers.compact_rows(cands, w, scfg.max_rows)
    kept = jnp.zeros((N,), bool).at[jnp.where(row_slot >= 0, row_slot, N)].set(True,
                                                                               mode="drop")
    dropped_by_platform = jnp.sum((jnp.any(cands.mask, axis=1) & ~kept).reshape(K, P), axis=1)
    graph, cols_dropped = dispatchers.build_graph(sub, sub_w, K * R, scfg)
    rows = dispatchers.solve_graph(graph, scfg, fcfg.server_matcher)
    compact = dispatchers.assignment_from_match(graph, rows, False)
    if scfg.measure_gap:   # the exact optimum of the same matrix (Table 5's optimality gap)
        exact = jnp.sum(dispatchers.assignment_from_match(
            graph, dispatchers.solve_graph(graph, scfg, "hungarian"), False).weight)
    else:
        exact = jnp.sum(compact.weight)
    assigned = dispatchers.expand_rows(compact, row_slot, K * P)
    ok = assigned.driver >= 0
    decision = ServerDecision(
        order_digest=_flat(view.orders.digest),
        driver_digest=_flat(view.drivers.digest)[jnp.maximum(assigned.driver, 0)],
        valid=ok)
    return decision, (cand, jnp.sum(assigned.weight), rows_dropped, cols_dropped,
                      dropped_by_platform, exact)


def decode_decision(decision: ServerDecision, orders: OrderMessage, drivers: DriverMessage):
    """A platform maps the server's digest pairs back to its own orders and drivers.

    Returns (row of each own order slot [P] (-1: none), own sent-driver index of each decision
    row [N] (-1: not ours)).
    """
    # A digest matches at most one entry (digests are distinct within a batch), so the
    # matching index is the masked index's maximum, -1 when none: a float32 reduction
    # (exact for these small integers; integer row reductions are slow on XLA:CPU).
    n = jnp.arange(decision.valid.shape[0], dtype=jnp.float32)
    o_hit = (encoding.digests_equal(orders.digest[:, None, :], decision.order_digest[None])
             & decision.valid[None, :] & orders.valid[:, None])                      # [P, N]
    slot_row = jnp.max(jnp.where(o_hit, n[None, :], -1.0), axis=1).astype(jnp.int32)
    r = jnp.arange(drivers.valid.shape[0], dtype=jnp.float32)
    d_hit = (encoding.digests_equal(drivers.digest[:, None, :], decision.driver_digest[None])
             & decision.valid[None, :] & drivers.valid[:, None])                     # [R, N]
    row_sent = jnp.max(jnp.where(d_hit, r[:, None], -1.0), axis=0).astype(jnp.int32)
    return slot_row, row_sent


def _world_pairs(sim: SimState, row_sent, sent_ids, cfg: SimConfig):
    """Ground truth of each decision row n (order platform n // P): the order's fields and
    the driver's platform, id and true pick-up distance."""
    K = sim.pending.valid.shape[0]
    mine = row_sent >= 0                                               # [K, N]
    d_plat = jnp.sum(jnp.where(mine, jnp.arange(K)[:, None], 0), axis=0)
    d_sent = jnp.sum(jnp.where(mine, row_sent, 0), axis=0)
    d_id = sent_ids[d_plat, d_sent]
    p = jax.tree.map(_flat, sim.pending)
    dist = jnp.hypot(sim.drivers.x[d_plat, d_id] - p.ox, sim.drivers.y[d_plat, d_id] - p.oy)
    return p, jnp.any(mine, axis=0), d_plat, d_id, dist * cfg.pickup_road_factor


@struct.dataclass
class CrossPairs:
    """The executed cross-platform pairs of a batch, per order row n (platform n // P, slot
    n % P): the driver's platform and id, and whether the pair was executed."""
    driver_platform: jnp.ndarray  # i32[N]
    driver: jnp.ndarray           # i32[N]
    executed: jnp.ndarray         # bool[N] (cancelled trips included: they were matched)

    @classmethod
    def none(cls, n: int) -> "CrossPairs":
        return cls(jnp.zeros((n,), jnp.int32), jnp.full((n,), -1, jnp.int32),
                   jnp.zeros((n,), bool))


def execute_decisions(sim: SimState, decision: ServerDecision, slot_row, row_sent, sent_ids,
                      key, now, cfg: SimConfig, fcfg: FedLTDConfig):
    """Platforms execute the cross-platform pairs -> (sim, CrossPairs, (proposed, declined,
    revenue, declined as unprofitable)). The driver's platform declines a pair beyond the
    pick-up radius (``decline_far_pairs``); with ``decline_unprofitable`` the order's platform
    declines a pair whose true order weight is <= ``weight_lower``; an accepted order cancels
    with probability cancel(d)."""
    p, has_driver, d_plat, d_id, dist = _world_pairs(sim, row_sent, sent_ids, cfg)
    proposed = decision.valid & has_driver
    declined = proposed & (dist > cfg.radius_m) if fcfg.decline_far_pairs else proposed & False
    if fcfg.decline_unprofitable:   # the order's platform, on its true order weight
        true_w = _flat(jax.vmap(lambda s: order_weights(s, now, cfg))(sim))
        unprofitable = proposed & ~declined & (true_w <= fcfg.weight_lower)
    else:
        unprofitable = proposed & False
    go = proposed & ~declined & ~unprofitable
    cancelled = go & (jax.random.uniform(key, go.shape) < cancel_probability(dist, cfg))
    K = sim.pending.valid.shape[0]

    def platform(state, k, slot_row_k):
        safe = jnp.maximum(slot_row_k, 0)
        assigned = (slot_row_k >= 0) & go[safe]
        state = serve_orders(state, assigned, assigned & cancelled[safe],
                             jnp.where(assigned, dist[safe], 0.0))
        ride = go & ~cancelled & (d_plat == k)
        return dispatch_drivers(state, jnp.where(ride, d_id, -1), ride, dist, p.duration,
                                p.dx, p.dy, now, cfg)

    sim = jax.vmap(platform)(sim, jnp.arange(K), slot_row)
    revenue = jnp.sum(jnp.where(go & ~cancelled, p.fare, 0.0))
    pairs = CrossPairs(driver_platform=d_plat.astype(jnp.int32),
                       driver=jnp.where(go, d_id, -1).astype(jnp.int32), executed=go)
    return sim, pairs, (jnp.sum(proposed), jnp.sum(declined), revenue, jnp.sum(unprofitable))


def cross_distances(sim: SimState, sent_ids, cfg: SimConfig):
    """True pick-up distances [K*P, K*R] between every pending order and every sent driver
    (the world's knowledge: oracle mode and the LSH's recall, never the server's)."""
    safe = jnp.maximum(sent_ids, 0)
    dx = jnp.take_along_axis(sim.drivers.x, safe, axis=1).reshape(-1)       # [K*R]
    dy = jnp.take_along_axis(sim.drivers.y, safe, axis=1).reshape(-1)
    p = jax.tree.map(_flat, sim.pending)
    dist = jnp.hypot(dx[None, :] - p.ox[:, None], dy[None, :] - p.oy[:, None])
    return dist * cfg.pickup_road_factor, (dx, dy)


def oracle_weights(sim: SimState, dist, driver_xy, now, cfg: SimConfig):
    """True edge weights [K*P, K*R] of the cross-platform residual pairs (the dispatcher's
    weight with the driver's true position, scored with the order platform's value table)."""
    dx, dy = driver_xy
    P = sim.pending.valid.shape[1]
    p = jax.tree.map(_flat, sim.pending)
    value = jnp.repeat(sim.value, P, axis=0)  # [K*P, T, G]

    def row(v, fare, duration, ddx, ddy, dist_row):
        return edge_weights(cfg.dispatcher, dist_row, fare, duration, ddx, ddy, dx, dy, now,
                            v, cfg)
    return jax.vmap(row)(value, p.fare, p.duration, p.dx, p.dy, dist)


def encode_all(sim: SimState, lsh: encoding.LSHParams, key, now, cfg: SimConfig,
               fcfg: FedLTDConfig, epsilon=None, cache: DriverCodes | None = None):
    """Every platform encodes its residual graph -> (ServerView, sent ids [K, R], not sent
    [K, 2] (cap, stale codes) as in :func:`encode_residual`). ``key`` gives the batch's salt
    (shared by the platforms) and their noise."""
    K = sim.pending.valid.shape[0]
    if _rekey(fcfg):
        # a third key of the batch for the code hash (off: the split, and so every result,
        # is unchanged)
        k_salt, k_noise, k_code = jax.random.split(key, 3)
        secret = encoding.batch_salt(k_code)
    else:
        (k_salt, k_noise), secret = jax.random.split(key), None
    salt = encoding.batch_salt(k_salt)
    orders, drivers, sent_ids, overflow = jax.vmap(
        lambda s, k, kk, c: encode_residual(s, k, now, salt, lsh, kk, cfg, fcfg, epsilon, c,
                                            secret))(
        sim, jnp.arange(K), jax.random.split(k_noise, K), cache)
    return ServerView(orders=orders, drivers=drivers), sent_ids, overflow


def decision_stage(sim: SimState, lsh: encoding.LSHParams, key, now, cfg: SimConfig,
                   fcfg: FedLTDConfig, epsilon=None, cache: DriverCodes | None = None,
                   server_key=None):
    """Step 3 for all platforms: encode, server matching, decode, execute
    -> (sim, CrossLog, CrossPairs). ``key``: the platforms' batch key (salt, noise,
    cancellations); ``server_key``: the server's own batch key (its tie-breaking)."""
    K, P = sim.pending.valid.shape
    k_encode, k_exec = jax.random.split(key)
    view, sent_ids, overflow = encode_all(sim, lsh, k_encode, now, cfg, fcfg, epsilon, cache)
    dist, driver_xy = cross_distances(sim, sent_ids, cfg)
    oracle = None
    if fcfg.lsh.kind == "exact":
        oracle = (dist, oracle_weights(sim, dist, driver_xy, now, cfg))
    decision, (cand, total, rows_dropped, cols_dropped, by_platform, exact) = server_match(
        view, fcfg, server_config(cfg, fcfg, K * P), oracle, server_key)
    slot_row, row_sent = jax.vmap(decode_decision, in_axes=(None, 0, 0))(
        decision, view.orders, view.drivers)
    sim, pairs, (proposed, declined, revenue, unprofitable) = execute_decisions(
        sim, decision, slot_row, row_sent, sent_ids, k_exec, now, cfg, fcfg)
    R = sent_ids.shape[1]
    d_plat = jnp.repeat(jnp.arange(K), R)
    o_plat = jnp.repeat(jnp.arange(K), P)
    # true near pairs among the orders the server would match (released above
    # weight_lower; every valid order in the oracle mode) and the sent drivers
    wanted = _flat(view.orders.valid)
    if oracle is None:
        wanted = wanted & (_flat(view.orders.weight) > fcfg.weight_lower)
    near = ((dist <= cfg.radius_m) & (o_plat[:, None] != d_plat[None, :])
            & wanted[:, None] & _flat(view.drivers.valid)[None, :])
    f = lambda x: jnp.sum(x, dtype=jnp.float32)   # counts < 2^24: exact in float32
    log = CrossLog(candidates=f(cand), false_pairs=f(cand & ~near), near_pairs=f(near),
                   near_found=f(cand & near), proposed=f(proposed), declined=f(declined),
                   matched=f(pairs.executed), revenue=revenue.astype(jnp.float32),
                   driver_overflow=f(overflow[:, 0]), driver_stale=f(overflow[:, 1]),
                   server_rows_dropped=f(rows_dropped),
                   server_columns_dropped=f(cols_dropped),
                   rows_dropped_by_platform=by_platform.astype(jnp.float32),
                   server_total=f(total), server_exact=f(exact),
                   declined_unprofitable=f(unprofitable))
    return sim, log, pairs


# ------------------------------------------------------------------------------ the day


def check_protocol(cfg: SimConfig, fcfg: FedLTDConfig, num_platforms: int) -> None:
    """ConfigError for a bad protocol setting (at trace time: both configs are static).

    Besides ``fcfg.validate``: ``decline_unprofitable`` with orders that wait several batches
    (``sim.patience="exponential"``) and day-long location codes is refused. A declined order
    is sent again next batch with the same codes, so the server would see which proposed pair
    was declined: a noise-free bit about the true weight that ``max_releases x eps_p`` does
    not count (review finding, session 11). Re-keying the codes per batch
    (``lsh.rekey_codes_per_batch``) or one-batch patience removes the link.
    """
    fcfg.validate(num_platforms)
    require(not (fcfg.decline_unprofitable and cfg.patience != "one_batch"
                 and not fcfg.lsh.rekey_codes_per_batch),
            "fedltd.decline_unprofitable with sim.patience='exponential' leaks a noise-free bit "
            "of the true order weight (a declined order is re-sent with the same location "
            "codes); set fedltd.lsh.rekey_codes_per_batch=True or sim.patience='one_batch'")


def init_fedltd(days: DayData, values, key, cfg: SimConfig, fcfg: FedLTDConfig,
                knobs: Knobs | None = None, train_orders=None) -> FedLTDState:
    """Fresh platforms ([K] stacked days and value tables) and the day's LSH parameters.
    ``train_orders`` [K]: orders each value table was pretrained on (default: equal)."""
    K = values.shape[0]
    check_protocol(cfg, fcfg, K)
    knobs = Knobs.of(fcfg) if knobs is None else knobs
    sim = jax.vmap(lambda d, v: init_state(d, cfg, v))(days, values)
    lsh = encoding.lsh_params(jax.random.fold_in(key, 0), fcfg.lsh, knobs.bucket_width_m)
    codes = jax.vmap(lambda d: init_codes(d, lsh, fcfg))(sim.drivers)
    train = (jnp.ones((K,), jnp.float32) if train_orders is None
             else jnp.asarray(train_orders, jnp.float32).reshape(K))
    return FedLTDState(sim=sim, lsh=lsh, knobs=knobs, codes=codes,
                       releases=ReleaseCount.zeros(sim.pending.order), train_orders=train)


@struct.dataclass
class BatchTrace:
    """What a batch decided (for tests and analyses): the value tables matching used, the
    local assignment of every platform [K, P], the platforms' states after local dispatch
    (their residual graphs) and the cross-platform pairs."""
    value: jnp.ndarray
    local_driver: jnp.ndarray
    residual: SimState
    now: jnp.ndarray
    cross: CrossPairs


def fedltd_batch(state: FedLTDState, events, keys, protocol_key, t_start, cfg: SimConfig,
                 fcfg: FedLTDConfig, trace: bool = False):
    """One batch of Fed-LTD for K platforms -> (state, FedLTDLog[, BatchTrace]).

    ``keys`` [K] are the platforms' own keys (local cancellations, exactly as in
    :func:`fedrl.dispatch.simulator.step`); ``protocol_key`` drives salts, noise, masks and
    cross-platform cancellations, folded in per batch.
    """
    sim = state.sim
    K, P = sim.pending.valid.shape
    batch = sim.batch[0]
    # fold_in(protocol_key, 0) is the day's LSH key; batches draw from fold_in(., 1) (the
    # platforms) and fold_in(., 2) (the server)
    key = jax.random.fold_in(jax.random.fold_in(protocol_key, 1), batch)
    k_model, k_decision = jax.random.split(key)
    # the server's stream, fold_in(., 2) per batch: its random tie-breaking. Simulation
    # only: it derives from the protocol key the platforms hold (a deployment would give the
    # server a key of its own); it only orders equally good candidates
    k_server = jax.random.fold_in(jax.random.fold_in(protocol_key, 2), batch)

    # step 2 at batch 0 (the pretrained tables), then every aggregation_period batches; one
    # platform has nothing to aggregate with (and skipping keeps it exactly single-platform)
    share_models = fcfg.share_models and K > 1
    aggregate = ((batch % fcfg.aggregation_period == 0) & state.knobs.share_models
                 if share_models else jnp.array(False))
    if share_models:
        value = jax.lax.cond(
            aggregate, lambda v: aggregate_models(v, sim.totals.arrived, k_model, fcfg,
                                                  first=batch == 0,
                                                  train_orders=state.train_orders),
            lambda v: v, sim.value)
        sim = sim.replace(value=value)
    used_value = sim.value

    sim, local, now, assignment = jax.vmap(
        lambda s, e, k: dispatch_batch(s, e, k, t_start, cfg, PLATFORM_AXIS),
        axis_name=PLATFORM_AXIS)(sim, events, keys)
    now = now[0]
    residual = sim

    codes = state.codes
    released = jnp.zeros_like(sim.pending.valid)   # orders whose weight step 3 sends
    if fcfg.share_decisions and K > 1:
        # (the knob off: no code is sent, none refreshed; the single-platform runs of the
        # experiment use this path, see experiments/fedltd.py)
        codes = jax.lax.cond(
            state.knobs.share_decisions,
            lambda c: jax.vmap(lambda c, d: refresh_codes(c, d, state.lsh, fcfg))(c, sim.drivers),
            lambda c: c, codes)
        w = jax.vmap(lambda s: order_weights(s, now, cfg))(sim)
        eps = state.knobs.epsilon_p
        # skip step 3 when the server could match nothing: no unmatched order, or (without
        # noise) none released above weight_lower; the oracle mode scores edges, not orders
        if fcfg.lsh.kind == "exact":
            useful = sim.pending.valid
        else:
            useful = sim.pending.valid & ((w > fcfg.weight_lower) | jnp.isfinite(eps))
        worth = state.knobs.share_decisions & jnp.any(useful)
        # step 3 sends (a noisy weight of) every valid residual order when it runs
        released = worth & sim.pending.valid
        sim, cross, pairs = jax.lax.cond(
            worth, lambda s: decision_stage(s, state.lsh, k_decision, now, cfg, fcfg, eps,
                                            codes, k_server),
            lambda s: (s, CrossLog.zeros(K), CrossPairs.none(K * P)), sim)
    else:
        cross, pairs = CrossLog.zeros(K), CrossPairs.none(K * P)

    # per-order release counts, from the residual graph (slots are stable while an order waits)
    releases = count_releases(state.releases, residual.pending.valid, residual.pending.order,
                              released)

    sim, local = jax.vmap(lambda s, lg: close_batch(s, lg, now, cfg))(sim, local)
    out = (state.replace(sim=sim, codes=codes, releases=releases),
           FedLTDLog(local=local, cross=cross, aggregated=aggregate,
                     max_releases=jnp.max(releases.count)))
    if trace:
        return out + (BatchTrace(value=used_value, local_driver=assignment.driver,
                                 residual=residual, now=now, cross=pairs),)
    return out


def simulate_fedltd_day(state: FedLTDState, days: DayData, keys, protocol_key,
                        cfg: SimConfig, fcfg: FedLTDConfig):
    """The whole day: one ``lax.scan`` over batches -> (final state, FedLTDLog[batches])."""
    events = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), days.events)  # [batches, K, ...]
    t_start = days.t_start[0]

    def body(carry, ev):
        return fedltd_batch(carry, ev, keys, protocol_key, t_start, cfg, fcfg)
    return jax.lax.scan(body, state, events)


@functools.partial(jax.jit, static_argnames=("cfg", "fcfg"))
def run_fedltd(days: DayData, keys, protocol_key, cfg: SimConfig, fcfg: FedLTDConfig,
               values=None, knobs: Knobs | None = None, train_orders=None):
    """Jitted Fed-LTD day of K platforms (leading axis of ``days``, ``keys``, ``values``).

    ``knobs`` (:meth:`Knobs.of`) switch model/decision sharing off and set eps_p and the LSH
    bucket width at run time: one compiled program serves every such ablation.
    ``train_orders`` [K]: orders each of ``values`` was pretrained on (used by
    ``fcfg.first_round_weights="training_orders"``; default equal).
    """
    if values is None:
        values = jnp.broadcast_to(init_value(cfg), (keys.shape[0],) + init_value(cfg).shape)
    state = init_fedltd(days, values, protocol_key, cfg, fcfg, knobs, train_orders)
    return simulate_fedltd_day(state, days, keys, protocol_key, cfg, fcfg)
