"""Turn the reliability suite's last results into ``RELIABILITY.md``.

Every test writes ``tests/reliability/.results/<scenario>--<backend>.json``; this script (run
at the end of every reliability session, or by hand: ``.venv/bin/python -m
tests.reliability.report``) aggregates them. Each row is the latest run of that scenario on
that backend.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / ".results"
OUT = HERE.parents[1] / "RELIABILITY.md"
BACKENDS = ("sqlite", "postgres", "redis")

#: scenario id → (title, what it must prove). Order = order in the report.
SCENARIOS: dict[str, tuple[str, str]] = {
    "kill9_repeated": (
        "1. kill -9 workers repeatedly under load",
        "3 workers; the busiest is SIGKILLed and replaced again and again while jobs keep "
        "arriving. Nothing lost; one stored completion per job; re-runs only of jobs a killed "
        "worker was running; recovery within lease + maintenance tick.",
    ),
    "sigterm_load": (
        "2. SIGTERM under load",
        "Workers are stopped with SIGTERM mid-load (grace shorter than the jobs). Running jobs "
        "finish or are handed back at once (attempt not counted); replacements pick them up "
        "long before a lease could expire.",
    ),
    "store_restart": (
        "3. Restart the store under load",
        "A private PostgreSQL cluster is crash-restarted (`pg_ctl -m immediate`), a private "
        "Redis (AOF, `appendfsync always`) is `kill -9`ed and restarted, while a producer "
        "enqueues and workers run. No acknowledged enqueue lost; workers reconnect by "
        "themselves; re-runs only inside the outage.",
    ),
    "partition_pause": (
        "4a. Network partition between one worker and the store (held link)",
        "One worker reaches the store through a loopback TCP proxy the test controls; every "
        "byte is held (a partition TCP rides out) until the other worker has re-run all its "
        "jobs and a while longer, then delivered. Its late completions are refused (fencing); "
        "no job completed twice; it works again afterwards.",
    ),
    "partition_reset": (
        "4b. Network cut between one worker and the store (reset link)",
        "The same with every connection reset and new ones refused until the link returns.",
    ),
    "silent_connection_loss": (
        "4c. Silently dead connections",
        "Every open connection of a worker stops carrying bytes without FIN or RST (a NAT "
        "that forgot its state); new connections work. The worker must notice and go on.",
    ),
    "fleet": (
        "4d. A fleet of hosts, two cut off",
        "Four worker processes stand for four hosts (own host name, own loopback TCP proxy as "
        "their network). Healthy, every job runs once; then one host's link is held and "
        "another's reset while they hold jobs: the other hosts recover those jobs, the cut "
        "hosts' late outcomes are refused and they work again once their network returns.",
    ),
    "lost_reply": (
        "4d. Lost replies of fenced writes",
        "The store applies complete / fail / release but the reply is lost; the repeated call "
        "must report the stored outcome.",
    ),
    "hang_timeout": (
        "5a. Handlers that hang past their timeout",
        "An async handler and a thread handler that ignore their 1 s timeout: failed with "
        "code `timeout` (retried only when the task opts in), never run twice at once.",
    ),
    "blocked_loop": (
        "5b. A handler that blocks the event loop",
        "CPU work on the worker's event loop: shorter than the lease the lease survives; "
        "longer, the job is recovered by another worker and the blocked worker's late "
        "completion is refused.",
    ),
    "process_oom": (
        "5c. Memory exhaustion in a process-mode task",
        "A process-mode handler exceeds an RLIMIT_AS set inside its child (MemoryError, or "
        "the child killed as the OOM killer would): the job fails with its code after its "
        "attempts, the worker and its pool live on.",
    ),
    "poison": (
        "6. Poison messages",
        "Undecodable payload, unknown task, arguments that do not fit, a handler that always "
        "raises, a handler that kills its worker: each dead-lettered with its stable code "
        "after the configured attempts; no hot loop (the worker idles afterwards).",
    ),
    "clock_skew": (
        "7. Clock skew",
        "A worker whose wall clock is several seconds fast (or slow) shares the store with "
        "a correct one while jobs longer than the lease run: no lease stolen when the store "
        "judges leases by its own clock.",
    ),
    "clock_injected": (
        "7b. An injected skewed clock (documented behaviour)",
        "Conveyor(clock=...) is trusted by the store; a rescuer whose injected clock is 5 s "
        "fast recovers live leases. Measured; fencing must still hold.",
    ),
    "soak": (
        "8. Soak",
        "Steady mixed load (complete, fail, retry, dead-letter, cancel) with RSS, file "
        "descriptors, sockets and server-side connections sampled: no growth trend, no "
        "leaked connections.",
    ),
    "corrupt_records": (
        "Hostile: corrupt stored records",
        "Payload, metadata, error, logs and numeric fields of a waiting job corrupted "
        "directly in the store: the worker process survives, the job is dead-lettered, the "
        "other jobs are untouched.",
    ),
    "hostile_enqueue": (
        "Hostile: property tests of enqueue and the CLI",
        "Random task names, unicode, huge and deeply nested payloads, NaN/inf, binary, wrong "
        "types: a clear error at the call site or a stored job that round-trips exactly.",
    ),
    "verbatim_names": (
        "Hostile: names and keys stored verbatim",
        "Task, queue, idempotency key, trace id and metadata with quotes, SQL, Lua and brace "
        "characters run through a real worker and come back verbatim.",
    ),
}

COLUMNS = (
    ("outcome", "test"),
    ("enqueued", "enqueued"),
    ("completed", "completed"),
    ("failed", "dead-lettered"),
    ("duplicated_jobs", "jobs run twice"),
    ("duplicate_runs", "why"),
    ("lost", "lost"),
    ("unexpected", "unexpected"),
    ("lease_lost_acks", "refused acks"),
    ("overlaps_healthy", "overlaps (healthy)"),
    ("recovery", "recovery after kill median / max (s)"),
)

STANDARD = {
    "scenario", "backend", "size", "test", "recorded_at", "machine", "outcome", "enqueued",
    "completed", "failed", "duplicated_jobs", "duplicate_runs", "lost", "unexpected",
    "lease_lost_acks", "overlaps_healthy", "rerun_after_kill_s", "finished_after_kill_s",
    "violations", "xfail_reason", "notes", "skipped", "ambiguous_enqueues", "ambiguous_stored",
    "cancelled", "expired", "executions", "retries", "acks", "heartbeat_lease_losses",
    "handed_back", "overlaps_explained", "max_stalls_seen",
}  # fmt: skip


def load(directory: Path = RESULTS) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return docs


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        if not value:
            return "–"
        return ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _cell(doc: dict[str, Any], key: str) -> str:
    if key == "recovery":
        rec = doc.get("rerun_after_kill_s")
        return f"{rec['median']} / {rec['max']}" if isinstance(rec, dict) else "–"
    if key == "outcome":
        outcome = doc.get("outcome", "?")
        return {"passed": "pass", "failed": "**FAIL**", "xfailed": "xfail (bug)"}.get(
            outcome, outcome
        )
    return _fmt(doc.get(key))


def _details(doc: dict[str, Any]) -> list[str]:
    return [f"`{k}` {_fmt(v)}" for k, v in sorted(doc.items()) if k not in STANDARD]


def render(docs: Iterable[dict[str, Any]]) -> str:
    docs = list(docs)
    known_bugs = sorted((d for d in docs if "bug" in d), key=lambda d: d["bug"])
    docs = [d for d in docs if "bug" not in d]
    by: dict[tuple[str, str], dict[str, Any]] = {}
    extra: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by[(doc["scenario"], doc["backend"])] = doc
        extra.setdefault(doc["scenario"], []).append(doc)
    latest = max((d.get("recorded_at", 0) for d in docs), default=0)
    when = (
        dt.datetime.fromtimestamp(latest, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if latest else "–"
    )
    machine = next((d["machine"] for d in docs if "machine" in d), {})
    sizes = sorted({d.get("size", "?") for d in docs})
    lines = [
        "# Reliability report",
        "",
        "Generated by `tests/reliability/report.py` from the last run of the fault suite in",
        "`tests/reliability/` (each row is the latest run of that scenario on that backend).",
        "Do not edit by hand: run the suite (`.venv/bin/pytest tests/reliability -m reliability",
        "-n 2 --dist loadgroup`, add `CONVEYOR_RELIABILITY=long` for the long form) and it is",
        "rewritten. What each scenario does and proves is in `docs/reliability.md`.",
        "",
        f"- last run: {when}; size: {', '.join(sizes)}",
        f"- machine: {machine.get('cpus', '?')} CPUs, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}",
        "- every job is counted by id from a ledger the handlers write (not from the store), "
        "then checked against the store after a full drain",
        "",
        "## Summary",
        "",
        "| scenario | backend | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    skipped: list[str] = []
    bugs: list[str] = []
    known = list(SCENARIOS) + sorted({s for s, _ in by} - set(SCENARIOS))
    for scenario in known:
        for backend in (*BACKENDS, *sorted({b for s, b in by if s == scenario} - set(BACKENDS))):
            doc = by.get((scenario, backend))
            if doc is None:
                continue
            title = SCENARIOS.get(scenario, (scenario, ""))[0]
            if "skipped" in doc:
                skipped.append(f"- **{title}** on {backend}: {doc['skipped']}")
                continue
            cells = [_cell(doc, key) for key, _ in COLUMNS]
            lines.append(f"| {title} | {backend} | " + " | ".join(cells) + " |")
            if doc.get("xfail_reason"):
                bugs.append(f"- **{title}** on {backend}: {doc['xfail_reason']}")
    lines += ["", "## Details", ""]
    for scenario in known:
        group = [d for d in extra.get(scenario, []) if "skipped" not in d]
        if not group:
            continue
        title, proves = SCENARIOS.get(scenario, (scenario, ""))
        lines += [f"### {title}", "", proves, ""]
        for doc in sorted(
            group, key=lambda d: BACKENDS.index(d["backend"]) if d["backend"] in BACKENDS else 9
        ):
            details = _details(doc)
            summary = (
                f"executions {doc.get('executions', '–')}, retries {doc.get('retries', '–')}, "
                f"handed back {doc.get('handed_back', '–')}, overlaps explained by a fault "
                f"{doc.get('overlaps_explained', '–')}, most stalls of one job "
                f"{doc.get('max_stalls_seen', '–')}"
            )
            lines.append(f"- **{doc['backend']}** ({doc.get('size')}): {summary}")
            if details:
                lines.append("  - " + "; ".join(details))
            for note in doc.get("notes", []) or []:
                lines.append(f"  - {note}")
        lines.append("")
    lines += ["## Skipped (scenario does not apply)", ""]
    lines += skipped or ["- none"]
    lines += ["", "## Known bugs (strict xfail tests)", ""]
    by_reason: dict[str, list[str]] = {}
    for doc in known_bugs:
        by_reason.setdefault(doc["reason"], []).append(doc["bug"].split("::", 1)[-1])
    bugs += [
        f"- {reason}\n  - tests: " + ", ".join(f"`{t}`" for t in tests)
        for reason, tests in by_reason.items()
    ]
    lines += bugs or ["- none"]
    lines.append("")
    return "\n".join(lines)


def write_report(directory: Path = RESULTS, out: Path = OUT) -> Path:
    out.write_text(render(load(directory)))
    return out


if __name__ == "__main__":
    path = write_report()
    sys.stdout.write(f"wrote {path}\n")
