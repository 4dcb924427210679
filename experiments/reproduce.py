"""Run every experiment at one preset and print their tables.

    python -m experiments.reproduce --preset quick --out results/ [--seed N] [--only a,b] [--resume]
                                    [--compile-cache DIR]

Each experiment writes into ``OUT/<name>/``; a summary of all tables goes to ``OUT/tables.md``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from experiments.common import USER_ERRORS, add_compile_cache_flag, execute, use_compile_cache
from fedrl.results import atomic_write_text

# In the order a reader meets them in the README.
EXPERIMENTS = ("hospital", "privacy_utility", "dispatch", "fedltd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", default="results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated experiment names")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)
    names = EXPERIMENTS if args.only is None else tuple(args.only.split(","))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; available: {list(EXPERIMENTS)}")

    try:
        use_compile_cache(args.compile_cache)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tables = []
    for name in names:
        experiment = importlib.import_module(f"experiments.{name}").EXPERIMENT
        start = time.perf_counter()
        print(f"== {name} ({args.preset})", file=sys.stderr, flush=True)
        try:
            execute(experiment, args.preset, out / name, args.seed, resume=args.resume,
                    progress=not args.no_progress)
        except USER_ERRORS as err:
            print(f"error in {name}: {err}", file=sys.stderr)
            return 2
        table = (out / name / "table.md").read_text()
        tables.append(f"## {name}\n\n{table}")
        print(f"\n## {name} ({time.perf_counter() - start:.0f}s)\n\n{table}", flush=True)
    atomic_write_text(out / "tables.md", "\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
