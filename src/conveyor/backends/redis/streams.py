"""Event-sourced streams of the Redis backend: one Redis stream per event-sourced stream
(entry ids ``<version>-0``), appends and snapshot writes as Lua scripts (``lua/stream_*.lua``,
``lua/snapshot_save.lua``), reads straight from the keys. Mirrors
:class:`~conveyor.backends.memory.streams.MemoryStreams`, except that only the latest snapshot
of a stream is kept (the only one a load reads)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from conveyor.backends.capabilities.streams import EventStreams
from conveyor.backends.redis.codec import dumps, escape_queue, num, opt_num
from conveyor.backends.redis.connect import translate_errors
from conveyor.domain.events import AppendResult, NewStreamEvent, SnapshotRecord, StreamRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from conveyor.backends.redis.scripts import ScriptArg


class RedisStreams(EventStreams):
    """Mixed into :class:`~conveyor.backends.redis.backend.RedisBackend`."""

    base: str
    url: str
    prefix: str
    client: Redis

    if TYPE_CHECKING:  # provided by RedisBackend

        async def _run(self, name: str, args: Sequence[ScriptArg]) -> Any: ...

    async def stream_append(
        self,
        stream: str,
        events: Sequence[NewStreamEvent],
        expected_version: int | None,
        now: float | None = None,
    ) -> AppendResult:
        args: list[ScriptArg] = [
            stream,
            "" if expected_version is None else str(expected_version),
            opt_num(now),
        ]
        for e in events:
            args += [e.id, e.name, e.payload, dumps(e.headers), str(e.schema_version)]
        appended, version = await self._run("stream_append", args)
        return AppendResult(bool(appended), int(version))

    async def stream_read(
        self, stream: str, after_version: int = 0, limit: int = 1000
    ) -> list[StreamRecord]:
        if limit <= 0:
            return []
        key = f"{self.base}sx:{escape_queue(stream)}"
        with translate_errors(self.url, self.prefix):
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await self.client.xrange(key, f"{after_version + 1}-0", "+", count=limit),
            )
        return [
            StreamRecord(
                stream,
                int(entry_id.split(b"-", 1)[0]),
                f[b"i"].decode(),
                f[b"n"].decode(),
                f[b"p"],
                json.loads(f[b"h"]),
                int(f[b"v"]),
                float(f[b"t"]),
            )
            for entry_id, f in entries
        ]

    async def stream_version(self, stream: str) -> int:
        with translate_errors(self.url, self.prefix):
            value = await self.client.hget(self.base + "sv", stream)
        return int(value or 0)

    async def snapshot_save(
        self,
        stream: str,
        version: int,
        state: bytes,
        schema_version: int = 1,
        now: float | None = None,
    ) -> None:
        await self._run(
            "snapshot_save", [stream, str(version), state, str(schema_version), opt_num(now)]
        )

    async def snapshot_load(self, stream: str) -> SnapshotRecord | None:
        with translate_errors(self.url, self.prefix):
            raw = cast(
                dict[bytes, bytes],
                await self.client.hgetall(f"{self.base}ss:{escape_queue(stream)}"),
            )
        if not raw:
            return None
        return SnapshotRecord(stream, int(raw[b"v"]), raw[b"s"], int(raw[b"sv"]), float(raw[b"t"]))

    async def stream_prune(self, before: float, limit: int = 1000) -> int:
        return int(await self._run("stream_prune", [num(float(before)), str(limit)]))
