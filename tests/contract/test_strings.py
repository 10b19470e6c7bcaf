"""Names, keys and payloads are stored and matched verbatim, whatever they contain."""

from __future__ import annotations

import random

import pytest

from conveyor.backends import Backend, CancelOutcome
from conveyor.domain.job import CountRow, EnqueueResult, JobFilter, LogEntry, WorkerInfo
from conveyor.domain.states import JobState

from ._support import T, error, job

NASTY = {
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "sql-injection": "x'); DELETE FROM jobs; --",
    "sql-like": "100%_done\\",
    "sql-comment": "/* c */ -- d",
    "redis-hash-tag": "{user:1}",
    "braces": "}{",
    "colons": "a:b::c:",
    "spaces": " two  spaces ",
    "whitespace": "tab\there\nnew line\r",
    "unicode": "ключ-ünïcödé-键-🚀",
    "lua-special": "KEYS[1] ARGV[1] %s %d .. \\0 [[x]] ]]",
    "lua-pattern": "^$()%.[]*+-?",
    "json-like": '{"a": [1, 2]}',
    "dollar-question": "$1 ? :name @p",
    "backslashes": "\\\\server\\share\\",
}


@pytest.mark.parametrize("name", list(NASTY.values()), ids=list(NASTY))
async def test_strings_are_stored_and_matched_verbatim(backend: Backend, name: str) -> None:
    pattern = name.replace("*", "")  # '*' is the one wildcard in task patterns
    task = pattern or "task"
    new = job(
        task,
        name,
        name.encode(),
        idempotency_key=name,
        concurrency_key=name,
        trace_id=name,
        workflow_id=name,
        parents=(name, name + "'"),
        metadata={name: name, "k": [name]},
    )
    decoy = job(task + "x", name + "x", idempotency_key=name + " ", workflow_id=name + "x")
    assert await backend.enqueue([new, decoy], now=T) == [
        EnqueueResult(new.id, True, JobState.QUEUED),
        EnqueueResult(decoy.id, True, JobState.QUEUED),
    ]
    record = await backend.get_job(new.id)
    assert record is not None
    assert (record.task, record.queue, record.payload) == (task, name, name.encode())
    assert (record.idempotency_key, record.concurrency_key) == (name, name)
    assert (record.trace_id, record.workflow_id) == (name, name)
    assert record.parents == (name, name + "'")
    assert record.metadata == {name: name, "k": [name]}

    duplicate = job(task, name, idempotency_key=name)
    assert await backend.enqueue([duplicate], now=T) == [
        EnqueueResult(new.id, False, JobState.QUEUED)
    ]

    async def listed(flt: JobFilter) -> list[str]:
        return [r.id for r in await backend.list_jobs(flt)]

    assert await listed(JobFilter(queue=name)) == [new.id]
    assert await listed(JobFilter(task=task)) == [new.id]
    assert await listed(JobFilter(workflow_id=name)) == [new.id]

    [claimed] = await backend.claim(name, [name], 10, 30, now=T, tasks=[task])
    assert claimed.id == new.id and claimed.idempotency_key == name
    assert claimed.metadata == {name: name, "k": [name]}
    assert CountRow(name, task, JobState.RUNNING, 1) in await backend.count_jobs()
    running = await backend.get_job(new.id)
    assert running is not None and running.lease_owner == name

    assert await backend.cancel(new.id, name, now=T + 1) is CancelOutcome.REQUESTED
    [status] = await backend.heartbeat(name, [(new.id, claimed.fence)], 30, now=T + 1)
    assert status.held and status.cancel_requested
    entry = LogEntry(at=T + 1, level=name, message=name, attempt=1, extra={name: [name]})
    await backend.append_logs(new.id, [entry])
    err = error(name, name)
    assert (
        await backend.fail(
            new.id, claimed.fence, err, retry_delay=None, now=T + 2, dead_letter_queue=name
        )
        is JobState.FAILED
    )
    record = await backend.get_job(new.id)
    assert record is not None
    assert record.error == err and record.errors == (err,)
    assert record.dead_letter_queue == name and record.cancel_reason == name
    assert record.logs == (entry,)
    assert await listed(JobFilter(error_code=name)) == [new.id]
    assert await backend.retry_jobs(JobFilter(queue=name, task=task), now=T + 3) == [new.id]
    assert await backend.claim("w", [name + "x"], 10, 30, now=T + 3, tasks=[task]) == []

    worker = WorkerInfo(name, name, 1, T, T, (name, name + ":"), 1, {name: name})
    await backend.register_worker(worker)
    assert await backend.list_workers() == [worker]
    await backend.unregister_worker(name)
    assert await backend.list_workers() == []


async def test_keys_differing_only_in_case_or_padding_are_distinct(backend: Backend) -> None:
    keys = ["key", "Key", "KEY", "key ", " key", "kéy", "ke\u0301y", "key:", "{key}"]
    results = await backend.enqueue([job(idempotency_key=k) for k in keys], now=T)
    assert all(r.created for r in results)
    assert len({r.id for r in results}) == len(keys)


async def test_queues_sharing_a_prefix_are_separate(backend: Backend) -> None:
    names = ["q", "q:1", "q:", "q*", "{q}", "q "]
    jobs = {name: job(queue=name) for name in names}
    await backend.enqueue(list(jobs.values()), now=T)
    for name in names:
        claimed = await backend.claim("w", [name], 10, 30, now=T)
        assert [c.id for c in claimed] == [jobs[name].id], name


BINARY = {
    "all-bytes": bytes(range(256)),
    "all-bytes-reversed": bytes(reversed(range(256))),
    "empty": b"",
    "nul": b"\x00",
    "invalid-utf8": b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xff\xfe",
    "utf16-bom": "text".encode("utf-16"),
    "random-64k": random.Random(7).randbytes(65536),
}


@pytest.mark.parametrize("blob", list(BINARY.values()), ids=list(BINARY))
async def test_binary_values_round_trip_exactly(backend: Backend, blob: bytes) -> None:
    new = job(payload=blob)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert claimed.payload == blob
    assert await backend.set_progress(new.id, claimed.fence, blob, now=T + 1)
    assert await backend.complete(new.id, claimed.fence, blob, now=T + 2)
    record = await backend.get_job(new.id)
    assert record is not None
    assert (record.payload, record.progress, record.result) == (blob, blob, blob)
    [listed] = await backend.list_jobs(JobFilter())
    assert (listed.payload, listed.result) == (blob, blob)
