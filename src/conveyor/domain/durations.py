"""Durations: ``timedelta`` in the API, seconds (``float``) inside; strings at the edges."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

Duration = float | int | timedelta | str


def parse_duration(value: Duration, *, field: str = "duration") -> float:
    """Seconds from a number of seconds, a ``timedelta`` or a string like ``"1h30m"``, ``"250ms"``.

    Raises ``ValueError`` naming ``field`` for negative or malformed values.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration, got a bool")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not text:
            raise ValueError(f"{field}: empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text):
                raise ValueError(
                    f"{field}: cannot parse {value!r}; use seconds or units like "
                    f"'250ms', '30s', '5m', '2h', '1d', '1h30m'"
                ) from None
    else:
        raise ValueError(f"{field}: expected a duration, got {type(value).__name__}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{field}: duration must be finite")
    if seconds < 0:
        raise ValueError(f"{field}: duration must not be negative (got {seconds}s)")
    return seconds


def optional_duration(value: Duration | None, *, field: str) -> float | None:
    """Like :func:`parse_duration` but passes ``None`` through."""
    return None if value is None else parse_duration(value, field=field)


def format_duration(seconds: float) -> str:
    """A duration for people: ``51µs``, ``5.1ms``, ``2.35s``, ``1m30s``, ``2h5m`` (the way
    durations are written everywhere else, never ``5.08e-05``)."""
    if seconds != seconds:  # NaN
        return "?"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 0.001:
        return f"{sign}{seconds * 1_000_000:.0f}µs"
    if seconds < 1:
        return f"{sign}{seconds * 1000:.1f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.2f}s"
    if seconds == float("inf"):
        return f"{sign}inf"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    return sign + (text or "0s")
