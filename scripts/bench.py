"""Benchmarks of fedrl: prints a table and optionally writes JSON.

    python scripts/bench.py [--only NAME[,NAME]] [--json OUT] [--quick] [--host-devices N]
                            [--intra-op-threads N]

On CPU, XLA runs small ops (the per-party matmuls of a vmapped round) on one thread; cases that
spread work over devices (``fed_dqn``'s sharded round) use both cores of a 2-core machine only
through several host devices. ``--host-devices`` (default: one per CPU core) sets
``XLA_FLAGS=--xla_force_host_platform_device_count`` before JAX starts, unless XLA_FLAGS already
sets it. Cases without sharding run on the first device as usual; ``dp_round`` runs its DP and
plain rounds alike over all devices (``FederatedConfig.devices=0``). It does nothing to GPUs.

Every case compares against a baseline measured in the same run and reports the ratio
(``value / baseline_value`` for throughputs, ``baseline_value / value`` for times, so that
ratio > 1 always means "ours is better"). Cases live in ``scripts/bench_cases/`` and are
discovered automatically. JSON layout::

    {"device": ..., "cases": [{"name", "params", "value", "unit",
                               "baseline", "baseline_value", "ratio"}, ...],
     "argv": [...], "xla_flags": ..., "wall_s": ..., "provenance": {versions, git_commit, device}}
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_cases  # noqa: E402

ROW_KEYS = ("name", "params", "value", "unit", "baseline", "baseline_value", "ratio")


def discover() -> dict[str, object]:
    """Map case name -> module for every module in scripts/bench_cases."""
    cases = {}
    for info in pkgutil.iter_modules(bench_cases.__path__):
        module = importlib.import_module(f"bench_cases.{info.name}")
        if hasattr(module, "run"):
            cases[getattr(module, "NAME", info.name)] = module
    return cases


def cpu_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_host_devices(n: int) -> None:
    """Ask XLA for ``n`` CPU host devices (must run before JAX initialises its backends)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def device_description() -> str:
    import jax
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', str(dev))} x{jax.device_count()}"


def format_table(rows: list[dict]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.4g}"
        if isinstance(x, dict):
            return ", ".join(f"{k}={v}" for k, v in x.items())
        return "" if x is None else str(x)
    header = "| case | params | value | unit | baseline | baseline value | ratio |"
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in ROW_KEYS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated case names")
    parser.add_argument("--json", default=None, help="write results as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--host-devices", type=int, default=0,
                        help="CPU host devices (default 0: one per core; 1: a single device)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="XLA:CPU intra-op pool threads (default 0: XLA's, one per core; "
                             "1 speeds small-op programs such as dispatch_day, see "
                             "fedrl/host_cpu.py)")
    args = parser.parse_args(argv)
    if args.host_devices < 0:
        parser.error(f"--host-devices must be >= 0, got {args.host_devices}")
    if args.intra_op_threads < 0:
        parser.error(f"--intra-op-threads must be >= 0, got {args.intra_op_threads}")
    set_host_devices(args.host_devices or cpu_cores())
    if args.intra_op_threads:
        from fedrl.host_cpu import limit_intra_op_threads
        limit_intra_op_threads(args.intra_op_threads)

    cases = discover()
    names = list(cases) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; available: {sorted(cases)}")

    rows: list[dict] = []
    started = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        new_rows = cases[name].run(quick=args.quick)
        for row in new_rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise RuntimeError(f"bench case {name} returned a row without {missing}")
        rows.extend(new_rows)
        print(f"[bench] {name} done in {time.perf_counter() - start:.1f}s", file=sys.stderr)

    print(f"device: {device_description()}")
    print(format_table(rows))
    if args.json:
        from fedrl.results import atomic_write_json, provenance
        atomic_write_json(args.json, {
            "device": device_description(), "cases": rows,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "wall_s": round(time.perf_counter() - started, 1), "provenance": provenance()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
