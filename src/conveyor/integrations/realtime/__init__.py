"""Realtime channels: SSE and WebSocket streams of events (``pip install
'conveyor[realtime]'`` for the ASGI app; the hub needs only asyncio)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.integrations.realtime.hub import (
    Broadcaster,
    Connection,
    RealtimeSource,
    Reset,
    parse_last_id,
)

if TYPE_CHECKING:
    from conveyor.integrations.realtime.app import RealtimeApp

__all__ = ["Broadcaster", "Connection", "RealtimeApp", "RealtimeSource", "Reset", "parse_last_id"]


def __getattr__(name: str) -> Any:
    if name == "RealtimeApp":
        from conveyor.integrations.realtime.app import RealtimeApp

        return RealtimeApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
