"""The event bus of the PostgreSQL backend (schema: ``sql/migrations/0004_events.sql``,
statements: ``sql/events.sql``).

A publish is one statement (``bus_publish``): it bumps the position counter row first, which
stays locked until the transaction ends, so positions are handed out in commit order and a
reader's cursor never passes an event that commits later. The same statement stores the
events, their deliveries and the delivery jobs, and sends the NOTIFY that wakes workers at
commit. It is idempotent on the event id, so it is retried like a read when the connection
fails. Ordered chains are advanced in short transactions that lock the chain's row, the row a
publish into the chain locks too. Mirrors :class:`~conveyor.backends.memory.events.MemoryEvents`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg

from conveyor.backends.capabilities.events import EventBusStore, EventBusTransactions
from conveyor.backends.postgres.statements import (
    _parse_sections,
    channels,
    quote_ident,
    read_sql,
    render,
)
from conveyor.backends.postgres.tx import run_enqueue
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
    from conveyor.backends.postgres.client import Conn

_ACTIVE = ("queued", "scheduled", "running")
_EVENT_COLUMNS = (
    "position, id, name, payload, key, priority, headers::text, schema_version, occurred_at, "
    "stored_at"
)


@lru_cache(maxsize=64)
def bus_queries(schema: str) -> dict[str, str]:
    """The statements of ``events.sql`` rendered for ``schema``."""
    return {n: render(s, schema) for n, s in _parse_sections(read_sql("events.sql")).items()}


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)


def _unique(
    events: Sequence[NewEvent], deliveries: Sequence[NewDelivery]
) -> tuple[list[NewEvent], list[NewDelivery]]:
    """The first of each event id, and of each (event, subscription) pair."""
    seen: set[str] = set()
    evs = [e for e in events if not (e.id in seen or seen.add(e.id))]  # type: ignore[func-returns-value]
    pairs: set[tuple[str, str]] = set()
    dls = [
        d
        for d in deliveries
        if not ((d.event_id, d.subscription) in pairs or pairs.add((d.event_id, d.subscription)))  # type: ignore[func-returns-value]
    ]
    return evs, dls


def publish_params(
    schema: str,
    events: Sequence[NewEvent],
    deliveries: Sequence[NewDelivery],
    version: int,
    now: float | None,
) -> dict[str, Any]:
    """The parameters of ``bus_publish`` (events and deliveries already made unique)."""
    jobs = [d.job for d in deliveries]
    return {
        "now": _f(now),
        "version": version,
        "channel": channels(schema)[0],
        "ids": [e.id for e in events],
        "names": [e.name for e in events],
        "payloads": [bytes(e.payload) for e in events],
        "keys": [e.key for e in events],
        "priorities": [int(e.priority) for e in events],
        "headers": [json.dumps(e.headers) for e in events],
        "versions": [int(e.schema_version) for e in events],
        "occurred": [_f(e.occurred_at) for e in events],
        "d_events": [d.event_id for d in deliveries],
        "d_subs": [d.subscription for d in deliveries],
        "d_jobs": [d.job.id for d in deliveries],
        "d_chains": [d.chain for d in deliveries],
        "j_ids": [j.id for j in jobs],
        "j_tasks": [j.task for j in jobs],
        "j_queues": [j.queue for j in jobs],
        "j_payloads": [bytes(j.payload) for j in jobs],
        "j_priorities": [int(j.priority) for j in jobs],
        "j_attempts": [int(j.max_attempts) for j in jobs],
        "j_timeouts": [_f(j.timeout) for j in jobs],
        "j_traces": [j.trace_id for j in jobs],
        "j_metas": [json.dumps(j.metadata) if j.metadata else None for j in jobs],
        "j_versions": [int(j.payload_version) for j in jobs],
        "j_run_ats": [_f(j.run_at) for j in jobs],
        "j_delays": [_f(j.delay) for j in jobs],
    }


def publish_results(
    events: Sequence[NewEvent], stored: Any, existing: dict[str, int]
) -> list[PublishResult]:
    """One result per input event (repeats of an id answer like its first occurrence)."""
    created = {str(i): int(p) for i, p in (stored or [])}
    out = []
    for e in events:
        if e.id in created:
            out.append(PublishResult(e.id, created.pop(e.id), True))
            existing[e.id] = out[-1].position
        else:
            out.append(PublishResult(e.id, existing[e.id], False))
    return out


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


def subscription_set(rows: Sequence[Sequence[Any]]) -> SubscriptionSet:
    version = int(rows[0][5]) if rows else 0
    subs = tuple(
        SubscriptionRecord(str(r[0]), str(r[1]), json.loads(r[2]), int(r[3]), float(r[4]))
        for r in rows
        if r[0] is not None
    )
    return SubscriptionSet(version, subs)


class PostgresEvents(EventBusStore, EventBusTransactions):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str

    if TYPE_CHECKING:  # provided by PostgresClient, which comes after this mixin

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    def _q(self) -> dict[str, str]:
        return bus_queries(self.schema)

    # -- subscriptions ------------------------------------------------------------------------
    async def bus_subscriptions(self) -> SubscriptionSet:
        async def op(conn: Conn) -> SubscriptionSet:
            cur = await conn.execute(self._q()["bus_subscriptions"])
            return subscription_set(await cur.fetchall())

        result: SubscriptionSet = await self._run(op, "read")
        return result

    async def bus_subscribe(
        self, name: str, pattern: str, spec: dict[str, Any], now: float | None = None
    ) -> tuple[SubscriptionRecord, bool]:
        q = self._q()
        table = f"{quote_ident(self.schema)}.bus_subscriptions"

        async def op(conn: Conn) -> tuple[SubscriptionRecord, bool]:
            async with conn.transaction():
                cur = await conn.execute(q["bus_lock"])
                row = await cur.fetchone()
                assert row is not None
                position = int(row[0])
                cur = await conn.execute(
                    f"SELECT pattern, spec::text, position, created_at FROM {table} "
                    "WHERE name = %s",
                    (name,),
                )
                old = await cur.fetchone()
                if old is not None:
                    record = SubscriptionRecord(
                        name, str(old[0]), json.loads(old[1]), int(old[2]), float(old[3])
                    )
                    if record.pattern == pattern and record.spec == spec:
                        return record, False
                    await conn.execute(
                        f"UPDATE {table} SET pattern = %s, spec = %s WHERE name = %s",
                        (pattern, json.dumps(spec), name),
                    )
                    record = SubscriptionRecord(
                        name, pattern, dict(spec), record.position, record.created_at
                    )
                else:
                    cur = await conn.execute(
                        f"INSERT INTO {table} (name, pattern, spec, position, created_at) "
                        "VALUES (%s, %s, %s, %s, coalesce(%s::float8, "
                        "extract(epoch FROM statement_timestamp())::float8)) "
                        "RETURNING created_at",
                        (name, pattern, json.dumps(spec), position, _f(now)),
                    )
                    created = await cur.fetchone()
                    assert created is not None
                    record = SubscriptionRecord(
                        name, pattern, dict(spec), position, float(created[0])
                    )
                await conn.execute(
                    f"UPDATE {quote_ident(self.schema)}.bus_state SET version = version + 1 "
                    "WHERE id = 1"
                )
                return record, True

        result: tuple[SubscriptionRecord, bool] = await self._run(op, "stale")
        return result

    async def bus_unsubscribe(self, name: str) -> bool:
        schema = quote_ident(self.schema)

        async def op(conn: Conn) -> bool:
            async with conn.transaction():
                await conn.execute(self._q()["bus_lock"])
                cur = await conn.execute(
                    f"DELETE FROM {schema}.bus_subscriptions WHERE name = %s", (name,)
                )
                if not cur.rowcount:
                    return False
                await conn.execute(
                    f"UPDATE {schema}.bus_state SET version = version + 1 WHERE id = 1"
                )
                return True

        result: bool = await self._run(op, "stale")
        return result

    # -- publishing ---------------------------------------------------------------------------
    async def bus_publish(
        self,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        async def op(conn: Conn) -> list[PublishResult] | None:
            return await publish_on(conn, self.schema, events, deliveries, version, now)

        result: list[PublishResult] | None = await self._run(op, "read")
        return result

    async def bus_publish_on(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        if idle_autocommit(conn):
            async with conn.transaction():
                return await publish_on(conn, self.schema, events, deliveries, version, now)
        return await publish_on(conn, self.schema, events, deliveries, version, now)

    async def bus_subscriptions_on(self, conn: Any) -> SubscriptionSet:
        await conn.execute(self._q()["bus_lock"])
        cur = await conn.execute(self._q()["bus_subscriptions"])
        return subscription_set(await cur.fetchall())

    async def bus_redeliver(
        self, deliveries: Sequence[NewDelivery], *, force: bool = False, now: float | None = None
    ) -> list[str | None]:
        q = self._q()
        schema = self.schema
        items = list(deliveries)
        channel = channels(schema)[0]

        async def op(conn: Conn) -> list[str | None]:
            out: list[str | None] = []
            async with conn.transaction():
                await conn.execute(q["bus_lock"])  # publishes lock chains too: take turns
                for d in items:
                    cur = await conn.execute(
                        q["bus_positions"], {"ids": [d.event_id]}, prepare=False
                    )
                    found = await cur.fetchone()
                    if found is None:
                        out.append(None)
                        continue
                    params = {"event": d.event_id, "sub": d.subscription, "now": _f(now)}
                    cur = await conn.execute(q["bus_delivery_chain"], params)
                    found_chain = await cur.fetchone()
                    if found_chain is not None and found_chain[0] is not None:
                        await conn.execute(
                            q["bus_lock_chain"], {"sub": d.subscription, "chain": found_chain[0]}
                        )
                    cur = await conn.execute(q["bus_delivery_for_update"], params)
                    old = await cur.fetchone()
                    if old is not None:
                        status, job_state = old
                        alive = job_state is not None and not JobState(job_state).is_terminal
                        if (status == "live" and alive) or (status == "handled" and not force):
                            out.append(None)
                            continue
                        await _leave_chain(conn, q, d.event_id, d.subscription, now, channel)
                        await conn.execute(q["bus_delete_delivery"], params)
                    await _join(conn, q, schema, d, int(found[1]), now)
                    out.append(d.job.id)
            return out

        result: list[str | None] = await self._run(op, "stale")
        return result

    # -- outcomes -----------------------------------------------------------------------------
    async def bus_finish(
        self, job_id: str, status: DeliveryStatus, now: float | None = None
    ) -> bool:
        q = self._q()
        channel = channels(self.schema)[0]

        async def op(conn: Conn) -> bool:
            cur = await conn.execute(
                q["bus_finish"], {"job": job_id, "status": status.value, "now": _f(now)}
            )
            row = await cur.fetchone()
            if row is None:
                return False
            event_id, subscription, chain, in_chain = row
            if in_chain:  # a crash before this is repaired by bus_settle
                async with conn.transaction():
                    await conn.execute(q["bus_lock_chain"], {"sub": subscription, "chain": chain})
                    await _leave_chain(conn, q, event_id, subscription, now, channel)
            return True

        result: bool = await self._run(op, "stale")
        return result

    async def bus_settle(self, limit: int = 1000, now: float | None = None) -> int:
        q = self._q()
        channel = channels(self.schema)[0]

        async def op(conn: Conn) -> int:
            cur = await conn.execute(q["bus_chains"], {"limit": 10_000})
            marked = 0
            for subscription, chain in await cur.fetchall():
                if marked >= limit:
                    break
                async with conn.transaction():
                    cur = await conn.execute(
                        q["bus_lock_chain"], {"sub": subscription, "chain": chain}
                    )
                    if await cur.fetchone() is not None:
                        marked += await _advance(conn, q, subscription, chain, now, channel)
            return marked

        result: int = await self._run(op, "stale")
        return result

    # -- reading ------------------------------------------------------------------------------
    async def bus_head(self) -> int:
        schema = quote_ident(self.schema)

        async def op(conn: Conn) -> int:
            cur = await conn.execute(f"SELECT position FROM {schema}.bus_state WHERE id = 1")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        result: int = await self._run(op, "read")
        return result

    async def bus_read(self, query: EventQuery, limit: int = 100) -> list[EventRecord]:
        if limit <= 0:
            return []
        where = ["position > %(after)s"]
        params: dict[str, Any] = {"after": query.after, "limit": limit}
        if query.before is not None:
            where.append("position < %(before)s")
            params["before"] = query.before
        if query.since is not None:
            where.append("occurred_at >= %(since)s")
            params["since"] = query.since
        if query.until is not None:
            where.append("occurred_at < %(until)s")
            params["until"] = query.until
        if query.key is not None:
            where.append("key = %(key)s")
            params["key"] = query.key
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM {quote_ident(self.schema)}.bus_events "
            f"WHERE {' AND '.join(where)} ORDER BY position LIMIT %(limit)s"
        )

        async def op(conn: Conn) -> list[EventRecord]:
            cur = await conn.execute(sql, params)
            return [_event(r) for r in await cur.fetchall()]

        result: list[EventRecord] = await self._run(op, "read")
        return result

    async def bus_get(self, event_ids: Sequence[str]) -> list[EventRecord]:
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM {quote_ident(self.schema)}.bus_events "
            "WHERE id = ANY (%s::text[]) ORDER BY position"
        )
        ids = list(event_ids)

        async def op(conn: Conn) -> list[EventRecord]:
            cur = await conn.execute(sql, (ids,))
            return [_event(r) for r in await cur.fetchall()]

        result: list[EventRecord] = await self._run(op, "read")
        return result

    async def bus_deliveries(
        self, flt: DeliveryFilter, *, after: int = 0, limit: int = 100
    ) -> list[DeliveryRecord]:
        if limit <= 0:
            return []
        where = ["d.position > %(after)s"]
        params: dict[str, Any] = {"after": after, "limit": limit}
        if flt.event_id is not None:
            where.append("d.event_id = %(event)s")
            params["event"] = flt.event_id
        if flt.subscription is not None:
            where.append("d.subscription = %(sub)s")
            params["sub"] = flt.subscription
        if flt.statuses is not None:
            where.append("d.status = ANY (%(statuses)s::text[])")
            params["statuses"] = [s.value for s in flt.statuses]
        if flt.dead_letters:
            where.append("j.state = 'failed'")
        schema = quote_ident(self.schema)
        sql = (
            "SELECT d.event_id, d.position, d.subscription, d.job_id, d.status, d.chain, "
            "d.created_at, d.finished_at, j.state, j.attempts, j.error->>'code', "
            f"j.error->>'message' FROM {schema}.bus_deliveries d "
            f"LEFT JOIN {schema}.jobs j ON j.id = d.job_id WHERE {' AND '.join(where)} "
            "ORDER BY d.position, d.subscription LIMIT %(limit)s"
        )

        async def op(conn: Conn) -> list[DeliveryRecord]:
            cur = await conn.execute(sql, params)
            return [
                DeliveryRecord(
                    str(r[0]),
                    int(r[1]),
                    str(r[2]),
                    str(r[3]),
                    DeliveryStatus(r[4]),
                    r[5],
                    float(r[6]),
                    r[7],
                    None if r[8] is None else JobState(r[8]),
                    int(r[9] or 0),
                    r[10],
                    r[11],
                )
                for r in await cur.fetchall()
            ]

        result: list[DeliveryRecord] = await self._run(op, "read")
        return result

    async def bus_prune(self, before: float, limit: int = 1000) -> int:
        async def op(conn: Conn) -> int:
            cur = await conn.execute(self._q()["bus_prune"], {"before": before, "limit": limit})
            return int(cur.rowcount)

        result: int = await self._run(op, "stale")
        return result


def idle_autocommit(conn: Any) -> bool:
    return bool(conn.autocommit) and (
        conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


async def publish_on(
    conn: Conn,
    schema: str,
    events: Sequence[NewEvent],
    deliveries: Sequence[NewDelivery],
    version: int,
    now: float | None,
) -> list[PublishResult] | None:
    """Run ``bus_publish`` on ``conn`` (in its transaction, or as one autocommit statement)."""
    evs, dls = _unique(events, deliveries)
    q = bus_queries(schema)
    cur = await conn.execute(q["bus_publish"], publish_params(schema, evs, dls, version, now))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    stored = row[1]
    existing: dict[str, int] = {}
    if len(stored) < len(evs):
        cur = await conn.execute(q["bus_positions"], {"ids": [e.id for e in events]})
        existing = {str(i): int(p) for i, p in await cur.fetchall()}
    return publish_results(events, stored, existing)


async def _leave_chain(
    conn: Conn, q: dict[str, str], event_id: str, sub: str, now: float | None, channel: str
) -> int:
    cur = await conn.execute(q["bus_leave_chain"], {"event": event_id, "sub": sub})
    row = await cur.fetchone()
    if row is None:
        return 0
    return await _advance(conn, q, sub, str(row[0]), now, channel)


async def _advance(
    conn: Conn, q: dict[str, str], sub: str, chain: str, now: float | None, channel: str
) -> int:
    """See :meth:`MemoryEvents._advance`; runs inside a transaction that holds the chain row."""
    marked = 0
    while True:
        cur = await conn.execute(q["bus_chain_head"], {"sub": sub, "chain": chain})
        head = await cur.fetchone()
        if head is None:
            await conn.execute(q["bus_drop_chain"], {"sub": sub, "chain": chain})
            return marked
        event_id, status, state, _queue, job_id = head
        if status == "live" and state == "blocked":
            await conn.execute(q["bus_unblock"], {"job": job_id, "channel": channel})
            return marked
        if status == "live" and state in _ACTIVE:
            return marked
        dropped = "handled" if state == "completed" else "dead"
        await conn.execute(
            q["bus_drop_head"],
            {"event": event_id, "sub": sub, "status": dropped, "now": _f(now)},
        )
        if status == "live":
            marked += 1


async def _join(
    conn: Conn, q: dict[str, str], schema: str, d: NewDelivery, position: int, now: float | None
) -> None:
    """Insert one live delivery (joining its chain) and its job, in the open transaction."""
    seq, blocked = 0, False
    if d.chain is not None:
        cur = await conn.execute(q["bus_join_chain"], {"sub": d.subscription, "chain": d.chain})
        row = await cur.fetchone()
        assert row is not None
        blocked, seq = int(row[0]) > 1, int(row[1])
    await conn.execute(
        q["bus_insert_delivery"],
        {
            "event": d.event_id,
            "sub": d.subscription,
            "position": position,
            "job": d.job.id,
            "chain": d.chain,
            "seq": seq,
            "now": _f(now),
        },
    )
    job: NewJob = d.job
    if blocked:
        from dataclasses import replace

        job = replace(job, blocked=True)
    from conveyor.backends.postgres.statements import queries

    await run_enqueue(
        conn,
        queries(schema),
        [job],
        now,
        channels(schema)[0],
        [job.queue],
        own_transaction=False,
    )


def publish_on_sync(
    conn: psycopg.Connection[Any],
    schema: str,
    events: Sequence[NewEvent],
    deliveries: Sequence[NewDelivery],
    version: int,
    now: float | None,
) -> list[PublishResult] | None:
    evs, dls = _unique(events, deliveries)
    q = bus_queries(schema)
    row = conn.execute(q["bus_publish"], publish_params(schema, evs, dls, version, now)).fetchone()
    if row is None or row[0] is None:
        return None
    existing: dict[str, int] = {}
    if len(row[1]) < len(evs):
        cur = conn.execute(q["bus_positions"], {"ids": [e.id for e in events]})
        existing = {str(i): int(p) for i, p in cur.fetchall()}
    return publish_results(events, row[1], existing)


def subscriptions_on_sync(conn: psycopg.Connection[Any], schema: str) -> SubscriptionSet:
    """Lock the bus state row in ``conn``'s transaction and read the subscriptions."""
    q = bus_queries(schema)
    conn.execute(q["bus_lock"])
    return subscription_set(conn.execute(q["bus_subscriptions"]).fetchall())
