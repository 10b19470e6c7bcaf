"""Fan-out with bounded per-connection buffers, and resume by position (asyncio only).

A realtime *source* opens a :class:`Connection` for a set of patterns and an optional
``Last-Event-ID``: the connection first yields what the client missed (replayed from history by
position), then live events. Each connection has a bounded buffer; publishing never waits on a
client — when a client's buffer is full the connection is **dropped** (``overflowed``) and the
client reconnects with its last id to resume. When the requested position is older than the
retained history, the connection starts with a :class:`Reset` frame (the client must reload),
Centrifugo's "epoch" idea in its simplest form.

:class:`Broadcaster` is the in-process source (history in memory);
the event bus's log is the durable one.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from conveyor.integrations.envelope import EventEnvelope, check_pattern, pattern_matches


@dataclass(frozen=True)
class Reset:
    """The client's position cannot be resumed (history lost): reload, then continue from
    ``position``."""

    reason: str
    position: int


Frame = EventEnvelope | Reset
_CLOSED = object()


def parse_last_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` as a position (``None`` when absent); ``-1`` when unparsable (which
    resumes as lost history)."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    return int(text) if text.isdigit() else -1


class Connection:
    """One client's stream: a backlog to replay, then a bounded live queue."""

    def __init__(self, patterns: Sequence[str], buffer: int, after: int | None) -> None:
        if buffer < 1:
            raise ValueError("a realtime buffer must hold at least one event")
        self.patterns = tuple(check_pattern(p) for p in patterns) or ("#",)
        self.buffer = buffer
        self.last_position = after if after is not None and after >= 0 else 0
        self.backlog: collections.deque[Frame] = collections.deque()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer + 1)
        self.overflowed = False
        self.closed = asyncio.Event()
        self._on_close: list[object] = []

    def wants(self, event: EventEnvelope) -> bool:
        return any(pattern_matches(p, event.name) for p in self.patterns)

    def offer(self, event: EventEnvelope) -> None:
        """Hand a live event over without waiting; a full buffer drops the connection."""
        if self.closed.is_set() or not self.wants(event):
            return
        if self._queue.qsize() >= self.buffer:
            self.overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop the stream (the writer finishes what it is sending, then ends)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.backlog.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Frame:
        while True:
            if self.closed.is_set() and not self.backlog:
                raise StopAsyncIteration
            if self.backlog:
                frame = self.backlog.popleft()
            else:
                item = await self._queue.get()
                if item is _CLOSED:
                    raise StopAsyncIteration
                assert isinstance(item, EventEnvelope)
                frame = item
            if isinstance(frame, EventEnvelope) and frame.position is not None:
                if frame.position <= self.last_position:
                    continue  # already sent (replay and live overlap)
                self.last_position = frame.position
            return frame


class RealtimeSource(Protocol):
    """What the realtime app streams from."""

    async def open(self, patterns: Sequence[str], last_id: str | None, buffer: int) -> Connection:
        """A connection for ``patterns`` resuming after ``last_id`` (``None``: live only)."""
        ...

    def release(self, connection: Connection) -> None:
        """Forget a finished connection."""
        ...


class Broadcaster:
    """In-process source: :meth:`publish` fans events out to every open connection and keeps
    the last ``history`` events for resumption. Positions are assigned 1, 2, 3, … unless the
    events carry their own (then they must increase)."""

    def __init__(self, history: int = 1000) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history: collections.deque[EventEnvelope] = collections.deque(maxlen=history)
        self._position = 0
        self._connections: set[Connection] = set()
        self.published = 0
        self.dropped = 0

    @property
    def position(self) -> int:
        """The position of the last published event."""
        return self._position

    @property
    def connections(self) -> int:
        return len(self._connections)

    def publish(self, event: EventEnvelope) -> EventEnvelope:
        """Stamp ``event`` with the next position, keep it, and offer it to every connection.
        Never waits; a connection whose buffer is full is dropped."""
        if event.position is None:
            self._position += 1
            event = _with_position(event, self._position)
        else:
            if event.position <= self._position:
                raise ValueError(f"positions must increase ({event.position} <= {self._position})")
            self._position = event.position
        self.published += 1
        self._history.append(event)
        for connection in list(self._connections):
            connection.offer(event)
            if connection.overflowed:
                self.dropped += 1
                self._connections.discard(connection)
        return event

    def publish_many(self, events: Iterable[EventEnvelope]) -> None:
        for event in events:
            self.publish(event)

    async def open(
        self, patterns: Sequence[str], last_id: str | None, buffer: int = 256
    ) -> Connection:
        after = parse_last_id(last_id)
        connection = Connection(patterns, buffer, after)
        if after is not None:
            oldest = self._history[0].position if self._history else self._position + 1
            assert oldest is not None
            if after < 0 or after > self._position or after < oldest - 1:
                connection.backlog.append(Reset("history_lost", self._position))
                connection.last_position = self._position
            else:
                connection.backlog.extend(
                    e for e in self._history if (e.position or 0) > after and connection.wants(e)
                )
        self._connections.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        connection.close()
        self._connections.discard(connection)

    def close_all(self) -> int:
        """End every open stream (clients reconnect and resume); return how many."""
        connections, self._connections = list(self._connections), set()
        for connection in connections:
            connection.close()
        return len(connections)


def _with_position(event: EventEnvelope, position: int) -> EventEnvelope:
    return EventEnvelope(
        event.id, event.name, event.data, event.time, event.key, event.metadata, position
    )
