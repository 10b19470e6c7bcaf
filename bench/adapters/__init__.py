"""One adapter per library: how to enqueue, await a result and start its worker CLI.

The registry below is all the harness needs to know about a library: its adapter module, the
Python environment it runs in and the backends it supports. Standard library only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.adapters.base import Adapter
    from bench.stores import Store


@dataclass(frozen=True)
class LibraryInfo:
    """A library under test: ``env`` names the virtualenv (``main`` is Conveyor's ``.venv``)."""

    name: str
    module: str
    env: str
    backends: tuple[str, ...]
    distribution: str
    probe: str  # a module whose import proves the library is installed


LIBRARIES: dict[str, LibraryInfo] = {
    info.name: info
    for info in (
        LibraryInfo(
            "conveyor",
            "bench.adapters.conveyor_adapter",
            "main",
            ("redis", "postgres", "sqlite"),
            "conveyor",
            "conveyor",
        ),
        LibraryInfo(
            "floor",
            "bench.adapters.floor_adapter",
            "main",
            ("redis", "postgres", "sqlite"),
            "conveyor",
            "conveyor",
        ),
        LibraryInfo(
            "backend-loop",
            "bench.adapters.floor_adapter",
            "main",
            ("redis", "postgres", "sqlite"),
            "conveyor",
            "conveyor",
        ),
        LibraryInfo(
            "celery", "bench.adapters.celery_adapter", "peers", ("redis",), "celery", "celery"
        ),
        LibraryInfo("rq", "bench.adapters.rq_adapter", "peers", ("redis",), "rq", "rq"),
        LibraryInfo(
            "dramatiq",
            "bench.adapters.dramatiq_adapter",
            "peers",
            ("redis",),
            "dramatiq",
            "dramatiq",
        ),
        LibraryInfo("arq", "bench.adapters.arq_adapter", "arq", ("redis",), "arq", "arq"),
        LibraryInfo(
            "saq", "bench.adapters.saq_adapter", "peers", ("redis", "postgres"), "saq", "saq"
        ),
        LibraryInfo(
            "huey", "bench.adapters.huey_adapter", "peers", ("redis", "sqlite"), "huey", "huey"
        ),
        LibraryInfo(
            "taskiq",
            "bench.adapters.taskiq_adapter",
            "taskiq",
            ("redis",),
            "taskiq",
            "taskiq_redis",
        ),
        LibraryInfo(
            "procrastinate",
            "bench.adapters.procrastinate_adapter",
            "peers",
            ("postgres",),
            "procrastinate",
            "procrastinate",
        ),
        LibraryInfo(
            "pgqueuer",
            "bench.adapters.pgqueuer_adapter",
            "peers",
            ("postgres",),
            "pgqueuer",
            "pgqueuer",
        ),
    )
}

#: The peers the issue names, per backend, in the order tables show them.
PEERS: dict[str, tuple[str, ...]] = {
    "redis": ("celery", "rq", "dramatiq", "arq", "saq", "huey", "taskiq"),
    "postgres": ("procrastinate", "pgqueuer", "saq"),
    "sqlite": ("huey",),
}


def load(name: str, spec: dict[str, Any], store: Store) -> Adapter:
    """Import a library's adapter module and build its adapter for one cell."""
    module = importlib.import_module(LIBRARIES[name].module)
    adapter: Adapter = module.Adapter(spec, store)
    return adapter
