"""Shared CLI plumbing: loading the app, output as tables or JSON, exit codes."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.domain.durations import format_duration
from conveyor.errors import (
    ConveyorError,
    InvalidArgumentsError,
    InvalidStateError,
    JobNotFoundError,
    ScheduleNotFoundError,
)

T = TypeVar("T")

# Exit statuses (documented in docs/cli.md).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID_STATE = 4
EXIT_ABORTED = 5
EXIT_JOB_FAILED = 6  # `enqueue --wait`: the job failed, was cancelled or expired
EXIT_STILL_WAITING = 7  # `enqueue --wait`: the wait ran out before the job finished

# Piped output (CI logs, `| less`) gets room for the id and name columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def load_app(path: str | None, url: str | None) -> Conveyor:
    """The app named ``module:attribute`` (or ``CONVEYOR_APP``), else one built from the URL
    (``--url``, ``CONVEYOR_URL``, or the SQLite default)."""
    path = path or os.environ.get("CONVEYOR_APP")
    url = url or os.environ.get("CONVEYOR_URL")
    if path:
        if ":" not in path:
            raise click.UsageError(f"APP must look like 'package.module:app', got {path!r}")
        module_name, _, attr = path.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.UsageError(f"cannot import {module_name!r}: {exc}") from None
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise click.UsageError(f"{module_name!r} has no attribute {attr!r}")
        if callable(target) and not isinstance(target, Conveyor):
            target = target()
        if not isinstance(target, Conveyor):
            raise click.UsageError(f"{path} is a {type(target).__name__}, not a Conveyor app")
        if url and url != target.url:
            raise click.UsageError(
                f"--url/CONVEYOR_URL ({url}) differs from the app's own URL ({target.url}); "
                "configure the URL in one place"
            )
        return target
    return Conveyor(url)


def app_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--app``, ``--url`` and ``--json`` for commands that need an app."""

    @click.option(
        "--app", "-A", "app_path", metavar="MODULE:APP", help="The app (or $CONVEYOR_APP)."
    )
    @click.option("--url", metavar="URL", help="Store URL when no app is given (or $CONVEYOR_URL).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def run(app: Conveyor, coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine with the app, closing the app's backend afterwards; map errors to exits."""

    async def main() -> T:
        try:
            return await coro_fn()
        finally:
            await app.close()

    try:
        return asyncio.run(main())
    except (JobNotFoundError, ScheduleNotFoundError) as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except InvalidStateError as exc:
        fail(str(exc), EXIT_INVALID_STATE)
    except InvalidArgumentsError as exc:
        fail(f"[{exc.code}] {exc}", EXIT_USAGE)
    except ConveyorError as exc:
        fail(f"[{exc.code}] {exc}", EXIT_ERROR)
    raise AssertionError("unreachable")


def fail(message: str, code: int = EXIT_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            text = f"{delta / size:.0f}{unit}"
            break
    else:
        text = f"{delta:.0f}s"
    return f"in {text}" if future else f"{text} ago"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return format_duration(seconds)


#: Characters of one value that human output shows before cutting it short.
SHOW_LIMIT = 2000


def truncated(
    text: str, *, full: bool, limit: int = SHOW_LIMIT, hint: str = "--full shows all of it"
) -> str:
    """``text``, cut to ``limit`` characters (with what was left out and how to see it) unless
    ``full``. Human output only: a 10 MB argument must not take minutes to print."""
    if full or len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters; {hint}]"


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, col in enumerate(columns):
        t.add_column(col, overflow="fold", no_wrap=i == 0)
    for row in rows:
        t.add_row(*[escape(str(c)) for c in row])  # data, never markup
    return t


def parse_json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None


def parse_age(value: str | None) -> float | None:
    """Ages like ``2h`` or ``7d`` in seconds."""
    if value is None:
        return None
    from conveyor.domain.durations import parse_duration

    try:
        return parse_duration(value, field="--older-than")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
