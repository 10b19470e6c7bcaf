"""``conveyor webhooks list|add|remove|disable|enable|deliveries``.

Secrets never appear here: ``add`` prints a generated signing secret once (or nothing when you
pass ``--secret-env``), and every listing shows how many secrets and which header names a
webhook has, never their values.
"""

from __future__ import annotations

import os
from typing import Any

import click

from conveyor.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    app_options,
    console,
    emit_json,
    fail,
    load_app,
    run,
    table,
)
from conveyor.errors import ConfigurationError
from conveyor.integrations.webhooks.policy import RetrySchedule
from conveyor.integrations.webhooks.registry import WebhookNotFoundError


async def _or_missing(coro: Any) -> Any:
    try:
        return await coro
    except WebhookNotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except ConfigurationError as exc:
        fail(f"[{exc.code}] {exc}", EXIT_USAGE)


@click.group()
def webhooks() -> None:
    """Webhook subscriptions: list, add, remove, disable, enable, and their delivery log."""


@webhooks.command("list")
@app_options
def list_webhooks(app_path: str | None, url: str | None, as_json: bool) -> None:
    """Every webhook with its patterns, state and consecutive failures (no secrets)."""
    app = load_app(app_path, url)
    found = run(app, app.webhooks.list)
    if as_json:
        emit_json([w.to_dict() for w in found])
        return
    if not found:
        console.print("no webhooks")
        return
    rows = [
        [
            w.name,
            w.url,
            ", ".join(w.patterns),
            "enabled" if w.enabled else "disabled",
            w.health.consecutive_failures,
            w.health.disabled_reason or "-",
            ", ".join(sorted(w.headers)) or "-",
        ]
        for w in found
    ]
    console.print(
        table(
            "Webhooks",
            ["name", "url", "patterns", "state", "failures", "disabled because", "headers"],
            rows,
        )
    )


@webhooks.command("add")
@click.argument("name")
@click.argument("target_url", metavar="URL")
@click.option(
    "--pattern",
    "-p",
    "patterns",
    multiple=True,
    help="Event pattern (repeatable; '*' one segment, '#' any). Default: '#', every event.",
)
@click.option(
    "--secret-env",
    metavar="VAR",
    help="Read the signing secret from this env var (default: generate one and print it once).",
)
@click.option(
    "--header-env",
    multiple=True,
    metavar="NAME=VAR",
    help="Send header NAME with "
    "the value of env var VAR, e.g. Authorization=HOOK_TOKEN (repeatable).",
)
@click.option("--timeout", default="15s", show_default=True, help="Per-attempt timeout.")
@click.option(
    "--retries",
    type=int,
    default=None,
    help="Retries with exponential backoff from 5s (default: 5s, 5m, 30m, 2h, 5h, 10h, 10h).",
)
@click.option(
    "--disable-after",
    type=int,
    default=20,
    show_default=True,
    help="Disable after this many consecutive failed attempts.",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="CIDR",
    help="Internal network the URL may resolve to (SSRF guard; repeatable; '*' allows everything).",
)
@click.option("--replace", is_flag=True, help="Replace an existing webhook of this name.")
@app_options
def add_webhook(
    name: str,
    target_url: str,
    patterns: tuple[str, ...],
    secret_env: str | None,
    header_env: tuple[str, ...],
    timeout: str,
    retries: int | None,
    disable_after: int,
    allow: tuple[str, ...],
    replace: bool,
    app_path: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Subscribe URL to events. Secrets come from environment variables, never the command
    line (it would land in shell history and process listings)."""
    app = load_app(app_path, url)
    secret = None
    if secret_env:
        secret = os.environ.get(secret_env)
        if not secret:
            fail(f"environment variable {secret_env} is empty or unset", EXIT_USAGE)
    headers: dict[str, str] = {}
    for item in header_env:
        header, sep, var = item.partition("=")
        if not sep or not header or not var:
            fail(f"--header-env wants NAME=VAR, got {item!r}", EXIT_USAGE)
        value = os.environ.get(var)
        if not value:
            fail(f"environment variable {var} (for header {header}) is empty or unset", EXIT_USAGE)
        headers[header] = value or ""
    retry = RetrySchedule.backoff(retries) if retries is not None else None

    async def go() -> Any:
        return await _or_missing(
            app.webhooks.add(
                name,
                target_url,
                patterns or ("#",),
                secret=secret,
                headers=headers,
                timeout=timeout,
                retry=retry,
                disable_after=disable_after,
                allow=allow,
                replace_existing=replace,
            )
        )

    hook, generated = run(app, go)
    if as_json:
        out = hook.to_dict()
        if generated is not None:
            out["generated_secret"] = generated.reveal()
        emit_json(out)
        return
    console.print(f"webhook {hook.name} → {hook.url} on {', '.join(hook.patterns)}")
    if generated is not None:
        console.print(
            "signing secret (shown once; store it with the receiver):\n" + generated.reveal(),
            highlight=False,
            soft_wrap=True,
        )


def _state_command(action: str) -> Any:
    @app_options
    def command(name: str, app_path: str | None, url: str | None, as_json: bool) -> None:
        app = load_app(app_path, url)
        method = getattr(app.webhooks, action)
        hook = run(app, lambda: _or_missing(method(name)))
        if as_json:
            emit_json(hook.to_dict())
            return
        console.print(f"webhook {hook.name}: {'enabled' if hook.enabled else 'disabled'}")

    return command


webhooks.command("disable", help="Stop deliveries to a webhook.")(
    click.argument("name")(_state_command("disable"))
)
webhooks.command("enable", help="Resume deliveries (resets the failure count).")(
    click.argument("name")(_state_command("enable"))
)


@webhooks.command("remove")
@click.argument("name")
@app_options
def remove_webhook(name: str, app_path: str | None, url: str | None, as_json: bool) -> None:
    """Delete a webhook and its delivery log."""
    app = load_app(app_path, url)
    run(app, lambda: _or_missing(app.webhooks.remove(name)))
    if as_json:
        emit_json({"removed": name})
        return
    console.print(f"webhook {name} removed")


@webhooks.command("deliveries")
@click.argument("name")
@click.option("--limit", type=int, default=20, show_default=True)
@app_options
def deliveries(name: str, limit: int, app_path: str | None, url: str | None, as_json: bool) -> None:
    """The latest delivery attempts: outcome, response code, latency, attempt, error code."""
    app = load_app(app_path, url)
    found = run(app, lambda: _or_missing(app.webhooks.deliveries(name, limit)))
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        console.print(f"no deliveries logged for {name}")
        return
    rows = [
        [
            d.at[:19].replace("T", " "),
            d.event,
            d.message_id,
            d.attempt,
            d.outcome,
            d.status_code if d.status_code is not None else "-",
            f"{d.latency_ms:.1f} ms",
            d.error or "-",
        ]
        for d in found
    ]
    console.print(
        table(
            f"Deliveries of {name}",
            ["at (UTC)", "event", "id", "attempt", "outcome", "code", "latency", "error"],
            rows,
        )
    )
