"""Typed payloads: arguments and results annotated with pydantic models, dataclasses and
TypedDicts are validated at enqueue, stored as plain data, and arrive in the handler as
instances; a stored payload that no longer fits dead-letters with code ``validation``."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import pytest
from pydantic import BaseModel, ConfigDict, Field

from conveyor import ConfigurationError, Conveyor, JobFailedError, JobState, ValidationError
from conveyor.core.serialization import encode_call
from conveyor.domain.job import NewJob
from conveyor.testing import memory_app, run_until_idle


class User(BaseModel):
    name: str
    age: int = Field(ge=0)


class Receipt(BaseModel):
    user: str
    total: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Options(TypedDict):
    loud: bool


class Opaque:
    pass


class Box(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


def declare(app: Conveyor) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    @app.task(name="greet")
    async def greet(user: User, times: int = 1) -> Receipt:
        seen["user"] = user
        seen["times"] = times
        return Receipt(user=user.name, total=times * 1.5)

    @app.task(name="move")
    def move(p: Point, opts: Options) -> Point:
        seen["p"] = p
        seen["opts"] = opts
        return Point(p.x + 1, p.y + 1)

    @app.task(name="bad_result")
    async def bad_result() -> Receipt:
        return {"user": "x"}  # type: ignore[return-value]

    seen["tasks"] = (greet, move, bad_result)
    return seen


async def test_models_are_validated_stored_as_data_and_rebuilt_in_the_handler() -> None:
    app = memory_app()
    seen = declare(app)
    greet, _, _ = seen["tasks"]
    handle = await greet.enqueue({"name": "ada", "age": "36"}, times=2)
    info = await handle.info()
    assert info.args == [{"name": "ada", "age": 36}, 2]  # plain data in the store, coerced
    await run_until_idle(app)
    assert seen["user"] == User(name="ada", age=36) and seen["times"] == 2
    receipt = await handle.result(timeout=1)
    assert receipt == Receipt(user="ada", total=3.0)  # the result comes back as the model
    assert (await handle.info()).result == {"user": "ada", "total": 3.0}


async def test_a_bad_argument_fails_at_the_call_site_naming_task_and_argument() -> None:
    app = memory_app()
    greet, _, _ = declare(app)["tasks"]
    with pytest.raises(ValidationError) as caught:
        await greet.enqueue({"name": "ada", "age": -1})
    err = caught.value
    assert err.task == "greet" and err.argument == "user" and err.code == "validation"
    assert err.issues[0]["loc"] == ["age"]
    assert "greet" in str(err) and "'user'" in str(err) and "age" in str(err)
    with pytest.raises(ValidationError, match="argument 'times'"):
        greet.enqueue_sync(User(name="a", age=1), times="many")  # type: ignore[arg-type]
    assert await (await app.backend()).count_jobs() == []  # nothing stored


async def test_validation_can_be_skipped_per_call_but_the_worker_still_validates() -> None:
    app = memory_app()
    greet, _, _ = declare(app)["tasks"]
    handle = await greet.options(validate=False).enqueue({"name": "ada", "age": -1})
    await run_until_idle(app)
    with pytest.raises(JobFailedError) as caught:
        await handle.result(timeout=1)
    assert caught.value.code == "validation"
    info = await handle.info()
    assert info.state is JobState.FAILED and info.record.attempts == 1  # never retried
    assert "argument 'user'" in info.error.message  # type: ignore[union-attr]


async def test_a_stored_payload_that_fails_validation_dead_letters_with_code_validation() -> None:
    app = memory_app(retry=5)
    declare(app)
    backend = await app.backend()
    payload = encode_call(app.serializer, ({"name": "ada", "age": "old"},), {})
    await backend.enqueue([NewJob(id="j1", task="greet", queue="default", payload=payload)])
    await run_until_idle(app)
    record = await backend.get_job("j1")
    assert record is not None and record.state is JobState.FAILED
    assert record.error is not None and record.error.code == "validation"
    assert record.error.type == "ValidationError" and record.attempts == 1
    dead = await app.dead_letters.list(error_code="validation")
    assert [j.id for j in dead] == ["j1"]


async def test_a_result_that_fails_validation_dead_letters_the_job() -> None:
    app = memory_app(retry=3)
    _, _, bad_result = declare(app)["tasks"]
    handle = await bad_result.enqueue()
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.FAILED
    assert info.error is not None and info.error.code == "validation"
    assert "the result" in info.error.message and info.record.attempts == 1


async def test_dataclasses_and_typeddicts() -> None:
    app = memory_app()
    seen = declare(app)
    _, move, _ = seen["tasks"]
    handle = await move.enqueue(Point(1, 2), {"loud": True})
    assert (await handle.info()).args == [{"x": 1, "y": 2}, {"loud": True}]
    await run_until_idle(app)
    assert seen["p"] == Point(1, 2) and seen["opts"] == {"loud": True}
    assert await handle.result(timeout=1) == Point(2, 3)
    with pytest.raises(ValidationError, match="argument 'opts'"):
        await move.enqueue({"x": 1, "y": 2}, {})  # type: ignore[arg-type]


async def test_untyped_tasks_are_not_validated_unless_asked() -> None:
    app = memory_app()

    @app.task(name="plain")
    def plain(n: int) -> int:
        return n

    @app.task(name="strict", validate=True)
    def strict(n: int) -> int:
        return n

    assert plain.schema is None and strict.schema is not None
    await plain.enqueue("not a number")  # type: ignore[arg-type]  (as before: no check)
    with pytest.raises(ValidationError, match="argument 'n'"):
        await strict.enqueue("not a number")  # type: ignore[arg-type]
    handle = await strict.enqueue("7")  # type: ignore[arg-type]  (coerced, as pydantic does)
    await run_until_idle(app)
    assert await handle.result(timeout=1) == 7


def test_a_type_pydantic_cannot_handle_is_refused_at_declaration() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="task broken: parameter 'x'"):

        @app.task(name="broken", validate=True)
        def broken(x: Opaque) -> None: ...


async def test_a_model_that_cannot_be_serialised_fails_at_the_call_site() -> None:
    app = memory_app()

    @app.task(name="holds")
    def holds(box: Box) -> None: ...

    with pytest.raises(ValidationError, match="task holds: argument 'box'"):
        await holds.enqueue(Box(thing=Opaque()))
