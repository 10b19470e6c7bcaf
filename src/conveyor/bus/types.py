"""Typed events: a dataclass or a pydantic model declared for an event name.

``@app.bus.event("order.created")`` on a class makes publishing check payloads against it
(a missing field, an unknown field or a value of the wrong type fails at the call site with
:class:`~conveyor.errors.InvalidEventError` naming the field) and makes handlers receive
instances of it. Dataclasses are checked against their type hints (``int``, ``float``,
``str``, ``bool``, ``None``, ``list[X]``, ``dict[str, X]``, ``X | None``, ``Literal``, nested
dataclasses; anything else is accepted as it is); pydantic models validate themselves.

A class carries a schema ``version``. Events are stored with the version they were published
with; an *upcaster* (``@app.bus.upcaster("order.created", from_version=1)``) turns a stored
payload of an older version into the next one before it is decoded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from conveyor.domain.events import PatternError, check_event_name, is_literal, pattern_matches
from conveyor.errors import ConfigurationError, InvalidEventError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: Payload types published as they are when no event type is declared for the name.
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})


def is_model(cls: type) -> bool:
    """Whether ``cls`` is a pydantic (v2) model."""
    return hasattr(cls, "model_validate") and hasattr(cls, "model_dump")


@dataclass(slots=True)
class EventType:
    """One declared event type."""

    name: str
    cls: type
    version: int
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    def fields(self) -> set[str] | None:
        """The top-level field names, or ``None`` when they cannot be told."""
        if dataclasses.is_dataclass(self.cls):
            return {f.name for f in dataclasses.fields(self.cls)}
        if is_model(self.cls):
            return set(getattr(self.cls, "model_fields", {}))
        return None


class EventTypes:
    """The event types declared on one bus, by name and by class."""

    def __init__(self) -> None:
        self.by_name: dict[str, EventType] = {}
        self.by_class: dict[type, EventType] = {}

    def declare(self, name: str, cls: type, version: int) -> EventType:
        try:
            check_event_name(name)
        except PatternError as exc:
            raise ConfigurationError(str(exc)) from None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(f"event {name!r}: version must be an integer >= 1")
        if not (dataclasses.is_dataclass(cls) or is_model(cls)):
            raise ConfigurationError(
                f"event {name!r}: {cls!r} must be a dataclass or a pydantic model"
            )
        if name in self.by_name:
            raise ConfigurationError(f"an event type named {name!r} is already declared")
        if cls in self.by_class:
            raise ConfigurationError(f"{cls.__name__} is already declared as an event type")
        entry = EventType(name, cls, version)
        self.by_name[name] = entry
        self.by_class[cls] = entry
        return entry

    def add_upcaster(self, name: str, from_version: int, fn: Upcaster) -> None:
        entry = self.by_name.get(name)
        if entry is None:
            raise ConfigurationError(f"declare the event type {name!r} before its upcasters")
        if not 1 <= from_version < entry.version:
            raise ConfigurationError(
                f"event {name!r} is at version {entry.version}; an upcaster goes from a "
                "version below it to the next one"
            )
        entry.upcasters[from_version] = fn

    def matching(self, pattern: str) -> list[EventType]:
        """The declared types whose name matches ``pattern``."""
        if is_literal(pattern):
            entry = self.by_name.get(pattern)
            return [] if entry is None else [entry]
        return [t for n, t in self.by_name.items() if pattern_matches(pattern, n)]

    # -- publishing ---------------------------------------------------------------------------
    def to_payload(self, name: str, data: Any) -> Any:
        """The JSON-able payload for ``data`` published as ``name``, checked against the type
        declared for it (if any)."""
        entry = self.by_name.get(name)
        if entry is None and type(data) in _PLAIN:
            return data
        if entry is not None and isinstance(data, entry.cls):
            return dump(data)
        if entry is None:
            if dataclasses.is_dataclass(data) and not isinstance(data, type):
                return dump(data)
            if is_model(type(data)):
                return dump(data)
            return data
        if not isinstance(data, Mapping):
            raise InvalidEventError(
                f"event {name!r} is declared as {entry.cls.__name__}: publish an instance of "
                f"it or a dict of its fields, not a {type(data).__name__}"
            )
        if is_model(entry.cls):
            try:
                return dump(entry.cls.model_validate(dict(data)))  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, unimported
                raise InvalidEventError(f"event {name!r}: {exc}") from None
        check_fields(entry.cls, data, name)
        return dict(data)


def dump(obj: Any) -> Any:
    """A dataclass or pydantic model instance as JSON-able data."""
    if is_model(type(obj)):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _dump_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj


def _dump_value(value: Any) -> Any:
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or is_model(type(value)):
        return dump(value)
    if isinstance(value, list | tuple):
        return [_dump_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_value(v) for k, v in value.items()}
    return value


# -- checking dicts against dataclass type hints --------------------------------------------------
def check_fields(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise :class:`InvalidEventError` unless ``data`` fits dataclass ``cls``."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise InvalidEventError(
                f"{where}: {cls.__name__} has no field {key!r} (fields: {', '.join(fields)})"
            )
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidEventError(f"{where}: the field {name!r} is missing")
            continue
        problem = _mismatch(hints.get(name, Any), data[name])
        if problem is not None:
            raise InvalidEventError(f"{where}: field {name!r} {problem}")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations are not checked
        return {}


def _mismatch(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or ``None``."""
    if hint is Any or hint is object:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        problems = [_mismatch(o, value) for o in options]
        if any(p is None for p in problems):
            return None
        for option, problem in zip(options, problems, strict=True):
            if isinstance(value, Mapping) and dataclasses.is_dataclass(option):
                return problem  # the shape it was meant to have says most
        return f"must be {' or '.join(_describe(o) for o in options)}, not {value!r:.60}"
    if origin is Literal:
        return None if value in get_args(hint) else f"must be one of {get_args(hint)}"
    if hint is type(None) or hint is None:
        return None if value is None else f"must be None, not {value!r:.60}"
    if hint is bool:
        return None if isinstance(value, bool) else f"must be a bool, not {value!r:.60}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an int, not {value!r:.60}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"must be a number, not {value!r:.60}"
    if hint is str:
        return None if isinstance(value, str) else f"must be a str, not {value!r:.60}"
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"must be a list, not {value!r:.60}"
        args = get_args(hint)
        if args and origin is not tuple:
            for i, item in enumerate(value):
                problem = _mismatch(args[0], item)
                if problem is not None:
                    return f"item {i} {problem}"
        return None
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            return f"must be a dict, not {value!r:.60}"
        args = get_args(hint)
        if len(args) == 2:
            for k, item in value.items():
                problem = _mismatch(args[1], item)
                if problem is not None:
                    return f"key {k!r} {problem}"
        return None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return None
        if not isinstance(value, Mapping):
            return f"must be a {hint.__name__} (a dict of its fields), not {value!r:.60}"
        try:
            check_fields(hint, value, hint.__name__)
        except InvalidEventError as exc:
            return f"is not a valid {hint.__name__}: {exc}"
        return None
    return None


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# -- decoding in handlers -------------------------------------------------------------------------
def load(cls: type, data: Any) -> Any:
    """Build an instance of ``cls`` from decoded payload data (dataclasses recursively)."""
    if is_model(cls):
        return cls.model_validate(data)  # type: ignore[attr-defined]
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} needs a JSON object, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _load_value(hints.get(f.name, Any), data[f.name])
    return cls(**kwargs)


def _load_value(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return load(hint, value)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            if option is type(None):
                continue
            dataclass_option = isinstance(option, type) and dataclasses.is_dataclass(option)
            if dataclass_option and isinstance(value, Mapping):
                return load(option, value)
        return value
    if origin is list and isinstance(value, list):
        (inner,) = get_args(hint) or (Any,)
        return [_load_value(inner, v) for v in value]
    if origin is dict and isinstance(value, Mapping):
        args = get_args(hint)
        inner = args[1] if len(args) == 2 else Any
        return {k: _load_value(inner, v) for k, v in value.items()}
    return value


def field_exists(cls: type, path: str) -> bool:
    """Whether the dotted ``path`` names a field of ``cls`` (nested dataclasses followed;
    anything not resolvable counts as present)."""
    current: Any = cls
    for step in path.split("."):
        if isinstance(current, type) and dataclasses.is_dataclass(current):
            names = {f.name for f in dataclasses.fields(current)}
            if step not in names:
                return False
            current = _hints(current).get(step, Any)
            origin = get_origin(current)
            if origin in (Union, types.UnionType):
                inner = [a for a in get_args(current) if a is not type(None)]
                current = inner[0] if len(inner) == 1 else Any
        elif isinstance(current, type) and is_model(current):
            model_fields = getattr(current, "model_fields", {})
            if step not in model_fields:
                return False
            current = getattr(model_fields[step], "annotation", Any)
        else:
            return True
    return True
