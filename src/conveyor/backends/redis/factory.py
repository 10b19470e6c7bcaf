"""``redis://`` and ``rediss://``: the Redis (or Valkey) backend, for the highest throughput.

Every state transition is one Lua script, so it is atomic inside Redis; workers block on a
marker key instead of polling; cancellations and finished jobs are pushed over pub/sub. See
``docs/redis.md`` for the key layout, memory use, the settings Redis needs and what an
un-persisted Redis loses on restart.

Options (``factory_from_url(url, **options)``):

``prefix``
    Key prefix, so several apps (or tests) share one Redis. Every key is ``{prefix}:…``.
``client``
    An existing ``redis.asyncio.Redis`` to use instead of connecting from the URL; it is
    never closed by Conveyor.
``retries``
    How many times a command is retried, with exponential backoff and jitter, when the
    connection drops (default 6: about two seconds of outage are ridden out).
``pipelined``
    Send every script call over one shared, pipelined connection (default ``True``; see
    ``conveyor.backends.redis.pipe``). ``False`` uses redis-py's connection pool for them, as
    do TLS (``rediss://``), Unix-socket and RESP3 clients in any case.

``redis+cluster://host:port[?nodes=host2:port2,…]`` (``rediss+cluster://`` for TLS) names a
Redis Cluster: every queue's keys get their own hash tag so queues spread over the shards (see
:mod:`conveyor.backends.redis.cluster` and ``docs/redis.md``); ``client`` may then be a
``redis.asyncio.cluster.RedisCluster``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from conveyor.backends.base import BackendFactory
from conveyor.backends.common import redact_url
from conveyor.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from conveyor.backends.redis.backend import RedisBackend


class RedisFactory(BackendFactory):
    """Makes :class:`RedisBackend` clients of the jobs under one key prefix."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "conveyor",
        client: Redis | RedisCluster | None = None,
        retries: int = 6,
        pipelined: bool = True,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis") from exc
        from conveyor.backends.redis.codec import key_base

        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("the Redis key prefix must be a non-empty string")
        if retries < 0:
            raise ConfigurationError("retries must be >= 0")
        from conveyor.backends.redis.connect import is_cluster_url

        self.url = url
        self.prefix = prefix
        self.base = key_base(prefix)
        self.client = client
        self.retries = retries
        self.pipelined = pipelined
        #: A Redis Cluster (``redis+cluster://``): one hash tag per queue.
        self.cluster = is_cluster_url(url)

    def create(self) -> RedisBackend:
        """A new client for the calling event loop (with its own connection pool unless the
        factory was given a ``client``)."""
        from conveyor.backends.redis.backend import RedisBackend
        from conveyor.backends.redis.connect import make_client

        if self.cluster:
            return self._create_cluster()
        if self.client is not None:
            client, owned = cast("Redis", self.client), False
        else:
            client, owned = make_client(self.url, self.retries), True
        return RedisBackend(
            self.url, self.prefix, self.base, client, owned, pipelined=self.pipelined
        )

    def _create_cluster(self) -> RedisBackend:
        from conveyor.backends.redis.cluster import RedisClusterBackend
        from conveyor.backends.redis.connect import make_cluster_client

        blocking = make_cluster_client(self.url, self.retries, socket_timeout=None)
        if self.client is not None:
            given = cast("RedisCluster", self.client)
            return RedisClusterBackend(self.url, self.prefix, self.base, given, False, blocking)
        client = make_cluster_client(self.url, self.retries)
        return RedisClusterBackend(self.url, self.prefix, self.base, client, True, blocking)

    async def destroy(self) -> None:
        """Delete every key under the prefix (``SCAN`` + ``UNLINK``)."""
        if self.cluster:
            await self._destroy_cluster()
            return
        from conveyor.backends.redis.codec import scan_pattern
        from conveyor.backends.redis.connect import make_client, translate_errors

        client = self.client or make_client(self.url, self.retries)
        try:
            with translate_errors(self.url, self.prefix):
                batch: list[bytes] = []
                async for key in client.scan_iter(match=scan_pattern(self.base), count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await client.unlink(*batch)
                        batch = []
                if batch:
                    await client.unlink(*batch)
        finally:
            if self.client is None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _destroy_cluster(self) -> None:
        """Every key of every queue under the prefix, the where map and the prefix's own."""
        from conveyor.backends.redis.cluster_layout import WHERE_BUCKETS, queue_base, where_bucket
        from conveyor.backends.redis.codec import scan_pattern
        from conveyor.backends.redis.connect import make_cluster_client, translate_errors

        client = self.client or make_cluster_client(self.url, self.retries)
        try:
            with translate_errors(self.url, self.prefix):
                members = await client.smembers(self.base + "queues")
                names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
                for base in [*(queue_base(self.prefix, q) for q in names), self.base]:
                    batch: list[bytes] = []  # one base: one slot, so one UNLINK per batch
                    async for key in client.scan_iter(match=scan_pattern(base), count=1000):
                        batch.append(key)
                        if len(batch) >= 1000:
                            await client.unlink(*batch)
                            batch = []
                    if batch:
                        await client.unlink(*batch)
                for bucket in range(WHERE_BUCKETS):
                    await client.unlink(where_bucket(self.prefix, bucket))
        finally:
            if self.client is None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": redact_url(self.url),
            "prefix": self.prefix,
            "key_base": self.base,
        }
        if self.cluster:
            out["cluster"] = True
        return out
