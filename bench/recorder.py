"""What a benchmark job does: append one 16-byte record to a per-process file, nothing else.

Every library's no-op task calls :func:`record` with the enqueue timestamp it was given (``0.0``
for throughput runs). The record is ``(enqueued_at, started_at)`` as two little-endian doubles,
written with one ``write(2)`` on an ``O_APPEND`` descriptor (about 2 µs), so the harness learns
how many jobs ran, when, and each job's enqueue-to-start latency without asking the library.
Worker processes that fork (prefork pools, fork-per-job workers) reopen their own file.
"""

from __future__ import annotations

import os
import struct
import time

RECORD = struct.Struct("<dd")
_fd: int | None = None
_pid = 0


def _open() -> int:
    global _fd, _pid
    folder = os.environ.get("BENCH_RECORD_DIR")
    if not folder:
        raise RuntimeError("BENCH_RECORD_DIR is not set; benchmark tasks run only under bench/")
    _pid = os.getpid()
    path = os.path.join(folder, f"records-{_pid}.bin")
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def _forget() -> None:
    global _fd
    _fd = None


def reset() -> None:
    """Close this process's record file, so the next record opens a fresh one (for callers
    that delete the files between runs in one process)."""
    if _fd is not None:
        os.close(_fd)
    _forget()


os.register_at_fork(after_in_child=_forget)


def record(enqueued_at: float = 0.0) -> None:
    """Record that a job started now (and when it was enqueued, if the caller knows)."""
    fd = _fd if _fd is not None else _open()
    os.write(fd, RECORD.pack(enqueued_at, time.time()))


def echo(value: object) -> object:
    """The end-to-end task body: record, then hand the argument back as the result."""
    record(0.0)
    return value
