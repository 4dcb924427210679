"""Print the heuristic baselines' metrics on the default ED and on K heterogeneous hospitals.

    python scripts/hospital_baselines.py --episodes 8 --days 1 --hospitals 5 --seed 0

Markdown tables go to stdout; nothing is written to disk. ``fifo`` and ``strict_priority`` run
with their own within-queue order and no aging (``HEURISTIC_ENV``); metric definitions in
``fedrl/envs/hospital/metrics.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from fedrl.envs.hospital import (  # noqa: E402
    HEURISTICS, HospitalConfig, evaluate, heuristic_params, hospital_configs, make_params)

COLUMNS = (("acuity_weighted_wait", "AW wait"), ("door_to_provider_median", "D2P med"),
           ("door_to_provider_p90", "D2P p90"), ("never_seen_share", "never seen"),
           ("within_target", "in target"), ("lwbs_rate", "LWBS"),
           ("transfer_rate", "transfer rate"), ("diverted_rate", "diverted"),
           ("utilisation_staff", "util staff"),
           ("utilisation_beds", "util beds"), ("worst_class_p95_wait", "worst p95"),
           ("episode_return", "return"), ("transfers", "transfers"), ("surges", "surges"))


def table(params, key, episodes: int) -> str:
    lines = ["| policy | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name, policy in HEURISTICS.items():
        # fifo / strict_priority with their own within-queue order and no aging (HEURISTIC_ENV)
        m = evaluate(policy, heuristic_params(name, params), key, episodes)
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3g}" for c, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--hospitals", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = HospitalConfig(episode_steps=288 * args.days)
    key = jax.random.PRNGKey(args.seed)
    t = time.time()
    print(f"## default hospital ({cfg.annual_visits:.0f} visits/yr), {args.episodes} episodes "
          f"x {args.days} day(s)\n")
    print(table(make_params(cfg), key, args.episodes))
    others = (hospital_configs(cfg, args.hospitals, jax.random.fold_in(key, 1))
              if args.hospitals else [])
    for k, c in enumerate(others):
        shares = "/".join(f"{100 * s:.1f}" for s in c.esi_shares)
        print(f"\n## hospital {k}: {c.annual_visits:.0f} visits/yr, ESI % {shares}, "
              f"staffing x{c.staffing_factor:.2f}, {c.num_beds} beds\n")
        print(table(make_params(c), key, args.episodes))
    print(f"\n(total {time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
