"""Running one claimed job: decode, middleware, handler with timeout, then a fenced outcome."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.backends.capabilities import Transactions
from conveyor.core.context import JobContext, reset_current, set_current
from conveyor.core.events import JobEvent
from conveyor.core.middleware import ExecuteCall, ExecuteNext, compose_execute
from conveyor.domain.failure import decide_failure
from conveyor.domain.job import ErrorInfo, RecoveredJob
from conveyor.domain.states import JobState
from conveyor.errors import (
    Cancelled,
    ConfigurationError,
    ErrorCode,
    JobTimeout,
    SerializationError,
    ValidationError,
)
from conveyor.worker.deadlines import within_coarse
from conveyor.worker.hooks import run_on_cancel
from conveyor.worker.payloads import NEWER_PAYLOAD_DELAY, NewerPayload, defer_job, prepare_call
from conveyor.worker.processes import ProcessPool
from conveyor.worker.threads import DaemonThreadPool

if TYPE_CHECKING:
    from conveyor.core.task import Task
    from conveyor.worker.active import ActiveJob, WorkerPort

log = logging.getLogger("conveyor.job")
T = TypeVar("T")


_PERMANENT_TYPES = {"unknown_task": "UnknownTask", "invalid_payload": "InvalidPayload"}


class _Permanent(Exception):
    """A failure that must not be retried (unknown task, undecodable payload)."""

    failure_permanent = True
    failure_traceback = ""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.failure_code = code
        self.failure_type = {
            "unknown_task": "UnknownTask",
            "invalid_payload": "InvalidPayload",
        }.get(code, "Permanent")


class _Rollback(Exception):
    """Raised into a handler transaction's context to roll it back."""


class _Interrupted(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _module_name(fn: Any) -> str:
    module: str = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name)
    return module


class JobRunner:
    """Executes jobs for one worker and reports their outcome to the backend."""

    def __init__(self, worker: WorkerPort) -> None:
        self.worker = worker
        self.app = worker.app
        self.threads = DaemonThreadPool(worker.config.concurrency)
        self._processes: ProcessPool | None = None
        self._chains: dict[str, ExecuteNext] = {}
        self._progress: dict[str, Any] = {}
        self._flushes: dict[str, asyncio.Future[None]] = {}  # progress writes, by job id

    def shutdown(self) -> None:
        self.threads.shutdown()
        if self._processes is not None:
            self._processes.shutdown()

    @property
    def processes(self) -> ProcessPool:
        if self._processes is None:
            self._processes = ProcessPool(self.worker.config.process_pool_size)
        return self._processes

    def _fields(self, active: ActiveJob, **more: Any) -> dict[str, Any]:
        job = active.job
        return {
            "worker_id": self.worker.id,
            "job_id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempt": job.attempt,
            "trace_id": job.trace_id,
            **more,
        }

    # -- ContextHost --------------------------------------------------------------------------
    def report_progress(self, ctx: JobContext, value: Any) -> None:
        loop = ctx._loop
        if loop is None:
            return

        def schedule() -> None:
            first = ctx.job_id not in self._progress
            self._progress[ctx.job_id] = value
            if first:
                flush = asyncio.ensure_future(self._flush_progress(ctx))
                self._flushes[ctx.job_id] = flush
                flush.add_done_callback(functools.partial(self._flushed, ctx.job_id))

        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # a thread or process handler
            on_loop = False
        if on_loop:
            schedule()  # at once, so the job's outcome can wait for it (see _settle_progress)
        else:
            loop.call_soon_threadsafe(schedule)

    def _flushed(self, job_id: str, flush: asyncio.Future[None]) -> None:
        if self._flushes.get(job_id) is flush:
            del self._flushes[job_id]

    async def _settle_progress(self, job_id: str) -> None:
        """Let the job's last progress report reach the store before its outcome does (a
        report after the outcome would be refused: the lease is gone)."""
        flush = self._flushes.get(job_id)
        if flush is not None:
            await asyncio.wait({flush}, timeout=max(self.app.lease / 2, 1.0))

    async def _flush_progress(self, ctx: JobContext) -> None:
        while ctx.job_id in self._progress:
            value = self._progress[ctx.job_id]
            try:
                data = self.app.serializer.dumps(value)
                await self.worker.backend.set_progress(
                    ctx.job_id, ctx.fence, data, self.app.backend_now()
                )
            except Exception as exc:  # noqa: BLE001 - progress is best effort
                log.warning("progress update failed: %s", exc, extra={"job_id": ctx.job_id})
            if self.app.events.has_listeners("progress", ctx.task):
                await self.app.events.emit(
                    JobEvent(
                        "progress",
                        ctx.job_id,
                        ctx.task,
                        ctx.queue,
                        ctx.attempt,
                        at=self.app.now(),
                        progress=value,
                        worker_id=self.worker.id,
                    )
                )
            if self._progress.get(ctx.job_id) is value:
                del self._progress[ctx.job_id]

    async def heartbeat_now(self, ctx: JobContext) -> bool:
        statuses = await self.worker.backend.heartbeat(
            self.worker.id, [(ctx.job_id, ctx.fence)], self.app.lease, self.app.backend_now()
        )
        return bool(statuses and statuses[0].held)

    def is_shutting_down(self) -> bool:
        return self.worker.stopping

    async def open_transaction(self, ctx: JobContext) -> Any:
        active = self.worker.active.get(ctx.job_id)
        if active is None:
            raise ConfigurationError("transaction() was called after the job finished")
        if "tx" in active.extra:
            return active.extra["tx"][0]
        backend = self.worker.backend
        connection = getattr(backend, "connection", None)
        if connection is None or not isinstance(backend, Transactions):
            raise ConfigurationError(
                "current_job().transaction() needs a backend with transactional completion "
                f"(PostgreSQL); {self.app.factory.describe()['url']} has none"
            )
        stack = contextlib.AsyncExitStack()
        try:
            conn = await stack.enter_async_context(connection())
            await stack.enter_async_context(conn.transaction())
        except BaseException:
            await stack.aclose()
            raise
        active.extra["tx"] = (conn, stack)
        return conn

    async def _end_transaction(self, active: ActiveJob, *, commit: bool) -> None:
        """Roll back (or commit) a handler transaction that is still open."""
        tx = active.extra.pop("tx", None)
        if tx is None:
            return
        _, stack = tx
        if commit:
            await stack.aclose()
            return
        with contextlib.suppress(Exception):
            await stack.__aexit__(_Rollback, _Rollback(), None)

    # -- interruption -------------------------------------------------------------------------
    def interrupt(self, active: ActiveJob, reason: str, cancel_reason: str | None = None) -> None:
        """Stop a running handler: ``cancel``, ``timeout``, ``shutdown`` or ``lease_lost``."""
        if active.stop_reason is None:
            active.stop_reason = reason
            active.cancel_reason = cancel_reason
        if active.ctx is not None:
            active.ctx._request_cancel(cancel_reason or reason)
        # The handler runs in the job's own task (no task of its own: one less per job), so
        # cancel that task, but only while it is inside the handler and only once: after the
        # handler the task writes the outcome, which must not be cut short.
        runner = active.extra.get("in_handler")
        if runner is not None and not active.extra.get("cancelled"):
            active.extra["cancelled"] = True
            runner.cancel()

    # -- running ------------------------------------------------------------------------------
    def _chain(self, task: Task[Any, Any]) -> ExecuteNext:
        chain = self._chains.get(task.name)
        if chain is None:
            chain = compose_execute(
                [*self.app.middleware, *task.config.middleware], self._invoker(task)
            )
            self._chains[task.name] = chain
        return chain

    def _invoker(self, task: Task[Any, Any]) -> ExecuteNext:
        executor = task.config.executor
        fn = task.fn

        if executor == "async":

            async def run_async(call: ExecuteCall) -> Any:
                token = set_current(call.ctx)
                try:
                    return await fn(*call.args, **call.kwargs)
                finally:
                    reset_current(token)

            return run_async

        if executor == "thread":

            def in_thread(ctx: JobContext, args: list[Any], kwargs: dict[str, Any]) -> Any:
                token = set_current(ctx)
                try:
                    return fn(*args, **kwargs)
                finally:
                    reset_current(token)
                    ctx._thread_done()  # type: ignore[attr-defined]

            async def run_thread(call: ExecuteCall) -> Any:
                return await self.threads.submit(in_thread, call.ctx, call.args, call.kwargs)

            return run_thread

        module, qualname = _module_name(fn), fn.__qualname__

        async def run_process(call: ExecuteCall) -> Any:
            return await self.processes.call(module, qualname, call.args, call.kwargs, call.ctx)

        return run_process

    async def run(self, active: ActiveJob) -> None:
        """Run one claimed job to a fenced outcome. Never raises."""
        job = active.job
        loop = asyncio.get_running_loop()
        ctx = JobContext(
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            trace_id=job.trace_id,
            idempotency_key=job.idempotency_key,
            metadata=job.metadata,
            worker_id=self.worker.id,
            enqueued_at=job.created_at,
            fence=job.fence,
            payload_version=job.payload_version,
            _host=self,
            _loop=loop,
        )
        active.ctx = ctx
        task = self.app.tasks.get(job.task)
        if task is not None and task.config.executor == "thread":
            self._install_thread_hook(active, ctx)
        started = time.monotonic()
        if self.app.events.has_listeners("started", job.task):
            await self.app.events.emit(
                JobEvent(
                    "started",
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    at=self.app.now(),
                    trace_id=job.trace_id,
                    worker_id=self.worker.id,
                )
            )
        try:
            try:
                result = await self._execute(active, task, ctx)
            finally:
                # The outcome is written next; a heartbeat must not read that as a lost lease.
                active.finishing = True
                if self._flushes:
                    await self._settle_progress(job.id)
        except _Interrupted as exc:
            await self._interrupted(active, exc.reason, time.monotonic() - started)
        except NewerPayload as exc:  # issue 19: hand it back for a newer worker
            await self._wait_for_newer(active, exc)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(exc, asyncio.CancelledError):
                await self._interrupted(
                    active, active.stop_reason or "shutdown", time.monotonic() - started
                )
                return
            await self._failed(active, task, exc, time.monotonic() - started)
        else:
            if active.stop_reason == "cancel":
                await self._interrupted(active, "cancel", time.monotonic() - started)
            else:
                await self._succeeded(active, result, time.monotonic() - started)

    async def _wait_for_newer(self, active: ActiveJob, exc: NewerPayload) -> None:
        """Hand a job of a newer payload version back (issue 19): scheduled again a little
        later with the attempt not counted, so this worker does not claim it in a hot loop
        while a newer one can take it."""
        job, backend = active.job, self.worker.backend
        await self._flush_logs(active)
        log.info("%s", exc, extra=self._fields(active))
        ok = await self._store(
            lambda: defer_job(
                backend, job.id, job.fence, NEWER_PAYLOAD_DELAY, self.app.backend_now()
            )
        )
        if ok is False:
            self._lease_lost(active)

    def _install_thread_hook(self, active: ActiveJob, ctx: JobContext) -> None:
        worker = self.worker
        loop = asyncio.get_running_loop()

        def finished_on_loop() -> None:
            if active.extra.pop("zombie", False):
                worker.zombie_threads -= 1
                worker.slot_freed()

        def thread_done() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished_on_loop)

        ctx._thread_done = thread_done  # type: ignore[attr-defined]

    async def _execute(
        self, active: ActiveJob, task: Task[Any, Any] | None, ctx: JobContext
    ) -> Any:
        job = active.job
        if task is None:
            raise _Permanent(
                ErrorCode.UNKNOWN_TASK,
                f"no task named {job.task!r} is registered in this worker; deploy the code that "
                "declares it, then retry the job from the dead-letter set",
            )
        # issue 19: payload version, migrations, validation (worker/payloads.py)
        args, kwargs = prepare_call(task, job, self.app.serializer, self.app.max_stalls)
        active.extra["call"] = (args, kwargs)  # for the on_cancel hook (worker/hooks.py)
        if active.stop_reason is not None:  # interrupted before it started
            raise _Interrupted(active.stop_reason)
        me = asyncio.current_task()
        assert me is not None
        timer = None
        if job.timeout is not None:
            # A corrupt stored timeout may read back as NaN: as a timer's deadline it would break
            # the order of the loop's timer heap (NaN compares false both ways) and hold up every
            # other timer here, heartbeats included. It counts as passed, like a negative one.
            delay = job.timeout if job.timeout == job.timeout else 0.0
            timer = asyncio.get_running_loop().call_later(
                delay, self.interrupt, active, "timeout", f"timed out after {job.timeout}s"
            )
        cancelled = False
        active.extra["in_handler"] = me
        try:
            result = await self._chain(task)(ExecuteCall(ctx, args, kwargs))
        except asyncio.CancelledError:
            if not active.extra.get("cancelled"):
                raise  # not ours (the worker's loop is going away): let it through
            cancelled = True
        except BaseException:
            if active.stop_reason is None or active.stop_reason == "cancel":
                raise
            result = None  # interrupted for a timeout, shutdown or lost lease: that wins
        finally:
            del active.extra["in_handler"]
            if timer is not None:
                timer.cancel()
            if active.extra.get("cancelled"):
                me.uncancel()  # our own cancellation is consumed here, delivered or not
        if active.stop_reason is not None and (cancelled or active.stop_reason != "cancel"):
            if task.config.executor == "thread" and cancelled:
                active.extra["zombie"] = True
                self.worker.zombie_threads += 1
            raise _Interrupted(active.stop_reason)
        return result

    # -- outcomes -----------------------------------------------------------------------------
    async def _flush_logs(self, active: ActiveJob) -> None:
        entries = active.ctx._take_logs() if active.ctx is not None else []
        if entries:
            with contextlib.suppress(Exception):
                await self.worker.backend.append_logs(active.job.id, entries)

    async def _succeeded(self, active: ActiveJob, result: Any, duration: float) -> None:
        job = active.job
        task = self.app.tasks.get(job.task)
        try:
            stored = result if task is None else task.encode_result(result)  # issue 19
            data = None if stored is None else self.app.serializer.dumps(stored)
        except (SerializationError, ValidationError) as exc:
            await self._failed(active, task, exc, duration, permanent=True)
            return
        await self._flush_logs(active)
        ok: bool | None
        if "tx" in active.extra:
            ok = await self._complete_in_transaction(active, data)
        else:
            ok = await self._store(lambda: self._complete(active, data))
        if ok is None:
            return  # the store stayed unreachable: lease recovery reruns the job
        if not ok:
            self._lease_lost(active)
            return
        self.worker.stats.record(job.task, job.queue, "succeeded", duration)
        log.debug(
            "job %s completed in %.3fs",
            job.id,
            duration,
            extra=self._fields(active, duration=duration),
        )
        if self.app.events.has_listeners("completed", job.task):
            await self.app.events.emit(
                JobEvent(
                    "completed",
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    at=self.app.now(),
                    duration=duration,
                    result=result,
                    trace_id=job.trace_id,
                    worker_id=self.worker.id,
                )
            )

    async def _complete(self, active: ActiveJob, data: bytes | None) -> bool:
        """Store the job's result; claim the next jobs in the same call where that saves a
        round trip (see :meth:`Worker.fused_claim`)."""
        job, backend = active.job, self.worker.backend
        claim = self.worker.fused_claim()
        if claim is None:
            return await backend.complete(job.id, job.fence, data, self.app.backend_now())
        sent = time.monotonic()
        ok, jobs = await backend.complete_and_claim(job.id, job.fence, data, **claim)
        await self.worker.adopt(active, jobs, time.monotonic() - sent)
        return bool(ok)

    async def _store(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run a backend write, retrying with backoff while the store is unreachable.

        Writes are fenced, so repeating one is safe. After the last try the outcome is dropped
        and the job's lease expiry hands it to recovery: nothing is lost, it may run again.
        """
        delay = 0.05
        for attempt in range(10):
            try:
                return await within_coarse(max(self.app.lease, 5.0), op())
            except Exception as exc:  # noqa: BLE001
                if attempt == 9:
                    log.error(
                        "giving up on a backend write: %s (lease recovery will rerun the job)", exc
                    )
                    return None
                log.warning("backend write failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return None

    async def _complete_in_transaction(self, active: ActiveJob, data: bytes | None) -> bool:
        """Complete inside the handler's transaction and commit both together.

        If the store fails here, nothing is committed: the job stays running, its lease
        expires and it runs again, and the handler's writes were rolled back with it.
        """
        job = active.job
        conn, _ = active.extra["tx"]
        backend = self.worker.backend
        assert isinstance(backend, Transactions)  # open_transaction checked it
        try:
            ok = await backend.complete_on(conn, job.id, job.fence, data, self.app.backend_now())
        except Exception as exc:  # noqa: BLE001
            log.error(
                "transactional completion of %s failed: %s", job.id, exc, extra=self._fields(active)
            )
            await self._end_transaction(active, commit=False)
            return True  # nothing more to record: recovery will rerun the job
        if not ok:
            await self._end_transaction(active, commit=False)
            return False
        try:
            await self._end_transaction(active, commit=True)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "commit of %s failed: %s; the job will run again",
                job.id,
                exc,
                extra=self._fields(active),
            )
        return True

    def _lease_lost(self, active: ActiveJob) -> None:
        self.worker.stats.lease_lost += 1
        log.warning(
            "job %s: lease lost before the outcome was stored; the newer attempt wins",
            active.job.id,
            extra=self._fields(active),
        )

    async def _interrupted(self, active: ActiveJob, reason: str, duration: float) -> None:
        job = active.job
        backend = self.worker.backend
        await self._end_transaction(active, commit=False)
        await self._flush_logs(active)
        if reason == "timeout":
            await self._failed(
                active,
                self.app.tasks.get(job.task),
                JobTimeout(f"timed out after {job.timeout}s"),
                duration,
            )
            return
        if reason == "lease_lost":
            return
        if reason == "shutdown":
            await self._store(lambda: backend.release(job.id, job.fence, self.app.backend_now()))
            log.info(
                "job %s handed back to the queue at shutdown", job.id, extra=self._fields(active)
            )
            return
        await run_on_cancel(self.app.tasks.get(job.task), active, max(self.app.lease / 2, 1.0))
        error = ErrorInfo(
            ErrorCode.CANCELLED,
            "Cancelled",
            active.cancel_reason or "cancelled",
            attempt=job.attempt,
            at=self.app.now(),
        )
        state = await self._store(
            lambda: backend.fail(
                job.id,
                job.fence,
                error,
                retry_delay=None,
                now=self.app.backend_now(),
                terminal=JobState.CANCELLED,
            )
        )
        if state is None:
            self._lease_lost(active)
            return
        self.worker.stats.record(job.task, job.queue, "cancelled", duration)
        log.info("job %s cancelled", job.id, extra=self._fields(active, duration=duration))
        if self.app.events.has_listeners("cancelled", job.task):
            await self.app.events.emit(
                JobEvent(
                    "cancelled",
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    at=self.app.now(),
                    duration=duration,
                    error_message=active.cancel_reason,
                    trace_id=job.trace_id,
                    worker_id=self.worker.id,
                )
            )

    async def _failed(
        self,
        active: ActiveJob,
        task: Task[Any, Any] | None,
        exc: BaseException,
        duration: float,
        *,
        permanent: bool = False,
    ) -> None:
        job = active.job
        await self._end_transaction(active, commit=False)
        if isinstance(exc, Cancelled):
            active.cancel_reason = active.cancel_reason or str(exc)
            await self._interrupted(active, "cancel", duration)
            return
        decision = decide_failure(
            exc,
            policy=self.app.retry_policy_for(task, job.queue),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            task_known=task is not None,
            permanent=permanent,
            now=self.app.now(),
        )
        error, will_retry, delay = decision.error, decision.will_retry, decision.retry_delay
        code, type_name = error.code, error.type
        await self._flush_logs(active)
        state = await self._store(
            lambda: self.worker.backend.fail(
                job.id,
                job.fence,
                error,
                retry_delay=delay,
                now=self.app.backend_now(),
                dead_letter_queue=self.app.queue_config(job.queue).dead_letter,
            )
        )
        if state is None:
            self._lease_lost(active)
            return
        self.worker.stats.record(job.task, job.queue, decision.outcome, duration)
        events = self.app.events
        listened = events.has_listeners("failed", job.task)
        fields = self._fields(active, duration=duration, error_code=code)
        if not listened:
            # Nobody listens for failures: say so in the log. A failure that will be retried is
            # a warning; one that dead-letters the job is an error with its traceback.
            log.log(
                logging.WARNING if will_retry else logging.ERROR,
                "job %s (%s) failed on attempt %d/%d [%s] %s: %s%s",
                job.id,
                job.task,
                job.attempt,
                job.max_attempts,
                code,
                type_name,
                exc,
                f" — retrying in {delay:.2f}s"
                if will_retry and delay is not None
                else " — dead-lettered",
                exc_info=exc if decision.log_traceback else None,
                extra=fields,
            )
        event = JobEvent(
            "failed",
            job.id,
            job.task,
            job.queue,
            job.attempt,
            at=error.at,
            will_retry=will_retry,
            duration=duration,
            error_code=code,
            error_type=type_name,
            error_message=str(exc),
            traceback=error.traceback,
            retry_delay=delay,
            trace_id=job.trace_id,
            worker_id=self.worker.id,
        )
        if listened:
            await events.emit(event)
        follow = "retrying" if will_retry else "dead"
        if events.has_listeners(follow, job.task):
            from dataclasses import replace

            await events.emit(replace(event, kind=follow))

    async def emit_stalled(self, job: RecoveredJob) -> None:
        events = self.app.events
        action = "recovered" if job.state is JobState.QUEUED else job.state.value
        if events.has_listeners("stalled", job.task):
            await events.emit(
                JobEvent(
                    "stalled",
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    at=self.app.now(),
                    action=action,
                    worker_id=self.worker.id,
                    extra={"stalls": job.stalls},
                )
            )
        if job.state is JobState.FAILED and events.has_listeners("dead", job.task):
            await events.emit(
                JobEvent(
                    "dead",
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    at=self.app.now(),
                    error_code=ErrorCode.POISON_MESSAGE,
                    worker_id=self.worker.id,
                )
            )
