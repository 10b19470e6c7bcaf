"""Argument checks at enqueue (and again in the worker) agree with Python's own binding.

``Task.check_arguments`` skips ``Signature.bind`` for plain positional calls; these tests pin
that shortcut to the slow path for every shape of signature and call.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.errors import InvalidArgumentsError


def plain(a: int, b: int) -> None: ...
def defaults(a: int, b: int = 1, c: int = 2) -> None: ...
def nothing() -> None: ...
def star(a: int, *rest: int) -> None: ...
def kwonly(a: int, *, b: int) -> None: ...
def kwargs(a: int, **more: int) -> None: ...
def posonly(a: int, /, b: int = 0) -> None: ...


SIGNATURES = [plain, defaults, nothing, star, kwonly, kwargs, posonly]
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1, 2, 3, 4), {}),
    ((1,), {"b": 2}),
    ((), {"a": 1, "b": 2}),
    ((1,), {"c": 3}),
    ((1,), {"zzz": 3}),
    ((1, 2), {"a": 1}),
]


def binds(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("fn", SIGNATURES, ids=lambda f: f.__name__)
def test_check_arguments_agrees_with_signature_bind(fn: Any) -> None:
    app = Conveyor("memory://")
    task = app.task(name=f"t.{fn.__name__}")(fn)
    for args, kwargs in CALLS:
        expected = binds(fn, args, kwargs)
        try:
            task.check_arguments(args, kwargs)
        except InvalidArgumentsError:
            accepted = False
        else:
            accepted = True
        assert accepted is expected, (fn.__name__, args, kwargs)
