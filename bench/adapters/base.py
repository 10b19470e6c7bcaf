"""The adapter interface: what a workload asks of a library.

Methods may be plain or ``async``; the cell awaits whatever comes back. Three task bodies
exist in every library's app (``bench/apps``): ``noop(t)`` records its start, ``echo(x)``
returns ``x``, ``blob(data)`` carries a payload and never runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Sequence
from typing import Any

from bench.common import Unsupported, WorkerSpec
from bench.stores import Store

Maybe = Any  # None, a value, or an awaitable of one


class Adapter:
    """Base adapter: a library without bulk enqueue or result awaiting says so here."""

    name = ""
    #: How a batch of jobs is enqueued, shown next to the enqueue-bulk cell.
    bulk_note = ""
    #: Whether :meth:`roundtrip` works, and how it awaits the result (or why it cannot).
    results = False
    result_note = ""
    #: The worker command lines, by mode, for the configuration table.
    config_note: dict[str, str] = {}  # noqa: RUF012 - replaced per subclass

    def __init__(self, spec: dict[str, Any], store: Store) -> None:
        self.spec = spec
        self.store = store

    @property
    def python(self) -> str:
        return sys.executable

    def cli(self, name: str) -> str:
        """A console script of this environment (the library's own CLI)."""
        return os.path.join(os.path.dirname(sys.executable), name)

    def setup(self) -> Maybe:
        """Create the library's schema or tables and open producer connections."""
        return None

    def close(self) -> Maybe:
        """Close producer connections (called once, even after a failure)."""
        return None

    def enqueue(self, task: str, arg: Any) -> Maybe:
        """Enqueue one job of ``task`` (``noop``/``blob``/``echo``) with one argument."""
        raise NotImplementedError

    def enqueue_batch(self, task: str, args: Sequence[Any]) -> Maybe:
        """Enqueue ``len(args)`` jobs with the library's bulk API."""
        raise Unsupported("no bulk enqueue API")

    def roundtrip(self, x: str) -> Awaitable[Any] | Any:
        """Enqueue ``echo(x)`` and wait for its result; returns the result."""
        raise Unsupported("no API to await a job's result")

    def worker(self, mode: str) -> WorkerSpec:
        """The worker process for ``mode``: ``"c1"`` (one job at a time) or ``"high"``."""
        raise NotImplementedError

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.distribution)

    distribution = ""
