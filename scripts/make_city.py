"""Write one synthetic Chengdu-like day in the Didi GAIA file format.

    python scripts/make_city.py --out DIR --scale S --seed N [--platforms K --shares 0.5,0.3,0.2
                                [--spatial-skew 1.0]] [--hours H --start-hour H0] [--no-gps]

Writes ``order_YYYYMMDD`` (GAIA 7 columns + reward_units), ``drivers_YYYYMMDD``
(driver_id, shift_start, shift_end, lon, lat), ``platforms_YYYYMMDD`` (kind, id, platform),
``gps_YYYYMMDD`` (shift start/end pings) and ``city.json`` (config and calibration summary).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrl.config import ConfigError  # noqa: E402
from fedrl.data.city import CityConfig, generate_day, write_day  # noqa: E402


def parse_shares(text: str | None, k: int) -> tuple:
    if not text:
        return tuple([1.0 / k] * k)
    try:
        shares = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"--shares must be comma-separated numbers, got {text!r}") from None
    if len(shares) != k:
        raise ConfigError(f"--shares lists {len(shares)} values for --platforms {k}")
    return shares


def seed_arg(text: str) -> int:
    """--seed: an integer >= 0 (numpy's SeedSequence refuses negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--platforms", type=int, default=1)
    parser.add_argument("--shares", default=None, help="comma-separated, sums to 1")
    parser.add_argument("--spatial-skew", type=float, default=0.0)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--start-hour", type=float, default=0.0)
    parser.add_argument("--no-gps", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.platforms < 1:
            raise ConfigError(f"--platforms must be >= 1, got {args.platforms}")
        shares = parse_shares(args.shares, args.platforms)
        cfg = CityConfig(scale=args.scale, hours=args.hours, start_hour=args.start_hour)
        day = generate_day(cfg, args.seed)
        meta = write_day(args.out, day, shares=shares, spatial_skew=args.spatial_skew,
                         gps=not args.no_gps)
    except (ConfigError, OSError) as err:   # OSError: an --out that cannot be written
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **meta["files"], **meta["summary"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
