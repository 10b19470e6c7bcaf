"""The event bus of the Redis backend: every write one Lua script (``lua/bus_*.lua``, key
layout in ``lua/bus_lib.lua``), reads straight from the keys.

The log is a Redis stream whose entry ids are ``<position>-0``; positions come from a counter
bumped inside the publishing script, so they follow commit order, and a reader can tail the
stream (``XREAD``) from any position. A publish is idempotent on the event id, so a call whose
reply was lost and is sent again stores nothing twice. Mirrors
:class:`~conveyor.backends.memory.events.MemoryEvents`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from conveyor.backends.capabilities.events import EventBusStore
from conveyor.backends.redis.codec import dumps, escape_queue, num, opt_num, opt_str
from conveyor.backends.redis.connect import translate_errors
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
    from redis.asyncio import Redis

    from conveyor.backends.redis.scripts import ScriptArg

#: Stream entries read per XRANGE page while filtering.
_PAGE = 500


def _job_args(job: NewJob, same_payload: bool = False) -> list[ScriptArg]:
    """The ``JOB_ARGS`` values of ``bus_lib.lua`` for one delivery job (its payload ``''``
    when it is the previous delivery's: an event's deliveries share one envelope)."""
    if job.run_at is None and job.delay is not None:
        run_at = "+" + num(job.delay)
    else:
        run_at = opt_num(job.run_at)
    return [
        job.id,
        job.task,
        job.queue,
        b"" if same_payload else b"=" + job.payload,
        str(job.priority),
        str(job.max_attempts),
        opt_num(job.timeout),
        opt_str(job.trace_id),
        dumps(job.metadata) if job.metadata else "",
        str(job.payload_version),
        run_at,
    ]


def _deliveries_args(deliveries: Sequence[NewDelivery]) -> list[ScriptArg]:
    args: list[ScriptArg] = []
    previous: bytes | None = None
    for d in deliveries:
        same = d.job.payload is previous
        args += [d.event_id, d.subscription, opt_str(d.chain), *_job_args(d.job, same)]
        previous = d.job.payload
    return args


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> EventRecord:
    key = fields.get(b"k")
    return EventRecord(
        int(entry_id.split(b"-", 1)[0]),
        fields[b"i"].decode(),
        fields[b"n"].decode(),
        fields[b"p"],
        None if key is None else key.decode(),
        int(fields[b"pr"]),
        json.loads(fields[b"h"]),
        int(fields[b"v"]),
        float(fields[b"o"]),
        float(fields[b"s"]),
    )


def canonical(spec: dict[str, Any]) -> str:
    """The spec as the text compared and stored (sorted keys, so equal specs are equal text)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class RedisEvents(EventBusStore):
    """Mixed into :class:`~conveyor.backends.redis.backend.RedisBackend`."""

    base: str
    url: str
    prefix: str
    client: Redis

    if TYPE_CHECKING:  # provided by RedisBackend

        async def _run(self, name: str, args: Sequence[ScriptArg]) -> Any: ...

    # -- subscriptions ------------------------------------------------------------------------
    async def bus_subscriptions(self) -> SubscriptionSet:
        with translate_errors(self.url, self.prefix):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(self.base + "bus", "ver")
                pipe.hgetall(self.base + "bsub")
                version, raw = await pipe.execute()
        subs = []
        for name, value in sorted(cast(dict[bytes, bytes], raw).items()):
            rec = json.loads(value)
            subs.append(
                SubscriptionRecord(
                    name.decode(),
                    rec["pattern"],
                    json.loads(rec["spec"]),
                    int(rec["position"]),
                    float(rec["created"]),
                )
            )
        return SubscriptionSet(int(version or 0), tuple(subs))

    async def bus_subscribe(
        self, name: str, pattern: str, spec: dict[str, Any], now: float | None = None
    ) -> tuple[SubscriptionRecord, bool]:
        reply = await self._run("bus_subscribe", [name, pattern, canonical(spec), opt_num(now)])
        changed, pat, raw_spec, position, created = reply
        record = SubscriptionRecord(
            name, pat.decode(), json.loads(raw_spec), int(position), float(created)
        )
        return record, bool(int(changed))

    async def bus_unsubscribe(self, name: str) -> bool:
        return bool(await self._run("bus_unsubscribe", [name]))

    # -- publishing ---------------------------------------------------------------------------
    async def bus_publish(
        self,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        args: list[ScriptArg] = [opt_num(now), str(version), str(len(events))]
        for e in events:
            args += [
                e.id,
                e.name,
                e.payload,
                opt_str(e.key),
                str(e.priority),
                dumps(e.headers),
                str(e.schema_version),
                opt_num(e.occurred_at),
            ]
        args.append(str(len(deliveries)))
        args += _deliveries_args(deliveries)
        reply = await self._run("bus_publish", args)
        if reply == -1:
            return None
        return [
            PublishResult(reply[i].decode(), int(reply[i + 1]), bool(int(reply[i + 2])))
            for i in range(0, len(reply), 3)
        ]

    async def bus_redeliver(
        self, deliveries: Sequence[NewDelivery], *, force: bool = False, now: float | None = None
    ) -> list[str | None]:
        if not deliveries:
            return []
        args: list[ScriptArg] = [opt_num(now), "1" if force else "0"]
        args += _deliveries_args(deliveries)
        reply = await self._run("bus_redeliver", args)
        return [r.decode() or None for r in reply]

    async def bus_finish(
        self, job_id: str, status: DeliveryStatus, now: float | None = None
    ) -> bool:
        return bool(await self._run("bus_finish", [job_id, status.value, opt_num(now)]))

    async def bus_settle(self, limit: int = 1000, now: float | None = None) -> int:
        return int(await self._run("bus_settle", [str(limit), opt_num(now)]))

    async def bus_prune(self, before: float, limit: int = 1000) -> int:
        return int(await self._run("bus_prune", [num(float(before)), str(limit)]))

    # -- reading ------------------------------------------------------------------------------
    async def bus_head(self) -> int:
        with translate_errors(self.url, self.prefix):
            value = await self.client.hget(self.base + "bus", "pos")
        return int(value or 0)

    async def bus_read(self, query: EventQuery, limit: int = 100) -> list[EventRecord]:
        out: list[EventRecord] = []
        start = f"{query.after + 1}-0"
        end = "+" if query.before is None else f"{max(query.before - 1, 0)}-0"
        if query.before is not None and query.before <= query.after + 1:
            return out
        while len(out) < limit:
            with translate_errors(self.url, self.prefix):
                page = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await self.client.xrange(self.base + "blog", start, end, count=_PAGE),
                )
            for entry_id, fields in page:
                record = _event(entry_id, fields)
                if query.matches(record):
                    out.append(record)
                    if len(out) >= limit:
                        break
            if len(page) < _PAGE:
                break
            start = f"({page[-1][0].decode()}"
        return out

    async def bus_get(self, event_ids: Sequence[str]) -> list[EventRecord]:
        if not event_ids:
            return []
        with translate_errors(self.url, self.prefix):
            positions = cast(
                list[bytes | None], await self.client.hmget(self.base + "bids", list(event_ids))
            )
            found = sorted({int(p) for p in positions if p is not None})
            async with self.client.pipeline(transaction=False) as pipe:
                for p in found:
                    pipe.xrange(self.base + "blog", f"{p}-0", f"{p}-0")
                pages = await pipe.execute()
        return [_event(*page[0]) for page in pages if page]

    async def bus_deliveries(
        self, flt: DeliveryFilter, *, after: int = 0, limit: int = 100
    ) -> list[DeliveryRecord]:
        out: list[DeliveryRecord] = []
        if limit <= 0:
            return out
        base = self.base
        cursor = after
        with translate_errors(self.url, self.prefix):
            positions: list[int] = []
            exhausted = True
            if flt.event_id is not None:
                found = cast(bytes | None, await self.client.hget(base + "bids", flt.event_id))
                if found is None or int(found) <= after:
                    return out
                positions = [int(found)]
            while True:
                if flt.event_id is None:
                    index = (
                        base + "bdp"
                        if flt.subscription is None
                        else (base + "bds:" + escape_queue(flt.subscription))
                    )
                    raw = cast(
                        list[bytes],
                        await self.client.zrangebyscore(
                            index, f"({cursor}", "+inf", start=0, num=_PAGE
                        ),
                    )
                    positions = [int(x) for x in raw]
                    exhausted = len(positions) < _PAGE
                pairs: list[tuple[int, str]] = []
                async with self.client.pipeline(transaction=False) as pipe:
                    for position in positions:
                        pipe.zrange(f"{base}bdl:{position}", 0, -1)
                    for position, subs in zip(positions, await pipe.execute(), strict=True):
                        for sub in subs:
                            name = sub.decode()
                            if flt.subscription is None or name == flt.subscription:
                                pairs.append((position, name))
                out += await self._delivery_rows(pairs, flt, limit - len(out))
                if len(out) >= limit or exhausted or not positions:
                    return out[:limit]
                cursor = positions[-1]

    async def _delivery_rows(
        self, pairs: list[tuple[int, str]], flt: DeliveryFilter, room: int
    ) -> list[DeliveryRecord]:
        base = self.base
        async with self.client.pipeline(transaction=False) as pipe:
            for p, sub in pairs:
                pipe.hmget(f"{base}bd:{p}:{escape_queue(sub)}", ["e", "j", "s", "c", "t", "f"])
            rows = await pipe.execute()
        keep: list[tuple[int, str, list[Any]]] = []
        for (p, sub), row in zip(pairs, rows, strict=True):
            if row[2] is None:
                continue
            status = DeliveryStatus(row[2].decode())
            if flt.statuses is not None and status not in flt.statuses:
                continue
            keep.append((p, sub, row))
        async with self.client.pipeline(transaction=False) as pipe:
            for _, _, row in keep:
                pipe.hmget(base + "j:" + row[1].decode(), ["s", "a", "e"])
            jobs = await pipe.execute()
        out: list[DeliveryRecord] = []
        for (p, sub, row), (state, attempts, error) in zip(keep, jobs, strict=True):
            if flt.dead_letters and state != b"failed":
                continue
            err = json.loads(error) if error else None
            out.append(
                DeliveryRecord(
                    row[0].decode(),
                    p,
                    sub,
                    row[1].decode(),
                    DeliveryStatus(row[2].decode()),
                    None if row[3] is None else row[3].decode(),
                    float(row[4]),
                    None if row[5] is None else float(row[5]),
                    None if state is None else JobState(state.decode()),
                    int(attempts or 0),
                    None if err is None else err.get("code"),
                    None if err is None else err.get("message"),
                )
            )
            if len(out) >= room:
                break
        return out
