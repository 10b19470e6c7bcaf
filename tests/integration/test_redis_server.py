"""The Redis backend against private ``redis-server`` processes: configuration errors and
warnings, script reloading, round trips per call, and memory per job."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from conveyor.backends.redis import RedisFactory
from conveyor.backends.redis.connect import _version
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import JobFilter, NewJob
from conveyor.errors import ConfigurationError, StorageUnavailableError

try:
    from .test_redis_support import calls_delta, command_calls, free_port, private_server
except ImportError:  # tests/integration is not a package
    from test_redis_support import (  # type: ignore[no-redef]
        calls_delta,
        command_calls,
        free_port,
        private_server,
    )

T = 1_700_000_000.0

#: Bytes of Redis memory per queued job (documented in docs/redis.md); measured ~750 and
#: ~1,920 on Redis 7.0 / x86-64. The bounds leave room for allocator and version differences.
MAX_BYTES_PER_JOB = {100: 900, 1024: 2200}


def job(**fields: object) -> NewJob:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b"p")
    return NewJob(task="tasks.work", queue="default", **fields)  # type: ignore[arg-type]


# -- authentication -------------------------------------------------------------------------


async def test_wrong_password_is_one_clear_error(tmp_path: Path) -> None:
    async with private_server(tmp_path, "--requirepass", "right") as server:
        for url, expected in [
            (f"redis://:wrong@127.0.0.1:{server.port}/0", "rejected the credentials"),
            (server.url, "requires a password"),
        ]:
            backend = RedisFactory(url, prefix="p").create()
            try:
                with pytest.raises(StorageUnavailableError, match=expected) as info:
                    await backend.open()
                assert "wrong" not in str(info.value)  # the password is never echoed
                assert "redis://:PASSWORD@host:6379/0" in str(info.value)
            finally:
                await backend.close()
        good = RedisFactory(f"redis://:right@127.0.0.1:{server.port}/0", prefix="p")
        backend = good.create()
        try:
            await backend.open()
            assert (await backend.enqueue([job()], now=T))[0].created
        finally:
            await backend.close()


# -- server checks ------------------------------------------------------------------------------


async def test_eviction_policy_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with private_server(tmp_path, "--maxmemory-policy", "allkeys-lru") as server:
        backend = RedisFactory(server.url, prefix="p").create()
        try:
            with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
                await backend.open()
        finally:
            await backend.close()
    [record] = [r for r in caplog.records if r.name == "conveyor.redis"]
    assert "allkeys-lru" in record.getMessage()
    assert "maxmemory-policy noeviction" in record.getMessage()


async def test_no_warning_with_noeviction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with private_server(tmp_path, "--maxmemory-policy", "noeviction") as server:
        backend = RedisFactory(server.url, prefix="p").create()
        try:
            with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
                await backend.open()
        finally:
            await backend.close()
    assert [r for r in caplog.records if r.name == "conveyor.redis"] == []


async def test_cluster_mode_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with private_server(
        tmp_path,
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-port", str(free_port()),  # not port + 10000, which may exceed 65535
    ) as server:  # fmt: skip
        backend = RedisFactory(server.url, prefix="p").create()
        try:
            with pytest.raises(ConfigurationError, match="cluster mode"):
                await backend.open()
        finally:
            await backend.close()


def test_version_parsing() -> None:
    assert _version("7.0.15") == (7, 0, 15)
    assert _version("6.2.14") < (7, 0)
    assert _version("7.2.4-rc1") == (7, 2, 4)
    assert _version("255.255.255") >= (7, 0)


# -- scripts ----------------------------------------------------------------------------------


async def test_scripts_are_reloaded_after_a_flush(tmp_path: Path) -> None:
    async with private_server(tmp_path) as server:
        backend = RedisFactory(server.url, prefix="p").create()
        raw = server.client()
        try:
            await backend.enqueue([job()], now=T)
            await raw.script_flush()
            before = await command_calls(raw)
            [result] = await backend.enqueue([job()], now=T)
            assert result.created
            delta = calls_delta(before, await command_calls(raw))
            # EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA again.
            assert delta.get("evalsha") == 2 and delta.get("script|load") == 1
        finally:
            await backend.close()
            await raw.aclose()


async def test_each_transition_is_one_command(tmp_path: Path) -> None:
    async with private_server(tmp_path) as server:
        backend = RedisFactory(server.url, prefix="p").create()
        raw = server.client()
        try:
            await backend.enqueue([job()], now=T)  # load the enqueue script
            before = await command_calls(raw)
            await backend.enqueue([job() for _ in range(1000)], now=T)
            assert _client_commands(calls_delta(before, await command_calls(raw))) == {"evalsha": 1}

            [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)  # loads claim
            await backend.complete(claimed.id, claimed.fence, b"r", now=T)  # loads complete
            before = await command_calls(raw)
            batch = await backend.claim("w", ["default"], 50, 30, now=T)
            for c in batch:
                assert await backend.complete(c.id, c.fence, b"r", now=T)
            assert len(batch) == 50
            assert _client_commands(calls_delta(before, await command_calls(raw))) == {
                "evalsha": 51
            }

            # Completing a job and claiming the next: one command too.
            [held] = await backend.claim("w", ["default"], 1, 30, now=T)
            await backend.complete_and_claim(held.id, held.fence, None, "w", ["default"], 1, 30)
            before = await command_calls(raw)
            for _ in range(10):
                held = (
                    await backend.complete_and_claim(
                        held.id, held.fence, None, "w", ["default"], 1, 30
                    )
                )[1][0]
            assert _client_commands(calls_delta(before, await command_calls(raw))) == {
                "evalsha": 10
            }
        finally:
            await backend.close()
            await raw.aclose()


def _client_commands(delta: dict[str, int]) -> dict[str, int]:
    """The commands a client sent (INFO commandstats also counts the ones scripts run; the
    backend itself only ever sends EVALSHA, SCRIPT LOAD, HGETALL, BZPOPMIN and pub/sub)."""
    sent = {"evalsha", "eval", "script|load", "hgetall", "multi", "exec", "bzpopmin"}
    return {name: n for name, n in delta.items() if name in sent}


# -- memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_size", [100, 1024])
async def test_memory_per_queued_job_stays_under_the_documented_bound(
    tmp_path: Path, payload_size: int
) -> None:
    async with private_server(tmp_path) as server:
        backend = RedisFactory(server.url, prefix="conveyor").create()
        raw = server.client()
        try:
            await backend.enqueue([job()], now=T)  # the queue's structures exist
            await raw.execute_command("MEMORY", "PURGE")
            before = (await raw.info("memory"))["used_memory"]
            n = 10_000
            for _ in range(n // 1000):
                batch = [
                    NewJob(
                        id=new_job_id(),
                        task="app.tasks.send_email",
                        queue="default",
                        payload=os.urandom(payload_size),
                    )
                    for _ in range(1000)
                ]
                await backend.enqueue(batch)
            after = (await raw.info("memory"))["used_memory"]
            per_job = (after - before) / n
            print(f"\nRedis memory per queued job, {payload_size} B payload: {per_job:.0f} B")
            assert payload_size < per_job < MAX_BYTES_PER_JOB[payload_size]
        finally:
            await backend.close()
            await raw.aclose()


# -- out of memory ----------------------------------------------------------------------------


async def test_a_full_redis_refuses_new_jobs_but_workers_still_drain_it(tmp_path: Path) -> None:
    async with private_server(tmp_path, "--maxmemory-policy", "noeviction") as server:
        backend = RedisFactory(server.url, prefix="p").create()
        raw = server.client()
        try:
            await backend.open()
            stored = 2000
            for _ in range(stored // 100):
                await backend.enqueue([job(payload=b"x" * 1000) for _ in range(100)], now=T)
            used = (await raw.info("memory"))["used_memory"]
            await raw.config_set("maxmemory", used // 2)  # now far over the limit
            with pytest.raises(StorageUnavailableError, match="out of memory") as info:
                await backend.enqueue([job()], now=T)
            assert "maxmemory" in str(info.value)
            # Dequeue and acknowledge run although Redis is full (scripts flagged allow-oom),
            # so workers drain the queue: a full Redis must not also stop the workers that
            # would free it (Slack's job queue incident).
            done = 0
            while batch := await backend.claim("w", ["default"], 50, 30, now=T):
                for c in batch:
                    assert await backend.complete(c.id, c.fence, b"result", now=T + 1)
                done += len(batch)
            assert done == stored
            assert await backend.delete_jobs(JobFilter(), limit=100_000) == stored
            await raw.config_set("maxmemory", 0)
            assert (await backend.enqueue([job()], now=T))[0].created
        finally:
            await backend.close()
            await raw.aclose()
