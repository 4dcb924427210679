"""Secure summation: mask-based secure aggregation (ours, JAX) vs Paillier HE (phe).

Time to aggregate K client vectors, K in {3, 10, 50}, of two sizes: the hospital DQN
(MLP 12-256-256-5: 70,405 parameters) and a Fed-LTD value table (144 time slots x 1,100 cells
= 158,400 values). Ours: quantize to Z_{2^32}, pairwise-mask (every party computes its own
K-1 masks: total O(K^2 D) PRG work, all parties' work summed), modular sum, dequantize; one
jitted call, compile time reported separately, steady state = median of repeats.

Paillier (2048-bit n, python-paillier, pure Python) is far too slow to run at these sizes: we
run a real encrypt / homomorphic add / decrypt aggregation of K=3 parties x a few coordinates,
check it, take per-operation costs and extrapolate linearly: D * (K t_enc + (K-1) t_add +
t_dec). Both sides count all parties' work (clients' encryption or masking + server work).
ratio = Paillier / ours (> 1: ours faster). Rows without ``phe`` installed have no baseline.
"""
from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedrl.federated.aggregation import Cohort, secure_sum
from fedrl.privacy import paillier
from fedrl.privacy.quantization import FixedPoint

NAME = "secure_sum"

DQN_PARAMS = 12 * 256 + 256 + 256 * 256 + 256 + 256 * 5 + 5   # 70,405
FEDLTD_TABLE = 144 * 1100                                      # 158,400


def _time_ours(k: int, dim: int, fp: FixedPoint, repeats: int) -> tuple[float, float]:
    transform = secure_sum(fp)
    fn = jax.jit(lambda cohort, key: transform.update(cohort, (), key)[0])
    x = jax.random.uniform(jax.random.key(0), (k, dim), minval=-1.0, maxval=1.0)
    cohort = Cohort(x, jnp.ones(k), jnp.ones(k))
    start = time.perf_counter()
    fn(cohort, jax.random.key(1)).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        fn(cohort, jax.random.key(2 + r)).block_until_ready()
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def _paillier_costs(key_bits: int, coords: int, parties: int = 3) -> dict:
    """Measured per-operation costs of a real Paillier aggregation (checked for exactness)."""
    rng = np.random.default_rng(0)
    vectors = rng.integers(-2 ** 16, 2 ** 16, size=(parties, coords)).tolist()
    public, private = paillier.generate_keypair(key_bits)
    start = time.perf_counter()
    encrypted = [paillier.encrypt_vector(public, v) for v in vectors]
    t_enc = (time.perf_counter() - start) / (parties * coords)
    start = time.perf_counter()
    total = encrypted[0]
    for e in encrypted[1:]:
        total = paillier.add_encrypted(total, e)
    t_add = (time.perf_counter() - start) / ((parties - 1) * coords)
    start = time.perf_counter()
    result = paillier.decrypt_vector(private, total)
    t_dec = (time.perf_counter() - start) / coords
    if result != np.sum(vectors, axis=0).tolist():
        raise RuntimeError("Paillier baseline returned a wrong sum")
    return {"t_enc": t_enc, "t_add": t_add, "t_dec": t_dec}


def run(quick: bool) -> list[dict]:
    fp = FixedPoint(scale=2.0 ** 16, bits=32, value_bound=1.0)
    if quick:
        sizes = [("tiny", 1000)]
        parties = [3, 10]
        key_bits, sample_coords, repeats = 1024, 4, 3
    else:
        sizes = [("dqn_12-256-256-5", DQN_PARAMS), ("fedltd_table_144x1100", FEDLTD_TABLE)]
        parties = [3, 10, 50]
        key_bits, sample_coords, repeats = 2048, 16, 3

    costs = None
    if paillier.available():
        costs = _paillier_costs(key_bits, sample_coords)
    else:
        print("[bench] secure_sum: package 'phe' not installed; Paillier baseline rows skipped",
              file=sys.stderr)

    rows = []
    for label, dim in sizes:
        for k in parties:
            compile_s, ours = _time_ours(k, dim, fp, repeats)
            params = {"vector": label, "D": dim, "K": k, "ring_bits": fp.bits,
                      "compile_s": round(compile_s, 3), "repeats": repeats,
                      "device": jax.devices()[0].platform}
            row = {"name": NAME, "params": params, "value": ours, "unit": "s",
                   "baseline": None, "baseline_value": None, "ratio": None}
            if costs is not None:
                he = dim * (k * costs["t_enc"] + (k - 1) * costs["t_add"] + costs["t_dec"])
                params["he"] = (f"paillier-{key_bits} (phe), extrapolated linearly from a measured "
                                f"K=3 x {sample_coords}-coordinate aggregation: "
                                f"t_enc={costs['t_enc'] * 1e3:.2f}ms t_add="
                                f"{costs['t_add'] * 1e6:.1f}us t_dec={costs['t_dec'] * 1e3:.2f}ms")
                row.update(baseline=f"paillier-{key_bits} (extrapolated)",
                           baseline_value=he, ratio=he / ours)
            else:
                params["he"] = "skipped: phe not installed"
            rows.append(row)
    return rows
