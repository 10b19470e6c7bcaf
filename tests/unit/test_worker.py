"""Worker semantics on the memory backend: retries, timeouts, cancellation, bad input, events,
middleware, context, executors."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from conveyor import (
    CancelOutcome,
    Conveyor,
    ErrorCode,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    JobState,
    JobTimeout,
    Middleware,
    ResultTimeoutError,
    RetryPolicy,
    current_job,
)
from conveyor.core.middleware import ExecuteCall, ExecuteNext
from conveyor.domain.clock import FakeClock
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from conveyor.testing import memory_app, run_until_idle
from conveyor.worker import Worker, WorkerConfig
from tests.support import wait_until


async def test_retries_wait_in_scheduled_until_their_time() -> None:
    clock = FakeClock()
    app = memory_app(clock=clock)
    calls: list[int] = []

    @app.task(retry=RetryPolicy.build(3, backoff="fixed", delay=10, jitter=False))
    async def flaky() -> str:
        calls.append(current_job().attempt)
        if len(calls) < 3:
            raise ConnectionError("boom")
        return "ok"

    handle = await flaky.enqueue()
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.SCHEDULED and info.record.run_at == clock.now() + 10
    await run_until_idle(app)
    assert calls == [1]  # not due yet
    clock.advance(10)
    await run_until_idle(app)
    clock.advance(10)
    await run_until_idle(app)
    assert calls == [1, 2, 3]
    assert await handle.result(1) == "ok"
    info = await handle.info()
    assert [e.attempt for e in info.record.errors] == [1, 2]
    assert [e.event for e in info.timeline()].count("attempt_failed") == 2


async def test_exhausted_attempts_dead_letter_with_traceback_and_label() -> None:
    app = memory_app()
    app.queue("pay", dead_letter="pay-dead", retry=RetryPolicy.build(2, delay=0))

    @app.task(queue="pay")
    def charge(amount: int) -> None:
        raise ValueError(f"declined {amount}")

    handle = await charge.enqueue(5)
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.FAILED
    assert info.record.attempts == 2
    assert info.error is not None and info.error.code == ErrorCode.ERROR
    assert info.error.type == "ValueError" and "declined 5" in info.error.message
    assert info.error.traceback and "raise ValueError" in info.error.traceback
    assert info.record.dead_letter_queue == "pay-dead"
    with pytest.raises(JobFailedError, match="declined 5"):
        await handle.result(1)
    dead = await app.dead_letters.list(queue="pay")
    assert [d.id for d in dead] == [handle.id]


async def test_no_retry_on_and_explicit_retry_delay() -> None:
    clock = FakeClock()
    app = memory_app(clock=clock)
    seen: list[int] = []

    @app.task(retry=RetryPolicy.build(5, no_retry_on=[KeyError]))
    async def strict() -> None:
        raise KeyError("never retried")

    @app.task(retry=RetryPolicy.build(2, delay=1000))
    async def polite() -> str:
        seen.append(current_job().attempt)
        if len(seen) == 1:
            raise current_job().retry(delay="7s", reason="Retry-After: 7")
        return "done"

    h1, h2 = await strict.enqueue(), await polite.enqueue()
    await run_until_idle(app)
    assert (await h1.info()).record.attempts == 1 and await h1.state() is JobState.FAILED
    info = await h2.info()
    assert info.state is JobState.SCHEDULED and info.record.run_at == pytest.approx(clock.now() + 7)
    clock.advance(7)
    await run_until_idle(app)
    assert await h2.result(1) == "done"


async def test_timeout_fails_with_code_and_is_not_retried_by_default() -> None:
    app = memory_app()
    started = asyncio.Event()

    @app.task(timeout=0.1, retry=3)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    handle = await slow.enqueue()
    t0 = time.monotonic()
    await run_until_idle(app)
    assert time.monotonic() - t0 < 5
    info = await handle.info()
    assert info.state is JobState.FAILED and info.error is not None
    assert info.error.code == ErrorCode.TIMEOUT and info.record.attempts == 1


async def test_a_stored_nan_timeout_times_out_at_once_and_never_reaches_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A corrupt record's timeout can read back as NaN (a PostgreSQL float8, a Redis string).
    NaN compares false both ways, so as a timer's deadline it breaks the order of the event
    loop's timer heap and delays every other timer of the worker (heartbeats, sleeps) by
    seconds. It is treated as a deadline already passed, like a negative one."""
    app = memory_app()
    ran: list[str] = []

    @app.task
    async def work() -> None:
        await asyncio.sleep(0.01)
        ran.append("work")

    backend = await app.backend()
    job_id = new_job_id()
    await backend.enqueue(
        [NewJob(job_id, work.name, "default", b'{"a":[],"k":{}}', timeout=float("nan"))]
    )
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        delays.append(delay)
        return call_later(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", spy)
    await run_until_idle(app)
    record = await backend.get_job(job_id)
    assert record is not None and record.state is JobState.FAILED
    assert record.error is not None and record.error.code == ErrorCode.TIMEOUT
    assert delays and not [d for d in delays if d != d], delays
    assert ran == []


async def test_timeout_can_opt_into_retries_and_per_job_override() -> None:
    app = memory_app()
    attempts: list[int] = []

    @app.task(timeout=30, retry=RetryPolicy.build(2, delay=0, retry_on=[JobTimeout]))
    async def slow() -> None:
        attempts.append(current_job().attempt)
        await asyncio.sleep(30)

    handle = await slow.options(timeout=0.05).enqueue()
    await run_until_idle(app)
    assert attempts == [1, 2]
    assert (await handle.info()).error.code == "timeout"  # type: ignore[union-attr]


async def test_cancel_waiting_job_at_once_and_running_job_through_context() -> None:
    app = memory_app(heartbeat_interval=0.05, lease=1)
    running = asyncio.Event()
    cleaned: list[str] = []

    @app.task
    async def long() -> None:
        running.set()
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(current_job().cancel_reason or "")

    waiting = await long.options(delay=60).enqueue()
    assert await waiting.cancel("not needed") is CancelOutcome.CANCELLED
    assert await waiting.state() is JobState.CANCELLED
    with pytest.raises(JobCancelledError):
        await waiting.result(1)

    handle = await long.enqueue()
    worker = Worker(app, WorkerConfig(concurrency=2, poll_interval=0.05))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(running.wait(), 5)
    assert await handle.cancel("user asked") is CancelOutcome.REQUESTED

    async def done() -> bool:
        return await handle.state() is JobState.CANCELLED

    await wait_until(done)
    assert cleaned == ["user asked"]
    assert await handle.cancel() is CancelOutcome.NOT_CANCELLABLE
    worker.stop()
    await asyncio.wait_for(task, 5)


async def test_unknown_task_and_bad_payload_go_to_dead_letters_without_retry() -> None:
    app = memory_app(retry=5)

    @app.task
    async def known(x: int) -> int:
        return x

    backend = await app.backend()
    await backend.enqueue([
        NewJob(new_job_id(), "nobody.declared.this", "default", b'{"a":[],"k":{}}', max_attempts=5),
        NewJob(new_job_id(), known.name, "default", b"\xff not json", max_attempts=5),
        NewJob(new_job_id(), known.name, "default", b'{"a":[1,2,3],"k":{}}', max_attempts=5),
    ])
    await run_until_idle(app)
    dead = await app.dead_letters.list()
    codes = sorted(d.error.code for d in dead if d.error)
    assert codes == ["invalid_payload", "invalid_payload", "unknown_task"]
    assert all(d.record.attempts == 1 for d in dead)
    assert all(d.decode_error is not None for d in dead if d.record.payload.startswith(b"\xff"))


async def test_events_carry_typed_payloads_and_middleware_runs_onion_order() -> None:
    app = memory_app()
    order: list[str] = []

    class Tag(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        async def execute(self, call: ExecuteCall, call_next: ExecuteNext) -> Any:
            order.append(f"{self.name}>")
            call.args = [a * 10 for a in call.args]
            result = await call_next(call)
            order.append(f"<{self.name}")
            return result + 1

    app.use(Tag("outer"))

    @app.task(middleware=[Tag("inner")])
    async def echo(x: int) -> int:
        order.append("handler")
        return x

    events: list[JobEvent] = []
    app.on("started", events.append)
    app.on("completed", events.append)
    app.on("enqueued", events.append)
    handle = await echo.enqueue(1)
    await run_until_idle(app)
    assert await handle.result(1) == 102  # 1*10*10 + 1 + 1
    assert order == ["outer>", "inner>", "handler", "<inner", "<outer"]
    assert [e.kind for e in events] == ["enqueued", "started", "completed"]
    done = events[-1]
    assert done.job_id == handle.id and done.duration is not None and done.result == 102


async def test_failed_event_will_retry_and_dead_event(caplog: pytest.LogCaptureFixture) -> None:
    app = memory_app()

    @app.task(retry=RetryPolicy.build(2, delay=0))
    async def bad() -> None:
        raise RuntimeError("nope")

    seen: list[tuple[str, bool]] = []
    bad.on("failed", lambda e: seen.append(("failed", e.will_retry)))
    bad.on("dead", lambda e: seen.append(("dead", e.will_retry)))
    with caplog.at_level(logging.ERROR, logger="conveyor"):
        await bad.enqueue()
        await run_until_idle(app)
    assert seen == [("failed", True), ("failed", False), ("dead", False)]
    assert not [r for r in caplog.records if "nope" in r.getMessage()]  # a listener silences logs


async def test_failures_are_logged_with_traceback_when_nobody_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app()

    @app.task
    async def bad() -> None:
        raise RuntimeError("loud failure")

    with caplog.at_level(logging.ERROR, logger="conveyor"):
        handle = await bad.enqueue()
        await run_until_idle(app)
    record = next(r for r in caplog.records if "loud failure" in r.getMessage())
    assert record.exc_info is not None
    assert record.job_id == handle.id and record.attempt == 1  # type: ignore[attr-defined]


async def test_context_progress_logs_and_fields() -> None:
    app = memory_app()

    @app.task
    async def work(n: int) -> None:
        job = current_job()
        assert job.trace_id == "trace-1" and job.idempotency_key == "k1"
        assert job.metadata == {"tenant": "acme"}
        for i in range(n):
            job.progress({"done": i + 1, "of": n})
            job.log.info("step", i=i)
        assert not job.is_shutting_down()

    handle = await work.options(trace_id="trace-1", idempotency_key="k1",
                                metadata={"tenant": "acme"}).enqueue(3)
    await run_until_idle(app)

    async def progressed() -> bool:
        return await handle.progress() == {"done": 3, "of": 3}

    await wait_until(progressed)
    logs = await handle.logs()
    assert [(entry.message, entry.extra) for entry in logs] == [
        ("step", {"i": 0}), ("step", {"i": 1}), ("step", {"i": 2})
    ]


async def test_sync_handlers_run_in_threads_with_context() -> None:
    app = memory_app()
    import threading

    main = threading.get_ident()

    @app.task
    def blocking(x: int) -> tuple[int, bool]:
        return x * 2, threading.get_ident() != main and current_job().attempt == 1

    handle = await blocking.enqueue(21)
    await run_until_idle(app)
    assert await handle.result(1) == [42, True]


async def test_result_timeout_when_nothing_runs() -> None:
    app = memory_app()

    @app.task
    async def idle() -> None: ...

    handle = await idle.enqueue()
    with pytest.raises(ResultTimeoutError):
        await handle.result(timeout=0.05)


async def test_strict_priority_and_queue_precedence() -> None:
    app = memory_app()
    app.queue("urgent", priority=10)
    order: list[str] = []

    @app.task
    async def record(name: str) -> None:
        order.append(name)

    await record.options(priority="low").enqueue("low")
    await record.enqueue("normal-1")
    await record.options(priority="critical").enqueue("critical")
    await record.enqueue("normal-2")
    await record.options(queue="urgent", priority="background").enqueue("urgent-queue")
    await run_until_idle(app, concurrency=1)
    assert order == ["urgent-queue", "critical", "normal-1", "normal-2", "low"]


async def test_task_patterns_and_per_task_concurrency() -> None:
    app = memory_app()
    active = {"now": 0, "max": 0}

    @app.task(name="email.send", concurrency=2)
    async def send() -> None:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.02)
        active["now"] -= 1

    @app.task(name="report.build")
    async def build() -> None: ...

    await app.enqueue_many([send.call() for _ in range(8)] + [build.call()])
    await run_until_idle(app, tasks=("email.*",), concurrency=10)
    counts = await app.inspect.counts()
    assert counts.by_task["email.send"]["completed"] == 8
    assert counts.by_task["report.build"]["queued"] == 1
    assert active["max"] == 2


async def test_idempotency_key_returns_the_existing_job() -> None:
    app = memory_app()

    @app.task
    async def once(x: int) -> int:
        return x

    first = await once.options(idempotency_key="order-7").enqueue(1)
    second = await once.options(idempotency_key="order-7").enqueue(2)
    assert first.id == second.id and first.created and not second.created
    await run_until_idle(app)
    third = await once.options(idempotency_key="order-7").enqueue(3)
    assert third.id == first.id  # completed jobs keep the key until retention prunes them


async def test_ttl_expires_jobs_that_did_not_start_in_time() -> None:
    clock = FakeClock()
    app = memory_app(clock=clock)

    @app.task
    async def fresh() -> None: ...

    handle = await fresh.options(ttl="5s").enqueue()
    clock.advance(6)
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.EXPIRED and info.error is not None
    assert info.error.code == "expired"


async def test_lease_expiry_recovers_then_poisons() -> None:
    clock = FakeClock()
    app = memory_app(clock=clock, lease=10, heartbeat_interval=1, max_stalls=1)

    @app.task
    async def victim() -> None: ...

    handle = await victim.enqueue()
    backend = await app.backend()
    await backend.claim("dead-worker-1", ["default"], 1, 10, clock.now())
    clock.advance(11)
    worker = Worker(app, WorkerConfig(burst=True, maintenance_interval=3600))
    worker._backend = backend
    assert await worker.recover() == 1
    assert await handle.state() is JobState.QUEUED
    await backend.claim("dead-worker-2", ["default"], 1, 10, clock.now())
    clock.advance(11)
    assert await worker.recover() == 1
    info = await handle.info()
    assert info.state is JobState.FAILED and info.error is not None
    assert info.error.code == ErrorCode.POISON_MESSAGE and info.record.attempts == 2


async def test_a_job_claimed_again_stops_the_older_attempt_still_running_here() -> None:
    """The lease of a job this worker runs is recovered (a stalled loop, a skewed injected
    clock) and the worker claims the job again before a heartbeat told it: the older attempt
    has lost and stops; the new one is the one the worker holds, heartbeats and counts."""
    clock = FakeClock()
    app = memory_app(clock=clock, lease=100, heartbeat_interval=30, max_stalls=3)
    gates: dict[int, asyncio.Event] = {}
    ends: dict[int, str] = {}

    @app.task
    async def slow() -> int:
        attempt = current_job().attempt
        gates[attempt] = asyncio.Event()
        try:
            await gates[attempt].wait()
        except asyncio.CancelledError:
            ends[attempt] = "cancelled"
            raise
        ends[attempt] = "done"
        return attempt

    async def started(attempt: int) -> bool:
        return attempt in gates

    handle = await slow.enqueue()
    backend = await app.backend()
    worker = Worker(app, WorkerConfig(concurrency=2, poll_interval=0.01, maintenance_interval=3600))
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: started(1))
    clock.advance(101)  # the lease ran out on the store's clock; nothing beat meanwhile
    assert [r.id for r in await backend.recover_expired(3, clock.now())] == [handle.id]
    await wait_until(lambda: started(2))

    async def first_stopped() -> bool:
        return ends.get(1) == "cancelled"

    await wait_until(first_stopped)
    [held] = worker.active.values()
    assert held.job.attempt == 2 and worker.free_slots() == 1
    gates[2].set()
    assert await handle.result(timeout=5) == 2
    assert ends == {1: "cancelled", 2: "done"} and worker.active == {}
    worker.stop()
    await asyncio.wait_for(task, 5)


async def test_graceful_stop_hands_back_unfinished_jobs() -> None:
    app = memory_app()
    started = asyncio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    handle = await forever.enqueue()
    worker = Worker(app, WorkerConfig(grace=0.1, poll_interval=0.05))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)
    info = await handle.info()
    assert info.state is JobState.QUEUED and info.record.attempts == 0
    assert info.record.lease_owner is None


async def test_retire_finishes_running_jobs_past_the_grace_period() -> None:
    """SIGUSR2 (the autoscaler shrinking the group): no more claims, and the running job is
    never interrupted, however long it takes; a stop during the retirement applies the grace
    period from then on."""
    app = memory_app()
    started, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    first = await slow.enqueue()
    worker = Worker(app, WorkerConfig(grace=0.01, poll_interval=0.05, concurrency=1))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    second = await slow.enqueue()
    worker.retire()
    assert worker.retiring and worker.stopping
    await asyncio.sleep(0.05)  # many grace periods pass: a duration, not a wait for something
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, 5)
    assert await first.result(1) == "done"
    info = await second.info()
    assert info.state is JobState.QUEUED and info.record.attempts == 0  # never claimed

    # A stop while retiring: the normal shutdown (the grace period, then a hand-back).
    started.clear()
    release.clear()
    third = await slow.enqueue()
    worker = Worker(app, WorkerConfig(grace=0.05, poll_interval=0.05, concurrency=1))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.retire()
    worker.stop()
    assert not worker.retiring
    await asyncio.wait_for(task, 5)
    states = {(await h.info()).state for h in (second, third)}
    assert states == {JobState.QUEUED}


def test_sync_facade_enqueue_and_result() -> None:
    app = memory_app()

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    handle = double.enqueue_sync(4)
    assert handle.state_sync() is JobState.QUEUED

    async def drain() -> None:
        await run_until_idle(app)

    app.portal.run(drain())
    assert handle.result_sync(timeout=2) == 8
    app.close_sync()


async def test_process_executor_kills_on_timeout_and_survives_crashes() -> None:
    from tests.unit import proc_tasks

    app = proc_tasks.app
    ok = await proc_tasks.cube.enqueue(3)
    slow = await proc_tasks.spin.enqueue()
    dies = await proc_tasks.die.enqueue()
    await run_until_idle(app, concurrency=3)
    assert await ok.result(1) == 27
    slow_info = await slow.info()
    assert slow_info.error is not None and slow_info.error.code == "timeout"
    died = await dies.info()
    assert died.state is JobState.FAILED and died.error is not None
    assert died.error.code == "process_died"
    await app.close()


async def test_conveyor_rejects_bad_declarations() -> None:
    from conveyor import ConfigurationError

    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="heartbeat"):
        Conveyor("memory://", lease=2, heartbeat_interval=2)
    with pytest.raises(ConfigurationError, match="already declared"):

        @app.task(name="x")
        async def a() -> None: ...

        @app.task(name="x")
        async def b() -> None: ...
    with pytest.raises(ConfigurationError, match="unknown priority"):

        @app.task(priority="urgent")
        async def c() -> None: ...


async def test_declarations_every_backend_cannot_store_are_refused() -> None:
    from conveyor import ConfigurationError

    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="lone surrogate"):

        @app.task(name="bad\udc80name")
        async def a() -> None: ...

    with pytest.raises(ConfigurationError, match="metadata"):

        @app.task(metadata={"x": float("nan")})
        async def b() -> None: ...

    with pytest.raises(ConfigurationError, match="retry"):

        @app.task(retry=10**30)
        async def c() -> None: ...
