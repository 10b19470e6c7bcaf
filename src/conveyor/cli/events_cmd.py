"""``conveyor events …``: the event bus — publish, list, show, deliveries, subscriptions,
replay, the dead-letter set of deliveries, retention."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from conveyor.cli.common import (
    EXIT_ABORTED,
    EXIT_NOT_FOUND,
    app_options,
    console,
    emit_json,
    fail,
    load_app,
    parse_age,
    parse_json_option,
    run,
    table,
)
from conveyor.domain.durations import parse_duration


def parse_when(value: str | None, name: str) -> datetime | None:
    """An ISO time (UTC when it has no offset) or an age such as ``2h`` (that long ago)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return datetime.fromtimestamp(time.time() - parse_duration(value, field=name), UTC)
    except ValueError:
        raise click.BadParameter(
            "give an ISO time (2026-01-31T09:00:00Z) or an age (30m, 2h, 7d)", param_hint=name
        ) from None


def _short(value: Any, width: int = 60) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group()
def events() -> None:
    """The event bus: the event log, its deliveries to subscriptions, replay and dead letters.

    Patterns use dots: '*' is one segment, '#' any number (order.*, order.#).
    """


@events.command("publish")
@click.argument("name")
@click.option("--data", "data_json", metavar="JSON", help="The payload, e.g. '{\"id\": 42}'.")
@click.option("--key", metavar="KEY", help="Ordering key (one key is handled in order).")
@click.option("--priority", metavar="INT|NAME", help="critical/high/normal/low/background or int.")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--id", "event_id", metavar="ID", help="Event id (publishing is idempotent on it).")
@app_options
def publish(
    name: str,
    data_json: str | None,
    key: str | None,
    priority: str | None,
    headers: tuple[str, ...],
    event_id: str | None,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Publish one event NAME; it is delivered to every matching stored subscription."""
    app = load_app(app_path, url)
    data = parse_json_option(data_json, "--data")
    head: dict[str, Any] = {}
    for item in headers:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--header")
        head[field] = value
    prio: int | str | None = None
    if priority is not None:
        prio = int(priority) if priority.lstrip("-").isdigit() else priority
    result = run(
        app,
        lambda: app.bus.publish(name, data, key=key, priority=prio, headers=head, id=event_id),
    )
    if as_json:
        emit_json(
            {
                "id": result.id,
                "name": result.name,
                "position": result.position,
                "created": result.created,
            }
        )
        return
    note = "" if result.created else " (already published: nothing stored again)"
    console.print(
        f"published [bold]{name}[/] as event [cyan]{result.id}[/] at position "
        f"{result.position}{note}"
    )


@events.command("list")
@click.option("--pattern", metavar="PATTERN", help="Only names matching it (order.*, order.#).")
@click.option("--key", metavar="KEY", help="Only events with this key.")
@click.option("--since", metavar="TIME|AGE", help="Events from this time (ISO) or age (2h).")
@click.option("--until", metavar="TIME|AGE", help="Events before this time or age.")
@click.option(
    "--after", type=int, metavar="POSITION", help="Events after a log position, oldest first."
)
@click.option("--limit", default=50, show_default=True)
@app_options
def list_events(
    pattern: str | None,
    key: str | None,
    since: str | None,
    until: str | None,
    after: int | None,
    limit: int,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """The newest events of the log (or, with --after, the events after a position)."""
    app = load_app(app_path, url)
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if after is not None:
        found = run(
            app,
            lambda: app.bus.read(after, limit, pattern=pattern, key=key, since=start, until=end),
        )
    else:
        found = run(app, lambda: app.bus.log(pattern, key=key, since=start, until=end, limit=limit))
    if as_json:
        emit_json([e.to_dict() for e in found])
        return
    if not found:
        console.print("no events match")
        return
    rows = [
        [
            e.position,
            e.id,
            e.name,
            e.key or "-",
            e.priority,
            e.time.strftime("%Y-%m-%d %H:%M:%S"),
            _short(e.data if e.decode_error is None else f"(undecodable: {e.decode_error})", 50),
        ]
        for e in found
    ]
    console.print(table("Events", ["pos", "id", "name", "key", "prio", "time (UTC)", "data"], rows))


@events.command("show")
@click.argument("event_id")
@app_options
def show(event_id: str, app_path: str | None, url: str | None, as_json: bool) -> None:
    """One event with its deliveries: per subscription, state, attempts and last error."""
    app = load_app(app_path, url)
    details = run(app, lambda: app.bus.get(event_id))
    if details is None:
        fail(f"no event with id {event_id!r} in the log", EXIT_NOT_FOUND)
        return
    if as_json:
        emit_json(details.to_dict())
        return
    e = details.event
    console.print(f"[bold]{e.name}[/] [cyan]{e.id}[/] at position {e.position}")
    console.print(f"  time {e.time.isoformat()}  key {e.key or '-'}  priority {e.priority}")
    console.print(f"  schema version {e.schema_version}  headers {e.headers}")
    console.print(f"  data {e.data!r}" if e.decode_error is None else f"  [red]{e.decode_error}[/]")
    if not details.deliveries:
        console.print("no deliveries (no subscription matched it when it was published)")
        return
    rows = [
        [
            d.subscription,
            d.state.value,
            d.attempts,
            d.job_id,
            d.error_code or "-",
            _short(d.error_message, 50),
        ]
        for d in details.deliveries
    ]
    console.print(
        table("Deliveries", ["subscription", "state", "attempts", "job", "code", "error"], rows)
    )


@events.command("deliveries")
@click.option("--subscription", "-s", metavar="NAME", help="Only this subscription.")
@click.option(
    "--state",
    type=click.Choice(["pending", "running", "failed", "succeeded", "dead"]),
    help="Only deliveries in this state.",
)
@click.option("--limit", default=50, show_default=True)
@app_options
def deliveries(
    subscription: str | None,
    state: str | None,
    limit: int,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Deliveries of events to subscriptions (handler execution tracking), oldest first."""
    app = load_app(app_path, url)
    found = run(app, lambda: app.bus.deliveries(subscription, state=state, limit=limit))
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        console.print("no deliveries match")
        return
    rows = [
        [d.position, d.event_id, d.subscription, d.state.value, d.attempts, d.error_code or "-"]
        for d in found
    ]
    console.print(
        table("Deliveries", ["pos", "event", "subscription", "state", "attempts", "code"], rows)
    )


@events.command("subscriptions")
@app_options
def subscriptions(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Subscriptions stored in the store, with where their log starts."""
    app = load_app(app_path, url)
    found = run(app, app.bus.subscriptions)
    if as_json:
        emit_json([s.to_dict() for s in found])
        return
    if not found:
        console.print("no subscriptions are stored (a worker stores the ones it declares)")
        return
    rows = [
        [
            s.name,
            s.pattern,
            s.queue,
            "yes" if s.ordered else "no",
            s.attempts,
            s.position,
            ", ".join(f"{k}={v}" for k, v in s.filters.items()) or "-",
        ]
        for s in found
    ]
    console.print(
        table(
            "Subscriptions",
            ["name", "pattern", "queue", "ordered", "attempts", "starts after", "filters"],
            rows,
        )
    )


@events.command("replay")
@click.option("--subscription", "-s", metavar="NAME", help="Only to this subscription.")
@click.option("--since", metavar="TIME|AGE", help="Events from this time (ISO) or age (2h).")
@click.option("--until", metavar="TIME|AGE", help="Events before this time or age.")
@click.option("--from-event", metavar="ID", help="This event and every later one.")
@click.option("--force", is_flag=True, help="Deliver again even what was already handled.")
@app_options
def replay(
    subscription: str | None,
    since: str | None,
    until: str | None,
    from_event: str | None,
    force: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Deliver stored events again. Handled deliveries are skipped unless --force; pending
    ones always are; dead ones (and subscriptions created after the event) get a delivery."""
    app = load_app(app_path, url)
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    report = run(
        app,
        lambda: app.bus.replay(
            subscription=subscription, since=start, until=end, from_event=from_event, force=force
        ),
    )
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"looked at {report.events} event(s): {report.delivered} delivery(ies) queued, "
        f"{report.skipped} skipped (pending, or handled without --force)"
    )


@events.command("prune")
@click.option("--older-than", metavar="AGE", help="Default: the configured retention.")
@app_options
def prune(older_than: str | None, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Delete old events whose deliveries all finished."""
    app = load_app(app_path, url)
    age = parse_age(older_than)
    if age is None and app.bus.config.retention is None:
        raise click.UsageError("no retention is configured: pass --older-than (e.g. 30d)")
    deleted = run(app, lambda: app.bus.prune(age))
    if as_json:
        emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted} event(s)")


@events.group("dlq")
def events_dlq() -> None:
    """Deliveries whose handler failed for good (labelled failed_events by default)."""


@events_dlq.command("list")
@click.option("--subscription", "-s", metavar="NAME", help="Only this subscription.")
@click.option("--limit", default=50, show_default=True)
@app_options
def dlq_list(
    subscription: str | None, limit: int, app_path: str | None, url: str | None, as_json: bool
) -> None:
    """Dead deliveries, oldest event first."""
    app = load_app(app_path, url)
    found = run(app, lambda: app.bus.dead_letters(subscription, limit=limit))
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        console.print("no dead deliveries")
        return
    rows = [
        [d.event_id, d.subscription, d.job_id, d.attempts, d.error_code or "-",
         _short(d.error_message, 50)]
        for d in found
    ]  # fmt: skip
    console.print(
        table(
            "Dead deliveries", ["event", "subscription", "job", "attempts", "code", "error"], rows
        )
    )


@events_dlq.command("retry")
@click.option("--subscription", "-s", metavar="NAME", help="Only this subscription.")
@click.option("--event", "event_ids", multiple=True, metavar="ID", help="Only these events.")
@app_options
def dlq_retry(
    subscription: str | None,
    event_ids: tuple[str, ...],
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Queue dead deliveries again (their jobs keep their error history)."""
    app = load_app(app_path, url)
    ids = run(app, lambda: app.bus.retry_dead(subscription, event_ids=event_ids or None))
    if as_json:
        emit_json({"retried": ids})
    else:
        console.print(f"re-queued {len(ids)} delivery(ies)")


@events_dlq.command("purge")
@click.option("--subscription", "-s", metavar="NAME", help="Only this subscription.")
@click.option("--event", "event_ids", multiple=True, metavar="ID", help="Only these events.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@app_options
def dlq_purge(
    subscription: str | None,
    event_ids: tuple[str, ...],
    yes: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Delete the jobs of dead deliveries (the deliveries stay in the log as dead)."""
    app = load_app(app_path, url)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to purge without --yes when not interactive")
        if not click.confirm("purge the matching dead deliveries?"):
            raise SystemExit(EXIT_ABORTED)
    deleted = run(app, lambda: app.bus.purge_dead(subscription, event_ids=event_ids or None))
    if as_json:
        emit_json({"purged": deleted})
    else:
        console.print(f"purged {deleted} dead delivery(ies)")
