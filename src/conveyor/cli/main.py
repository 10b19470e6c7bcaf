"""``conveyor`` — run workers and operate queues from the shell.

Exit statuses: 0 success, 1 error, 2 usage error, 3 job not found, 4 action not valid in the
job's state, 5 aborted at a confirmation prompt.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.markup import escape

from conveyor.backends.common import redact_url
from conveyor.cli.common import (
    EXIT_ABORTED,
    EXIT_ERROR,
    EXIT_JOB_FAILED,
    EXIT_STILL_WAITING,
    app_options,
    console,
    emit_json,
    err_console,
    fail,
    fmt_age,
    fmt_duration,
    load_app,
    parse_json_option,
    run,
    table,
    truncated,
)
from conveyor.cli.dashboard_cmd import dashboard
from conveyor.cli.dlq import dlq
from conveyor.cli.events_cmd import events
from conveyor.cli.jobs import jobs, print_damage
from conveyor.cli.load_cmd import load
from conveyor.cli.schedules_cmd import scheduler, schedules
from conveyor.cli.seed000_cmd import enqueue_seed000_documents
from conveyor.cli.versions_cmd import versions
from conveyor.cli.webhooks_cmd import webhooks
from conveyor.cli.worker_cmd import worker
from conveyor.domain.states import JobState
from conveyor.errors import (
    ConveyorError,
    InvalidArgumentsError,
    JobCancelledError,
    JobFailedError,
    ResultTimeoutError,
)


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # Every option can also come from CONVEYOR_<COMMAND>_<OPTION> (docs/cli.md).
        "auto_envvar_prefix": "CONVEYOR",
    }
)
@click.version_option(package_name="conveyor")
def cli() -> None:
    """Conveyor: background jobs for Python.

    Most commands take --app MODULE:APP (or $CONVEYOR_APP) to load your app, or --url URL
    (or $CONVEYOR_URL) to talk to a store directly. Add --json for scripts.
    """


cli.add_command(worker)
cli.add_command(jobs)
cli.add_command(dlq)
cli.add_command(events)
cli.add_command(schedules)
cli.add_command(scheduler)
cli.add_command(load)
cli.add_command(dashboard)
cli.add_command(versions)
cli.add_command(webhooks)


@cli.command()
@click.argument("task_name", metavar="TASK", required=False)
@click.option(
    "--seed000",
    "seed000_file",
    metavar="FILE|-",
    type=click.File("r"),
    help="Enqueue the seed-000 Task document(s) in FILE (- reads stdin) instead of TASK.",
)
@click.option(
    "--args", "args_json", metavar="JSON", help="Positional arguments, e.g. '[1, \"x\"]'."
)
@click.option(
    "--kwargs", "kwargs_json", metavar="JSON", help='Keyword arguments, e.g. \'{"to": "a@b"}\'.'
)
@click.option("--delay", metavar="DURATION", help="Run after this long (30s, 5m, 2h).")
@click.option(
    "--priority",
    metavar="INT|NAME",
    help="Higher runs first; or critical/high/normal/low/background.",
)
@click.option("--queue", metavar="NAME", help="Override the task's queue.")
@click.option("--key", "idempotency_key", metavar="KEY", help="Idempotency key.")
@click.option("--max-attempts", type=int, help="Total runs allowed.")
@click.option("--timeout", metavar="DURATION", help="Per-job timeout.")
@click.option("--ttl", metavar="DURATION", help="Expire if not started within this long.")
@click.option("--trace-id", metavar="ID")
@click.option(
    "--wait",
    "wait_for",
    type=float,
    metavar="SECONDS",
    help="Wait for the result; exit 6 if the job failed (or was cancelled, or expired), 7 if "
    "it is still waiting or running when the time is up.",
)
@app_options
def enqueue(
    task_name: str | None,
    seed000_file: Any,
    args_json: str | None,
    kwargs_json: str | None,
    delay: str | None,
    priority: str | None,
    queue: str | None,
    idempotency_key: str | None,
    max_attempts: int | None,
    timeout: str | None,
    ttl: str | None,
    trace_id: str | None,
    wait_for: float | None,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Enqueue one job of TASK (needs --app so the task and its defaults are known).

    With --seed000 FILE (or - for stdin), enqueue seed-000 Task documents instead: one object
    or a list of them (mapping: docs/seed000.md).
    """
    app = load_app(app_path, url)
    if seed000_file is not None:
        if task_name is not None or args_json is not None or kwargs_json is not None:
            raise click.UsageError("--seed000 takes no TASK, --args or --kwargs")
        enqueue_seed000_documents(app, seed000_file.read(), as_json)
        return
    if task_name is None:
        raise click.UsageError("give TASK (or --seed000 FILE)")
    task = app.tasks.get(task_name)
    if task is None:
        known = ", ".join(sorted(app.tasks)) or "(none)"
        raise click.UsageError(f"no task named {task_name!r}; known tasks: {known}")
    args = parse_json_option(args_json, "--args") or []
    kwargs = parse_json_option(kwargs_json, "--kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.UsageError("--args must be a JSON list and --kwargs a JSON object")
    prio: int | str | None = None
    if priority is not None:
        prio = int(priority) if priority.lstrip("-").isdigit() else priority
    try:
        call = task.options(
            delay=delay,
            priority=prio,
            queue=queue,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout=timeout,
            ttl=ttl,
            trace_id=trace_id,
        )
    except InvalidArgumentsError as exc:
        raise click.UsageError(str(exc)) from None

    async def go() -> dict[str, Any]:
        handle = await call.enqueue(*args, **kwargs)
        out: dict[str, Any] = {"id": handle.id, "task": task_name, "created": handle.created}
        if wait_for is not None:
            try:
                out["result"] = await handle.result(timeout=wait_for)
                out["state"] = "completed"
            except (JobFailedError, JobCancelledError, ResultTimeoutError) as exc:
                out["state"] = (await handle.state()).value
                out["error"] = str(exc)
                out["exit"] = (
                    EXIT_STILL_WAITING if isinstance(exc, ResultTimeoutError) else EXIT_JOB_FAILED
                )
        else:
            out["state"] = (await handle.state()).value
        return out

    try:
        out = run(app, go)
    except InvalidArgumentsError as exc:
        raise click.UsageError(str(exc)) from None
    status = out.pop("exit", 0)
    if as_json:
        emit_json(out)
    else:
        note = "" if out["created"] else " (idempotency key matched an existing job)"
        console.print(
            f"enqueued [bold]{task_name}[/] as job [cyan]{out['id']}[/] — {out['state']}{note}"
        )
        if "result" in out:
            shown = truncated(repr(out["result"]), full=False, hint="see `conveyor jobs show`")
            console.print(f"result: {escape(shown)}", highlight=False)
        elif "error" in out:
            console.print(f"[red]{escape(out['error'])}[/]")
    if status:
        raise SystemExit(status)


@cli.command()
@app_options
def stats(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Job counts per queue and per task, with per-task outcome counters and durations."""
    app = load_app(app_path, url)

    async def go() -> tuple[Any, Any, Any, Any]:
        from conveyor.integrations.bridges.board import read_statuses

        counts = await app.inspect.counts()
        damaged = await app.inspect.damaged() if counts.total.get("unknown") else []
        bridges = await read_statuses(await app.backend())
        return counts, await app.inspect.task_metrics(), damaged, bridges

    counts, metrics, damaged, bridges = run(app, go)
    if as_json:
        emit_json(
            {
                **counts.to_dict(),
                "metrics": metrics,
                "damaged": [{"id": j.id, "damage": list(j.damage)} for j in damaged],
                "bridges": bridges,
            }
        )
        return
    states = [s.value for s in JobState]
    shown = [s for s in states if counts.total.get(s) or s in ("queued", "running", "failed")]
    console.print(
        table(
            "Queues",
            ["queue", *shown],
            [[q, *[c.get(s, 0) for s in shown]] for q, c in sorted(counts.by_queue.items())],
        )
    )
    rows = []
    for name, c in sorted(counts.by_task.items()):
        m = metrics.get(name, {})
        rows.append(
            [
                name,
                *[c.get(s, 0) for s in shown],
                fmt_duration(m.get("p50")),
                fmt_duration(m.get("p95")),
                fmt_duration(m.get("p99")),
            ]
        )
    console.print(table("Tasks", ["task", *shown, "p50", "p95", "p99"], rows))
    console.print("total: " + ", ".join(f"{s} {counts.total.get(s, 0)}" for s in shown))
    if counts.total.get("unknown"):
        console.print(
            f"[red]{counts.total['unknown']} job(s) with an unreadable stored state (counted as "
            "unknown; `conveyor jobs list --state unknown` lists them)[/]"
        )
        print_damage(damaged)
    if bridges:
        console.print(bridge_table(bridges))


def bridge_table(bridges: list[dict[str, Any]]) -> Any:
    """The broker bridges' reported status (URLs with passwords redacted)."""
    rows = [
        [
            b["name"],
            b["role"],
            b["broker"],
            b["url"],
            "up" if b["connected"] else "down",
            b["published"],
            b["acked"],
            b["retries"],
            b["reconnects"],
            fmt_age(time.time() - b["age"]),
            (b.get("last_error") or "-")[:60],
        ]
        for b in bridges
    ]
    columns = [
        "bridge",
        "role",
        "broker",
        "url",
        "state",
        "published",
        "acked",
        "retries",
        "reconnects",
        "reported",
        "last error",
    ]
    return table("Bridges", columns, rows)


@cli.command()
@click.option(
    "--all", "include_stale", is_flag=True, help="Include workers that stopped heartbeating."
)
@app_options
def workers(include_stale: bool, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Live workers with their stats (seed-000 WorkerStats shape with --json)."""
    app = load_app(app_path, url)
    found = run(app, lambda: app.inspect.workers(include_stale=include_stale))
    if as_json:
        emit_json(
            [
                {
                    **app.inspect.as_seed000_worker(w),
                    "host": w.host,
                    "pid": w.pid,
                    "heartbeatAt": w.heartbeat_at,
                    "concurrency": w.concurrency,
                    "queueNames": list(w.queues),
                }
                for w in found
            ]
        )
        return
    if not found:
        console.print("no live workers")
        return
    rows = []
    for w in found:
        if w.stats.get("damage"):
            err_console.print(
                f"[red]damaged worker entry {escape(w.id)}: "
                f"{escape('; '.join(map(str, w.stats['damage'])))}[/]",
                highlight=False,
            )
        s = w.stats
        rows.append(
            [
                w.id,
                ",".join(w.queues),
                f"{s.get('active', 0)}/{w.concurrency}",
                s.get("processed", 0),
                s.get("succeeded", 0),
                s.get("failed", 0),
                fmt_duration(s.get("avg_duration")),
                fmt_age(w.heartbeat_at),
                f"{max(time.time() - w.started_at, 0):.0f}s",
            ]
        )
    console.print(
        table(
            "Workers",
            [
                "worker",
                "queues",
                "active",
                "processed",
                "succeeded",
                "failed",
                "avg",
                "heartbeat",
                "uptime",
            ],
            rows,
        )
    )


@cli.command()
@app_options
def queues(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Declared queues and their settings (seed-000 QueueConfig shape with --json)."""
    app = load_app(app_path, url)
    configs = [
        app.queue_config(app.default_queue),
        *[q for n, q in app.queues.items() if n != app.default_queue],
    ]
    if as_json:
        emit_json([q.to_seed000() for q in configs])
        return
    rows = [
        [
            q.name,
            q.priority,
            q.concurrency or "(worker's)",
            q.retry.attempts if q.retry else "-",
            q.dead_letter or "-",
        ]
        for q in configs
    ]
    console.print(
        table(
            "Queues",
            ["queue", "priority", "concurrency", "attempts", "dead-letter set"],
            rows,
        )
    )
    task_rows = [
        [
            t.name,
            t.config.queue or app.default_queue,
            t.config.priority,
            app.retry_policy_for(t, t.config.queue or app.default_queue).attempts,
            fmt_duration(t.config.timeout),
            t.config.executor,
        ]
        for t in app.tasks.values()
    ]
    if task_rows:
        console.print(
            table(
                "Tasks", ["task", "queue", "priority", "attempts", "timeout", "executor"], task_rows
            )
        )


@cli.group()
def db() -> None:
    """Schema management for stores that have one."""


@db.command("migrate")
@app_options
def db_migrate(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Create or upgrade the store's schema (safe to run repeatedly)."""
    app = load_app(app_path, url)
    applied = run(app, app.migrate)
    if as_json:
        emit_json({"url": redact_url(app.url), "applied": applied})
    elif applied:
        console.print(
            f"applied {len(applied)} migration(s) to {redact_url(app.url)}: {', '.join(applied)}"
        )
    else:
        console.print(f"{redact_url(app.url)} is up to date")


@db.command("reset")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed off a TTY).")
@app_options
def db_reset(yes: bool, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Wipe the store: delete every job, schedule state and worker entry (tests, benchmarks).

    Stop the workers first. Without --yes it asks on a terminal and refuses otherwise.
    """
    app = load_app(app_path, url)
    where = redact_url(app.url)
    if not yes:
        if not sys.stdin.isatty():
            fail(f"refusing to wipe {where} without --yes", EXIT_ABORTED)
        if not click.confirm(
            f"Delete every job, schedule and worker entry in {where}?", default=False
        ):
            console.print("aborted; nothing changed")
            raise SystemExit(EXIT_ABORTED)
    applied = run(app, app.reset)
    if as_json:
        emit_json({"url": where, "reset": True, "applied": applied})
    else:
        console.print(f"{where} is empty")


def main() -> None:
    """Console-script entry point. A Conveyor error that escapes a command (a missing extra, an
    unknown URL scheme, a store that cannot be opened, raised while loading the app or running
    a worker) is one ``error:`` line and status 1, never a traceback."""
    try:
        cli(prog_name="conveyor")
    except ConveyorError as exc:
        fail(f"[{exc.code}] {exc}", EXIT_ERROR)


if __name__ == "__main__":
    main()
