"""Webhook subscriptions and the delivery log in a real store (SQLite file), delivered to a
real receiver; the CLI over the same store as a subprocess; secrets never shown."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.integrations import EventEnvelope
from conveyor.integrations.webhooks import RetrySchedule, WebhookSender, generate_secret
from conveyor.integrations.webhooks.dispatch import attempt_once, dispatch, retry_delay
from conveyor.integrations.webhooks.registry import WebhookNotFoundError
from tests.integrations.servers import Receiver, serve_asgi

SECRET = generate_secret()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = Receiver(secret=SECRET.reveal())
    async with serve_asgi(app) as base:
        app.base = base
        yield app


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield conveyor
    await conveyor.close()


def cli(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args, "--url", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def test_dispatch_logs_attempts_disables_and_reenables(
    app: Conveyor, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    disabled: list[str] = []
    app.webhooks.on_disabled.append(lambda hook: disabled.append(hook.name))
    await app.webhooks.add(
        "orders",
        receiver.base + "/verify",
        ["order.*"],
        secret=SECRET,
        headers={"Authorization": "Bearer tok-42"},
        allow=["127.0.0.0/8"],
    )
    await app.webhooks.add(
        "broken",
        receiver.base + "/fail",
        ["order.#"],
        secret=SECRET,
        allow=["127.0.0.0/8"],
        retry=RetrySchedule(delays=()),
        disable_after=2,
    )
    event = EventEnvelope("ev-1", "order.created", {"total": 5})
    async with WebhookSender() as sender:
        with caplog.at_level(logging.DEBUG):
            results = await dispatch(app.webhooks, sender, event)
            assert results["orders"].outcome == "delivered"
            assert results["broken"].outcome == "failed"
            await dispatch(app.webhooks, sender, EventEnvelope("ev-2", "order.paid"))
            assert (await dispatch(app.webhooks, sender, EventEnvelope("x", "invoice.paid"))) == {}
    assert receiver.verified == ["ev-1", "ev-2"]
    broken = await app.webhooks.get("broken")
    assert not broken.enabled and broken.health.disabled and disabled == ["broken"]
    assert "2 consecutive" in (broken.health.disabled_reason or "")
    log = await app.webhooks.deliveries("orders")
    assert [(d.message_id, d.status_code, d.outcome) for d in log] == [
        ("ev-2", 204, "succeeded"),
        ("ev-1", 204, "succeeded"),
    ]
    assert log[0].latency_ms > 0
    assert [w.name for w in await app.webhooks.matching("order.created")] == ["orders"]
    enabled = await app.webhooks.enable("broken")
    assert enabled.enabled and enabled.health.consecutive_failures == 0
    for secret in (SECRET.reveal(), "tok-42"):
        assert secret not in caplog.text
        assert secret not in json.dumps([w.to_dict() for w in await app.webhooks.list()])


async def test_attempt_once_and_retry_delay_for_bus_jobs(app: Conveyor, receiver: Receiver) -> None:
    hook, generated = await app.webhooks.add(
        "limited",
        receiver.base + "/limited",
        allow=["127.0.0.0/8"],
        retry=RetrySchedule(delays=(1.0, 1.0)),
    )
    assert generated is not None and generated.reveal().startswith("whsec_")
    event = EventEnvelope("ev-9", "anything")
    async with WebhookSender() as sender:
        first, hook = await attempt_once(app.webhooks, sender, hook, event, 1)
        assert first.status_code == 429 and retry_delay(hook, first) == 7.0
        second, hook = await attempt_once(app.webhooks, sender, hook, event, 2)
    assert second.succeeded and retry_delay(hook, second) is None
    assert hook.health.consecutive_failures == 0


async def test_bad_input_is_refused_at_the_call_site(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        await app.webhooks.add("bad name!", "https://example.com/")
    with pytest.raises(ConfigurationError, match="stand alone"):
        await app.webhooks.add("p", "https://example.com/", ["order.cre*"])
    with pytest.raises(ConfigurationError, match="http"):
        await app.webhooks.add("u", "ftp://example.com/")
    await app.webhooks.add("dup", "https://example.com/")
    with pytest.raises(ConfigurationError, match="exists"):
        await app.webhooks.add("dup", "https://example.com/")
    with pytest.raises(WebhookNotFoundError):
        await app.webhooks.disable("nope")


def test_cli_manages_webhooks_without_showing_secrets(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {"HOOK_SECRET": SECRET.reveal(), "HOOK_TOKEN": "Bearer very-secret-token"}
    added = cli(
        db,
        "webhooks",
        "add",
        "orders",
        "https://example.com/hook",
        "-p",
        "order.*",
        "--secret-env",
        "HOOK_SECRET",
        "--header-env",
        "Authorization=HOOK_TOKEN",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    generated = cli(db, "webhooks", "add", "gen", "https://example.com/g", "--json")
    assert json.loads(generated.stdout)["generated_secret"].startswith("whsec_")
    listing = cli(db, "webhooks", "list")
    assert (
        listing.returncode == 0 and "orders" in listing.stdout and "Authorization" in listing.stdout
    )
    as_json = json.loads(cli(db, "webhooks", "list", "--json").stdout)
    assert {w["name"] for w in as_json} == {"orders", "gen"}
    assert cli(db, "webhooks", "disable", "orders").returncode == 0
    state = json.loads(cli(db, "webhooks", "enable", "orders", "--json").stdout)
    assert state["enabled"] is True
    assert "no deliveries" in cli(db, "webhooks", "deliveries", "orders").stdout
    missing = cli(db, "webhooks", "disable", "nope")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    usage = cli(db, "webhooks", "add", "x", "https://example.com/", "--secret-env", "UNSET_VAR")
    assert usage.returncode == 2 and "UNSET_VAR" in usage.stderr
    everything = "".join(
        r.stdout + r.stderr
        for r in (added, listing, cli(db, "webhooks", "list", "--json"), missing)
    )
    assert SECRET.reveal() not in everything and "very-secret-token" not in everything
