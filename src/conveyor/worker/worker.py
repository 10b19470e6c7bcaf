"""The worker: claims jobs up to its free slots, runs them, keeps their leases alive.

One asyncio loop per worker process. The claim loop leases at most as many jobs as there are
free slots; each job runs in its own asyncio task (async handlers on the loop, sync handlers in
daemon threads, process-mode handlers in killable child processes). A heartbeat task extends
every held lease in one backend call and learns about cancellations (pushed at once by
backends that can, see :mod:`conveyor.worker.cancellations`); a maintenance task
recovers expired leases (any live worker does it) and prunes finished jobs by the retention
policy. Shutdown stops claiming, waits up to the grace period and hands the rest back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities import PushesCancellations
from conveyor.backends.common import matches_any
from conveyor.core.contract import unimplemented
from conveyor.core.env import WORKER_VARIABLES, options_from_env
from conveyor.core.events import JobEvent
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ClaimedJob, JobFilter, StoreDeadLetter, WorkerInfo
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError
from conveyor.worker.active import ActiveJob
from conveyor.worker.cancellations import listen_for_cancellations
from conveyor.worker.deadlines import within
from conveyor.worker.payloads import recovery_stall_limit
from conveyor.worker.retention import prune_by_count
from conveyor.worker.runner import JobRunner
from conveyor.worker.stats import WorkerStatsCollector, flush_throughput

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Backend

log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker process runs.

    ``queues``: queues to consume (``None``: every declared queue plus the default), drained in
    order of their declared priority. ``tasks``: task-name patterns with ``*`` wildcards to
    accept (``None``: all). ``concurrency``: jobs run at once. ``grace``: seconds running jobs
    get to finish on shutdown before they are handed back. ``burst``: exit once no job is
    claimable and none is running. ``max_jobs_per_child`` / ``max_memory_per_child`` (bytes):
    recycle a process-mode child after that many jobs, or when its resident memory after a job
    is above that (``None``: never). ``hostname``: the host this worker reports
    (default ``socket.gethostname()``); it starts the worker id (``host:pid:random``) and names
    the host in the worker registry, so a fleet's workers can be told apart by machine (set it
    where every container has the same hostname).
    """

    queues: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    concurrency: int = 10
    grace: float = 30.0
    poll_interval: float = 1.0
    maintenance_interval: float | None = None
    retention_interval: float = 60.0
    process_pool_size: int | None = None
    burst: bool = False
    max_jobs_per_child: int | None = None
    max_memory_per_child: int | None = None
    burst_waits_for_scheduled: bool = True
    scheduler: bool = True
    worker_id: str | None = None
    hostname: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> WorkerConfig:
        """A config from the ``CONVEYOR_WORKER_*`` variables ``conveyor worker`` reads too
        (``QUEUES``, ``TASKS``, ``CONCURRENCY``, ``GRACE``, ``POLL_INTERVAL``, ``BURST``,
        ``WORKER_ID``, ``NO_SCHEDULER``); ``options`` win. Reads ``environ`` (default
        ``os.environ``) only when called."""
        return cls(**{**options_from_env(WORKER_VARIABLES, environ), **options})


class Worker:
    """Runs jobs of one app. ``await worker.run()``; ``worker.stop()`` from a signal handler."""

    def __init__(self, app: Conveyor, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        if self.config.concurrency < 1:
            raise ValueError("worker concurrency must be >= 1")
        for name in ("max_jobs_per_child", "max_memory_per_child"):
            value = getattr(self.config, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None)")
        host = self.config.hostname or socket.gethostname()
        self.id = self.config.worker_id or f"{host}:{os.getpid()}:{new_job_id()[-8:]}"
        self.host = host
        self.queues = self._resolve_queues()
        self.active: dict[str, ActiveJob] = {}
        self.per_task: dict[str, int] = {}
        self.per_queue: dict[str, int] = {}
        self.stats = WorkerStatsCollector()
        self.runner = JobRunner(self)
        self._stopping = False
        self._forced = False
        self._retiring = False  # stopping without a grace limit (see retire())
        self._retirement_ended = asyncio.Event()
        self._stop_event: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        # Fusing a completion with the next claim (``Backend.complete_and_claim``): set at
        # start-up, when no queue or task limit needs the claim loop's bookkeeping.
        self._fusable = False
        self._parked = False  # the claim loop waits for a slot (all are taken)
        self._skip_claim = False  # a fused claim just found nothing: go straight to waiting
        self._backend: Backend | None = None
        self._started_at = time.time()
        self.zombie_threads = 0
        self._stray: set[asyncio.Future[Any]] = set()
        self._last_beat_ok = time.monotonic()

    def _resolve_queues(self) -> tuple[str, ...]:
        names = (
            list(self.config.queues)
            if self.config.queues
            else [self.app.default_queue, *self.app.queues]
        )
        unique = list(dict.fromkeys(names))
        # Higher queue priority first; declaration order breaks ties (stable sort).
        unique.sort(key=lambda q: -self.app.queue_config(q).priority)
        return tuple(unique)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming; with ``force`` (or a second call) hand running jobs back at once.

        During a :meth:`retire`, the first call turns it into this normal shutdown (running
        jobs get the grace period from now on)."""
        if self._retiring and not force:
            self._retiring = False
            self._retirement_ended.set()
            return
        if self._stopping:
            force = True
        self._stopping = True
        self._forced = self._forced or force
        if self._stop_event is not None:
            self._stop_event.set()
        if self._forced:
            for active in list(self.active.values()):
                self.runner.interrupt(active, "shutdown")

    def retire(self) -> None:
        """Stop claiming and let every running job finish, however long it takes, then
        return from :meth:`run` (SIGUSR2): how an autoscaler shrinks a group of worker
        processes without interrupting a job. A later :meth:`stop` applies the grace period
        as usual; nothing happens when the worker is already stopping."""
        if self._stopping:
            return
        self.stop()
        self._retiring = True

    @property
    def retiring(self) -> bool:
        return self._retiring

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the worker is not running"
        return self._backend

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            host=self.host,
            pid=os.getpid(),
            started_at=self._started_at,
            heartbeat_at=self.app.now(),
            queues=self.queues,
            concurrency=self.config.concurrency,
            stats=self.stats.snapshot(len(self.active), self._started_at),
        )

    async def run(self) -> None:
        """Run until :meth:`stop` (or, in burst mode, until idle)."""
        # issue 19: a contract this worker would run must be implemented here.
        missing = unimplemented(
            self.app.tasks,
            self.queues,
            self.app.default_queue,
            lambda name: matches_any(name, self.config.tasks),
        )
        if missing:
            raise ConfigurationError(
                f"this worker would run {', '.join(missing)} but only has the contract; "
                "implement it with @app.implement(...) in the worker's code, or leave it out "
                "with --tasks/--queues"
            )
        self._stop_event = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._backend = await self.app.backend()
        self._fusable = all(
            self.app.queue_config(q).concurrency is None for q in self.queues
        ) and all(t.config.concurrency is None for t in self.app.tasks.values())
        await self.backend.register_worker(self.info())
        log.info(
            "worker %s started: queues=%s concurrency=%d tasks=%s",
            self.id,
            ",".join(self.queues),
            self.config.concurrency,
            ",".join(self.config.tasks) if self.config.tasks else "*",
            extra={"worker_id": self.id},
        )
        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="conveyor-heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name="conveyor-maintenance"),
        ]
        if isinstance(self.backend, PushesCancellations):
            helpers.append(
                asyncio.create_task(
                    listen_for_cancellations(self, self.backend, self._stop_event),
                    name="conveyor-cancellations",
                )
            )
        if self.app.bus.active:  # event bus upkeep (issue 16): store subscriptions, settle
            helpers.append(
                asyncio.create_task(self.app.bus.run(self._stop_event), name="conveyor-bus")
            )
        if self.config.scheduler and not self.config.burst:
            helpers.append(
                asyncio.create_task(
                    self.app.schedules.run(self._stop_event), name="conveyor-scheduler"
                )
            )
        await self.emit_worker_event("worker:ready")  # issue 19: app-level worker events
        try:
            await self._claim_loop()
            await self.emit_worker_event("worker:closing")
            await self._drain()
        finally:
            await self._stop_helpers(helpers)
            self.runner.shutdown()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await flush_throughput(self.backend, self.stats)
                    await self.backend.unregister_worker(self.id)
            log.info(
                "worker %s stopped: processed=%d succeeded=%d failed=%d",
                self.id,
                self.stats.processed,
                self.stats.succeeded,
                self.stats.failed,
                extra={"worker_id": self.id},
            )

    async def emit_worker_event(self, kind: str, exc: BaseException | None = None) -> None:
        """``worker:ready``, ``worker:closing`` or ``worker:error`` to the app's listeners."""
        if not self.app.events.has_listeners(kind, ""):
            return
        await self.app.events.emit(
            JobEvent(
                kind,
                "",
                "",
                "",
                at=self.app.now(),
                worker_id=self.id,
                error_type=None if exc is None else type(exc).__name__,
                error_message=None if exc is None else str(exc),
                extra={"queues": list(self.queues), "concurrency": self.config.concurrency},
            )
        )

    @staticmethod
    async def _stop_helpers(helpers: list[asyncio.Task[Any]]) -> None:
        """Cancel the background loops and wait for them, with a deadline: a client library
        that swallows a cancellation during a command must not keep the worker alive. The
        awaiting task's own cancellation is never swallowed (asyncio.wait does not raise
        for the helpers')."""
        pending = set(helpers)
        for _ in range(5):
            for helper in pending:
                helper.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if not pending:
                break
        for helper in helpers:
            if helper.done() and not helper.cancelled():
                helper.exception()
        if pending:
            log.warning("%d background task(s) did not stop; leaving them", len(pending))

    # -- claiming -----------------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.config.concurrency - len(self.active) - self.zombie_threads

    def fused_claim(self) -> dict[str, Any] | None:
        """Arguments for claiming the next jobs in the same call that completes the one
        running job, or ``None`` when that would not save a round trip or is not safe.

        Only while the claim loop is parked waiting for a slot and this is the only running
        job (one job at a time, typically): the finishing job's slot is refilled without the
        loop waking up. Busier workers complete through the backend's batched path instead.
        """
        # Parked with one running job and no zombie thread: concurrency is 1, so nothing but
        # this job's end (or a stop) wakes the claim loop, which cannot claim alongside.
        if not (self._fusable and self._parked) or len(self.active) != 1 or self.zombie_threads:
            return None
        if self._stopping or self.cut_off:
            return None
        return {
            "worker_id": self.id,
            "queues": list(self.queues),
            "limit": self.free_slots() + 1,  # the finishing job's slot too
            "lease": self.app.lease,
            "now": self.app.backend_now(),
            "tasks": self.config.tasks,
        }

    async def adopt(self, finishing: ActiveJob, jobs: list[ClaimedJob], took: float) -> None:
        """Start jobs a fused completion claimed (in place of ``finishing``); ``took`` is how
        long the call took, as the claim loop checks it."""
        dead = self.backend.take_store_dead_letters()
        if dead:
            await self._report_store_dead_letters(dead)
        if not jobs:
            self._skip_claim = True
            return
        if took > self.app.lease / 2:  # read late (a stalled loop): as the claim loop does
            await self._hand_back_late(jobs, took)
            return
        if self._stopping:  # shutting down meanwhile: hand them straight back
            for job in jobs:
                await self.backend.release(job.id, job.fence, self.app.backend_now())
            return
        finishing.extra["refilled"] = True
        for job in jobs:
            self._start(job)

    def _excluded_tasks(self) -> list[str]:
        out = []
        for name, running in self.per_task.items():
            task = self.app.tasks.get(name)
            if (
                task is not None
                and task.config.concurrency is not None
                and (running >= task.config.concurrency)
            ):
                out.append(name)
        return out

    async def _claim(self, queues: list[str], free: int) -> list[ClaimedJob]:
        """Claim up to ``free`` jobs in queue precedence order.

        Consecutive queues without their own concurrency limit share one claim; a limited
        queue is claimed alone, never for more than its remaining room.
        """
        groups: list[tuple[list[str], int | None]] = []
        for queue in queues:
            limit = self.app.queue_config(queue).concurrency
            if limit is None and groups and groups[-1][1] is None:
                groups[-1][0].append(queue)
            else:
                room = None if limit is None else limit - self.per_queue.get(queue, 0)
                groups.append(([queue], room))
        jobs: list[ClaimedJob] = []
        exclude = self._excluded_tasks()
        for names, room in groups:
            want = free - len(jobs) if room is None else min(room, free - len(jobs))
            if want <= 0:
                continue
            jobs += await self.backend.claim(
                self.id,
                names,
                want,
                self.app.lease,
                self.app.backend_now(),
                tasks=self.config.tasks,
                exclude_tasks=exclude,
            )
            if len(jobs) >= free:
                break
        dead = self.backend.take_store_dead_letters()
        if dead:
            await self._report_store_dead_letters(dead)
        return jobs

    async def _report_store_dead_letters(self, found: list[StoreDeadLetter]) -> None:
        """Log and count the jobs our claims dead-lettered in the store instead of handing them
        out (their stored record could not be decoded): an error line each, the ``dead``
        counters, and the ``dead`` event."""
        for dead in found:
            self.stats.record(dead.task, dead.queue, "dead", 0.0)
            log.error(
                "job %s (%s) was dead-lettered when claimed [%s]: %s",
                dead.id,
                dead.task,
                dead.error.code,
                dead.error.message,
                extra={
                    "worker_id": self.id,
                    "job_id": dead.id,
                    "task": dead.task,
                    "queue": dead.queue,
                    "attempt": dead.attempt,
                    "error_code": dead.error.code,
                },
            )
            if self.app.events.has_listeners("dead", dead.task):
                await self.app.events.emit(
                    JobEvent(
                        "dead",
                        dead.id,
                        dead.task,
                        dead.queue,
                        dead.attempt,
                        at=self.app.now(),
                        error_code=dead.error.code,
                        error_type=dead.error.type,
                        error_message=dead.error.message,
                        worker_id=self.id,
                    )
                )

    def _over_limit(self, job: ClaimedJob) -> bool:
        task = self.app.tasks.get(job.task)
        task_limit = task.config.concurrency if task is not None else None
        if task_limit is not None and self.per_task.get(job.task, 0) >= task_limit:
            return True
        queue_limit = self.app.queue_config(job.queue).concurrency
        return queue_limit is not None and self.per_queue.get(job.queue, 0) >= queue_limit

    def _open_queues(self) -> list[str]:
        out = []
        for queue in self.queues:
            limit = self.app.queue_config(queue).concurrency
            if limit is None or self.per_queue.get(queue, 0) < limit:
                out.append(queue)
        return out

    async def _claim_loop(self) -> None:
        assert self._stop_event is not None and self._slot_freed is not None
        idle_claims = 0
        while not self._stopping:
            # Cleared before claiming so a job finishing during the claim is not missed.
            self._slot_freed.clear()
            if self.cut_off:
                # Until a heartbeat gets through again, claiming would only hand us jobs we
                # may not be able to finish.
                await self._wait_any(self._stop_event.wait(), self.app.heartbeat_interval)
                continue
            free = self.free_slots()
            if free <= 0:
                self._parked = True
                try:
                    await self._wait_any(self._slot_freed.wait(), None)
                finally:
                    self._parked = False
                continue
            queues = self._open_queues()
            jobs: list[ClaimedJob] = []
            if self._skip_claim:
                self._skip_claim = False  # a fused claim found nothing an instant ago
            elif queues:
                sent = time.monotonic()
                try:
                    jobs = await within(max(self.app.lease, 5.0), self._claim(queues, free))
                except Exception as exc:  # noqa: BLE001 - the store is down: back off, retry
                    log.warning("claim failed (%r); retrying", exc, extra={"worker_id": self.id})
                    await self.emit_worker_event("worker:error", exc)
                    await self._wait_any(
                        self._stop_event.wait(), min(self.config.poll_interval, 1.0)
                    )
                    continue
                if jobs and time.monotonic() - sent > self.app.lease / 2:
                    await self._hand_back_late(jobs, time.monotonic() - sent)
                    continue
            handed_back = False
            for job in jobs:
                if self._over_limit(job):
                    # One claim can overshoot a task's or queue's own limit: hand it back.
                    await self.backend.release(job.id, job.fence, self.app.backend_now())
                    handed_back = True
                else:
                    self._start(job)
            if jobs:
                idle_claims = 0
                if len(jobs) < free and not handed_back and self._fusable:
                    # Fewer than asked for: the queues are drained for now, so wait (the
                    # backend's wait looks for ready jobs first) instead of sending a claim
                    # that would find nothing: one round trip less per job on a quiet queue.
                    await self._wait_for_work(queues, limited=False)
                continue
            if self.config.burst and not self.active and not await self._scheduled_pending():
                return
            idle_claims += 1
            limited = len(queues) < len(self.queues) or bool(self._excluded_tasks())
            if idle_claims > 1 and (not queues or self.active):
                # Work may exist that we cannot take (limits): wait for a slot or a tick.
                await self._wait_any(self._slot_freed.wait(), self.config.poll_interval)
            else:
                await self._wait_for_work(queues, limited)

    async def _wait_for_work(self, queues: list[str], limited: bool) -> None:
        """Until a job may be ready for us, a slot frees up (``limited``: a capped queue or task
        reopens as soon as one of our jobs finishes), the worker stops or a poll interval."""
        assert self._slot_freed is not None
        await self._wait_any(
            self.backend.wait_for_jobs(queues or list(self.queues), self.config.poll_interval),
            # A wait stuck on a silently dead connection must not stall the worker.
            self.config.poll_interval * 2 + 1.0,
            self._slot_freed.wait() if limited and self.active else None,
        )

    async def _hand_back_late(self, jobs: list[ClaimedJob], took: float) -> None:
        """A claim whose reply we read more than half a lease after sending it (a handler
        blocked the loop meanwhile): the leases may have run out and the jobs gone to another
        worker, so hand them back (fenced: a no-op for any that moved on) instead of running
        them late, and without waiting for their leases to expire."""
        log.warning(
            "a claim took %.1fs (lease %.1fs); handing its %d job(s) back",
            took,
            self.app.lease,
            len(jobs),
            extra={"worker_id": self.id},
        )
        for job in jobs:
            with contextlib.suppress(Exception):
                await self.backend.release(job.id, job.fence, self.app.backend_now())

    async def _scheduled_pending(self) -> bool:
        """Whether jobs of the consumed queues wait for a run-at (burst mode keeps going)."""
        if not self.config.burst_waits_for_scheduled:
            return False
        rows = await self.backend.count_jobs()
        return any(r.state is JobState.SCHEDULED and r.queue in self.queues for r in rows)

    async def _wait_any(self, coro: Any, timeout: float | None, also: Any = None) -> None:
        """Await ``coro`` (and ``also``, if given) until the first finishes, the worker stops
        or ``timeout`` passes."""
        assert self._stop_event is not None
        futures = {asyncio.ensure_future(coro), asyncio.ensure_future(self._stop_event.wait())}
        if also is not None:
            futures.add(asyncio.ensure_future(also))
        try:
            await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancel the losers without waiting for them: a backend wait that swallows the
            # cancellation (asyncio.wait_for can, before 3.12) must not hold the loop up.
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                    self._stray.add(fut)
                    fut.add_done_callback(self._forget_stray)
                elif not fut.cancelled():
                    fut.exception()

    def _forget_stray(self, fut: asyncio.Future[Any]) -> None:
        self._stray.discard(fut)
        if not fut.cancelled():
            fut.exception()

    def _start(self, job: ClaimedJob) -> None:
        stale = self.active.get(job.id)
        if stale is not None:
            # We claimed a job we still run: its lease was recovered (a stalled loop, a skewed
            # injected clock) before a heartbeat told us. The older attempt lost; stop it.
            log.warning(
                "lost the lease on job %s (claimed it again); abandoning the older attempt",
                job.id,
                extra={"worker_id": self.id, "job_id": job.id},
            )
            self.stats.lease_lost += 1
            self.runner.interrupt(stale, "lease_lost")
        active = ActiveJob(job=job, started=time.monotonic())
        self.active[job.id] = active
        self.per_task[job.task] = self.per_task.get(job.task, 0) + 1
        self.per_queue[job.queue] = self.per_queue.get(job.queue, 0) + 1
        # Unnamed: naming a task costs more than the rest of starting it (``self.active`` maps
        # job ids to their tasks for anyone who needs to find one).
        active.task = asyncio.create_task(self._run_one(active))

    async def _run_one(self, active: ActiveJob) -> None:
        try:
            await self.runner.run(active)
        finally:
            job = active.job
            if self.active.get(job.id) is active:  # not replaced by a newer attempt
                del self.active[job.id]
            self.per_task[job.task] -= 1
            self.per_queue[job.queue] -= 1
            if self._slot_freed is not None and not active.extra.get("refilled"):
                self._slot_freed.set()

    def slot_freed(self) -> None:
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then hand the rest back."""
        if not self.active:
            return
        pending = [a.task for a in self.active.values() if a.task is not None]
        if self._retiring and pending:
            log.info(
                "retiring: finishing %d running job(s) with no time limit",
                len(pending),
                extra={"worker_id": self.id},
            )
            pending = await self._finish_while_retiring(pending)
        if not self._forced and pending:
            log.info(
                "draining %d running job(s) for up to %.0fs",
                len(pending),
                self.config.grace,
                extra={"worker_id": self.id},
            )
            await asyncio.wait(pending, timeout=self.config.grace)
        for active in list(self.active.values()):
            self.runner.interrupt(active, "shutdown")
        remaining = [a.task for a in self.active.values() if a.task is not None]
        if remaining:
            await asyncio.wait(remaining, timeout=10)

    async def _finish_while_retiring(
        self, pending: list[asyncio.Task[Any]]
    ) -> list[asyncio.Task[Any]]:
        """Wait for ``pending`` until all are done or the retirement ends (a stop signal);
        the ones still running."""
        ended = asyncio.ensure_future(self._retirement_ended.wait())
        try:
            while pending and self._retiring:
                await asyncio.wait([*pending, ended], return_when=asyncio.FIRST_COMPLETED)
                pending = [t for t in pending if not t.done()]
        finally:
            ended.cancel()
        return pending

    # -- background loops ---------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        assert self._stop_event is not None
        interval = self.app.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            sent = time.monotonic()
            try:
                # A beat stuck on a dead connection counts as failed; it must not hang the loop.
                if await within(max(self.app.lease / 2, interval), self.heartbeat()):
                    # The leases were extended when the beat was sent, not when a loop that a
                    # handler blocked got round to reading the reply.
                    self._last_beat_ok = sent
            except TimeoutError:
                log.warning("heartbeat timed out", extra={"worker_id": self.id})
            self._check_cut_off()

    @property
    def cut_off(self) -> bool:
        """True while no heartbeat has got through for more than half a lease."""
        return time.monotonic() - self._last_beat_ok > self.app.lease / 2

    def _check_cut_off(self) -> None:
        """Cut off from the store for over half a lease: our leases may already have been
        recovered and handed to other workers, so stop running those jobs (they run again
        elsewhere) instead of overlapping with the newer attempts."""
        if not self.cut_off or not self.active:
            return
        log.error(
            "no heartbeat reached the store for %.1fs (lease %.1fs): abandoning %d running "
            "job(s); they will be recovered and run again",
            time.monotonic() - self._last_beat_ok,
            self.app.lease,
            len(self.active),
            extra={"worker_id": self.id},
        )
        for active in list(self.active.values()):
            self.runner.interrupt(active, "lease_lost")

    async def heartbeat(self) -> bool:
        """Extend every held lease, learn cancellations, refresh the registry entry."""
        held = dict(self.active)
        leases = [(a.job.id, a.job.fence) for a in held.values()]
        try:
            if leases:
                statuses = await self.backend.heartbeat(
                    self.id, leases, self.app.lease, self.app.backend_now()
                )
                for status in statuses:
                    active = held.get(status.id)
                    if active is None or active.finishing:
                        # Finished (or finishing) since the snapshot: its own outcome write,
                        # not another worker, took the lease.
                        continue
                    if not status.held:
                        log.warning(
                            "lost the lease on job %s; abandoning it",
                            status.id,
                            extra={"worker_id": self.id, "job_id": status.id},
                        )
                        self.stats.lease_lost += 1
                        self.runner.interrupt(active, "lease_lost")
                    elif status.cancel_requested and active.stop_reason is None:
                        record = await self.backend.get_job(status.id)
                        reason = record.cancel_reason if record is not None else None
                        self.runner.interrupt(active, "cancel", reason)
            await self.backend.register_worker(self.info())
        except Exception as exc:  # noqa: BLE001 - keep beating; leases cover the gap
            log.warning("heartbeat failed: %s", exc, extra={"worker_id": self.id})
            await self.emit_worker_event("worker:error", exc)
            return False
        # Stored throughput counters for the dashboard (never fails the beat).
        await flush_throughput(self.backend, self.stats)
        return True

    async def _maintenance_loop(self) -> None:
        # Recover at start-up (a restarted worker picks up its predecessor's jobs at once),
        # then every half lease (at most 5 s): a dead worker's jobs wait at most
        # lease + interval.
        interval = self.config.maintenance_interval or min(5.0, self.app.lease / 2)
        last_retention = time.monotonic()
        while True:
            await self.recover()
            if time.monotonic() - last_retention >= self.config.retention_interval:
                last_retention = time.monotonic()
                await self.prune()
            await asyncio.sleep(interval)

    async def recover(self) -> int:
        """Recover jobs whose lease expired (their worker died); returns how many."""
        try:
            recovered = await self.backend.recover_expired(
                recovery_stall_limit(self.app.tasks, self.app.max_stalls),  # issue 19
                self.app.backend_now(),
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("stall recovery failed: %s", exc, extra={"worker_id": self.id})
            return 0
        for job in recovered:
            failed = job.state is not JobState.QUEUED
            log.warning(
                "job %s (%s) stalled %d time(s): %s",
                job.id,
                job.task,
                job.stalls,
                "recovered" if not failed else job.state.value,
                extra={
                    "worker_id": self.id,
                    "job_id": job.id,
                    "task": job.task,
                    "attempt": job.attempt,
                },
            )
            await self.runner.emit_stalled(job)
        return len(recovered)

    async def prune(self) -> int:
        """Delete finished jobs older than the retention policy allows (never failed ones
        unless the policy says so)."""
        retention = self.app.retention
        now = self.app.now()
        total = 0
        rules: Sequence[tuple[JobState, float | None]] = (
            (JobState.COMPLETED, retention.completed),
            (JobState.CANCELLED, retention.cancelled),
            (JobState.EXPIRED, retention.expired),
            (JobState.FAILED, retention.failed),
        )
        for state, keep in rules:
            if keep is None:
                continue
            flt = JobFilter(states=(state,), finished_before=now - keep)
            try:
                while True:
                    n = await self.backend.delete_jobs(flt, limit=500)
                    total += n
                    if n < 500:
                        break
            except Exception as exc:  # noqa: BLE001
                log.warning("retention pruning failed: %s", exc, extra={"worker_id": self.id})
                break
        try:  # issue 19: count limits (worker/retention.py)
            total += await prune_by_count(self.backend, retention)
        except Exception as exc:  # noqa: BLE001
            log.warning("retention pruning failed: %s", exc, extra={"worker_id": self.id})
        with contextlib.suppress(Exception):
            await self.backend.prune_workers(now - 10 * self.app.lease)
        return total
