"""Webhook delivery against a real HTTP server (uvicorn on loopback)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from conveyor.integrations import EventEnvelope
from conveyor.integrations.webhooks import (
    AddressPolicy,
    EndpointHealth,
    RetrySchedule,
    WebhookEndpoint,
    WebhookSender,
    generate_secret,
)
from tests.integrations.servers import Receiver, serve_asgi

LOOPBACK = AddressPolicy(allow=("127.0.0.0/8",))
SECRET = generate_secret()
WHEN = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = Receiver(secret=SECRET.reveal())
    async with serve_asgi(app) as base:
        app.base = base
        yield app


class FakeSleep:
    """Records the waits between retries instead of waiting (a fake clock)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def endpoint(receiver: Receiver, path: str, **options: object) -> WebhookEndpoint:
    opts: dict[str, object] = {"policy": LOOPBACK, **options}
    return WebhookEndpoint.create(receiver.base + path, SECRET, **opts)  # type: ignore[arg-type]


def event(n: int = 1) -> EventEnvelope:
    return EventEnvelope(
        f"evt_{n}", "order.created", {"order": n}, WHEN, metadata={"tenantId": "t1"}
    )


async def test_receiver_verifies_signature_and_gets_custom_headers(receiver: Receiver) -> None:
    async with WebhookSender() as sender:
        ep = endpoint(receiver, "/verify", headers={"Authorization": "Bearer s3cret"})
        result = await sender.deliver(ep, event(1))
    assert result.outcome == "delivered"
    assert receiver.verified == ["evt_1"] and receiver.rejected == []
    seen = receiver.seen[0]
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["webhook-id"] == "evt_1"
    assert EventEnvelope.from_json(seen.body) == event(1)
    record = result.attempts[0]
    assert (record.status_code, record.attempt, record.outcome) == (204, 1, "succeeded")
    assert record.latency_ms > 0


async def test_receiver_rejects_a_wrong_secret(receiver: Receiver) -> None:
    async with WebhookSender() as sender:
        ep = WebhookEndpoint.create(
            receiver.base + "/verify",
            generate_secret(),
            policy=LOOPBACK,
            retry=RetrySchedule(delays=()),
        )
        result = await sender.deliver(ep, event(2))
    assert result.outcome == "failed"
    assert receiver.rejected == ["no_matching_signature"]
    assert result.attempts[0].error == "http_401"


async def test_retries_with_backoff_until_success_same_id_new_timestamp(
    receiver: Receiver,
) -> None:
    sleep = FakeSleep()
    async with WebhookSender(sleep=sleep) as sender:
        ep = endpoint(receiver, "/flaky/2", retry=RetrySchedule(delays=(1.0, 2.0, 4.0)))
        result = await sender.deliver(ep, event(3))
    assert result.outcome == "delivered"
    assert [a.status_code for a in result.attempts] == [503, 503, 200]
    assert [a.attempt for a in result.attempts] == [1, 2, 3]
    assert sleep.waits == [1.0, 2.0]
    ids = {s.headers["webhook-id"] for s in receiver.seen}
    assert ids == {"evt_3"}
    assert len({s.body for s in receiver.seen}) == 1  # serialised once
    assert result.health.consecutive_failures == 0


async def test_429_retry_after_is_honoured(receiver: Receiver) -> None:
    sleep = FakeSleep()
    async with WebhookSender(sleep=sleep) as sender:
        ep = endpoint(receiver, "/limited", retry=RetrySchedule(delays=(1.0,)))
        result = await sender.deliver(ep, event(4))
    assert [a.status_code for a in result.attempts] == [429, 200]
    assert result.attempts[0].retry_after == 7.0
    assert sleep.waits == [7.0]


async def test_slow_receiver_times_out_and_counts_as_failure(receiver: Receiver) -> None:
    async with WebhookSender() as sender:
        ep = endpoint(receiver, "/slow", timeout="300ms", retry=RetrySchedule(delays=()))
        result = await sender.deliver(ep, event(5))
    assert result.outcome == "failed"
    assert result.attempts[0].error == "timeout"
    assert receiver.counts["/slow"] == 1


async def test_redirects_are_never_followed(receiver: Receiver) -> None:
    async with WebhookSender() as sender:
        ep = endpoint(receiver, "/redirect", retry=RetrySchedule(delays=()))
        result = await sender.deliver(ep, event(6))
    assert result.outcome == "failed"
    assert result.attempts[0].status_code == 302
    assert result.attempts[0].error == "redirect_not_followed"
    assert receiver.counts.get("/ok") is None


async def test_exhausted_retries_fail_and_n_failures_disable(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = FakeSleep()
    async with WebhookSender(sleep=sleep) as sender:
        ep = endpoint(receiver, "/fail", retry=RetrySchedule(delays=(1.0, 1.0)), disable_after=5)
        first = await sender.deliver(ep, event(7))
        assert first.outcome == "failed" and len(first.attempts) == 3
        assert first.health.consecutive_failures == 3
        with caplog.at_level(logging.WARNING, logger="conveyor.webhooks"):
            second = await sender.deliver(ep, event(8), health=first.health)
        assert second.outcome == "disabled" and second.disabled_now
        assert len(second.attempts) == 2 and second.health.disabled
        third = await sender.deliver(ep, event(9), health=second.health)
    assert third.outcome == "disabled" and third.attempts == []
    assert receiver.counts["/fail"] == 5
    assert "disabled after 5 consecutive" in caplog.text
    assert SECRET.reveal() not in caplog.text


async def test_ssrf_guard_refuses_loopback_without_connecting(receiver: Receiver) -> None:
    async with WebhookSender() as sender:
        ep = WebhookEndpoint.create(receiver.base + "/ok", SECRET)  # default policy
        result = await sender.deliver(ep, event(10))
    assert result.outcome == "refused"
    assert result.attempts[0].error == "blocked_address"
    assert "loopback" in (result.attempts[0].detail or "")
    assert receiver.seen == []


async def test_ssrf_guard_checks_at_connect_time_against_rebinding(receiver: Receiver) -> None:
    """The name resolves to a public address when first checked and to loopback when the
    connection is made: the guard resolves at connect time, so it sees loopback and refuses."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    port = receiver.base.rsplit(":", 1)[1]
    # A check made before connecting (as naive guards do) would pass:
    first = await rebinding("rebind.test", int(port))
    assert AddressPolicy().check("rebind.test", first)
    async with WebhookSender(resolver=rebinding) as sender:
        ep = WebhookEndpoint.create(f"http://rebind.test:{port}/ok", SECRET)
        result = await sender.deliver(ep, event(11))
    assert result.outcome == "refused" and calls == ["rebind.test", "rebind.test"]
    assert receiver.seen == []


async def test_connection_refused_is_a_failed_attempt() -> None:
    from tests.integrations.servers import free_port

    async with WebhookSender(LOOPBACK) as sender:
        ep = WebhookEndpoint.create(
            f"http://127.0.0.1:{free_port()}/x", SECRET, retry=RetrySchedule(delays=())
        )
        result = await sender.deliver(ep, event(12))
    assert result.outcome == "failed" and result.attempts[0].error == "connect_error"
    assert result.health == EndpointHealth(consecutive_failures=1)


def test_deliver_sync_twin() -> None:
    from tests.integrations.servers import free_port

    with pytest.raises(ValueError):
        WebhookEndpoint.create("http://127.0.0.1/", SECRET, timeout="-1s")
    ep = WebhookEndpoint.create(
        f"http://127.0.0.1:{free_port()}/x",
        SECRET,
        retry=RetrySchedule(delays=()),
        policy=LOOPBACK,
    )
    assert WebhookSender().deliver_sync(ep, event(13)).outcome == "failed"
