"""Reading: get, list (filters, newest first, paging), counts, progress, logs, workers."""

from __future__ import annotations

from dataclasses import replace

from conveyor.backends import Backend
from conveyor.domain.job import CountRow, JobFilter, LogEntry, WorkerInfo
from conveyor.domain.states import JobState

from ._support import T, error, job, log_entry, normalized


async def test_get_unknown_job(backend: Backend) -> None:
    assert await backend.get_job("0" * 32) is None
    assert await backend.get_job("") is None


async def test_list_is_newest_first_with_paging(backend: Backend) -> None:
    jobs = [job() for _ in range(7)]
    # Enqueue out of order: listing follows ids, not insertion.
    await backend.enqueue(jobs[3:], now=T)
    await backend.enqueue(jobs[:3], now=T + 1)
    newest_first = [j.id for j in reversed(jobs)]
    assert [r.id for r in await backend.list_jobs(JobFilter())] == newest_first
    assert [r.id for r in await backend.list_jobs(JobFilter(), limit=3)] == newest_first[:3]
    page2 = await backend.list_jobs(JobFilter(), limit=3, offset=3)
    assert [r.id for r in page2] == newest_first[3:6]
    assert [r.id for r in await backend.list_jobs(JobFilter(), limit=3, offset=6)] == [
        newest_first[6]
    ]
    assert await backend.list_jobs(JobFilter(), limit=3, offset=7) == []
    assert await backend.list_jobs(JobFilter(), limit=0) == []


async def test_list_filters(backend: Backend) -> None:
    a = job("a", "q1", workflow_id="wf-1")
    b = job("b", "q1")
    c = job("a", "q2", workflow_id="wf-1")
    d = job("a", "q1", run_at=T + 60)
    await backend.enqueue([a, b, c, d], now=T)
    [claimed] = await backend.claim("w", ["q2"], 1, 30, now=T)
    await backend.fail(claimed.id, claimed.fence, error("timeout"), retry_delay=None, now=T + 5)

    async def ids(flt: JobFilter) -> list[str]:
        return [r.id for r in await backend.list_jobs(flt, limit=100)]

    assert await ids(JobFilter(queue="q1")) == [d.id, b.id, a.id]
    assert await ids(JobFilter(task="a")) == [d.id, c.id, a.id]
    assert await ids(JobFilter(task="a", queue="q1")) == [d.id, a.id]
    assert await ids(JobFilter(states=(JobState.QUEUED,))) == [b.id, a.id]
    assert await ids(JobFilter(states=(JobState.SCHEDULED, JobState.FAILED))) == [d.id, c.id]
    assert await ids(JobFilter(states=())) == []
    assert await ids(JobFilter(error_code="timeout")) == [c.id]
    assert await ids(JobFilter(error_code="error")) == []
    assert await ids(JobFilter(finished_before=T + 6)) == [c.id]
    assert await ids(JobFilter(finished_before=T + 5)) == []
    assert await ids(JobFilter(workflow_id="wf-1")) == [c.id, a.id]
    assert await ids(JobFilter(ids=(a.id, d.id, "missing"))) == [d.id, a.id]
    assert await ids(JobFilter(ids=())) == []
    assert await ids(JobFilter(queue="q1", states=(JobState.QUEUED,), ids=(a.id, c.id))) == [a.id]
    assert await ids(JobFilter(queue="nope")) == []


async def test_count_jobs_groups_by_queue_task_state(backend: Backend) -> None:
    assert await backend.count_jobs() == []
    await backend.enqueue(
        [job("a", "q1"), job("a", "q1"), job("b", "q1"), job("a", "q2", run_at=T + 9)], now=T
    )
    [claimed] = await backend.claim("w", ["q1"], 1, 30, now=T)
    rows = sorted(await backend.count_jobs(), key=lambda r: (r.queue, r.task, r.state))
    assert rows == [
        CountRow("q1", "a", JobState.QUEUED, 1),
        CountRow("q1", "a", JobState.RUNNING, 1),
        CountRow("q1", "b", JobState.QUEUED, 1),
        CountRow("q2", "a", JobState.SCHEDULED, 1),
    ]
    await backend.complete(claimed.id, claimed.fence, None, now=T + 1)
    rows = sorted(await backend.count_jobs(), key=lambda r: (r.queue, r.task, r.state))
    assert rows[:2] == [
        CountRow("q1", "a", JobState.COMPLETED, 1),
        CountRow("q1", "a", JobState.QUEUED, 1),
    ]
    assert len(rows) == 4


async def test_progress_round_trips_while_the_lease_is_held(backend: Backend) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert await backend.set_progress(new.id, claimed.fence, b'{"done": 1}', now=T + 1)
    assert await backend.set_progress(new.id, claimed.fence, b'{"done": 2}\x00\xff', now=T + 2)
    record = await backend.get_job(new.id)
    assert record is not None and record.progress == b'{"done": 2}\x00\xff'
    await backend.complete(new.id, claimed.fence, None, now=T + 3)
    record = await backend.get_job(new.id)
    assert record is not None and record.progress == b'{"done": 2}\x00\xff'


async def test_logs_append_in_order(backend: Backend) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    first = [log_entry("one", at=T + 1), log_entry("two", at=T + 2)]
    bare = LogEntry(at=T + 3, level="warning", message="", attempt=0, extra=None)
    await backend.append_logs(new.id, first)
    await backend.append_logs(new.id, [])
    await backend.append_logs(new.id, [bare])
    record = await backend.get_job(new.id)
    assert record is not None
    assert record.logs == (*first, bare)


async def test_logs_for_an_unknown_job_are_ignored(backend: Backend) -> None:
    await backend.append_logs("0" * 32, [log_entry("lost")])
    assert await backend.get_job("0" * 32) is None
    assert await backend.list_jobs(JobFilter()) == []


def _worker(worker_id: str, heartbeat_at: float, **fields: object) -> WorkerInfo:
    base: dict[str, object] = {
        "host": "host-1",
        "pid": 4242,
        "started_at": T,
        "queues": ("default", "emails"),
        "concurrency": 8,
        "stats": {"processed": 3, "failed": 1, "busy": [1, 2], "load": 0.5},
    }
    base.update(fields)
    return WorkerInfo(id=worker_id, heartbeat_at=heartbeat_at, **base)  # type: ignore[arg-type]


async def test_worker_registry(backend: Backend) -> None:
    assert await backend.list_workers() == []
    a, b = _worker("worker-a", T + 10), _worker("worker-b", T + 20, queues=(), stats={})
    await backend.register_worker(a)
    await backend.register_worker(b)
    assert sorted(await backend.list_workers(), key=lambda w: w.id) == [a, b]
    refreshed = _worker("worker-a", T + 30, stats={"processed": 4})
    await backend.register_worker(refreshed)
    assert sorted(await backend.list_workers(), key=lambda w: w.id) == [refreshed, b]
    await backend.unregister_worker("worker-a")
    await backend.unregister_worker("never-registered")
    assert await backend.list_workers() == [b]


async def test_prune_workers_forgets_stale_heartbeats(backend: Backend) -> None:
    for worker_id, beat in [("old", T), ("edge", T + 10), ("new", T + 20)]:
        await backend.register_worker(_worker(worker_id, beat))
    assert await backend.prune_workers(T + 10) == 1
    assert sorted(w.id for w in await backend.list_workers()) == ["edge", "new"]
    assert await backend.prune_workers(T + 10) == 0
    assert await backend.prune_workers(T + 100) == 2
    assert await backend.list_workers() == []


async def test_logs_of_a_finished_job_are_still_appended(backend: Backend) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    await backend.complete(new.id, claimed.fence, None, now=T + 1)
    late = log_entry("after the fact", at=T + 2)
    await backend.append_logs(new.id, [late])
    record = await backend.get_job(new.id)
    assert record is not None and record.logs == (late,)


async def test_metadata_values_round_trip(backend: Backend) -> None:
    metadata = {
        "i64": 2**63 - 1,
        "neg": -(2**63),
        "tenth": 0.1,
        "huge": 1e300,
        "tiny": 5e-324,
        "empty-dict": {},
        "empty-list": [],
        "deep": {"a": {"b": {"c": [[], [{}], None, False]}}},
        "": "empty key",
    }
    new = job(metadata=metadata)
    await backend.enqueue([new], now=T)
    record = await backend.get_job(new.id)
    assert record is not None and record.metadata == metadata
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert claimed.metadata == metadata


async def test_summaries_are_full_records_without_the_heavy_fields(backend: Backend) -> None:
    big = b"x" * 100_000
    done, dead, waiting = job(payload=big), job(payload=big), job(payload=big, run_at=T + 60)
    await backend.enqueue([done, dead, waiting], now=T)
    claimed = {c.id: c for c in await backend.claim("w", ["default"], 2, 30, now=T)}
    await backend.set_progress(done.id, claimed[done.id].fence, b"50%", now=T)
    await backend.append_logs(done.id, [log_entry("hello")])
    assert await backend.complete(done.id, claimed[done.id].fence, big, now=T + 1)
    await backend.fail(dead.id, claimed[dead.id].fence, error(), retry_delay=None, now=T + 1)

    flt = JobFilter(states=(JobState.COMPLETED, JobState.FAILED, JobState.SCHEDULED))
    full = await backend.list_jobs(flt)
    summaries = await backend.list_summaries(flt)
    assert [s.id for s in summaries] == [r.id for r in full]
    for record, summary in zip(full, summaries, strict=True):
        assert summary.summary and not record.summary
        assert summary.payload == b"" and summary.result is None and summary.progress is None
        assert summary.logs == () and summary.errors == ()
        light = replace(
            record,
            payload=b"",
            result=None,
            progress=None,
            logs=(),
            errors=(),
            error=None if record.error is None else replace(record.error, traceback=None),
            summary=True,
        )
        assert normalized(summary, keep_fence=True) == normalized(light, keep_fence=True)
    [failed] = [s for s in summaries if s.id == dead.id]
    assert failed.error is not None and failed.error.code == "error"
    assert await backend.list_summaries(flt, limit=1, offset=1) == summaries[1:2]
