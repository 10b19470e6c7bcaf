"""Job ids: UUIDv7 (RFC 9562), generated client-side, sortable by creation time.

Layout, in 32 lowercase hex characters (a UUID without its dashes; ``uuid.UUID(job_id)``
parses it): 48 bits of Unix milliseconds, the version nibble ``7``, 12 bits of a counter that
keeps the ids of one process increasing within a millisecond (RFC 9562 §6.2, method 1), the
variant bits ``10``, then 62 random bits. Lexical order is time order.

Ids stored by earlier versions (same 48-bit millisecond prefix, then the counter, a ``7`` and
random bits) keep working: ids are opaque strings to every store, and :func:`id_time` reads
both layouts.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0

_VARIANT = 0b10 << 62  # RFC 9562 variant, in the top two bits of the last 64


def format_uuid7(ms: int, rand_a: int, rand_b: int) -> str:
    """A UUIDv7 as 32 hex characters: ``ms`` (48 bits), ``rand_a`` (12 bits), ``rand_b``
    (62 bits; higher bits are dropped) with the version and variant bits set."""
    low = _VARIANT | (rand_b & ((1 << 62) - 1))
    return f"{ms & 0xFFFFFFFFFFFF:012x}7{rand_a & 0xFFF:03x}{low:016x}"


def new_job_id() -> str:
    """A new UUIDv7 (32 hex characters, no dashes)."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = 0
        counter = _counter
    return format_uuid7(ms, counter, int.from_bytes(os.urandom(8), "big"))


def id_time(job_id: str) -> float:
    """The creation time (epoch seconds) encoded in an id made by :func:`new_job_id` (or by
    an earlier version of it: both start with the 48-bit millisecond timestamp)."""
    return int(job_id[:12], 16) / 1000.0
