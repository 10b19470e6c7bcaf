"""Webhook endpoints, retry schedules and endpoint health (pure data and rules, stdlib only)."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from conveyor.domain.durations import Duration, parse_duration
from conveyor.integrations.secrets import Secret
from conveyor.integrations.webhooks.ssrf import AddressPolicy

#: Svix's schedule after the immediate first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_DELAYS: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True)
class RetrySchedule:
    """When to retry a failed delivery: ``delays[i]`` seconds after attempt ``i + 1`` fails.

    A ``Retry-After`` from the receiver (seconds or an HTTP date) replaces the scheduled delay
    when it is longer, capped at ``max_retry_after``.
    """

    delays: tuple[float, ...] = DEFAULT_DELAYS
    max_retry_after: float = 3600.0

    def __post_init__(self) -> None:
        if any(d < 0 or math.isnan(d) for d in self.delays):
            raise ValueError("retry delays must be non-negative")

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per delay."""
        return len(self.delays) + 1

    def delay_after(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based), or ``None`` when it was
        the last one."""
        if attempt >= self.max_attempts:
            return None
        delay = self.delays[attempt - 1]
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    @classmethod
    def backoff(
        cls,
        max_retries: int = 3,
        *,
        strategy: str = "exponential",
        initial: Duration = "5s",
        multiplier: float = 2.0,
        max_delay: Duration = "1h",
    ) -> RetrySchedule:
        """``max_retries`` retries with ``fixed``, ``linear`` or ``exponential`` backoff."""
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        first = parse_duration(initial, field="initial")
        cap = parse_duration(max_delay, field="max_delay")
        delays: list[float] = []
        for n in range(max_retries):
            if strategy == "fixed":
                delay = first
            elif strategy == "linear":
                delay = first * (n + 1)
            elif strategy == "exponential":
                delay = first * multiplier**n
            else:
                raise ValueError(
                    f"unknown backoff strategy {strategy!r}: use fixed, linear or exponential"
                )
            delays.append(min(delay, cap))
        return cls(delays=tuple(delays))

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> RetrySchedule:
        """From seed 003's ``retryPolicy`` (``maxRetries``, ``backoffStrategy``,
        ``initialDelayMs``, ``maxDelayMs``, ``backoffMultiplier``) or ``{"delays": [...]}``."""
        if not raw:
            return cls()
        if "delays" in raw:
            return cls(delays=tuple(parse_duration(d, field="delays") for d in raw["delays"]))
        return cls.backoff(
            int(raw.get("maxRetries", 3)),
            strategy=str(raw.get("backoffStrategy", "exponential")),
            initial=float(raw.get("initialDelayMs", 5000)) / 1000.0,
            multiplier=float(raw.get("backoffMultiplier", 2.0)),
            max_delay=float(raw.get("maxDelayMs", 3_600_000)) / 1000.0,
        )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _secrets(value: str | Secret | Sequence[str | Secret]) -> tuple[Secret, ...]:
    items = [value] if isinstance(value, (str, Secret)) else list(value)
    out = tuple(Secret(v) for v in items)
    if not out or not all(out):
        raise ValueError("a webhook needs at least one non-empty signing secret")
    return out


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where and how to deliver: the URL, signing secrets (several during a rotation), extra
    headers such as ``Authorization`` (values kept secret), the per-attempt timeout, the retry
    schedule, how many consecutive failed attempts disable it, and the SSRF address policy."""

    url: str
    secrets: tuple[Secret, ...]
    headers: Mapping[str, Secret] = field(default_factory=dict)
    timeout: float = 15.0
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    disable_after: int = 20
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    name: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a webhook URL must be http(s)://host/…, got {self.url!r}")
        if parts.username or parts.password:
            raise ValueError("put webhook credentials in headers=, not in the URL")
        if self.timeout <= 0:
            raise ValueError("a webhook timeout must be positive")
        if self.disable_after < 1:
            raise ValueError("disable_after must be at least 1")
        if not self.secrets:
            raise ValueError("a webhook needs at least one signing secret")

    @classmethod
    def create(
        cls,
        url: str,
        secret: str | Secret | Sequence[str | Secret],
        *,
        headers: Mapping[str, str | Secret] | None = None,
        timeout: Duration = "15s",
        retry: RetrySchedule | None = None,
        disable_after: int = 20,
        policy: AddressPolicy | None = None,
        name: str = "",
    ) -> WebhookEndpoint:
        """Build an endpoint, accepting plain strings and durations like ``"10s"``."""
        return cls(
            url=url,
            secrets=_secrets(secret),
            headers={k: Secret(v) for k, v in (headers or {}).items()},
            timeout=parse_duration(timeout, field="timeout"),
            retry=retry or RetrySchedule(),
            disable_after=disable_after,
            policy=policy or AddressPolicy(),
            name=name or url,
        )


@dataclass(frozen=True)
class EndpointHealth:
    """The circuit breaker of one endpoint: consecutive failed attempts and whether it is
    disabled (and why). Any successful attempt resets the count."""

    consecutive_failures: int = 0
    disabled: bool = False
    disabled_reason: str | None = None
    disabled_at: datetime | None = None

    def after_attempt(
        self, succeeded: bool, disable_after: int, now: datetime | None = None
    ) -> tuple[EndpointHealth, bool]:
        """The health after one attempt, and whether this attempt disabled the endpoint."""
        if succeeded:
            return replace(self, consecutive_failures=0), False
        failures = self.consecutive_failures + 1
        if not self.disabled and failures >= disable_after:
            reason = f"{failures} consecutive failed attempts"
            at = now or datetime.now(UTC)
            return EndpointHealth(failures, True, reason, at), True
        return replace(self, consecutive_failures=failures), False

    def enabled(self) -> EndpointHealth:
        """Re-enabled, with the failure count reset."""
        return EndpointHealth()


def timeout_of(value: Duration | timedelta) -> float:
    """Seconds of a timeout given as a duration (``"10s"``, a number, a ``timedelta``)."""
    return parse_duration(value, field="timeout")
