"""The event bus end to end on every backend: publish, fan-out to subscriptions run by a real
worker, typed events, filters, retries and the dead-letter set, per-key ordering, late
subscriptions and replay, and bad input refused at the call site."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends import BackendFactory
from conveyor.bus import DeliveryState, Event
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import (
    ConfigurationError,
    InvalidEventError,
    SerializationError,
)
from conveyor.testing import run_until_idle


@dataclass
class Line:
    sku: str
    qty: int


@dataclass
class OrderCreated:
    order_id: int
    total: float
    region: str = "eu"
    lines: list[Line] = field(default_factory=list)


@pytest.fixture
async def app(backend_factory: BackendFactory) -> AsyncIterator[Conveyor]:
    app = Conveyor(backend_factory=backend_factory)
    app.bus.event("order.created")(OrderCreated)
    yield app
    await app.close()


async def test_a_published_event_reaches_every_matching_subscription(app: Conveyor) -> None:
    got: dict[str, list[Event[Any]]] = {"billing": [], "audit": [], "paid": []}

    @app.bus.subscribe("order.*", name="billing")
    async def billing(event: Event[OrderCreated]) -> None:
        got["billing"].append(event)

    @app.bus.subscribe("#", name="audit")
    def audit(event: Event[Any]) -> None:  # a plain function runs in a thread
        got["audit"].append(event)

    @app.bus.subscribe("order.paid", name="paid")
    async def paid(event: Event[Any]) -> None:
        got["paid"].append(event)

    order = OrderCreated(42, 99.5, lines=[Line("a", 2)])
    published = await app.bus.publish(order, key="order-42", headers={"tenant": "t1"})
    assert published.created and published.position == 1 and published.name == "order.created"
    await app.bus.publish("user.signed_up", {"user": 7}, priority="high")
    await run_until_idle(app)
    assert [e.data for e in got["billing"]] == [order]
    (event,) = got["billing"]
    assert isinstance(event.data, OrderCreated) and event.data.lines == [Line("a", 2)]
    assert (event.key, event.headers, event.subscription, event.attempt) == (
        "order-42",
        {"tenant": "t1"},
        "billing",
        1,
    )
    assert event.id == published.id and event.time is not None and event.time.tzinfo
    assert sorted(e.name for e in got["audit"]) == ["order.created", "user.signed_up"]
    assert got["paid"] == []
    details = await app.bus.get(published.id)
    assert details is not None
    assert {(d.subscription, d.state) for d in details.deliveries} == {
        ("billing", DeliveryState.SUCCEEDED),
        ("audit", DeliveryState.SUCCEEDED),
    }
    assert details.event.data == {
        "order_id": 42,
        "total": 99.5,
        "region": "eu",
        "lines": [{"sku": "a", "qty": 2}],
    }


async def test_filters_select_on_payload_fields(app: Conveyor) -> None:
    seen: list[int] = []

    @app.bus.subscribe("order.created", name="eu-big", where={"region": "eu", "total": [100, 200]})
    async def eu_big(event: Event[OrderCreated]) -> None:
        seen.append(event.data.order_id)

    await app.bus.publish_many(
        [
            OrderCreated(1, 100, "eu"),
            OrderCreated(2, 100, "us"),
            OrderCreated(3, 50, "eu"),
            OrderCreated(4, 200, "eu"),
        ]
    )
    await run_until_idle(app)
    assert sorted(seen) == [1, 4]


async def test_a_late_subscription_sees_only_later_events_until_it_asks_for_replay(
    app: Conveyor,
) -> None:
    early = await app.bus.publish("ping", {"n": 1})
    seen: list[int] = []

    @app.bus.subscribe("ping", name="late")
    async def late(event: Event[dict[str, int]]) -> None:
        seen.append(event.data["n"])

    await app.bus.publish("ping", {"n": 2})
    await run_until_idle(app)
    assert seen == [2]
    (sub,) = await app.bus.subscriptions()
    assert sub.name == "late" and sub.position == early.position
    report = await app.bus.replay(subscription="late")
    assert (report.events, report.delivered, report.skipped) == (2, 1, 1)
    await run_until_idle(app)
    assert sorted(seen) == [1, 2]
    again = await app.bus.replay(subscription="late")
    assert again.delivered == 0  # both handled: no duplicate without force
    forced = await app.bus.replay(subscription="late", from_event=early.id, force=True)
    assert forced.delivered == 2
    await run_until_idle(app)
    assert sorted(seen) == [1, 1, 2, 2]


async def test_retries_then_the_dead_letter_set(app: Conveyor) -> None:
    calls: dict[str, int] = {}
    broken = {"yes": True}

    @app.bus.subscribe("job.#", name="flaky", retry=RetryPolicy.build(3, delay=0, jitter=False))
    async def flaky(event: Event[Any]) -> None:
        calls[event.id or ""] = calls.get(event.id or "", 0) + 1
        if event.data["fail"] == "always" and broken["yes"]:
            raise RuntimeError("nope")
        if event.data["fail"] == "twice" and calls[event.id or ""] < 3:
            raise RuntimeError("not yet")

    twice = await app.bus.publish("job.a", {"fail": "twice"})
    always = await app.bus.publish("job.b", {"fail": "always"})
    await run_until_idle(app)
    rows = {d.event_id: d for d in await app.bus.deliveries("flaky")}
    assert rows[twice.id].state is DeliveryState.SUCCEEDED and rows[twice.id].attempts == 3
    assert rows[always.id].state is DeliveryState.DEAD and rows[always.id].attempts == 3
    (dead,) = await app.bus.dead_letters()
    assert dead.event_id == always.id and dead.error_code == "error"
    record = await (await app.backend()).get_job(dead.job_id)
    assert record is not None and record.dead_letter_queue == "failed_events"
    broken["yes"] = False
    assert await app.bus.retry_dead("flaky") == [dead.job_id]
    await run_until_idle(app)
    rows = {d.event_id: d for d in await app.bus.deliveries("flaky")}
    assert rows[always.id].state is DeliveryState.SUCCEEDED
    assert await app.bus.dead_letters() == []


async def test_events_of_one_key_are_handled_in_publish_order(app: Conveyor) -> None:
    seen: dict[str, list[int]] = {}

    @app.bus.subscribe("tick", name="ordered", retry=RetryPolicy.build(2, delay=0))
    async def ordered(event: Event[dict[str, Any]]) -> None:
        n = event.data["n"]
        if n % 7 == 3 and event.attempt == 1:
            raise RuntimeError("retry me")  # a retry must not let later ones overtake it
        seen.setdefault(event.key or "", []).append(n)

    events = [Event("tick", {"n": i}, key=f"k{i % 3}") for i in range(30)]
    await app.bus.publish_many(events[:15])
    await app.bus.publish_many(events[15:])
    await run_until_idle(app, concurrency=10)
    for k in range(3):
        assert seen[f"k{k}"] == [i for i in range(30) if i % 3 == k]


async def test_bad_input_fails_at_the_call_site(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="unknown pattern syntax"):
        app.bus.subscribe("order.cr*")
    with pytest.raises(ConfigurationError, match="unknown pattern syntax"):
        app.bus.subscribe("order..x")
    with pytest.raises(ConfigurationError, match="'colour', a field none"):
        app.bus.subscribe("order.*", where={"colour": "red"})
    with pytest.raises(InvalidEventError, match="bad event name"):
        await app.bus.publish("order.*", {})
    with pytest.raises(SerializationError):
        await app.bus.publish("thing.made", {"when": object()})
    with pytest.raises(InvalidEventError, match="field 'total' must be a number"):
        await app.bus.publish("order.created", {"order_id": 1, "total": "lots"})
    with pytest.raises(InvalidEventError, match="the field 'total' is missing"):
        await app.bus.publish("order.created", {"order_id": 1})
    with pytest.raises(InvalidEventError, match="has no field 'colour'"):
        await app.bus.publish("order.created", {"order_id": 1, "total": 2, "colour": "x"})
    with pytest.raises(InvalidEventError, match="priority"):
        await app.bus.publish("thing.made", {}, priority="urgent")
    assert await app.bus.head() == 0  # nothing was stored


async def test_an_event_that_no_longer_decodes_is_dead_lettered_with_a_stable_code(
    backend_factory: BackendFactory,
) -> None:
    producer = Conveyor(backend_factory=backend_factory)
    consumer = Conveyor(backend_factory=backend_factory)

    @consumer.bus.event("order.created", version=1)
    @dataclass
    class Strict:
        order_id: int
        total: float

    handled: list[Any] = []

    @consumer.bus.subscribe("order.created", name="strict")
    async def strict(event: Event[Strict]) -> None:
        handled.append(event.data)

    await consumer.bus.sync()
    await producer.bus.publish("order.created", {"order_id": 1})  # untyped producer
    await run_until_idle(consumer)
    assert handled == []
    (dead,) = await consumer.bus.dead_letters()
    assert dead.error_code == "invalid_payload" and dead.attempts == 1
    await producer.close()
    await consumer.close()


async def test_idempotent_publish_by_event_id(app: Conveyor) -> None:
    seen: list[str] = []

    @app.bus.subscribe("once", name="once")
    async def once(event: Event[Any]) -> None:
        seen.append(event.id or "")

    first = await app.bus.publish("once", {}, id="evt-1")
    again = await app.bus.publish("once", {"other": 1}, id="evt-1")
    assert first.created and not again.created and again.position == first.position
    await run_until_idle(app)
    assert seen == ["evt-1"]


async def test_publish_from_sync_code(app: Conveyor) -> None:
    import asyncio

    result = await asyncio.to_thread(app.bus.publish_sync, "sync.made", {"x": 1})
    assert result.position == 1
    events = await app.bus.read()
    assert [(e.name, e.data) for e in events] == [("sync.made", {"x": 1})]
    app.close_sync()


async def test_job_lifecycle_events_are_published_on_the_bus(
    backend_factory: BackendFactory,
) -> None:
    app = Conveyor(backend_factory=backend_factory)
    app.bus.configure({"lifecycle": ["completed", "dead"]})
    seen: list[tuple[str, str]] = []

    @app.task
    def work(fail: bool) -> int:
        if fail:
            raise RuntimeError("no")
        return 1

    @app.bus.subscribe("conveyor.job.#", name="watcher")
    async def watcher(event: Event[dict[str, Any]]) -> None:
        seen.append((event.name, event.data["task"]))

    ok = await work.enqueue(False)
    await work.enqueue(True)
    await run_until_idle(app)
    assert sorted(seen) == [
        ("conveyor.job.completed", work.name),
        ("conveyor.job.dead", work.name),
    ]  # the watcher's own deliveries are not published
    (completed,) = await app.bus.read(pattern="conveyor.job.completed")
    assert completed.key == ok.id and completed.data["job_id"] == ok.id
    await app.close()


async def test_publish_inside_the_callers_transaction(
    backend_kind: str, backend_factory: BackendFactory
) -> None:
    from ..capabilities.test_transactions import HAS_TRANSACTIONS, begin, native_connection

    app = Conveyor(backend_factory=backend_factory)
    got: list[str] = []

    @app.bus.subscribe("order.#", name="tx")
    async def tx(event: Event[Any]) -> None:
        got.append(event.data["n"])

    if backend_kind not in HAS_TRANSACTIONS:
        with pytest.raises(ConfigurationError, match="needs a SQL backend"):
            await app.bus.publish("order.made", {"n": "x"}, connection=object())
        await app.close()
        return
    await app.bus.sync()
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        app.bus.publish_sync("order.made", {"n": "rolled back"}, connection=conn)
        conn.rollback()
        begin(backend_kind, conn)
        app.bus.publish_many_sync(
            [Event("order.made", {"n": "a"}), Event("order.made", {"n": "b"})], connection=conn
        )
        conn.commit()
    await run_until_idle(app)
    assert got == ["a", "b"] or sorted(got) == ["a", "b"]
    assert [e.data["n"] for e in await app.bus.read()] == ["a", "b"]
    app.close_sync()
    await app.close()


async def test_follow_reads_the_log_by_position_then_waits_for_new_events(app: Conveyor) -> None:
    import asyncio

    first = await app.bus.publish("tail.a", {"n": 1})
    await app.bus.publish("other.b", {"n": 2})
    stop = asyncio.Event()
    seen: list[tuple[int, str]] = []

    async def tail() -> None:
        async for event in app.bus.follow(0, pattern="tail.#", poll=0.01, stop=stop):
            seen.append((event.position, event.name))
            if len(seen) == 2:
                stop.set()

    task = asyncio.create_task(tail())
    late = await app.bus.publish("tail.c", {"n": 3})
    await asyncio.wait_for(task, 30)
    assert seen == [(first.position, "tail.a"), (late.position, "tail.c")]
    resumed = await app.bus.read(first.position, pattern="tail.#")  # a Last-Event-ID resume
    assert [e.position for e in resumed] == [late.position]


async def test_a_corrupt_stored_payload_is_dead_lettered_on_replay(app: Conveyor) -> None:
    from conveyor.backends.capabilities import EventBusStore
    from conveyor.domain.events import NewEvent

    handled: list[Any] = []

    @app.bus.subscribe("raw.#", name="raw")
    async def raw(event: Event[Any]) -> None:
        handled.append(event)

    await app.bus.sync()
    backend = await app.backend()
    assert isinstance(backend, EventBusStore)
    version = (await backend.bus_subscriptions()).version
    broken = NewEvent("evt-broken", "raw.thing", b"\xff\xfe not json", occurred_at=1.0)
    assert await backend.bus_publish([broken], [], version)  # stored without a delivery
    (stored,) = await app.bus.read()
    assert stored.data is None and stored.decode_error  # the log shows it, undecoded
    report = await app.bus.replay(subscription="raw")
    assert report.delivered == 1
    await run_until_idle(app)
    assert handled == []
    (dead,) = await app.bus.dead_letters("raw")
    assert (dead.event_id, dead.error_code, dead.attempts) == ("evt-broken", "invalid_payload", 1)
