"""The serializers Conveyor ships, and the record of which one wrote each stored value.

- ``json`` (the default, :class:`~conveyor.core.serialization.JSONSerializer`): stdlib JSON.
- ``orjson`` (``pip install 'conveyor[orjson]'``): the same JSON, written and read faster;
  NaN and ±infinity are written as ``null`` (orjson's rule).
- ``msgpack`` (``pip install 'conveyor[msgpack]'``): compact binary; ``bytes`` values
  round-trip too.
- your own: any object with ``name``, ``dumps(value) -> bytes`` and ``loads(bytes)``.

**The stored bytes say who wrote them.** A value written by a serializer whose output is not
JSON is stored as ``NUL name NUL data`` (JSON text never starts with NUL), while JSON
serializers write plain JSON, readable by ``psql``, the CLI and any other JSON serializer.
Every app reads what any serializer it knows wrote — the built-in ones, plus those passed as
``Conveyor(..., serializers=[...])`` — so switching an app's serializer leaves the jobs already
stored readable, and a payload from a serializer this process does not know fails with a
clear ``invalid_payload`` error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from conveyor.core.serialization import JSONSerializer, Serializer
from conveyor.errors import ConfigurationError, MissingDependencyError, SerializationError

_MARK = b"\x00"


class OrjsonSerializer:
    """JSON through orjson (an optional extra)."""

    name = "orjson"
    json_compatible = True

    def __init__(self) -> None:
        try:
            import orjson
        except ImportError:
            raise MissingDependencyError("orjson", "orjson") from None
        self._orjson = orjson
        self._fallback = JSONSerializer()

    def dumps(self, value: Any) -> bytes:
        try:
            data: bytes = self._orjson.dumps(value)
        except (TypeError, self._orjson.JSONEncodeError) as exc:
            raise SerializationError(f"cannot serialize value with orjson: {exc}") from None
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return self._orjson.loads(data)
        except self._orjson.JSONDecodeError:
            return self._fallback.loads(data)  # NaN/Infinity written by stdlib json


class MsgpackSerializer:
    """MessagePack through msgpack (an optional extra)."""

    name = "msgpack"
    json_compatible = False

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise MissingDependencyError("msgpack", "msgpack") from None
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        try:
            data: bytes = self._msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot serialize value with msgpack: {exc} (None, bool, int, float, str, "
                "bytes, list and dict are supported)"
            ) from None
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(bytes(data), raw=False)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
            raise SerializationError(f"cannot decode stored msgpack: {exc}") from None


BUILTIN: dict[str, Callable[[], Serializer]] = {
    "json": JSONSerializer,
    "orjson": OrjsonSerializer,
    "msgpack": MsgpackSerializer,
}


def serializer_named(name: str) -> Serializer:
    """A built-in serializer by name (``json``, ``orjson``, ``msgpack``)."""
    make = BUILTIN.get(name)
    if make is None:
        raise ConfigurationError(
            f"unknown serializer {name!r}; built in: {', '.join(BUILTIN)} "
            "(or pass a Serializer object)"
        )
    return make()


def _writes_json(serializer: Serializer) -> bool:
    return serializer.name == "json" or bool(getattr(serializer, "json_compatible", False))


class Recorded:
    """The app's serializer with the writer recorded in the stored bytes (see the module
    docstring); reads whatever any known serializer wrote."""

    def __init__(self, writer: Serializer, readers: Sequence[Serializer] = ()) -> None:
        if not getattr(writer, "name", None) or _MARK in writer.name.encode():
            raise ConfigurationError("a serializer needs a non-empty name without NUL")
        self.writer = writer
        self.name = writer.name
        self._plain = _writes_json(writer)
        self._header = _MARK + writer.name.encode() + _MARK
        self._readers: dict[str, Serializer] = {writer.name: writer}
        for reader in readers:
            self._readers[reader.name] = reader
        self._json = writer if self._plain else None

    def dumps(self, value: Any) -> bytes:
        data = self.writer.dumps(value)
        return data if self._plain else self._header + data

    def loads(self, data: bytes) -> Any:
        if data[:1] != _MARK:
            reader = self._json or self._reader("json")
            return reader.loads(data)
        end = bytes(data[1:65]).find(_MARK)
        if end < 0:
            raise SerializationError("stored value has a broken serializer header")
        name = bytes(data[1 : end + 1]).decode("utf-8", "replace")
        return self._reader(name).loads(data[end + 2 :])

    def _reader(self, name: str) -> Serializer:
        reader = self._readers.get(name)
        if reader is None:
            make = BUILTIN.get(name)
            if make is None:
                raise SerializationError(
                    f"the stored value was written by serializer {name!r}, which this process "
                    "does not know; pass it to Conveyor(serializers=[...])"
                )
            try:
                reader = make()
            except MissingDependencyError as exc:
                raise SerializationError(
                    f"the stored value was written by serializer {name!r}: {exc}"
                ) from None
            self._readers[name] = reader
        return reader

    @staticmethod
    def written_by(data: bytes) -> str:
        """The name of the serializer that wrote ``data`` (``json`` for plain JSON)."""
        if data[:1] != _MARK:
            return "json"
        end = bytes(data[1:65]).find(_MARK)
        return bytes(data[1 : end + 1]).decode("utf-8", "replace") if end >= 0 else "?"


def recorded(serializer: Serializer | str | None, readers: Sequence[Serializer] = ()) -> Recorded:
    """The app's serializer (an object, a built-in name, or ``None`` for JSON), recorded."""
    if isinstance(serializer, Recorded):
        return serializer
    if serializer is None:
        writer: Serializer = JSONSerializer()
    elif isinstance(serializer, str):
        writer = serializer_named(serializer)
    else:
        writer = serializer
    return Recorded(writer, readers)


__all__ = [
    "BUILTIN",
    "MsgpackSerializer",
    "OrjsonSerializer",
    "Recorded",
    "recorded",
    "serializer_named",
]
