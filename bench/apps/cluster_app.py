"""Conveyor on a Redis Cluster for ``bench.cluster``: one no-op task per queue, so jobs spread
over the queues (and so over the shards). Workers load ``bench.apps.cluster_app:from_env``."""

from __future__ import annotations

from typing import Any

from bench.apps import setting
from bench.recorder import record
from conveyor import Conveyor


def queues(count: int) -> list[str]:
    return [f"q{i}" for i in range(count)]


async def noop(t: float) -> None:
    """The no-op job: one record of its start."""
    record(t)


def build(url: str, ns: str, count: int) -> tuple[Conveyor, dict[str, Any]]:
    """The app on ``url`` under prefix ``ns`` and its tasks by queue."""
    app = Conveyor(url, backend_options={"prefix": ns})
    tasks = {q: app.task(name=f"noop.{q}", queue=q)(noop) for q in queues(count)}
    return app, tasks


def from_env() -> Conveyor:
    """The worker's app: ``BENCH_URL``, ``BENCH_NS``, ``BENCH_QUEUES``."""
    return build(setting("URL"), setting("NS"), int(setting("QUEUES", "6")))[0]
