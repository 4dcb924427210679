"""Privacy budget of client-level DP-FedAvg (Poisson-subsampled Gaussian, dp-accounting).

    python scripts/privacy_budget.py --noise-multiplier Z --sampling-rate Q --rounds T \
        --delta D [--accountant pld|rdp]          -> {"epsilon": ..., inputs...}
    python scripts/privacy_budget.py --target-epsilon E --sampling-rate Q --rounds T \
        --delta D [--accountant pld|rdp]          -> {"noise_multiplier": ..., inputs...}

Prints one JSON object on stdout. Impossible inputs (delta outside (0, 1), q outside (0, 1],
z <= 0, T < 1, eps <= 0) print one error line on stderr and exit with status 2.
Assumes Poisson client sampling with rate q (see docs/privacy.md for fixed-size cohorts).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrl.config import ConfigError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--noise-multiplier", type=float, help="z (noise std / clip norm)")
    which.add_argument("--target-epsilon", type=float, help="solve for z reaching this epsilon")
    parser.add_argument("--sampling-rate", type=float, required=True, help="Poisson rate q")
    parser.add_argument("--rounds", type=int, required=True, help="number of rounds T")
    parser.add_argument("--delta", type=float, required=True)
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld")
    args = parser.parse_args(argv)

    # dp-accounting's RDP logs convergence warnings for some orders; they are not errors.
    logging.getLogger("absl").setLevel(logging.ERROR)
    from fedrl.privacy import accounting

    inputs = {"sampling_rate": args.sampling_rate, "rounds": args.rounds, "delta": args.delta,
              "accountant": args.accountant}
    try:
        if args.noise_multiplier is not None:
            eps = accounting.epsilon(args.noise_multiplier, args.sampling_rate, args.rounds,
                                     args.delta, args.accountant)
            out = {"epsilon": eps, "noise_multiplier": args.noise_multiplier, **inputs}
        else:
            z = accounting.noise_multiplier_for_epsilon(
                args.target_epsilon, args.sampling_rate, args.rounds, args.delta,
                args.accountant)
            out = {"noise_multiplier": z, "target_epsilon": args.target_epsilon, **inputs}
    except ConfigError as err:
        print(f"privacy_budget: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
