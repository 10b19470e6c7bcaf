"""Dramatiq (Redis broker): ``actor.send``, ``group``, ``Results``, ``dramatiq``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

#: Process and thread counts tried for the "natural best" on two cores (``bench.sweep``).
VARIANTS = {
    "p1t1": ["-p", "1", "-t", "1"],
    "p1t8": ["-p", "1", "-t", "8"],
    "p2t8": ["-p", "2", "-t", "8"],
    "p2t32": ["-p", "2", "-t", "32"],
    "p4t8": ["-p", "4", "-t", "8"],
}
DEFAULTS = {"c1": "p1t1", "high": "p4t8"}


class Adapter(Base):
    name = "dramatiq"
    distribution = "dramatiq"
    bulk_note = "group(...).run(): one enqueue per message"
    results = True
    result_note = "Message.get_result(block=True) (Results middleware, Redis backend)"

    def setup(self) -> None:
        from bench.apps import dramatiq_app

        self.mod = dramatiq_app
        self.tasks = {
            "noop": dramatiq_app.noop,
            "echo": dramatiq_app.echo,
            "blob": dramatiq_app.blob,
        }

    def close(self) -> None:
        self.mod.broker.close()

    def enqueue(self, task: str, arg: Any) -> None:
        self.tasks[task].send(arg)

    def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        from dramatiq import group

        fn = self.tasks[task]
        group([fn.message(a) for a in args]).run()

    def roundtrip(self, x: str) -> Any:
        message = self.mod.echo.send(x)
        return message.get_result(block=True, timeout=30_000)

    def worker(self, mode: str) -> WorkerSpec:
        name = self.spec.get("variant") or DEFAULTS[mode]
        argv = [self.cli("dramatiq"), "bench.apps.dramatiq_app", *VARIANTS[name]]
        return WorkerSpec(argv, f"dramatiq {' '.join(VARIANTS[name])}")
