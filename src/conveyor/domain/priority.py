"""Priorities: integers, higher runs first, default 0, with the seed-000 names as aliases."""

from __future__ import annotations

PRIORITY_ALIASES: dict[str, int] = {
    "critical": 20,
    "high": 10,
    "normal": 0,
    "low": -10,
    "background": -20,
}

MIN_PRIORITY = -(2**15)
MAX_PRIORITY = 2**15 - 1


def parse_priority(value: int | str) -> int:
    """Turn an integer or an alias into an integer priority, or raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"priority must be an integer or one of {sorted(PRIORITY_ALIASES)}")
    if isinstance(value, int):
        if not MIN_PRIORITY <= value <= MAX_PRIORITY:
            raise ValueError(f"priority {value} is outside [{MIN_PRIORITY}, {MAX_PRIORITY}]")
        return value
    if isinstance(value, str):
        try:
            return PRIORITY_ALIASES[value.lower()]
        except KeyError:
            raise ValueError(
                f"unknown priority name {value!r}; use an integer (higher runs first) "
                f"or one of: {', '.join(PRIORITY_ALIASES)}"
            ) from None
    raise ValueError(f"priority must be an int or a name, not {type(value).__name__}")


def priority_name(value: int) -> str:
    """The seed-000 name closest to an integer priority (for protocol renderers)."""
    if value >= PRIORITY_ALIASES["critical"]:
        return "critical"
    if value >= PRIORITY_ALIASES["high"]:
        return "high"
    if value > PRIORITY_ALIASES["low"]:
        return "normal"
    if value > PRIORITY_ALIASES["background"]:
        return "low"
    return "background"
