"""Conveyor: ``task.enqueue``, ``app.enqueue_many``, ``handle.result``, ``conveyor worker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

APP = "bench.apps.conveyor_app:app"

#: Worker set-ups ``bench.sweep`` tries (``--processes`` × ``--concurrency``). The table rows
#: use ``DEFAULTS``: one process, as for every asyncio library; the sweep shows what a second
#: process (or more) adds on the machine at hand.
VARIANTS = {
    "c1": ["-c", "1"],
    "c100": ["-c", "100"],
    "p2c50": ["-p", "2", "-c", "50"],
    "p2c100": ["-p", "2", "-c", "100"],
    "p4c25": ["-p", "4", "-c", "25"],
    # bench.scaleout: the process scaling curve at a fixed 50 slots per process (with p2c50).
    "p1c50": ["-c", "50"],
    "p4c50": ["-p", "4", "-c", "50"],
}
DEFAULTS = {"c1": "c1", "high": "c100"}


class Adapter(Base):
    name = "conveyor"
    distribution = "conveyor"
    bulk_note = "app.enqueue_many (one script / statement per batch)"
    results = True
    result_note = "handle.result() (pub/sub or LISTEN wake-up)"
    config_note = {  # noqa: RUF012
        "c1": "conveyor worker -c 1",
        "high": "conveyor worker -c 100 (one process, asyncio)",
    }

    async def setup(self) -> None:
        from bench.apps import conveyor_app

        self.mod = conveyor_app
        self.tasks = {
            "noop": conveyor_app.noop,
            "echo": conveyor_app.echo,
            "blob": conveyor_app.blob,
        }
        await conveyor_app.app.migrate()
        await conveyor_app.app.backend()

    async def close(self) -> None:
        await self.mod.app.close()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.tasks[task].enqueue(arg)

    async def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        fn = self.tasks[task]
        await self.mod.app.enqueue_many([fn.call(a) for a in args])

    async def roundtrip(self, x: str) -> Any:
        handle = await self.mod.echo.enqueue(x)
        return await handle.result(timeout=30)

    def worker(self, mode: str) -> WorkerSpec:
        variant = self.spec.get("variant")
        flags = VARIANTS[variant or DEFAULTS[mode]]
        argv = [self.python, "-m", "conveyor", "worker", APP, *flags]
        note = self.config_note[mode] if variant is None else f"conveyor worker {' '.join(flags)}"
        return WorkerSpec([*argv, "--log-level", "critical"], note)
