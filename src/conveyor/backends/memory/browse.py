"""The browsing capability in memory: the reference the other backends are held to."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from conveyor.backends.capabilities.browse import (
    BrowseQuery,
    JobBrowser,
    StateCount,
    ThroughputRow,
)
from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState


class _Store(Protocol):
    """The parts of :class:`~conveyor.backends.memory.MemoryStore` browsing reads."""

    lock: threading.RLock
    jobs: dict[str, JobRecord]
    keys: dict[str, str]
    throughput: dict[tuple[float, str, str, str], tuple[int, float]]


def _matches(job: JobRecord, q: BrowseQuery) -> bool:
    if q.states is not None and job.state not in q.states:
        return False
    if q.queue is not None and job.queue != q.queue:
        return False
    if q.task is not None and job.task != q.task:
        return False
    if q.error_code is not None and (job.error is None or job.error.code != q.error_code):
        return False
    if q.before is not None and not job.id < q.before:
        return False
    return q.after is None or job.id > q.after


class MemoryBrowser(JobBrowser):
    """Mixed into :class:`~conveyor.backends.memory.MemoryBackend` (uses its ``store``)."""

    store: _Store

    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        if query.limit <= 0:
            return []
        with self.store.lock:
            rows = [j for j in self.store.jobs.values() if _matches(j, query)]
        rows.sort(key=lambda j: j.id, reverse=query.after is None)
        page = rows[: query.limit]
        if query.after is not None:
            page.reverse()
        return [replace(j, logs=()) for j in page]

    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        counts: dict[tuple[str, str], int] = {}
        with self.store.lock:
            for job in self.store.jobs.values():
                key = (job.queue, job.state.value)
                counts[key] = counts.get(key, 0) + 1
        return [
            StateCount(q, JobState(s), min(n, cap), n <= cap)
            for (q, s), n in sorted(counts.items())
        ]

    async def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with self.store.lock:
            for job in self.store.jobs.values():
                if job.state is JobState.QUEUED:
                    seen = out.get(job.queue)
                    out[job.queue] = job.run_at if seen is None else min(seen, job.run_at)
        return out

    async def job_for_key(self, key: str) -> str | None:
        with self.store.lock:
            return self.store.keys.get(key)

    async def add_throughput(self, rows: Sequence[ThroughputRow]) -> None:
        with self.store.lock:
            for row in rows:
                key = (row.bucket, row.queue, row.task, row.outcome)
                n, d = self.store.throughput.get(key, (0, 0.0))
                self.store.throughput[key] = (n + row.count, d + row.duration)

    async def read_throughput(self, since: float) -> list[ThroughputRow]:
        with self.store.lock:
            items = sorted(self.store.throughput.items())
        return [ThroughputRow(b, q, t, o, n, d) for (b, q, t, o), (n, d) in items if b >= since]

    async def prune_throughput(self, before: float) -> int:
        with self.store.lock:
            old = [k for k in self.store.throughput if k[0] < before]
            for k in old:
                del self.store.throughput[k]
        return len(old)
