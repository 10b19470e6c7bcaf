"""Webhook subscriptions and their delivery log, kept in the app's store.

Each webhook is one record under the key-value capability (namespace ``webhooks``), so it works
on memory, SQLite, PostgreSQL and Redis alike and every change is one atomic compare-and-set:
its URL, event patterns, signing secrets, extra headers (secret values), timeout, retry
schedule, auto-disable threshold, SSRF allow-list, whether it is enabled, and its health
(consecutive failed attempts, disabled reason). The delivery log keeps the last
``log_limit`` attempts per webhook (namespace ``webhooks.log.<name>``): outcome, response code,
latency, attempt number, error code — never headers, secrets or response bodies.

Secrets are stored (they are needed to sign) but never returned by :meth:`Webhook.to_dict`,
the CLI or logs; :meth:`Webhooks.add` returns a generated secret once.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from conveyor.backends.base import Backend
from conveyor.backends.capabilities import KeyValueStore, require
from conveyor.core.ports import AppPort
from conveyor.domain.durations import Duration, parse_duration
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.integrations.envelope import check_pattern, pattern_matches
from conveyor.integrations.secrets import Secret
from conveyor.integrations.webhooks.policy import (
    EndpointHealth,
    RetrySchedule,
    WebhookEndpoint,
)
from conveyor.integrations.webhooks.signing import generate_secret
from conveyor.integrations.webhooks.ssrf import AddressPolicy

NAMESPACE = "webhooks"
LOG_PREFIX = "webhooks.log."
log = logging.getLogger("conveyor.webhooks")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
T = TypeVar("T")


class WebhookNotFoundError(ConveyorError):
    """No webhook has that name."""

    code = "not_found"


class WebhookStore(KeyValueStore, Backend):
    """A backend with the key-value capability."""


@dataclass(frozen=True)
class Webhook:
    """A webhook subscription: where to deliver events matching ``patterns``, and how."""

    name: str
    url: str
    patterns: tuple[str, ...]
    secrets: tuple[Secret, ...]
    headers: Mapping[str, Secret] = field(default_factory=dict)
    timeout: float = 15.0
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    disable_after: int = 20
    allow: tuple[str, ...] = ()
    enabled: bool = True
    health: EndpointHealth = field(default_factory=EndpointHealth)
    created_at: float = 0.0

    def matches(self, event_name: str) -> bool:
        return any(pattern_matches(p, event_name) for p in self.patterns)

    def endpoint(self) -> WebhookEndpoint:
        """The delivery settings (URL, secrets, headers, timeout, retries, address policy)."""
        return WebhookEndpoint(
            url=self.url,
            secrets=self.secrets,
            headers=dict(self.headers),
            timeout=self.timeout,
            retry=self.retry,
            disable_after=self.disable_after,
            policy=AddressPolicy.from_config(self.allow),
            name=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """Public view: no secret values, header names only."""
        return {
            "name": self.name,
            "url": self.url,
            "patterns": list(self.patterns),
            "enabled": self.enabled,
            "secrets": len(self.secrets),
            "headers": sorted(self.headers),
            "timeout": self.timeout,
            "retry_delays": list(self.retry.delays),
            "disable_after": self.disable_after,
            "allow": list(self.allow),
            "consecutive_failures": self.health.consecutive_failures,
            "disabled_reason": self.health.disabled_reason,
            "disabled_at": self.health.disabled_at.isoformat() if self.health.disabled_at else None,
            "created_at": self.created_at,
        }

    def encode(self) -> bytes:
        h = self.health
        record = {
            **self.to_dict(),
            "secrets": [s.reveal() for s in self.secrets],
            "headers": {k: v.reveal() for k, v in self.headers.items()},
            "max_retry_after": self.retry.max_retry_after,
            "disabled": h.disabled,
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Webhook:
        r = json.loads(raw)
        disabled_at = r.get("disabled_at")
        return cls(
            name=r["name"],
            url=r["url"],
            patterns=tuple(r["patterns"]),
            secrets=tuple(Secret(s) for s in r["secrets"]),
            headers={k: Secret(v) for k, v in r.get("headers", {}).items()},
            timeout=float(r["timeout"]),
            retry=RetrySchedule(tuple(r["retry_delays"]), float(r.get("max_retry_after", 3600.0))),
            disable_after=int(r["disable_after"]),
            allow=tuple(r.get("allow", ())),
            enabled=bool(r["enabled"]),
            health=EndpointHealth(
                int(r.get("consecutive_failures", 0)),
                bool(r.get("disabled", False)),
                r.get("disabled_reason"),
                datetime.fromisoformat(disabled_at) if disabled_at else None,
            ),
            created_at=float(r.get("created_at", 0.0)),
        )


@dataclass(frozen=True)
class LoggedAttempt:
    """One delivery-log entry (what ``conveyor webhooks deliveries`` shows)."""

    webhook: str
    message_id: str
    event: str
    attempt: int
    outcome: str
    status_code: int | None
    latency_ms: float
    at: str
    error: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AttemptLike(Protocol):
    """What :meth:`Webhooks.record` reads of a delivery attempt."""

    @property
    def webhook(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def at(self) -> datetime: ...
    @property
    def error(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...


class Webhooks:
    """Webhook subscriptions and their delivery log in the app's store (``app.webhooks``).

    Every method has a blocking ``*_sync`` twin.
    """

    def __init__(self, app: AppPort, *, log_limit: int = 200) -> None:
        self._app = app
        self.log_limit = log_limit
        #: Called with the webhook when a delivery attempt disables it (the bus publishes
        #: ``conveyor.webhook.disabled`` from here).
        self.on_disabled: list[Callable[[Webhook], Awaitable[None] | None]] = []

    async def _backend(self) -> WebhookStore:
        backend = await self._app.backend()
        require(backend, KeyValueStore, "webhooks")
        assert isinstance(backend, KeyValueStore)
        return backend  # type: ignore[return-value]

    def _sync(self, coro: Awaitable[T]) -> T:
        return self._app.portal.run(coro)  # type: ignore[arg-type]

    # -- subscriptions ----------------------------------------------------------------------
    async def add(
        self,
        name: str,
        url: str,
        patterns: Sequence[str] = ("#",),
        *,
        secret: str | Secret | Sequence[str | Secret] | None = None,
        headers: Mapping[str, str | Secret] | None = None,
        timeout: Duration = "15s",
        retry: RetrySchedule | None = None,
        disable_after: int = 20,
        allow: Sequence[str] = (),
        replace_existing: bool = False,
    ) -> tuple[Webhook, Secret | None]:
        """Subscribe ``url`` to events matching ``patterns``. Without ``secret`` one is
        generated and returned (shown once; it is never displayed again). ``allow`` lists
        internal networks the URL may resolve to (SSRF guard; ``["*"]`` allows all)."""
        if not _NAME.match(name):
            raise ConfigurationError(
                f"webhook name {name!r}: use letters, digits, '.', '_' or '-' (max 100)"
            )
        try:
            checked = tuple(check_pattern(p) for p in patterns)
            AddressPolicy.from_config(allow)
            generated = generate_secret() if secret is None else None
            endpoint = WebhookEndpoint.create(
                url,
                generated or secret or "",
                headers=headers,
                timeout=parse_duration(timeout, field="timeout"),
                retry=retry,
                disable_after=disable_after,
                name=name,
            )
        except ValueError as exc:
            raise ConfigurationError(f"webhook {name!r}: {exc}") from None
        hook = Webhook(
            name=name,
            url=url,
            patterns=checked,
            secrets=endpoint.secrets,
            headers=dict(endpoint.headers),
            timeout=endpoint.timeout,
            retry=endpoint.retry,
            disable_after=disable_after,
            allow=tuple(allow),
            created_at=self._app.now(),
        )
        backend = await self._backend()
        while True:
            current = await backend.kv_get(NAMESPACE, name)
            if current is not None and not replace_existing:
                raise ConfigurationError(
                    f"a webhook named {name!r} exists; remove it first or pass replace_existing"
                )
            if await backend.kv_swap(NAMESPACE, name, current, hook.encode()):
                return hook, generated

    async def get(self, name: str) -> Webhook:
        raw = await (await self._backend()).kv_get(NAMESPACE, name)
        if raw is None:
            raise WebhookNotFoundError(f"no webhook named {name!r} (see `conveyor webhooks list`)")
        return Webhook.decode(raw)

    async def list(self) -> builtins.list[Webhook]:
        found = await (await self._backend()).kv_list(NAMESPACE)
        return sorted((Webhook.decode(v) for v in found.values()), key=lambda w: w.name)

    async def matching(self, event_name: str) -> builtins.list[Webhook]:
        """Enabled webhooks whose patterns match ``event_name``."""
        return [w for w in await self.list() if w.enabled and w.matches(event_name)]

    async def remove(self, name: str) -> None:
        backend = await self._backend()
        while True:
            current = await backend.kv_get(NAMESPACE, name)
            if current is None:
                raise WebhookNotFoundError(f"no webhook named {name!r}")
            if await backend.kv_swap(NAMESPACE, name, current, None):
                break
        for key, value in (await backend.kv_list(LOG_PREFIX + name)).items():
            await backend.kv_swap(LOG_PREFIX + name, key, value, None)

    async def _mutate(self, name: str, change: Callable[[Webhook], Webhook]) -> Webhook:
        backend = await self._backend()
        while True:
            raw = await backend.kv_get(NAMESPACE, name)
            if raw is None:
                raise WebhookNotFoundError(f"no webhook named {name!r}")
            updated = change(Webhook.decode(raw))
            if await backend.kv_swap(NAMESPACE, name, raw, updated.encode()):
                return updated

    async def disable(self, name: str, reason: str = "disabled by an operator") -> Webhook:
        """Stop deliveries to a webhook (events published meanwhile are not sent to it)."""
        now = datetime.now(UTC)
        return await self._mutate(
            name,
            lambda w: replace(
                w,
                enabled=False,
                health=replace(w.health, disabled=True, disabled_reason=reason, disabled_at=now),
            ),
        )

    async def enable(self, name: str) -> Webhook:
        """Resume deliveries, with the failure count reset."""
        return await self._mutate(name, lambda w: replace(w, enabled=True, health=EndpointHealth()))

    # -- the delivery log -------------------------------------------------------------------
    async def record(self, attempt: AttemptLike) -> tuple[Webhook, bool]:
        """Log one attempt and update the webhook's health atomically; return the webhook and
        whether this attempt disabled it (``on_disabled`` hooks then run)."""
        backend = await self._backend()
        entry = LoggedAttempt(
            webhook=attempt.webhook,
            message_id=attempt.message_id,
            event=attempt.event,
            attempt=attempt.attempt,
            outcome=attempt.outcome,
            status_code=attempt.status_code,
            latency_ms=attempt.latency_ms,
            at=attempt.at.isoformat(),
            error=attempt.error,
            detail=attempt.detail,
        )
        namespace = LOG_PREFIX + attempt.webhook
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        await backend.kv_swap(namespace, key, None, json.dumps(entry.to_dict()).encode())
        disabled_now = False

        def change(w: Webhook) -> Webhook:
            nonlocal disabled_now
            health, disabled_now = w.health.after_attempt(
                attempt.outcome == "succeeded", w.disable_after
            )
            return replace(w, health=health, enabled=w.enabled and not health.disabled)

        hook = await self._mutate(attempt.webhook, change)
        await self._prune(backend, namespace)
        if disabled_now:
            log.warning(
                "webhook %s disabled after %d consecutive failed attempts; "
                "re-enable with `conveyor webhooks enable %s`",
                hook.name,
                hook.health.consecutive_failures,
                hook.name,
                extra={"action": "webhook_disabled", "webhook": hook.name},
            )
            for hook_fn in self.on_disabled:
                result = hook_fn(hook)
                if result is not None:
                    await result
        return hook, disabled_now

    async def _prune(self, backend: WebhookStore, namespace: str) -> None:
        entries = await backend.kv_list(namespace)
        for key in sorted(entries)[: max(0, len(entries) - self.log_limit)]:
            await backend.kv_swap(namespace, key, entries[key], None)

    async def deliveries(self, name: str, limit: int = 50) -> builtins.list[LoggedAttempt]:
        """The latest ``limit`` logged attempts of a webhook, newest first."""
        await self.get(name)
        entries = await (await self._backend()).kv_list(LOG_PREFIX + name)
        newest = sorted(entries, reverse=True)[:limit]
        return [LoggedAttempt(**json.loads(entries[k])) for k in newest]

    # -- blocking twins ---------------------------------------------------------------------
    def add_sync(
        self, name: str, url: str, patterns: Sequence[str] = ("#",), **options: Any
    ) -> tuple[Webhook, Secret | None]:
        """Blocking twin of :meth:`add`."""
        return self._sync(self.add(name, url, patterns, **options))

    def get_sync(self, name: str) -> Webhook:
        """Blocking twin of :meth:`get`."""
        return self._sync(self.get(name))

    def list_sync(self) -> builtins.list[Webhook]:
        """Blocking twin of :meth:`list`."""
        return self._sync(self.list())

    def remove_sync(self, name: str) -> None:
        """Blocking twin of :meth:`remove`."""
        self._sync(self.remove(name))

    def disable_sync(self, name: str, reason: str = "disabled by an operator") -> Webhook:
        """Blocking twin of :meth:`disable`."""
        return self._sync(self.disable(name, reason))

    def enable_sync(self, name: str) -> Webhook:
        """Blocking twin of :meth:`enable`."""
        return self._sync(self.enable(name))

    def deliveries_sync(self, name: str, limit: int = 50) -> builtins.list[LoggedAttempt]:
        """Blocking twin of :meth:`deliveries`."""
        return self._sync(self.deliveries(name, limit))
