"""``conveyor enqueue --seed000 FILE|-``: seed-000 ``Task`` documents in, jobs out."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli.common import console, emit_json, run
from conveyor.errors import ConveyorError


def enqueue_seed000_documents(app: Conveyor, text: str, as_json: bool) -> None:
    """Parse ``text`` (one document or a list), enqueue each; a bad one stops before any is
    enqueued."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--seed000: not JSON: {exc}") from None
    documents: list[Any] = data if isinstance(data, list) else [data]
    from conveyor.core.seed000 import from_document

    try:
        specs = [from_document(app.tasks, doc).spec() for doc in documents]
    except ConveyorError as exc:
        raise click.UsageError(f"--seed000: {exc}") from None

    async def go() -> list[dict[str, Any]]:
        handles = await app.enqueue_many(specs)
        return [
            {"id": h.id, "task": h.task, "created": h.created, "seed000Id": doc.get("id")}
            for h, doc in zip(handles, documents, strict=True)
        ]

    try:
        out = run(app, go)
    except ConveyorError as exc:
        raise click.UsageError(f"--seed000: {exc}") from None
    if as_json:
        emit_json(out if isinstance(data, list) else out[0])
        return
    for row in out:
        note = "" if row["created"] else " (already enqueued from this document)"
        console.print(
            f"enqueued [bold]{row['task']}[/] as job [cyan]{row['id']}[/] from seed-000 "
            f"task {row['seed000Id']}{note}"
        )
