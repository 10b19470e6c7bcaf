"""Serializers: JSON by default, orjson and msgpack built in, custom ones pluggable; the
stored bytes record which serializer wrote them, so apps read each other's jobs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor, JobState
from conveyor.core.serializers import Recorded
from conveyor.testing import run_until_idle


class Base64JSON:
    """A custom serializer: JSON wrapped in base64 (not JSON itself)."""

    name = "b64json"

    def dumps(self, value: Any) -> bytes:
        return base64.b64encode(json.dumps(value).encode())

    def loads(self, data: bytes) -> Any:
        return json.loads(base64.b64decode(data))


def declare(app: Conveyor) -> Any:
    @app.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    return echo


@pytest.mark.parametrize("name", ["json", "orjson", "msgpack"])
async def test_each_builtin_round_trips_payloads_and_results(name: str) -> None:
    app = Conveyor("memory://", serializer=name)
    echo = declare(app)
    value = {"text": "héllo", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    handle = await echo.enqueue(value)
    record = (await handle.info()).record
    assert Recorded.written_by(record.payload) == ("msgpack" if name == "msgpack" else "json")
    await run_until_idle(app)
    assert await handle.result(timeout=1) == value


async def test_apps_with_different_serializers_read_each_others_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    packer = Conveyor(url, serializer="msgpack")
    reader = Conveyor(url)  # JSON
    declare(packer)
    echo = declare(reader)
    packed = await packer.tasks["echo"].enqueue({"a": 1})
    plain = await echo.enqueue({"b": 2})
    await run_until_idle(reader)
    assert await reader.handle(packed.id).result(timeout=1) == {"a": 1}
    assert await packer.handle(plain.id).result(timeout=1) == {"b": 2}
    await packer.close()
    await reader.close()


async def test_a_custom_serializer_plugs_in_and_unknown_writers_fail_clearly() -> None:
    writer = Conveyor("memory://", serializer=Base64JSON())
    declare(writer)
    handle = await writer.tasks["echo"].enqueue([1, 2])
    payload = (await handle.info()).record.payload
    assert payload.startswith(b"\x00b64json\x00") and Recorded.written_by(payload) == "b64json"

    stranger = Conveyor("memory://", backend_factory=writer.factory)
    declare(stranger)
    await run_until_idle(stranger)
    info = await stranger.inspect.job(handle.id)
    assert info is not None and info.state is JobState.FAILED
    assert info.error is not None and info.error.code == "invalid_payload"
    assert "serializer 'b64json'" in info.error.message

    friend = Conveyor("memory://", backend_factory=writer.factory, serializers=[Base64JSON()])
    echo = declare(friend)
    again = await echo.enqueue([3])  # friend writes JSON, reads b64json too
    await run_until_idle(friend)
    assert await friend.handle(again.id).result(timeout=1) == [3]


def test_unknown_serializer_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'"):
        Conveyor("memory://", serializer="yaml")


def test_msgpack_keeps_bytes_and_json_refuses_them() -> None:
    packed = Conveyor("memory://", serializer="msgpack").serializer
    assert packed.loads(packed.dumps({"raw": b"\x00\x01"})) == {"raw": b"\x00\x01"}
    with pytest.raises(Exception, match="cannot serialize"):
        Conveyor("memory://").serializer.dumps({"raw": b"x"})
