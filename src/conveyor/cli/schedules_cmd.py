"""``conveyor schedules …`` (manage) and ``conveyor scheduler APP`` (run only the scheduler)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli.common import (
    app_options,
    console,
    emit_json,
    fail,
    fmt_time,
    load_app,
    run,
    table,
)
from conveyor.cli.worker_cmd import setup_logging
from conveyor.domain.durations import parse_duration
from conveyor.errors import ConveyorError


def _run_or_missing(app: Conveyor, name: str, fn: Any) -> Any:
    """``run``: an unknown schedule is one ``error:`` line and status 3 (see ``run``)."""
    return run(app, fn)


@click.group()
def schedules() -> None:
    """Recurring jobs: list, pause, resume, trigger, update, remove, history."""


@schedules.command("list")
@app_options
def list_schedules(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Every schedule with its next run, last run, last status and pause state."""
    app = load_app(app_path, url)

    async def go() -> list[Any]:
        await app.schedules.sync()
        return await app.schedules.list()

    found = run(app, go)
    if as_json:
        emit_json([s.to_dict() for s in found])
        return
    if not found:
        console.print("no schedules")
        return
    rows = [
        [
            s.name,
            s.task,
            s.cron or f"every {s.every:g}s",
            s.timezone,
            "paused" if s.paused else "active",
            fmt_time(s.next_run),
            fmt_time(s.last_tick),
            s.last_state or "-",
        ]
        for s in found
    ]
    console.print(
        table(
            "Schedules",
            [
                "name",
                "task",
                "when",
                "zone",
                "status",
                "next run (UTC)",
                "last run (UTC)",
                "last state",
            ],
            rows,
        )
    )


def _simple(verb: str, doc: str) -> Any:
    @schedules.command(verb, help=doc)
    @click.argument("name")
    @app_options
    def command(name: str, app_path: str | None, url: str | None, as_json: bool) -> None:
        app = load_app(app_path, url)

        async def go() -> Any:
            await app.schedules.sync()
            return await getattr(app.schedules, verb)(name)

        result = _run_or_missing(app, name, go)
        if as_json:
            emit_json({"name": name, "action": verb, "job_id": result})
        elif verb == "trigger":
            console.print(f"schedule {name}: enqueued job {result} (cadence unchanged)")
        else:
            console.print(f"schedule {name}: {verb}d" if verb.endswith("e") else f"{name}: {verb}")

    return command


_simple("pause", "Stop a schedule from firing (its state and history stay).")
_simple("resume", "Fire again from the next tick (ticks missed while paused are not run).")
_simple("trigger", "Enqueue one run now without moving the cadence.")
_simple("remove", "Delete a schedule (schedules declared in code come back at next start-up).")


@schedules.command("update")
@click.argument("name")
@click.option("--cron", help="New cron expression.")
@click.option("--every", metavar="DURATION", help="New interval (30s, 5m, 1h30m, or seconds).")
@click.option("--timezone", help="New IANA time zone.")
@click.option("--overlap/--no-overlap", default=None, help="Allow runs to overlap.")
@app_options
def update(
    name: str,
    cron: str | None,
    every: str | None,
    timezone: str | None,
    overlap: bool | None,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Change a schedule's timing (validated before anything is stored)."""
    app = load_app(app_path, url)
    changes: dict[str, Any] = {}
    if cron is not None:
        changes.update(cron=cron, every=None)
    if every is not None:
        try:
            seconds = parse_duration(every, field="--every")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--every") from None
        changes.update(every=seconds, cron=None)
    if timezone is not None:
        changes["timezone"] = timezone
    if overlap is not None:
        changes["overlap"] = overlap
    if not changes:
        raise click.UsageError("nothing to change: pass --cron, --every, --timezone or --overlap")

    async def go() -> Any:
        await app.schedules.sync()
        return await app.schedules.update(name, **changes)

    try:
        spec = _run_or_missing(app, name, go)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        emit_json(spec.to_json())
    else:
        console.print(f"schedule {name} updated")


@schedules.command("history")
@click.argument("name")
@app_options
def history(name: str, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Each handled tick: job id, outcome, start, end, state and error (newest first)."""
    app = load_app(app_path, url)

    async def go() -> Any:
        await app.schedules.sync()
        return await app.schedules.history(name)

    rows = _run_or_missing(app, name, go)
    if as_json:
        emit_json(rows)
        return
    console.print(
        table(
            f"History of {name}",
            ["tick (UTC)", "outcome", "job", "state", "started", "finished", "error"],
            [
                [
                    fmt_time(r["tick"]),
                    r["outcome"],
                    r["job_id"] or "-",
                    r["state"] or "-",
                    fmt_time(r["started_at"]),
                    fmt_time(r["finished_at"]),
                    (r["error"] or {}).get("message", ""),
                ]
                for r in rows
            ],
        )
    )


@click.command()
@click.argument("app_path", metavar="APP", envvar="CONVEYOR_APP")
@click.option("--poll-interval", default=1.0, show_default=True, help="Longest sleep, seconds.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
)
def scheduler(app_path: str, poll_interval: float, log_level: str) -> None:
    """Run only the scheduler for APP (workers run it too; any number may run at once)."""
    setup_logging(log_level, "text")
    app = load_app(app_path, None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await app.schedules.run(stop, poll_interval)
        finally:
            await app.close()

    try:
        asyncio.run(main())
    except ConveyorError as exc:
        fail(f"[{exc.code}] {exc}")
