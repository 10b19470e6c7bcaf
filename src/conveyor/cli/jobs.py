"""``conveyor jobs …``: list, show, cancel and retry jobs."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.panel import Panel

from conveyor.backends.base import CancelOutcome
from conveyor.cli.common import (
    EXIT_INVALID_STATE,
    EXIT_NOT_FOUND,
    app_options,
    console,
    emit_json,
    fail,
    fmt_age,
    fmt_duration,
    fmt_time,
    load_app,
    run,
    table,
    truncated,
)
from conveyor.core.handle import JobInfo
from conveyor.domain.states import JobState
from conveyor.errors import InvalidStateError, JobNotFoundError, KeyHeldError

STATE_CHOICE = click.Choice([s.value for s in JobState])


@click.group()
def jobs() -> None:
    """Inspect and manage individual jobs."""


@jobs.command("list")
@click.option(
    "--state",
    type=STATE_CHOICE,
    help="Only jobs in this state ('unknown': records whose stored state is unreadable).",
)
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--task", help="Only jobs of this task.")
@click.option("--limit", default=50, show_default=True, help="Page size.")
@click.option("--offset", default=0, show_default=True, help="Skip this many (paging).")
@click.option("--seed000", is_flag=True, help="With --json: render as seed-000 Task objects.")
@app_options
def list_jobs(
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    offset: int,
    seed000: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Jobs, newest first (arguments and results stay in the store: see `jobs show`)."""
    app = load_app(app_path, url)
    found = run(
        app,
        lambda: app.inspect.jobs(
            state=state, queue=queue, task=task, limit=limit, offset=offset, summary=True
        ),
    )
    if as_json:
        emit_json([app.inspect.as_seed000_task(j) if seed000 else j.to_dict() for j in found])
        return
    if not found:
        console.print("no jobs match")
        return
    rows = [
        [
            j.id,
            j.record.task,
            j.record.queue,
            j.state.value,
            j.record.priority,
            f"{j.record.attempts}/{j.record.max_attempts}",
            fmt_age(j.record.created_at),
            fmt_duration(j.duration),
            (j.error.code if j.error else ""),
        ]
        for j in found
    ]
    console.print(
        table(
            None,
            ["id", "task", "queue", "state", "prio", "attempts", "created", "duration", "error"],
            rows,
        )
    )
    print_damage(found)
    if len(found) == limit:
        console.print(f"[dim]more may exist: --offset {offset + limit}[/]")


def print_damage(found: list[JobInfo]) -> None:
    """Below a listing: each damaged record, by id, with what is wrong with it."""
    for info in found:
        if info.damage:
            console.print(
                f"[red]damaged record {info.id}: {escape('; '.join(info.damage))}[/]",
                highlight=False,
            )


def _describe(info: JobInfo, full: bool) -> str:
    """``jobs show`` for people: markup-escaped, long values cut short unless ``full``."""
    r = info.record

    def val(value: object) -> str:
        return escape(truncated(repr(value), full=full))

    def txt(value: str) -> str:
        return escape(truncated(value, full=full))

    lines = [
        f"[bold]{escape(r.task)}[/]  {r.id}",
        f"state      {r.state.value}   queue {escape(r.queue)}   priority {r.priority}",
        f"attempts   {r.attempts}/{r.max_attempts}   stalls {r.stalls}",
        f"args       {val(info.args)}   kwargs {val(info.kwargs)}",
        f"created    {fmt_time(r.created_at)}   run at {fmt_time(r.run_at)}",
        f"started    {fmt_time(r.started_at)}   finished {fmt_time(r.finished_at)}"
        f"   duration {fmt_duration(info.duration)}",
    ]
    if r.trace_id or r.idempotency_key:
        lines.append(
            f"trace id   {txt(r.trace_id or '-')}   idempotency key {txt(r.idempotency_key or '-')}"
        )
    if r.metadata:
        lines.append(f"metadata   {val(r.metadata)}")
    if r.state is JobState.COMPLETED:
        lines.append(f"result     {val(info.result)}")
    if info.progress is not None:
        lines.append(f"progress   {val(info.progress)}")
    if info.error is not None:
        e = info.error
        code = escape(f"[{e.code}]")
        lines.append(f"[red]error      {code} {escape(e.type)}: {txt(e.message)}[/]")
    elif r.state is JobState.COMPLETED and r.errors:
        lines.append(f"[dim]earlier    {len(r.errors)} failed attempt(s) before it completed[/]")
    for problem in info.damage:
        lines.append(f"[red]damaged    {escape(problem)}[/]")
    lines.append("timeline")
    lines += [
        f"  {fmt_time(e.at)}  {e.event}" + (f"  {txt(e.detail)}" if e.detail else "")
        for e in info.timeline()
    ]
    if r.logs:
        shown = r.logs if full else r.logs[-50:]
        lines.append("logs" if len(shown) == len(r.logs) else f"logs (last 50 of {len(r.logs)})")
        lines += [
            f"  {fmt_time(e.at)}  {e.level:<7} #{e.attempt} {txt(e.message)}"
            + (f" {val(e.extra)}" if e.extra else "")
            for e in shown
        ]
    if info.error is not None and info.error.traceback:
        lines.append("traceback")
        lines.append(txt(info.error.traceback.rstrip()))
    return "\n".join(lines)


@jobs.command("show")
@click.argument("job_id")
@click.option("--seed000", is_flag=True, help="With --json: seed-000 Task and TaskExecutionResult.")
@click.option(
    "--full", is_flag=True, help="Show long values whole (cut at 2,000 characters otherwise)."
)
@app_options
def show(
    job_id: str,
    seed000: bool,
    full: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """One job: arguments, result, error, logs, progress and timeline (JSON: all of it)."""
    app = load_app(app_path, url)
    info = run(app, lambda: app.inspect.job(job_id))
    if info is None:
        fail(f"no job with id {job_id!r}", EXIT_NOT_FOUND)
        return
    if as_json:
        if seed000:
            emit_json(
                {
                    "task": app.inspect.as_seed000_task(info),
                    "result": app.inspect.as_seed000_result(info),
                }
            )
        else:
            emit_json(info.to_dict())
        return
    console.print(Panel(_describe(info, full), expand=False, highlight=False))


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--reason", help="Stored with the job and given to its handler.")
@app_options
def cancel(
    job_ids: tuple[str, ...],
    reason: str | None,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Cancel jobs: waiting ones at once, running ones through their context."""
    app = load_app(app_path, url)

    async def go() -> list[tuple[str, CancelOutcome]]:
        return [(job_id, await app.cancel(job_id, reason)) for job_id in job_ids]

    outcomes = run(app, go)
    _report(outcomes, as_json, lambda o: o.value)
    _exit_for([o for _, o in outcomes])


def _report(outcomes: list[tuple[str, Any]], as_json: bool, render: Any) -> None:
    if as_json:
        emit_json([{"id": job_id, "outcome": render(o)} for job_id, o in outcomes])
        return
    for job_id, outcome in outcomes:
        text = render(outcome)
        color = "green" if text in ("cancelled", "requested", "retried") else "red"
        console.print(f"{job_id}: [{color}]{text}[/]")


def _exit_for(outcomes: list[Any]) -> None:
    values = [o.value if isinstance(o, CancelOutcome) else o for o in outcomes]
    if "not_found" in values:
        raise SystemExit(EXIT_NOT_FOUND)
    if "not_cancellable" in values or any(str(v).startswith("invalid_state") for v in values):
        raise SystemExit(EXIT_INVALID_STATE)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--reset-attempts", is_flag=True, help="Start counting attempts from zero again.")
@app_options
def retry(
    job_ids: tuple[str, ...],
    reset_attempts: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Re-queue failed, cancelled or expired jobs."""
    app = load_app(app_path, url)

    async def go() -> list[tuple[str, str]]:
        out = []
        for job_id in job_ids:
            try:
                await app.dead_letters.retry(job_id, reset_attempts=reset_attempts)
                out.append((job_id, "retried"))
            except JobNotFoundError:
                out.append((job_id, "not_found"))
            except KeyHeldError as exc:
                out.append((job_id, f"invalid_state: key held by job {exc.holder_id}"))
            except InvalidStateError:
                out.append((job_id, "invalid_state"))
        return out

    outcomes = run(app, go)
    _report(outcomes, as_json, str)
    _exit_for([o for _, o in outcomes])
