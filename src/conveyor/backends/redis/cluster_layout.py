"""Key layout of the Redis backend on a Redis Cluster (no I/O here): a hash tag per queue,
and the where map from job id to queue. See :mod:`conveyor.backends.redis.cluster`."""

from __future__ import annotations

import re
import zlib

from conveyor.backends.redis.codec import escape_queue

#: Hashes of the where map (job id -> queue).
WHERE_BUCKETS = 64

_PREFIX_ESCAPE = re.compile(r"[%{}]")


def _pct(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def prefix_tag(prefix: str) -> str:
    return _PREFIX_ESCAPE.sub(_pct, prefix)


def queue_base(prefix: str, queue: str) -> str:
    """``{<prefix>:<queue>}:``: the key base of one queue's keys (its own hash tag)."""
    return "{" + prefix_tag(prefix) + ":" + escape_queue(queue) + "}:"


def where_bucket(prefix: str, bucket: int) -> str:
    """One of the :data:`WHERE_BUCKETS` hashes of the where map (its own hash tag)."""
    return "{" + prefix_tag(prefix) + f":w:{bucket:02d}" + "}"


def where_key(prefix: str, job_id: str) -> str:
    """The where-map hash holding job ``job_id``'s queue."""
    return where_bucket(prefix, zlib.crc32(job_id.encode("utf-8")) % WHERE_BUCKETS)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
