"""The shared state behind every client of one ``memory://`` factory."""

from __future__ import annotations

import asyncio
import threading

from conveyor.domain.job import JobRecord, WorkerInfo


class MemoryStore:
    """The shared state behind every client of one ``memory://`` factory (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[str, JobRecord] = {}
        self.keys: dict[str, str] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.kv: dict[tuple[str, str], bytes] = {}
        # Stored throughput counters (the browse capability): (bucket, queue, task, outcome).
        self.throughput: dict[tuple[float, str, str, str], tuple[int, float]] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def wake(self) -> None:
        """Wake every client blocked in ``wait_for_jobs``/``wait_for_finish`` (any loop)."""
        with self.lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass

    def add_waiter(self, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self.lock:
            self._waiters.append(item)

    def remove_waiter(self, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self.lock:
            if item in self._waiters:
                self._waiters.remove(item)
