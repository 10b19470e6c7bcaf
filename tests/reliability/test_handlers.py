"""Scenario 5: handlers that misbehave.

* **Hang past the timeout**: an async handler (cancelled at its 1 s deadline), the same with
  ``retry_on=[JobTimeout]`` (two attempts), and a thread handler that ignores cancellation
  (failed at the deadline; the thread runs on, holding its slot, but the job never runs twice).
* **Block the event loop** with CPU work: for well under half a lease the worker's heartbeats
  catch up and the job runs once; for longer (three leases here), the blocked worker finds
  itself cut off once it has its loop back and abandons its jobs, another worker has
  recovered the job and runs it, and the blocked worker's late completion is refused.
* **Exhaust memory in a process-mode task**: the child lowers its own ``RLIMIT_AS`` and
  allocates past it. A ``MemoryError`` fails the attempt with code ``error``; a child killed
  the way the OOM killer would fails it with ``process_died``; both are retried by their
  policy, then dead-lettered, while the worker and its pool go on running other jobs.
"""

from __future__ import annotations

import json

from conveyor.domain.ids import new_job_id

from . import apps
from .checker import Expect
from .conftest import MakeRig, Results
from .harness import now, wait_until

TIMEOUT = Expect.of("failed", codes=["timeout"])
#: A CPU block the worker rides out (lease 2 s: a worker that has not heartbeaten for half a
#: lease abandons its jobs, so the block must end well before that).
SHORT_BLOCK = 0.4


async def test_handlers_that_hang_past_their_timeout(
    make_rig: MakeRig, kind: str, results: Results
) -> None:
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5)
    hang = [await rig.enqueue("hang", 30.0, expect=TIMEOUT) for _ in range(3)]
    hang_retry = [await rig.enqueue("hang_retry", 30.0, expect=TIMEOUT) for _ in range(2)]
    hang_thread = [await rig.enqueue("hang_thread", 3.0, expect=TIMEOUT) for _ in range(2)]
    await rig.enqueue_many([("work", (20,))] * 20)
    worker = rig.start_worker(concurrency=4)
    await rig.drain(timeout=60)
    # The uncooperative threads finish on their own (their jobs are already failed).
    await wait_until(lambda: rig.ledger.count("end") >= rig.ledger.count("start"), 15)
    assert worker.alive, worker.log()
    codes = await rig.stop_all()
    verdict, records = await rig.verdict()

    starts = {e["x"]: e for e in rig.ledger.events("start")}
    deadline_err: list[float] = []
    for e in rig.ledger.events("fail_acked"):
        if e["code"] == "timeout":
            run = [
                s for s in starts.values() if s["job"] == e["job"] and s["attempt"] == e["attempt"]
            ]
            deadline_err.append(e["t"] - run[0]["t"] - apps.HANG_TIMEOUT)
    thread_ends = [e for e in rig.ledger.events("end") if starts[e["x"]]["job"] in hang_thread]
    results.write(
        "hang_timeout",
        kind,
        {
            **verdict.summary(),
            "timeout_s": apps.HANG_TIMEOUT,
            "failed_after_deadline_s": {
                "min": round(min(deadline_err), 3),
                "max": round(max(deadline_err), 3),
            },
            "uncooperative_threads_ran_on_to": [
                round(e["t"] - starts[e["x"]]["t"], 2) for e in thread_ends
            ],
        },
    )
    verdict.assert_clean()
    for job_id in hang + hang_thread:
        assert records[job_id].attempts == 1 and verdict.accounts[job_id].executions == 1
    for job_id in hang_retry:
        assert records[job_id].attempts == 2 and verdict.accounts[job_id].executions == 2
    assert all(records[j].error.code == "timeout" for j in hang + hang_retry + hang_thread)
    assert max(deadline_err) < 2.0, deadline_err  # failed at its deadline, not much later
    assert all(e["outcome"] == "ok" for e in thread_ends)  # the thread ran on, unharmed
    assert verdict.duplicated_jobs == 0 and verdict.max_stalls_seen == 0
    assert set(codes.values()) == {0}, codes
    rig.logs_without_tracebacks("JobTimeout", "CancelledError")


async def test_a_handler_that_blocks_the_event_loop(
    make_rig: MakeRig, kind: str, results: Results
) -> None:
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5, max_stalls=3)
    # Shorter than half a lease minus a heartbeat: the lease never looks in danger.
    short = [await rig.enqueue("block", SHORT_BLOCK, 1) for _ in range(2)]
    await rig.enqueue_many([("work", (50,))] * 30)
    a = rig.start_worker(concurrency=4)
    b = rig.start_worker(concurrency=4)
    await rig.wait_started(a, b)
    await wait_until(lambda: rig.ledger.count("block") == 2, 30, message="the short blocks")
    # Now one that holds its worker's loop for three leases.
    long = await rig.enqueue("block", 3 * rig.lease, 1)
    await rig.drain(timeout=60)
    # Stop only once the blocked worker has its loop back (see test_shutdown_after_a_
    # swallowed_cancellation for what a SIGTERM landing mid-block can do on Redis).
    await wait_until(lambda: rig.ledger.count("block") == 3, 30, message="the long block")
    await wait_until(lambda: rig.ledger.count("end") >= rig.ledger.count("start"), 30)
    assert a.alive and b.alive
    codes = await rig.stop_all()
    verdict, records = await rig.verdict()
    blocks = rig.ledger.events("block")
    results.write(
        "blocked_loop",
        kind,
        {
            **verdict.summary(),
            "lease_s": rig.lease,
            "blocks_s": sorted(round(e["t1"] - e["t0"], 2) for e in blocks),
            "long_block_job": {
                "attempts": records[long].attempts,
                "stalls": records[long].stalls,
                "runs": verdict.accounts[long].executions,
            },
        },
    )
    verdict.assert_clean()
    for job_id in short:  # heartbeats caught up after a block well under half a lease
        assert records[job_id].stalls == 0 and verdict.accounts[job_id].executions == 1
    rec = records[long]
    assert rec.state.value == "completed" and rec.stalls == 1 and rec.attempts == 2, rec
    assert verdict.accounts[long].executions == 2
    assert json.loads(rec.result or b"{}")["attempt"] == 2  # the rescuer's run won
    assert set(verdict.duplicate_runs) <= {"blocked_loop"}, verdict.duplicate_runs
    # A claim in flight when the loop stalled keeps its reply (worker/deadlines.py): it used
    # to be thrown away by its expired deadline, stranding the jobs it had leased.
    assert "claim failed" not in a.log() + b.log()
    assert set(codes.values()) == {0}, codes


async def test_memory_exhaustion_in_a_process_mode_task(
    make_rig: MakeRig, kind: str, results: Results
) -> None:
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5)
    worker = rig.start_worker(concurrency=3)
    await rig.wait_started(worker)
    ids = {name: new_job_id() for name in ("memory_error", "oom_killed")}
    oom = rig.app.tasks["oom"]
    await oom.options(job_id=ids["memory_error"]).enqueue(ids["memory_error"], 64, False)
    await oom.options(job_id=ids["oom_killed"]).enqueue(ids["oom_killed"], 64, True)
    rig.expected[ids["memory_error"]] = Expect.of("failed", codes=["error"])
    rig.expected[ids["oom_killed"]] = Expect.of("failed", codes=["process_died"])
    crunch = []
    for _ in range(4):
        job_id = new_job_id()
        await rig.app.tasks["crunch"].options(job_id=job_id).enqueue(job_id, 200_000)
        rig.expected[job_id] = Expect.of("completed")
        crunch.append(job_id)
    t0 = now()
    await rig.drain(timeout=90)
    assert worker.alive, worker.log()
    # The pool still works after both failures: one more process job, after everything.
    late = new_job_id()
    await rig.app.tasks["crunch"].options(job_id=late).enqueue(late, 1000)
    rig.expected[late] = Expect.of("completed")
    await rig.drain(timeout=60)
    elapsed = now() - t0
    codes = await rig.stop_all()
    records = await rig.records()
    runs = {j: sum(1 for e in rig.ledger.events("start") if e["job"] == j) for j in ids.values()}
    me, ok = records[ids["memory_error"]], records[ids["oom_killed"]]
    results.write(
        "process_oom",
        kind,
        {
            "enqueued": len(rig.expected),
            "completed": sum(1 for r in records.values() if r.state.value == "completed"),
            "failed": sum(1 for r in records.values() if r.state.value == "failed"),
            "lost": sum(
                1 for j in rig.expected if records[j].state.value not in ("completed", "failed")
            ),
            "memory_error": {
                "code": me.error and me.error.code,
                "type": me.error and me.error.type,
                "attempts": me.attempts,
                "runs": runs[ids["memory_error"]],
            },
            "oom_killed": {
                "code": ok.error and ok.error.code,
                "type": ok.error and ok.error.type,
                "attempts": ok.attempts,
                "runs": runs[ids["oom_killed"]],
            },
            "elapsed_s": round(elapsed, 2),
            "limit_mb": 64,
        },
    )
    assert me.state.value == "failed" and me.error is not None, me
    assert me.error.code == "error" and me.error.type == "MemoryError", me.error
    assert ok.state.value == "failed" and ok.error is not None, ok
    assert ok.error.code == "process_died", ok.error
    assert me.attempts == ok.attempts == 2 and set(runs.values()) == {2}, runs
    assert all(records[j].state.value == "completed" for j in [*crunch, late])
    assert set(codes.values()) == {0}, codes


async def test_current_job_in_a_process_mode_handler(make_rig: MakeRig) -> None:
    rig = await make_rig("sqlite")
    handle = await rig.app.tasks["whoami_process"].enqueue()
    rig.start_worker(concurrency=1)
    assert await handle.result(timeout=60) == handle.id
