"""Connecting to Redis: clients with retry and backoff, start-up checks, clear errors.

A dropped connection is retried by redis-py with exponential backoff and jitter, so a Redis
restart of a few seconds is ridden out. What cannot be fixed by retrying (wrong password, a
server too old, Redis Cluster, a key of another program under our prefix) becomes one
:class:`~conveyor.errors.ConfigurationError` or
:class:`~conveyor.errors.StorageUnavailableError` that names the problem and the fix.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from conveyor.backends.common import redact_url
from conveyor.errors import ConfigurationError, StorageUnavailableError

log = logging.getLogger("conveyor.redis")
T = TypeVar("T")

MIN_VERSION = (7, 0)

#: The type each global key must have (relative to the key base).
GLOBAL_KEY_TYPES = {
    "idem": "hash",
    "queues": "set",
    "due": "zset",
    "exp": "zset",
    "lease": "zset",
    "counts": "hash",
    "workers": "hash",
    "beats": "zset",
}


class _Retry(Retry):
    """redis-py's retry, except for authentication failures (a ``ConnectionError`` subclass
    that no amount of waiting fixes)."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError):
                return False
            return is_retryable is None or is_retryable(error)

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def make_retry(retries: int) -> Retry:
    """Exponential backoff with jitter: 50 ms doubling up to 1 s, ``retries`` times."""
    return _Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)


def make_client(url: str, retries: int) -> Redis:
    """A client for ``url`` that retries connection errors and timeouts with backoff.

    ``valkey://`` and ``valkeys://`` are accepted as ``redis://`` and ``rediss://``. Unless the
    URL says otherwise (``?max_connections=…&socket_timeout=…``), at most 64 connections are
    open at once and further callers wait for one (instead of failing, as redis-py's default
    pool does past 100), connecting times out after 5 s and a reply after 30 s (a hung server
    then surfaces as an error instead of a hang; blocking waits use their own connection).
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() in ("valkey", "valkeys"):
        url = scheme.lower().replace("valkey", "redis") + sep + rest
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=30.0,
            retry=make_retry(retries),
            retry_on_error=[ConnectionError, TimeoutError],
            socket_keepalive=True,
            socket_connect_timeout=5.0,
            socket_timeout=30.0,
        )
        return Redis.from_pool(pool)
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid Redis URL {redact_url(url)!r}: {exc}; "
            "use redis://[:password@]host[:port][/db] or rediss:// for TLS"
        ) from exc


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster", "valkey+cluster", "valkeys+cluster")


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def make_cluster_client(
    url: str, retries: int, *, socket_timeout: float | None = 30.0
) -> RedisCluster:
    """A Redis Cluster client for ``redis+cluster://[user:password@]host:port[?nodes=h:p,…]``
    (``rediss+cluster://`` for TLS): the host in the URL and every ``nodes`` entry are
    start-up nodes; the client discovers the rest, follows MOVED/ASK redirects and refreshes
    the slot map after a fail-over."""
    from redis.asyncio.cluster import ClusterNode

    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        nodes = [ClusterNode(host, port)]
        query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
        for item in filter(None, query.pop("nodes", "").split(",")):
            h, _, p = item.rpartition(":")
            nodes.append(ClusterNode(h or host, int(p)))
        database = parts.path.strip("/")
        if database not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
        if query:
            raise ValueError(f"unknown URL parameters {sorted(query)} (only nodes=)")
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid Redis Cluster URL {redact_url(url)!r}: {exc}; use "
            "redis+cluster://[:password@]host:port[?nodes=host2:port2,host3:port3] "
            "(rediss+cluster:// for TLS)"
        ) from exc
    return RedisCluster(
        startup_nodes=nodes,
        username=parts.username or None,
        password=parts.password or None,
        ssl=parts.scheme.lower().startswith(("rediss", "valkeys")),
        retry=make_retry(retries),
        retry_on_error=[ConnectionError, TimeoutError],
        socket_keepalive=True,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        require_full_coverage=True,
    )


async def check_cluster(client: RedisCluster, url: str, prefix: str) -> dict[str, Any]:
    """Start-up checks of a Redis Cluster: reachable, every node Redis 7.0+, the slots all
    served; a warning when a node may evict keys. Facts for ``describe()``."""
    where = redact_url(url)
    with translate_errors(url, prefix):
        await client.initialize()
        masters = client.get_primaries()
        infos = await asyncio.gather(
            *(client.execute_command("INFO", "server", target_nodes=n) for n in masters)
        )
        memories = await asyncio.gather(
            *(client.execute_command("INFO", "memory", target_nodes=n) for n in masters)
        )
    versions = sorted({str(i.get("redis_version", "0")) for i in infos})
    if any(_version(v) < MIN_VERSION for v in versions):
        raise ConfigurationError(
            f"a node of the Redis Cluster at {where} runs Redis {versions[0]}; Conveyor needs "
            "Redis 7.0 or newer on every node: upgrade the servers"
        )
    policies = sorted({str(m.get("maxmemory_policy", "noeviction")) for m in memories})
    if policies != ["noeviction"]:
        log.warning(
            "Redis Cluster at %s has maxmemory-policy %s on some node: when it fills up it "
            "will evict keys and silently lose jobs; set 'maxmemory-policy noeviction'",
            where,
            ",".join(policies),
            extra={"action": "redis_eviction_enabled", "policy": ",".join(policies)},
        )
    return {
        "server_version": ",".join(versions),
        "cluster_masters": len(masters),
        "maxmemory_policy": ",".join(policies),
    }


def blocking_client(client: Redis) -> Redis:
    """A client on its own pool, like ``client`` but with no read timeout, for BZPOPMIN."""
    pool = client.connection_pool
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    kwargs["socket_timeout"] = None
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs))


@contextmanager
def translate_errors(url: str, prefix: str) -> Iterator[None]:
    """Turn redis-py errors into Conveyor's, with the problem and the fix in the message."""
    try:
        yield
    except (AuthenticationError, AuthorizationError) as exc:
        where = redact_url(url)
        if "NOAUTH" in str(exc) or ("authenticated" in str(exc) and not _has_password(url)):
            raise StorageUnavailableError(
                f"Redis at {where} requires a password; put it in the URL: "
                "redis://:PASSWORD@host:6379/0"
            ) from exc
        raise StorageUnavailableError(
            f"Redis at {where} rejected the credentials ({exc}); fix the password in the URL "
            "(redis://:PASSWORD@host:6379/0 or redis://USER:PASSWORD@host:6379/0)"
        ) from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        where = redact_url(url)
        raise StorageUnavailableError(
            f"cannot reach Redis at {where} ({exc}); check that the server is running and "
            "that the URL's host and port are right"
        ) from exc
    except ResponseError as exc:
        where, message = redact_url(url), str(exc)
        if message.startswith("NOAUTH"):
            raise StorageUnavailableError(
                f"Redis at {where} requires a password; put it in the URL: "
                "redis://:PASSWORD@host:6379/0"
            ) from exc
        if "WRONGTYPE" in message:
            raise ConfigurationError(
                f"a key under the prefix {prefix!r} on Redis at {where} holds a value of the "
                f"wrong type ({message}); another program uses that prefix: choose another "
                "prefix= for Conveyor, or delete that program's keys"
            ) from exc
        if isinstance(exc, OutOfMemoryError) or "> 'maxmemory'" in message:
            raise StorageUnavailableError(
                f"Redis at {where} is out of memory (maxmemory reached, noeviction): new jobs "
                "cannot be stored until workers finish jobs or finished jobs are deleted; "
                "raise maxmemory or prune completed jobs sooner"
            ) from exc
        if "MOVED" in message or "CROSSSLOT" in message:
            raise ConfigurationError(_cluster_message(where)) from exc
        raise StorageUnavailableError(f"Redis at {where} answered an error: {message}") from exc
    except RedisError as exc:
        raise StorageUnavailableError(f"Redis at {redact_url(url)} failed: {exc}") from exc


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _cluster_message(where: str) -> str:
    return (
        f"Redis at {where} runs in cluster mode: name it with redis+cluster://host:port "
        "(rediss+cluster:// for TLS) instead of redis:// (see docs/redis.md)"
    )


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"\d*", piece)
        parts.append(int(digits.group() or 0) if digits else 0)
    return tuple(parts)


async def check_server(client: Redis, url: str, prefix: str, base: str) -> dict[str, Any]:
    """Check the server once at start-up; returns facts for ``describe()``.

    Raises on a server below :data:`MIN_VERSION`, on cluster mode and on global keys of the
    wrong type; logs a warning when eviction could delete jobs.
    """
    where = redact_url(url)
    with translate_errors(url, prefix):
        info: dict[str, Any] = await client.info("server")
        version = str(info.get("redis_version", "0"))
        if _version(version) < MIN_VERSION:
            raise ConfigurationError(
                f"Redis at {where} is version {version}; Conveyor needs Redis 7.0 or newer "
                "(or Valkey 7.2+): upgrade the server"
            )
        if info.get("redis_mode") == "cluster":
            raise ConfigurationError(_cluster_message(where))
        memory: dict[str, Any] = await client.info("memory")
        persistence: dict[str, Any] = await client.info("persistence")
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            log.warning(
                "Redis at %s has maxmemory-policy %s: when it fills up it will evict keys and "
                "silently lose jobs; set 'maxmemory-policy noeviction' (see docs/redis.md)",
                where,
                policy,
                extra={"action": "redis_eviction_enabled", "policy": policy},
            )
        async with client.pipeline(transaction=False) as pipe:
            for name in GLOBAL_KEY_TYPES:
                pipe.type(base + name)
            types = await pipe.execute()
        for (name, expected), found in zip(GLOBAL_KEY_TYPES.items(), types, strict=True):
            kind = found.decode() if isinstance(found, bytes) else str(found)
            if kind not in ("none", expected):
                raise ConfigurationError(
                    f"Redis key {base + name!r} on {where} is a {kind}, but Conveyor keeps a "
                    f"{expected} there: another program uses the prefix {prefix!r}; choose "
                    "another prefix= for Conveyor, or delete that key"
                )
    return {
        "server_version": version,
        "valkey_version": info.get("valkey_version"),
        "maxmemory_policy": policy,
        "aof_enabled": bool(int(persistence.get("aof_enabled", 0))),
    }
