"""Conveyor on a Redis Cluster for ``bench.cluster``: one no-op task per queue, so jobs spread
over ``BENCH_QUEUES`` queues (and so over the shards)."""

from __future__ import annotations

from bench.apps import setting
from bench.recorder import record
from conveyor import Conveyor

QUEUES = [f"q{i}" for i in range(int(setting("QUEUES", "6")))]

app = Conveyor(setting("URL"), backend_options={"prefix": setting("NS")})


async def noop(t: float) -> None:
    """The no-op job: one record of its start."""
    record(t)


TASKS = {q: app.task(name=f"noop.{q}", queue=q)(noop) for q in QUEUES}
