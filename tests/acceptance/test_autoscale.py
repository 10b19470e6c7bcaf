"""``conveyor worker --autoscale``: a supervised group that follows the load, and ``conveyor
load`` (the numbers an external autoscaler reads).

Real processes, the real clock, deadlines only. The group starts with one process, grows to
its maximum of three when a backlog of long jobs waits longer than the queue's target, and
shrinks back to one, one process at a time, once nothing waits: it retires processes that are
in the middle of a job (longer than ``--grace``), and those jobs finish anyway: every job runs
exactly once, none is interrupted, none is handed back.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter

import pytest

from conveyor.domain.states import JobState

from .conftest import MakeStore, Proc, Store, wait_until
from .test_supervisor import live_children

pytestmark = pytest.mark.acceptance

SCALE_APP = "tests.acceptance.scale_apps:from_env"


def start_autoscaled(store: Store, bounds: str) -> Proc:
    argv = [
        sys.executable, "-m", "conveyor", "worker", SCALE_APP,
        "--autoscale", bounds, "-Q", "scaled", "--concurrency", "1", "--grace", "0.2",
        "--poll-interval", "0.2", "--log-level", "info",
    ]  # fmt: skip
    return store.spawn(argv, "autoscaled")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_the_group_grows_with_the_backlog_and_shrinks_without_interrupting(
    make_store: MakeStore, kind: str
) -> None:
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    supervisor = start_autoscaled(store, "1:3")
    await wait_until(
        lambda: live_children(store, supervisor.pid), 30, message="the first worker process"
    )
    sleeper = store.app.tasks["sleeper"].options(queue="scaled")
    ids = [h.id for h in await store.app.enqueue_many([sleeper.call(4.0) for _ in range(6)])]

    async def three() -> bool:
        return len(await live_children(store, supervisor.pid)) == 3

    await wait_until(three, 30, message="the group to grow to three processes")

    async def all_done() -> bool:
        records = await store.records(ids)
        return all(r.state is JobState.COMPLETED for r in records.values())

    await wait_until(all_done, 60, interval=0.2, message="every job to complete")

    async def back_to_one() -> bool:
        return len(await live_children(store, supervisor.pid)) == 1 and (
            supervisor.log().count(") retired") >= 2
        )

    await wait_until(back_to_one, 30, message="the group to shrink back to one process")
    log = supervisor.log()
    assert "autoscale: 1 -> " in log and " -> 3 worker processes" in log
    assert "autoscale: 3 -> 2" in log and "autoscale: 2 -> 1" in log
    # At least one process was retired in the middle of a job (every process was busy when
    # the load first allowed a shrink), and no job was interrupted or handed back.
    assert "1 running job(s)" in log, log
    starts = Counter(e["job"] for e in store.ledger.starts())
    assert set(starts) == set(ids) and set(starts.values()) == {1}, starts
    assert not store.ledger.events("interrupted")
    records = await store.records(ids)
    assert {r.attempts for r in records.values()} == {1}
    assert len({e["pid"] for e in store.ledger.starts()}) == 3

    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait_exit(30) == 0
    assert "Traceback" not in supervisor.log()


async def test_bad_autoscale_values_are_usage_errors(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    for value, message in (("3", "MIN:MAX"), ("4:2", "bounds"), ("queues", "no consumed queue")):
        argv = [
            sys.executable, "-m", "conveyor", "worker", "tests.acceptance.apps:from_env",
            "--autoscale", value,
        ]  # fmt: skip
        proc = store.spawn(argv, "bad")
        code = await proc.wait_exit(30)
        assert code == 2, proc.log()
        assert message in proc.log() and "Traceback" not in proc.log()


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_load_reports_depth_running_and_wait(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind)
    work = store.app.tasks["work"]
    await store.app.enqueue_many([work.call(1) for _ in range(3)])
    await store.app.enqueue_many([work.options(queue="billing").call(1)])
    await work.options(delay=3600).enqueue(1)  # scheduled for later: not load
    report = store.cli_json("load")
    rows = {q["queue"]: q for q in report["queues"]}
    assert rows["default"]["ready"] == 3 and rows["default"]["running"] == 0
    assert rows["default"]["oldest_age_seconds"] >= 0
    assert rows["billing"]["ready"] == 1
    assert rows["payments"] == {
        "queue": "payments", "ready": 0, "running": 0, "oldest_age_seconds": None
    }  # fmt: skip
    assert report["total"]["ready"] == 4
    only = store.cli_json("load", "-Q", "billing")
    assert [q["queue"] for q in only["queues"]] == ["billing"]
    table = store.cli("load")
    assert table.returncode == 0 and "oldest wait" in table.stdout
