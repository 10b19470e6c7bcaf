"""Scale-out rows of ``make bench``: Conveyor alone, on this machine.

* **Processes**: the ``process_high`` workload (no-op jobs pre-enqueued, then the worker
  started; jobs/s between the first and the last start) with 1, 2 and 4 worker processes of
  50 slots each (``conveyor worker -p N -c 50``), per backend.
* **PgBouncer**: on PostgreSQL, the same workload (2 processes) and single enqueues, direct and
  through a private PgBouncer in transaction pooling mode in front of the same server (the
  client detects the pooler: no prepared statements, waiting workers poll).
* **Redis Cluster**: 1, 2 and 3 shards (:mod:`bench.cluster`).

The harness calls :func:`measure` after its own rows (``--no-scaleout`` skips it); smoke runs
measure one cell of each kind at smoke sizes, so the code path never rots. The numbers land in
``results["scaleout"]`` and in a section of ``BENCHMARKS.md`` (:func:`markdown`).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.plan import ROWS_BY_KEY

if TYPE_CHECKING:
    from bench.harness import Harness

PROCESS_VARIANTS = ("p1c50", "p2c50", "p4c50")
PGBOUNCER_ROWS = (("process_high", "p2c50"), ("enqueue_single", None))
NAMES = {"redis": "Redis", "postgres": "PostgreSQL", "sqlite": "SQLite"}


def _median(cells: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    values = [c["metrics"][metric] for c in cells if "metrics" in c]
    errors = [c.get("error") or c.get("reason") for c in cells if "metrics" not in c]
    out: dict[str, Any] = {"values": values}
    if values:
        out["median"] = statistics.median(values)
    if errors:
        out["errors"] = [str(e)[:300] for e in errors]
    return out


def processes(harness: Harness) -> dict[str, Any]:
    """jobs/s with 1, 2, 4 processes per backend (interleaved iterations)."""
    row = ROWS_BY_KEY["process_high"]
    smoke = harness.args.smoke
    backends = harness.args.backends.split(",")
    variants = ("p2c50",) if smoke else PROCESS_VARIANTS
    iterations = 1 if smoke else harness.sizes.iterations
    out: dict[str, Any] = {}
    for backend in backends[:1] if smoke else backends:
        cells: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for i in range(iterations):
            shift = i % len(variants)
            for v in variants[shift:] + variants[:shift]:
                cells[v].append(harness.run_cell(backend, row, "conveyor", i, v, record=False))
        out[backend] = {v: _median(cells[v], "jobs_per_s") for v in variants}
    return out


def pgbouncer(harness: Harness) -> dict[str, Any]:
    """Direct against through PgBouncer (transaction mode), interleaved."""
    if "postgres" not in harness.args.backends.split(","):
        return {}
    from tests.support.servers import PgBouncer

    try:
        bouncer = PgBouncer(5432).start()
    except (FileNotFoundError, OSError, RuntimeError) as exc:
        return {"reason": f"no PgBouncer: {exc}"}
    database = harness.pg_url.rsplit("/", 1)[-1] or "bench"
    routes = {"direct": harness.pg_url, "pgbouncer": bouncer.url(database)}
    smoke = harness.args.smoke
    rows = PGBOUNCER_ROWS[:1] if smoke else PGBOUNCER_ROWS
    iterations = 1 if smoke else harness.sizes.iterations
    out: dict[str, Any] = {}
    try:
        for key, variant in rows:
            row = ROWS_BY_KEY[key]
            cells: dict[str, list[dict[str, Any]]] = {r: [] for r in routes}
            for i in range(iterations):
                order = list(routes) if i % 2 == 0 else list(reversed(routes))
                for route in order:
                    cell = harness.run_cell(
                        "postgres", row, "conveyor", i, variant, record=False,
                        pg_url=routes[route],
                    )  # fmt: skip
                    cells[route].append(cell)
            out[key] = {
                "variant": variant,
                **{r: _median(cells[r], row.metric) for r in routes},
            }
    finally:
        bouncer.stop()
    return out


def measure(harness: Harness) -> dict[str, Any]:
    from bench import cluster

    return {
        "processes": processes(harness),
        "pgbouncer": pgbouncer(harness),
        "cluster": cluster.measure(harness),
    }


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    if "median" not in entry:
        return "failed"
    values = entry["values"]
    spread = f" ({min(values):,.0f}–{max(values):,.0f})" if len(values) > 1 else ""
    return f"{entry['median']:,.0f}{spread}"


def markdown(data: dict[str, Any]) -> list[str]:
    """The ``Scale-out`` section of BENCHMARKS.md (empty when nothing was measured)."""
    from bench import cluster
    from bench.report import md_table

    scale = data.get("scaleout")
    if not scale:
        return []
    parts = [
        "## Scale-out (Conveyor alone)",
        "",
        "Measured on the same machine as everything above, so the workers, the store and the "
        "benchmark share its cores: these rows show that each set-up works and how it behaves "
        "here, not the gain a bigger machine or separate hosts would give. Method: "
        "[docs/scaling.md](docs/scaling.md#measured).",
        "",
    ]
    procs = scale.get("processes") or {}
    if procs:
        variants = [v for v in PROCESS_VARIANTS if any(v in r for r in procs.values())]
        header = ["backend", *[f"{v[1]} × 50 slots" for v in variants]]
        body = [[NAMES.get(b, b), *[_fmt(r.get(v)) for v in variants]] for b, r in procs.items()]
        parts += [
            "**Worker processes** (process, high concurrency: jobs/s, median (min–max))",
            "",
            md_table(header, body),
            "",
        ]
    bouncer = scale.get("pgbouncer") or {}
    if bouncer.get("reason"):
        parts += [f"**PgBouncer**: not measured ({bouncer['reason']}).", ""]
    elif bouncer:
        body = []
        for key, entry in bouncer.items():
            row = ROWS_BY_KEY[key]
            what = row.title + (f" ({entry['variant']})" if entry.get("variant") else "")
            body.append([what, _fmt(entry.get("direct")), _fmt(entry.get("pgbouncer"))])
        parts += [
            "**PostgreSQL direct against PgBouncer** (transaction pooling; jobs/s)",
            "",
            md_table(["row", "direct", "through PgBouncer"], body),
            "",
        ]
    parts += cluster.markdown(scale.get("cluster") or {})
    return parts


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scaleout [harness options]``: only these rows; prints the section and
    writes ``bench/results/scaleout.json``."""
    import json
    import shutil
    import sys

    from bench.harness import RESULTS, Harness, ensure_database, parse

    harness = Harness(parse(sys.argv[1:] if argv is None else argv))
    (harness.tmp / "sqlite").mkdir(parents=True, exist_ok=True)
    ensure_database(harness.pg_url)
    try:
        data = {"scaleout": measure(harness)}
    finally:
        shutil.rmtree(harness.tmp, ignore_errors=True)
    out = RESULTS / ("scaleout-smoke.json" if harness.args.smoke else "scaleout.json")
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print("\n".join(markdown(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
