"""Hostile input: names and keys with quotes, SQL, Lua-special characters and braces.

Each nasty string is at once a task name, a queue name, an idempotency key, a trace id and a
metadata key and value. A real worker process (whose app declares the same tasks and queues)
runs every job; the handler writes what its context says about the job to the ledger. All of
it must come back verbatim: from the store, from the handler's context, from a filtered
listing, and the idempotency key must still deduplicate.
"""

from __future__ import annotations

from conveyor.domain.job import JobFilter

from .conftest import MakeRig, Results

NASTY = [
    "it's",
    'say "hi"',
    "x'); DELETE FROM conveyor_jobs; --",
    "100%_done\\",
    "/* c */ -- d",
    "{user:1}",
    "}{",
    "a:b::c:",
    " two  spaces ",
    "tab\there\nnew line\r",
    "ключ-ünïcödé-键-🚀",
    "KEYS[1] ARGV[1] %s %d .. \\0 [[x]] ]]",
    "^$()%.[]+-?",
    '{"a": [1, 2]}',
    "$1 ? :name @p",
    "\\\\server\\share\\",
    "redis.call('FLUSHALL')",
    "'; SELECT pg_sleep(10); --",
    "*",
    "q*",
]


async def test_nasty_names_round_trip_through_a_worker(
    make_rig: MakeRig, kind: str, results: Results
) -> None:
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5)
    rig.declare_names(NASTY)
    ids: dict[str, str] = {}
    for name in NASTY:
        task = rig.app.tasks[name].options(
            idempotency_key=name, trace_id=name, metadata={name: name, "k": [name]}
        )
        handle = await task.enqueue(name)
        again = await task.enqueue(name)
        assert again.id == handle.id and not again.created, name
        ids[name] = handle.id
    rig.expect(ids.values())
    worker = rig.start_worker(concurrency=8)
    await rig.drain(timeout=60)
    codes = await rig.stop_all()
    verdict, records = await rig.verdict()
    seen = {e["job"]: e for e in rig.ledger.events("seen")}
    backend = await rig.app.backend()
    mismatches: list[str] = []
    for name, job_id in ids.items():
        rec, ctx = records[job_id], seen.get(job_id)
        stored = (rec.task, rec.queue, rec.idempotency_key, rec.trace_id, rec.metadata)
        want = (name, name, name, name, {name: name, "k": [name]})
        if stored != want:
            mismatches.append(f"stored {stored!r} for {name!r}")
        if ctx is None:
            mismatches.append(f"{name!r} never ran")
            continue
        told = (ctx["seen_task"], ctx["seen_queue"], ctx["seen_key"], ctx["seen_trace"],
                ctx["seen_metadata"], ctx["value"])  # fmt: skip
        if told != (*want, name):
            mismatches.append(f"handler saw {told!r} for {name!r}")
        listed = await backend.list_jobs(JobFilter(queue=name, task=name), limit=10)
        if [r.id for r in listed] != [job_id]:
            mismatches.append(f"listing queue/task {name!r} gave {[r.id for r in listed]}")
    results.write(
        "verbatim_names",
        kind,
        {**verdict.summary(), "names": len(NASTY), "mismatches": mismatches},
    )
    verdict.assert_clean()
    assert not mismatches, mismatches
    assert worker.pid in codes and set(codes.values()) == {0}, codes
