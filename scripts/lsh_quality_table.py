"""Measure the candidate quality of Fed-LTD's location hashing (docs/fedltd_encoding.md table).

Uniform random drivers and orders in a 30 km x 34 km box, true neighbours within a 2 km pick-up
radius; for each bucket width r and (m hashes per table, L tables), recall and false-pair rate
of the LSH candidate pairs (fedrl.fedltd.encoding.lsh_quality), averaged over hash-key seeds.

    python scripts/lsh_quality_table.py [--points 1500] [--seeds 3] [--min-tables 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrl.fedltd.encoding import LSHConfig, lsh_params, lsh_quality  # noqa: E402

WIDTH_M, HEIGHT_M, RADIUS_M = 30_000.0, 34_000.0, 2_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1500, help="drivers and orders each")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-tables", type=int, default=1,
                        help="a pair is a candidate when >= this many tables collide")
    args = parser.parse_args()
    rows = []
    settings = [("e2lsh", m, L) for m, L in ((1, 1), (2, 4), (1, 4))] + [("grid", 2, 1),
                                                                        ("grid", 2, 4)]
    for r in (1000.0, 2000.0, 4000.0):
        for kind, m, num_tables in settings:
            cfg = LSHConfig(kind=kind, num_hashes=m, num_tables=num_tables, bucket_width_m=r)
            stats = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                xa, xb = rng.uniform(0, WIDTH_M, (2, args.points))
                ya, yb = rng.uniform(0, HEIGHT_M, (2, args.points))
                params = lsh_params(jax.random.key(seed), cfg)
                stats.append(lsh_quality(params, cfg, xa, ya, xb, yb, RADIUS_M,
                                         min_tables=args.min_tables))
            mean = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
            rows.append(f"| {r:.0f} | {kind} | {m if kind == 'e2lsh' else '(2 axes)'} | "
                        f"{num_tables} | {mean['recall']:.3f} | {mean['false_pair_rate']:.3f} | "
                        f"{mean['candidates_per_a']:.1f} | {mean['near_per_a']:.1f} |")
    print("| r (m) | kind | m | L | recall | false-pair rate | candidates / driver "
          "| true near / driver |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
