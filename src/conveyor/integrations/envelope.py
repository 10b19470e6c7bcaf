"""The neutral event shape the integrations send and receive.

The bus stores events its own way; webhooks, bridges and realtime channels see an
:class:`EventEnvelope`: the event's id (the idempotency key downstream), name, JSON-ready data,
time, optional key, metadata and, for events read from the log, its position.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_MISSING = object()


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One event as the integrations see it.

    ``data`` must be JSON-serialisable; ``time`` is an aware UTC datetime; ``position`` is the
    event's position in the event log when it came from there (realtime resume uses it).
    """

    id: str
    name: str
    data: Any = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    key: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``{"id", "type", "timestamp", "data", "key", "metadata"}``."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.name,
            "timestamp": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }
        if self.key is not None:
            out["key"] = self.key
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.position is not None:
            out["position"] = self.position
        return out

    def to_json(self) -> bytes:
        """The wire form as compact UTF-8 JSON (serialised once, signed as these bytes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EventEnvelope:
        """Parse the wire form; raises ``ValueError`` naming what is missing or wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError("an event must be a JSON object")
        event_id, name = raw.get("id"), raw.get("type", raw.get("name"))
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("event field 'id' must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise ValueError("event field 'type' must be a non-empty string")
        stamp = raw.get("timestamp")
        when = datetime.now(UTC)
        if isinstance(stamp, str):
            try:
                when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"event field 'timestamp' is not ISO 8601: {stamp!r}") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise ValueError("event field 'metadata' must be an object")
        key = raw.get("key")
        position = raw.get("position")
        return cls(
            id=event_id,
            name=name,
            data=raw.get("data"),
            time=when,
            key=key if isinstance(key, str) else None,
            metadata=dict(metadata),
            position=position if isinstance(position, int) else None,
        )

    @classmethod
    def from_json(cls, body: bytes | str) -> EventEnvelope:
        """Parse :meth:`to_json` output; raises ``ValueError`` on malformed input."""
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"event is not valid JSON: {exc}") from None
        return cls.from_dict(raw)


def lookup_path(event: EventEnvelope, path: str) -> str | None:
    """The value at a dotted path such as ``metadata.tenantId`` or ``data.order.id``, as a
    string, or ``None`` when any step is missing. The first step may be ``id``, ``type``/
    ``name``, ``key``, ``data`` or ``metadata``; a path with no known first step is read from
    ``data``."""
    if not path:
        raise ValueError("a key path must not be empty")
    steps = path.split(".")
    roots: dict[str, Any] = {
        "id": event.id,
        "type": event.name,
        "name": event.name,
        "key": event.key,
        "data": event.data,
        "metadata": event.metadata,
    }
    if steps[0] in roots:
        value: Any = roots[steps[0]]
        steps = steps[1:]
    else:
        value = event.data
    for step in steps:
        if isinstance(value, Mapping):
            value = value.get(step, _MISSING)
        elif isinstance(value, (list, tuple)) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
        if value is _MISSING:
            return None
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return None
    return str(value)


def check_pattern(pattern: str) -> str:
    """Validate an event-name pattern: dotted segments where ``*`` is exactly one segment and
    ``#`` zero or more (the bus's convention, and AMQP's). Raises ``ValueError``."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 256:
        raise ValueError("an event pattern must be a non-empty string (at most 256 characters)")
    for segment in pattern.split("."):
        if not segment:
            raise ValueError(f"event pattern {pattern!r} has an empty segment")
        if segment not in ("*", "#") and ("*" in segment or "#" in segment):
            raise ValueError(
                f"event pattern {pattern!r}: '*' and '#' must stand alone in a segment "
                "(use order.* or order.#)"
            )
    return pattern


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether event ``name`` matches ``pattern`` (``*`` one segment, ``#`` zero or more)."""
    return _match(pattern.split("."), name.split("."))


def _match(pat: list[str], parts: list[str]) -> bool:
    if not pat:
        return not parts
    head = pat[0]
    if head == "#":
        return any(_match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    if not parts:
        return False
    return (head == "*" or head == parts[0]) and _match(pat[1:], parts[1:])
