"""``conveyor events …`` against a real SQLite file, as an operator uses it: publish, list,
show, deliveries, subscriptions, replay and the dead-letter set, with ``--json``, exit statuses
and bad input that changes nothing."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor.testing import run_until_idle

from .bus_apps import APP_PATH, build_bus_app
from .conftest import MakeStore, Store

pytestmark = pytest.mark.acceptance
EXIT_USAGE, EXIT_NOT_FOUND = 2, 3


def events(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    return store.cli("events", *args, "--app", APP_PATH, with_app=False)


def events_json(store: Store, *args: str) -> Any:
    return store.parse_json(args, events(store, *args, "--json"))


def events_many(store: Store, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands run concurrently (each is a fresh interpreter); results in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: events(store, *args), commands))


def events_json_many(store: Store, *commands: tuple[str, ...]) -> list[Any]:
    done = events_many(store, *[(*args, "--json") for args in commands])
    return [store.parse_json(args, d) for args, d in zip(commands, done, strict=True)]


async def test_cli_events(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    app = build_bus_app(store.url, lease=store.lease, heartbeat=store.heartbeat)
    await app.bus.sync()
    subs = events_json(store, "subscriptions")
    assert [s["name"] for s in subs] == ["audit", "flaky", "ledger"]
    assert {s["name"]: s["ordered"] for s in subs} == {
        "audit": False,
        "flaky": True,
        "ledger": True,
    }

    ok = events_json(store, "publish", "order.created", "--data", '{"n": 1}', "--key", "k1")
    assert ok["created"] and ok["position"] == 1
    bad = events_json(
        store, "publish", "order.paid", "--data", '{"n": 2, "fail": true}', "--priority", "high",
        "--header", "tenant=t1",
    )  # fmt: skip
    again = events_json(store, "publish", "order.created", "--id", ok["id"])
    assert not again["created"] and again["position"] == 1

    bad_input = [
        (("publish", "order.*"), "bad event name"),
        (("publish", "order.x", "--data", "[1,"), "not valid JSON"),
        (("publish", "order.x", "--priority", "urgentest"), "urgentest"),
        (("list", "--pattern", "order.cr*"), "unknown pattern syntax"),
        (("dlq", "purge"), "--yes"),
    ]
    *refused, missing = events_many(store, *[a for a, _ in bad_input], ("show", "nope"))
    for (args, message), done in zip(bad_input, refused, strict=True):
        assert done.returncode == EXIT_USAGE, (args, done.returncode, done.stderr)
        assert message in " ".join(done.stderr.split()), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert missing.returncode == EXIT_NOT_FOUND and "no event" in missing.stderr
    assert [e["id"] for e in events_json(store, "list")] == [ok["id"], bad["id"]]

    await run_until_idle(app)
    shown, after, keyed, dead, dead_deliveries, ledger = events_json_many(
        store,
        ("show", bad["id"]),
        ("list", "--after", "1"),
        ("list", "--key", "k1"),
        ("dlq", "list"),
        ("deliveries", "--state", "dead"),
        ("deliveries", "-s", "ledger"),
    )
    assert shown["name"] == "order.paid" and shown["headers"] == {"tenant": "t1"}
    states = {d["subscription"]: d["state"] for d in shown["deliveries"]}
    assert states == {"ledger": "succeeded", "audit": "succeeded", "flaky": "dead"}
    assert [e["position"] for e in after] == [2]
    assert keyed[0]["id"] == ok["id"]
    assert [(d["event_id"], d["subscription"], d["error_code"]) for d in dead] == [
        (bad["id"], "flaky", "error")
    ]
    assert len(dead_deliveries) == 1 and len(ledger) == 2

    replay = events_json(store, "replay", "--subscription", "ledger")
    assert replay == {"events": 2, "delivered": 0, "skipped": 2}
    forced = events_json(store, "replay", "-s", "ledger", "--from-event", bad["id"], "--force")
    assert forced["delivered"] == 1
    assert events_json(store, "dlq", "retry") == {"retried": [dead[0]["job_id"]]}
    assert events_json(store, "dlq", "purge", "--yes") == {"purged": 0}  # it is queued again
    text = events(store, "list")
    assert text.returncode == 0 and "order.paid" in text.stdout
    await app.close()
