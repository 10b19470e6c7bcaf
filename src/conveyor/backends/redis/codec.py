"""Key layout and value encoding of the Redis backend (no I/O here).

Everything one factory stores on a single Redis lives under the key base ``{<prefix>}:`` — one
hash tag, so every script touches one slot; on a Redis Cluster each queue has its own base
``{<prefix>:<queue>}:`` (see :mod:`conveyor.backends.redis.cluster`, ``docs/redis.md`` and
``lua/lib.lua`` for the whole layout). A job is a hash ``j:<id>`` plus its payload in a string
``d:<id>`` (kept apart so the hash stays in Redis's compact listpack encoding); the hash uses
short field names and omits default values:

===== ================= ===== =================== ===== ===================
field meaning           field meaning             field meaning
===== ================= ===== =================== ===== ===================
t     task              lu    lease until         L     logs (JSON array)
q     queue             to    timeout             tr    trace id
s     state             ex    expires at          md    metadata (JSON)
            ik    idempotency key     w     workflow id
p     priority (0)      ck    concurrency key     pa    parents (JSON)
ra    run at            r     result              sa    started at
a     attempts (0)      e     last error (JSON)   fa    finished at
ma    max attempts (1)  E     errors (JSON array) pv    payload version (1)
c     created at        g     progress            st    stalls (0)
f     fence (0)         cr    cancel requested    cx    cancel reason
lo    lease owner       ak    last write's token  dl    dead-letter queue
===== ================= ===== =================== ===== ===================
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from conveyor.backends.common import FieldReader
from conveyor.domain.job import (
    ClaimedJob,
    CountRow,
    JobFilter,
    JobRecord,
    LogEntry,
    NewJob,
    WorkerInfo,
)
from conveyor.domain.states import JobState

#: Values per job in the enqueue script's ARGV.
ENQUEUE_FIELDS = 17

_QUEUE_ESCAPE = re.compile(r"[%:{}]")
_PREFIX_ESCAPE = re.compile(r"[%{}]")


def _pct(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def key_base(prefix: str) -> str:
    """``{<prefix>}:`` with ``%``, ``{`` and ``}`` percent-escaped, so the tag stays whole."""
    return "{" + _PREFIX_ESCAPE.sub(_pct, prefix) + "}:"


def escape_queue(queue: str) -> str:
    """A queue name as it appears inside keys (``%``, ``:``, ``{``, ``}`` escaped)."""
    return _QUEUE_ESCAPE.sub(_pct, queue)


def queue_key(base: str, queue: str, suffix: str) -> str:
    return f"{base}q:{escape_queue(queue)}:{suffix}"


def scan_pattern(base: str) -> str:
    """A ``SCAN MATCH`` pattern for every key under ``base`` (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", base) + "*"


def num(value: float | int) -> str:
    """A number as text that parses back to the same value (``repr`` of a float is exact)."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def opt_num(value: float | int | None) -> str:
    return "" if value is None else num(value)


def opt_str(value: str | None) -> str:
    """Optional strings cross into Lua as ``''`` (None) or ``'=' + value``."""
    return "" if value is None else "=" + value


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _run_at(job: NewJob) -> str:
    """The run-at argument: a time, '' for the store's now, '+<seconds>' for a delay after it."""
    if job.run_at is None and job.delay is not None:
        return "+" + num(job.delay)
    return opt_num(job.run_at)


def encode_new_job(job: NewJob) -> list[str | bytes]:
    """The :data:`ENQUEUE_FIELDS` script arguments of one job."""
    return [
        job.id,
        job.task,
        job.queue,
        job.payload,
        str(job.priority),
        _run_at(job),
        str(job.max_attempts),
        opt_num(job.timeout),
        opt_num(job.expires_at),
        opt_str(job.idempotency_key),
        opt_str(job.concurrency_key),
        opt_str(job.trace_id),
        dumps(job.metadata) if job.metadata else "",
        opt_str(job.workflow_id),
        dumps(list(job.parents)) if job.parents else "",
        str(job.payload_version),
        "1" if job.blocked else "",
    ]


def encode_filter(flt: JobFilter, states: Sequence[JobState]) -> list[str]:
    """A :class:`JobFilter` as the arguments ``select.lua``'s ``read_filter`` reads; ``states``
    is the (already narrowed) set of states to look in."""
    args: list[str] = []
    queues = [] if flt.queue is None else [flt.queue]
    args += [str(len(queues)), *queues]
    args += [str(len(states)), *(s.value for s in states)]
    if flt.ids is None:
        args.append("-1")
    else:
        args += [str(len(flt.ids)), *flt.ids]
    args += [
        opt_str(flt.task),
        opt_str(flt.error_code),
        opt_num(flt.finished_before),
        opt_str(flt.workflow_id),
    ]
    return args


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _int(value: bytes | None, default: int) -> int:
    return default if value is None else int(value)


#: The hash fields a listing reads (``list_summary.lua``): not the result, progress, logs or
#: error history, and the payload key is not read at all.
SUMMARY_FIELDS = (
    *("t", "q", "s", "p", "ra", "a", "ma", "c", "f", "lo", "lu", "to", "ex", "ik"),
    *("ck", "e", "tr", "md", "w", "pa", "sa", "fa", "pv", "st", "cr", "cx", "dl"),
)


def decode_record(
    job_id: str, h: Mapping[bytes, bytes], payload: bytes | None, *, summary: bool = False
) -> JobRecord:
    """A job hash (``HGETALL``, or the :data:`SUMMARY_FIELDS` of it) and its payload as a
    :class:`JobRecord`. Never raises for a damaged record (a field overwritten by hand, a
    deleted payload key): unreadable fields get defaults and are named in ``damage``."""
    r = FieldReader()
    error = r.error("error", h.get(b"e"))
    record = JobRecord(
        id=job_id,
        task=r.text("task", h.get(b"t")),
        queue=r.text("queue", h.get(b"q")),
        state=r.state(h.get(b"s")),
        payload=b"" if summary else r.blob("payload", payload),
        priority=r.integer("priority", h.get(b"p"), 0),
        run_at=r.number("run_at", h.get(b"ra")),
        attempts=r.integer("attempts", h.get(b"a"), 0),
        max_attempts=r.integer("max_attempts", h.get(b"ma"), 1),
        created_at=r.number("created_at", h.get(b"c")),
        fence=r.integer("fence", h.get(b"f"), 0),
        lease_owner=r.opt_text("lease_owner", h.get(b"lo")),
        lease_until=r.opt_number("lease_until", h.get(b"lu")),
        timeout=r.opt_number("timeout", h.get(b"to")),
        expires_at=r.opt_number("expires_at", h.get(b"ex")),
        idempotency_key=r.opt_text("idempotency_key", h.get(b"ik")),
        concurrency_key=r.opt_text("concurrency_key", h.get(b"ck")),
        result=None if summary else h.get(b"r"),
        error=error if not summary or error is None else replace(error, traceback=None),
        errors=() if summary else r.error_list("errors", h.get(b"E")),
        progress=None if summary else h.get(b"g"),
        logs=() if summary else r.log_list("logs", h.get(b"L")),
        trace_id=r.opt_text("trace_id", h.get(b"tr")),
        metadata=r.mapping("metadata", h.get(b"md")),
        workflow_id=r.opt_text("workflow_id", h.get(b"w")),
        parents=r.strings("parents", h.get(b"pa")),
        started_at=r.opt_number("started_at", h.get(b"sa")),
        finished_at=r.opt_number("finished_at", h.get(b"fa")),
        payload_version=r.integer("payload_version", h.get(b"pv"), 1),
        stalls=r.integer("stalls", h.get(b"st"), 0),
        cancel_requested=h.get(b"cr") is not None,
        cancel_reason=r.opt_text("cancel_reason", h.get(b"cx")),
        dead_letter_queue=r.opt_text("dead_letter_queue", h.get(b"dl")),
        summary=summary,
    )
    return replace(record, damage=tuple(r.damage)) if r.damage else record


#: Values per job in the claim script's reply: the id, then these hash fields.
CLAIM_WIDTH = 17


class UnreadableJob(ValueError):
    """A claimed job whose stored record cannot be decoded (a corrupt field)."""

    def __init__(self, job_id: str, fence: int | None, attempt: int, reason: str) -> None:
        super().__init__(f"job {job_id}: {reason}")
        self.job_id, self.fence, self.attempt, self.reason = job_id, fence, attempt, reason


def decode_claimed(row: Sequence[Any]) -> ClaimedJob:
    """One job of the claim script's reply (id, t q d p a ma f lu to tr ik md pv c st w).

    Raises :class:`UnreadableJob` when a stored field cannot be decoded.
    """
    (job_id, task, queue, payload, prio, attempts, max_attempts, fence, lease_until, timeout,
     trace, ikey, metadata, version, created, stalls, workflow) = row  # fmt: skip
    try:
        meta = {} if metadata is None else json.loads(metadata)
        if not isinstance(meta, dict):
            raise ValueError(f"metadata is not a JSON object: {metadata!r:.40}")
        return ClaimedJob(
            id=job_id.decode(),
            task=task.decode(),
            queue=queue.decode(),
            payload=payload,
            priority=_int(prio, 0),
            attempt=int(attempts),
            max_attempts=_int(max_attempts, 1),
            fence=int(fence),
            lease_until=float(lease_until),
            timeout=_float(timeout),
            trace_id=_text(trace),
            idempotency_key=_text(ikey),
            metadata=meta,
            payload_version=_int(version, 1),
            created_at=float(created),
            stalls=_int(stalls, 0),
            workflow_id=_text(workflow),
        )
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise UnreadableJob(
            job_id.decode(errors="replace"), _number(fence), _number(attempts) or 0, str(exc)
        ) from exc


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def decode_counts(h: Mapping[bytes, bytes]) -> list[CountRow]:
    """The counters hash (``state \\0 len(queue) \\0 queue task``) as sorted rows."""
    merged: dict[tuple[str, str, JobState], int] = {}
    for field, value in h.items():
        try:
            state_text, length, rest = field.split(b"\0", 2)
            n = int(length)
            queue, task = rest[:n].decode(), rest[n:].decode()
            count = int(value)
        except (ValueError, UnicodeDecodeError):
            continue  # a damaged counter: skipped, as no job is behind it
        try:
            state = JobState(state_text.decode())
        except (ValueError, UnicodeDecodeError):
            state = JobState.UNKNOWN
        merged[(queue, task, state)] = merged.get((queue, task, state), 0) + count
    return [CountRow(q, t, s, n) for (q, t, s), n in sorted(merged.items())]


def encode_worker(info: WorkerInfo) -> str:
    return dumps(
        {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "started_at": info.started_at,
            "heartbeat_at": info.heartbeat_at,
            "queues": list(info.queues),
            "concurrency": info.concurrency,
            "stats": info.stats,
        }
    )


def decode_worker(raw: bytes) -> WorkerInfo:
    """A registry entry (damaged fields named in ``stats["damage"]``, never raised)."""
    r = FieldReader()
    data = r.mapping("worker", raw)
    info = WorkerInfo(
        id=r.text("id", data.get("id")),
        host=r.text("host", data.get("host")),
        pid=r.integer("pid", data.get("pid"), 0),
        started_at=r.number("started_at", data.get("started_at")),
        heartbeat_at=r.number("heartbeat_at", data.get("heartbeat_at")),
        queues=r.strings("queues", data.get("queues")),
        concurrency=r.integer("concurrency", data.get("concurrency"), 0),
        stats=r.mapping("stats", data.get("stats")),
    )
    if r.damage:
        info.stats["damage"] = list(r.damage)
    return info


def encode_logs(entries: Sequence[LogEntry]) -> str:
    """Log entries as a comma-separated JSON fragment (appended to the job's array)."""
    return ",".join(dumps(e.to_dict()) for e in entries)
