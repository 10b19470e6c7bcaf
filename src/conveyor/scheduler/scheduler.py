"""The scheduler loop and the runtime schedule manager.

Safe in every worker process at once: the job for a tick has an id derived from the schedule's
name and the tick (and the matching idempotency key), so any number of schedulers enqueue it
once; each schedule's state (cursor, pause flag, history) is one value updated by
compare-and-set, so concurrent schedulers never lose each other's updates. No lock is trusted
for correctness.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from conveyor.backends.base import Backend
from conveyor.backends.capabilities import KeyValueStore, require
from conveyor.core.options import EnqueueOptions
from conveyor.core.portal import blocking
from conveyor.core.ports import AppPort
from conveyor.core.serialization import encode_call
from conveyor.core.task import JobSpec
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, ScheduleNotFoundError
from conveyor.scheduler.spec import ScheduleSpec, ScheduleState
from conveyor.scheduler.timing import load_zone, next_tick, ticks_between

if TYPE_CHECKING:
    from conveyor.core.task import Task
    from conveyor.domain.retry import RetryPolicy


class SchedulerHost(AppPort, Protocol):
    """What schedules need of the app: its tasks, defaults and how it builds a job."""

    tasks: dict[str, Task[Any, Any]]
    default_queue: str
    retry: RetryPolicy

    def build_job(self, spec: JobSpec[Any], options: EnqueueOptions, now: float) -> NewJob:
        """Resolve a call's options against task, queue and app defaults."""
        ...


class ScheduleStore(KeyValueStore, Backend):
    """A backend with the key-value capability (the type schedules work with)."""


NAMESPACE = "schedules"
BUSY_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.SCHEDULED, JobState.BLOCKED)
log = logging.getLogger("conveyor.scheduler")


def _encode(state: ScheduleState) -> bytes:
    return json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes) -> ScheduleState:
    return ScheduleState.from_json(json.loads(raw))


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as ``conveyor schedules list`` shows it."""

    name: str
    task: str
    cron: str | None
    every: float | None
    timezone: str
    paused: bool
    next_run: float | None
    last_tick: float | None
    last_job_id: str | None
    last_state: str | None
    from_code: bool
    spec: ScheduleSpec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "paused": self.paused,
            "next_run": self.next_run,
            "last_tick": self.last_tick,
            "last_job_id": self.last_job_id,
            "last_state": self.last_state,
            "from_code": self.from_code,
            "overlap": self.spec.overlap,
            "on_missed": self.spec.on_missed,
        }


class Schedules:
    """Runtime management (``app.schedules``) and the tick engine the scheduler loop drives.

    Every coroutine method but :meth:`run` (a loop stopped through an :class:`asyncio.Event`;
    ``conveyor scheduler`` and workers run it) has a blocking ``*_sync`` twin."""

    def __init__(self, app: SchedulerHost) -> None:
        self.app = app
        self.declared: dict[str, ScheduleSpec] = {}

    # -- declaring --------------------------------------------------------------------------
    def declare(self, spec: ScheduleSpec) -> ScheduleSpec:
        """Register a schedule declared in code (synced to the store by :meth:`sync`)."""
        if spec.name in self.declared:
            raise ConfigurationError(f"a schedule named {spec.name!r} is already declared")
        self.declared[spec.name] = spec
        return spec

    async def _backend(self) -> ScheduleStore:
        backend = await self.app.backend()
        require(backend, KeyValueStore, "schedules")
        return cast(ScheduleStore, backend)

    async def _load(self, name: str) -> tuple[bytes, ScheduleState]:
        backend = await self._backend()
        raw = await backend.kv_get(NAMESPACE, name)
        if raw is None:
            raise ScheduleNotFoundError(name)
        return raw, _decode(raw)

    async def _mutate(self, name: str, change: Any) -> ScheduleState:
        """Apply ``change(state)`` with compare-and-set, retrying on concurrent updates."""
        backend = await self._backend()
        while True:
            raw, state = await self._load(name)
            change(state)
            if await backend.kv_swap(NAMESPACE, name, raw, _encode(state)):
                return state

    async def sync(self) -> None:
        """Write code-declared schedules to the store, keeping pause state, cursor, history."""
        backend = await self._backend()
        now = self.app.now()
        for name, spec in self.declared.items():
            while True:
                raw = await backend.kv_get(NAMESPACE, name)
                if raw is None:
                    state = ScheduleState(spec=spec, cursor=now, from_code=True)
                else:
                    state = _decode(raw)
                    if state.spec == spec and state.from_code:
                        break
                    state.spec, state.from_code = spec, True
                if await backend.kv_swap(NAMESPACE, name, raw, _encode(state)):
                    break

    # -- management -------------------------------------------------------------------------
    async def add(self, spec: ScheduleSpec) -> None:
        """Create a schedule at runtime (kept in the store only)."""
        backend = await self._backend()
        state = ScheduleState(spec=spec, cursor=self.app.now(), from_code=False)
        if not await backend.kv_swap(NAMESPACE, spec.name, None, _encode(state)):
            raise ConfigurationError(f"a schedule named {spec.name!r} already exists")

    async def list(self) -> list[ScheduleInfo]:
        """Every stored schedule, by name, with its next run and its last job's state."""
        backend = await self._backend()
        rows = await backend.kv_list(NAMESPACE)
        out = []
        for name in sorted(rows):
            state = _decode(rows[name])
            out.append(await self._info(backend, state))
        return out

    async def get(self, name: str) -> ScheduleInfo:
        """One schedule; raises :class:`ScheduleNotFoundError` for an unknown name."""
        _, state = await self._load(name)
        return await self._info(await self._backend(), state)

    async def _info(self, backend: ScheduleStore, state: ScheduleState) -> ScheduleInfo:
        spec = state.spec
        last_state = None
        if state.last_job_id is not None:
            record = await backend.get_job(state.last_job_id)
            last_state = record.state.value if record is not None else "pruned"
        upcoming = (
            None
            if state.paused
            else next_tick(
                cron=spec.cron,
                every=spec.every,
                zone=load_zone(spec.timezone),
                anchor=spec.anchor,
                after=max(state.cursor or 0.0, self.app.now()),
                start=spec.start,
                end=spec.end,
            )
        )
        return ScheduleInfo(
            spec.name,
            spec.task,
            spec.cron,
            spec.every,
            spec.timezone,
            state.paused,
            upcoming,
            state.last_tick,
            state.last_job_id,
            last_state,
            state.from_code,
            spec,
        )

    async def pause(self, name: str) -> None:
        """Stop the schedule from firing (its cursor and history stay)."""
        await self._mutate(name, lambda s: setattr(s, "paused", True))

    async def resume(self, name: str) -> None:
        """Resume; ticks that passed while paused are not run."""
        now = self.app.now()

        def change(state: ScheduleState) -> None:
            state.paused = False
            state.cursor = max(state.cursor or 0.0, now)

        await self._mutate(name, change)

    async def remove(self, name: str) -> None:
        """Delete a schedule (one declared in code comes back at the next start-up sync)."""
        backend = await self._backend()
        raw, _ = await self._load(name)
        if not await backend.kv_swap(NAMESPACE, name, raw, None):
            await self.remove(name)

    async def update(self, /, name: str, **changes: Any) -> ScheduleSpec:
        """Change a schedule's fields (validated). Schedules declared in code get their code
        definition back at the next start-up sync."""
        _, state = await self._load(name)
        spec = state.spec.updated(**changes)
        await self._mutate(name, lambda s: setattr(s, "spec", spec))
        return spec

    async def trigger(self, name: str) -> str:
        """Enqueue a run now without moving the cadence; returns the job id."""
        _, state = await self._load(name)
        now = self.app.now()
        job_id = new_job_id()
        await self._enqueue(state.spec, now, job_id, key=None, run_at=None)

        def change(s: ScheduleState) -> None:
            s.record(now, "triggered", job_id, now)
            s.last_job_id, s.last_tick = job_id, now

        await self._mutate(name, change)
        return job_id

    async def history(self, name: str) -> builtins.list[dict[str, Any]]:
        """Each handled tick: its job id and outcome, with the job's start, end, state, error."""
        _, state = await self._load(name)
        backend = await self._backend()
        out = []
        for entry in reversed(state.history):
            row = dict(entry)
            job_id = entry.get("job_id")
            record = await backend.get_job(job_id) if job_id else None
            row.update(
                state=record.state.value if record else ("pruned" if job_id else None),
                started_at=record.started_at if record else None,
                finished_at=record.finished_at if record else None,
                error=record.error.to_dict() if record and record.error else None,
            )
            out.append(row)
        return out

    # -- the engine -------------------------------------------------------------------------
    async def _enqueue(
        self, spec: ScheduleSpec, tick: float, job_id: str, key: str | None, run_at: float | None
    ) -> None:
        task = self.app.tasks.get(spec.task)
        backend = await self._backend()
        if task is not None:
            options = EnqueueOptions.build(
                job_id=job_id, queue=spec.queue, priority=spec.priority, idempotency_key=key
            )
            job = self.app.build_job(
                JobSpec(task, spec.args, spec.kwargs, options), options, self.app.now()
            )
            job = _with_run_at(job, run_at, spec.name, tick)
        else:
            job = NewJob(
                id=job_id,
                task=spec.task,
                queue=spec.queue or self.app.default_queue,
                payload=encode_call(self.app.serializer, spec.args, spec.kwargs),
                priority=spec.priority or 0,
                run_at=run_at,
                idempotency_key=key,
                max_attempts=self.app.retry.attempts,
                metadata={"schedule": spec.name, "tick": tick},
            )
        await backend.enqueue([job], self.app.backend_now())

    async def tick(self, now: float | None = None) -> int:
        """Handle every due tick of every schedule once; returns how many jobs were enqueued."""
        backend = await self._backend()
        now = self.app.now() if now is None else now
        total = 0
        for name in sorted(await backend.kv_list(NAMESPACE)):
            try:
                total += await self._tick_one(backend, name, now)
            except Exception as exc:
                log.error("schedule %s: tick failed: %s", name, exc, exc_info=exc)
        return total

    async def _tick_one(self, backend: ScheduleStore, name: str, now: float) -> int:
        while True:
            raw = await backend.kv_get(NAMESPACE, name)
            if raw is None:
                return 0
            state = _decode(raw)
            spec = state.spec
            if state.paused:
                return 0
            after = state.cursor if state.cursor is not None else now
            due = ticks_between(
                cron=spec.cron,
                every=spec.every,
                zone=load_zone(spec.timezone),
                anchor=spec.anchor,
                after=after,
                until=now,
                start=spec.start,
                end=spec.end,
            )
            if not due:
                if state.cursor is None:
                    state.cursor = now
                    await backend.kv_swap(NAMESPACE, name, raw, _encode(state))
                return 0
            if spec.on_missed == "catch_up":
                limit = spec.catch_up_limit or len(due)
                run, missed = due[-limit:], due[:-limit]
            else:
                latest = due[-1]
                fresh = now - latest <= max(spec.misfire_grace, 0.0)
                run, missed = ([latest], due[:-1]) if fresh else ([], due)
            busy = False
            if run and not spec.overlap and state.last_job_id is not None:
                record = await backend.get_job(state.last_job_id)
                busy = record is not None and record.state in BUSY_STATES
            for tick in missed:
                state.record(tick, "missed", None, now)
            enqueued = 0
            for tick in run:
                if busy:
                    state.record(tick, "skipped_overlap", None, now)
                    continue
                job_id = spec.job_id(tick)
                run_at = tick + spec.jitter_for(tick) if spec.jitter else None
                await self._enqueue(spec, tick, job_id, f"schedule:{spec.name}:{tick!r}", run_at)
                state.record(tick, "enqueued", job_id, now)
                state.last_job_id, state.last_tick = job_id, tick
                enqueued += 1
            state.cursor = due[-1]
            if await backend.kv_swap(NAMESPACE, name, raw, _encode(state)):
                if missed:
                    log.warning(
                        "schedule %s: %d missed tick(s) skipped (policy %s); %d run",
                        name,
                        len(missed),
                        spec.on_missed,
                        enqueued,
                    )
                return enqueued
            # Another scheduler moved this schedule on; look again (the enqueues were
            # idempotent, so nothing ran twice).

    async def next_due(self, now: float) -> float | None:
        """The earliest upcoming tick across schedules (for the loop's sleep)."""
        backend = await self._backend()
        best: float | None = None
        for raw in (await backend.kv_list(NAMESPACE)).values():
            state = _decode(raw)
            if state.paused:
                continue
            spec = state.spec
            tick = next_tick(
                cron=spec.cron,
                every=spec.every,
                zone=load_zone(spec.timezone),
                anchor=spec.anchor,
                after=max(state.cursor or now, now),
                start=spec.start,
                end=spec.end,
            )
            if tick is not None and (best is None or tick < best):
                best = tick
        return best

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        """Sync, then handle ticks until ``stop`` is set. Store outages are retried."""
        synced = False
        while not stop.is_set():
            upcoming: float | None = None
            try:
                if not synced:
                    await self.sync()
                    synced = True
                await self.tick()
                upcoming = await self.next_due(self.app.now())
            except NotImplementedError as exc:
                if self.declared:
                    log.error("schedules cannot run: %s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - the store may be down: retry
                log.warning("scheduler pass failed: %s", exc)
            now = self.app.now()
            wait = (
                poll_interval if upcoming is None else min(max(upcoming - now, 0.01), poll_interval)
            )
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                pass

    # -- blocking twins (same arguments and results) -----------------------------------------
    sync_sync = blocking(sync)
    add_sync = blocking(add)
    list_sync = blocking(list)
    get_sync = blocking(get)
    pause_sync = blocking(pause)
    resume_sync = blocking(resume)
    remove_sync = blocking(remove)
    update_sync = blocking(update)
    trigger_sync = blocking(trigger)
    history_sync = blocking(history)
    tick_sync = blocking(tick)
    next_due_sync = blocking(next_due)


def _with_run_at(job: NewJob, run_at: float | None, name: str, tick: float) -> NewJob:
    from dataclasses import replace

    meta = {**job.metadata, "schedule": name, "tick": tick}
    return replace(
        job, run_at=run_at if run_at is not None and math.isfinite(run_at) else None, metadata=meta
    )
