"""The in-memory backend: the reference semantics every other backend is checked against.

``memory://`` keeps jobs in this process only (lost when it exits). It is public and
documented: use it in tests and to read what each transition means; the contract suite and the
hypothesis state machine hold the SQLite, PostgreSQL and Redis backends to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace

from conveyor.backends.base import Backend, BackendFactory, CancelOutcome
from conveyor.backends.capabilities.kv import KeyValueStore
from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad
from conveyor.backends.common import (
    RETRYABLE_STATES,
    SUSPECT_STALLS,
    filter_matches,
    matches_any,
    repeated_complete,
    repeated_fail,
    repeated_release,
)
from conveyor.backends.memory.browse import MemoryBrowser
from conveyor.backends.memory.defer import MemoryDefer
from conveyor.backends.memory.events import MemoryEvents  # event bus (issue 16)
from conveyor.backends.memory.store import MemoryStore
from conveyor.backends.memory.streams import MemoryStreams  # event sourcing (issue 16)
from conveyor.domain.job import (
    ClaimedJob,
    CountRow,
    EnqueueResult,
    ErrorInfo,
    JobFilter,
    JobRecord,
    LeaseStatus,
    LogEntry,
    NewJob,
    RecoveredJob,
    RetriedJobs,
    WorkerInfo,
)
from conveyor.domain.states import KEY_HOLDING_STATES, JobState
from conveyor.errors import ErrorCode


class MemoryBackend(  # Defers: issue 19; events, streams: issue 16
    MemoryDefer, MemoryEvents, MemoryStreams, MemoryBrowser, KeyValueStore, ReportsLoad, Backend
):
    """A client of a :class:`MemoryStore`."""

    store: MemoryStore

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    @staticmethod
    def _now(now: float | None) -> float:
        return time.time() if now is None else now

    # -- producer ---------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        t = self._now(now)
        out: list[EnqueueResult] = []
        with self.store.lock:
            for job in jobs:
                if job.idempotency_key is not None:
                    existing_id = self.store.keys.get(job.idempotency_key)
                    existing = self.store.jobs.get(existing_id) if existing_id else None
                    if existing is not None and existing.state in KEY_HOLDING_STATES:
                        out.append(EnqueueResult(existing.id, False, existing.state))
                        continue
                if job.id in self.store.jobs:
                    existing = self.store.jobs[job.id]
                    out.append(EnqueueResult(existing.id, False, existing.state))
                    continue
                run_at = job.run_at if job.run_at is not None else t + (job.delay or 0.0)
                if job.blocked:
                    state = JobState.BLOCKED
                elif run_at > t:
                    state = JobState.SCHEDULED
                else:
                    state = JobState.QUEUED
                record = JobRecord(
                    id=job.id,
                    task=job.task,
                    queue=job.queue,
                    state=state,
                    payload=job.payload,
                    priority=job.priority,
                    run_at=run_at,
                    attempts=0,
                    max_attempts=job.max_attempts,
                    created_at=t,
                    timeout=job.timeout,
                    expires_at=job.expires_at,
                    idempotency_key=job.idempotency_key,
                    concurrency_key=job.concurrency_key,
                    trace_id=job.trace_id,
                    metadata=dict(job.metadata),
                    workflow_id=job.workflow_id,
                    parents=tuple(job.parents),
                    payload_version=job.payload_version,
                )
                self.store.jobs[job.id] = record
                if job.idempotency_key is not None:
                    self.store.keys[job.idempotency_key] = job.id
                out.append(EnqueueResult(job.id, True, state))
        self.store.wake()
        return out

    # -- worker -----------------------------------------------------------------------------
    def _promote_and_expire(self, t: float) -> None:
        jobs = self.store.jobs
        for job in list(jobs.values()):
            if job.state is JobState.SCHEDULED and job.run_at <= t:
                jobs[job.id] = job = replace(job, state=JobState.QUEUED)
            if (
                job.state in (JobState.QUEUED, JobState.SCHEDULED)
                and job.expires_at is not None
                and job.expires_at <= t
            ):
                error = ErrorInfo(
                    code=ErrorCode.EXPIRED,
                    type="Expired",
                    message="the job's TTL passed before it started",
                    attempt=job.attempts,
                    at=t,
                )
                jobs[job.id] = replace(
                    job,
                    state=JobState.EXPIRED,
                    finished_at=t,
                    error=error,
                    errors=(*job.errors, error),
                )

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        tasks: Sequence[str] | None = None,
        exclude_tasks: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        t = self._now(now)
        claimed: list[ClaimedJob] = []
        if limit <= 0:
            return claimed
        with self.store.lock:
            self._promote_and_expire(t)
            excluded = set(exclude_tasks)
            # A job that stalled twice or more may be what kills its workers: a worker holds at
            # most one such job, so jobs that only shared a worker with it are not its fellow
            # suspects again. The claim stops at a second one (strict order). One stall is
            # not enough: after a plain crash every job the worker held has one, and holding
            # them one at a time would slow recovery to a crawl.
            suspect = self._holds_suspect(worker_id)
            stop = False
            for queue in queues:
                if len(claimed) >= limit or stop:
                    break
                ready = [
                    j
                    for j in self.store.jobs.values()
                    if j.state is JobState.QUEUED
                    and j.queue == queue
                    and j.task not in excluded
                    and matches_any(j.task, tasks)
                ]
                ready.sort(key=lambda j: (-j.priority, j.run_at, j.id))
                for job in ready[: limit - len(claimed)]:
                    if job.stalls >= SUSPECT_STALLS:
                        if suspect:
                            stop = True
                            break
                        suspect = True
                    running = replace(
                        job,
                        state=JobState.RUNNING,
                        attempts=job.attempts + 1,
                        fence=job.fence + 1,
                        lease_owner=worker_id,
                        lease_until=t + lease,
                        started_at=t,
                    )
                    self.store.jobs[job.id] = running
                    claimed.append(
                        ClaimedJob(
                            id=running.id,
                            task=running.task,
                            queue=running.queue,
                            payload=running.payload,
                            priority=running.priority,
                            attempt=running.attempts,
                            max_attempts=running.max_attempts,
                            fence=running.fence,
                            lease_until=t + lease,
                            timeout=running.timeout,
                            trace_id=running.trace_id,
                            idempotency_key=running.idempotency_key,
                            metadata=dict(running.metadata),
                            payload_version=running.payload_version,
                            created_at=running.created_at,
                            stalls=running.stalls,
                            workflow_id=running.workflow_id,
                        )
                    )
        return claimed

    def _holds_suspect(self, worker_id: str) -> bool:
        return any(
            j.state is JobState.RUNNING
            and j.lease_owner == worker_id
            and j.stalls >= SUSPECT_STALLS
            for j in self.store.jobs.values()
        )

    def _held(self, job_id: str, fence: int) -> JobRecord | None:
        job = self.store.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.fence != fence:
            return None
        return job

    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        t = self._now(now)
        with self.store.lock:
            job = self._held(job_id, fence)
            if job is None:  # a repeat of a completion that took effect answers the same
                return repeated_complete(self.store.jobs.get(job_id), fence)
            self.store.jobs[job_id] = replace(
                job,
                state=JobState.COMPLETED,
                result=result,
                finished_at=t,
                lease_owner=None,
                lease_until=None,
            )
        self.store.wake()
        return True

    async def fail(
        self,
        job_id: str,
        fence: int,
        error: ErrorInfo,
        *,
        retry_delay: float | None,
        now: float | None = None,
        terminal: JobState = JobState.FAILED,
        dead_letter_queue: str | None = None,
    ) -> JobState | None:
        t = self._now(now)
        with self.store.lock:
            job = self._held(job_id, fence)
            if job is None:  # a repeat of a failure that took effect answers its outcome
                return repeated_fail(
                    self.store.jobs.get(job_id), fence, error, retry_delay, terminal
                )
            common = {
                "error": error,
                "errors": (*job.errors, error),
                "lease_owner": None,
                "lease_until": None,
            }
            if retry_delay is None:
                new = replace(
                    job,
                    state=terminal,
                    finished_at=t,
                    dead_letter_queue=dead_letter_queue if terminal is JobState.FAILED else None,
                    **common,  # type: ignore[arg-type]
                )
            else:
                state = JobState.QUEUED if retry_delay <= 0 else JobState.SCHEDULED
                new = replace(job, state=state, run_at=t + max(retry_delay, 0.0), **common)  # type: ignore[arg-type]
            self.store.jobs[job_id] = new
        self.store.wake()
        return new.state

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        with self.store.lock:
            job = self._held(job_id, fence)
            if job is None:  # a repeat of a hand-back that took effect answers the same
                return repeated_release(self.store.jobs.get(job_id), fence)
            self.store.jobs[job_id] = replace(
                job,
                state=JobState.QUEUED,
                attempts=max(job.attempts - 1, 0),
                lease_owner=None,
                lease_until=None,
            )
        self.store.wake()
        return True

    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        t = self._now(now)
        out: list[LeaseStatus] = []
        with self.store.lock:
            for job_id, fence in leases:
                job = self._held(job_id, fence)
                if job is None:
                    out.append(LeaseStatus(job_id, held=False))
                    continue
                self.store.jobs[job_id] = replace(job, lease_until=t + lease)
                out.append(LeaseStatus(job_id, held=True, cancel_requested=job.cancel_requested))
        return out

    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        t = self._now(now)
        out: list[RecoveredJob] = []
        with self.store.lock:
            expired = [
                j
                for j in self.store.jobs.values()
                if j.state is JobState.RUNNING and j.lease_until is not None and j.lease_until < t
            ]
            expired.sort(key=lambda j: (j.lease_until or 0.0, j.id))
            for job in expired[:limit]:
                stalls = job.stalls + 1
                cleared = {"stalls": stalls, "lease_owner": None, "lease_until": None}
                if job.cancel_requested:
                    error = ErrorInfo(
                        ErrorCode.CANCELLED,
                        "Cancelled",
                        job.cancel_reason or "cancelled",
                        attempt=job.attempts,
                        at=t,
                    )
                    new = replace(
                        job,
                        state=JobState.CANCELLED,
                        finished_at=t,
                        error=error,
                        errors=(*job.errors, error),
                        **cleared,  # type: ignore[arg-type]
                    )
                elif stalls > max_stalls:
                    error = ErrorInfo(
                        ErrorCode.POISON_MESSAGE,
                        "Stalled",
                        f"the job's lease expired {stalls} times (worker died or hung); "
                        f"the limit is {max_stalls}",
                        attempt=job.attempts,
                        at=t,
                    )
                    new = replace(
                        job,
                        state=JobState.FAILED,
                        finished_at=t,
                        error=error,
                        errors=(*job.errors, error),
                        **cleared,  # type: ignore[arg-type]
                    )
                else:
                    new = replace(job, state=JobState.QUEUED, **cleared)  # type: ignore[arg-type]
                self.store.jobs[job.id] = new
                out.append(
                    RecoveredJob(new.id, new.task, new.queue, new.state, stalls, new.attempts)
                )
        if out:
            self.store.wake()
        return out

    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        with self.store.lock:
            job = self._held(job_id, fence)
            if job is None:
                return False
            self.store.jobs[job_id] = replace(job, progress=progress)
        return True

    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is not None:
                self.store.jobs[job_id] = replace(job, logs=(*job.logs, *entries))

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        item = (loop, event)
        self.store.add_waiter(item)
        try:
            with self.store.lock:
                t = time.time()
                ready = False
                next_due: float | None = None
                for job in self.store.jobs.values():
                    if job.queue not in queues:
                        continue
                    if job.state is JobState.QUEUED:
                        ready = True
                        break
                    if job.state is JobState.SCHEDULED:
                        next_due = job.run_at if next_due is None else min(next_due, job.run_at)
            if ready:
                return
            if next_due is not None:
                timeout = min(timeout, max(next_due - t, 0.0))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
        finally:
            self.store.remove_waiter(item)

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = asyncio.Event()
            item = (loop, event)
            self.store.add_waiter(item)
            try:
                record = await self.get_job(job_id)
                if record is None or record.state.is_terminal:
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await event.wait()
            finally:
                self.store.remove_waiter(item)

    # -- operating --------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        t = self._now(now)
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is None:
                return CancelOutcome.NOT_FOUND
            if job.state.is_waiting:
                error = ErrorInfo(
                    ErrorCode.CANCELLED,
                    "Cancelled",
                    reason or "cancelled",
                    attempt=job.attempts,
                    at=t,
                )
                self.store.jobs[job_id] = replace(
                    job,
                    state=JobState.CANCELLED,
                    finished_at=t,
                    cancel_reason=reason,
                    error=error,
                    errors=(*job.errors, error),
                )
                outcome = CancelOutcome.CANCELLED
            elif job.state is JobState.RUNNING:
                self.store.jobs[job_id] = replace(job, cancel_requested=True, cancel_reason=reason)
                outcome = CancelOutcome.REQUESTED
            else:
                return CancelOutcome.NOT_CANCELLABLE
        self.store.wake()
        return outcome

    async def retry_jobs(
        self,
        flt: JobFilter,
        *,
        reset_attempts: bool = False,
        now: float | None = None,
        limit: int = 1000,
    ) -> RetriedJobs:
        t = self._now(now)
        ids: list[str] = []
        refused: dict[str, str] = {}
        with self.store.lock:
            matching = [
                j
                for j in sorted(self.store.jobs.values(), key=lambda j: j.id)
                if j.state in RETRYABLE_STATES and filter_matches(j, flt)
            ]
            for job in matching:
                if len(ids) >= limit:
                    break
                key = job.idempotency_key
                if key is not None and self._key_holder(key, job.id) is not None:
                    continue  # one live holder per key: see the refusals below
                self.store.jobs[job.id] = replace(
                    job,
                    state=JobState.QUEUED,
                    run_at=t,
                    attempts=0 if reset_attempts else job.attempts,
                    # One more run without a reset: the record says so (not "4/3").
                    max_attempts=job.max_attempts
                    if reset_attempts
                    else max(job.max_attempts, job.attempts + 1),
                    stalls=0,
                    finished_at=None,
                    cancel_requested=False,
                    cancel_reason=None,
                    dead_letter_queue=None,
                )
                if key is not None:
                    self.store.keys[key] = job.id
                ids.append(job.id)
            for job in matching:
                if len(refused) >= limit:
                    break
                current = self.store.jobs[job.id]
                if current.state not in RETRYABLE_STATES or current.idempotency_key is None:
                    continue
                holder = self._key_holder(current.idempotency_key, job.id)
                if holder is not None:
                    refused[job.id] = holder
        if ids:
            self.store.wake()
        return RetriedJobs(ids, refused)

    def _key_holder(self, key: str, other_than: str) -> str | None:
        """The id of the job (not ``other_than``) that holds ``key`` now, if one does."""
        holder_id = self.store.keys.get(key)
        if holder_id is None or holder_id == other_than:
            return None
        holder = self.store.jobs.get(holder_id)
        return holder_id if holder is not None and holder.state in KEY_HOLDING_STATES else None

    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        deleted = 0
        with self.store.lock:
            for job in sorted(self.store.jobs.values(), key=lambda j: j.id):
                if deleted >= limit:
                    break
                if not job.state.is_terminal or not filter_matches(job, flt):
                    continue
                del self.store.jobs[job.id]
                if (
                    job.idempotency_key is not None
                    and self.store.keys.get(job.idempotency_key) == job.id
                ):
                    del self.store.keys[job.idempotency_key]
                deleted += 1
        return deleted

    # -- reading ----------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        with self.store.lock:
            return self.store.jobs.get(job_id)

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        with self.store.lock:
            rows = [j for j in self.store.jobs.values() if filter_matches(j, flt)]
        rows.sort(key=lambda j: j.id, reverse=True)
        return rows[offset : offset + limit]

    async def count_jobs(self) -> list[CountRow]:
        counts: dict[tuple[str, str, JobState], int] = {}
        with self.store.lock:
            for job in self.store.jobs.values():
                key = (job.queue, job.task, job.state)
                counts[key] = counts.get(key, 0) + 1
        return [CountRow(q, t, s, n) for (q, t, s), n in sorted(counts.items())]

    async def queue_load(
        self, queues: Sequence[str] | None = None, now: float | None = None
    ) -> list[QueueLoad]:
        t = self._now(now)
        ready: dict[str, int] = {}
        running: dict[str, int] = {}
        oldest: dict[str, float] = {}
        with self.store.lock:
            for job in self.store.jobs.values():
                if job.state is JobState.RUNNING:
                    running[job.queue] = running.get(job.queue, 0) + 1
                elif job.state is JobState.QUEUED or (
                    job.state is JobState.SCHEDULED and job.run_at <= t
                ):
                    ready[job.queue] = ready.get(job.queue, 0) + 1
                    oldest[job.queue] = min(oldest.get(job.queue, job.run_at), job.run_at)
        names = list(dict.fromkeys(queues)) if queues is not None else sorted(ready | running)
        return [
            QueueLoad(
                q,
                ready.get(q, 0),
                running.get(q, 0),
                None if q not in oldest else max(t - oldest[q], 0.0),
            )
            for q in names
        ]

    # -- key-value state --------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        with self.store.lock:
            return self.store.kv.get((namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, bytes]:
        with self.store.lock:
            return {k: v for (ns, k), v in self.store.kv.items() if ns == namespace}

    async def kv_swap(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        with self.store.lock:
            if self.store.kv.get((namespace, key)) != expected:
                return False
            if value is None:
                self.store.kv.pop((namespace, key), None)
            else:
                self.store.kv[(namespace, key)] = value
            return True

    # -- workers ----------------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        with self.store.lock:
            self.store.workers[info.id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        with self.store.lock:
            self.store.workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        with self.store.lock:
            return sorted(self.store.workers.values(), key=lambda w: w.id)

    async def prune_workers(self, heartbeat_before: float) -> int:
        with self.store.lock:
            stale = [w for w in self.store.workers.values() if w.heartbeat_at < heartbeat_before]
            for w in stale:
                del self.store.workers[w.id]
        return len(stale)


class MemoryFactory(BackendFactory):
    """``memory://`` — every client of this factory shares one :class:`MemoryStore`."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.store = MemoryStore()

    def create(self) -> MemoryBackend:
        return MemoryBackend(self.store)

    async def destroy(self) -> None:
        """Forget every job, key, worker and shared value (clients stay usable)."""
        with self.store.lock:
            self.store.jobs.clear()
            self.store.keys.clear()
            self.store.workers.clear()
            self.store.kv.clear()
        self.store.wake()
