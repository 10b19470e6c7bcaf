"""Hostile input: property tests over the public enqueue API and ``conveyor enqueue``.

Hypothesis throws random task names, queue names, idempotency keys, trace ids, metadata and
arguments at ``enqueue`` on each real backend: unicode (NUL and friends included), huge and
deeply nested values, NaN and infinities, big integers, non-string keys, bytes, sets, objects,
out-of-range options. Each call must either raise a clear error at the call site (a
``ConveyorError``; nothing stored) or store a job whose task, queue, key, trace id, metadata
and arguments come back exactly (tuples come back as lists: JSON has no tuples; NaN compares
equal to NaN). The CLI gets the same treatment with random JSON on ``--args``/``--kwargs``:
exit 0 with the job stored exactly, or a usage/error exit with a message, never a traceback.

Lone surrogates are kept out of the property's text and pinned by their own tests below,
with the other inputs that used to slip through (metadata JSON cannot hold, absurd
``max_attempts``, dicts with non-string keys).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import Conveyor
from conveyor.cli.main import cli
from conveyor.core.serialization import decode_call
from conveyor.errors import ConveyorError
from tests.acceptance.conftest import require_kind

from . import apps
from .conftest import KINDS, POSTGRES_URL, REDIS_URL, Results, Size
from .harness import APP_PATH

# -- strategies -----------------------------------------------------------------------------
#: Text without lone surrogates (those are pinned separately below).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
NAME = st.one_of(
    TEXT.filter(bool),
    st.sampled_from(
        ["it's", 'say "hi"', "x'); DROP TABLE jobs; --", "{user:1}", "}{", "a:b::c",
         "KEYS[1] ARGV[1] %s", "^$()%.[]*+-?", "\\\\share\\", "$1 ? :name", "🚀 ключ 键"]
    ),
)  # fmt: skip
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(TEXT, inner, max_size=5),
    ),
    max_leaves=30,
)
NOT_JSON = st.one_of(
    st.binary(max_size=8),
    st.sets(st.integers(), max_size=3),
    st.builds(object),
    st.complex_numbers(allow_nan=False),
)


def same(a: Any, b: Any) -> bool:
    """JSON round-trip equality: tuples are lists, NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- an app per backend, used synchronously (the portal) ---------------------------------
def _store(kind: str, tmp: Path) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/hostile.db", {}
    if kind == "postgres":
        return POSTGRES_URL, {"schema": f"rel_{uuid.uuid4().hex[:12]}"}
    return REDIS_URL, {"prefix": f"rel{uuid.uuid4().hex[:12]}"}


@pytest.fixture(params=KINDS)
def sync_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    kind = str(request.param)
    asyncio.run(require_kind(kind, tmp_path))
    url, options = _store(kind, tmp_path)
    app = apps.build_app(url, backend_options=options or None)
    app.portal.run(app.migrate())
    app.kind = kind  # type: ignore[attr-defined]
    app.options = options  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        if kind != "sqlite":
            app.portal.run(app.factory.destroy())
        app.close_sync()


def stored(app: Conveyor, job_id: str) -> Any:
    async def get() -> Any:
        return await (await app.backend()).get_job(job_id)

    return app.portal.run(get())


def job_count(app: Conveyor) -> int:
    async def count() -> int:
        return sum(r.count for r in await (await app.backend()).count_jobs())

    return app.portal.run(count())


def task_named(app: Conveyor, name: str) -> Any:
    if name not in app.tasks:

        async def named(*args: Any, **kwargs: Any) -> None:
            return None

        app.task(name=name)(named)
    return app.tasks[name]


OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "queue": NAME,
        "idempotency_key": NAME,
        "trace_id": NAME,
        "metadata": st.dictionaries(TEXT, JSON, max_size=4),
        "priority": st.one_of(
            st.integers(-40000, 40000), st.sampled_from(["high", "low", "urgent!"])
        ),
        "max_attempts": st.integers(min_value=-3, max_value=2**31 - 1),
    },
)


def check_call(
    app: Conveyor, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> str:
    """Enqueue; assert the contract; return which way it went."""
    before = job_count(app)
    try:
        handle = task_named(app, name).options(**options).enqueue_sync(*args, **kwargs)
    except ConveyorError as exc:
        assert str(exc), "an error without a message"
        assert job_count(app) == before, "an enqueue that raised stored something"
        return "refused"
    rec = stored(app, handle.id)
    assert rec is not None
    if not handle.created:  # the key is held by an earlier job: that job is returned
        assert "idempotency_key" in options and rec.idempotency_key == options["idempotency_key"]
        assert job_count(app) == before
        return "deduplicated"
    assert rec.task == name
    if "queue" in options:
        assert rec.queue == options["queue"]
    if "idempotency_key" in options:
        assert rec.idempotency_key == options["idempotency_key"]
    if "trace_id" in options:
        assert rec.trace_id == options["trace_id"]
    if "metadata" in options:
        assert same(rec.metadata, options["metadata"]), (rec.metadata, options["metadata"])
    got_args, got_kwargs = decode_call(app.serializer, rec.payload)
    assert same(got_args, list(args)) and same(got_kwargs, kwargs), (got_args, got_kwargs)
    return "stored"


# -- the properties -------------------------------------------------------------------------
def _settings(size: Size) -> settings:
    return settings(
        max_examples=size.pick(40, 400),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=not size.long,
    )


def test_enqueue_stores_exactly_or_refuses_clearly(
    sync_app: Conveyor, size: Size, results: Results
) -> None:
    outcomes: dict[str, int] = {}

    @_settings(size)
    @given(
        name=NAME,
        args=st.lists(JSON, max_size=4),
        kwargs=st.dictionaries(TEXT, JSON, max_size=3),
        options=OPTIONS,
    )
    def prop(name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        way = check_call(sync_app, name, args, kwargs, options)
        outcomes[way] = outcomes.get(way, 0) + 1

    prop()
    results.write("hostile_enqueue", sync_app.kind, {"property_examples": outcomes})  # type: ignore[attr-defined]
    assert outcomes.get("stored", 0) > 0


def test_values_json_cannot_hold_are_refused_at_the_call_site(
    sync_app: Conveyor, size: Size
) -> None:
    @_settings(size)
    @given(bad=NOT_JSON, where=st.sampled_from(["arg", "kwarg", "nested"]))
    def prop(bad: Any, where: str) -> None:
        args: list[Any] = [bad] if where == "arg" else ([{"x": [bad]}] if where == "nested" else [])
        kwargs = {"k": bad} if where == "kwarg" else {}
        assert check_call(sync_app, "echo", args, kwargs, {}) == "refused"

    prop()


def test_huge_and_deep_payloads(sync_app: Conveyor) -> None:
    huge = "x" * (8 * 1024 * 1024)
    assert check_call(sync_app, "echo", [huge], {}, {}) == "stored"
    deep: Any = []
    for _ in range(150):
        deep = [deep]
    assert check_call(sync_app, "echo", [deep], {}, {}) == "stored"
    too_deep: Any = []
    for _ in range(100_000):
        too_deep = [too_deep]
    assert check_call(sync_app, "echo", [too_deep], {}, {}) == "refused"
    many = {f"k{i}": i for i in range(20_000)}
    assert check_call(sync_app, "echo", [], many, {}) == "stored"


def test_wrong_types_for_options_are_refused(sync_app: Conveyor) -> None:
    bad_options: list[dict[str, Any]] = [
        {"queue": ""}, {"queue": 5}, {"idempotency_key": b"k"}, {"trace_id": 1.5},
        {"metadata": "not a dict"}, {"metadata": [1]}, {"priority": "urgent!"},
        {"priority": 10**30}, {"max_attempts": 0}, {"max_attempts": True}, {"delay": -1},
        {"delay": "soon"}, {"delay": float("nan")}, {"timeout": 0}, {"ttl": float("inf")},
        {"run_at": "2030-01-01"}, {"nonsense": 1},
    ]  # fmt: skip
    for options in bad_options:
        assert check_call(sync_app, "echo", [1], {}, options) == "refused", options
    with pytest.raises(ConveyorError):
        sync_app.tasks["work"].enqueue_sync("not an int", "too", "many")


# -- inputs once let through, now refused at the call site ----------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["queue", "idempotency_key", "trace_id"])
def test_a_lone_surrogate_in_a_name_is_refused_clearly(
    kind: str, option: str, tmp_path: Path
) -> None:
    _pinned(kind, tmp_path, "echo", [1], {option: "bad\udc80name"}, want="InvalidArgumentsError")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "metadata",
    [{"blob": b"\x00\x01"}, {"s": {1, 2}}, {"x": float("nan")}, {"x": [float("inf")]},
     {"bad\udc80": 1}, {"s": "bad\udc80"}, {"n": {0: "a"}}],
    ids=["bytes", "set", "nan", "inf", "surrogate-key", "surrogate-value", "int-key"],
)  # fmt: skip
def test_metadata_json_cannot_hold_is_refused_clearly(
    kind: str, metadata: dict[str, Any], tmp_path: Path
) -> None:
    _pinned(kind, tmp_path, "echo", [1], {"metadata": metadata}, want="SerializationError")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [10**30, 2**31])
def test_an_absurd_max_attempts_is_refused_clearly(kind: str, value: int, tmp_path: Path) -> None:
    _pinned(kind, tmp_path, "echo", [1], {"max_attempts": value}, want="InvalidArgumentsError")


@pytest.mark.parametrize("value", [{0: "a"}, {None: 1}, {1: "a", "1": "b"}], ids=repr)
def test_dicts_with_non_string_keys_are_refused(value: dict[Any, Any]) -> None:
    from conveyor import JSONSerializer
    from conveyor.errors import SerializationError

    with pytest.raises(SerializationError, match="non-string key"):
        JSONSerializer().dumps({"a": [value], "k": {}})


def _pinned(kind: str, tmp: Path, task: str, args: list[Any], options: dict[str, Any],
            want: str | None = None) -> None:  # fmt: skip
    asyncio.run(require_kind(kind, tmp))
    url, backend_options = _store(kind, tmp)
    app = apps.build_app(url, backend_options=backend_options or None)
    app.portal.run(app.migrate())
    try:
        with pytest.raises(ConveyorError) as caught:
            app.tasks[task].options(**options).enqueue_sync(*args)
        if want is not None:
            assert type(caught.value).__name__ == want, caught.value
    finally:
        if kind != "sqlite":
            app.portal.run(app.factory.destroy())
        app.close_sync()


# -- the CLI --------------------------------------------------------------------------------
def test_cli_enqueue_with_random_json(sync_app: Conveyor, size: Size) -> None:
    kind = sync_app.kind  # type: ignore[attr-defined]
    env = {
        apps.ENV_URL: sync_app.url,
        apps.ENV_OPTIONS: json.dumps(sync_app.options),  # type: ignore[attr-defined]
        "CONVEYOR_APP": "",
    }
    runner = CliRunner()
    ways: dict[str, int] = {}

    @settings(
        max_examples=size.pick(25, 200),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=not size.long,
    )
    @given(
        args=st.one_of(st.lists(JSON, max_size=3).map(json.dumps), TEXT),
        kwargs=st.one_of(st.none(), st.dictionaries(TEXT, JSON, max_size=2).map(json.dumps), TEXT),
        extra=st.lists(
            st.tuples(
                st.sampled_from(["--queue", "--key", "--priority", "--delay", "--trace-id"]),
                TEXT.filter(lambda s: not s.startswith("-")),
            ),
            max_size=2,
        ),
    )
    def prop(args: str, kwargs: str | None, extra: list[tuple[str, str]]) -> None:
        argv = ["enqueue", "echo", "--args", args, "--app", APP_PATH, "--json"]
        if kwargs is not None:
            argv += ["--kwargs", kwargs]
        for flag, value in extra:
            argv += [flag, value]
        result = runner.invoke(cli, argv, env=env, catch_exceptions=True)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            argv, repr(result.exception), output[-2000:]
        )  # fmt: skip
        assert "Traceback" not in output, output[-2000:]
        if result.exit_code != 0:
            assert result.exit_code in (1, 2) and output.strip(), (argv, result.exit_code, output)
            ways[f"exit {result.exit_code}"] = ways.get(f"exit {result.exit_code}", 0) + 1
            return
        reply = json.loads(result.stdout[result.stdout.index("{") :])
        rec = stored(sync_app, reply["id"])
        if not reply["created"]:
            # An earlier example used the same idempotency key: the call was deduplicated onto
            # that job, which holds the key (and the earlier example's arguments).
            keys = [value for flag, value in extra if flag == "--key"]
            assert keys and rec.idempotency_key == keys[-1], (argv, rec)
            ways["deduplicated"] = ways.get("deduplicated", 0) + 1
            return
        ways["stored"] = ways.get("stored", 0) + 1
        got_args, got_kwargs = decode_call(sync_app.serializer, rec.payload)
        assert same(got_args, json.loads(args)), (got_args, args)
        assert same(got_kwargs, json.loads(kwargs) if kwargs else {}), (got_kwargs, kwargs)

    prop()
    assert kind in KINDS
    assert ways.get("stored", 0) > 0 and ways.get("exit 2", 0) > 0, ways
