"""Inspection: counts, job views, metrics, dead letters, and seed-000 renderings that validate
against the JSON Schemas the package ships."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import pytest

from conveyor import (
    AutoscalePolicy,
    ConfigurationError,
    InvalidStateError,
    JobNotFoundError,
    JobState,
    RetryPolicy,
)
from conveyor.testing import memory_app, run_until_idle
from conveyor.worker import Worker, WorkerConfig


def schema(name: str) -> dict[str, Any]:
    text = resources.files("conveyor.schemas").joinpath(name).read_text()
    return dict(json.loads(text))


def validate(instance: Any, name: str) -> None:
    jsonschema.validate(instance, schema(name), format_checker=jsonschema.FormatChecker())


async def test_seed000_shapes_validate() -> None:
    app = memory_app()
    queue = app.queue("mail", concurrency=3, priority=2, retry=RetryPolicy.build(3),
                      dead_letter="mail-dead")

    @app.task(queue="mail", timeout=5)
    async def ok(x: int) -> int:
        return x

    @app.task(queue="mail", retry=RetryPolicy.build(2, delay=0))
    async def bad() -> None:
        raise RuntimeError("x")

    h1 = await ok.options(priority="critical", delay=0).enqueue(1)
    h2 = await bad.enqueue()
    waiting = await ok.options(delay=3600).enqueue(2)
    worker = await run_until_idle(app)
    for handle in (h1, h2, waiting):
        info = await handle.info()
        validate(app.inspect.as_seed000_task(info), "task.json")
        validate(app.inspect.as_seed000_result(info), "task_execution_result.json")
    done = app.inspect.as_seed000_task(await h1.info())
    assert done["status"] == "completed" and done["priority"] == "critical"
    assert app.inspect.as_seed000_task(await h2.info())["status"] == "dead"
    assert app.inspect.as_seed000_result(await h2.info())["willRetry"] is False
    validate(queue.to_seed000(), "queue_config.json")
    # Rendered honestly: a dead-letter *set* (a label on failed jobs), not a consumable queue.
    assert queue.to_seed000()["deadLetterSet"] == "mail-dead"
    assert "deadLetterQueue" not in queue.to_seed000()
    assert queue.to_seed000()["concurrency"] == 3
    unlimited = app.queue_config("other").to_seed000()
    validate(unlimited, "queue_config.json")
    assert unlimited["concurrency"] is None  # no limit of its own, not "0"
    scaled = app.queue("bulk", autoscale={"minWorkers": 1, "maxWorkers": 6, "targetWaitMs": 5000})
    validate(scaled.to_seed000(), "queue_config.json")
    assert scaled.autoscale == AutoscalePolicy(1, 6, target_wait=5.0)
    assert scaled.to_seed000()["autoScale"]["maxWorkers"] == 6
    with pytest.raises(ConfigurationError, match="queue bulk: autoscale bounds"):
        app.queue("bulk", autoscale={"minWorkers": 3, "maxWorkers": 2})
    backend = await app.backend()
    await backend.register_worker(worker.info())
    (info,) = await app.inspect.workers()
    rendered = app.inspect.as_seed000_worker(info)
    validate(rendered, "worker_stats.json")
    assert rendered["totalProcessed"] == 3 and rendered["succeeded"] == 1


async def test_counts_metrics_and_paging() -> None:
    app = memory_app()
    app.queue("idle")

    @app.task
    async def quick(i: int) -> int:
        return i

    await app.enqueue_many([quick.call(i) for i in range(30)])
    worker = Worker(app, WorkerConfig(burst=True, burst_waits_for_scheduled=False))
    await worker.run()
    backend = await app.backend()
    await backend.register_worker(worker.info())
    counts = await app.inspect.counts()
    assert counts.by_task[quick.name]["completed"] == 30
    assert counts.by_queue["idle"]["queued"] == 0  # declared queues show up with zeros
    assert counts.total["completed"] == 30
    metrics = await app.inspect.task_metrics()
    assert metrics[quick.name]["succeeded"] == 30 and metrics[quick.name]["sampled"] == 30
    assert metrics[quick.name]["p50"] is not None
    assert metrics[quick.name]["p50"] <= metrics[quick.name]["p99"]
    first = await app.inspect.jobs(state=JobState.COMPLETED, limit=10)
    second = await app.inspect.jobs(state="completed", limit=10, offset=10)
    assert len(first) == len(second) == 10
    assert not {j.id for j in first} & {j.id for j in second}
    assert [j.id for j in first] == sorted((j.id for j in first), reverse=True)


async def test_dead_letter_management() -> None:
    app = memory_app()
    fail = {"on": True}

    @app.task
    async def flaky(n: int) -> int:
        if fail["on"]:
            raise ValueError(f"bad {n}")
        return n

    handles = [await flaky.enqueue(i) for i in range(5)]
    await run_until_idle(app)
    assert len(await app.dead_letters.list()) == 5
    with pytest.raises(JobNotFoundError):
        await app.dead_letters.retry("nope")
    ok = await flaky.enqueue(9)
    fail["on"] = False
    with pytest.raises(InvalidStateError):
        await app.dead_letters.retry(ok.id)  # queued, not dead
    await app.dead_letters.retry(handles[0].id, reset_attempts=True)
    assert (await handles[0].info()).record.attempts == 0
    assert await app.dead_letters.retry_all() == 4
    await run_until_idle(app)
    assert [await h.result(1) for h in handles] == [0, 1, 2, 3, 4]
    fail["on"] = True
    await flaky.enqueue(10)
    await run_until_idle(app)
    assert await app.dead_letters.purge(error_code="timeout") == 0
    assert await app.dead_letters.purge(error_code="error") == 1
    assert await app.dead_letters.list() == []
