"""Inspection and the dead-letter manager: read-side views over any backend.

``app.inspect`` answers "what is happening": counts per queue and task, a job by id with its
timeline, jobs by state with paging, live workers with their stats, per-task duration
percentiles; and renders them in seed 000's protocol shapes. ``app.dead_letters`` lists, retries
and purges failed jobs.
"""

from __future__ import annotations

import builtins
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends import capabilities
from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad
from conveyor.backends.common import RETRYABLE_STATES
from conveyor.core.handle import JobInfo, decode_record
from conveyor.core.options import QueueConfig
from conveyor.core.portal import blocking
from conveyor.core.ports import AppPort
from conveyor.core.versions import PayloadVersions, VersionStatus, version_status
from conveyor.domain.job import JobFilter, JobRecord, WorkerInfo
from conveyor.domain.priority import priority_name
from conveyor.domain.states import SEED000_STATUS, JobState
from conveyor.errors import InvalidStateError, JobNotFoundError, KeyHeldError

if TYPE_CHECKING:
    from conveyor.core.task import Task
    from conveyor.domain.retry import RetryPolicy


class InspectHost(AppPort, Protocol):
    """What inspection and the dead-letter manager need of the app."""

    tasks: dict[str, Task[Any, Any]]
    queues: dict[str, QueueConfig]
    lease: float
    default_queue: str

    def retry_policy_for(self, task: Task[Any, Any] | None, queue: str) -> RetryPolicy:
        """The retry policy a job of ``task`` on ``queue`` runs under."""
        ...


def _iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    return (
        None
        if ts is None
        else datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
    )


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Counts:
    """Job counts by state, per queue and per task."""

    by_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    by_task: dict[str, dict[str, int]] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"queues": self.by_queue, "tasks": self.by_task, "total": self.total}


class Inspector:
    """Read-side API (``app.inspect``). Every coroutine method has a blocking ``*_sync`` twin."""

    def __init__(self, app: InspectHost) -> None:
        self.app = app

    async def job(self, job_id: str) -> JobInfo | None:
        """A job by id, decoded, or ``None``."""
        backend = await self.app.backend()
        record = await backend.get_job(job_id)
        return None if record is None else decode_record(self.app.serializer, record)

    async def jobs(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        error_code: str | None = None,
        limit: int = 50,
        offset: int = 0,
        summary: bool = False,
    ) -> list[JobInfo]:
        """Jobs matching the filters, newest first, ``limit`` per page from ``offset``.

        ``summary``: leave arguments, results, progress, logs, the error history and the
        traceback in the store (listings; :meth:`job` reads one job in full).
        """
        states = None if state is None else (JobState(state),)
        flt = JobFilter(states=states, queue=queue, task=task, error_code=error_code)
        backend = await self.app.backend()
        read = backend.list_summaries if summary else backend.list_jobs
        records = await read(flt, limit=limit, offset=offset)
        return [decode_record(self.app.serializer, r) for r in records]

    async def damaged(self, *, limit: int = 20) -> list[JobInfo]:
        """Jobs whose stored state is unreadable (shown as ``unknown``), newest first, as
        summaries: what ``conveyor stats`` points at when a count lands in ``unknown``."""
        return await self.jobs(state=JobState.UNKNOWN, limit=limit, summary=True)

    async def counts(self) -> Counts:
        """Counts by state per queue and per task (every state present, zeros included)."""
        backend = await self.app.backend()
        rows = await backend.count_jobs()
        states = [s.value for s in JobState]
        by_queue: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(states, 0))
        by_task: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(states, 0))
        total = dict.fromkeys(states, 0)
        for row in rows:
            by_queue[row.queue][row.state.value] += row.count
            by_task[row.task][row.state.value] += row.count
            total[row.state.value] += row.count
        for name in self.app.queues:
            by_queue[name]
        return Counts(dict(by_queue), dict(by_task), total)

    async def load(self, queues: builtins.list[str] | None = None) -> builtins.list[QueueLoad]:
        """Per queue: jobs ready to start, jobs running, and the age in seconds of the
        longest-waiting ready job (the signals an autoscaler reads; ``conveyor load``).

        ``queues`` defaults to the default queue, every declared queue and every other queue
        that has ready or running jobs."""
        backend = await self.app.backend()
        capabilities.require(backend, ReportsLoad, "queue load")
        assert isinstance(backend, ReportsLoad)
        now = self.app.backend_now()
        if queues is not None:
            return await backend.queue_load(queues, now)
        busy = await backend.queue_load(None, now)
        declared = [self.app.default_queue, *self.app.queues]
        known = {x.queue for x in busy}
        extra = [q for q in dict.fromkeys(declared) if q not in known]
        idle = await backend.queue_load(extra, now) if extra else []
        order = {q: i for i, q in enumerate(dict.fromkeys(declared))}
        return sorted([*busy, *idle], key=lambda x: (order.get(x.queue, len(order)), x.queue))

    def load_sync(self, queues: builtins.list[str] | None = None) -> builtins.list[QueueLoad]:
        """Blocking :meth:`load`."""
        return self.app.portal.run(self.load(queues))

    async def workers(self, *, include_stale: bool = False) -> list[WorkerInfo]:
        """Registered workers; by default only those that heartbeated within three leases."""
        backend = await self.app.backend()
        workers = await backend.list_workers()
        if include_stale:
            return workers
        cutoff = self.app.now() - 3 * self.app.lease
        return [w for w in workers if w.heartbeat_at >= cutoff]

    async def task_metrics(self, *, sample: int = 1000) -> dict[str, dict[str, Any]]:
        """Per task: success/failure/retry/dead counters (summed over live workers) and
        duration percentiles (p50/p95/p99, seconds) over its last ``sample`` completed jobs."""
        metrics: dict[str, dict[str, Any]] = {}
        for worker in await self.workers(include_stale=True):
            tasks = worker.stats.get("tasks")
            for name, counters in (tasks if isinstance(tasks, dict) else {}).items():
                if not isinstance(counters, dict):
                    continue
                entry = metrics.setdefault(
                    name, {"succeeded": 0, "failed": 0, "retried": 0, "dead": 0}
                )
                for key in ("succeeded", "failed", "retried", "dead"):
                    entry[key] += _count(counters.get(key))
        backend = await self.app.backend()
        names = set(metrics) | {row.task for row in await backend.count_jobs()}
        for name in sorted(names):
            records = await backend.list_summaries(
                JobFilter(states=(JobState.COMPLETED,), task=name), limit=sample
            )
            durations = sorted(
                r.finished_at - r.started_at
                for r in records
                if r.finished_at is not None and r.started_at is not None
            )
            entry = metrics.setdefault(name, {"succeeded": 0, "failed": 0, "retried": 0, "dead": 0})
            entry["sampled"] = len(durations)
            entry["p50"] = percentile(durations, 50)
            entry["p95"] = percentile(durations, 95)
            entry["p99"] = percentile(durations, 99)
        return metrics

    async def versions(self, task: str) -> VersionStatus:
        """Unfinished jobs of ``task`` by state and payload version (issue 19): when no job
        older than some version waits any more, ``since`` can be raised to it and the older
        migrations deleted (``status.safe_since``)."""
        known = self.app.tasks.get(task)
        versions = known.config.versions if known is not None else PayloadVersions()
        return await version_status(await self.app.backend(), task, versions)

    # -- blocking twins (same arguments and results) -----------------------------------------
    job_sync = blocking(job)
    jobs_sync = blocking(jobs)
    damaged_sync = blocking(damaged)
    versions_sync = blocking(versions)
    counts_sync = blocking(counts)
    workers_sync = blocking(workers)
    task_metrics_sync = blocking(task_metrics)

    # -- seed 000 protocol shapes ------------------------------------------------------------
    def as_seed000_task(self, info: JobInfo) -> dict[str, Any]:
        """Render a job as seed 000's ``Task``."""
        r = info.record
        task = self.app.tasks.get(r.task)
        retry = self.app.retry_policy_for(task, r.queue)
        out: dict[str, Any] = {
            "id": r.id,
            "type": r.task,
            "payload": {"args": info.args, "kwargs": info.kwargs},
            "queue": r.queue,
            "priority": priority_name(r.priority),
            "attempts": r.attempts,
            "status": "timeout"
            if r.error is not None and r.error.code == "timeout" and r.state is JobState.FAILED
            else SEED000_STATUS[r.state],
            "metadata": {**r.metadata, "priorityValue": r.priority, "traceId": r.trace_id},
            "retryPolicy": retry.to_seed000() | {"maxRetries": max(r.max_attempts - 1, 0)},
        }
        if r.timeout is not None:
            out["timeoutMs"] = int(r.timeout * 1000)
        if r.run_at > r.created_at:
            out["scheduledAt"] = _iso(r.run_at)
        return out

    def as_seed000_result(self, info: JobInfo) -> dict[str, Any]:
        """Render a job's latest attempt as seed 000's ``TaskExecutionResult``."""
        r = info.record
        status = self.as_seed000_task(info)["status"]
        out: dict[str, Any] = {
            "taskId": r.id,
            "status": status,
            "startedAt": _iso(r.started_at or r.created_at),
            "attempt": max(r.attempts, 1),
            "willRetry": r.state in (JobState.SCHEDULED, JobState.QUEUED) and r.attempts > 0,
        }
        if r.state is JobState.COMPLETED:
            out["result"] = info.result
        if r.error is not None and r.state is not JobState.COMPLETED:
            out["error"] = {"code": r.error.code, "type": r.error.type, "message": r.error.message}
        if info.duration is not None:
            out["durationMs"] = int(info.duration * 1000)
        if r.finished_at is not None:
            out["completedAt"] = _iso(r.finished_at)
        return out

    @staticmethod
    def as_seed000_worker(worker: WorkerInfo) -> dict[str, Any]:
        """Render a worker's stats as seed 000's ``WorkerStats``."""
        stats = worker.stats
        out: dict[str, Any] = {
            "workerName": worker.id,
            "totalProcessed": _count(stats.get("processed")),
            "succeeded": _count(stats.get("succeeded")),
            "failed": _count(stats.get("failed")),
            "active": _count(stats.get("active")),
            "uptimeMs": int(max(worker.heartbeat_at - worker.started_at, 0) * 1000),
            "queues": {
                name: _camel_counters(counters)
                for name, counters in (stats.get("queues") or {}).items()
                if isinstance(counters, dict)
            },
        }
        if isinstance(stats.get("avg_duration"), int | float):
            out["avgExecutionMs"] = float(stats["avg_duration"]) * 1000
        if stats.get("damage"):
            out["damage"] = list(stats["damage"])
        return out


def _count(value: Any) -> int:
    """A counter from a worker's stats, 0 when missing or unreadable (a damaged entry)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _camel_counters(counters: dict[str, Any]) -> dict[str, Any]:
    """One queue's counters in the seed's camelCase (``avgExecutionMs``, not ``avg_duration``)."""
    out: dict[str, Any] = {
        key: _count(counters.get(key))
        for key in ("processed", "succeeded", "failed", "retried", "dead")
    }
    avg = counters.get("avg_duration")
    if isinstance(avg, int | float):
        out["avgExecutionMs"] = float(avg) * 1000
    return out


class DeadLetters:
    """The dead-letter set (``app.dead_letters``): jobs in ``failed``, kept until acted on.

    Every coroutine method has a blocking ``*_sync`` twin."""

    def __init__(self, app: InspectHost) -> None:
        self.app = app

    @staticmethod
    def _filter(
        task: str | None,
        queue: str | None,
        error_code: str | None,
        older_than: float | None,
        now: float,
        states: tuple[JobState, ...] = (JobState.FAILED,),
    ) -> JobFilter:
        return JobFilter(
            states=states,
            task=task,
            queue=queue,
            error_code=error_code,
            finished_before=None if older_than is None else now - older_than,
        )

    async def list(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        error_code: str | None = None,
        older_than: float | None = None,
        limit: int = 50,
        offset: int = 0,
        summary: bool = False,
    ) -> list[JobInfo]:
        """Failed jobs, newest first, with filters (``older_than`` in seconds).

        ``queue`` matches a job's own queue or the dead-letter set it joined
        (``app.queue(..., dead_letter=...)``). ``summary``: leave arguments, results, logs,
        the error history and the traceback in the store (listings).
        """
        backend = await self.app.backend()
        read = backend.list_summaries if summary else backend.list_jobs
        now = self.app.now()
        origins = self._origins(queue)
        if not origins:
            flt = self._filter(task, queue, error_code, older_than, now)
            records = await read(flt, limit=limit, offset=offset)
        else:
            found: dict[str, JobRecord] = {}
            for name in (queue, *origins):
                flt = self._filter(task, name, error_code, older_than, now)
                for r in await read(flt, limit=offset + limit):
                    routed = r.dead_letter_queue == queue
                    own = r.queue == queue and r.dead_letter_queue in (None, queue)
                    if routed or own:
                        found[r.id] = r
            records = sorted(found.values(), key=lambda r: r.id, reverse=True)
            records = records[offset : offset + limit]
        return [decode_record(self.app.serializer, r) for r in records]

    def _origins(self, queue: str | None) -> builtins.list[str]:
        """The queues whose dead letters are routed to ``queue``."""
        if queue is None:
            return []
        return [
            q.name for q in self.app.queues.values() if q.dead_letter == queue and q.name != queue
        ]

    async def _matching_ids(
        self, task: str | None, queue: str | None, error_code: str | None, older_than: float | None
    ) -> builtins.list[str]:
        ids: builtins.list[str] = []
        while True:
            page = await self.list(
                task=task,
                queue=queue,
                error_code=error_code,
                older_than=older_than,
                limit=1000,
                offset=len(ids),
                summary=True,
            )
            ids += [j.id for j in page]
            if len(page) < 1000:
                return ids

    async def retry(self, job_id: str, *, reset_attempts: bool = False) -> None:
        """Re-queue one failed, cancelled or expired job.

        Raises :class:`JobNotFoundError` or :class:`InvalidStateError` (nothing changes);
        :class:`KeyHeldError` (an :class:`InvalidStateError` naming the holder) when another
        job holds the job's idempotency key: at most one live job per key.
        """
        backend = await self.app.backend()
        record = await backend.get_job(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        if record.state not in RETRYABLE_STATES:
            raise InvalidStateError(
                f"job {job_id} is {record.state.value}; only failed, cancelled or expired jobs "
                "can be retried"
            )
        done = await backend.retry_jobs(
            JobFilter(ids=(job_id,)), reset_attempts=reset_attempts, now=self.app.backend_now()
        )
        holder = done.refused.get(job_id)
        if holder is not None:
            raise KeyHeldError(job_id, record.idempotency_key or "", holder)
        if not done:
            raise InvalidStateError(f"job {job_id} changed state before it could be retried")

    async def retry_all(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        error_code: str | None = None,
        older_than: float | None = None,
        reset_attempts: bool = False,
        batch: int = 500,
    ) -> int:
        """Re-queue every matching failed job; returns how many. A job whose idempotency key
        another job holds stays where it is (see :meth:`retry`)."""
        backend = await self.app.backend()
        if self._origins(queue):
            chosen = await self._matching_ids(task, queue, error_code, older_than)
            done = 0
            for i in range(0, len(chosen), batch):
                flt = JobFilter(states=(JobState.FAILED,), ids=tuple(chosen[i : i + batch]))
                done += len(
                    await backend.retry_jobs(
                        flt, reset_attempts=reset_attempts, now=self.app.backend_now(), limit=batch
                    )
                )
            return done
        flt = self._filter(task, queue, error_code, older_than, self.app.now())
        total = 0
        while True:
            ids = await backend.retry_jobs(
                flt, reset_attempts=reset_attempts, now=self.app.backend_now(), limit=batch
            )
            total += len(ids)
            if len(ids) < batch:
                return total

    async def purge(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        error_code: str | None = None,
        older_than: float | None = None,
        ids: tuple[str, ...] | None = None,
        batch: int = 500,
    ) -> int:
        """Delete matching failed jobs for good; returns how many."""
        backend = await self.app.backend()
        if ids is None and self._origins(queue):
            ids = tuple(await self._matching_ids(task, queue, error_code, older_than))
            task = queue = error_code = None
            older_than = None
        flt = self._filter(task, queue, error_code, older_than, self.app.now())
        if ids is not None:
            flt = JobFilter(
                states=flt.states,
                task=task,
                queue=queue,
                error_code=error_code,
                finished_before=flt.finished_before,
                ids=ids,
            )
        total = 0
        while True:
            n = await backend.delete_jobs(flt, limit=batch)
            total += n
            if n < batch:
                return total

    # -- blocking twins (same arguments and results) -----------------------------------------
    list_sync = blocking(list)
    retry_sync = blocking(retry)
    retry_all_sync = blocking(retry_all)
    purge_sync = blocking(purge)
