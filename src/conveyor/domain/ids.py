"""Job ids: sortable by creation time, generated client-side, no round trip needed.

The layout is UUIDv7-like: 48 bits of Unix milliseconds, then a 12-bit counter that keeps ids
from one process increasing within a millisecond, then 64 random bits; rendered as 32 lowercase
hex characters, so lexical order is time order.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_job_id() -> str:
    """A new sortable id (32 hex characters)."""
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
    rand = int.from_bytes(os.urandom(8), "big")
    return f"{ms:012x}{counter:03x}7{rand:016x}"[:32]


def id_time(job_id: str) -> float:
    """The creation time (epoch seconds) encoded in an id made by :func:`new_job_id`."""
    return int(job_id[:12], 16) / 1000.0
