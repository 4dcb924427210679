"""Fed-LTD step 2: aggregation of the dispatching models (the platforms' value tables).

Wang et al., "Fed-LTD: Towards Cross-Platform Ride Hailing via Federated Learning to
Dispatch", KDD 2022: the server learns the weighted average of the K value tables without
seeing any single one, by random masks that cancel in the sum (Bonawitz et al., "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017), in fixed point modulo
2^32 so that the cancellation is exact ("lossless" up to the fixed-point step). Each platform
then blends the aggregate into its own table: ``V_k <- (1 - mix) V_k + mix * mean``
[reconstructed; ``mix = 1`` is plain FedAvg].

The masked sum reuses :func:`fedrl.federated.aggregation.secure_mean` (quantize with
stochastic rounding, pairwise masks, ring sum, decode), the same code path as the hospital
system's secure FedAvg.
"""
from __future__ import annotations

import jax.numpy as jnp

from fedrl.federated.aggregation import Cohort, secure_mean, weighted_mean
from fedrl.fedltd.config import FedLTDConfig


def aggregation_weights(orders_seen, cfg: FedLTDConfig, first=False, train_orders=None):
    """Per-platform weights [K] of the average: 1 each, or the orders seen so far.

    ``first`` (the public fact that this is the day's first round, before any order) gives
    the pretrained tables the weights of ``cfg.first_round_weights``: ``"equal"``, every
    platform ``weight_cap``; ``"training_orders"``, the orders each table was pretrained on
    (``train_orders`` [K]) scaled so the largest is ``weight_cap``. Either way near the cap:
    the masked mean encodes ``min(w / weight_cap, 1) * V`` in fixed point, so a weight far
    below the cap would be rounded to a few fixed-point steps.
    """
    if cfg.aggregation_weights == "uniform":
        return jnp.ones_like(orders_seen, jnp.float32)
    # a platform that has seen nothing yet still counts a little (no division by zero)
    w = jnp.maximum(orders_seen.astype(jnp.float32), 1.0)
    first_w = jnp.full(w.shape, cfg.weight_cap, jnp.float32)
    if cfg.first_round_weights == "training_orders" and train_orders is not None:
        t = jnp.maximum(jnp.asarray(train_orders, jnp.float32), 1.0)
        first_w = cfg.weight_cap * t / jnp.max(t)
    return jnp.where(first, first_w, w)


def average_values(values, weights, key, cfg: FedLTDConfig):
    """Weighted mean of ``values`` [K, ...] with ``weights`` [K]: masked (secure) or plain."""
    cohort = Cohort(updates=values, weights=weights,
                    mask=jnp.ones(values.shape[:1], jnp.float32))
    if cfg.model_aggregation == "plain":
        reduce = weighted_mean()
    else:
        cap = None if cfg.aggregation_weights == "uniform" else cfg.weight_cap
        reduce = secure_mean(cfg.fixed_point, weight_cap=cap)
    mean, _ = reduce.update(cohort, (), key)
    return mean


def blend(values, mean, cfg: FedLTDConfig):
    """Each platform mixes the aggregate into its own table."""
    if cfg.mix == 1.0:
        return jnp.broadcast_to(mean, values.shape).astype(values.dtype)
    return ((1.0 - cfg.mix) * values + cfg.mix * mean[None]).astype(values.dtype)


def aggregate_models(values, orders_seen, key, cfg: FedLTDConfig, first=False,
                     train_orders=None):
    """One aggregation round: average through the secure sum, then blend -> new [K, ...]."""
    mean = average_values(values, aggregation_weights(orders_seen, cfg, first, train_orders),
                          key, cfg)
    return blend(values, mean, cfg)


def paillier_aggregation_seconds(values, cfg: FedLTDConfig, *, entries: int = 64,
                                 key_bits: int = 2048) -> dict:
    """Time the homomorphic-encryption baseline (Paillier, python-paillier) on ``entries``
    coordinates of the K tables and extrapolate to the whole table.

    Each platform encrypts its fixed-point table, the server adds the ciphertexts and the
    key holder decrypts the sum (weights omitted: it is the cheaper, unweighted variant, so
    the comparison favours the baseline). Host-side and slow by nature (ms per coordinate);
    only used for Table 5. Returns seconds measured and extrapolated.
    """
    import time

    import numpy as np

    from fedrl.privacy import paillier

    v = np.asarray(values, np.float64).reshape(values.shape[0], -1)
    n = min(entries, v.shape[1])
    scale = cfg.fixed_point.scale
    ints = [[int(round(x * scale)) for x in row[:n]] for row in v]
    keypair = paillier.generate_keypair(key_bits)
    start = time.perf_counter()
    encrypted = [paillier.encrypt_vector(keypair[0], row) for row in ints]
    total = encrypted[0]
    for other in encrypted[1:]:
        total = paillier.add_encrypted(total, other)
    summed = paillier.decrypt_vector(keypair[1], total)
    seconds = time.perf_counter() - start
    exact = [sum(col) for col in zip(*ints)]
    if summed != exact:
        raise RuntimeError("Paillier sum differs from the plain integer sum")
    per_entry = seconds / n
    return {"entries_measured": n, "seconds_measured": seconds,
            "table_entries": int(v.shape[1]), "seconds_full_table": per_entry * v.shape[1],
            "key_bits": key_bits, "platforms": int(v.shape[0])}

