"""Serialization of arguments and results to the opaque bytes backends store.

The default serializer is JSON (stdlib ``json``): ``None``, booleans, integers, floats
(including NaN and ±infinity), strings, lists and dicts with string keys. Tuples arrive as
lists. Anything else is refused at the call site with :class:`~conveyor.errors.SerializationError`
naming where the bad value sits, so nothing half-valid is ever stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.errors import SerializationError


class Serializer(Protocol):
    """Turns values into bytes and back; one per App, used for payloads, results, progress."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _find_bad(value: Any, path: str, depth: int = 0) -> str | None:
    if depth > 200:
        return f"{path} (nested deeper than 200 levels)"
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            bad = _find_bad(item, f"{path}[{i}]", depth + 1)
            if bad:
                return bad
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r}"
            bad = _find_bad(item, f"{path}[{key!r}]", depth + 1)
            if bad:
                return bad
        return None
    return f"{path} is a {type(value).__name__}"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _non_str_key(value: Any) -> bool:
    """Whether a dict anywhere in ``value`` has a key that is not a string (json would coerce
    it silently: ``{0: "a"}`` to ``{"0": "a"}``). Iterative: depth is the encoder's business.
    On the enqueue path, so it only descends into containers."""
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if type(key) is not str and not isinstance(key, str):
                    return True
                if type(inner) not in _SCALARS:
                    push(inner)
        elif isinstance(item, (list, tuple)):
            for inner in item:
                if type(inner) not in _SCALARS:
                    push(inner)
    return False


def _refuse(where: str) -> SerializationError:
    return SerializationError(
        f"cannot serialize: {where}; JSON supports None, bool, int, float, str, "
        "list and dict with str keys; convert other values (e.g. datetime.isoformat(), "
        "a model's .model_dump()) before enqueueing"
    )


class JSONSerializer:
    """The default: compact UTF-8 JSON."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        self._decoder = json.JSONDecoder()
        # The decoder's scanner, called directly for the common case (a document with no
        # surrounding whitespace: what dumps writes); anything else goes through decode().
        self._scan = self._decoder.scan_once  # type: ignore[attr-defined]

    def dumps(self, value: Any) -> bytes:
        try:
            data = self._encoder.encode(value).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError, RecursionError) as exc:
            raise _refuse(_find_bad(value, "value") or str(exc)) from None
        if _non_str_key(value):
            raise _refuse(_find_bad(value, "value") or "a dict with a non-string key")
        return data

    def loads(self, data: bytes) -> Any:
        try:
            text = bytes(data).decode("utf-8", "surrogatepass")
            try:
                value, end = self._scan(text, 0)
                if end == len(text):
                    return value
            except StopIteration:
                pass
            return self._decoder.decode(text)  # whitespace around it, or an error to report
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"cannot decode stored JSON: {exc}") from None


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Refuse metadata that would not come back exactly from every backend.

    Backends store metadata as JSON text (PostgreSQL as ``jsonb``), so it must be JSON with str
    keys, finite numbers (``jsonb`` has no NaN) and valid UTF-8 (no lone surrogates). Returns a
    shallow copy; raises :class:`SerializationError` naming the offending value.
    """
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SerializationError(
            "cannot store metadata: it holds a lone surrogate (not valid UTF-8)"
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:
        where = _find_bad(metadata, "metadata") or f"metadata ({exc})"
        raise SerializationError(
            f"cannot store {where}: metadata must be JSON (None, bool, int, finite float, str, "
            "list, dict with str keys)"
        ) from None
    if _non_str_key(metadata):
        where = _find_bad(metadata, "metadata") or "metadata has a non-string key"
        raise SerializationError(f"cannot store {where}: metadata keys must be strings")
    return dict(metadata)


def encode_call(
    serializer: Serializer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: Sequence[str] = (),
) -> bytes:
    """The payload for one call: ``{"a": args, "k": kwargs}``.

    A value that cannot be serialized is reported by the argument it was passed as
    (``argument 'to'['cc'][0] is a set``), ``names`` naming the positional parameters.
    """
    try:
        return serializer.dumps({"a": list(args), "k": kwargs})
    except SerializationError:
        where = _bad_argument(args, kwargs, names)
        if where is None:
            raise
        raise _refuse(where) from None


def _bad_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: Sequence[str]
) -> str | None:
    for i, value in enumerate(args):
        label = f"argument {names[i]!r}" if i < len(names) else f"positional argument {i + 1}"
        bad = _find_bad(value, label)
        if bad:
            return bad
    for key, value in kwargs.items():
        bad = _find_bad(value, f"argument {key!r}")
        if bad:
            return bad
    return None


def decode_call(serializer: Serializer, payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Inverse of :func:`encode_call`; raises ``SerializationError`` on a malformed payload."""
    data = serializer.loads(payload)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("a", []), list)
        or not isinstance(data.get("k", {}), dict)
    ):
        raise SerializationError(
            "payload is not a Conveyor call (expected {'a': [...], 'k': {...}})"
        )
    return list(data.get("a", [])), dict(data.get("k", {}))
