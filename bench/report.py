"""Showing results: progress lines and rich tables on the terminal, and ``BENCHMARKS.md``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.adapters import PEERS
from bench.plan import ROWS, ROWS_BY_KEY, THROUGHPUT_ROWS, Row
from bench.summary import title

NAMES = {
    "conveyor": "Conveyor",
    "celery": "Celery",
    "rq": "RQ",
    "dramatiq": "Dramatiq",
    "arq": "arq",
    "saq": "SAQ",
    "huey": "Huey",
    "taskiq": "Taskiq",
    "procrastinate": "Procrastinate",
    "pgqueuer": "PgQueuer",
    "floor": "floor (b)",
    "backend-loop": "backend loop",
}
BACKENDS = {"redis": "Redis", "postgres": "PostgreSQL", "sqlite": "SQLite"}
LATENCY_COLUMNS = (
    ("latency", "p50_ms", "start p50"),
    ("latency", "p95_ms", "start p95"),
    ("latency", "p99_ms", "start p99"),
    ("e2e", "p50_ms", "e2e p50"),
    ("e2e", "p95_ms", "e2e p95"),
    ("e2e", "p99_ms", "e2e p99"),
)
MEMORY_COLUMNS = (
    ("memory_100", "bytes_per_job", "B/job, 100 B payload"),
    ("memory_1k", "bytes_per_job", "B/job, 1 KB payload"),
    ("process_high", "rss_mb", "worker RSS MB (high conc.)"),
    ("process_c1", "rss_mb", "worker RSS MB (c=1)"),
)


def console() -> Console:
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal else 200)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "ms" or abs(value) < 10:
        text = f"{value:.2f}"
    elif abs(value) < 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:,.0f}"
    return text


def progress_line(cell: dict[str, Any], row: Row) -> str:
    head = f"{cell['backend']:8} {row.key:15} {cell['lib']:14} #{cell['iteration'] + 1}"
    if "metrics" in cell:
        metrics = cell["metrics"]
        shown = fmt(metrics.get(row.metric), row.unit) + f" {row.unit}"
        if row.workload in ("latency", "e2e"):
            shown = (
                "p50/p95/p99 "
                + "/".join(fmt(metrics.get(k), "ms") for k in ("p50_ms", "p95_ms", "p99_ms"))
                + " ms"
            )
        if "rss_mb" in metrics:
            shown += f", RSS {metrics['rss_mb']:.0f} MB"
        return f"{head}  {shown}  [dim]({cell.get('seconds', 0):.1f}s)[/dim]"
    if "reason" in cell:
        return f"{head}  [yellow]n/a: {cell['reason']}[/yellow]"
    return f"{head}  [red]error: {str(cell.get('error'))[:300]}[/red]"


def limits_lines(backend: str, limits: dict[str, Any]) -> str:
    if "error" in limits:
        return f"[red]{backend} limits failed: {limits['error'][-500:]}[/red]"
    lines = [f"{backend} limits:"]
    for entry in limits.get("entries", []):
        lines.append(f"  {entry['name']}: {fmt(entry.get('value'))} {entry.get('unit', '')}")
    return "\n".join(lines)


def bus_lines(backend: str, bus: dict[str, Any]) -> str:
    if "error" in bus:
        return f"[red]{backend} event bus failed: {bus['error'][-500:]}[/red]"
    lines = [f"{backend} event bus:"]
    for entry in [*bus.get("rows", []), *bus.get("floors", [])]:
        lines.append(f"  {entry['name']}: {fmt(entry.get('value'))} {entry.get('unit', '')}")
    return "\n".join(lines)


def bus_md(data: dict[str, Any]) -> str:
    """The event bus rows next to the store's floor (issue 16)."""
    out = []
    for backend, bus in data.get("bus", {}).items():
        out.append(f"**{BACKENDS[backend]}**\n")
        if "error" in bus:
            out.append(f"measuring failed: `{bus['error'][-300:]}`\n")
            continue
        rows = [
            [kind, e["name"], f"{fmt(e.get('value'))} {e.get('unit', '')}", e.get("note", "")]
            for kind, entries in (
                ("Conveyor", bus.get("rows", [])),
                ("floor", bus.get("floors", [])),
            )
            for e in entries
        ]
        out.append(md_table(["", "measurement", "value", "note"], rows) + "\n")
        checks = [
            [
                t["name"],
                f"{fmt(t['value'])} {t['unit']}",
                t["target"],
                "yes" if t["met"] else "**no**",
            ]
            for t in bus.get("targets", [])
        ]
        if checks:
            out.append(md_table(["target", "measured", "wanted", "met"], checks) + "\n")
    return "\n".join(out)


def integration_lines(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"[red]integrations failed: {result['error'][-500:]}[/red]"
    lines = ["integrations:"]
    for e in result.get("rows", []):
        value = e.get("reason") or f"{fmt(e.get('value'))} {e.get('unit', '')}"
        lines.append(f"  {e['name']}: {value}")
    return "\n".join(lines)


def integrations_md(result: dict[str, Any]) -> str:
    """Webhooks, bridges and realtime next to the client's own rate (issue 17)."""
    if "error" in result:
        return f"measuring failed: `{result['error'][-300:]}`\n"
    body = [
        [
            e["group"],
            e["name"],
            e.get("reason") or f"{fmt(e.get('value'))} {e.get('unit', '')}",
            e.get("note", ""),
        ]
        for e in result.get("rows", [])
    ]
    return md_table(["", "measurement", "value", "note"], body) + "\n"


class Cells:
    """Cell texts with footnotes for the cells that have no number."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def mark(self, lib: str, text: str, kind: str) -> str:
        note = f"{NAMES.get(lib, lib)}: {text}"
        if note not in self.notes:
            self.notes.append(note)
        return f"{kind} [{self.notes.index(note) + 1}]"

    def cell(self, entry: dict[str, Any] | None, lib: str, metric: str, unit: str) -> str:
        if entry is None:
            return "—"
        if "metrics" in entry and metric in entry["metrics"]:
            m = entry["metrics"][metric]
            text = fmt(m["median"], unit)
            if len(m["samples"]) > 1:
                text += f" ({fmt(m['min'], unit)}–{fmt(m['max'], unit)})"
            if entry.get("failed_iterations"):
                text += " " + self.mark(lib, "; ".join(entry["errors"]), "partial")
            return text
        if "reason" in entry:
            return self.mark(lib, entry["reason"], "n/a")
        if "metrics" in entry:
            return "—"
        return self.mark(lib, str(entry.get("error", "failed"))[:400], "error")


def libs_of(data: dict[str, Any], backend: str) -> list[str]:
    present = set()
    for row in data["results"].get(backend, {}).values():
        present.update(row)
    order = ["conveyor", *PEERS[backend], "floor", "backend-loop"]
    return [lib for lib in order if lib in present]


def comparison(data: dict[str, Any], backend: str, key: str) -> dict[str, Any] | None:
    for cmp in data["comparisons"]:
        if cmp["backend"] == backend and cmp["row"] == key:
            return cmp  # type: ignore[no-any-return]
    return None


def ratio_text(cmp: dict[str, Any] | None) -> str:
    if not cmp or cmp.get("ratio") is None:
        return "—"
    text = f"{cmp['ratio']:.2f}× {NAMES.get(cmp['best_peer'], cmp['best_peer'])}"
    if "floor_pct" in cmp:
        text += f", {cmp['floor_pct']:.0f}% of floor"
    return text


# -- tables (shared by the terminal and Markdown) ---------------------------------------------
def throughput_table(
    data: dict[str, Any], backend: str, cells: Cells
) -> tuple[list[str], list[list[str]]]:
    libs = libs_of(data, backend)
    header = ["jobs/s", *(NAMES[lib] for lib in libs), "Conveyor vs best peer"]
    body = []
    results = data["results"].get(backend, {})
    for key in THROUGHPUT_ROWS:
        if key not in results:
            continue
        row = ROWS_BY_KEY[key]
        line = [row.title]
        for lib in libs:
            line.append(cells.cell(results[key].get(lib), lib, row.metric, row.unit))
        line.append(ratio_text(comparison(data, backend, key)))
        body.append(line)
    return header, body


def latency_table(
    data: dict[str, Any], backend: str, cells: Cells
) -> tuple[list[str], list[list[str]]]:
    results = data["results"].get(backend, {})
    header = ["ms", *(label for _, _, label in LATENCY_COLUMNS)]
    body = []
    for lib in libs_of(data, backend):
        if lib in ("floor", "backend-loop"):
            continue
        line = [NAMES[lib]]
        for key, metric, _ in LATENCY_COLUMNS:
            line.append(cells.cell(results.get(key, {}).get(lib), lib, metric, "ms"))
        body.append(line)
    cmp = comparison(data, backend, "latency")
    e2e = comparison(data, backend, "e2e")
    body.append(["Conveyor vs best peer (p99)", ratio_text(cmp), "", "", ratio_text(e2e), "", ""])
    return header, body


def memory_table(
    data: dict[str, Any], backend: str, cells: Cells
) -> tuple[list[str], list[list[str]]]:
    results = data["results"].get(backend, {})
    header = ["", *(label for _, _, label in MEMORY_COLUMNS)]
    body = []
    for lib in libs_of(data, backend):
        if lib in ("floor", "backend-loop"):
            continue
        line = [NAMES[lib]]
        for key, metric, _ in MEMORY_COLUMNS:
            line.append(cells.cell(results.get(key, {}).get(lib), lib, metric, ""))
        body.append(line)
    keys = ("memory_100", "memory_1k", "worker_rss")
    body.append(
        ["Conveyor vs best peer", *(ratio_text(comparison(data, backend, k)) for k in keys), ""]
    )
    return header, body


def summary_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["backend", "row", "Conveyor", "best peer", "ratio", "% of floor", "targets"]
    body = []
    for cmp in data["comparisons"]:
        unit = ROWS_BY_KEY[cmp["row"]].unit if cmp["row"] in ROWS_BY_KEY else "MB"
        targets = "; ".join(
            ("met" if t["met"] else "**not met**") + f": {t['target']} ({t['detail']})"
            for t in cmp["targets"]
        )
        best = cmp.get("best_peer")
        body.append(
            [
                BACKENDS[cmp["backend"]],
                title(cmp["row"]) + f" ({cmp['metric']})",
                fmt(cmp.get("conveyor"), unit),
                f"{NAMES.get(best, best)} {fmt(cmp.get('best_peer_value'), unit)}" if best else "—",
                f"{cmp['ratio']:.2f}×" if cmp.get("ratio") else "—",
                f"{cmp['floor_pct']:.0f}%" if "floor_pct" in cmp else "",
                targets,
            ]
        )
    return header, body


# -- terminal ---------------------------------------------------------------------------------
def print_tables(out: Console, data: dict[str, Any]) -> None:
    for backend in data["results"]:
        cells = Cells()
        for name, builder in (
            ("throughput", throughput_table),
            ("latency", latency_table),
            ("memory", memory_table),
        ):
            header, body = builder(data, backend, cells)
            table = Table(title=f"{BACKENDS[backend]}: {name}", title_justify="left")
            for col in header:
                table.add_column(col, overflow="fold")
            for line in body:
                table.add_row(*line)
            out.print(table)
        for i, note in enumerate(cells.notes, 1):
            out.print(f"  [{i}] {note}", markup=False)
    header, body = summary_table(data)
    table = Table(title="Conveyor against the best peer", title_justify="left")
    for col in header:
        table.add_column(col, overflow="fold")
    for line in body:
        table.add_row(*(c.replace("**", "") for c in line))
    out.print(table)


# -- Markdown -------------------------------------------------------------------------------
def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in body]
    return "\n".join(lines)


def machine_md(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    pg = m.get("postgres_settings", {})
    rows = [
        ["CPU", f"{m['cpu']}, {m['cores']} cores"],
        ["RAM", f"{m['ram_gb']} GB"],
        ["kernel", m["kernel"]],
        ["Python", m["python"]],
        [
            "PostgreSQL",
            f"{m.get('postgres')} (" + ", ".join(f"{k}={v}" for k, v in pg.items()) + ")",
        ],
        ["Redis", f"{m.get('redis')} (persistence: {m.get('redis_persistence')})"],
        ["SQLite", f"{m['sqlite']} (Python's sqlite3); CLI {m.get('sqlite3_cli')}"],
        [
            "load average",
            f"{_load(m['load_average'])} at start, {_load(meta.get('load_average_end'))} at end",
        ],
    ]
    return md_table(["", ""], rows)


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def limits_md(data: dict[str, Any]) -> str:
    out = []
    for backend, limits in data.get("limits", {}).items():
        out.append(f"**{BACKENDS[backend]}**\n")
        if "error" in limits:
            out.append(f"measuring failed: `{limits['error'][-300:]}`\n")
            continue
        rows = [
            [e["name"], f"{fmt(e.get('value'))} {e.get('unit', '')}", e.get("note", "")]
            for e in limits.get("entries", [])
        ]
        out.append(md_table(["measurement", "rate", "how"], rows) + "\n")
    return "\n".join(out)


def profiles_md(data: dict[str, Any]) -> str:
    out = []
    for backend, prof in data.get("profiles", {}).items():
        out.append(f"**{BACKENDS[backend]}** — {prof.get('what', '')}\n")
        if "error" in prof:
            out.append(f"profiling failed: `{prof['error'][-300:]}`\n")
            continue
        areas = prof.get("by_area", [])
        if areas:
            out.append(
                md_table(
                    ["where the worker's CPU goes", "share"], [[a, f"{p:.0f}%"] for a, p in areas]
                )
                + "\n"
            )
        owners = prof.get("by_conveyor_function", [])
        if owners:
            rows = [[f"`{f}`", f"{p:.0f}%"] for f, p in owners[:10]]
            out.append(md_table(["innermost Conveyor function on the stack", "share"], rows) + "\n")
        trips = prof.get("roundtrips", {})
        if trips and "error" not in trips:
            out.append(roundtrips_md(trips) + "\n")
        top = prof.get("top_self", [])
        if top:
            out.append(
                md_table(
                    ["hottest functions (self time)", "share"],
                    [[f"`{f}`", f"{p:.1f}%"] for f, p in top],
                )
                + "\n"
            )
        enqueue = prof.get("enqueue", {})
        if enqueue.get("by_conveyor_function"):
            out.append(f"Enqueue side — {enqueue.get('what', '')}:\n")
            rows = [[f"`{f}`", f"{p:.0f}%"] for f, p in enqueue["by_conveyor_function"][:10]]
            out.append(md_table(["innermost Conveyor function on the stack", "share"], rows) + "\n")
    return "\n".join(out)


def roundtrips_md(trips: dict[str, Any]) -> str:
    """Backend calls per job at concurrency 1 and 100 (bench/roundtrips.py)."""
    rows = []
    for key in ("c1", "c100"):
        t = trips.get(key)
        if not t:
            continue
        calls = ", ".join(f"{name} {n:.3f}" for name, n in t["calls_per_job"].items() if n >= 0.001)
        extra = ""
        if "sqlite_write_transactions_per_job" in t:
            extra = f"; {t['sqlite_write_transactions_per_job']:.3f} write transactions per job"
        rows.append(
            [
                f"c={t['concurrency']}",
                f"{t['backend_calls_per_job']:.3f}",
                calls + extra,
                f"{t['mean_claim_size']:.1f}",
            ]
        )
    header = ["worker", "backend calls per job", "by method", "jobs per claim"]
    return md_table(header, rows)


def configs_md(data: dict[str, Any]) -> str:
    rows = []
    for backend, results in data["results"].items():
        for lib in libs_of(data, backend):
            notes = []
            for key in ("process_c1", "process_high"):
                entry = results.get(key, {}).get(lib, {})
                if entry.get("note"):
                    notes.append(entry["note"].split(";")[0])
            bulk = results.get("enqueue_bulk", {}).get(lib, {}).get("note", "")
            e2e = results.get("e2e", {}).get(lib, {})
            rows.append(
                [
                    BACKENDS[backend],
                    NAMES[lib],
                    " / ".join(notes),
                    bulk,
                    e2e.get("note", e2e.get("reason", "")),
                ]
            )
    return md_table(
        ["backend", "library", "worker: c=1 / high", "bulk enqueue", "awaiting a result"], rows
    )


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    when = dt.datetime.fromtimestamp(meta["started"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (meta["finished"] - meta["started"]) / 60
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))
    parts = [
        "# Benchmarks",
        "",
        "Conveyor against every Python peer on the same backend, measured in the same run, "
        "interleaved (each iteration runs every library once, in rotating order). Reproduce "
        "with `make bench` (≈ half an hour; `make bench-smoke` runs every cell at tiny sizes "
        "in about a minute). Method, workloads and caveats: [docs/benchmarks.md]"
        "(docs/benchmarks.md). This file is generated by `bench/report.py` from "
        "`bench/results/latest.json`.",
        "",
        f"Run `{meta['run_id']}` ({meta['mode']}), {when}, {minutes:.0f} minutes; "
        f"{meta['sizes']['iterations']} iterations per cell, median (min–max).",
        "",
        machine_md(meta),
        "",
        f"Versions: {versions}.",
        "",
        "## Conveyor against the best peer",
        "",
        "Ratios are *Conveyor ÷ best peer* for rates and *best peer ÷ Conveyor* for times and "
        "sizes, so above 1× Conveyor is ahead. *% of floor* is Conveyor's processing rate as a "
        "share of the bare-Python floor (b): the same driver doing only the storage operations "
        "Conveyor does per job.",
        "",
        md_table(*summary_table(data)),
        "",
    ]
    missed = [
        f"- {BACKENDS[c['backend']]}, {title(c['row'])}: {t['target']} — {t['detail']}"
        for c in data["comparisons"]
        for t in c["targets"]
        if not t["met"]
    ]
    if missed:
        parts += [
            "### Targets not met",
            "",
            *missed,
            "",
            "Where the time goes: the profiles below, and the analysis in "
            "[docs/benchmarks.md](docs/benchmarks.md).",
            "",
        ]
    for backend in data["results"]:
        cells = Cells()
        parts += [f"## {BACKENDS[backend]}", ""]
        for name, builder in (
            ("Throughput", throughput_table),
            ("Latency (ms)", latency_table),
            ("Memory", memory_table),
        ):
            parts += [f"**{name}**", "", md_table(*builder(data, backend, cells)), ""]
        if cells.notes:
            parts += [f"{i}. {note}" for i, note in enumerate(cells.notes, 1)] + [""]
    if data.get("bus"):
        parts += ["## The event bus next to the store's floor", "", bus_md(data), ""]
    if data.get("integrations"):
        parts += ["## Event integrations (webhooks, bridges, realtime)", ""]
        parts += [integrations_md(data["integrations"]), ""]
    from bench import scaleout

    parts += scaleout.markdown(data)
    parts += ["## The store's own limits (context)", "", limits_md(data), ""]
    if data.get("profiles"):
        parts += [
            "## Profiles of Conveyor's worker (py-spy, process high concurrency)",
            "",
            profiles_md(data),
            "",
        ]
    parts += ["## Configurations", "", configs_md(data), ""]
    return "\n".join(parts)


__all__ = ["ROWS", "markdown", "print_tables", "progress_line"]
