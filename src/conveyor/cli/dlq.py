"""``conveyor dlq …``: the dead-letter set — list, retry, retry-all, purge."""

from __future__ import annotations

import sys
from typing import Any

import click

from conveyor.cli.common import (
    EXIT_ABORTED,
    app_options,
    console,
    emit_json,
    fmt_age,
    load_app,
    parse_age,
    run,
    table,
)
from conveyor.cli.jobs import print_damage


def filter_options(fn: Any) -> Any:
    fn = click.option(
        "--older-than", metavar="AGE", help="Only jobs that failed longer ago (2h, 7d)."
    )(fn)
    fn = click.option(
        "--code", "error_code", help="Only this error code (timeout, poison_message, …)."
    )(fn)
    fn = click.option("--queue", help="Only this queue.")(fn)
    fn = click.option("--task", help="Only this task.")(fn)
    return fn


@click.group()
def dlq() -> None:
    """The dead-letter set: jobs that failed permanently, kept until retried or purged."""


@dlq.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
@app_options
def list_dead(
    task: str | None,
    queue: str | None,
    error_code: str | None,
    older_than: str | None,
    limit: int,
    offset: int,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Dead-lettered jobs, newest first."""
    app = load_app(app_path, url)
    age = parse_age(older_than)
    found = run(
        app,
        lambda: app.dead_letters.list(
            task=task,
            queue=queue,
            error_code=error_code,
            older_than=age,
            limit=limit,
            offset=offset,
            summary=True,
        ),
    )
    if as_json:
        emit_json([j.to_dict() for j in found])
        return
    if not found:
        console.print(
            "the dead-letter set is empty"
            if not (task or queue or error_code or age)
            else "no dead-lettered jobs match"
        )
        return
    rows = [
        [
            j.id,
            j.record.task,
            j.record.dead_letter_queue or j.record.queue,
            j.error.code if j.error else "-",
            (j.error.message if j.error else "")[:60],
            f"{j.record.attempts}/{j.record.max_attempts}",
            fmt_age(j.record.finished_at),
        ]
        for j in found
    ]
    console.print(
        table(
            "Dead letters", ["id", "task", "queue", "code", "message", "attempts", "failed"], rows
        )
    )
    print_damage(found)


@dlq.command("retry")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--reset-attempts", is_flag=True, help="Start counting attempts from zero again.")
@app_options
def retry_dead(
    job_ids: tuple[str, ...],
    reset_attempts: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Re-queue dead-lettered jobs by id."""
    from conveyor.cli.jobs import retry

    ctx = click.get_current_context()
    ctx.invoke(
        retry,
        job_ids=job_ids,
        reset_attempts=reset_attempts,
        app_path=app_path,
        url=url,
        as_json=as_json,
    )


@dlq.command("retry-all")
@filter_options
@click.option("--reset-attempts", is_flag=True, help="Start counting attempts from zero again.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@app_options
def retry_all(
    task: str | None,
    queue: str | None,
    error_code: str | None,
    older_than: str | None,
    reset_attempts: bool,
    yes: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Re-queue every dead-lettered job matching the filters."""
    app = load_app(app_path, url)
    age = parse_age(older_than)
    _confirm(app, yes, "re-queue", task, queue, error_code, age)
    n = run(
        app,
        lambda: app.dead_letters.retry_all(
            task=task,
            queue=queue,
            error_code=error_code,
            older_than=age,
            reset_attempts=reset_attempts,
        ),
    )
    if as_json:
        emit_json({"retried": n})
    else:
        console.print(f"re-queued {n} job(s)")


@dlq.command("purge")
@filter_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@app_options
def purge(
    task: str | None,
    queue: str | None,
    error_code: str | None,
    older_than: str | None,
    yes: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Delete dead-lettered jobs for good (asks first unless --yes)."""
    app = load_app(app_path, url)
    age = parse_age(older_than)
    _confirm(app, yes, "DELETE", task, queue, error_code, age)
    n = run(
        app,
        lambda: app.dead_letters.purge(
            task=task, queue=queue, error_code=error_code, older_than=age
        ),
    )
    if as_json:
        emit_json({"purged": n})
    else:
        console.print(f"purged {n} job(s)")


def _confirm(
    app: Any,
    yes: bool,
    verb: str,
    task: str | None,
    queue: str | None,
    error_code: str | None,
    age: float | None,
) -> None:
    if yes:
        return
    count = run(app, lambda: _count(app, task, queue, error_code, age))
    scope = (
        " and ".join(
            part
            for part in (
                f"task {task}" if task else "",
                f"queue {queue}" if queue else "",
                f"code {error_code}" if error_code else "",
                f"older than {age:.0f}s" if age else "",
            )
            if part
        )
        or "ALL dead-lettered jobs (no filter)"
    )
    if not sys.stdin.isatty():
        console.print(f"[red]refusing to {verb} {count} job(s) ({scope}) without --yes[/]")
        raise SystemExit(EXIT_ABORTED)
    if not click.confirm(f"{verb} {count} job(s) matching {scope}?", default=False):
        console.print("aborted; nothing changed")
        raise SystemExit(EXIT_ABORTED)


async def _count(
    app: Any, task: str | None, queue: str | None, error_code: str | None, age: float | None
) -> int:
    total, offset = 0, 0
    while True:
        page = await app.dead_letters.list(
            task=task, queue=queue, error_code=error_code, older_than=age, limit=1000, offset=offset
        )
        total += len(page)
        offset += len(page)
        if len(page) < 1000:
            return total
