"""Group commit for one client: concurrent calls of one kind share a single statement or script.

A worker running many jobs at once completes them independently, each with its own
``complete()`` call, and each call would be its own round trip (on PostgreSQL its own
transaction and WAL flush; on Redis its own script). The
:class:`Coalescer` sends the first call at once; calls that arrive while it is in flight wait
and go together in the next statement. A lone caller sees no added latency; a busy worker sees
one flush per batch instead of one per job. Every caller still gets its own result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Run ``run_batch(items) -> results`` (same order) for calls that pile up concurrently.

    Items with the same ``key`` never share a batch (the later waits for the next one), so a
    batch statement never sees one row twice. A result that is an exception is raised to that
    item's caller only; an exception from ``run_batch`` itself goes to every caller.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        key: Callable[[Item], Hashable],
        max_batch: int = 500,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """Queue ``item`` and wait for its result (or the batch's exception)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        rest: list[tuple[Item, asyncio.Future[Result]]] = []
        keys: set[Hashable] = set()
        for entry in self._pending:
            k = self._key(entry[0])
            if entry[1].cancelled():
                continue
            if k in keys or len(batch) >= self._max_batch:
                rest.append(entry)
            else:
                keys.add(k)
                batch.append(entry)
        self._pending = rest
        return batch

    async def _drain(self) -> None:
        while self._pending:
            batch = self._take()
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            try:
                results = await self._run_batch([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)  # this caller's own failure
                else:
                    future.set_result(result)

    async def close(self) -> None:
        """Wait for the batch in flight (new calls after this are still served)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)
