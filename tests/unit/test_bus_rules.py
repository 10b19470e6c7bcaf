"""The event bus's pure rules: names and patterns, payload filters, delivery states, typed
payload checks and the seed-003 configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import pytest

from conveyor.bus import EventBusConfig
from conveyor.bus.types import EventTypes, check_fields, field_exists, load
from conveyor.domain.events import (
    DeliveryState,
    DeliveryStatus,
    PatternError,
    check_event_name,
    check_pattern,
    delivery_state,
    filters_match,
    pattern_matches,
)
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, InvalidEventError


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("order.created", "order.created", True),
        ("order.*", "order.created", True),
        ("order.*", "order", False),
        ("order.*", "order.line.added", False),
        ("order.#", "order", True),
        ("order.#", "order.line.added", True),
        ("#", "anything.at.all", True),
        ("*.created", "order.created", True),
        ("*.created", "order.created.late", False),
        ("order.#.added", "order.added", True),
        ("order.#.added", "order.line.item.added", True),
        ("order.#.added", "order.line.removed", False),
        ("order.*", "orders.created", False),
        ("a-b.c_d", "a-b.c_d", True),
    ],
)
def test_patterns(pattern: str, name: str, hit: bool) -> None:
    assert check_pattern(pattern) == pattern
    assert pattern_matches(pattern, name) is hit


@pytest.mark.parametrize("bad", ["", "order.cr*", "order..x", ".order", "order.", "a b", ">", "**"])
def test_bad_patterns_and_names(bad: str) -> None:
    with pytest.raises(PatternError):
        check_pattern(bad)
    with pytest.raises(PatternError):
        check_event_name(bad)
    with pytest.raises(PatternError):
        check_event_name("order.*")


def test_filters_on_dotted_paths_with_exact_types() -> None:
    payload = {"region": "eu", "total": 10, "paid": True, "customer": {"tier": "gold"}}
    assert filters_match({"region": ["eu"], "customer.tier": ["gold", "silver"]}, payload)
    assert not filters_match({"region": ["us"]}, payload)
    assert not filters_match({"missing": [None]}, payload)  # absent is not None
    assert not filters_match({"customer.tier.x": ["gold"]}, payload)
    assert filters_match({"total": [10.0]}, payload)
    assert not filters_match({"total": [True]}, {"total": 1})  # a bool is not a number here
    assert not filters_match({"paid": [1]}, payload)
    assert filters_match({"paid": [True]}, payload)
    assert filters_match({}, "not even a dict")


@pytest.mark.parametrize(
    ("status", "job", "attempts", "state"),
    [
        (DeliveryStatus.LIVE, JobState.QUEUED, 0, DeliveryState.PENDING),
        (DeliveryStatus.LIVE, JobState.BLOCKED, 0, DeliveryState.PENDING),
        (DeliveryStatus.LIVE, JobState.RUNNING, 1, DeliveryState.RUNNING),
        (DeliveryStatus.LIVE, JobState.SCHEDULED, 1, DeliveryState.FAILED),
        (DeliveryStatus.LIVE, JobState.FAILED, 3, DeliveryState.DEAD),
        (DeliveryStatus.LIVE, JobState.CANCELLED, 0, DeliveryState.DEAD),
        (DeliveryStatus.LIVE, None, 0, DeliveryState.DEAD),
        (DeliveryStatus.HANDLED, JobState.RUNNING, 1, DeliveryState.RUNNING),
        (DeliveryStatus.HANDLED, JobState.COMPLETED, 1, DeliveryState.SUCCEEDED),
        (DeliveryStatus.HANDLED, None, 1, DeliveryState.SUCCEEDED),
        (DeliveryStatus.DEAD, JobState.QUEUED, 3, DeliveryState.FAILED),  # retried from DLQ
        (DeliveryStatus.DEAD, JobState.FAILED, 3, DeliveryState.DEAD),
    ],
)
def test_delivery_states(
    status: DeliveryStatus, job: JobState | None, attempts: int, state: DeliveryState
) -> None:
    assert delivery_state(status, job, attempts) is state


@dataclass
class Address:
    city: str
    zip: str | None = None


@dataclass
class Signup:
    user_id: int
    email: str
    score: float = 0.0
    plan: Literal["free", "pro"] = "free"
    tags: list[str] = field(default_factory=list)
    address: Address | None = None
    extra: dict[str, int] = field(default_factory=dict)


def test_typed_payloads_are_checked_and_loaded() -> None:
    good = {"user_id": 1, "email": "a@b", "score": 3, "tags": ["x"], "address": {"city": "P"}}
    check_fields(Signup, good, "user.signed_up")
    loaded = load(Signup, good)
    assert loaded == Signup(1, "a@b", 3, tags=["x"], address=Address("P"))
    cases = [
        ({"email": "a"}, "the field 'user_id' is missing"),
        ({"user_id": "1", "email": "a"}, "field 'user_id' must be an int"),
        ({"user_id": True, "email": "a"}, "must be an int"),
        ({"user_id": 1, "email": "a", "plan": "gold"}, "must be one of"),
        ({"user_id": 1, "email": "a", "tags": ["x", 2]}, "item 1 must be a str"),
        ({"user_id": 1, "email": "a", "address": {"zip": "1"}}, "the field 'city' is missing"),
        ({"user_id": 1, "email": "a", "extra": {"k": "v"}}, "key 'k' must be an int"),
        ({"user_id": 1, "email": "a", "nope": 1}, "has no field 'nope'"),
    ]
    for data, message in cases:
        with pytest.raises(InvalidEventError, match=message):
            check_fields(Signup, data, "user.signed_up")
    assert field_exists(Signup, "address.city")
    assert not field_exists(Signup, "address.street")
    assert field_exists(Signup, "extra.anything")  # not resolvable further: accepted


def test_event_type_declarations() -> None:
    types = EventTypes()
    types.declare("user.signed_up", Signup, 2)
    with pytest.raises(ConfigurationError, match="already declared"):
        types.declare("user.signed_up", Address, 1)
    with pytest.raises(ConfigurationError, match="dataclass or a pydantic model"):
        types.declare("x", int, 1)
    with pytest.raises(ConfigurationError, match="bad event name"):
        types.declare("x.*", Address, 1)
    with pytest.raises(ConfigurationError, match="version below it"):
        types.add_upcaster("user.signed_up", 2, lambda d: d)
    assert [t.cls for t in types.matching("user.#")] == [Signup]
    assert types.to_payload("user.signed_up", Signup(1, "a")) == {
        "user_id": 1,
        "email": "a",
        "score": 0.0,
        "plan": "free",
        "tags": [],
        "address": None,
        "extra": {},
    }


def test_the_seed_003_configuration() -> None:
    config = EventBusConfig.build(
        {
            "eventSourcing": {"enabled": True, "snapshotInterval": 100, "retention": 365},
            "queue": {
                "concurrency": 20,
                "priorityEnabled": True,
                "deadLetterQueue": "failed_events",
            },
            "webhooks": [
                {
                    "eventPattern": "order.*",
                    "url": "https://api.example.com/webhook",
                    "retryPolicy": {"maxRetries": 3},
                }
            ],
            "messageQueue": {
                "provider": "kafka",
                "topic": "events",
                "partitionKey": "metadata.tenantId",
            },
            "realtime": {
                "protocol": "websocket",
                "channels": [{"name": "notifications", "eventPattern": "notification.*"}],
            },
        }
    )
    assert config.event_sourcing.enabled and config.event_sourcing.snapshot_interval == 100
    assert config.event_sourcing.retention == 365 * 86400
    assert (config.queue.concurrency, config.queue.dead_letter_queue) == (20, "failed_events")
    assert config.webhooks[0]["event_pattern"] == "order.*"
    assert config.message_queue == {
        "provider": "kafka",
        "topic": "events",
        "partition_key": "metadata.tenantId",
    }
    assert config.realtime is not None and config.realtime["protocol"] == "websocket"
    assert EventBusConfig.build({"retention": timedelta(hours=1)}).retention == 3600
    bad = [
        ({"queue": {"concurency": 2}}, "unknown setting"),
        ({"queue": {"concurrency": 0}}, "concurrency must be an integer >= 1"),
        ({"eventSourcing": {"snapshotInterval": -1}}, "snapshotInterval"),
        ({"webhooks": [{"eventPattern": "order.cr*", "url": "https://x"}]}, "pattern syntax"),
        ({"webhooks": [{"eventPattern": "order.*", "url": "ftp://x"}]}, "http"),
        ({"messageQueue": {"provider": "carrier-pigeon"}}, "provider"),
        ({"realtime": {"protocol": "smoke"}}, "protocol"),
        ({"lifecycle": ["exploded"]}, "unknown lifecycle event"),
        ({"retention": "forever"}, "days"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            EventBusConfig.build(data)


async def test_pydantic_event_types() -> None:
    pydantic = pytest.importorskip("pydantic")
    from conveyor.bus import Event
    from conveyor.testing import memory_app, run_until_idle

    class Paid(pydantic.BaseModel):  # type: ignore[name-defined, misc]
        order_id: int
        amount: float

    app = memory_app()
    app.bus.event("order.paid")(Paid)
    got: list[object] = []

    @app.bus.subscribe("order.paid", name="p", where={"order_id": 1})
    async def handler(event: Event[Paid]) -> None:
        got.append(event.data)

    with pytest.raises(ConfigurationError, match="'colour', a field none"):
        app.bus.subscribe("order.paid", where={"colour": 1})
    with pytest.raises(InvalidEventError, match="amount"):
        await app.bus.publish("order.paid", {"order_id": 1, "amount": "lots"})
    await app.bus.publish(Paid(order_id=1, amount=2.5))
    await app.bus.publish("order.paid", {"order_id": 2, "amount": 1})
    await run_until_idle(app)
    assert got == [Paid(order_id=1, amount=2.5)]
    await app.close()
