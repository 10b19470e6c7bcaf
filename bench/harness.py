"""The benchmark harness: every workload, every library, every backend, interleaved.

``bash bench/run.sh`` (``make bench``) calls ``python -m bench.harness``; ``--smoke`` runs the
same cells at tiny sizes. For each backend it measures the store's own limits, then for each
row (workload) runs every library's cell ``iterations`` times in rotating order
(A B C, B C A, …) so a noisy machine spreads over all of them, and finally aggregates medians,
ratios and targets into ``bench/results/latest.json``, prints tables and renders
``BENCHMARKS.md``. Each cell is a separate process in the library's own virtualenv
(:mod:`bench.cell`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import adapters, machine, report, scaleout, summary
from bench.plan import FULL, ROWS, SMOKE, Row, Sizes

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
#: Where each library runs: Conveyor's own .venv, or a peer environment that bench/run.sh
#: builds from bench/requirements/<name>.txt (peers whose pins conflict get their own).
ENVS = {
    "main": Path(sys.executable),
    **{name: BENCH / f".venv-{name}" / "bin" / "python" for name in ("peers", "arq", "taskiq")},
}
DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/bench"


class Harness:
    """One run: its settings, the availability of each library, and every cell's result."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes: Sizes = SMOKE if args.smoke else FULL
        if args.iterations:
            self.sizes = Sizes(**{**self.sizes.__dict__, "iterations": args.iterations})
        self.run_id = uuid.uuid4().hex[:6]
        db = args.redis_db if args.redis_db is not None else (14 if args.smoke else 15)
        base = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
        # Smoke runs use two lanes on Redis (two databases: db and db - 1), see run_lanes.
        self.redis_urls = [f"{base}/{d}" for d in ((db, db - 1) if args.smoke else (db,))]
        self.redis_url = self.redis_urls[0]
        self.pg_url = os.environ.get("BENCH_PG_URL", DEFAULT_PG)
        self.tmp = RESULTS / "tmp" / self.run_id
        self.cells: list[dict[str, Any]] = []
        self.counter = itertools.count(1)
        self.lock = threading.Lock()
        self.available: dict[str, str | None] = {}  # lib -> None (ok) or the reason
        self.versions: dict[str, str] = {}
        self.console = report.console()
        self.bus: dict[str, Any] = {}  # backend -> the event bus rows (bench/bus.py)

    # -- environments -----------------------------------------------------------------------
    def python_for(self, lib: str) -> Path:
        return ENVS[adapters.LIBRARIES[lib].env]

    def probe(self, lib: str) -> str | None:
        """``None`` when ``lib`` can run here, else why not."""
        if lib in self.available:
            return self.available[lib]
        info = adapters.LIBRARIES[lib]
        python = self.python_for(lib)
        reason: str | None = None
        if not python.exists():
            reason = f"not installed: {python.parent.parent.name} missing (run bash bench/run.sh)"
        else:
            code = (
                "import importlib, importlib.metadata as m; "
                f"importlib.import_module({info.probe!r}); print(m.version({info.distribution!r}))"
            )
            out = subprocess.run(
                [str(python), "-c", code], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                reason = f"not importable in {python}: {out.stderr.strip().splitlines()[-1:]}"
            else:
                self.versions[info.distribution] = out.stdout.strip()
        self.available[lib] = reason
        return reason

    # -- cells ------------------------------------------------------------------------------
    def run_cell(
        self,
        backend: str,
        row: Row,
        lib: str,
        iteration: int,
        variant: str | None = None,
        redis_url: str | None = None,
        *,
        record: bool = True,
        pg_url: str | None = None,
    ) -> dict[str, Any]:
        """Run one cell; ``record=False`` keeps it out of the main tables (scale-out rows)."""
        number = next(self.counter)
        ns = f"b{self.run_id}_{number}"
        cell_dir = self.tmp / "cells" / f"{number:04d}-{backend}-{row.key}-{lib}"
        params = row.spec(self.sizes)
        spec = {
            "lib": lib,
            "backend": backend,
            "ns": ns,
            "redis_url": redis_url or self.redis_url,
            "pg_url": pg_url or self.pg_url,
            "sqlite_dir": str(self.tmp / "sqlite"),
            "cell_dir": str(cell_dir),
            "variant": variant,
            **params,
        }
        with self.lock:
            reason = self.probe(lib)
        if reason is not None:
            result: dict[str, Any] = {"reason": reason}
        else:
            result = self._spawn(lib, spec, params)
        cell = {"backend": backend, "row": row.key, "lib": lib, "iteration": iteration, **result}
        if variant:
            cell["variant"] = variant
        if record:
            self.cells.append(cell)
        self.console.print(report.progress_line(cell, row))
        if "error" not in result:
            shutil.rmtree(cell_dir, ignore_errors=True)
        return cell

    def _spawn(self, lib: str, spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        timeout = float(params.get("deadline", 0)) + 180.0
        argv = [str(self.python_for(lib)), "-m", "bench.cell", json.dumps(spec)]
        try:
            out = subprocess.run(
                argv,
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the cell did not finish within {timeout:.0f}s"}
        for line in out.stdout.splitlines():
            if line.startswith("BENCH-RESULT "):
                result: dict[str, Any] = json.loads(line[len("BENCH-RESULT ") :])
                if "error" in result:
                    Path(spec["cell_dir"]).mkdir(parents=True, exist_ok=True)
                    (Path(spec["cell_dir"]) / "cell.log").write_text(out.stderr)
                return result
        tail = (out.stderr or out.stdout)[-800:]
        return {"error": f"the cell exited with {out.returncode} and no result: {tail}"}

    # -- the run ----------------------------------------------------------------------------
    def libraries(self, backend: str) -> list[str]:
        chosen = ["conveyor", *adapters.PEERS[backend]]
        if self.args.libs:
            wanted = set(self.args.libs.split(","))
            chosen = [lib for lib in chosen if lib in wanted]
        return chosen

    def rows(self) -> list[Row]:
        if not self.args.rows:
            return list(ROWS)
        wanted = set(self.args.rows.split(","))
        return [row for row in ROWS if row.key in wanted]

    def run_backend(self, backend: str) -> None:
        libs = self.libraries(backend)
        for row in self.rows():
            row_libs = list(libs)
            if row.floors and not self.args.no_floors and "conveyor" in libs:
                row_libs += ["floor", "backend-loop"]
            iterations = self.sizes.iterations if row.repeat else 1
            for iteration in range(iterations):
                shift = iteration % len(row_libs)
                for lib in row_libs[shift:] + row_libs[:shift]:
                    self.run_cell(backend, row, lib, iteration)

    def run_lanes(self, limits: dict[str, Any]) -> None:
        """Smoke runs: backends (and two halves of the Redis peers, on two databases) run side
        by side. Their numbers mean nothing; the point is that every cell still works."""
        lanes: list[tuple[str, list[str], str]] = []
        for backend in self.args.backends.split(","):
            libs = self.libraries(backend)
            for lib in libs:
                self.probe(lib)
            if backend == "redis" and len(self.redis_urls) > 1 and len(libs) > 1:
                lanes += [(backend, libs[0::2], self.redis_urls[0])]
                lanes += [(backend, libs[1::2], self.redis_urls[1])]
            else:
                lanes.append((backend, libs, self.redis_url))

        def lane(backend: str, libs: list[str], url: str) -> None:
            if url == self.redis_url and not self.args.no_limits:
                limits[backend] = self.run_tool("bench.limits", backend)
                self.console.print(report.limits_lines(backend, limits[backend]))
            if url == self.redis_url and "conveyor" in libs and not self.args.no_bus:
                self.bus[backend] = self.run_tool("bench.bus", backend)  # the event bus
                self.console.print(report.bus_lines(backend, self.bus[backend]))
            for row in self.rows():
                extra = ["floor", "backend-loop"] if row.floors and "conveyor" in libs else []
                for lib in libs + ([] if self.args.no_floors else extra):
                    self.run_cell(backend, row, lib, 0, redis_url=url)

        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            for future in [pool.submit(lane, *spec) for spec in lanes]:
                future.result()

    def run(self) -> dict[str, Any]:
        started = time.time()
        (self.tmp / "sqlite").mkdir(parents=True, exist_ok=True)
        ensure_database(self.pg_url)
        meta: dict[str, Any] = {
            "run_id": self.run_id,
            "mode": "smoke" if self.args.smoke else "full",
            "sizes": self.sizes.__dict__,
            "started": started,
            "machine": machine.describe(self.redis_url, self.pg_url),
            "redis_url": self.redis_url,
            "pg_url": self.pg_url,
        }
        limits: dict[str, Any] = {}
        profiles: dict[str, Any] = {}
        if self.args.smoke:
            self.run_lanes(limits)
        for backend in self.args.backends.split(",") if not self.args.smoke else ():
            self.console.rule(f"[bold]{backend}")
            if not self.args.no_limits:
                limits[backend] = self.run_tool("bench.limits", backend)
                self.console.print(report.limits_lines(backend, limits[backend]))
            self.run_backend(backend)
            if "conveyor" in self.libraries(backend) and not self.args.no_bus:
                self.bus[backend] = self.run_tool("bench.bus", backend)  # the event bus
                self.console.print(report.bus_lines(backend, self.bus[backend]))
            if self.args.profile:
                profiles[backend] = self.run_tool("bench.profile", backend)
                profiles[backend]["roundtrips"] = self.run_tool("bench.roundtrips", backend)
        skip = self.args.no_scaleout or "conveyor" not in self.libraries("sqlite")
        scale = None if skip else scaleout.measure(self)
        integrations: dict[str, Any] = {}
        if not self.args.no_integrations:  # webhooks, bridges, realtime (issue 17)
            integrations = self.run_tool("bench.integrations", "none")
            self.console.print(report.integration_lines(integrations))
        meta["finished"] = time.time()
        meta["load_average_end"] = os.getloadavg()
        meta["versions"] = self.versions
        data = summary.build(meta, self.cells, limits, profiles)
        data["bus"] = self.bus
        if scale is not None:
            data["scaleout"] = scale
        if integrations:
            data["integrations"] = integrations
        shutil.rmtree(self.tmp, ignore_errors=True)
        return data

    def run_tool(self, module: str, backend: str) -> dict[str, Any]:
        """Run a measuring module (limits, profile) in Conveyor's environment."""
        spec = {
            "backend": backend,
            "ns": f"b{self.run_id}_{module.rsplit('.', 1)[-1]}",
            "redis_url": self.redis_url,
            "pg_url": self.pg_url,
            "sqlite_dir": str(self.tmp / "sqlite"),
            "cell_dir": str(self.tmp / module / backend),
            "seconds": self.sizes.limit_seconds,
            "smoke": self.args.smoke,
            "n": self.sizes.process_high,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-m", module, json.dumps(spec)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        for line in out.stdout.splitlines():
            if line.startswith("BENCH-RESULT "):
                result: dict[str, Any] = json.loads(line[len("BENCH-RESULT ") :])
                return result
        return {"error": (out.stderr or out.stdout)[-1500:]}


def ensure_database(pg_url: str) -> None:
    """Create the ``bench`` database when it does not exist yet."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(pg_url)
    name = params.get("dbname", "bench")
    try:
        with psycopg.connect(pg_url, connect_timeout=5):
            return
    except psycopg.OperationalError:
        pass
    admin = make_conninfo(pg_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def redis_db_lock(url: str) -> Iterator[None]:
    """One run per Redis database at a time (a smoke test and a full run use different ones)."""
    path = Path("/tmp") / f"conveyor-bench-{url.rsplit('/', 1)[-1]}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one iteration")
    parser.add_argument("--backends", default="redis,postgres,sqlite")
    parser.add_argument("--libs", help="only these libraries (comma-separated)")
    parser.add_argument("--rows", help="only these rows, e.g. process_high,latency")
    parser.add_argument("--iterations", type=int, help="override the iteration count")
    parser.add_argument("--redis-db", type=int, help="Redis database number (default 15, smoke 14)")
    parser.add_argument("--no-limits", action="store_true", help="skip the store limits")
    parser.add_argument("--no-floors", action="store_true", help="skip the floor rows")
    parser.add_argument("--no-bus", action="store_true", help="skip the event bus rows")
    parser.add_argument(
        "--no-integrations", action="store_true", help="skip webhooks, bridges and realtime"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy profile Conveyor's worker")
    parser.add_argument(
        "--no-scaleout", action="store_true", help="skip the scale-out rows (bench/scaleout.py)"
    )
    parser.add_argument("--output", default=str(RESULTS / "latest.json"))
    parser.add_argument("--markdown", help="render this Markdown file (BENCHMARKS.md)")
    parser.add_argument("--quiet", action="store_true", help="no tables at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    harness = Harness(args)
    with contextlib.ExitStack() as stack:
        for url in harness.redis_urls:
            stack.enter_context(redis_db_lock(url))
        data = harness.run()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if not args.quiet:
        report.print_tables(harness.console, data)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(data))
    harness.console.print(f"results: {output}" + (f", {args.markdown}" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
