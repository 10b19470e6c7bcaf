"""The event bus of the memory backend: the reference semantics of
:class:`~conveyor.backends.capabilities.events.EventBusStore`.

Everything happens under the store's one lock, so positions follow commit order trivially. The
delivery jobs are stored by the backend's own ``enqueue`` called under that (re-entrant) lock:
it never awaits, so the whole publish is one step no other client can interleave with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from conveyor.backends.capabilities.events import EventBusStore
from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    EventQuery,
    EventRecord,
    NewDelivery,
    NewEvent,
    PublishResult,
    SubscriptionRecord,
    SubscriptionSet,
)
from conveyor.domain.job import EnqueueResult, JobRecord, NewJob
from conveyor.domain.states import JobState


class StoreView(Protocol):
    """What the bus uses of :class:`~conveyor.backends.memory.MemoryStore`."""

    lock: threading.RLock
    jobs: dict[str, JobRecord]

    def wake(self) -> None: ...


#: Job states in which a delivery's job may still run its handler.
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING})


@dataclass(slots=True)
class _Delivery:
    event_id: str
    position: int
    subscription: str
    job_id: str
    status: DeliveryStatus
    chain: str | None
    seq: int
    created_at: float
    finished_at: float | None = None


@dataclass(slots=True)
class _Chain:
    seq: int = 0
    members: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> delivery key


@dataclass(slots=True)
class BusState:
    """The bus's share of a :class:`MemoryStore`."""

    position: int = 0
    version: int = 0
    subscriptions: dict[str, SubscriptionRecord] = field(default_factory=dict)
    events: dict[int, EventRecord] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], _Delivery] = field(default_factory=dict)
    by_job: dict[str, tuple[str, str]] = field(default_factory=dict)
    chains: dict[tuple[str, str], _Chain] = field(default_factory=dict)


def bus_state(store: StoreView) -> BusState:
    """The bus state of ``store`` (made on first use)."""
    state = store.__dict__.get("bus")
    if state is None:
        with store.lock:
            state = store.__dict__.setdefault("bus", BusState())
    assert isinstance(state, BusState)
    return state


class MemoryEvents(EventBusStore):
    """Mixed into :class:`~conveyor.backends.memory.MemoryBackend`."""

    @property
    def _store(self) -> StoreView:
        return cast(StoreView, self.store)  # type: ignore[attr-defined]

    if TYPE_CHECKING:  # provided by MemoryBackend

        async def enqueue(
            self, jobs: Sequence[NewJob], now: float | None = None
        ) -> list[EnqueueResult]: ...

    # -- subscriptions ------------------------------------------------------------------------
    async def bus_subscriptions(self) -> SubscriptionSet:
        st = bus_state(self._store)
        with self._store.lock:
            subs = tuple(sorted(st.subscriptions.values(), key=lambda s: s.name))
            return SubscriptionSet(st.version, subs)

    async def bus_subscribe(
        self, name: str, pattern: str, spec: dict[str, Any], now: float | None = None
    ) -> tuple[SubscriptionRecord, bool]:
        t = time.time() if now is None else now
        st = bus_state(self._store)
        with self._store.lock:
            old = st.subscriptions.get(name)
            if old is not None and old.pattern == pattern and old.spec == spec:
                return old, False
            if old is None:
                record = SubscriptionRecord(name, pattern, dict(spec), st.position, t)
            else:
                record = replace(old, pattern=pattern, spec=dict(spec))
            st.subscriptions[name] = record
            st.version += 1
            return record, True

    async def bus_unsubscribe(self, name: str) -> bool:
        st = bus_state(self._store)
        with self._store.lock:
            if st.subscriptions.pop(name, None) is None:
                return False
            st.version += 1
            return True

    # -- publishing ---------------------------------------------------------------------------
    async def bus_publish(
        self,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        t = time.time() if now is None else now
        st = bus_state(self._store)
        with self._store.lock:
            if version != st.version:
                return None
            results: list[PublishResult] = []
            created: set[str] = set()
            for ev in events:
                known = st.ids.get(ev.id)
                if known is not None:
                    results.append(PublishResult(ev.id, known, False))
                    continue
                st.position += 1
                occurred = t if ev.occurred_at is None else ev.occurred_at
                st.events[st.position] = EventRecord(
                    st.position,
                    ev.id,
                    ev.name,
                    ev.payload,
                    ev.key,
                    ev.priority,
                    dict(ev.headers),
                    ev.schema_version,
                    occurred,
                    t,
                )
                st.ids[ev.id] = st.position
                created.add(ev.id)
                results.append(PublishResult(ev.id, st.position, True))
            jobs = [
                self._add_delivery(st, d, t)
                for d in deliveries
                if d.event_id in created and (d.event_id, d.subscription) not in st.deliveries
            ]
            if jobs:
                await self.enqueue(jobs, t)  # never awaits: still one step under the lock
            return results

    def _add_delivery(self, st: BusState, d: NewDelivery, t: float) -> NewJob:
        """Record a live delivery (joining its chain) and return the job to store for it."""
        key = (d.event_id, d.subscription)
        seq, blocked = 0, False
        if d.chain is not None:
            chain = st.chains.setdefault((d.subscription, d.chain), _Chain())
            blocked = bool(chain.members)
            chain.seq += 1
            seq = chain.seq
            chain.members[seq] = key
        st.deliveries[key] = _Delivery(
            d.event_id,
            st.ids[d.event_id],
            d.subscription,
            d.job.id,
            DeliveryStatus.LIVE,
            d.chain,
            seq,
            t,
        )
        st.by_job[d.job.id] = key
        return replace(d.job, blocked=True) if blocked else d.job

    async def bus_redeliver(
        self, deliveries: Sequence[NewDelivery], *, force: bool = False, now: float | None = None
    ) -> list[str | None]:
        t = time.time() if now is None else now
        st = bus_state(self._store)
        out: list[str | None] = []
        with self._store.lock:
            for d in deliveries:
                if d.event_id not in st.ids:
                    out.append(None)
                    continue
                old = st.deliveries.get((d.event_id, d.subscription))
                if old is not None:
                    job = self._store.jobs.get(old.job_id)
                    alive = job is not None and not job.state.is_terminal
                    if old.status is DeliveryStatus.LIVE and alive:
                        out.append(None)
                        continue
                    if old.status is DeliveryStatus.HANDLED and not force:
                        out.append(None)
                        continue
                    self._leave_chain(st, old, t)
                    st.by_job.pop(old.job_id, None)
                    del st.deliveries[(d.event_id, d.subscription)]
                # Stored at once: a later delivery of the batch for the same pair sees it live.
                await self.enqueue([self._add_delivery(st, d, t)], t)  # never awaits
                out.append(d.job.id)
        return out

    # -- outcomes -----------------------------------------------------------------------------
    async def bus_finish(
        self, job_id: str, status: DeliveryStatus, now: float | None = None
    ) -> bool:
        t = time.time() if now is None else now
        st = bus_state(self._store)
        with self._store.lock:
            key = st.by_job.get(job_id)
            if key is None:
                return False
            d = st.deliveries[key]
            if d.status is DeliveryStatus.HANDLED or d.status is status:
                return False
            d.status, d.finished_at = status, t
            self._leave_chain(st, d, t)
        self._store.wake()
        return True

    def _leave_chain(self, st: BusState, d: _Delivery, t: float) -> int:
        """Take ``d`` out of its chain (if it is in one) and advance the chain."""
        if d.chain is None:
            return 0
        chain = st.chains.get((d.subscription, d.chain))
        if chain is None or chain.members.get(d.seq) != (d.event_id, d.subscription):
            return 0
        del chain.members[d.seq]
        return self._advance(st, (d.subscription, d.chain), t)

    def _advance(self, st: BusState, chain_key: tuple[str, str], t: float) -> int:
        """Make the chain's first delivery runnable: a blocked job is queued; a first delivery
        whose job ended without finishing is marked (handled if its job completed, else dead)
        and dropped, and the next one looked at. Returns how many were marked."""
        chain = st.chains.get(chain_key)
        marked = 0
        while chain is not None and chain.members:
            head_seq = min(chain.members)
            d = st.deliveries[chain.members[head_seq]]
            job = self._store.jobs.get(d.job_id)
            if d.status is not DeliveryStatus.LIVE:  # finished, still listed (see PostgreSQL)
                del chain.members[head_seq]
                continue
            if job is not None and job.state is JobState.BLOCKED:
                self._store.jobs[job.id] = replace(job, state=JobState.QUEUED)
                self._store.wake()
                return marked
            if job is not None and job.state in ACTIVE_STATES:
                return marked
            completed = job is not None and job.state is JobState.COMPLETED
            d.status = DeliveryStatus.HANDLED if completed else DeliveryStatus.DEAD
            d.finished_at = t
            del chain.members[head_seq]
            marked += 1
        st.chains.pop(chain_key, None)
        return marked

    async def bus_settle(self, limit: int = 1000, now: float | None = None) -> int:
        t = time.time() if now is None else now
        st = bus_state(self._store)
        marked = 0
        with self._store.lock:
            for chain_key in list(st.chains):
                if marked >= limit:
                    break
                marked += self._advance(st, chain_key, t)
        return marked

    # -- reading ------------------------------------------------------------------------------
    async def bus_head(self) -> int:
        st = bus_state(self._store)
        with self._store.lock:
            return st.position

    async def bus_read(self, query: EventQuery, limit: int = 100) -> list[EventRecord]:
        st = bus_state(self._store)
        out: list[EventRecord] = []
        if limit <= 0:
            return out
        with self._store.lock:
            for record in st.events.values():  # insertion order is position order
                if query.matches(record):
                    out.append(record)
                    if len(out) >= limit:
                        break
        return out

    async def bus_get(self, event_ids: Sequence[str]) -> list[EventRecord]:
        st = bus_state(self._store)
        with self._store.lock:
            positions = sorted({st.ids[i] for i in event_ids if i in st.ids})
            return [st.events[p] for p in positions]

    async def bus_deliveries(
        self, flt: DeliveryFilter, *, after: int = 0, limit: int = 100
    ) -> list[DeliveryRecord]:
        st = bus_state(self._store)
        rows: list[DeliveryRecord] = []
        with self._store.lock:
            for d in st.deliveries.values():
                if d.position <= after:
                    continue
                if flt.event_id is not None and d.event_id != flt.event_id:
                    continue
                if flt.subscription is not None and d.subscription != flt.subscription:
                    continue
                if flt.statuses is not None and d.status not in flt.statuses:
                    continue
                job = self._store.jobs.get(d.job_id)
                if flt.dead_letters and (job is None or job.state is not JobState.FAILED):
                    continue
                rows.append(
                    DeliveryRecord(
                        d.event_id,
                        d.position,
                        d.subscription,
                        d.job_id,
                        d.status,
                        d.chain,
                        d.created_at,
                        d.finished_at,
                        None if job is None else job.state,
                        0 if job is None else job.attempts,
                        None if job is None or job.error is None else job.error.code,
                        None if job is None or job.error is None else job.error.message,
                    )
                )
        rows.sort(key=lambda r: (r.position, r.subscription))
        return rows[: max(limit, 0)]

    # -- retention ----------------------------------------------------------------------------
    async def bus_prune(self, before: float, limit: int = 1000) -> int:
        st = bus_state(self._store)
        deleted = 0
        with self._store.lock:
            live: set[str] = {
                d.event_id for d in st.deliveries.values() if d.status is DeliveryStatus.LIVE
            }
            for position, record in list(st.events.items()):
                if deleted >= limit:
                    break
                if record.stored_at >= before or record.id in live:
                    continue
                del st.events[position]
                del st.ids[record.id]
                for key in [k for k in st.deliveries if k[0] == record.id]:
                    st.by_job.pop(st.deliveries.pop(key).job_id, None)
                deleted += 1
        return deleted
