"""RQ: the job functions ``rq worker`` imports by dotted path."""

from __future__ import annotations

from typing import Any

from bench.recorder import echo as _echo
from bench.recorder import record


def noop(t: float) -> None:
    record(t)


def echo(x: str) -> Any:
    return _echo(x)


def blob(data: str) -> None:
    """Carries a payload; never run."""
