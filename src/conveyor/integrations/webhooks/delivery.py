"""HTTP delivery of signed webhooks with httpx (``pip install 'conveyor[webhooks]'``).

:meth:`WebhookSender.attempt` makes one attempt and returns a :class:`DeliveryAttempt` (the
delivery-log record: outcome, response code, latency, error code); it never raises for a
receiver's failure. :meth:`WebhookSender.deliver` runs the endpoint's retry schedule in process,
honouring ``Retry-After``, and applies the endpoint's circuit breaker. When the event bus runs
deliveries as jobs, each job attempt calls :meth:`WebhookSender.attempt` instead and the bus
owns the retries.

Success is a 2xx within the timeout. A 3xx is a failure (redirects are never followed), and so
is any other status, a timeout, a refused connection, or an address the SSRF guard refuses.
Response bodies are never read beyond a small limit and never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from conveyor.integrations._extras import require
from conveyor.integrations.envelope import EventEnvelope
from conveyor.integrations.errors import BlockedAddressError
from conveyor.integrations.webhooks.policy import EndpointHealth, WebhookEndpoint, parse_retry_after
from conveyor.integrations.webhooks.signing import signature_headers
from conveyor.integrations.webhooks.ssrf import AddressPolicy
from conveyor.integrations.webhooks.transport import Resolver, guarded_client

require("httpx", "webhooks")
import httpx  # noqa: E402

log = logging.getLogger("conveyor.webhooks")
Outcome = Literal["succeeded", "failed", "refused"]
USER_AGENT = "Conveyor-Webhooks/1"
_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class DeliveryAttempt:
    """One HTTP attempt, as the delivery log keeps it (no headers, secrets or bodies).

    ``error`` is a stable code: ``timeout``, ``connect_error``, ``http_<status>``,
    ``redirect_not_followed``, ``blocked_address``, ``protocol_error``.
    """

    webhook: str
    message_id: str
    event: str
    attempt: int
    outcome: Outcome
    status_code: int | None
    latency_ms: float
    at: datetime
    error: str | None = None
    detail: str | None = None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"


@dataclass
class DeliveryResult:
    """A whole delivery: every attempt, the final outcome and the endpoint's health after it.

    ``outcome`` is ``delivered``, ``failed`` (retries exhausted), ``refused`` (SSRF guard) or
    ``disabled`` (the endpoint was or became disabled before delivery succeeded).
    """

    outcome: Literal["delivered", "failed", "refused", "disabled"]
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    health: EndpointHealth = field(default_factory=EndpointHealth)
    disabled_now: bool = False

    @property
    def last(self) -> DeliveryAttempt | None:
        return self.attempts[-1] if self.attempts else None


Sleep = Callable[[float], Awaitable[None]]


class WebhookSender:
    """Signs and sends webhooks over one pooled, SSRF-guarded httpx client.

    Use it as an async context manager (or call :meth:`aclose`). ``policy`` is the address
    policy for endpoints that keep the default one; an endpoint that sets its own policy is
    connected under that policy instead.
    ``resolver`` replaces DNS (tests of rebinding); ``sleep`` replaces the wait between
    retries (tests on a fake clock).
    """

    def __init__(
        self,
        policy: AddressPolicy | None = None,
        *,
        resolver: Resolver | None = None,
        max_connections: int = 100,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.policy = policy or AddressPolicy()
        self._resolver = resolver
        self._max_connections = max_connections
        self._clients: dict[AddressPolicy, httpx.AsyncClient] = {}
        self._sleep = sleep

    def _client(self, policy: AddressPolicy) -> httpx.AsyncClient:
        client = self._clients.get(policy)
        if client is None:
            client = guarded_client(
                policy, resolver=self._resolver, max_connections=self._max_connections
            )
            self._clients[policy] = client
        return client

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def attempt(
        self,
        endpoint: WebhookEndpoint,
        event: EventEnvelope,
        attempt: int = 1,
        *,
        body: bytes | None = None,
    ) -> DeliveryAttempt:
        """One signed POST of ``event`` (its JSON wire form unless ``body`` is given) to
        ``endpoint``. Signed with a fresh timestamp and the event id as ``webhook-id``."""
        payload = event.to_json() if body is None else body
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **{name: value.reveal() for name, value in endpoint.headers.items()},
            **signature_headers(endpoint.secrets, event.id, payload),
        }
        policy = endpoint.policy if endpoint.policy != AddressPolicy() else self.policy
        client = self._client(policy)
        started = time.perf_counter()
        at = datetime.now(UTC)

        def record(
            outcome: Outcome,
            status: int | None,
            error: str | None,
            detail: str | None = None,
            retry_after: float | None = None,
        ) -> DeliveryAttempt:
            return DeliveryAttempt(
                webhook=endpoint.name or endpoint.url,
                message_id=event.id,
                event=event.name,
                attempt=attempt,
                outcome=outcome,
                status_code=status,
                latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
                at=at,
                error=error,
                detail=detail,
                retry_after=retry_after,
            )

        try:
            async with asyncio.timeout(endpoint.timeout):
                async with client.stream(
                    "POST", endpoint.url, content=payload, headers=headers
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read > _BODY_LIMIT:
                            break
        except BlockedAddressError as exc:
            return record("refused", None, exc.code, f"{exc.address}: {exc.why}")
        except TimeoutError:
            return record("failed", None, "timeout", f"no answer within {endpoint.timeout:g}s")
        except httpx.TimeoutException:
            return record("failed", None, "timeout", f"no answer within {endpoint.timeout:g}s")
        except httpx.ConnectError as exc:
            return record("failed", None, "connect_error", type(exc).__name__)
        except httpx.HTTPError as exc:
            return record("failed", None, "protocol_error", type(exc).__name__)
        status = response.status_code
        if 200 <= status < 300:
            return record("succeeded", status, None)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if 300 <= status < 400:
            return record("failed", status, "redirect_not_followed", None, retry_after)
        return record("failed", status, f"http_{status}", None, retry_after)

    async def deliver(
        self,
        endpoint: WebhookEndpoint,
        event: EventEnvelope,
        *,
        health: EndpointHealth | None = None,
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None] | None] | None = None,
    ) -> DeliveryResult:
        """Deliver ``event`` with the endpoint's retry schedule (in this process).

        Waits between attempts per the schedule, longer when the receiver sends
        ``Retry-After``. Stops early when the SSRF guard refuses the target or the circuit
        breaker disables the endpoint. The body is serialised once and re-signed per attempt.
        """
        state = health or EndpointHealth()
        result = DeliveryResult("failed", health=state)
        if state.disabled:
            result.outcome = "disabled"
            return result
        body = event.to_json()
        attempt = 1
        while True:
            record = await self.attempt(endpoint, event, attempt, body=body)
            result.attempts.append(record)
            state, disabled_now = state.after_attempt(record.succeeded, endpoint.disable_after)
            result.health = state
            if on_attempt is not None:
                maybe = on_attempt(record)
                if maybe is not None:
                    await maybe
            if record.succeeded:
                result.outcome = "delivered"
                return result
            if record.outcome == "refused":
                result.outcome = "refused"
                log.warning(
                    "webhook %s refused by the SSRF guard: %s",
                    record.webhook,
                    record.detail,
                    extra={"action": "webhook_refused", "webhook": record.webhook},
                )
                return result
            if disabled_now:
                result.outcome = "disabled"
                result.disabled_now = True
                log.warning(
                    "webhook %s disabled after %d consecutive failed attempts",
                    record.webhook,
                    state.consecutive_failures,
                    extra={"action": "webhook_disabled", "webhook": record.webhook},
                )
                return result
            delay = endpoint.retry.delay_after(attempt, record.retry_after)
            if delay is None:
                result.outcome = "failed"
                return result
            await self._sleep(delay)
            attempt += 1

    def deliver_sync(
        self,
        endpoint: WebhookEndpoint,
        event: EventEnvelope,
        *,
        health: EndpointHealth | None = None,
    ) -> DeliveryResult:
        """Blocking twin of :meth:`deliver` (runs its own event loop; not inside one)."""

        async def run() -> DeliveryResult:
            try:
                return await self.deliver(endpoint, event, health=health)
            finally:
                await self.aclose()

        return asyncio.run(run())
