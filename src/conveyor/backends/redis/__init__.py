"""The Redis backend package (``redis://``, ``rediss://``; Valkey too).

``factory`` holds the factory, ``backend`` the client, ``scripts`` the Lua loader (scripts under
``lua/``, one per transition), ``pipe`` the pipelined script connection, ``codec`` the key
layout and record encoding, ``connect`` the connection settings, ``notify`` pub/sub wake-ups.
Importing this package does not import redis-py; the client class loads it on first use.
"""

from __future__ import annotations

from typing import Any

from conveyor.backends.redis.factory import RedisFactory

__all__ = ["RedisBackend", "RedisFactory"]


def __getattr__(name: str) -> Any:
    """The client class, imported on first use (it needs redis-py)."""
    if name == "RedisBackend":
        from conveyor.backends.redis.backend import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
