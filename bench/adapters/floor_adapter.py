"""The bare-Python floor (``floor``) and the backend-object loop (``backend-loop``).

Jobs are enqueued with Conveyor (so the store holds exactly what Conveyor's worker would
claim); the "worker" is :mod:`bench.floors`, which claims and completes them with no queue
machinery. Only the processing workloads use these two rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.conveyor_adapter import Adapter as ConveyorAdapter
from bench.common import Unsupported, WorkerSpec


class Adapter(ConveyorAdapter):
    name = "floor"
    kind = "raw"
    config_note = {  # noqa: RUF012
        "c1": "claim 1, complete 1 (same driver, SQL/Lua and settings as Conveyor)",
        "high": "claim up to 100, complete each concurrently (same driver, SQL/Lua, settings)",
    }

    def __init__(self, spec: dict[str, Any], store: Any) -> None:
        super().__init__(spec, store)
        if spec["lib"] == "backend-loop":
            self.name, self.kind = "backend-loop", "backend"
            self.config_note = {
                "c1": "backend.claim(1) then backend.complete (Conveyor's backend object)",
                "high": "backend.claim(100) then backend.complete each, concurrently",
            }

    async def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        if self.spec["workload"] != "process":
            raise Unsupported("the floor is measured for processing only")
        await super().enqueue_batch(task, args)

    def worker(self, mode: str) -> WorkerSpec:
        concurrency = "1" if mode == "c1" else "100"
        argv = [self.python, "-m", "bench.floors", self.kind, self.spec["backend"], concurrency]
        return WorkerSpec(argv, self.config_note[mode])
