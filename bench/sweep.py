"""Find each synchronous peer's "natural best" worker set-up on this machine.

``python -m bench.sweep [--backend redis] [--row process_high] [--iterations 2]`` runs the
processing row once per variant of each library (the ``VARIANTS`` of its adapter),
interleaved, and prints the medians. The adapters' ``DEFAULTS`` record the winners;
``docs/benchmarks.md`` lists the sweep's results.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys

from bench import adapters
from bench.harness import Harness, ensure_database, parse
from bench.plan import ROWS_BY_KEY


def variants(lib: str) -> list[str]:
    module = importlib.import_module(adapters.LIBRARIES[lib].module)
    names = getattr(module, "VARIANTS", None) or getattr(module, "POLL_DELAYS", None) or {}
    return list(names)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep")
    parser.add_argument("--backend", default="redis")
    parser.add_argument("--row", default="process_high")
    parser.add_argument("--libs", default="celery,rq,dramatiq,huey,arq")
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args(argv)
    harness = Harness(parse(["--no-limits"]))
    harness.tmp.mkdir(parents=True, exist_ok=True)
    ensure_database(harness.pg_url)
    row = ROWS_BY_KEY[args.row]
    plan = [(lib, v) for lib in args.libs.split(",") for v in variants(lib)]
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    for _ in range(args.iterations):
        for lib, variant in plan:
            cell = harness.run_cell(args.backend, row, lib, 0, variant)
            if "metrics" in cell:
                rates[(lib, variant)].append(cell["metrics"]["jobs_per_s"])
    for (lib, variant), values in rates.items():
        shown = f"{statistics.median(values):8.0f} jobs/s" if values else "   failed"
        print(f"{args.backend} {args.row} {lib:10} {variant:14} {shown}  {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
