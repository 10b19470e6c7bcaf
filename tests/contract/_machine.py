"""The differential state machine: random interleavings of every transition, run against the
memory reference and one real backend side by side; after every step both must show the same.

After each step: every :class:`JobRecord` of both backends is compared (times to the
millisecond; the fence left out, its values being backend-specific: only its growth is promised,
and that is checked per backend), and, taking turns, the per-queue/task/state counts and the
listing of one state. Every call's return value is compared too. Invariants: a job is in exactly
one state (its listing by state agrees with its record); attempts never drop except through
``release`` or ``retry_jobs(reset_attempts=True)``; fences never drop; a call with a stale or
never-issued fence changes nothing.

Every example gets a fresh store (SQLite file, PostgreSQL schema, Redis prefix) on an event loop
of its own, cleaned up in ``teardown``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from conveyor.backends import Backend, BackendFactory
from conveyor.backends.capabilities import Defers
from conveyor.backends.memory import MemoryFactory
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ErrorInfo, JobFilter, JobRecord, LogEntry, NewJob
from conveyor.domain.states import JobState

from ._support import T, normalized, normalized_claim, open_factory

R = TypeVar("R")

TASKS = ("a", "b", "a.x")
QUEUES = ("q1", "q2")
WORKERS = ("w1", "w2")
UNKNOWN = "f" * 32
BIG = 100_000
#: Error codes whose message is prose the backend writes itself (compared by code and type).
PROSE_CODES = frozenset({"expired", "poison_message"})

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)


@dataclass(frozen=True)
class JobSpec:
    task: str
    queue: str
    payload: bytes
    priority: int
    delay: float | None
    ttl: float | None
    key: str | None
    max_attempts: int
    blocked: bool
    reuse_id: bool


job_specs = st.builds(
    JobSpec,
    task=st.sampled_from(TASKS),
    queue=st.sampled_from(QUEUES),
    payload=st.binary(max_size=6),
    priority=st.sampled_from((0, 0, 1, -1, 5)),
    delay=st.sampled_from((None, None, None, 0.0, -3.0, 1.0, 5.0, 40.0)),
    ttl=st.sampled_from((None, None, None, 0.5, 4.0, 60.0)),
    key=st.sampled_from((None, None, None, "k1", "k2")),
    max_attempts=st.integers(1, 3),
    blocked=st.integers(0, 11).map(lambda n: n == 0),
    reuse_id=st.integers(0, 15).map(lambda n: n == 0),
)


@dataclass(frozen=True)
class Claim:
    """One claim of a job: who made it and the fence each backend handed out."""

    worker: str
    ref_fence: int
    real_fence: int


def comparable(record: JobRecord) -> JobRecord:
    def prose_free(err: ErrorInfo) -> ErrorInfo:
        return replace(err, message="", traceback=None) if err.code in PROSE_CODES else err

    rec = normalized(record)
    return replace(
        rec,
        error=None if rec.error is None else prose_free(rec.error),
        errors=tuple(prose_free(e) for e in rec.errors),
    )


class BackendAgreement(RuleBasedStateMachine):
    kind: ClassVar[str] = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="conveyor-sm-"))
        self.ref = MemoryFactory().create()
        self.real_factory: BackendFactory | None = None
        self._real: Backend | None = None
        try:
            self.real_factory = self.run(open_factory(self.kind, self.tmp))
            real = self.create_real(self.real_factory)
            self.run(real.open())
            self._real = real
        except BaseException:
            self.teardown()
            raise
        self.now = T
        self.ids: list[str] = []
        self.claims: dict[str, list[Claim]] = {}
        self.key_owners: dict[str, list[str]] = {}  # key -> ids created with it, oldest first
        self.last: list[dict[str, tuple[int, int]]] = [{}, {}]  # per backend: (attempts, fence)
        self.may_lower_attempts: set[str] = set()
        self.step = 0

    # -- plumbing ----------------------------------------------------------------------------
    def create_real(self, factory: BackendFactory) -> Backend:
        return factory.create()

    @property
    def real(self) -> Backend:
        assert self._real is not None
        return self._real

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coro)

    def both(self, call: Callable[[Backend], Coroutine[Any, Any, R]]) -> tuple[R, R]:
        return self.run(call(self.ref)), self.run(call(self.real))

    def teardown(self) -> None:
        try:
            if self._real is not None:
                self.run(self._real.close())
            if self.real_factory is not None:
                self.run(self.real_factory.destroy())
            self.run(self.ref.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def pick_job(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from([*self.ids, UNKNOWN]), label="job")

    def pick_claimed(self, data: st.DataObject) -> str:
        """A job for a fenced call: mostly one running now, else any claimed or unknown one."""
        running = [j for j in self.claims if self.running_on_ref(j)]
        pool = [*running, *running, *running, *self.claims, UNKNOWN]
        return data.draw(st.sampled_from(pool), label="job")

    def running_on_ref(self, job_id: str) -> bool:
        record = self.run(self.ref.get_job(job_id))
        return record is not None and record.state is JobState.RUNNING

    def pick_fence(self, data: st.DataObject, job_id: str) -> tuple[Claim, bool]:
        """A fence for ``job_id``: its latest claim's (``True``), an older one, or one never
        issued (``False`` for both: such a call must change nothing)."""
        claims = self.claims.get(job_id, [])
        options = ["never"] + ["current"] * 6 * bool(claims) + ["stale"] * (len(claims) > 1)
        choice = data.draw(st.sampled_from(options), label="fence")
        if choice == "current":
            return claims[-1], True
        if choice == "stale":
            return data.draw(st.sampled_from(claims[:-1]), label="stale claim"), False
        return Claim("w1", 0, 0), False

    def fenced(
        self,
        job_id: str,
        claim: Claim,
        current: bool,
        call: Callable[[Backend, int], Coroutine[Any, Any, R]],
    ) -> R:
        """Run a fenced call on both backends; the results must agree, and a stale fence must
        change nothing at all."""
        before = self.both(lambda b: b.get_job(job_id))
        ref = self.run(call(self.ref, claim.ref_fence))
        real = self.run(call(self.real, claim.real_fence))
        assert real == ref, f"{self.kind} returned {real!r}, memory {ref!r}"
        if not current:
            assert not ref, "a stale fence was accepted"
            after = self.both(lambda b: b.get_job(job_id))
            assert after == before, "a call with a stale fence changed the job"
        return ref

    def filters(self, data: st.DataObject) -> JobFilter:
        picked = self.pick_job(data)
        return data.draw(
            st.sampled_from(
                [
                    JobFilter(),
                    JobFilter(),
                    JobFilter(),
                    JobFilter(queue="q1"),
                    JobFilter(task="a", queue="q2"),
                    JobFilter(states=(JobState.FAILED,)),
                    JobFilter(states=(JobState.CANCELLED, JobState.EXPIRED)),
                    JobFilter(states=(JobState.RUNNING, JobState.QUEUED, JobState.COMPLETED)),
                    JobFilter(error_code="timeout"),
                    JobFilter(error_code="expired"),
                    JobFilter(finished_before=self.now - 5),
                    JobFilter(finished_before=self.now),
                    JobFilter(ids=(picked,)),
                ]
            ),
            label="filter",
        )

    # -- producer ----------------------------------------------------------------------------
    @initialize(data=st.data(), specs=st.lists(job_specs, min_size=4, max_size=10))
    def first_jobs(self, data: st.DataObject, specs: list[JobSpec]) -> None:
        # Hypothesis switches rules off at random (swarm testing); every run starts with work.
        self.enqueue(data, specs)

    @rule(data=st.data(), specs=st.lists(job_specs, min_size=1, max_size=4))
    def enqueue(self, data: st.DataObject, specs: list[JobSpec]) -> None:
        jobs = []
        for spec in specs:
            reuse = spec.reuse_id and bool(self.ids)
            jobs.append(
                NewJob(
                    id=data.draw(st.sampled_from(self.ids)) if reuse else new_job_id(),
                    task=spec.task,
                    queue=spec.queue,
                    payload=spec.payload,
                    priority=spec.priority,
                    run_at=None if spec.delay is None else self.now + spec.delay,
                    max_attempts=spec.max_attempts,
                    expires_at=None if spec.ttl is None else self.now + spec.ttl,
                    idempotency_key=spec.key,
                    metadata={"n": len(self.ids)},
                    blocked=spec.blocked,
                )
            )
        ref, real = self.both(lambda b: b.enqueue(jobs, now=self.now))
        assert real == ref
        for result, new in zip(ref, jobs, strict=True):
            if result.created:
                self.ids.append(result.id)
                if new.idempotency_key is not None:
                    self.key_owners.setdefault(new.idempotency_key, []).append(result.id)

    # -- worker ------------------------------------------------------------------------------
    @rule(
        worker=st.sampled_from(WORKERS),
        queues=st.sampled_from((("q1",), ("q2",), ("q1", "q2"), ("q2", "q1"))),
        limit=st.integers(0, 3),
        lease=st.sampled_from((5.0, 10.0, 30.0)),
        tasks=st.sampled_from((None, None, ("a*",), ("b",), ("a.x", "b"))),
        exclude=st.sampled_from(((), (), ("a",))),
    )
    def claim(
        self,
        worker: str,
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        tasks: tuple[str, ...] | None,
        exclude: tuple[str, ...],
    ) -> None:
        self.claim_both(worker, queues, limit, lease, tasks, exclude)

    def claim_both(
        self,
        worker: str,
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        tasks: tuple[str, ...] | None = None,
        exclude: tuple[str, ...] = (),
    ) -> list[str]:
        """Claim on both backends, check they agree, record the fences; the ids claimed."""
        ref, real = self.both(
            lambda b: b.claim(
                worker, queues, limit, lease, now=self.now, tasks=tasks, exclude_tasks=exclude
            )
        )
        assert [normalized_claim(c) for c in real] == [normalized_claim(c) for c in ref]
        for r, x in zip(ref, real, strict=True):
            earlier = self.claims.setdefault(r.id, [])
            if earlier:
                assert r.fence > earlier[-1].ref_fence and x.fence > earlier[-1].real_fence
            earlier.append(Claim(worker, r.fence, x.fence))
        return [c.id for c in ref]

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim_any(self, worker: str, limit: int) -> None:
        self.claim_both(worker, QUEUES, limit, 10.0)

    @rule(
        worker=st.sampled_from(WORKERS),
        outcome=st.sampled_from(("complete", "dead", "dead-dlq", "retry", "retry-later")),
    )
    def work_one(self, worker: str, outcome: str) -> None:
        """Claim the next job and finish it at once: the common path, taken often."""
        claimed = self.claim_both(worker, QUEUES, 1, 10.0)
        if not claimed:
            return
        [job_id] = claimed
        claim = self.claims[job_id][-1]
        err = ErrorInfo("error", "RuntimeError", "boom", None, attempt=1, at=self.now)
        if outcome == "complete":
            self.fenced(job_id, claim, True, lambda b, f: b.complete(job_id, f, b"r", self.now))
            return
        delay = {"dead": None, "dead-dlq": None, "retry": 0.0, "retry-later": 2.0}[outcome]
        dlq = "dlq" if outcome == "dead-dlq" else None
        self.fenced(
            job_id,
            claim,
            True,
            lambda b, f: b.fail(
                job_id, f, err, retry_delay=delay, now=self.now, dead_letter_queue=dlq
            ),
        )

    @precondition(lambda self: bool(self.claims))
    @rule(
        data=st.data(),
        call=st.sampled_from(("complete", "fail", "retry", "release", "progress", "heartbeat")),
    )
    def zombie(self, data: st.DataObject, call: str) -> None:
        """A worker whose lease is gone (an older claim, or a fence never issued) calls about a
        job that is running now: nothing may change."""
        running = [j for j in self.claims if self.running_on_ref(j)]
        if not running:
            return
        job_id = data.draw(st.sampled_from(running), label="running job")
        stale = [*self.claims[job_id][:-1], Claim("w1", 0, 0)]
        claim = data.draw(st.sampled_from(stale), label="stale claim")
        err = ErrorInfo("error", "RuntimeError", "zombie", None, attempt=1, at=self.now)
        calls: dict[str, Callable[[Backend, int], Coroutine[Any, Any, object]]] = {
            "complete": lambda b, f: b.complete(job_id, f, b"z", now=self.now),
            "fail": lambda b, f: b.fail(job_id, f, err, retry_delay=None, now=self.now),
            "retry": lambda b, f: b.fail(job_id, f, err, retry_delay=0.0, now=self.now),
            "release": lambda b, f: b.release(job_id, f, now=self.now),
            "progress": lambda b, f: b.set_progress(job_id, f, b"z", now=self.now),
            "heartbeat": self._heartbeat_one(job_id, claim.worker),
        }
        self.fenced(job_id, claim, False, calls[call])

    def _heartbeat_one(
        self, job_id: str, worker: str
    ) -> Callable[[Backend, int], Coroutine[Any, Any, object]]:
        async def beat(backend: Backend, fence: int) -> bool:
            [status] = await backend.heartbeat(worker, [(job_id, fence)], 60.0, now=self.now)
            return status.held

        return beat

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), result=st.sampled_from((None, b"", b"ok\x00")))
    def complete(self, data: st.DataObject, result: bytes | None) -> None:
        job_id = self.pick_claimed(data)
        claim, current = self.pick_fence(data, job_id)
        self.fenced(
            job_id, claim, current, lambda b, f: b.complete(job_id, f, result, now=self.now)
        )

    @precondition(lambda self: bool(self.claims))
    @rule(
        data=st.data(),
        delay=st.sampled_from((None, None, 0.0, -1.0, 2.0, 10.0)),
        terminal=st.sampled_from((JobState.FAILED, JobState.CANCELLED)),
        dlq=st.sampled_from((None, "dlq")),
        code=st.sampled_from(("error", "timeout")),
    )
    def fail(
        self,
        data: st.DataObject,
        delay: float | None,
        terminal: JobState,
        dlq: str | None,
        code: str,
    ) -> None:
        job_id = self.pick_claimed(data)
        claim, current = self.pick_fence(data, job_id)
        err = ErrorInfo(code, "RuntimeError", f"boom at {self.now}", "tb", attempt=1, at=self.now)
        self.fenced(
            job_id,
            claim,
            current,
            lambda b, f: b.fail(
                job_id,
                f,
                err,
                retry_delay=delay,
                now=self.now,
                terminal=terminal,
                dead_letter_queue=dlq,
            ),
        )

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id = self.pick_claimed(data)
        claim, current = self.pick_fence(data, job_id)
        if self.fenced(job_id, claim, current, lambda b, f: b.release(job_id, f, now=self.now)):
            self.may_lower_attempts.add(job_id)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), delay=st.sampled_from((0.0, 2.0, 10.0)))
    def defer(self, data: st.DataObject, delay: float) -> None:
        """The Defers capability (a payload version newer than the worker's): like release,
        but the job waits ``delay`` seconds."""
        job_id = self.pick_claimed(data)
        claim, current = self.pick_fence(data, job_id)

        def call(b: Backend, f: int) -> Coroutine[Any, Any, object]:
            assert isinstance(b, Defers)
            return b.defer(job_id, f, delay, now=self.now)

        if self.fenced(job_id, claim, current, call):
            self.may_lower_attempts.add(job_id)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), worker=st.sampled_from(WORKERS), lease=st.sampled_from((5.0, 30.0)))
    def heartbeat(self, data: st.DataObject, worker: str, lease: float) -> None:
        # Leases this worker was handed (the latest claim of a job is the live one), plus
        # fences never issued; all in one call, reported one by one in order.
        mine = [
            (job_id, claim, claim is claims[-1])
            for job_id, claims in self.claims.items()
            for claim in claims
            if claim.worker == worker
        ]
        picks = data.draw(
            st.lists(st.sampled_from([*mine, (UNKNOWN, Claim(worker, 0, 0), False)]), max_size=3),
            label="leases",
        )
        before = self.both(lambda b: b.list_jobs(JobFilter(), limit=BIG))
        ref = self.run(
            self.ref.heartbeat(worker, [(j, c.ref_fence) for j, c, _ in picks], lease, self.now)
        )
        real = self.run(
            self.real.heartbeat(worker, [(j, c.real_fence) for j, c, _ in picks], lease, self.now)
        )
        assert real == ref
        for status, (job_id, _, current) in zip(ref, picks, strict=True):
            assert status.id == job_id
            if not current:
                assert not status.held
        if not any(current for _, _, current in picks):
            assert self.both(lambda b: b.list_jobs(JobFilter(), limit=BIG)) == before

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), progress=st.binary(max_size=4))
    def set_progress(self, data: st.DataObject, progress: bytes) -> None:
        job_id = self.pick_claimed(data)
        claim, current = self.pick_fence(data, job_id)
        self.fenced(
            job_id, claim, current, lambda b, f: b.set_progress(job_id, f, progress, now=self.now)
        )

    @rule(data=st.data(), messages=st.lists(st.sampled_from(("x", "y")), max_size=2))
    def append_logs(self, data: st.DataObject, messages: list[str]) -> None:
        job_id = self.pick_job(data)
        entries = [LogEntry(self.now, "info", m, attempt=1) for m in messages]
        self.both(lambda b: b.append_logs(job_id, entries))

    @rule(max_stalls=st.integers(0, 2))
    def recover_expired(self, max_stalls: int) -> None:
        ref, real = self.both(lambda b: b.recover_expired(max_stalls, now=self.now))
        assert sorted(real, key=lambda r: r.id) == sorted(ref, key=lambda r: r.id)

    # -- operating ---------------------------------------------------------------------------
    @rule(data=st.data(), reason=st.sampled_from((None, "why")))
    def cancel(self, data: st.DataObject, reason: str | None) -> None:
        running = data.draw(st.booleans(), label="a running job")
        job_id = self.pick_claimed(data) if running and self.claims else self.pick_job(data)
        ref, real = self.both(lambda b: b.cancel(job_id, reason, now=self.now))
        assert real == ref

    @rule(data=st.data(), reset=st.booleans())
    def retry_jobs(self, data: st.DataObject, reset: bool) -> None:
        flt = self.filters(data)
        # A job whose idempotency key a newer job has taken since is left out: the protocol does
        # not settle who holds a key once its last taker died and an older holder is retried.
        superseded = {i for owners in self.key_owners.values() for i in owners[:-1]}
        if superseded:
            allowed = [i for i in (flt.ids or self.ids) if i not in superseded]
            flt = replace(flt, ids=tuple(allowed))
        ref, real = self.both(
            lambda b: b.retry_jobs(flt, reset_attempts=reset, now=self.now, limit=BIG)
        )
        assert sorted(real) == sorted(ref)
        if reset:
            self.may_lower_attempts.update(ref)

    @rule(data=st.data())
    def delete_jobs(self, data: st.DataObject) -> None:
        flt = self.filters(data)
        ref, real = self.both(lambda b: b.delete_jobs(flt, limit=BIG))
        assert real == ref

    @rule(seconds=st.sampled_from((0.0004, 0.5, 1.0, 2.0, 5.0, 31.0)))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        deadline=st.sampled_from(("lease_until", "run_at", "expires_at")),
        past=st.sampled_from((0.0, 0.0, 0.0004)),
    )
    def advance_to_a_deadline(self, deadline: str, past: float) -> None:
        """Move the clock to exactly the next lease end, run-at or expiry (or just past it):
        the boundaries where ``<`` and ``<=`` part ways."""
        states = {
            "lease_until": (JobState.RUNNING,),
            "run_at": (JobState.SCHEDULED,),
            "expires_at": (JobState.QUEUED, JobState.SCHEDULED),
        }[deadline]
        records = self.run(self.ref.list_jobs(JobFilter(states=states), limit=BIG))
        times = [getattr(r, deadline) for r in records]
        ahead = [t for t in times if t is not None and t >= self.now]
        if ahead:
            self.now = min(ahead) + past

    # -- reading -----------------------------------------------------------------------------
    @rule(data=st.data(), limit=st.integers(0, 4), offset=st.integers(0, 3))
    def read(self, data: st.DataObject, limit: int, offset: int) -> None:
        flt = self.filters(data)
        ref, real = self.both(lambda b: b.list_jobs(flt, limit=limit, offset=offset))
        assert [comparable(r) for r in real] == [comparable(r) for r in ref]
        job_id = self.pick_job(data)
        one_ref, one_real = self.both(lambda b: b.get_job(job_id))
        assert (one_real is None) == (one_ref is None)
        if one_ref is not None and one_real is not None:
            assert comparable(one_real) == comparable(one_ref)

    # -- after every step --------------------------------------------------------------------
    @invariant()
    def backends_agree(self) -> None:
        """One pass over everything each backend stores, checked every way at once."""
        ref, real = self.both(lambda b: b.list_jobs(JobFilter(), limit=BIG))
        assert [comparable(r) for r in real] == [comparable(r) for r in ref]
        # A deleted job's history is forgotten: its id may be enqueued afresh.
        present = {r.id for r in ref}
        for gone in [i for i in self.claims if i not in present]:
            del self.claims[gone]
        for side, records in enumerate((ref, real)):
            self.last[side] = {i: v for i, v in self.last[side].items() if i in present}
            for record in records:
                attempts, fence = self.last[side].get(record.id, (0, 0))
                if record.id not in self.may_lower_attempts:
                    assert record.attempts >= attempts, f"attempts dropped: {record}"
                assert record.fence >= fence, f"fence dropped: {record}"
                self.last[side][record.id] = (record.attempts, record.fence)
        self.may_lower_attempts.clear()
        # Two more reads per step, taking turns: the counts, and one state's listing.
        self.step += 1
        if self.step % 2:
            counts_ref, counts_real = self.both(lambda b: b.count_jobs())
            key = lambda row: (row.queue, row.task, row.state)  # noqa: E731
            assert sorted(counts_real, key=key) == sorted(counts_ref, key=key)
        else:
            self.one_state_per_job({r.id: r.state for r in real})

    def one_state_per_job(self, states: dict[str, JobState]) -> None:
        """Listing by state agrees with each record's one state (a different state each time)."""
        single = list(JobState)[(self.step // 2) % len(JobState)]
        alone = self.run(self.real.list_jobs(JobFilter(states=(single,)), limit=BIG))
        assert {r.id: r.state for r in alone} == {i: s for i, s in states.items() if s is single}
