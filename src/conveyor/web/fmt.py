"""Template filters: times, durations, JSON."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment


def ts(value: float | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: float | None) -> str:
    if value is None:
        return "—"
    return dur(time.time() - float(value)) + (" ago" if time.time() >= float(value) else " ahead")


def dur(value: float | None) -> str:
    if value is None:
        return "—"
    v = abs(float(value))
    if v < 1:
        return f"{v * 1000:.0f} ms"
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def num(value: Any) -> str:
    return f"{int(value):,}" if value is not None else "—"


def install(env: Environment) -> None:
    env.filters.update(ts=ts, ago=ago, dur=dur, pretty=pretty, num=num)
