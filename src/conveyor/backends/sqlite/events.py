"""The event bus of the SQLite backend (schema in ``sql/0004_events.sql``).

Every write runs inside the writer's ``BEGIN IMMEDIATE`` transaction (or, for the outbox, the
application's own): SQLite has one writer at a time, so the position counter bumped there
follows commit order. Delivery jobs are stored by the backend's own ``ops.enqueue`` in the same
transaction. The functions over a connection mirror
:class:`~conveyor.backends.memory.events.MemoryEvents` exactly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.capabilities.events import (
    EventBusStore,
    EventBusTransactions,
    SyncEventBusTransactions,
)
from conveyor.backends.sqlite import ops
from conveyor.backends.sqlite.notify import Effects
from conveyor.backends.sqlite.queries import dumps, encode_job
from conveyor.backends.sqlite.tx import check_connection
from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    EventQuery,
    EventRecord,
    NewDelivery,
    NewEvent,
    PublishResult,
    SubscriptionRecord,
    SubscriptionSet,
)
from conveyor.domain.job import NewJob
from conveyor.domain.states import JobState

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine

_ACTIVE = ("queued", "scheduled", "running")
_EVENT_COLUMNS = (
    "position, id, name, payload, key, priority, headers, schema_version, occurred_at, stored_at"
)


def _clock(now: float | None) -> float:
    return time.time() if now is None else now


def _event(row: Sequence[Any]) -> EventRecord:
    return EventRecord(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        bytes(row[3]),
        row[4],
        int(row[5]),
        json.loads(row[6]),
        int(row[7]),
        float(row[8]),
        float(row[9]),
    )


def _params(values: Iterable[Any]) -> str:
    return dumps(list(values))


# -- subscriptions --------------------------------------------------------------------------------
def subscriptions(conn: sqlite3.Connection) -> SubscriptionSet:
    (version,) = conn.execute("SELECT version FROM conveyor_bus_state WHERE id = 1").fetchone()
    rows = conn.execute(
        "SELECT name, pattern, spec, position, created_at FROM conveyor_bus_subscriptions "
        "ORDER BY name"
    ).fetchall()
    subs = tuple(
        SubscriptionRecord(str(n), str(p), json.loads(s), int(pos), float(c))
        for n, p, s, pos, c in rows
    )
    return SubscriptionSet(int(version), subs)


def subscribe(
    conn: sqlite3.Connection, name: str, pattern: str, spec: dict[str, Any], now: float | None
) -> tuple[SubscriptionRecord, bool]:
    t = _clock(now)
    row = conn.execute(
        "SELECT pattern, spec, position, created_at FROM conveyor_bus_subscriptions WHERE name = ?",
        (name,),
    ).fetchone()
    if row is not None:
        old = SubscriptionRecord(name, str(row[0]), json.loads(row[1]), int(row[2]), row[3])
        if old.pattern == pattern and old.spec == spec:
            return old, False
        record = replace(old, pattern=pattern, spec=dict(spec))
        conn.execute(
            "UPDATE conveyor_bus_subscriptions SET pattern = ?, spec = ? WHERE name = ?",
            (pattern, dumps(spec), name),
        )
    else:
        (position,) = conn.execute(
            "SELECT position FROM conveyor_bus_state WHERE id = 1"
        ).fetchone()
        record = SubscriptionRecord(name, pattern, dict(spec), int(position), t)
        conn.execute(
            "INSERT INTO conveyor_bus_subscriptions (name, pattern, spec, position, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, pattern, dumps(spec), int(position), t),
        )
    conn.execute("UPDATE conveyor_bus_state SET version = version + 1 WHERE id = 1")
    return record, True


def unsubscribe(conn: sqlite3.Connection, name: str) -> bool:
    if conn.execute("DELETE FROM conveyor_bus_subscriptions WHERE name = ?", (name,)).rowcount:
        conn.execute("UPDATE conveyor_bus_state SET version = version + 1 WHERE id = 1")
        return True
    return False


# -- publishing -----------------------------------------------------------------------------------
def publish(
    conn: sqlite3.Connection,
    fx: Effects,
    events: Sequence[NewEvent],
    deliveries: Sequence[NewDelivery],
    version: int,
    now: float | None,
) -> list[PublishResult] | None:
    t = _clock(now)
    position, stored_version = conn.execute(
        "SELECT position, version FROM conveyor_bus_state WHERE id = 1"
    ).fetchone()
    if int(stored_version) != version:
        return None
    known = dict(
        conn.execute(
            "SELECT id, position FROM conveyor_bus_events WHERE id IN (SELECT value FROM "
            "json_each(?))",
            (_params(e.id for e in events),),
        ).fetchall()
    )
    position = int(position)
    results: list[PublishResult] = []
    rows: list[tuple[Any, ...]] = []
    created: dict[str, int] = {}
    for ev in events:
        if ev.id in known:
            results.append(PublishResult(ev.id, int(known[ev.id]), False))
            continue
        position += 1
        known[ev.id] = position
        created[ev.id] = position
        occurred = t if ev.occurred_at is None else ev.occurred_at
        rows.append(
            (
                position,
                ev.id,
                ev.name,
                ev.payload,
                ev.key,
                ev.priority,
                dumps(ev.headers),
                ev.schema_version,
                occurred,
                t,
            )
        )
        results.append(PublishResult(ev.id, position, True))
    if rows:
        conn.executemany(
            f"INSERT INTO conveyor_bus_events ({_EVENT_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("UPDATE conveyor_bus_state SET position = ? WHERE id = 1", (position,))
    chosen: list[NewDelivery] = []
    seen: set[tuple[str, str]] = set()
    for d in deliveries:
        if d.event_id in created and (d.event_id, d.subscription) not in seen:
            seen.add((d.event_id, d.subscription))
            chosen.append(d)
    _add_deliveries(conn, fx, chosen, created, t)
    return results


def _add_deliveries(
    conn: sqlite3.Connection,
    fx: Effects,
    deliveries: Sequence[NewDelivery],
    positions: dict[str, int],
    t: float,
) -> None:
    """Insert live deliveries (joining their chains) and store their jobs."""
    if not deliveries:
        return
    chains: dict[tuple[str, str], list[int]] = {}  # (sub, chain) -> [pending, seq]
    rows: list[tuple[Any, ...]] = []
    jobs: list[NewJob] = []
    for d in deliveries:
        seq, blocked = 0, False
        if d.chain is not None:
            ckey = (d.subscription, d.chain)
            chain = chains.get(ckey)
            if chain is None:
                row = conn.execute(
                    "SELECT pending, seq FROM conveyor_bus_chains "
                    "WHERE subscription = ? AND chain = ?",
                    ckey,
                ).fetchone()
                chain = chains[ckey] = [0, 0] if row is None else [int(row[0]), int(row[1])]
            blocked = chain[0] > 0
            chain[0] += 1
            chain[1] += 1
            seq = chain[1]
        rows.append(
            (
                d.event_id,
                d.subscription,
                positions[d.event_id],
                d.job.id,
                d.chain,
                seq,
                int(d.chain is not None),
                t,
            )
        )
        jobs.append(replace(d.job, blocked=True) if blocked else d.job)
    conn.executemany(
        "INSERT INTO conveyor_bus_deliveries (event_id, subscription, position, job_id, status, "
        "chain, seq, in_chain, created_at) VALUES (?, ?, ?, ?, 'live', ?, ?, ?, ?)",
        rows,
    )
    if chains:
        conn.executemany(
            "INSERT INTO conveyor_bus_chains (subscription, chain, pending, seq) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (subscription, chain) "
            "DO UPDATE SET pending = excluded.pending, seq = excluded.seq",
            [(s, c, p, q) for (s, c), (p, q) in chains.items()],
        )
    ops.enqueue(conn, fx, jobs, [encode_job(j) for j in jobs], t)


def redeliver(
    conn: sqlite3.Connection,
    fx: Effects,
    deliveries: Sequence[NewDelivery],
    force: bool,
    now: float | None,
) -> list[str | None]:
    t = _clock(now)
    out: list[str | None] = []
    for d in deliveries:
        row = conn.execute(
            "SELECT position FROM conveyor_bus_events WHERE id = ?", (d.event_id,)
        ).fetchone()
        if row is None:
            out.append(None)
            continue
        old = conn.execute(
            "SELECT d.status, d.job_id, j.state FROM conveyor_bus_deliveries d "
            "LEFT JOIN conveyor_jobs j ON j.id = d.job_id "
            "WHERE d.event_id = ? AND d.subscription = ?",
            (d.event_id, d.subscription),
        ).fetchone()
        if old is not None:
            status, _, job_state = old
            alive = job_state is not None and not JobState(job_state).is_terminal
            if (status == "live" and alive) or (status == "handled" and not force):
                out.append(None)
                continue
            _leave_chain(conn, fx, d.event_id, d.subscription, t)
            conn.execute(
                "DELETE FROM conveyor_bus_deliveries WHERE event_id = ? AND subscription = ?",
                (d.event_id, d.subscription),
            )
        _add_deliveries(conn, fx, [d], {d.event_id: int(row[0])}, t)
        out.append(d.job.id)
    return out


# -- outcomes -------------------------------------------------------------------------------------
def finish(
    conn: sqlite3.Connection, fx: Effects, job_id: str, status: DeliveryStatus, now: float | None
) -> bool:
    t = _clock(now)
    row = conn.execute(
        "SELECT event_id, subscription, status FROM conveyor_bus_deliveries WHERE job_id = ?",
        (job_id,),
    ).fetchone()
    if row is None or row[2] == "handled" or row[2] == status.value:
        return False
    event_id, subscription = row[0], row[1]
    conn.execute(
        "UPDATE conveyor_bus_deliveries SET status = ?, finished_at = ? "
        "WHERE event_id = ? AND subscription = ?",
        (status.value, t, event_id, subscription),
    )
    _leave_chain(conn, fx, event_id, subscription, t)
    return True


def _leave_chain(
    conn: sqlite3.Connection, fx: Effects, event_id: str, subscription: str, t: float
) -> int:
    row = conn.execute(
        "SELECT chain FROM conveyor_bus_deliveries WHERE event_id = ? AND subscription = ? "
        "AND in_chain = 1",
        (event_id, subscription),
    ).fetchone()
    if row is None:
        return 0
    conn.execute(
        "UPDATE conveyor_bus_deliveries SET in_chain = 0 WHERE event_id = ? AND subscription = ?",
        (event_id, subscription),
    )
    conn.execute(
        "UPDATE conveyor_bus_chains SET pending = pending - 1 WHERE subscription = ? AND chain = ?",
        (subscription, row[0]),
    )
    return _advance(conn, fx, subscription, row[0], t)


def _advance(conn: sqlite3.Connection, fx: Effects, subscription: str, chain: str, t: float) -> int:
    """See :meth:`MemoryEvents._advance`."""
    marked = 0
    while True:
        head = conn.execute(
            "SELECT d.event_id, j.state, j.queue, d.status FROM conveyor_bus_deliveries d "
            "LEFT JOIN conveyor_jobs j ON j.id = d.job_id "
            "WHERE d.subscription = ? AND d.chain = ? AND d.in_chain = 1 ORDER BY d.seq LIMIT 1",
            (subscription, chain),
        ).fetchone()
        if head is None:
            conn.execute(
                "DELETE FROM conveyor_bus_chains WHERE subscription = ? AND chain = ?",
                (subscription, chain),
            )
            return marked
        event_id, state, queue, status = head
        if status != "live":  # finished, still listed (see PostgreSQL): just take it out
            conn.execute(
                "UPDATE conveyor_bus_deliveries SET in_chain = 0 "
                "WHERE event_id = ? AND subscription = ?",
                (event_id, subscription),
            )
            conn.execute(
                "UPDATE conveyor_bus_chains SET pending = pending - 1 "
                "WHERE subscription = ? AND chain = ?",
                (subscription, chain),
            )
            continue
        if state == "blocked":
            conn.execute(
                "UPDATE conveyor_jobs SET state = 'queued' WHERE id = (SELECT job_id FROM "
                "conveyor_bus_deliveries WHERE event_id = ? AND subscription = ?)",
                (event_id, subscription),
            )
            fx.ready.add(str(queue))
            return marked
        if state in _ACTIVE:
            return marked
        status = "handled" if state == "completed" else "dead"
        conn.execute(
            "UPDATE conveyor_bus_deliveries SET status = ?, finished_at = ?, in_chain = 0 "
            "WHERE event_id = ? AND subscription = ?",
            (status, t, event_id, subscription),
        )
        conn.execute(
            "UPDATE conveyor_bus_chains SET pending = pending - 1 "
            "WHERE subscription = ? AND chain = ?",
            (subscription, chain),
        )
        marked += 1


def settle(conn: sqlite3.Connection, fx: Effects, limit: int, now: float | None) -> int:
    t = _clock(now)
    marked = 0
    chains = conn.execute("SELECT subscription, chain FROM conveyor_bus_chains").fetchall()
    for subscription, chain in chains:
        if marked >= limit:
            break
        marked += _advance(conn, fx, subscription, chain, t)
    return marked


def prune(conn: sqlite3.Connection, before: float, limit: int) -> int:
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT e.id FROM conveyor_bus_events e WHERE e.stored_at < ? AND NOT EXISTS ("
            "SELECT 1 FROM conveyor_bus_deliveries d WHERE d.event_id = e.id "
            "AND d.status = 'live') ORDER BY e.position LIMIT ?",
            (before, limit),
        ).fetchall()
    ]
    if ids:
        doomed = _params(ids)
        conn.execute(
            "DELETE FROM conveyor_bus_deliveries WHERE event_id IN (SELECT value FROM "
            "json_each(?))",
            (doomed,),
        )
        conn.execute(
            "DELETE FROM conveyor_bus_events WHERE id IN (SELECT value FROM json_each(?))",
            (doomed,),
        )
    return len(ids)


# -- reading --------------------------------------------------------------------------------------
def read(conn: sqlite3.Connection, query: EventQuery, limit: int) -> list[EventRecord]:
    where = ["position > ?"]
    params: list[Any] = [query.after]
    if query.before is not None:
        where.append("position < ?")
        params.append(query.before)
    if query.since is not None:
        where.append("occurred_at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("occurred_at < ?")
        params.append(query.until)
    if query.key is not None:
        where.append("key = ?")
        params.append(query.key)
    params.append(limit)
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM conveyor_bus_events WHERE {' AND '.join(where)} "
        "ORDER BY position LIMIT ?",
        params,
    ).fetchall()
    return [_event(r) for r in rows]


def get(conn: sqlite3.Connection, event_ids: Sequence[str]) -> list[EventRecord]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM conveyor_bus_events WHERE id IN (SELECT value FROM "
        "json_each(?)) ORDER BY position",
        (_params(event_ids),),
    ).fetchall()
    return [_event(r) for r in rows]


def deliveries(
    conn: sqlite3.Connection, flt: DeliveryFilter, after: int, limit: int
) -> list[DeliveryRecord]:
    where = ["d.position > ?"]
    params: list[Any] = [after]
    if flt.event_id is not None:
        where.append("d.event_id = ?")
        params.append(flt.event_id)
    if flt.subscription is not None:
        where.append("d.subscription = ?")
        params.append(flt.subscription)
    if flt.statuses is not None:
        where.append("d.status IN (SELECT value FROM json_each(?))")
        params.append(_params(s.value for s in flt.statuses))
    if flt.dead_letters:
        where.append("j.state = 'failed'")
    params.append(limit)
    rows = conn.execute(
        "SELECT d.event_id, d.position, d.subscription, d.job_id, d.status, d.chain, "
        "d.created_at, d.finished_at, j.state, j.attempts, j.error "
        "FROM conveyor_bus_deliveries d LEFT JOIN conveyor_jobs j ON j.id = d.job_id "
        f"WHERE {' AND '.join(where)} ORDER BY d.position, d.subscription LIMIT ?",
        params,
    ).fetchall()
    out = []
    for row in rows:
        error = json.loads(row[10]) if row[10] else None
        out.append(
            DeliveryRecord(
                str(row[0]),
                int(row[1]),
                str(row[2]),
                str(row[3]),
                DeliveryStatus(row[4]),
                row[5],
                float(row[6]),
                row[7],
                None if row[8] is None else JobState(row[8]),
                int(row[9] or 0),
                None if error is None else error.get("code"),
                None if error is None else error.get("message"),
            )
        )
    return out


# -- the client mixin -----------------------------------------------------------------------------
class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


class SQLiteEvents(EventBusStore, EventBusTransactions):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def _bus_engine(self) -> Engine:
        return await self.factory.engine()

    async def bus_subscriptions(self) -> SubscriptionSet:
        return await (await self._bus_engine()).read(subscriptions)

    async def bus_subscribe(
        self, name: str, pattern: str, spec: dict[str, Any], now: float | None = None
    ) -> tuple[SubscriptionRecord, bool]:
        engine = await self._bus_engine()
        return await engine.write(lambda conn, _fx: subscribe(conn, name, pattern, spec, now))

    async def bus_unsubscribe(self, name: str) -> bool:
        engine = await self._bus_engine()
        return await engine.write(lambda conn, _fx: unsubscribe(conn, name))

    async def bus_publish(
        self,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        evs, dls = list(events), list(deliveries)
        engine = await self._bus_engine()
        write = engine.write_small if len(evs) == 1 and len(dls) <= 1 else engine.write
        return await write(lambda conn, fx: publish(conn, fx, evs, dls, version, now))

    async def bus_redeliver(
        self, deliveries: Sequence[NewDelivery], *, force: bool = False, now: float | None = None
    ) -> list[str | None]:
        dls = list(deliveries)
        engine = await self._bus_engine()
        return await engine.write(lambda conn, fx: redeliver(conn, fx, dls, force, now))

    async def bus_finish(
        self, job_id: str, status: DeliveryStatus, now: float | None = None
    ) -> bool:
        engine = await self._bus_engine()
        return await engine.write(lambda conn, fx: finish(conn, fx, job_id, status, now))

    async def bus_settle(self, limit: int = 1000, now: float | None = None) -> int:
        engine = await self._bus_engine()
        return await engine.write(lambda conn, fx: settle(conn, fx, limit, now))

    async def bus_head(self) -> int:
        def head(conn: sqlite3.Connection) -> int:
            (position,) = conn.execute(
                "SELECT position FROM conveyor_bus_state WHERE id = 1"
            ).fetchone()
            return int(position)

        return await (await self._bus_engine()).read(head)

    async def bus_read(self, query: EventQuery, limit: int = 100) -> list[EventRecord]:
        if limit <= 0:
            return []
        return await (await self._bus_engine()).read(lambda conn: read(conn, query, limit))

    async def bus_get(self, event_ids: Sequence[str]) -> list[EventRecord]:
        ids = list(event_ids)
        return await (await self._bus_engine()).read(lambda conn: get(conn, ids))

    async def bus_deliveries(
        self, flt: DeliveryFilter, *, after: int = 0, limit: int = 100
    ) -> list[DeliveryRecord]:
        if limit <= 0:
            return []
        engine = await self._bus_engine()
        return await engine.read(lambda conn: deliveries(conn, flt, after, limit))

    async def bus_prune(self, before: float, limit: int = 1000) -> int:
        engine = await self._bus_engine()
        return await engine.write(lambda conn, _fx: prune(conn, before, limit))

    # -- the outbox: the application's connection, on the calling thread ----------------------
    async def bus_publish_on(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        return self.factory.bus_publish_on_sync(conn, events, deliveries, version, now)  # type: ignore[attr-defined, no-any-return]

    async def bus_subscriptions_on(self, conn: Any) -> SubscriptionSet:
        return self.factory.bus_subscriptions_on_sync(conn)  # type: ignore[attr-defined, no-any-return]


class SQLiteEventsFactory(SyncEventBusTransactions):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteFactory`: publishing inside the
    application's own transaction on its ``sqlite3`` connection (on the calling thread)."""

    path: str

    def bus_publish_on_sync(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        check_connection(conn, self.path)
        return publish(conn, Effects(), list(events), list(deliveries), version, now)

    def bus_subscriptions_on_sync(self, conn: Any) -> SubscriptionSet:
        check_connection(conn, self.path)
        return subscriptions(conn)
