"""Typed payloads: validate a task's arguments and result against its annotations.

A task whose parameters or return value are annotated with a pydantic model, a dataclass or a
``TypedDict`` (alone or inside ``list[...]``, ``X | None``, ``dict[str, X]``...) gets a
:class:`CallSchema`. The producer validates every annotated argument at enqueue and stores the
JSON form (``model_dump(mode="json")``), so the payload stays plain data any serializer can
write; the worker validates the stored data again and calls the handler with real instances.
The result goes the same way back. Pydantic is optional (``pip install 'conveyor[pydantic]'``):
without it, dataclasses and TypedDicts are checked by a small stdlib fallback (field names and
required keys, one level deep) and pydantic models cannot be declared anyway.

Failures raise :class:`~conveyor.errors.ValidationError` naming the task and the argument; in
the worker such a job is dead-lettered with code ``validation`` (never retried).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin, is_typeddict

from conveyor.errors import ConfigurationError, ValidationError

try:  # optional extra
    import pydantic
except ImportError:  # pragma: no cover - exercised where pydantic is absent
    pydantic = None  # type: ignore[assignment]


def _is_model(tp: Any) -> bool:
    return pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def needs_validation(tp: Any, depth: int = 0) -> bool:
    """Whether ``tp`` holds a pydantic model, a dataclass or a TypedDict anywhere."""
    if depth > 20 or tp is None or isinstance(tp, str):
        return False
    if _is_model(tp) or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return True
    if is_typeddict(tp):
        return True
    return any(needs_validation(arg, depth + 1) for arg in get_args(tp))


def _issues_from(exc: Exception) -> list[dict[str, Any]]:
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return [
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors(include_url=False)
        ]
    return [{"loc": [], "msg": str(exc), "type": type(exc).__name__}]


class Adapter:
    """Validate one annotated value and turn it into JSON-ready data and back."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self._pyd: Any = None
        if pydantic is not None:
            try:
                self._pyd = pydantic.TypeAdapter(annotation)
            except pydantic.PydanticUserError as exc:
                # typing.TypedDict before Python 3.12: pydantic wants typing_extensions'; the
                # stdlib fallback checks its keys instead.
                if getattr(exc, "code", None) != "typed-dict-version":
                    raise ConfigurationError(
                        f"cannot validate values of type {annotation!r}: {exc}"
                    ) from None
            except pydantic.PydanticSchemaGenerationError as exc:
                raise ConfigurationError(
                    f"cannot validate values of type {annotation!r}: {exc}"
                ) from None

    def validate(self, value: Any) -> Any:
        """The value as an instance of the annotation; raises ``ValueError``/``TypeError``
        (pydantic's ``ValidationError`` is a ``ValueError``)."""
        if self._pyd is not None:
            return self._pyd.validate_python(value)
        return _fallback_validate(self.annotation, value)

    def dump(self, value: Any) -> Any:
        """JSON-ready data for an already validated value."""
        if self._pyd is not None:
            return self._pyd.dump_python(value, mode="json", warnings=False)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return value


def _fallback_validate(tp: Any, value: Any) -> Any:
    """Without pydantic: dataclasses from dicts, TypedDict keys, ``X | None``; else as is."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _fallback_validate(option, value)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or "no option of the union matched")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected {tp.__name__} or a dict, got {type(value).__name__}")
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"unknown field(s) for {tp.__name__}: {', '.join(sorted(unknown))}")
        return tp(**value)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected a dict for {tp.__name__}, got {type(value).__name__}")
        missing = set(getattr(tp, "__required_keys__", ())) - set(value)
        if missing:
            raise ValueError(f"missing key(s) for {tp.__name__}: {', '.join(sorted(missing))}")
        return value
    if origin is list and isinstance(value, list):
        (item,) = get_args(tp) or (Any,)
        return [_fallback_validate(item, v) for v in value]
    return value


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward references: take what resolves
        hints: dict[str, Any] = {}
        raw = inspect.get_annotations(fn)
        namespace = getattr(fn, "__globals__", {})
        for name, value in raw.items():
            if isinstance(value, str):
                try:
                    value = eval(value, namespace)
                except Exception:  # noqa: BLE001
                    continue
            hints[name] = value
        return hints


class CallSchema:
    """The validating view of one task's signature (see the module docstring)."""

    def __init__(self, task: str, fn: Callable[..., Any]) -> None:
        self.task = task
        self.signature = inspect.signature(fn)
        hints = _resolve_hints(fn)
        self.params: dict[str, Adapter] = {}
        self.var_positional: tuple[str, Adapter] | None = None
        self.var_keyword: tuple[str, Adapter] | None = None
        for name, param in self.signature.parameters.items():
            if name not in hints:
                continue
            try:
                adapter = Adapter(hints[name])
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {task}: parameter {name!r}: {exc}") from None
            if param.kind is param.VAR_POSITIONAL:
                self.var_positional = (name, adapter)
            elif param.kind is param.VAR_KEYWORD:
                self.var_keyword = (name, adapter)
            else:
                self.params[name] = adapter
        self.result: Adapter | None = None
        returned = hints.get("return")
        if returned is not None and returned is not type(None) and returned is not Any:
            try:
                self.result = Adapter(returned)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {task}: return value: {exc}") from None

    @classmethod
    def build(cls, task: str, fn: Callable[..., Any], validate: bool | None) -> CallSchema | None:
        """A schema when ``validate`` is True, or when it is ``None`` (automatic) and an
        annotation holds a model, dataclass or TypedDict; otherwise ``None``."""
        if validate is False:
            return None
        if validate is None:
            hints = _resolve_hints(fn)
            if not any(needs_validation(tp) for tp in hints.values()):
                return None
        return cls(task, fn)

    # -- arguments ----------------------------------------------------------------------------
    def _convert(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        step: Callable[[Adapter, Any], Any],
    ) -> tuple[list[Any], dict[str, Any]]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValidationError(
                self.task, None, [{"loc": [], "msg": str(exc), "type": "arguments"}]
            ) from None
        values = bound.arguments
        for name, adapter in self.params.items():
            if name in values:
                values[name] = self._apply(name, adapter, values[name], step)
        if self.var_positional is not None and self.var_positional[0] in values:
            name, adapter = self.var_positional
            values[name] = tuple(
                self._apply(f"{name}[{i}]", adapter, v, step) for i, v in enumerate(values[name])
            )
        if self.var_keyword is not None and self.var_keyword[0] in values:
            name, adapter = self.var_keyword
            values[name] = {k: self._apply(k, adapter, v, step) for k, v in values[name].items()}
        return list(bound.args), dict(bound.kwargs)

    def _apply(
        self, name: str, adapter: Adapter, value: Any, step: Callable[[Adapter, Any], Any]
    ) -> Any:
        try:
            return step(adapter, value)
        except (ValueError, TypeError) as exc:
            raise ValidationError(self.task, name, _issues_from(exc)) from None

    def validate_arguments(
        self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The call with every annotated argument as an instance of its annotation."""
        return self._convert(args, kwargs, lambda a, v: a.validate(v))

    def encode_arguments(
        self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *, validate: bool = True
    ) -> tuple[list[Any], dict[str, Any]]:
        """The call as JSON-ready data (validated first unless ``validate`` is False)."""
        if validate:
            return self._convert(args, kwargs, lambda a, v: a.dump(a.validate(v)))
        return self._convert(args, kwargs, lambda a, v: a.dump(v))

    # -- result -------------------------------------------------------------------------------
    def encode_result(self, value: Any) -> Any:
        """The handler's return value validated and as JSON-ready data."""
        if self.result is None:
            return value
        try:
            return self.result.dump(self.result.validate(value))
        except (ValueError, TypeError) as exc:
            raise ValidationError(self.task, "return", _issues_from(exc)) from None

    def decode_result(self, value: Any) -> Any:
        """A stored result as an instance of the return annotation."""
        if self.result is None or value is None:
            return value
        try:
            return self.result.validate(value)
        except (ValueError, TypeError) as exc:
            raise ValidationError(self.task, "return", _issues_from(exc)) from None
