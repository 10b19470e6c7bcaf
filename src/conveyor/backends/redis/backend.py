"""The Redis backend client: every protocol method as one Lua script (see ``lua/``).

Import it through :mod:`conveyor.backends.redis`, which checks that redis-py is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast
from uuid import uuid4

from redis.asyncio import Redis
from redis.exceptions import RedisError

from conveyor.backends.base import Backend, CancelOutcome
from conveyor.backends.capabilities.cancellations import PushesCancellations
from conveyor.backends.capabilities.kv import KeyValueStore
from conveyor.backends.coalesce import Coalescer
from conveyor.backends.common import RETRYABLE_STATES
from conveyor.backends.redis.browse import RedisBrowser
from conveyor.backends.redis.codec import (
    CLAIM_WIDTH,
    SUMMARY_FIELDS,
    UnreadableJob,
    decode_claimed,
    decode_counts,
    decode_record,
    decode_worker,
    dumps,
    encode_filter,
    encode_logs,
    encode_new_job,
    encode_worker,
    escape_queue,
    num,
    opt_num,
    opt_str,
    queue_key,
)
from conveyor.backends.redis.connect import (
    blocking_client,
    check_server,
    translate_errors,
)
from conveyor.backends.redis.defer import RedisDefer
from conveyor.backends.redis.events import RedisEvents  # event bus (issue 16)
from conveyor.backends.redis.load import RedisLoad
from conveyor.backends.redis.notify import Notifier
from conveyor.backends.redis.pipe import ScriptPipe, pipe_for
from conveyor.backends.redis.scripts import ScriptArg, run
from conveyor.backends.redis.streams import RedisStreams  # event sourcing (issue 16)
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
    unreadable_record,
)
from conveyor.domain.states import STORED_STATES, TERMINAL_STATES, JobState
from conveyor.errors import StorageUnavailableError

BytesMap = dict[bytes, bytes]

#: Most due or expired jobs one claim promotes (the rest wait for the next claim).
PROMOTE_BATCH = 5000
#: Most index entries one list/retry/delete call examines (bounds its time inside Redis).
SCAN_BUDGET = 200_000
#: How often ``wait_for_finish`` re-reads the job when no notification came (a safety net).
FINISH_RECHECK = (1.0, 10.0)
#: Most completions one ``complete_many`` script applies (bounds its time inside Redis).
COMPLETE_BATCH = 200

#: One pending completion: (job id, fence, result, now).
CompleteItem = tuple[str, int, bytes | None, float | None]


def write_token() -> str:
    """A token unique to one fenced write. The script leaves it on the job with the outcome,
    so a repeat of the call whose reply was lost (redis-py resends it) answers that outcome
    instead of "lease not held" (see ``ack`` in ``lua/lib.lua``)."""
    return uuid4().hex[:16]


class RedisBackend(  # Defers: issue 19; events, streams: issue 16
    RedisDefer,
    RedisEvents,
    RedisStreams,
    RedisBrowser,
    KeyValueStore,
    RedisLoad,
    PushesCancellations,
    Backend,
):
    """One client of the jobs stored under one key prefix of one Redis server."""

    def __init__(
        self,
        url: str,
        prefix: str,
        base: str,
        client: Redis,
        owns_client: bool,
        *,
        pipelined: bool = True,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.base = base
        self.client = client
        self._owns_client = owns_client
        #: Script calls share one pipelined connection (``None``: they use redis-py's pool).
        self.pipe: ScriptPipe | None = pipe_for(client, None) if pipelined else None
        self._blocking: Redis | None = None
        self._notifier: Notifier | None = None
        self._error_pause = 0.05
        self.server: dict[str, Any] = {}
        self._completer: Coalescer[CompleteItem, bool] = Coalescer(
            self._complete_batch, key=lambda item: item[0], max_batch=COMPLETE_BATCH
        )

    # -- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        self.server = await check_server(self.client, self.url, self.prefix, self.base)

    async def close(self) -> None:
        await self._completer.close()
        if self.pipe is not None:
            await self.pipe.close()
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        if self._blocking is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._blocking.aclose()
            self._blocking = None
        if self._owns_client:
            with contextlib.suppress(RedisError, OSError):
                await self.client.aclose()

    async def _run(self, name: str, args: Sequence[ScriptArg], base: str | None = None) -> Any:
        """Run script ``name`` with ``KEYS[1]`` = ``base`` (default: the key base of
        everything; Redis Cluster passes a queue's own, see ``cluster.py``)."""
        with translate_errors(self.url, self.prefix):
            return await run(self.client, name, base or self.base, args, self.pipe)

    def _queue_base(self, queue: str) -> str:
        """The key base of ``queue``'s keys: the one base of every key here (one hash tag);
        a queue's own tag on Redis Cluster (``cluster.py``)."""
        return self.base

    # -- producer ---------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        if not jobs:
            return []
        args: list[ScriptArg] = [opt_num(now)]
        for job in jobs:
            args.extend(encode_new_job(job))
        reply = await self._run("enqueue", args)
        return [
            EnqueueResult(reply[i].decode(), bool(reply[i + 1]), JobState(reply[i + 2].decode()))
            for i in range(0, len(reply), 3)
        ]

    # -- worker -----------------------------------------------------------------------------
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
        if limit <= 0:
            return []
        args = _claim_args(worker_id, queues, limit, lease, now, tasks, exclude_tasks)
        claimed, dead = await self._run("claim", args)
        self._note_dead(dead, now)
        return await self._decode_claims(claimed, now)

    def _note_dead(self, flat: Sequence[Any], now: float | None) -> None:
        """The jobs a claim script dead-lettered (5 values each), for the worker to report."""
        at = time.time() if now is None else now
        items = []
        for i in range(0, len(flat), 5):
            job_id, task, queue, attempts, what = (
                v.decode(errors="replace") for v in flat[i : i + 5]
            )
            error = unreadable_record(f"{what} is not a number", int(attempts), at)
            items.append(StoreDeadLetter(job_id, task, queue, int(attempts), error))
        self.note_store_dead_letters(items)

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
        """:meth:`complete` then :meth:`claim`, fused into one script and one round trip (a
        worker that finishes a job and has a free slot asks for the next in the same call).

        Not part of the :class:`Backend` protocol (yet); same semantics as the two calls.
        """
        if limit <= 0:
            return await self.complete(job_id, fence, result, now), []
        has = "0" if result is None else "1"
        args: list[ScriptArg] = [job_id, str(fence), has, result or b"", write_token()]
        args += _claim_args(worker_id, queues, limit, lease, now, tasks, exclude_tasks)
        done, claimed, dead = await self._run("complete_claim", args)
        self._note_dead(dead, now)
        return bool(done), await self._decode_claims(claimed, now)

    async def _decode_claims(self, reply: Sequence[Any], now: float | None) -> list[ClaimedJob]:
        """The claimed jobs of a claim script's reply. One whose record cannot be decoded is
        dead-lettered (``invalid_payload``) instead of sinking the batch; the script already
        did so for non-numeric fields."""
        jobs: list[ClaimedJob] = []
        for i in range(0, len(reply), CLAIM_WIDTH):
            try:
                jobs.append(decode_claimed(reply[i : i + CLAIM_WIDTH]))
            except UnreadableJob as bad:
                if bad.fence is None:
                    continue  # cannot be fenced: its lease runs out and recovery takes it
                error = unreadable_record(
                    bad.reason, bad.attempt, time.time() if now is None else now
                )
                with contextlib.suppress(StorageUnavailableError):  # then recovery, as above
                    if await self.fail(bad.job_id, bad.fence, error, retry_delay=None, now=now):
                        task = row_text(reply[i + 1])
                        queue = row_text(reply[i + 2])
                        self.note_store_dead_letters(
                            [StoreDeadLetter(bad.job_id, task, queue, bad.attempt, error)]
                        )
        return jobs

    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        # Completions that arrive while one is in flight go together in the next script
        # (one round trip for a busy worker's burst; a lone call goes out at once).
        return await self._completer.submit((job_id, fence, result, now))

    async def _complete_batch(self, items: list[CompleteItem]) -> list[bool]:
        args: list[ScriptArg] = []
        for job_id, fence, result, now in items:
            has = "0" if result is None else "1"
            args += [job_id, str(fence), has, result or b"", opt_num(now)]
        if len(items) == 1:
            return [bool(await self._run("complete", [*args, write_token()]))]
        reply = await self._run("complete_many", [write_token(), *args])
        return [bool(flag) for flag in reply]

    def stats(self) -> dict[str, Any]:
        """Counters for tests and diagnostics: completion batching."""
        completer = self._completer
        return {"complete_batches": completer.batches, "complete_items": completer.items}

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
        args = [
            job_id,
            str(fence),
            dumps(error.to_dict()),
            opt_num(retry_delay),
            opt_num(now),
            JobState(terminal).value,
            opt_str(dead_letter_queue),
            write_token(),
        ]
        state = await self._run("fail", args)
        return None if state is None else JobState(state.decode())

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        return bool(await self._run("release", [job_id, str(fence), write_token()]))

    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        if not leases:
            return []
        args: list[ScriptArg] = [opt_num(now), num(float(lease))]
        for job_id, fence in leases:
            args += [job_id, str(fence)]
        reply = await self._run("heartbeat", args)
        return [
            LeaseStatus(job_id, bool(reply[2 * i]), bool(reply[2 * i + 1]))
            for i, (job_id, _) in enumerate(leases)
        ]

    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        if limit <= 0:
            return []
        reply = await self._run("recover", [str(max_stalls), opt_num(now), str(limit)])
        return [
            RecoveredJob(
                reply[i].decode(),
                reply[i + 1].decode(),
                reply[i + 2].decode(),
                JobState(reply[i + 3].decode()),
                int(reply[i + 4]),
                int(reply[i + 5]),
            )
            for i in range(0, len(reply), 6)
        ]

    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        return bool(await self._run("progress", [job_id, str(fence), progress]))

    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        if entries:
            await self._run("logs", [job_id, encode_logs(entries)])

    # -- waiting ----------------------------------------------------------------------------
    def _blocking_client(self) -> Redis:
        if self._blocking is None:
            self._blocking = blocking_client(self.client)
        return self._blocking

    async def _pause(self, timeout: float) -> None:
        """Redis is unreachable: wait a little (growing) instead of spinning."""
        await asyncio.sleep(min(timeout, self._error_pause))
        self._error_pause = min(self._error_pause * 2, 2.0)

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block (``BZPOPMIN`` on the queues' marker keys, on a dedicated connection) until a
        transition pushes a marker, the next scheduled job of ``queues`` is due, or
        ``timeout`` passes. Issues two commands per call and none while blocked."""
        names = list(dict.fromkeys(queues))
        if timeout <= 0:
            return
        if not names:
            await asyncio.sleep(timeout)  # nothing can wake us
            return
        try:
            due = await self._run("peek", names)
        except StorageUnavailableError:
            await self._pause(timeout)
            return
        if due == b"0":
            return
        bound, precise = timeout, False
        if due and float(due) < timeout:
            bound, precise = float(due), True
        if bound < 0.005:
            await asyncio.sleep(bound)
            return
        keys = [queue_key(self.base, q, "m") for q in names]
        wake_key = f"{self.base}wake:{uuid4().hex}"
        if precise:
            # Redis times blocked commands out on its ~100 ms tick; for a due job we wake
            # ourselves exactly on time by pushing a wake key of our own.
            keys.append(wake_key)
        pop = asyncio.ensure_future(
            self._blocking_client().bzpopmin(keys, timeout=bound + 1.0 if precise else bound)
        )
        try:
            if precise:
                done, _ = await asyncio.wait({pop}, timeout=bound)
                if not done:
                    async with self.client.pipeline(transaction=True) as pipe:
                        pipe.zadd(wake_key, {"1": 0})
                        pipe.pexpire(wake_key, 10_000)
                        await pipe.execute()
            await pop
            self._error_pause = 0.05
        except (RedisError, OSError):
            await self._pause(timeout)
        finally:
            if not pop.done():
                pop.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await pop

    async def _done_base(self, job_id: str) -> str | None:
        """The key base job ``job_id``'s "done" channel is under (``None``: :attr:`base`)."""
        return None

    def _notify(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier(self.client, self.base)
        return self._notifier

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        """Wait on the job's ``done`` channel (pub/sub); re-read it on each message and on a
        slow safety timer, never polling fast."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        recheck = FINISH_RECHECK[0]
        with translate_errors(self.url, self.prefix):
            async with self._notify().watch(job_id, await self._done_base(job_id)) as event:
                while True:
                    event.clear()
                    record = await self.get_job(job_id)
                    if record is None or record.state.is_terminal:
                        return record
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return record
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), min(remaining, recheck))
                    recheck = min(recheck * 2, FINISH_RECHECK[1])

    async def subscribe_cancellations(self) -> AsyncIterator[str]:
        """Ids of running jobs whose cancellation was just requested (pushed by ``cancel``).

        Messages sent while the connection is down are lost; the heartbeat's
        ``cancel_requested`` is the fallback.
        """
        with translate_errors(self.url, self.prefix):
            async for job_id in self._notify().cancellations():
                yield job_id

    # -- operating --------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        outcome = await self._run("cancel", [job_id, opt_str(reason), opt_num(now)])
        return CancelOutcome(outcome.decode())

    async def retry_jobs(
        self,
        flt: JobFilter,
        *,
        reset_attempts: bool = False,
        now: float | None = None,
        limit: int = 1000,
    ) -> RetriedJobs:
        states = [s for s in RETRYABLE_STATES if flt.states is None or s in flt.states]
        if not states or limit <= 0:
            return RetriedJobs()
        args: list[ScriptArg] = [opt_num(now), "1" if reset_attempts else "0", str(limit)]
        args += [str(SCAN_BUDGET), *encode_filter(flt, states)]
        retried, refused = await self._run("retry", args)
        pairs = [item.decode() for item in refused]
        return RetriedJobs(
            [job_id.decode() for job_id in retried], dict(zip(pairs[::2], pairs[1::2], strict=True))
        )

    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        states = [s for s in JobState if s in TERMINAL_STATES]
        states = [s for s in states if flt.states is None or s in flt.states]
        if not states or limit <= 0:
            return 0
        args = [str(limit), str(SCAN_BUDGET), *encode_filter(flt, states)]
        return len(await self._run("delete", args))

    # -- reading ----------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        flat, payload = await self._run("get", [job_id])
        if not flat:
            return None
        return decode_record(job_id, dict(zip(flat[::2], flat[1::2], strict=True)), payload)

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        args = self._list_args(flt, limit, offset)
        if args is None:
            return []
        reply = await self._run("list", args)
        records = []
        for i in range(0, len(reply), 3):
            flat = reply[i + 1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            records.append(decode_record(reply[i].decode(), fields, reply[i + 2]))
        return records

    async def list_summaries(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        args = self._list_args(flt, limit, offset)
        if args is None:
            return []
        reply = await self._run("list_summary", args)
        names = [name.encode() for name in SUMMARY_FIELDS]
        records = []
        for i in range(0, len(reply), 2):
            fields = {n: v for n, v in zip(names, reply[i + 1], strict=True) if v is not None}
            records.append(decode_record(reply[i].decode(), fields, None, summary=True))
        return records

    @staticmethod
    def _list_args(flt: JobFilter, limit: int, offset: int) -> list[ScriptArg] | None:
        states = list(STORED_STATES) if flt.states is None else list(dict.fromkeys(flt.states))
        if not states or limit <= 0:
            return None
        return [str(max(offset, 0)), str(limit), str(SCAN_BUDGET), *encode_filter(flt, states)]

    async def count_jobs(self) -> list[CountRow]:
        with translate_errors(self.url, self.prefix):
            counts = cast(BytesMap, await self.client.hgetall(self.base + "counts"))
        return decode_counts(counts)

    # -- small shared state (schedules) -------------------------------------------------------
    def _kv_key(self, namespace: str) -> str:
        return f"{self.base}kv:{escape_queue(namespace)}"

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        with translate_errors(self.url, self.prefix):
            value = await self.client.hget(self._kv_key(namespace), key)
        return cast(bytes | None, value)

    async def kv_list(self, namespace: str) -> dict[str, bytes]:
        with translate_errors(self.url, self.prefix):
            raw = cast(BytesMap, await self.client.hgetall(self._kv_key(namespace)))
        return {k.decode(): v for k, v in raw.items()}

    async def kv_swap(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        def enc(v: bytes | None) -> bytes:
            return b"" if v is None else b"=" + v

        return bool(await self._run("kv_swap", [namespace, key, enc(expected), enc(value)]))

    # -- workers ----------------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        await self._run("worker_register", [info.id, num(info.heartbeat_at), encode_worker(info)])

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run("worker_unregister", [worker_id])

    async def list_workers(self) -> list[WorkerInfo]:
        with translate_errors(self.url, self.prefix):
            raw = cast(BytesMap, await self.client.hgetall(self.base + "workers"))
        return sorted((decode_worker(v) for v in raw.values()), key=lambda w: w.id)

    async def prune_workers(self, heartbeat_before: float) -> int:
        return int(await self._run("worker_prune", [num(heartbeat_before)]))


def row_text(value: Any) -> str:
    """A reply value as text, whatever it holds (a corrupt field included)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _claim_args(
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease: float,
    now: float | None,
    tasks: Sequence[str] | None,
    exclude_tasks: Sequence[str],
) -> list[ScriptArg]:
    args: list[ScriptArg] = [worker_id, str(limit), num(float(lease)), opt_num(now)]
    args += [str(PROMOTE_BATCH), str(len(queues)), *queues]
    args += ["-1"] if tasks is None else [str(len(tasks)), *tasks]
    args += [str(len(exclude_tasks)), *exclude_tasks]
    return args
