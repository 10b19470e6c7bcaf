"""The backend protocol: the seam between Conveyor's core and its storage engines.

The seam is cut at **state transitions over opaque bytes**. Each method below is one atomic
transition inside the backend (one SQL transaction, one Lua script, one lock); policy (retry
timing, timeouts, serialization, middleware) is decided in the core and passed in as values.

Time: every method takes ``now`` (epoch seconds) or ``None``. ``None`` means "use the store's
own clock" (PostgreSQL ``clock_timestamp()``, Redis ``TIME``, the host clock for SQLite and
memory); tests pass an explicit value from a fake clock, so nothing sleeps.

Fencing: a claim returns a ``fence`` token that grows with every claim of that job. Every later
call about the running job (complete, fail, heartbeat, release, progress) presents it, and is a
no-op returning ``False``/``None`` when the job is no longer running under that token (its lease
expired and it was recovered, or it was re-claimed). That is how a zombie worker is kept from
overwriting a newer attempt.

Ordering: within a queue jobs are claimed by (priority descending, run-at ascending, id
ascending); ids are time-sortable, so equal priority and run-at means enqueue order. When a
worker consumes several queues, they are passed in precedence order and earlier queues are
drained first.

Features beyond these transitions (key-value state, transactions, and the ones to come) are
capability protocols in :mod:`conveyor.backends.capabilities`; a backend declares them by
inheriting them.

The :mod:`conveyor.backends.memory` backend is the reference implementation of these rules;
the contract suite in ``tests/contract`` holds every backend to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from conveyor.backends.common import redact_url, strip_to_summary
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
    StoreDeadLetter,
    WorkerInfo,
)
from conveyor.domain.states import JobState


class CancelOutcome(StrEnum):
    """Result of :meth:`Backend.cancel`."""

    CANCELLED = "cancelled"  # was waiting; now cancelled
    REQUESTED = "requested"  # is running; its worker is told and finishes the cancellation
    NOT_CANCELLABLE = "not_cancellable"  # already finished
    NOT_FOUND = "not_found"


class Backend(ABC):
    """One client of one store, used from one event loop.

    A backend object is created per event loop by :class:`BackendFactory`; all clients of one
    factory see the same data.
    """

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before first use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is unusable afterwards."""

    # -- producer -----------------------------------------------------------------------
    @abstractmethod
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Store jobs atomically, in order, honouring idempotency keys; one result per job.

        A job whose ``idempotency_key`` is held by an existing job (see
        :data:`~conveyor.domain.states.KEY_HOLDING_STATES`) is not stored; its result carries
        the existing id and ``created=False``. Two jobs with the same key in one batch: the
        first wins.
        """

    # -- worker ---------------------------------------------------------------------------
    @abstractmethod
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
        """Lease up to ``limit`` jobs, atomically.

        In the same transition: scheduled jobs whose run-at has come become queued; waiting jobs
        whose ``expires_at`` has passed become ``expired`` (error code ``expired``). Then queued
        jobs of ``queues`` (in precedence order) whose task matches one of the ``tasks``
        patterns (``*`` matches any run of characters; ``None`` matches all) and is not in
        ``exclude_tasks`` are taken in strict order, moved to ``running`` with
        ``attempts + 1``, a new ``fence``, ``lease_owner = worker_id``,
        ``lease_until = now + lease`` and ``started_at = now``.

        A worker holds at most one *suspect*, a job that stalled ``SUSPECT_STALLS`` (2) times
        or more: the claim stops before the first suspect when ``worker_id`` holds one already
        (running, its lease owner), else before the second. Later queues are not looked at
        once it stopped.
        """

    def note_store_dead_letters(self, items: Sequence[StoreDeadLetter]) -> None:
        """For implementations: remember jobs a claim of this client dead-lettered."""
        if items:
            self.__dict__.setdefault("_store_dead_letters", []).extend(items)

    def take_store_dead_letters(self) -> list[StoreDeadLetter]:
        """The jobs this client's claims dead-lettered since the last call, instead of handing
        them out (their stored record could not be decoded); the worker logs and counts them.
        Empty for stores that never do (memory)."""
        taken: list[StoreDeadLetter] = self.__dict__.pop("_store_dead_letters", [])
        return taken

    @abstractmethod
    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        """Running → completed, storing ``result``; ``False`` if the lease is not held.

        A repeat of a completion that took effect (the job is completed under ``fence``)
        answers ``True`` again and changes nothing: a client that lost the reply may ask twice.
        """

    async def complete_and_claim(
        self,
        job_id: str,
        fence: int,
        result: bytes | None,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        tasks: Sequence[str] | None = None,
        exclude_tasks: Sequence[str] = (),
    ) -> tuple[bool, list[ClaimedJob]]:
        """:meth:`complete`, then :meth:`claim` (whatever the completion answered): what a
        worker running one job at a time does when the job ends. Backends override it to do
        both in one round trip (Redis: one script; PostgreSQL: one pipeline and commit;
        SQLite: one write transaction). A claim that fails after the completion is applied
        claims nothing rather than losing the completion."""
        done = await self.complete(job_id, fence, result, now)
        if limit <= 0:
            return done, []
        try:
            jobs = await self.claim(
                worker_id, queues, limit, lease, now, tasks=tasks, exclude_tasks=exclude_tasks
            )
        except Exception:  # noqa: BLE001 - the completion stands; the next claim will retry
            return done, []
        return done, jobs

    @abstractmethod
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
        """Record a failed attempt; returns the new state, or ``None`` if the lease is not held.

        ``retry_delay`` ``None``: the job moves to ``terminal`` (``failed`` — the dead-letter
        set, optionally labelled with ``dead_letter_queue`` — or ``cancelled``). Otherwise it
        moves to ``queued`` (delay ≤ 0) or ``scheduled`` with ``run_at = now + retry_delay``.
        ``error`` becomes the job's last error and is appended to its error history.

        A repeat of a failure that took effect (same fence, ``error`` stored as the last
        error, the job in the state that write leads to and not held) answers the state it
        wrote again and changes nothing (see :func:`~conveyor.backends.common.repeated_fail`).
        """

    @abstractmethod
    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        """Hand a running job back (graceful shutdown): queued again at once, lease cleared, the
        attempt not counted (``attempts - 1``), run-at unchanged so it keeps its place.

        A repeat answers ``True`` again while the job is queued under ``fence`` and not held
        (see :func:`~conveyor.backends.common.repeated_release`)."""

    @abstractmethod
    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        """Extend the leases ``(job_id, fence)`` still held to ``now + lease``; report each one,
        including whether a cancellation was requested for it."""

    @abstractmethod
    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        """Recover running jobs whose lease expired (their worker died or hung).

        Each gets ``stalls + 1``; a job with a pending cancellation becomes ``cancelled``; one
        whose stalls now exceed ``max_stalls`` becomes ``failed`` with code
        ``poison_message``; the rest become ``queued`` again with run-at unchanged. Attempts are
        not reduced: the stalled run counts. Any live worker may call this.
        """

    @abstractmethod
    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        """Store the running job's progress (opaque bytes); ``False`` if the lease is not held."""

    @abstractmethod
    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        """Append handler log lines to the job (ignored if the job no longer exists)."""

    @abstractmethod
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job may have become claimable in ``queues``, or after ``timeout``.

        A hint, never a promise: callers claim after it returns either way. Implementations
        also return early when the next scheduled job in ``queues`` comes due.
        """

    # -- operating the queue --------------------------------------------------------------
    @abstractmethod
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        """Cancel a job: waiting states → ``cancelled`` at once; running → flag it for its
        worker (``REQUESTED``); finished → ``NOT_CANCELLABLE``."""

    @abstractmethod
    async def retry_jobs(
        self,
        flt: JobFilter,
        *,
        reset_attempts: bool = False,
        now: float | None = None,
        limit: int = 1000,
    ) -> RetriedJobs:
        """Move up to ``limit`` matching ``failed``/``cancelled``/``expired`` jobs, in id
        order, back to ``queued`` (run-at now, error history kept; ``attempts`` zeroed when
        ``reset_attempts``, else ``max_attempts`` raised to ``attempts + 1`` when lower: the
        job gets one more run); returns their ids. Jobs in other states are never touched,
        whatever the filter says.

        One live holder per idempotency key: a matching job whose key another job holds (a
        state in :data:`~conveyor.domain.states.KEY_HOLDING_STATES`) is left alone, and so is
        any but the first (lowest id) of matching jobs sharing a free key. The answer's
        ``refused`` maps up to ``limit`` such jobs, in id order, to the holder's id (as it
        stands after this call's retries)."""

    @abstractmethod
    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        """Delete matching jobs in terminal states (never waiting or running ones); the count."""

    # -- reading --------------------------------------------------------------------------
    @abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None:
        """The full record, or ``None``. Never raises because the stored record is damaged:
        unreadable fields hold defaults and are named in ``JobRecord.damage`` (a stored state
        that is not a state reads as ``unknown``); the same holds for every read below."""

    @abstractmethod
    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """Matching jobs, newest first (id descending)."""

    async def list_summaries(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """:meth:`list_jobs` for listings: the same records with ``summary`` set and the
        payload, result, progress, logs, error history and the last error's traceback left
        out. Stores override it to leave them in the store (a listing must not load a 10 MB
        argument per row); this default strips full records."""
        return [
            strip_to_summary(record)
            for record in await self.list_jobs(flt, limit=limit, offset=offset)
        ]

    @abstractmethod
    async def count_jobs(self) -> list[CountRow]:
        """Job counts grouped by queue, task and state (zero rows omitted)."""

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        """Wait until the job is terminal (or ``timeout`` passes); return its latest record.

        The default polls with a growing interval; backends with push notifications override it.
        """
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        interval = 0.005
        while True:
            record = await self.get_job(job_id)
            if record is None or record.state.is_terminal:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, 0.25)

    # -- worker registry ------------------------------------------------------------------
    @abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a worker's registry entry."""

    @abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registry entry (clean shutdown)."""

    @abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker (callers judge liveness from ``heartbeat_at``)."""

    @abstractmethod
    async def prune_workers(self, heartbeat_before: float) -> int:
        """Forget workers whose last heartbeat is older than ``heartbeat_before``."""


class BackendFactory(ABC):
    """Makes backend clients that all share one store; one factory per App."""

    url: str

    @abstractmethod
    def create(self) -> Backend:
        """A new client for the calling event loop."""

    async def migrate(self) -> list[str]:
        """Create or upgrade the stored schema; returns the names of the steps applied.

        ``conveyor db migrate`` calls this. Backends without a schema return ``[]``.
        """
        return []

    async def destroy(self) -> None:  # noqa: B027 - optional hook
        """Drop everything this factory stores (its file, schema or key prefix). For tests."""

    async def reset(self) -> list[str]:
        """Delete every job, key, worker entry and piece of shared state, and leave the store
        ready for use (``conveyor db reset``). The default destroys, then migrates; stores that
        other processes may hold open override it to empty their tables in place. Returns the
        migration steps applied."""
        await self.destroy()
        return await self.migrate()

    def describe(self) -> dict[str, Any]:
        """Facts about the store for ``conveyor info`` (never secrets)."""
        return {"url": redact_url(self.url)}
