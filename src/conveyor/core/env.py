"""Explicit configuration from environment variables (issue 19).

The library never reads the environment on its own; these helpers do it when you call them
(``Conveyor.from_env()``, ``WorkerConfig.from_env()``), with the same names the CLI reads
(``conveyor worker`` reads ``CONVEYOR_WORKER_CONCURRENCY`` and so on; see ``docs/cli.md``).

Values are strings: durations like ``"30s"`` or ``"5m"`` (or seconds), integers, booleans
(``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off``), comma-separated lists.
A malformed value raises :class:`~conveyor.errors.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.domain.durations import parse_duration
from conveyor.errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _list(value: str) -> tuple[str, ...] | None:
    items = tuple(v.strip() for v in value.replace(" ", ",").split(",") if v.strip())
    return items or None


def _duration(value: str) -> float:
    return parse_duration(value.strip(), field="duration")


#: ``Conveyor(...)`` options: variable -> (keyword, parser).
APP_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CONVEYOR_URL": ("url", str),
    "CONVEYOR_DEFAULT_QUEUE": ("default_queue", str),
    "CONVEYOR_TIMEOUT": ("timeout", _duration),
    "CONVEYOR_LEASE": ("lease", _duration),
    "CONVEYOR_HEARTBEAT_INTERVAL": ("heartbeat_interval", _duration),
    "CONVEYOR_MAX_STALLS": ("max_stalls", int),
    "CONVEYOR_RETRY": ("retry", int),
    "CONVEYOR_SERIALIZER": ("serializer", str),
}

#: ``WorkerConfig(...)`` options: variable -> (field, parser); the names ``conveyor worker``
#: reads for its options.
WORKER_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CONVEYOR_WORKER_QUEUES": ("queues", _list),
    "CONVEYOR_WORKER_TASKS": ("tasks", _list),
    "CONVEYOR_WORKER_CONCURRENCY": ("concurrency", int),
    "CONVEYOR_WORKER_GRACE": ("grace", _duration),
    "CONVEYOR_WORKER_POLL_INTERVAL": ("poll_interval", _duration),
    "CONVEYOR_WORKER_BURST": ("burst", _bool),
    "CONVEYOR_WORKER_WORKER_ID": ("worker_id", str),
    "CONVEYOR_WORKER_NO_SCHEDULER": ("scheduler", lambda v: not _bool(v)),
}


def options_from_env(
    variables: Mapping[str, tuple[str, Callable[[str], Any]]],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The options whose variables are set in ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, (keyword, parse) in variables.items():
        raw = env.get(name)
        if raw is None:
            continue
        try:
            out[keyword] = parse(raw)
        except ValueError as exc:
            raise ConfigurationError(f"environment variable {name}={raw!r}: {exc}") from None
    return out
