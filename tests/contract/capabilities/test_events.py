"""Contract of the event-bus capability (:class:`conveyor.backends.capabilities.EventBusStore`),
every backend held to the memory reference: subscriptions with their starting position, the
atomic publish (events + one delivery job per subscription), positions, idempotence on the event
id, ordered chains, settling, replay, reads and retention."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.backends import Backend
from conveyor.backends.capabilities import EventBusStore, capability_names
from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryState,
    DeliveryStatus,
    EventQuery,
    NewDelivery,
    NewEvent,
)
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState

from .._support import T, error, job

SPEC: dict[str, Any] = {"task": "bus.a", "queue": "events", "filters": {"x": [1, "y"]}}


def _bus(backend: Backend) -> EventBusStore:
    assert isinstance(backend, EventBusStore), f"{type(backend).__name__} lacks the bus"
    return backend


def event(name: str = "order.created", **fields: Any) -> NewEvent:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b'{"n":1}')
    return NewEvent(name=name, **fields)


def delivery(
    ev: NewEvent, sub: str = "a", chain: str | None = None, **job_fields: Any
) -> NewDelivery:
    job_fields.setdefault("queue", "events")
    return NewDelivery(ev.id, sub, job(task=f"bus.{sub}", **job_fields), chain)


async def _version(bus: EventBusStore) -> int:
    return (await bus.bus_subscriptions()).version


async def _publish(
    bus: EventBusStore, events: list[NewEvent], deliveries: list[NewDelivery]
) -> Any:
    result = await bus.bus_publish(events, deliveries, await _version(bus), T)
    assert result is not None
    return result


async def _state(backend: Backend, job_id: str) -> JobState | None:
    record = await backend.get_job(job_id)
    return None if record is None else record.state


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "events" in capability_names(backend)


async def test_subscriptions_start_at_the_head_and_changes_bump_the_version(
    backend: Backend, other_backend: Backend
) -> None:
    bus = _bus(backend)
    empty = await bus.bus_subscriptions()
    assert empty.subscriptions == ()
    record, changed = await bus.bus_subscribe("a", "order.*", SPEC, T)
    assert changed and record.position == 0 and record.created_at == T
    v1 = await _version(bus)
    assert v1 > empty.version
    await _publish(bus, [event(), event()], [])
    later, changed = await bus.bus_subscribe("b", "order.#", {"task": "bus.b"}, T + 1)
    assert changed and later.position == 2
    # The same subscription again changes nothing; a new spec keeps the position.
    again, changed = await _bus(other_backend).bus_subscribe("a", "order.*", SPEC, T + 5)
    assert not changed and again == record
    v2 = await _version(bus)
    moved, changed = await bus.bus_subscribe("a", "order.#", SPEC, T + 5)
    assert changed and moved.position == 0 and moved.pattern == "order.#"
    assert await _version(bus) > v2
    seen = await _bus(other_backend).bus_subscriptions()
    assert [s.name for s in seen.subscriptions] == ["a", "b"]
    assert seen.subscriptions[0].spec == SPEC
    assert await bus.bus_unsubscribe("a")
    assert not await bus.bus_unsubscribe("a")
    assert [s.name for s in (await bus.bus_subscriptions()).subscriptions] == ["b"]


async def test_publish_stores_events_in_order_with_their_fields(backend: Backend) -> None:
    bus = _bus(backend)
    first = event(key="k1", priority=10, headers={"tenant": "t1", "n": [1, 2]}, schema_version=3)
    second = event("order.paid", occurred_at=T - 100.5)
    results = await _publish(bus, [first, second], [])
    assert [(r.id, r.position, r.created) for r in results] == [
        (first.id, 1, True),
        (second.id, 2, True),
    ]
    assert await bus.bus_head() == 2
    stored = await bus.bus_read(EventQuery())
    assert [e.id for e in stored] == [first.id, second.id]
    one = stored[0]
    assert (one.name, one.payload, one.key, one.priority, one.headers, one.schema_version) == (
        "order.created",
        b'{"n":1}',
        "k1",
        10,
        {"tenant": "t1", "n": [1, 2]},
        3,
    )
    assert one.occurred_at == T and one.stored_at == T
    assert stored[1].occurred_at == T - 100.5 and stored[1].key is None
    assert [e.id for e in await bus.bus_get([second.id, "nope", first.id])] == [first.id, second.id]


async def test_publish_is_idempotent_on_the_event_id(backend: Backend) -> None:
    bus = _bus(backend)
    await bus.bus_subscribe("a", "#", SPEC, T)
    ev = event()
    (first,) = await _publish(bus, [ev], [delivery(ev)])
    again = await _publish(bus, [ev, event()], [delivery(ev)])
    assert again[0].id == ev.id and again[0].position == first.position and not again[0].created
    assert again[1].created and again[1].position > first.position
    deliveries = await bus.bus_deliveries(DeliveryFilter(event_id=ev.id))
    assert len(deliveries) == 1
    assert len(await backend.list_jobs(JobFilter(queue="events"))) == 1


async def test_a_stale_subscription_version_stores_nothing(backend: Backend) -> None:
    bus = _bus(backend)
    version = await _version(bus)
    await bus.bus_subscribe("a", "#", SPEC, T)
    ev = event()
    assert await bus.bus_publish([ev], [delivery(ev)], version, T) is None
    assert await bus.bus_head() == 0
    assert await bus.bus_read(EventQuery()) == []
    assert await backend.list_jobs(JobFilter()) == []
    assert (await _publish(bus, [ev], [delivery(ev)]))[0].created


async def test_publish_creates_one_job_per_delivery(backend: Backend) -> None:
    bus = _bus(backend)
    ev = event(priority=5)
    a = delivery(ev, "a", priority=5, payload=b"A", metadata={"event": ev.id})
    b = delivery(ev, "b", priority=5, payload=b"B", max_attempts=3)
    await _publish(bus, [ev], [a, b])
    job_a = await backend.get_job(a.job.id)
    job_b = await backend.get_job(b.job.id)
    assert job_a is not None and job_b is not None
    assert (job_a.task, job_a.queue, job_a.state, job_a.payload, job_a.priority) == (
        "bus.a",
        "events",
        JobState.QUEUED,
        b"A",
        5,
    )
    assert job_a.metadata == {"event": ev.id} and job_b.max_attempts == 3
    rows = await bus.bus_deliveries(DeliveryFilter(event_id=ev.id))
    assert [(r.subscription, r.job_id, r.status, r.state, r.position) for r in rows] == [
        ("a", a.job.id, DeliveryStatus.LIVE, DeliveryState.PENDING, 1),
        ("b", b.job.id, DeliveryStatus.LIVE, DeliveryState.PENDING, 1),
    ]
    claimed = await backend.claim("w", ["events"], 10, 30.0, T)
    assert {c.id for c in claimed} == {a.job.id, b.job.id}
    rows = await bus.bus_deliveries(DeliveryFilter(subscription="a"))
    assert rows[0].state is DeliveryState.RUNNING and rows[0].attempts == 1


async def test_finish_records_the_outcome_once(backend: Backend) -> None:
    bus = _bus(backend)
    ev = event()
    a, b = delivery(ev, "a"), delivery(ev, "b")
    await _publish(bus, [ev], [a, b])
    assert await bus.bus_finish(a.job.id, DeliveryStatus.HANDLED, T + 1)
    assert not await bus.bus_finish(a.job.id, DeliveryStatus.HANDLED, T + 2)  # a repeat
    assert not await bus.bus_finish(a.job.id, DeliveryStatus.DEAD, T + 2)  # never downgraded
    assert not await bus.bus_finish("0" * 32, DeliveryStatus.HANDLED, T)
    assert await bus.bus_finish(b.job.id, DeliveryStatus.DEAD, T + 1)
    assert not await bus.bus_finish(b.job.id, DeliveryStatus.DEAD, T + 1)
    assert await bus.bus_finish(b.job.id, DeliveryStatus.HANDLED, T + 3)  # retried and handled
    rows = await bus.bus_deliveries(DeliveryFilter())
    assert [(r.status, r.finished_at) for r in rows] == [
        (DeliveryStatus.HANDLED, T + 1),
        (DeliveryStatus.HANDLED, T + 3),
    ]
    assert [r.state for r in rows] == [DeliveryState.SUCCEEDED] * 2


async def test_an_ordered_chain_runs_one_delivery_at_a_time(backend: Backend) -> None:
    bus = _bus(backend)
    evs = [event(key="k") for _ in range(3)]
    other = event(key="j")
    ds = [delivery(e, "a", chain="k") for e in evs]
    free = delivery(evs[1], "b")
    side = delivery(other, "a", chain="j")
    await _publish(bus, [*evs, other], [*ds, free, side])
    states = [await _state(backend, d.job.id) for d in ds]
    assert states == [JobState.QUEUED, JobState.BLOCKED, JobState.BLOCKED]
    assert await _state(backend, free.job.id) is JobState.QUEUED  # unordered subscription
    assert await _state(backend, side.job.id) is JobState.QUEUED  # another key
    rows = await bus.bus_deliveries(DeliveryFilter(subscription="a"))
    assert [r.state for r in rows] == [DeliveryState.PENDING] * 4
    assert await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    assert await _state(backend, ds[1].job.id) is JobState.QUEUED
    assert await _state(backend, ds[2].job.id) is JobState.BLOCKED
    assert await bus.bus_finish(ds[1].job.id, DeliveryStatus.DEAD, T)
    assert await _state(backend, ds[2].job.id) is JobState.QUEUED
    # A later publish of the key waits behind the live one; once the chain is empty, it doesn't.
    late = event(key="k")
    late_d = delivery(late, "a", chain="k")
    await _publish(bus, [late], [late_d])
    assert await _state(backend, late_d.job.id) is JobState.BLOCKED
    assert await bus.bus_finish(ds[2].job.id, DeliveryStatus.HANDLED, T)
    assert await bus.bus_finish(late_d.job.id, DeliveryStatus.HANDLED, T)
    again = event(key="k")
    again_d = delivery(again, "a", chain="k")
    await _publish(bus, [again], [again_d])
    assert await _state(backend, again_d.job.id) is JobState.QUEUED


async def test_settle_releases_a_chain_whose_first_job_ended_without_finishing(
    backend: Backend,
) -> None:
    bus = _bus(backend)
    evs = [event(key="k") for _ in range(4)]
    ds = [delivery(e, "a", chain="k") for e in evs]
    await _publish(bus, evs, ds)
    assert await bus.bus_settle(now=T) == 0  # nothing broken
    (claimed,) = await backend.claim("w", ["events"], 10, 30.0, T)
    assert claimed.id == ds[0].job.id
    await backend.fail(claimed.id, claimed.fence, error(), retry_delay=None, now=T)
    assert await backend.cancel(ds[1].job.id, "no", T) is not None  # blocked -> cancelled
    assert await _state(backend, ds[2].job.id) is JobState.BLOCKED
    assert await bus.bus_settle(now=T + 1) == 2
    assert await _state(backend, ds[2].job.id) is JobState.QUEUED
    assert await _state(backend, ds[3].job.id) is JobState.BLOCKED
    rows = await bus.bus_deliveries(DeliveryFilter(subscription="a"))
    assert [r.status for r in rows] == [
        DeliveryStatus.DEAD,
        DeliveryStatus.DEAD,
        DeliveryStatus.LIVE,
        DeliveryStatus.LIVE,
    ]
    assert [r.state for r in rows] == [
        DeliveryState.DEAD,
        DeliveryState.DEAD,
        DeliveryState.PENDING,
        DeliveryState.PENDING,
    ]
    assert rows[0].error_code == "error"
    assert await bus.bus_settle(now=T + 2) == 0
    dead = await bus.bus_deliveries(DeliveryFilter(dead_letters=True))
    assert [r.job_id for r in dead] == [ds[0].job.id]  # the cancelled one is not a dead letter


async def test_redeliver_skips_live_and_handled_deliveries_unless_forced(backend: Backend) -> None:
    bus = _bus(backend)
    evs = [event() for _ in range(3)]
    ds = [delivery(e, "a") for e in evs]
    await _publish(bus, evs, ds)
    await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    await bus.bus_finish(ds[1].job.id, DeliveryStatus.DEAD, T)
    await backend.cancel(ds[1].job.id, None, T)
    redo = [delivery(e, "a") for e in evs]
    extra = delivery(evs[0], "new")  # a subscription that never had it
    gone = delivery(event(), "a")  # an event that is not stored
    out = await bus.bus_redeliver([*redo, extra, gone], now=T + 1)
    assert out == [None, redo[1].job.id, None, extra.job.id, None]
    assert await _state(backend, redo[1].job.id) is JobState.QUEUED
    rows = {(r.event_id, r.subscription): r for r in await bus.bus_deliveries(DeliveryFilter())}
    assert rows[(evs[1].id, "a")].job_id == redo[1].job.id
    assert rows[(evs[1].id, "a")].status is DeliveryStatus.LIVE
    assert rows[(evs[0].id, "new")].position == 1
    forced = [delivery(e, "a") for e in evs]
    out = await bus.bus_redeliver(forced, force=True, now=T + 2)
    assert out == [forced[0].job.id, None, None]  # the two live ones are still skipped
    # The old job of a redelivered delivery no longer counts for it.
    assert not await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    assert await bus.bus_finish(forced[0].job.id, DeliveryStatus.HANDLED, T)


async def test_redelivered_ordered_deliveries_join_the_end_of_their_chain(
    backend: Backend,
) -> None:
    bus = _bus(backend)
    evs = [event(key="k") for _ in range(2)]
    ds = [delivery(e, "a", chain="k") for e in evs]
    await _publish(bus, evs, ds)
    await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    assert await _state(backend, ds[1].job.id) is JobState.QUEUED
    redo = delivery(evs[0], "a", chain="k")
    assert await bus.bus_redeliver([redo], force=True, now=T) == [redo.job.id]
    assert await _state(backend, redo.job.id) is JobState.BLOCKED
    await bus.bus_finish(ds[1].job.id, DeliveryStatus.HANDLED, T)
    assert await _state(backend, redo.job.id) is JobState.QUEUED


async def test_reads_select_by_position_time_and_key(backend: Backend) -> None:
    bus = _bus(backend)
    evs = [event(key="a" if i % 2 else "b", occurred_at=T + i) for i in range(10)]
    await _publish(bus, evs, [])
    ids = [e.id for e in evs]

    async def read(limit: int = 100, **query: Any) -> list[str]:
        return [e.id for e in await bus.bus_read(EventQuery(**query), limit)]

    assert await read() == ids
    assert await read(limit=3) == ids[:3]
    assert await read(after=7) == ids[7:]
    assert await read(after=2, before=5) == ids[2:4]
    assert await read(since=T + 3, until=T + 6) == ids[3:6]
    assert await read(key="a") == ids[1::2]
    assert await read(key="a", after=4, limit=2) == [ids[5], ids[7]]
    assert await read(limit=0) == []


async def test_deliveries_filter_by_event_subscription_and_status(backend: Backend) -> None:
    bus = _bus(backend)
    evs = [event() for _ in range(3)]
    ds = [delivery(e, s) for e in evs for s in ("a", "b")]
    await _publish(bus, evs, ds)
    await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    await bus.bus_finish(ds[3].job.id, DeliveryStatus.DEAD, T)

    async def rows(flt: DeliveryFilter, **kw: Any) -> list[tuple[int, str]]:
        return [(r.position, r.subscription) for r in await bus.bus_deliveries(flt, **kw)]

    assert await rows(DeliveryFilter()) == [(p, s) for p in (1, 2, 3) for s in ("a", "b")]
    assert await rows(DeliveryFilter(subscription="b")) == [(1, "b"), (2, "b"), (3, "b")]
    assert await rows(DeliveryFilter(event_id=evs[1].id)) == [(2, "a"), (2, "b")]
    assert await rows(DeliveryFilter(statuses=(DeliveryStatus.HANDLED, DeliveryStatus.DEAD))) == [
        (1, "a"),
        (2, "b"),
    ]
    assert await rows(DeliveryFilter(), after=1, limit=3) == [(2, "a"), (2, "b"), (3, "a")]


async def test_prune_keeps_live_deliveries_and_positions_never_go_back(backend: Backend) -> None:
    bus = _bus(backend)
    evs = [event() for _ in range(3)]
    ds = [delivery(e, "a") for e in evs]
    await _publish(bus, evs, ds)
    await bus.bus_finish(ds[0].job.id, DeliveryStatus.HANDLED, T)
    await bus.bus_finish(ds[1].job.id, DeliveryStatus.DEAD, T)
    assert await bus.bus_prune(T, 100) == 0  # nothing stored before T
    assert await bus.bus_prune(T + 1, 100) == 2  # the third still has a live delivery
    assert [e.id for e in await bus.bus_read(EventQuery())] == [evs[2].id]
    assert [r.event_id for r in await bus.bus_deliveries(DeliveryFilter())] == [evs[2].id]
    await bus.bus_finish(ds[2].job.id, DeliveryStatus.HANDLED, T)
    assert await bus.bus_prune(T + 1, 100) == 1
    assert await bus.bus_read(EventQuery()) == []
    (result,) = await _publish(bus, [event()], [])
    assert result.position == 4 and await bus.bus_head() == 4


async def test_concurrent_publishers_get_distinct_positions(
    backend: Backend, other_backend: Backend
) -> None:
    buses = [_bus(backend), _bus(other_backend)] * 4
    await buses[0].bus_subscribe("a", "#", SPEC, T)
    version = await _version(buses[0])
    batches = [[event() for _ in range(5)] for _ in buses]
    results = await asyncio.gather(
        *(
            bus.bus_publish(batch, [delivery(e) for e in batch], version, T)
            for bus, batch in zip(buses, batches, strict=True)
        )
    )
    positions = [r.position for batch in results for r in batch or []]
    assert sorted(positions) == list(range(1, 41))
    for batch in results:  # one batch takes consecutive positions, in order
        assert batch is not None
        first = batch[0].position
        assert [r.position for r in batch] == list(range(first, first + 5))
    assert len(await backend.list_jobs(JobFilter(queue="events"), limit=100)) == 40
    assert await buses[0].bus_head() == 40


async def test_concurrent_finishes_settles_and_publishes_on_chains(
    backend: Backend, other_backend: Backend
) -> None:
    """Clients advancing the same ordered chains at once (finishing heads, settling, publishing
    into them) never deadlock, and every chain keeps exactly one runnable delivery."""
    buses = [_bus(backend), _bus(other_backend)]
    await buses[0].bus_subscribe("a", "#", SPEC, T)
    version = await _version(buses[0])
    keys = [f"k{i}" for i in range(4)]

    async def publish(bus: EventBusStore, rounds: int) -> None:
        for _ in range(rounds):
            evs = [event(key=k) for k in keys]
            await bus.bus_publish(evs, [delivery(e, chain=e.key) for e in evs], version, T)

    async def finish_heads(bus: EventBusStore, rounds: int) -> None:
        for _ in range(rounds):
            for row in await bus.bus_deliveries(DeliveryFilter(statuses=(DeliveryStatus.LIVE,))):
                if row.job_state is JobState.QUEUED:
                    await bus.bus_finish(row.job_id, DeliveryStatus.HANDLED, T)

    async def settle(bus: EventBusStore, rounds: int) -> None:
        for _ in range(rounds):
            await bus.bus_settle(now=T)

    await publish(buses[0], 3)
    await asyncio.gather(
        publish(buses[0], 4),
        finish_heads(buses[1], 6),
        finish_heads(buses[0], 6),
        settle(buses[1], 6),
    )
    live = await buses[0].bus_deliveries(DeliveryFilter(statuses=(DeliveryStatus.LIVE,)))
    by_chain: dict[str, list[JobState | None]] = {}
    for row in live:
        by_chain.setdefault(row.chain or "", []).append(row.job_state)
    for chain, states in by_chain.items():
        assert states.count(JobState.QUEUED) == 1, (chain, states)
        assert states.count(JobState.BLOCKED) == len(states) - 1, (chain, states)


async def test_a_pair_twice_in_one_redelivery_is_delivered_once(backend: Backend) -> None:
    bus = _bus(backend)
    ev = event()
    await _publish(bus, [ev], [])
    first, second = delivery(ev, "new"), delivery(ev, "new")
    assert await bus.bus_redeliver([first, second], now=T) == [first.job.id, None]
