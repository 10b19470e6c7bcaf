"""The read side and the filtered operations of the Redis Cluster backend: one script per
queue, merged (see :mod:`conveyor.backends.redis.cluster`)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from conveyor.backends.capabilities.browse import BrowseQuery, StateCount
from conveyor.backends.common import RETRYABLE_STATES
from conveyor.backends.redis.backend import SCAN_BUDGET, RedisBackend
from conveyor.backends.redis.cluster_layout import where_key
from conveyor.backends.redis.codec import (
    SUMMARY_FIELDS,
    decode_counts,
    decode_record,
    encode_filter,
    opt_num,
)
from conveyor.backends.redis.connect import translate_errors
from conveyor.backends.redis.scripts import ScriptArg
from conveyor.domain.job import CountRow, JobFilter, JobRecord, RetriedJobs
from conveyor.domain.states import STORED_STATES, TERMINAL_STATES, JobState

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster


class ClusterReads(RedisBackend):
    """Mixed into :class:`~conveyor.backends.redis.cluster.RedisClusterBackend` (before the
    single-node :class:`RedisBackend`, whose methods these replace)."""

    client: RedisCluster  # type: ignore[assignment]
    _where: OrderedDict[str, str]

    if TYPE_CHECKING:  # provided by RedisClusterBackend

        async def _group(self, job_ids: Sequence[str]) -> dict[str | None, list[int]]: ...

        async def _queue_of(self, job_id: str) -> str | None: ...

        async def known_queues(self) -> list[str]: ...

    async def _per_queue(self, flt: JobFilter) -> list[tuple[str, JobFilter]]:
        """The queues a filter can match, each with the filter narrowed to it (and, for an
        id filter, to the ids that live there)."""
        if flt.ids is not None:
            ids = list(dict.fromkeys(flt.ids))
            groups = await self._group(ids)
            return [
                (q, replace(flt, queue=q, ids=tuple(ids[i] for i in positions)))
                for q, positions in groups.items()
                if q is not None and (flt.queue is None or flt.queue == q)
            ]
        queues = [flt.queue] if flt.queue is not None else await self.known_queues()
        return [(q, replace(flt, queue=q)) for q in queues]

    async def retry_jobs(
        self,
        flt: JobFilter,
        *,
        reset_attempts: bool = False,
        now: float | None = None,
        limit: int = 1000,
    ) -> RetriedJobs:
        states = [s for s in RETRYABLE_STATES if flt.states is None or s in flt.states]
        out = RetriedJobs()
        if not states or limit <= 0:
            return out
        for queue, part in await self._per_queue(flt):
            if len(out) >= limit:
                break
            args: list[ScriptArg] = [opt_num(now), "1" if reset_attempts else "0"]
            args += [str(limit - len(out)), str(SCAN_BUDGET), *encode_filter(part, states)]
            retried, refused = await self._run("retry", args, self._queue_base(queue))
            out += [job_id.decode() for job_id in retried]
            pairs = [item.decode() for item in refused]
            out.refused.update(zip(pairs[::2], pairs[1::2], strict=True))
        return out

    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        states = [s for s in JobState if s in TERMINAL_STATES]
        states = [s for s in states if flt.states is None or s in flt.states]
        if not states or limit <= 0:
            return 0
        deleted: list[str] = []
        for queue, part in await self._per_queue(flt):
            if len(deleted) >= limit:
                break
            args = [str(limit - len(deleted)), str(SCAN_BUDGET), *encode_filter(part, states)]
            reply = await self._run("delete", args, self._queue_base(queue))
            deleted += [job_id.decode() for job_id in reply]
        if deleted:
            with translate_errors(self.url, self.prefix):
                async with self.client.pipeline(transaction=False) as pipe:
                    for job_id in deleted:
                        pipe.hdel(where_key(self.prefix, job_id), job_id)
                        self._where.pop(job_id, None)
                    await pipe.execute()
        return len(deleted)

    # -- reading ----------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        queue = await self._queue_of(job_id)
        if queue is None:
            return None
        flat, payload = await self._run("get", [job_id], self._queue_base(queue))
        if not flat:
            return None
        return decode_record(job_id, dict(zip(flat[::2], flat[1::2], strict=True)), payload)

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """Newest first over every queue: each queue's first ``offset + limit`` matches,
        merged by id."""
        return await self._merged_listing(flt, limit, offset, summary=False)

    async def list_summaries(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """As :meth:`list_jobs`, without the heavy fields (see ``Backend.list_summaries``)."""
        return await self._merged_listing(flt, limit, offset, summary=True)

    async def _merged_listing(
        self, flt: JobFilter, limit: int, offset: int, *, summary: bool
    ) -> list[JobRecord]:
        states = list(STORED_STATES) if flt.states is None else list(dict.fromkeys(flt.states))
        if not states or limit <= 0:
            return []
        offset = max(offset, 0)
        names = [name.encode() for name in SUMMARY_FIELDS]

        async def one(queue: str, part: JobFilter) -> list[JobRecord]:
            args = ["0", str(offset + limit), str(SCAN_BUDGET), *encode_filter(part, states)]
            base = self._queue_base(queue)
            records = []
            if summary:
                reply = await self._run("list_summary", args, base)
                for i in range(0, len(reply), 2):
                    fields = {
                        n: v for n, v in zip(names, reply[i + 1], strict=True) if v is not None
                    }
                    records.append(decode_record(reply[i].decode(), fields, None, summary=True))
                return records
            reply = await self._run("list", args, base)
            for i in range(0, len(reply), 3):
                flat = reply[i + 1]
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                records.append(decode_record(reply[i].decode(), fields, reply[i + 2]))
            return records

        parts = await self._per_queue(flt)
        found = [r for rs in await asyncio.gather(*(one(q, p) for q, p in parts)) for r in rs]
        found.sort(key=lambda r: r.id.encode(), reverse=True)
        return found[offset : offset + limit]

    async def count_jobs(self) -> list[CountRow]:
        queues = await self.known_queues()
        with translate_errors(self.url, self.prefix):
            maps = await asyncio.gather(
                *(self.client.hgetall(self._queue_base(q) + "counts") for q in queues)
            )
        merged: dict[bytes, bytes] = {}
        for counts in maps:
            for field, value in cast(dict[bytes, bytes], counts).items():
                merged[field] = str(int(merged.get(field, b"0")) + int(value)).encode()
        return decode_counts(merged)

    # -- the browse capability (dashboard reads): per queue, merged ---------------------------
    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        """Each queue's page from the cursor, merged by id: the same page as one index."""
        queues = [query.queue] if query.queue is not None else await self.known_queues()
        pages = await asyncio.gather(*(self._browse_queue(replace(query, queue=q)) for q in queues))
        found = [r for page in pages for r in page]
        newer_page = query.after is not None and query.before is None
        found.sort(key=lambda r: r.id.encode(), reverse=not newer_page)
        found = found[: max(query.limit, 0)]
        if newer_page:
            found.reverse()
        return found

    async def _browse_queue(self, query: BrowseQuery) -> list[JobRecord]:
        assert query.queue is not None  # so RedisBrowser runs its script under the queue's base
        return await super().browse_jobs(query)

    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        totals: dict[tuple[str, str], int] = {}
        for row in await self.count_jobs():
            key = (row.queue, row.state.value)
            totals[key] = totals.get(key, 0) + row.count
        return [
            StateCount(q, JobState(s), min(n, cap), n <= cap)
            for (q, s), n in sorted(totals.items())
            if n > 0
        ]

    async def oldest_queued(self) -> dict[str, float]:
        queues = await self.known_queues()
        replies = await asyncio.gather(
            *(self._run("browse", ["oldest"], self._queue_base(q)) for q in queues)
        )
        return {
            reply[i].decode(): float(reply[i + 1])
            for reply in replies
            for i in range(0, len(reply), 2)
        }

    async def job_for_key(self, key: str) -> str | None:
        """Idempotency keys are per queue on a cluster: the first queue (by name) holding it."""
        queues = await self.known_queues()
        with translate_errors(self.url, self.prefix):
            async with self.client.pipeline(transaction=False) as pipe:
                for q in queues:
                    pipe.hget(self._queue_base(q) + "idem", key)
                found = await pipe.execute()
        for value in found:
            if value is not None:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None
