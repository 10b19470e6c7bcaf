"""What a delivery job carries: the event's *envelope*, one argument of the delivery task.

Publishing builds one envelope per event and every delivery job of the event shares its bytes,
so a handler starts without reading the log. The envelope holds the decoded payload (``data``);
an envelope made by a replay of a stored payload that cannot be decoded holds the raw bytes
instead (``raw``, base64) and the reason, and the delivery dead-letters with the stable code
``invalid_payload`` rather than running the handler on garbage.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from conveyor.bus.event import Event, to_datetime
from conveyor.bus.types import EventTypes, load
from conveyor.core.serialization import JSONSerializer, Serializer, encode_call
from conveyor.domain.events import EventRecord
from conveyor.errors import ConveyorError, ErrorCode

_HEAD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class EventDecodeError(ConveyorError):
    """A delivered event cannot be decoded (a corrupt stored payload, or one that no longer
    fits its event type): the delivery fails for good with code ``invalid_payload``."""

    code = "invalid_payload"
    failure_code = ErrorCode.INVALID_PAYLOAD
    failure_permanent = True
    failure_type = "InvalidEvent"


def envelope(
    event_id: str,
    name: str,
    data: Any,
    key: str | None,
    priority: int,
    headers: Mapping[str, Any],
    schema_version: int,
    time: float,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "name": name,
        "data": data,
        "key": key,
        "priority": priority,
        "headers": dict(headers),
        "version": schema_version,
        "time": time,
    }


def encode(serializer: Serializer, env: dict[str, Any], data: bytes | None = None) -> bytes:
    """The delivery job payload for an envelope. ``data``: the payload already serialized by
    the (JSON) serializer, spliced in instead of serializing ``env["data"]`` a second time."""
    if data is not None and isinstance(serializer, JSONSerializer):
        # Everything but the data is JSON already checked (names, numbers, checked headers).
        head = _HEAD.encode({k: v for k, v in env.items() if k != "data"}).encode()
        return b'{"a":[' + head[:-1] + b',"data":' + data + b'}],"k":{}}'
    return encode_call(serializer, (env,), {})


def from_record(serializer: Serializer, record: EventRecord) -> dict[str, Any]:
    """The envelope of a stored event (for replay)."""
    env = envelope(
        record.id,
        record.name,
        None,
        record.key,
        record.priority,
        record.headers,
        record.schema_version,
        record.occurred_at,
    )
    try:
        env["data"] = serializer.loads(record.payload)
    except Exception as exc:  # noqa: BLE001 - any decoder error: carried to the handler
        env["raw"] = base64.b64encode(record.payload).decode("ascii")
        env["error"] = f"the stored payload cannot be decoded: {exc}"
    return env


def decode(
    env: Any, types: EventTypes, subscription: str, attempt: int, position: int | None = None
) -> Event[Any]:
    """The :class:`Event` a handler receives; :class:`EventDecodeError` if it cannot be
    built."""
    if not isinstance(env, Mapping) or not isinstance(env.get("name"), str):
        raise EventDecodeError("the delivery's payload is not an event envelope")
    if "error" in env:
        raise EventDecodeError(str(env["error"]))
    name = env["name"]
    data = env.get("data")
    version = int(env.get("version") or 1)
    declared = types.by_name.get(name)
    if declared is not None:
        try:
            while version < declared.version and version in declared.upcasters:
                data = declared.upcasters[version](dict(data or {}))
                version += 1
            data = load(declared.cls, data)
        except Exception as exc:  # noqa: BLE001 - any mismatch is a decode failure
            raise EventDecodeError(
                f"event {name!r} (schema version {env.get('version')}) does not decode as "
                f"{declared.cls.__name__}: {exc}"
            ) from None
    try:
        time = to_datetime(float(env["time"]))
        return Event(
            name=name,
            data=data,
            key=env.get("key"),
            priority=int(env.get("priority") or 0),
            headers=dict(env.get("headers") or {}),
            id=str(env["id"]),
            time=time,
            schema_version=version,
            position=position,
            subscription=subscription,
            attempt=attempt,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EventDecodeError(f"the event envelope is malformed: {exc}") from None
