"""PgQueuer (asyncpg): ``Queries.enqueue`` (single and list forms), ``CompletionWatcher``,
``pgq run``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec


def _payload(arg: Any) -> bytes:
    return str(arg).encode()


#: Concurrency and batch sizes tried (``bench.sweep``).
#: pgq run refuses --max-concurrent-tasks below twice --batch-size, so concurrency 1 is the
#: entrypoint's own limit (``concurrency_limit=1``, set by the app from BENCH_CONCURRENCY).
VARIANTS = {
    "c1": ["--batch-size", "1"],
    "c100": ["--max-concurrent-tasks", "100"],
    "c100-b50": ["--max-concurrent-tasks", "100", "--batch-size", "50"],
}
DEFAULTS = {"c1": "c1", "high": "c100-b50"}


class Adapter(Base):
    name = "pgqueuer"
    distribution = "pgqueuer"
    bulk_note = "Queries.enqueue with lists (one statement per batch)"
    results = True
    result_note = "CompletionWatcher.wait_for (LISTEN; completion status, no return value)"

    def __init__(self, spec: dict[str, Any], store: Any) -> None:
        super().__init__(spec, store)
        os.environ["PGQUEUER_SCHEMA"] = store.ns

    async def setup(self) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.conn = await asyncpg.connect(self.store.url)
        self.driver = AsyncpgDriver(self.conn)
        self.queries = Queries(self.driver)
        await self.queries.install()
        self.watcher: Any = None

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.__aexit__(None, None, None)
        await self.conn.close()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.queries.enqueue(task, _payload(arg))

    async def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        count = len(args)
        await self.queries.enqueue([task] * count, [_payload(a) for a in args], [0] * count)

    async def roundtrip(self, x: str) -> Any:
        if self.watcher is None:
            from pgqueuer.core.completion import CompletionWatcher

            self.watcher = CompletionWatcher(self.driver, queries=self.queries)
            await self.watcher.__aenter__()
        [job_id] = await self.queries.enqueue("echo", _payload(x))
        await self.watcher.wait_for(job_id)
        return None

    def worker(self, mode: str) -> WorkerSpec:
        name = self.spec.get("variant") or DEFAULTS[mode]
        sizes = VARIANTS[name]
        argv = [self.cli("pgq"), "--schema", self.store.ns, "run", "bench.apps.pgqueuer_app:main"]
        # (pgq run --log-level fails in pgqueuer 1.6.0: the level arrives as a str.)
        return WorkerSpec([*argv, *sizes], f"pgq run {' '.join(sizes)}")
