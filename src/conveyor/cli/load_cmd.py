"""``conveyor load``: per-queue depth, running jobs and wait time, for autoscalers."""

from __future__ import annotations

import time

import click

from conveyor.cli.common import app_options, console, emit_json, fmt_duration, load_app, run, table


@click.command()
@click.option(
    "--queues",
    "-Q",
    "queue_names",
    multiple=True,
    metavar="NAMES",
    help="Only these queues, comma-separated or repeated (default: declared and busy ones).",
)
@app_options
def load(
    queue_names: tuple[str, ...], app_path: str | None, url: str | None, as_json: bool
) -> None:
    """Per queue: jobs ready to start, jobs running, and how long the oldest ready job has
    waited — the numbers an external autoscaler (KEDA, a Kubernetes HPA, a cron job) needs.

    With --json: {"at": ..., "queues": [{"queue", "ready", "running", "oldest_age_seconds"}],
    "total": {...}} where the total's age is the largest of the queues'.
    """
    app = load_app(app_path, url)
    names = [n.strip() for v in queue_names for n in v.split(",") if n.strip()] or None
    loads = run(app, lambda: app.inspect.load(names))
    ages = [x.oldest_age for x in loads if x.oldest_age is not None]
    total = {
        "ready": sum(x.ready for x in loads),
        "running": sum(x.running for x in loads),
        "oldest_age_seconds": max(ages) if ages else None,
    }
    if as_json:
        emit_json({"at": time.time(), "queues": [x.to_dict() for x in loads], "total": total})
        return
    rows = [[x.queue, x.ready, x.running, fmt_duration(x.oldest_age)] for x in loads]
    oldest = max(ages, default=None)
    rows.append(["(total)", total["ready"], total["running"], fmt_duration(oldest)])
    console.print(table("Load", ["queue", "ready", "running", "oldest wait"], rows))
