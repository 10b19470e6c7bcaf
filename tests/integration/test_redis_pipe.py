"""The pipelined script connection (``conveyor.backends.redis.pipe``) against real servers:
replies reach the right caller under concurrency, cancellation and error replies; a dropped
connection is reconnected and the call retried; passwords, databases and timeouts behave as
they do through redis-py; clients the pipe does not speak fall back to redis-py."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError, TimeoutError

from conveyor.backends.redis import RedisFactory
from conveyor.backends.redis.connect import make_client, make_retry
from conveyor.backends.redis.pipe import SILENCE, PipeClosedError, ScriptPipe, pack, pipe_for
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from tests.support import wait_until

try:
    from .test_redis_support import SHARED_URL, factory, private_server, require_shared_server
except ImportError:  # tests/integration is not a package
    from test_redis_support import (  # type: ignore[no-redef]
        SHARED_URL,
        factory,
        private_server,
        require_shared_server,
    )


def job() -> NewJob:
    return NewJob(id=new_job_id(), task="tasks.work", queue="default", payload=b"p")


def shared_pipe(**overrides: object) -> ScriptPipe:
    client = make_client(SHARED_URL, retries=3)
    pipe = pipe_for(client, None)
    assert pipe is not None
    for name, value in overrides.items():
        setattr(pipe, name, value)
    return pipe


def private_pipe(url: str, retry: Retry | None = None) -> ScriptPipe:
    """A pipe to a private server (no retries unless ``retry`` is given)."""
    pipe = pipe_for(make_client(url, 0), retry)
    assert pipe is not None
    return pipe


def test_pack_writes_what_redis_py_writes() -> None:
    args = ("EVALSHA", "ab" * 20, 1, "{p}:", "ünïcode", b"\x00\xffbytes", 7, 0.1, -2.5e-300, "")
    expected = b"".join(Connection().pack_command(*args))
    assert pack(args) == expected
    with pytest.raises(TypeError, match="str, bytes or a number"):
        pack(("SET", None))


async def test_concurrent_callers_each_get_their_own_reply() -> None:
    require_shared_server()
    pipe = shared_pipe()
    try:
        values = [f"v{i}-{'x' * random.randint(0, 3000)}" for i in range(600)]
        replies = await asyncio.gather(*(pipe.execute("ECHO", v) for v in values))
        assert replies == [v.encode() for v in values]
    finally:
        await pipe.close()


async def test_error_replies_and_cancelled_callers_leave_the_stream_in_step() -> None:
    require_shared_server()
    pipe = shared_pipe()
    try:
        calls: list[asyncio.Task[object]] = []
        for i in range(300):
            if i % 7 == 3:  # an error reply in the middle of the stream
                calls.append(asyncio.create_task(pipe.execute("EVALSHA", "0" * 40, 0)))
            else:
                calls.append(asyncio.create_task(pipe.execute("ECHO", str(i))))
        await asyncio.sleep(0)  # let every call write its command
        cancelled = set(range(0, 300, 5))
        for i in cancelled:
            calls[i].cancel()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if i in cancelled:
                assert isinstance(outcome, asyncio.CancelledError), (i, outcome)
            elif i % 7 == 3:
                assert isinstance(outcome, NoScriptError), (i, outcome)
                assert "NOSCRIPT" in str(outcome)
            else:
                assert outcome == str(i).encode(), (i, outcome)
        assert await pipe.execute("ECHO", "after") == b"after"
        with pytest.raises(ResponseError, match="unknown command"):
            await pipe.execute("NO-SUCH-COMMAND")
    finally:
        await pipe.close()


async def test_a_killed_connection_is_reconnected_and_the_call_retried() -> None:
    require_shared_server()
    pipe = shared_pipe(client_name=f"pipe-{new_job_id()}")
    admin = aioredis.Redis.from_url(SHARED_URL)
    try:
        assert await pipe.execute("PING") == b"PONG"
        clients = await admin.client_list()
        mine = [c for c in clients if c.get("name") == pipe.client_name]
        assert len(mine) == 1
        assert await admin.execute_command("CLIENT", "KILL", "ID", mine[0]["id"]) == 1
        assert await pipe.execute("ECHO", "again") == b"again"
        clients = await admin.client_list()
        assert len([c for c in clients if c.get("name") == pipe.client_name]) == 1
    finally:
        await pipe.close()
        await admin.aclose()


async def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    async with private_server(tmp_path, "--requirepass", "s3cret") as server:
        good = RedisFactory(f"redis://:s3cret@127.0.0.1:{server.port}/3", prefix="p")
        backend = good.create()
        assert backend.pipe is not None
        try:
            await backend.open()
            assert (await backend.enqueue([job()]))[0].created
        finally:
            await backend.close()
        admin = server.client(password="s3cret", db=3)
        try:
            assert await admin.keys("{p}:j:*")  # the job went to database 3
        finally:
            await admin.aclose()
        wrong = pipe_for(make_client(f"redis://:nope@127.0.0.1:{server.port}/0", 6), None)
        assert wrong is not None
        started = time.monotonic()
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        assert time.monotonic() - started < 1.0  # refused at once: no retries with backoff
        await wrong.close()


async def test_a_server_that_does_not_answer_times_out_then_recovers(tmp_path: Path) -> None:
    async with private_server(tmp_path) as server:
        pipe = private_pipe(server.url)
        pipe.timeout = 0.3
        admin = server.client()
        try:
            assert await pipe.execute("PING") == b"PONG"
            await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pipe.execute("SET", "k", "v")
            assert time.monotonic() - started < 1.2
            await admin.execute_command("CLIENT", "UNPAUSE")
            assert await pipe.execute("ECHO", "back") == b"back"
        finally:
            await pipe.close()
            await admin.aclose()


async def test_retries_ride_out_a_short_outage(tmp_path: Path) -> None:
    async with private_server(tmp_path) as server:
        pipe = private_pipe(server.url, make_retry(8))
        try:
            assert await pipe.execute("PING") == b"PONG"
            server.kill()
            call = asyncio.create_task(pipe.execute("ECHO", "through"))
            await asyncio.sleep(0.2)  # the outage: the call is retrying meanwhile
            assert not call.done()
            await server.start()
            assert await asyncio.wait_for(call, 10) == b"through"
        finally:
            await pipe.close()


def test_clients_the_pipe_does_not_speak_use_redis_py() -> None:
    assert pipe_for(aioredis.Redis.from_url("rediss://127.0.0.1:6380/0"), None) is None
    assert pipe_for(aioredis.Redis(unix_socket_path="/tmp/redis.sock"), None) is None
    assert pipe_for(aioredis.Redis.from_url("redis://127.0.0.1:6379/0", protocol=3), None) is None
    assert RedisFactory(SHARED_URL, pipelined=False).create().pipe is None
    assert RedisFactory(SHARED_URL).create().pipe is not None


async def test_the_redis_py_path_still_runs_every_transition() -> None:
    require_shared_server()
    f = factory(pipelined=False)
    backend = f.create()
    assert backend.pipe is None
    try:
        await backend.open()
        new = job()
        assert (await backend.enqueue([new]))[0].created
        (claimed,) = await backend.claim("w", ["default"], 1, 30.0)
        assert claimed.id == new.id
        assert await backend.complete(claimed.id, claimed.fence, b"1")
        record = await backend.get_job(new.id)
        assert record is not None and record.state.value == "completed"
    finally:
        await backend.close()
        await f.destroy()


#: A script that keeps the server busy for 300 ms (Redis runs one script at a time).
BUSY = (
    "local t = redis.call('TIME'); local s = t[1] * 1e6 + t[2]; "
    "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 300000; return 1"
)


async def test_a_caller_giving_up_on_a_busy_server_leaves_the_others_calls_alone() -> None:
    """Dropping the shared connection when one caller gives up would make the others send
    again commands Redis may already have run (a claim twice, an INCR twice)."""
    require_shared_server()
    pipe = shared_pipe()
    other = aioredis.Redis.from_url(SHARED_URL)
    key = f"{{pipe-test}}:{new_job_id()}"
    try:
        assert await pipe.execute("PING") == b"PONG"
        busy = asyncio.create_task(other.eval(BUSY, 0))
        # A head start for the script (not observable from outside: the server answers no
        # one while it runs); if the INCR still got in first, the test only gets weaker.
        await asyncio.sleep(0.02)
        counted = asyncio.create_task(pipe.execute("INCR", key))
        gives_up = asyncio.create_task(pipe.execute("PING"))
        await wait_until(lambda: _pending(pipe) >= 2, 10)  # both commands are on the wire
        gives_up.cancel()
        await busy
        assert await counted == 1
        assert await other.get(key) == b"1"
        assert await pipe.execute("ECHO", "same connection") == b"same connection"
    finally:
        await other.delete(key)
        await other.aclose()
        await pipe.close()


async def test_a_silent_connection_is_dropped_after_a_caller_gives_up(tmp_path: Path) -> None:
    async with private_server(tmp_path) as server:
        pipe = private_pipe(server.url, make_retry(3))
        admin = server.client()
        try:
            assert await pipe.execute("PING") == b"PONG"
            await admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")  # nothing comes back
            waiting = asyncio.create_task(pipe.execute("ECHO", "patient"))
            gives_up = asyncio.create_task(pipe.execute("PING"))
            await wait_until(lambda: _pending(pipe) >= 2, 10)  # both commands are on the wire
            gives_up.cancel()
            first = pipe._protocol
            started = time.monotonic()
            while pipe._protocol is first and first is not None and first.lost is None:
                assert time.monotonic() - started < SILENCE + 2.0, "the silent connection stayed"
                await asyncio.sleep(0.05)  # polling the pipe's state; the deadline bounds it
            assert time.monotonic() - started >= SILENCE - 0.2
            await admin.execute_command("CLIENT", "UNPAUSE")
            assert await asyncio.wait_for(waiting, 10) == b"patient"  # retried, then answered
        finally:
            await pipe.close()
            await admin.aclose()


async def test_a_failed_handshake_raises_once_and_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with private_server(tmp_path, "--requirepass", "right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/2?client_name=conveyor-test"
        pipe = pipe_for(make_client(url, 6), None)
        assert pipe is not None
        with pytest.raises(AuthenticationError, match="WRONGPASS"):
            await pipe.execute("PING")
        await pipe.close()
        gc.collect()
        await asyncio.sleep(0)
        assert "never retrieved" not in caplog.text


async def test_closing_while_a_call_connects_refuses_the_call() -> None:
    require_shared_server()
    name = f"pipe-close-{new_job_id()}"
    pipe = shared_pipe(client_name=name)
    admin = aioredis.Redis.from_url(SHARED_URL)
    try:
        call = asyncio.create_task(pipe.execute("PING"))
        await asyncio.sleep(0)  # the call is connecting
        await pipe.close()
        with pytest.raises(PipeClosedError):
            await call
        # The server sees the close: then nothing of ours is left.
        async def gone() -> bool:
            return name not in [c.get("name") for c in await admin.client_list()]

        await wait_until(gone, 10)
    finally:
        await admin.aclose()


async def test_a_password_in_the_url_is_accepted_by_a_server_without_one() -> None:
    """redis-py authenticates with HELLO, which a passwordless default user accepts; so does
    the pipe (a bare AUTH would be refused)."""
    require_shared_server()
    pipe = pipe_for(make_client("redis://:anything@127.0.0.1:6379/0", 0), None)
    assert pipe is not None
    try:
        assert await pipe.execute("PING") == b"PONG"
    finally:
        await pipe.close()


def _pending(pipe: Any) -> int:
    """Commands written on the pipe's connection and not answered yet."""
    protocol = pipe._protocol
    return 0 if protocol is None else len(protocol.pending)
