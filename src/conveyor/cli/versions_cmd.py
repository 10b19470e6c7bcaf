"""``conveyor versions TASK``: unfinished jobs of a task by payload version (issue 19)."""

from __future__ import annotations

from typing import Any

import click

from conveyor.cli.common import app_options, console, emit_json, load_app, run, table


@click.command()
@click.argument("task_name", metavar="TASK")
@app_options
def versions(task_name: str, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Unfinished jobs of TASK by state and payload version, and the highest `since` that
    dead-letters none of them (docs/versioning.md)."""
    app = load_app(app_path, url)

    async def go() -> Any:
        return await app.inspect.versions(task_name)

    status = run(app, go)
    if as_json:
        emit_json(status.to_dict())
        return
    seen = sorted({v for counts in status.by_state.values() for v in counts})
    rows = [[state, *[counts.get(v, 0) for v in seen]] for state, counts in status.by_state.items()]
    console.print(table(f"{task_name}: jobs by payload version", ["state", *map(str, seen)], rows))
    console.print(
        f"version {status.version}, since {status.since}; oldest waiting: "
        f"{status.oldest if status.oldest is not None else '-'}; safe since: {status.safe_since}"
    )
