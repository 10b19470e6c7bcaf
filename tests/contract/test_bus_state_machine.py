"""The differential state machine with the event bus's steps added (see :mod:`._machine`).

Subscribing, publishing (events with keys, deliveries into ordered chains), recording a
delivery's outcome, settling chains and replaying run alongside every job transition of the
base machine, on the delivery jobs too (claimed, completed, failed, cancelled, deleted by the
base rules). After each bus step both backends must hold the same log, the same deliveries
with the same statuses and job states, and the same subscriptions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from conveyor.backends import Backend
from conveyor.backends.capabilities import EventBusStore
from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    EventQuery,
    EventRecord,
    NewDelivery,
    NewEvent,
    pattern_matches,
)
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob

from ._machine import SETTINGS, BackendAgreement
from ._support import REAL_KINDS, require_kind

SUBS = ("s1", "s2", "s3")
PATTERNS = ("#", "order.*", "order.#", "user.created")
NAMES = ("order.created", "order.paid", "user.created", "order.line.added")
KEYS = (None, "k1", "k2")


def _bus(backend: Backend) -> EventBusStore:
    assert isinstance(backend, EventBusStore)
    return backend


def _delivery(r: DeliveryRecord) -> DeliveryRecord:
    return replace(
        r,
        created_at=round(r.created_at, 3),
        finished_at=None if r.finished_at is None else round(r.finished_at, 3),
        error_message=None,
    )


def _event(r: EventRecord) -> EventRecord:
    return replace(r, occurred_at=round(r.occurred_at, 3), stored_at=round(r.stored_at, 3))


class BusAgreement(BackendAgreement):
    """The base machine plus the bus steps."""

    bus_used = False

    def version(self) -> tuple[int, int]:
        ref, real = self.both(lambda b: _bus(b).bus_subscriptions())
        return ref.version, real.version

    def subscriptions(self) -> list[Any]:
        ref = self.run(_bus(self.ref).bus_subscriptions())
        return list(ref.subscriptions)

    @rule(
        name=st.sampled_from(SUBS),
        pattern=st.sampled_from(PATTERNS),
        ordered=st.booleans(),
        drop=st.integers(0, 7),
    )
    def bus_subscribe(self, name: str, pattern: str, ordered: bool, drop: int) -> None:
        self.bus_used = True
        if drop == 0:
            ref, real = self.both(lambda b: _bus(b).bus_unsubscribe(name))
            assert real == ref
            return
        spec = {"task": "a", "queue": "q1", "ordered": ordered}
        ref_sub, real_sub = self.both(
            lambda b: _bus(b).bus_subscribe(name, pattern, spec, self.now)
        )
        assert real_sub == ref_sub

    @rule(
        data=st.data(),
        events=st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(KEYS), st.integers(-1, 2)),
            min_size=1,
            max_size=4,
        ),
        stale=st.integers(0, 9),
        repeat=st.integers(0, 9),
    )
    def bus_publish(
        self,
        data: st.DataObject,
        events: list[tuple[str, str | None, int]],
        stale: int,
        repeat: int,
    ) -> None:
        """Events matched against the current subscriptions (as the core does), sometimes with
        a stale version (nothing may be stored) or an event id published before."""
        self.bus_used = True
        v_ref, v_real = self.version()
        known = self.run(_bus(self.ref).bus_read(EventQuery(), 1000))
        new_events = []
        for name, key, prio in events:
            event_id = (
                data.draw(st.sampled_from([e.id for e in known]), label="repeat id")
                if repeat == 0 and known
                else new_job_id()
            )
            new_events.append(NewEvent(event_id, name, name.encode(), key, prio, {"n": 1}, 1))
        deliveries = []
        for ev in new_events:
            for sub in self.subscriptions():
                if pattern_matches(sub.pattern, ev.name):
                    job = NewJob(id=new_job_id(), task="a", queue="q1", payload=ev.id.encode())
                    chain = ev.key if sub.spec.get("ordered") and ev.key else None
                    deliveries.append(NewDelivery(ev.id, sub.name, job, chain))
        shift = 1 if stale == 0 else 0
        ref = self.run(_bus(self.ref).bus_publish(new_events, deliveries, v_ref - shift, self.now))
        real = self.run(
            _bus(self.real).bus_publish(new_events, deliveries, v_real - shift, self.now)
        )
        assert real == ref, f"{self.kind} published {real!r}, memory {ref!r}"
        if ref is not None:
            created = {r.id for r in ref if r.created}
            self.ids.extend(d.job.id for d in deliveries if d.event_id in created)

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data(), status=st.sampled_from((DeliveryStatus.HANDLED, DeliveryStatus.DEAD)))
    def bus_finish(self, data: st.DataObject, status: DeliveryStatus) -> None:
        self.bus_used = True
        job_id = self.pick_job(data)
        ref, real = self.both(lambda b: _bus(b).bus_finish(job_id, status, self.now))
        assert real == ref

    @rule()
    def bus_settle(self) -> None:
        self.bus_used = True
        ref, real = self.both(lambda b: _bus(b).bus_settle(1000, self.now))
        assert real == ref

    @rule(data=st.data(), force=st.booleans())
    def bus_redeliver(self, data: st.DataObject, force: bool) -> None:
        self.bus_used = True
        known = self.run(_bus(self.ref).bus_read(EventQuery(), 1000))
        if not known:
            return
        picked = data.draw(st.lists(st.sampled_from(known), max_size=3), label="events")
        deliveries = []
        for ev in picked:
            for sub in self.subscriptions():
                job = NewJob(id=new_job_id(), task="a", queue="q1", payload=b"again")
                chain = ev.key if sub.spec.get("ordered") and ev.key else None
                deliveries.append(NewDelivery(ev.id, sub.name, job, chain))
        ref, real = self.both(
            lambda b: _bus(b).bus_redeliver(deliveries, force=force, now=self.now)
        )
        assert real == ref
        self.ids.extend(i for i in ref if i is not None)

    @precondition(lambda self: self.bus_used)
    @invariant()
    def bus_agrees(self) -> None:
        ref, real = self.both(lambda b: _bus(b).bus_deliveries(DeliveryFilter(), limit=100_000))
        assert [_delivery(r) for r in real] == [_delivery(r) for r in ref]
        events_ref, events_real = self.both(lambda b: _bus(b).bus_read(EventQuery(), 100_000))
        assert [_event(e) for e in events_real] == [_event(e) for e in events_ref]
        heads = self.both(lambda b: _bus(b).bus_head())
        assert heads[0] == heads[1]
        subs_ref, subs_real = self.both(lambda b: _bus(b).bus_subscriptions())
        assert subs_real.subscriptions == subs_ref.subscriptions


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", REAL_KINDS, ids=list(REAL_KINDS))
def test_bus_agrees_with_memory(kind: str) -> None:
    require_kind(kind)
    machine = type(f"{kind.title()}BusAgreesWithMemory", (BusAgreement,), {"kind": kind})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=10))
