"""The conventions every experiment follows (command line, outputs, resume).

An experiment is a frozen config dataclass with named presets (``smoke``: seconds, for tests;
``quick``: at most a few minutes on 2 CPU cores; ``paper``: full scale, for an accelerator) and
a ``run(config, seed, ctx) -> Report`` function. :func:`main` gives it the command line

    python -m experiments.<name> --preset P --out DIR --seed N [--set key=value ...] [--resume]

and writes into DIR:

* ``results.json``: experiment, preset, config, seed, provenance (package versions, git commit,
  device), wall and compile time, and for each method its metrics;
* ``table.md``: the table a paper would print;
* PNG plots written by the experiment through ``ctx.out_dir``.

``--compile-cache DIR`` keeps XLA's compiled programs in DIR (JAX's persistent compilation
cache; ``JAX_COMPILATION_CACHE_DIR`` does the same): a rerun, a ``--resume`` or another experiment
with the same programs loads them instead of compiling again. ``results.json`` records the
folder in use (``compile_cache``).

Every file is written atomically. Long experiments call ``ctx.done(method)`` /
``ctx.finish(method, metrics)`` around each method and ``ctx.save_checkpoint`` each round, so
``--resume`` skips finished methods and restarts unfinished ones from their last checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from fedrl import checkpoint
from fedrl.config import ConfigError, get_preset, override, to_dict, validate
from fedrl.data.gaia import DataError
from fedrl.results import atomic_write_json, atomic_write_text, provenance, to_jsonable


@dataclasses.dataclass
class Report:
    """What an experiment returns: per-method metrics, the markdown table, extras."""
    methods: dict[str, dict[str, Any]]
    table: str
    compile_time_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# Errors the user fixes from the command line: printed as one line, exit status 2.
USER_ERRORS = (ConfigError, DataError, FileNotFoundError)


def config_fingerprint(config: Any) -> str:
    text = json.dumps(to_jsonable(to_dict(config)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunContext:
    """Output folder, progress bars, per-method results and checkpoints of one run."""

    def __init__(self, out_dir: Path, config: Any, seed: int, *, resume: bool,
                 progress: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.show_progress = progress
        self._partial_path = self.out_dir / "partial.json"
        self._fingerprint = config_fingerprint(config) + f"-seed{seed}"
        self._finished: dict[str, dict] = {}
        if resume and self._partial_path.exists():
            saved = json.loads(self._partial_path.read_text())
            if saved.get("fingerprint") != self._fingerprint:
                raise ConfigError(
                    f"--resume: {self.out_dir} holds a run with another config or seed; "
                    "use the same --preset/--set/--seed or a new --out folder")
            self._finished = saved.get("methods", {})
        elif resume and any(self.checkpoint_dir.glob("*.msgpack")):
            raise ConfigError(
                f"--resume: {self.out_dir} holds checkpoints without a record of the config "
                "and seed that wrote them; run without --resume or in a new --out folder")
        elif not resume:
            for stale in [self._partial_path, *self.checkpoint_dir.glob("*.msgpack")]:
                if stale.exists():
                    stale.unlink()
        # The run's fingerprint is on disk before its first checkpoint, so that a --resume with
        # another config or seed is refused even if no method had finished.
        atomic_write_json(self._partial_path,
                          {"fingerprint": self._fingerprint, "methods": self._finished})

    # -- progress -----------------------------------------------------------------------
    def progress(self, iterable: Iterable, *, desc: str, total: int | None = None,
                 initial: int = 0):
        """A tqdm progress bar on stderr (per round, never per step inside jit)."""
        from tqdm.auto import tqdm
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=False,
                    disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True)

    # -- finished methods -----------------------------------------------------------------
    def done(self, method: str) -> dict | None:
        """The saved result of ``method`` when resuming a run that finished it, else None."""
        return self._finished.get(method)

    def finish(self, method: str, result: Mapping[str, Any]) -> None:
        """Record ``method`` as finished (atomically) and drop its checkpoint."""
        self._finished[method] = to_jsonable(dict(result))
        atomic_write_json(self._partial_path,
                          {"fingerprint": self._fingerprint, "methods": self._finished})
        ckpt = self.checkpoint_path(method)
        if ckpt.exists():
            ckpt.unlink()

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def checkpoint_path(self, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
        return self.checkpoint_dir / f"{safe}.msgpack"

    def save_checkpoint(self, method: str, tree: Any) -> None:
        checkpoint.save(self.checkpoint_path(method), tree)

    def restore_checkpoint(self, method: str, target: Any) -> Any | None:
        """The last checkpoint of ``method`` when resuming, else None."""
        path = self.checkpoint_path(method)
        if self.resume and path.exists():
            return checkpoint.restore(path, target)
        return None


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    presets: Mapping[str, Callable[[], Any]]
    run: Callable[[Any, int, RunContext], Report]
    description: str = ""


def build_config(experiment: Experiment, preset: str, assignments: Iterable[str] = ()) -> Any:
    config = get_preset(experiment.presets, preset, what=experiment.name)()
    validate(config)
    return override(config, list(assignments))


def parse_args(experiment: Experiment, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{experiment.name}",
                                     description=experiment.description)
    parser.add_argument("--preset", default="quick",
                        help=f"one of {sorted(experiment.presets)} (default quick)")
    parser.add_argument("--out", default=f"results/{experiment.name}", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="real data files (e.g. GAIA order_*): same as --set data_dir=DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from its checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_compile_cache_flag(parser)
    return parser.parse_args(argv)


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile-cache", default=None, metavar="DIR",
                        help="keep compiled programs in DIR and reuse them in later runs "
                             "(JAX's persistent compilation cache)")


def use_compile_cache(path: str | Path | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (created if missing; None: leave
    JAX's setting, e.g. ``JAX_COMPILATION_CACHE_DIR``, as it is). Call before anything
    compiles. Returns the cache folder in use, or None. Entries are keyed by the program, the
    compile options and the jax/jaxlib versions, so a stale entry is never used; programs that
    compile in under a second are not stored (``jax_persistent_cache_min_compile_time_secs``)."""
    import jax
    if path is not None:
        folder = Path(path).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--compile-cache {path}: cannot create the folder ({err})") \
                from None
        jax.config.update("jax_compilation_cache_dir", str(folder))
    return jax.config.jax_compilation_cache_dir or None


def execute(experiment: Experiment, preset: str, out: str | Path, seed: int, *,
            overrides: Iterable[str] = (), resume: bool = False,
            progress: bool = True) -> dict:
    """Run ``experiment`` and write its outputs; returns the results dict."""
    config = build_config(experiment, preset, overrides)
    ctx = RunContext(Path(out), config, seed, resume=resume, progress=progress)
    start = time.perf_counter()
    report = experiment.run(config, seed, ctx)
    wall = time.perf_counter() - start
    results = {
        "experiment": experiment.name,
        "preset": preset,
        "seed": seed,
        "config": to_dict(config),
        **provenance(),
        "compile_cache": use_compile_cache(None),
        "wall_time_s": wall,
        "compile_time_s": report.compile_time_s,
        "methods": report.methods,
        **report.extra,
    }
    atomic_write_json(ctx.out_dir / "results.json", results)
    atomic_write_text(ctx.out_dir / "table.md", report.table.rstrip() + "\n")
    return results


def main(experiment: Experiment, argv: list[str] | None = None) -> int:
    args = parse_args(experiment, argv)
    overrides = list(args.overrides) + ([f"data_dir={args.data}"] if args.data else [])
    try:
        use_compile_cache(args.compile_cache)
        results = execute(experiment, args.preset, args.out, args.seed,
                          overrides=overrides, resume=args.resume,
                          progress=not args.no_progress)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "table.md").read_text())
    print(f"[{experiment.name}] wrote {args.out}/results.json, table.md "
          f"({results['wall_time_s']:.1f}s wall, {results['compile_time_s']:.1f}s compile)")
    return 0


def markdown_table(header: list[str], rows: list[list[Any]], *, digits: int = 3) -> str:
    """A GitHub markdown table; floats are printed with ``digits`` significant decimals."""
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.4g}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
