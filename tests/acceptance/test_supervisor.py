"""``conveyor worker --processes N``: a supervisor with N worker children.

Both children register and share the work; kill -9 of one child makes the supervisor start a
replacement; SIGTERM to the supervisor drains both children and everything exits cleanly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conveyor.domain.states import JobState

from .conftest import MakeStore, Store, wait_until, write_result

pytestmark = pytest.mark.acceptance


def parent_of(pid: int) -> int | None:
    """The parent pid of a live (non-zombie) process, else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[1])


async def live_children(store: Store, supervisor: int) -> set[int]:
    """Pids of registered workers that are live children of ``supervisor``."""
    workers = await store.app.inspect.workers()
    return {w.pid for w in workers if parent_of(w.pid) == supervisor}


async def test_processes_supervisor_restarts_and_stops_children(make_store: MakeStore) -> None:
    store = await make_store("sqlite", lease=2.0, heartbeat=0.5)
    supervisor = store.start_worker("--processes", "2", concurrency=2, grace=0.5)

    async def two_children() -> set[int] | None:
        pids = await live_children(store, supervisor.pid)
        return pids if len(pids) == 2 else None

    children = await wait_until(two_children, 30, message="two registered worker children")
    listed = store.cli_json("workers")
    assert {w["pid"] for w in listed} == children
    assert all(w["workerName"].split(":")[1] == str(w["pid"]) for w in listed)

    # Both children take work.
    work = store.app.tasks["work"]
    handles = await store.app.enqueue_many([work.call(100) for _ in range(24)])
    for handle in handles:
        assert await handle.result(timeout=30) == 100
    assert {e["pid"] for e in store.ledger.starts()} == children

    # kill -9 one child: the supervisor starts a replacement, the other child is untouched.
    victim, other = sorted(children)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int] | None:
        pids = await live_children(store, supervisor.pid)
        return pids if len(pids) == 2 and victim not in pids else None

    now_children = await wait_until(replaced, 30, message="a replacement child")
    restart_s = time.monotonic() - killed
    assert other in now_children and supervisor.alive
    (replacement,) = now_children - {other}
    after = await work.enqueue(1)
    assert await after.result(timeout=15) == 1

    # SIGTERM to the supervisor: both children drain and exit; so does the supervisor.
    sleeper = await store.app.tasks["sleeper"].enqueue(30.0)
    await wait_until(lambda: store.ledger.starts(sleeper.id), 15, message="the sleeper to start")
    stopped = time.monotonic()
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait_exit(15) == 0, supervisor.log()
    stop_s = time.monotonic() - stopped
    assert stop_s < 10, stop_s
    for pid in (other, replacement):
        assert parent_of(pid) is None, f"child {pid} outlived its supervisor"
    registered = {w.pid for w in await store.app.inspect.workers(include_stale=True)}
    assert not registered & {other, replacement}, "a cleanly stopped child is still registered"
    rec = await store.record(sleeper.id)
    assert rec.state is JobState.QUEUED and rec.attempts == 0 and rec.lease_owner is None
    write_result(
        "supervisor-sqlite",
        {"child_restart_s": round(restart_s, 3), "stop_after_sigterm_s": round(stop_s, 3)},
    )
