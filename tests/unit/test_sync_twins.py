"""Every public coroutine method of the app and its managers has a working ``*_sync`` twin.

The test enumerates the coroutine methods itself, so a new async method without a twin (or
without a call here that proves its twin works) fails it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import CancelOutcome, Conveyor, JobState
from conveyor.cli.main import cli
from conveyor.domain.job import ErrorInfo
from conveyor.scheduler.spec import build_spec

#: Coroutine methods that have no twin on purpose, and why.
NO_TWIN = {
    ("Conveyor", "backend"): "a backend client belongs to the event loop that opened it",
    ("Schedules", "run"): "the scheduler loop, stopped through an asyncio.Event",
}


def _coroutine_methods(obj: object) -> list[str]:
    return sorted(
        name
        for name, member in inspect.getmembers(type(obj))
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    )


def _app(tmp_path: Path) -> tuple[Conveyor, Any]:
    app = Conveyor(f"sqlite:///{tmp_path}/jobs.db")

    @app.task(retry=1)
    def add(a: int, b: int) -> int:
        return a + b

    app.schedule("nightly", add, cron="0 3 * * *", args=(1, 2))
    return app, add


def test_every_public_coroutine_method_has_a_working_sync_twin(tmp_path: Path) -> None:
    app, add = _app(tmp_path)
    objects = {
        "Conveyor": app,
        "Inspector": app.inspect,
        "DeadLetters": app.dead_letters,
        "Schedules": app.schedules,
    }
    with app:  # open_sync / close_sync
        first = add.enqueue_sync(1, 2)
        add.enqueue_sync(2, 3)
        # Dead-letter the oldest job through the store, as a worker would.
        backend = app.portal.run(app.backend())
        [job] = app.portal.run(backend.claim("w", ["default"], 1, 30.0))
        app.portal.run(
            backend.fail(job.id, job.fence, ErrorInfo("error", "E", "boom"), retry_delay=None)
        )
        failed_id = job.id
        calls: dict[tuple[str, str], Callable[[], Any]] = {
            ("Conveyor", "open"): lambda: app.open_sync() is app,
            ("Conveyor", "close"): lambda: app.close_sync() is None,
            ("Conveyor", "migrate"): lambda: app.migrate_sync() == [],
            ("Conveyor", "cancel"): lambda: app.cancel_sync("f" * 32) is CancelOutcome.NOT_FOUND,
            ("Conveyor", "enqueue_many"): lambda: len(app.enqueue_many_sync([add.call(3, 4)])) == 1,
            ("Conveyor", "reset"): None,  # checked last (it wipes everything)
            ("Conveyor", "enqueue_seed000"): lambda: (
                app.enqueue_seed000_sync(
                    app.inspect.as_seed000_task(app.inspect.job_sync(first.id))  # type: ignore[arg-type]
                ).created
            ),
            ("Inspector", "job"): lambda: app.inspect.job_sync(failed_id).state is JobState.FAILED,
            ("Inspector", "jobs"): lambda: len(app.inspect.jobs_sync(state="failed")) == 1,
            ("Inspector", "damaged"): lambda: app.inspect.damaged_sync() == [],
            ("Inspector", "versions"): lambda: app.inspect.versions_sync(add.name) is not None,
            ("Inspector", "counts"): lambda: app.inspect.counts_sync().total["failed"] == 1,
            ("Inspector", "workers"): lambda: app.inspect.workers_sync() == [],
            ("Inspector", "load"): lambda: (
                [q.queue for q in app.inspect.load_sync(["default"])] == ["default"]
            ),
            ("Inspector", "task_metrics"): lambda: add.name in app.inspect.task_metrics_sync(),
            ("DeadLetters", "list"): lambda: (
                [j.id for j in app.dead_letters.list_sync()] == [failed_id]
            ),
            ("DeadLetters", "retry"): lambda: app.dead_letters.retry_sync(failed_id) is None,
            ("DeadLetters", "retry_all"): lambda: app.dead_letters.retry_all_sync() == 0,
            ("DeadLetters", "purge"): lambda: app.dead_letters.purge_sync() == 0,
            ("Schedules", "sync"): lambda: app.schedules.sync_sync() is None,
            ("Schedules", "add"): lambda: (
                app.schedules.add_sync(build_spec("hourly", add.name, cron="0 * * * *")) is None
            ),
            ("Schedules", "list"): lambda: (
                [s.name for s in app.schedules.list_sync()] == ["hourly", "nightly"]
            ),
            ("Schedules", "get"): lambda: app.schedules.get_sync("nightly").name == "nightly",
            ("Schedules", "pause"): lambda: app.schedules.pause_sync("hourly") is None,
            ("Schedules", "resume"): lambda: app.schedules.resume_sync("hourly") is None,
            ("Schedules", "update"): lambda: (
                app.schedules.update_sync("hourly", every=60.0, cron=None).every == 60.0
            ),
            ("Schedules", "trigger"): lambda: len(app.schedules.trigger_sync("nightly")) == 32,
            ("Schedules", "history"): lambda: (
                app.schedules.history_sync("nightly")[0]["outcome"] == "triggered"
            ),
            ("Schedules", "tick"): lambda: app.schedules.tick_sync(time.time()) >= 0,
            ("Schedules", "next_due"): lambda: app.schedules.next_due_sync(time.time()) is not None,
            ("Schedules", "remove"): lambda: app.schedules.remove_sync("hourly") is None,
        }
        enumerated = {
            (owner, name) for owner, obj in objects.items() for name in _coroutine_methods(obj)
        }
        assert enumerated - set(NO_TWIN) == set(calls), "a coroutine method without a twin test"
        for owner, name in calls:  # in the order written above
            twin = getattr(objects[owner], f"{name}_sync", None)
            assert callable(twin), f"{owner}.{name} has no {name}_sync twin"
            assert twin.__doc__, f"{owner}.{name}_sync has no docstring"
            check = calls[(owner, name)]
            if check is not None:
                assert check(), f"{owner}.{name}_sync returned something unexpected"
        assert app.dead_letters.list_sync() == []  # retried above
        assert first.id == failed_id
        assert first.id in {j.id for j in app.inspect.jobs_sync()}
        app.reset_sync()
        assert app.inspect.jobs_sync() == []
        assert app.schedules.list_sync() == []


def test_async_with_opens_and_closes(tmp_path: Path) -> None:
    import asyncio

    async def main() -> None:
        app = Conveyor(f"sqlite:///{tmp_path}/a.db")
        async with app as opened:
            assert opened is app
            loop = asyncio.get_running_loop()
            assert loop in app._backends  # connected ahead of time
        assert asyncio.get_running_loop() not in app._backends
        assert await app.open() is app
        await app.close()

    asyncio.run(main())


def test_db_reset_is_guarded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    app = Conveyor(url)

    @app.task
    def noop() -> None: ...

    with app:
        noop.enqueue_sync()
    runner = CliRunner()
    refused = runner.invoke(cli, ["db", "reset", "--url", url])  # CliRunner's stdin: no TTY
    assert refused.exit_code == 5, refused.output
    assert "without --yes" in refused.output
    with app:
        assert len(app.inspect.jobs_sync()) == 1
    done = runner.invoke(cli, ["db", "reset", "--yes", "--url", url])
    assert done.exit_code == 0, done.output
    with app:
        assert app.inspect.jobs_sync() == []
    assert Path(f"{tmp_path}/r.db").exists()  # emptied in place


@pytest.mark.parametrize("kind", ["memory"])
def test_memory_reset_empties_the_store(kind: str) -> None:
    app = Conveyor("memory://")

    @app.task
    def noop() -> None: ...

    with app:
        noop.enqueue_sync()
        assert app.reset_sync() == []
        assert app.inspect.jobs_sync() == []
