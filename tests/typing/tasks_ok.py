"""Checked by mypy --strict in tests/unit/test_typing.py: every assert_type here must hold."""

from __future__ import annotations

from typing import Any, assert_type

from conveyor import AsyncTask, Conveyor, JobHandle, JobInfo, Task

app = Conveyor("memory://")


@app.task
async def greet(name: str) -> str:
    return f"hello {name}"


@app.task(queue="reports", retry=3)
async def count_rows(table: str, *, limit: int = 10) -> int:
    return limit


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="tasks.report")
def report(day: str) -> dict[str, int]:
    return {day: 1}


async def async_callers() -> None:
    as_task: Task[[str], str] = greet  # an AsyncTask is a Task of the awaited result
    assert isinstance(as_task, AsyncTask)
    handle = await greet.enqueue("ada")
    assert_type(handle, JobHandle[str])
    assert_type(await handle.result(), str)
    assert_type(await (await count_rows.enqueue("t", limit=3)).result(timeout=5), int)
    assert_type(await (await add.enqueue(1, 2)).result(), int)
    assert_type(await (await report.options(delay="5m").enqueue("d")).result(), dict[str, int])
    specs = [greet.call("x"), greet.options(priority="high").call("y")]
    assert_type(specs[0].task, Task[Any, str])
    assert_type(await greet("direct"), str)  # calling an async task runs the coroutine
    assert_type(add(1, 2), int)
    jobs = await app.inspect.jobs(state="failed")
    assert_type(jobs, list[JobInfo])


def sync_callers() -> None:
    handle = greet.enqueue_sync("ada")
    assert_type(handle.result_sync(timeout=5), str)
    assert_type(add.enqueue_sync(1, 2).result_sync(), int)
    assert_type(report.enqueue_sync("d").result_sync(), dict[str, int])
    assert_type(app.inspect.jobs_sync(state="failed"), list[JobInfo])
    assert_type(app.dead_letters.retry_all_sync(queue="q"), int)
    assert_type(app.schedules.trigger_sync("nightly"), str)
    assert_type(app.migrate_sync(), list[str])
    assert_type(app.open_sync(), Conveyor)
