"""``redis+cluster://``: the Redis backend on a Redis Cluster.

Key layout. On a single Redis every key of a prefix shares one hash tag, ``{<prefix>}:``. On a
Cluster each queue gets its own: every key of queue ``Q`` (its jobs, their payloads, its
indexes, counters, idempotency keys, expiry and lease sets, wake-up markers) lives under
``{<prefix>:<Q>}:`` — the single-node layout with the key base chosen per queue, so the Lua
scripts are the same. Every script call touches one queue and so one slot, and different
queues hash to different slots, so queues spread over the shards. Only a few small keys stay
under the prefix's own tag ``{<prefix>}:``: the set of queue names, the worker registry and
the key-value state (schedules).

Finding a job by id. A job's keys live in its queue's slot, but ``complete(job_id, ...)`` and
``get_job(job_id)`` name no queue. Each client remembers the queue of every job it enqueued
or claimed; other ids are looked up in the *where* map, 64 hashes ``{<prefix>:w:<nn>}``
(id → queue), written before the job itself (so a job that exists can always be found) and
cleared when the job is deleted. The queue of a job never changes.

Operations over several queues (a worker consuming several queues, counts, listings and
retries without a queue filter, lease recovery) run one script per queue: each queue's part
is atomic, the whole is not. What that changes, compared with a single Redis:

* an idempotency key is unique **per queue** (the key map lives in the queue's slot);
* an ``enqueue`` batch is atomic per queue, not across queues;
* a claim over several queues takes them one after another (each atomically);
* the "a worker holds at most one job that stalled twice" rule is per queue.

Waiting: a worker blocks with ``BZPOPMIN`` on its queues' markers, one call per slot
concurrently (a blocking command cannot span slots); cancellations and "job finished"
messages are classic pub/sub, which Redis Cluster delivers to every node. Script calls go
through redis-py's cluster client one by one (``EVALSHA`` is not pipelined: redis-py's
cluster pipeline refuses it), so MOVED/ASK redirects and fail-overs are handled by it.

What a fail-over can lose is in ``docs/redis.md`` (Redis Cluster replicates asynchronously).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from conveyor.backends.base import CancelOutcome
from conveyor.backends.redis.backend import (
    COMPLETE_BATCH,
    RedisBackend,
    _claim_args,
    write_token,
)
from conveyor.backends.redis.cluster_layout import glob_escape, prefix_tag, queue_base, where_key
from conveyor.backends.redis.cluster_reads import ClusterReads
from conveyor.backends.redis.codec import (
    dumps,
    encode_new_job,
    num,
    opt_num,
    opt_str,
    queue_key,
)
from conveyor.backends.redis.connect import translate_errors
from conveyor.backends.redis.notify import Notifier
from conveyor.backends.redis.scripts import ScriptArg
from conveyor.domain.job import (
    ClaimedJob,
    EnqueueResult,
    ErrorInfo,
    LeaseStatus,
    LogEntry,
    NewJob,
    RecoveredJob,
)
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, ConveyorError

#: Job ids whose queue one client keeps in memory (most recent first out last).
REMEMBERED = 100_000


class RedisClusterBackend(ClusterReads, RedisBackend):
    """A client of the jobs stored under one key prefix of a Redis Cluster."""

    client: RedisCluster  # type: ignore[assignment]

    def __init__(
        self,
        url: str,
        prefix: str,
        base: str,
        client: RedisCluster,
        owns_client: bool,
        blocking: RedisCluster,
    ) -> None:
        super().__init__(url, prefix, base, client, owns_client, pipelined=False)  # type: ignore[arg-type]
        self._blocking_cluster = blocking
        self._where: OrderedDict[str, str] = OrderedDict()

    # -- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        from conveyor.backends.redis.connect import check_cluster

        self.server = await check_cluster(self.client, self.url, self.prefix)

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(RedisError, OSError):
            await self._blocking_cluster.aclose()

    def _queue_base(self, queue: str) -> str:
        return queue_base(self.prefix, queue)

    def _remember(self, job_id: str, queue: str) -> None:
        self._where[job_id] = queue
        if len(self._where) > REMEMBERED:
            self._where.popitem(last=False)

    async def _queue_of(self, job_id: str) -> str | None:
        """The queue of job ``job_id``: remembered, or from the where map (``None``: no such
        job was ever enqueued)."""
        queue = self._where.get(job_id)
        if queue is not None:
            return queue
        with translate_errors(self.url, self.prefix):
            raw = await self.client.hget(where_key(self.prefix, job_id), job_id)
        if raw is None:
            return None
        queue = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._remember(job_id, queue)
        return queue

    async def _job_base(self, job_id: str) -> str:
        """The key base to run a script about job ``job_id`` under. For an unknown job, the
        prefix's own base: no job lives there, so the script answers "no such job"."""
        queue = await self._queue_of(job_id)
        return self.base if queue is None else self._queue_base(queue)

    async def _done_base(self, job_id: str) -> str | None:
        return await self._job_base(job_id)

    async def _group(self, job_ids: Sequence[str]) -> dict[str | None, list[int]]:
        """Positions of ``job_ids`` by queue (``None``: unknown ids); the ids this client
        does not remember are looked up in one pipeline."""
        queues: list[str | None] = [self._where.get(j) for j in job_ids]
        missing = [i for i, q in enumerate(queues) if q is None]
        if missing:
            with translate_errors(self.url, self.prefix):
                async with self.client.pipeline(transaction=False) as pipe:
                    for i in missing:
                        pipe.hget(where_key(self.prefix, job_ids[i]), job_ids[i])
                    found = await pipe.execute()
            for i, raw in zip(missing, found, strict=True):
                if raw is not None:
                    queues[i] = raw.decode() if isinstance(raw, bytes) else str(raw)
                    self._remember(job_ids[i], str(queues[i]))
        groups: dict[str | None, list[int]] = {}
        for i, queue in enumerate(queues):
            groups.setdefault(queue, []).append(i)
        return groups

    async def known_queues(self) -> list[str]:
        """Every queue a job was ever enqueued to (the prefix's queue set)."""
        with translate_errors(self.url, self.prefix):
            members = await self.client.smembers(self.base + "queues")
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    def _notify(self) -> Notifier:
        if self._notifier is None:
            pattern = "{" + glob_escape(prefix_tag(self.prefix)) + ":*}:cancel"
            self._notifier = Notifier(self.client, self.base, cancel_pattern=pattern)  # type: ignore[arg-type]
        return self._notifier

    # -- producer ---------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        if not jobs:
            return []
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.queue, []).append(i)
        # Where each job lives, before the jobs exist (so any job found can be located).
        with translate_errors(self.url, self.prefix):
            async with self.client.pipeline(transaction=False) as pipe:
                for job in jobs:
                    pipe.hset(where_key(self.prefix, job.id), job.id, job.queue)
                pipe.sadd(self.base + "queues", *groups)
                await pipe.execute()

        async def one(queue: str, positions: list[int]) -> list[EnqueueResult]:
            args: list[ScriptArg] = [opt_num(now)]
            for i in positions:
                args.extend(encode_new_job(jobs[i]))
            reply = await self._run("enqueue", args, self._queue_base(queue))
            return [
                EnqueueResult(
                    reply[k].decode(), bool(reply[k + 1]), JobState(reply[k + 2].decode())
                )
                for k in range(0, len(reply), 3)
            ]

        replies = await asyncio.gather(*(one(q, p) for q, p in groups.items()))
        out: list[EnqueueResult | None] = [None] * len(jobs)
        for (queue, positions), results in zip(groups.items(), replies, strict=True):
            for i, result in zip(positions, results, strict=True):
                out[i] = result
                self._remember(result.id, queue)
        return [r for r in out if r is not None]

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
        taken: list[ClaimedJob] = []
        for queue in dict.fromkeys(queues):
            want = limit - len(taken)
            if want <= 0:
                break
            args = _claim_args(worker_id, [queue], want, lease, now, tasks, exclude_tasks)
            claimed, dead = await self._run("claim", args, self._queue_base(queue))
            self._note_dead(dead, now)
            for job in await self._decode_claims(claimed, now):
                self._remember(job.id, job.queue)
                taken.append(job)
        return taken

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
        """Fused into one script when the job's queue is the only queue claimed from (one
        slot); else :meth:`complete`, then :meth:`claim`."""
        queue = await self._queue_of(job_id)
        if limit > 0 and queue is not None and list(dict.fromkeys(queues)) == [queue]:
            has = "0" if result is None else "1"
            args: list[ScriptArg] = [job_id, str(fence), has, result or b"", write_token()]
            args += _claim_args(worker_id, [queue], limit, lease, now, tasks, exclude_tasks)
            done, raw, dead = await self._run("complete_claim", args, self._queue_base(queue))
            self._note_dead(dead, now)
            claimed = await self._decode_claims(raw, now)
            for job in claimed:
                self._remember(job.id, job.queue)
            return bool(done), claimed
        done = await self.complete(job_id, fence, result, now)
        if limit <= 0:
            return done, []
        claimed = await self.claim(
            worker_id, queues, limit, lease, now, tasks=tasks, exclude_tasks=exclude_tasks
        )
        return done, claimed

    async def _complete_batch(
        self, items: list[tuple[str, int, bytes | None, float | None]]
    ) -> list[bool]:
        out = [False] * len(items)
        groups = await self._group([item[0] for item in items])

        async def one(queue: str, positions: list[int]) -> None:
            args: list[ScriptArg] = []
            for i in positions:
                job_id, fence, result, now = items[i]
                args += [job_id, str(fence), "0" if result is None else "1", result or b""]
                args.append(opt_num(now))
            base = self._queue_base(queue)
            if len(positions) == 1:
                flags = [await self._run("complete", [*args, write_token()], base)]
            else:
                flags = await self._run("complete_many", [write_token(), *args], base)
            for i, flag in zip(positions, flags, strict=True):
                out[i] = bool(flag)

        await asyncio.gather(
            *(
                one(queue, positions[k : k + COMPLETE_BATCH])
                for queue, positions in groups.items()
                if queue is not None
                for k in range(0, len(positions), COMPLETE_BATCH)
            )
        )
        return out

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
        state = await self._run("fail", args, await self._job_base(job_id))
        return None if state is None else JobState(state.decode())

    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        args: list[ScriptArg] = [job_id, str(fence), repr(float(delay)), opt_num(now)]
        args.append(write_token())
        return bool(await self._run("defer", args, await self._job_base(job_id)))

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        base = await self._job_base(job_id)
        return bool(await self._run("release", [job_id, str(fence), write_token()], base))

    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        if not leases:
            return []
        out = [LeaseStatus(job_id, False, False) for job_id, _ in leases]
        groups = await self._group([job_id for job_id, _ in leases])

        async def one(queue: str, positions: list[int]) -> None:
            args: list[ScriptArg] = [opt_num(now), num(float(lease))]
            for i in positions:
                args += [leases[i][0], str(leases[i][1])]
            reply = await self._run("heartbeat", args, self._queue_base(queue))
            for k, i in enumerate(positions):
                out[i] = LeaseStatus(leases[i][0], bool(reply[2 * k]), bool(reply[2 * k + 1]))

        await asyncio.gather(*(one(q, p) for q, p in groups.items() if q is not None))
        return out

    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        out: list[RecoveredJob] = []
        for queue in await self.known_queues():
            if len(out) >= limit:
                break
            args = [str(max_stalls), opt_num(now), str(limit - len(out))]
            reply = await self._run("recover", args, self._queue_base(queue))
            out += [
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
        return out

    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        base = await self._job_base(job_id)
        return bool(await self._run("progress", [job_id, str(fence), progress], base))

    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        if entries:
            from conveyor.backends.redis.codec import encode_logs

            base = await self._job_base(job_id)
            await self._run("logs", [job_id, encode_logs(entries)], base)

    # -- waiting ----------------------------------------------------------------------------
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """As on a single Redis, with one ``BZPOPMIN`` per slot of ``queues`` at once, each
        also on a wake key of its own slot that releases it when another returns first."""
        names = list(dict.fromkeys(queues))
        if timeout <= 0:
            return
        if not names:
            await asyncio.sleep(timeout)  # nothing can wake us
            return
        try:
            peeks = await asyncio.gather(
                *(self._run("peek", [q], self._queue_base(q)) for q in names)
            )
        except ConveyorError:  # unreachable, or a fail-over under way: the claim will say
            await self._pause(timeout)
            return
        if any(p == b"0" for p in peeks):
            return
        dues = [float(p) for p in peeks if p]
        bound = min([timeout, *dues])
        if bound < 0.005:
            await asyncio.sleep(bound)
            return
        slots: dict[int, list[str]] = {}
        for q in names:
            slots.setdefault(self.client.keyslot(self._queue_base(q)), []).append(q)
        token = uuid4().hex
        wakes = {slot: f"{self._queue_base(qs[0])}wake:{token}" for slot, qs in slots.items()}
        blocking = self._blocking_cluster

        def pop(slot: int, qs: list[str]) -> asyncio.Future[Any]:
            keys = [queue_key(self._queue_base(q), q, "m") for q in qs] + [wakes[slot]]
            return asyncio.ensure_future(blocking.bzpopmin(keys, timeout=bound + 1.0))

        pops = [pop(slot, qs) for slot, qs in slots.items()]
        try:
            await asyncio.wait(pops, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
            for slot, future in zip(slots, pops, strict=True):
                if not future.done():
                    with contextlib.suppress(RedisError, OSError):
                        async with self.client.pipeline(transaction=False) as pipe:
                            pipe.zadd(wakes[slot], {"1": 0})
                            pipe.pexpire(wakes[slot], 10_000)
                            await pipe.execute()
            await asyncio.wait(pops, timeout=5.0)
            self._error_pause = 0.05
        except (RedisError, OSError):
            await self._pause(timeout)
        finally:
            for future in pops:
                if not future.done():
                    future.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await future

    # -- operating --------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        base = await self._job_base(job_id)
        outcome = await self._run("cancel", [job_id, opt_str(reason), opt_num(now)], base)
        return CancelOutcome(outcome.decode())

    async def key_slots(self, queues: Sequence[str]) -> dict[str, int]:
        """The hash slot of each queue's keys (diagnostics, benchmarks)."""
        return {q: int(self.client.keyslot(self._queue_base(q))) for q in queues}


#: The event bus and event-sourced streams keep their log, subscriptions and delivery chains
#: under the prefix's own hash tag, while a cluster's jobs live under each queue's tag: a
#: delivery job would land where no claim looks. Until the bus is laid out per queue, a cluster
#: client refuses it with a clear error instead of storing deliveries nobody runs.
UNSUPPORTED_ON_CLUSTER = [
    "bus_subscriptions",
    "bus_subscribe",
    "bus_unsubscribe",
    "bus_publish",
    "bus_redeliver",
    "bus_finish",
    "bus_settle",
    "bus_head",
    "bus_read",
    "bus_get",
    "bus_deliveries",
    "bus_prune",
    "stream_append",
    "stream_read",
    "stream_version",
    "snapshot_save",
    "snapshot_load",
    "stream_prune",
]


def _refuse(name: str) -> Any:
    async def refuse(self: RedisClusterBackend, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError(
            f"{name}: the event bus and event streams are not available on Redis Cluster yet; "
            "use a single Redis node, PostgreSQL or SQLite for them (docs/redis.md)"
        )

    refuse.__name__ = name
    return refuse


for _name in UNSUPPORTED_ON_CLUSTER:
    setattr(RedisClusterBackend, _name, _refuse(_name))
