"""Event sourcing through ``app.bus.streams`` on every backend: a bank account with snapshots
every N events, optimistic concurrency, loading from a snapshot, retention, publishing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends import BackendFactory
from conveyor.bus import Aggregate, Event
from conveyor.errors import ConveyorError, VersionConflictError


@dataclass
class Deposited:
    amount: int


class Account(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0
        self.owner: str | None = None
        self.applied = 0

    def apply(self, event: Event[Any]) -> None:
        self.applied += 1
        if event.name == "account.opened":
            self.owner = event.data["owner"]
        elif event.name == "account.deposited":
            self.balance += event.data.amount
        elif event.name == "account.withdrawn":
            if event.data["amount"] > self.balance:
                raise ValueError("insufficient funds")
            self.balance -= event.data["amount"]

    def snapshot(self) -> Any:
        return {"balance": self.balance, "owner": self.owner}


@pytest.fixture
async def app(backend_factory: BackendFactory) -> AsyncIterator[Conveyor]:
    app = Conveyor(backend_factory=backend_factory)
    app.bus.configure({"eventSourcing": {"enabled": True, "snapshotInterval": 5}})
    app.bus.event("account.deposited")(Deposited)
    yield app
    await app.close()


async def test_a_bank_account_with_snapshots(app: Conveyor) -> None:
    streams = app.bus.streams
    account = await streams.load(Account, "42")
    assert (account.version, account.balance, account.stream) == (0, 0, "account-42")
    account.record("account.opened", {"owner": "ada"})
    for _ in range(3):
        account.record("account.deposited", Deposited(10))
    assert await streams.save(account) == 4
    assert await streams.load_snapshot("account-42") is None  # not at 5 yet
    account.record("account.deposited", Deposited(5))
    account.record("account.withdrawn", {"amount": 7})
    assert await streams.save(account) == 6
    snap = await streams.load_snapshot("account-42")
    assert snap is not None and snap.version == 6 and snap.state == {"balance": 28, "owner": "ada"}
    account.record("account.deposited", Deposited(2))
    await streams.save(account)
    loaded = await streams.load(Account, "42")
    assert (loaded.version, loaded.balance, loaded.owner) == (7, 30, "ada")
    assert loaded.applied == 1  # the snapshot, then only event 7
    events = await streams.read("account-42", after_version=5)
    assert [(e.position, e.name) for e in events] == [
        (6, "account.withdrawn"),
        (7, "account.deposited"),
    ]
    assert isinstance(events[1].data, Deposited) and events[1].data.amount == 2


async def test_concurrent_writers_conflict_and_nothing_is_stored(app: Conveyor) -> None:
    streams = app.bus.streams
    first = await streams.load(Account, "7")
    second = await streams.load(Account, "7")
    first.record("account.opened", {"owner": "ada"})
    second.record("account.opened", {"owner": "bob"})
    await streams.save(first)
    with pytest.raises(VersionConflictError, match="version 1, not the expected 0") as info:
        await streams.save(second)
    assert info.value.code == "version_conflict"
    assert (await streams.load(Account, "7")).owner == "ada"
    with pytest.raises(VersionConflictError):
        await streams.append(
            "account-7", [Event("account.opened", {"owner": "x"})], expected_version=0
        )
    assert await streams.version("account-7") == 1


async def test_retention_prunes_covered_events_and_load_still_works(app: Conveyor) -> None:
    streams = app.bus.streams
    account = await streams.load(Account, "9")
    for i in range(12):
        account.record("account.deposited", Deposited(i))
        await streams.save(account)
    assert (await streams.load_snapshot("account-9")).version == 10  # type: ignore[union-attr]
    assert await streams.prune(older_than=0) == 10
    assert [e.position for e in await streams.read("account-9")] == [11, 12]
    again = await streams.load(Account, "9")
    assert (again.version, again.balance) == (12, sum(range(12)))


async def test_an_unusable_snapshot_with_pruned_events_is_an_error(app: Conveyor) -> None:
    streams = app.bus.streams

    class AccountV2(Account):
        stream_prefix = "account"
        snapshot_version = 2

    account = await streams.load(Account, "3")
    for i in range(5):
        account.record("account.deposited", Deposited(i))
    await streams.save(account)
    await streams.prune(older_than=0)
    with pytest.raises(ConveyorError, match="has no event 1"):
        await streams.load(AccountV2, "3")


async def test_appended_events_can_be_published_on_the_bus(app: Conveyor) -> None:
    streams = app.bus.streams
    account = await streams.load(Account, "5")
    account.record("account.opened", {"owner": "ada"})
    await streams.save(account, publish=True)
    (event,) = await app.bus.read()
    assert (event.name, event.key, event.data) == ("account.opened", "account-5", {"owner": "ada"})
    (stored,) = await streams.read("account-5")
    assert stored.id == event.id  # the same id: publishing again would be a no-op
