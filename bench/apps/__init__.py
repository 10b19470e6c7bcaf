"""The task modules each library's own worker CLI imports.

They read their settings from environment variables that the benchmark cell sets for the
worker process and for itself: ``BENCH_BACKEND`` (``redis``/``postgres``/``sqlite``),
``BENCH_URL``, ``BENCH_NS`` (a Redis key prefix or PostgreSQL schema), ``BENCH_CONCURRENCY``,
``BENCH_RESULTS`` (``1`` when results must be kept) and ``BENCH_RECORD_DIR``.
"""

from __future__ import annotations

import os


def setting(name: str, default: str | None = None) -> str:
    """An app setting from the environment; a missing one without default is an error."""
    value = os.environ.get(f"BENCH_{name}", default)
    if value is None:
        raise RuntimeError(f"BENCH_{name} is not set (benchmark apps run under bench/ only)")
    return value


def concurrency(default: int = 1) -> int:
    return int(setting("CONCURRENCY", str(default)))


def results_wanted() -> bool:
    return setting("RESULTS", "0") == "1"
