"""The browsing capability for Redis: keyset pages over the per-queue state indexes
(``q:<queue>:x:<state>``, see ``lua/lib.lua``), counts from the counters hash the transition
scripts keep (exact, O(1)), and per-minute throughput hashes (``lua/throughput.lua``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from conveyor.backends.capabilities.browse import (
    BrowseQuery,
    JobBrowser,
    StateCount,
    ThroughputRow,
)
from conveyor.backends.redis.codec import decode_counts, decode_record, encode_filter, num
from conveyor.backends.redis.connect import translate_errors
from conveyor.domain.job import JobFilter, JobRecord
from conveyor.domain.states import JobState

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from conveyor.backends.redis.scripts import ScriptArg

#: Most index entries one page looks at when a filter is not an index (task, error code): the
#: script runs inside Redis, so its time is bounded.
PAGE_BUDGET = 20_000


class RedisBrowser(JobBrowser):
    """Mixed into :class:`~conveyor.backends.redis.backend.RedisBackend`."""

    base: str
    url: str
    prefix: str
    client: Redis

    if TYPE_CHECKING:  # provided by RedisBackend

        async def _run(
            self, name: str, args: Sequence[ScriptArg], base: str | None = None
        ) -> Any: ...

        def _queue_base(self, queue: str) -> str: ...

    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        q = query
        states = list(JobState) if q.states is None else list(dict.fromkeys(q.states))
        if q.limit <= 0 or not states:
            return []
        flt = JobFilter(queue=q.queue, task=q.task, error_code=q.error_code)
        desc = q.after is None
        cursor = q.before if desc else q.after
        args: list[ScriptArg] = [
            "page",
            "" if cursor is None else "=" + cursor,
            "1" if desc else "0",
            str(q.limit),
            str(PAGE_BUDGET),
            *encode_filter(flt, states),
        ]
        base = None if q.queue is None else self._queue_base(q.queue)  # Redis Cluster
        reply = await self._run("browse", args, base)
        records = []
        for i in range(0, len(reply), 3):
            flat = reply[i + 1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            records.append(decode_record(reply[i].decode(), fields, reply[i + 2]))
        if not desc:
            records.reverse()
        return records

    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        with translate_errors(self.url, self.prefix):
            raw = await self.client.hgetall(self.base + "counts")
        totals: dict[tuple[str, str], int] = {}
        for row in decode_counts(cast(dict[bytes, bytes], raw)):
            key = (row.queue, row.state.value)
            totals[key] = totals.get(key, 0) + row.count
        return [
            StateCount(q, JobState(s), min(n, cap), n <= cap)
            for (q, s), n in sorted(totals.items())
            if n > 0
        ]

    async def oldest_queued(self) -> dict[str, float]:
        reply = await self._run("browse", ["oldest"])
        return {reply[i].decode(): float(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def job_for_key(self, key: str) -> str | None:
        with translate_errors(self.url, self.prefix):
            value = await self.client.hget(self.base + "idem", key)
        return None if value is None else cast(bytes, value).decode()

    async def add_throughput(self, rows: Sequence[ThroughputRow]) -> None:
        if not rows:
            return
        args: list[ScriptArg] = ["add", str(len(rows))]
        for r in rows:
            args += [num(r.bucket), r.queue, r.task, r.outcome, str(r.count), repr(r.duration)]
        await self._run("throughput", args)

    async def read_throughput(self, since: float) -> list[ThroughputRow]:
        reply = await self._run("browse", ["tp", num(float(since))])
        rows: list[ThroughputRow] = []
        for i in range(0, len(reply), 2):
            bucket = float(reply[i])
            flat = reply[i + 1]
            found: dict[tuple[str, str, str], list[float]] = {}
            for j in range(0, len(flat), 2):
                kind, queue, task, outcome = flat[j].decode().split("\0", 3)
                entry = found.setdefault((queue, task, outcome), [0, 0.0])
                entry[0 if kind == "n" else 1] = float(flat[j + 1])
            for (queue, task, outcome), (n, d) in found.items():
                rows.append(ThroughputRow(bucket, queue, task, outcome, int(n), d))
        rows.sort(key=lambda r: (r.bucket, r.queue, r.task, r.outcome))
        return rows

    async def prune_throughput(self, before: float) -> int:
        return int(await self._run("throughput", ["prune", num(float(before))]))
