"""Delivering events to the stored webhooks (needs ``conveyor[webhooks]``).

:func:`attempt_once` is one attempt to one webhook, logged in the store and applied to the
webhook's health — what a bus delivery job runs (the bus owns retries, fencing and dead
letters; the job retries after :func:`retry_delay`). :func:`dispatch` delivers one event to
every matching webhook in this process with each webhook's own retry schedule, for apps
without the bus.
"""

from __future__ import annotations

import asyncio

from conveyor.integrations.envelope import EventEnvelope
from conveyor.integrations.webhooks.delivery import DeliveryAttempt, DeliveryResult, WebhookSender
from conveyor.integrations.webhooks.registry import Webhook, Webhooks


async def attempt_once(
    webhooks: Webhooks,
    sender: WebhookSender,
    hook: Webhook,
    event: EventEnvelope,
    attempt: int,
) -> tuple[DeliveryAttempt, Webhook]:
    """One signed attempt, recorded in the delivery log; returns it and the updated webhook."""
    record = await sender.attempt(hook.endpoint(), event, attempt)
    updated, _ = await webhooks.record(record)
    return record, updated


def retry_delay(hook: Webhook, record: DeliveryAttempt) -> float | None:
    """Seconds until the next attempt (``Retry-After`` honoured), or ``None`` to give up:
    retries exhausted, the target refused by the SSRF guard, or the webhook disabled."""
    if record.succeeded or record.outcome == "refused" or not hook.enabled:
        return None
    return hook.retry.delay_after(record.attempt, record.retry_after)


async def dispatch(
    webhooks: Webhooks, sender: WebhookSender, event: EventEnvelope
) -> dict[str, DeliveryResult]:
    """Deliver ``event`` to every enabled webhook whose patterns match it, concurrently, each
    with its retry schedule; every attempt is logged. Returns the result per webhook."""
    hooks = await webhooks.matching(event.name)

    async def one(hook: Webhook) -> DeliveryResult:
        async def log(record: DeliveryAttempt) -> None:
            await webhooks.record(record)

        return await sender.deliver(hook.endpoint(), event, health=hook.health, on_attempt=log)

    results = await asyncio.gather(*(one(h) for h in hooks))
    return {hook.name: result for hook, result in zip(hooks, results, strict=True)}
