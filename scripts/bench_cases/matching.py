"""Matching benchmark: the JAX auction vs optax's JAX Hungarian vs scipy's C++ solver.

    python scripts/bench.py --only matching [--quick] [--json out.json]

Single problems (square, uniform weights: n = 50, 200, 1000; quick: 50, 200) and dispatch-shaped
batches (256 x 16x48 and 64 x 64x128; quick: 64 x 16x48 and 16 x 64x128) of two instance kinds
(``dispatch``: geometric, all nearby drivers want the same expensive orders, the hard case for
auctions; ``uniform``: U(0,1) weights, few conflicts). Times are per problem, steady state
(median of interleaved repeats after compilation, ``block_until_ready``); compile times are
reported apart (``compile_s`` / ``baseline_compile_s``). The optimality gap of the auction is
measured against scipy (relative, mean and max over the problems). Batches use
``match(..., method="auction")``, the staged batch auction (``auction_match_batch``: hard
problems re-solved apart, same results as a plain ``vmap`` of ``auction_match``, which is timed
too: ``plain_vmap_auction_ms_per_problem``). Rows: value = auction time, baseline = optax
Hungarian or scipy.optimize.linear_sum_assignment (a Python loop over the batch), ratio =
baseline / value (> 1: the auction is faster).
"""
from __future__ import annotations

import functools
import statistics
import time

import jax
import numpy as np
import scipy.optimize

from fedrl.matching import auction_match, hungarian_match, match
from fedrl.matching.instances import random_instances

from bench_cases.timing import interleaved_medians

NAME = "matching"


def _compile(fn, args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*args))  # warm-up
    return compiled, compile_s, out


def _scipy(weights, masks, repeats):
    """Optimum of each problem (clip at 0, masked -> 0, zero pairs add nothing) and its time."""
    clipped = np.where(masks, np.maximum(weights, 0.0), 0.0).astype(np.float64)
    times, optima = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        vals = []
        for w in clipped:
            r, c = scipy.optimize.linear_sum_assignment(w, maximize=True)
            vals.append(w[r, c].sum())
        times.append(time.perf_counter() - start)
        optima = np.array(vals)
    return statistics.median(times), optima


def _case(batch, n, m, kind, repeats, seed=0):
    key = jax.random.key(seed)
    w, mask = random_instances(key, batch, n, m, kind)
    if batch == 1:
        w, mask = w[0], mask[0]
        auction, hungarian = auction_match, hungarian_match
    else:
        # batches: match(...) runs the staged batch auction (auction_match_batch)
        auction = lambda w, m: match(w, m, method="auction")
        hungarian = jax.vmap(hungarian_match)
    f_a, c_a, res_a = _compile(auction, (w, mask))
    f_h, c_h, res_h = _compile(hungarian, (w, mask))
    fns = [f_a, f_h] + ([_compile(jax.vmap(auction_match), (w, mask))[0]] if batch > 1 else [])
    times = interleaved_medians({i: functools.partial(f, w, mask) for i, f in enumerate(fns)},
                                repeats)
    t_a, t_h, *t_v = (times[i] for i in range(len(fns)))
    t_v = t_v[0] if t_v else t_a
    wn, mn = np.asarray(w).reshape(batch, n, m), np.asarray(mask).reshape(batch, n, m)
    t_s, opt = _scipy(wn, mn, max(1, repeats // 2))
    tot_a = np.asarray(res_a.total, np.float64).reshape(batch)
    tot_h = np.asarray(res_h.total, np.float64).reshape(batch)
    gap = (opt - tot_a) / np.maximum(opt, 1e-12)
    gap_h = np.abs(opt - tot_h) / np.maximum(opt, 1e-12)
    params = {"batch": batch, "n": n, "m": m, "kind": kind,
              "gap_mean": float(f"{gap.mean():.2e}"), "gap_max": float(f"{gap.max():.2e}")}
    extra = {"compile_s": round(c_a, 3), "iterations_max": int(np.max(res_a.iterations)),
             "plain_vmap_auction_ms_per_problem": round(t_v * 1e3 / batch, 5),
             "converged": bool(np.all(res_a.converged)),
             "hungarian_gap_max": float(gap_h.max())}
    per = 1e3 / batch  # seconds per call -> ms per problem
    return [
        dict(name="matching/auction_vs_hungarian", params=params, value=t_a * per,
             unit="ms/problem", baseline="optax hungarian (jax)", baseline_value=t_h * per,
             ratio=t_h / t_a, baseline_compile_s=round(c_h, 3), **extra),
        dict(name="matching/auction_vs_scipy", params=params, value=t_a * per,
             unit="ms/problem", baseline="scipy linear_sum_assignment (C++)",
             baseline_value=t_s * per, ratio=t_s / t_a, **extra),
    ]


def run(quick: bool) -> list[dict]:
    repeats = 3 if quick else 15
    singles = [50, 200] if quick else [50, 200, 1000]
    batches = [(64, 16, 48), (16, 64, 128)] if quick else [(256, 16, 48), (64, 64, 128)]
    rows = []
    for n in singles:
        rows += _case(1, n, n, "uniform", repeats)
    for batch, n, m in batches:
        for kind in ("dispatch", "uniform"):
            rows += _case(batch, n, m, kind, repeats)
    return rows
