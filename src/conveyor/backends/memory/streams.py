"""Event-sourced streams of the memory backend: the reference semantics of
:class:`~conveyor.backends.capabilities.streams.EventStreams` (one lock, plain lists)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from conveyor.backends.capabilities.streams import EventStreams
from conveyor.domain.events import AppendResult, NewStreamEvent, SnapshotRecord, StreamRecord


class _Locked(Protocol):
    lock: threading.RLock


@dataclass(slots=True)
class StreamState:
    """The streams' share of a memory store."""

    events: dict[str, list[StreamRecord]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    ids: dict[str, tuple[str, int]] = field(default_factory=dict)  # event id -> (stream, v)
    snapshots: dict[str, dict[int, SnapshotRecord]] = field(default_factory=dict)


def stream_state(store: _Locked) -> StreamState:
    state = store.__dict__.get("streams")
    if state is None:
        with store.lock:
            state = store.__dict__.setdefault("streams", StreamState())
    assert isinstance(state, StreamState)
    return state


class MemoryStreams(EventStreams):
    """Mixed into :class:`~conveyor.backends.memory.MemoryBackend`."""

    @property
    def _locked(self) -> _Locked:
        return cast(_Locked, self.store)  # type: ignore[attr-defined]

    async def stream_append(
        self,
        stream: str,
        events: Sequence[NewStreamEvent],
        expected_version: int | None,
        now: float | None = None,
    ) -> AppendResult:
        t = time.time() if now is None else now
        st = stream_state(self._locked)
        with self._locked.lock:
            current = st.versions.get(stream, 0)
            if events and events[0].id in st.ids:
                where, version = st.ids[events[0].id]
                if where == stream:
                    return AppendResult(True, version + len(events) - 1)
            if expected_version is not None and expected_version != current:
                return AppendResult(False, current)
            log = st.events.setdefault(stream, [])
            for e in events:
                current += 1
                log.append(
                    StreamRecord(
                        stream,
                        current,
                        e.id,
                        e.name,
                        e.payload,
                        dict(e.headers),
                        e.schema_version,
                        t,
                    )
                )
                st.ids[e.id] = (stream, current)
            st.versions[stream] = current
            return AppendResult(True, current)

    async def stream_read(
        self, stream: str, after_version: int = 0, limit: int = 1000
    ) -> list[StreamRecord]:
        st = stream_state(self._locked)
        with self._locked.lock:
            rows = [r for r in st.events.get(stream, []) if r.version > after_version]
        return rows[: max(limit, 0)]

    async def stream_version(self, stream: str) -> int:
        st = stream_state(self._locked)
        with self._locked.lock:
            return st.versions.get(stream, 0)

    async def snapshot_save(
        self,
        stream: str,
        version: int,
        state: bytes,
        schema_version: int = 1,
        now: float | None = None,
    ) -> None:
        t = time.time() if now is None else now
        st = stream_state(self._locked)
        with self._locked.lock:
            snaps = st.snapshots.setdefault(stream, {})
            snaps[version] = SnapshotRecord(stream, version, state, schema_version, t)

    async def snapshot_load(self, stream: str) -> SnapshotRecord | None:
        st = stream_state(self._locked)
        with self._locked.lock:
            snaps = st.snapshots.get(stream)
            return snaps[max(snaps)] if snaps else None

    async def stream_prune(self, before: float, limit: int = 1000) -> int:
        st = stream_state(self._locked)
        deleted = 0
        with self._locked.lock:
            for stream, snaps in st.snapshots.items():
                if not snaps:
                    continue
                latest = max(snaps)
                for v in [v for v in snaps if v < latest]:
                    del snaps[v]
                keep: list[StreamRecord] = []
                for r in st.events.get(stream, []):
                    if deleted < limit and r.version <= latest and r.recorded_at < before:
                        st.ids.pop(r.id, None)
                        deleted += 1
                    else:
                        keep.append(r)
                st.events[stream] = keep
        return deleted
