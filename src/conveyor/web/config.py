"""The dashboard's configuration: who may log in, what they may do, what is hidden."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request

from conveyor.web.auth import User

#: A custom authentication hook: given the request, the user (or ``None`` to refuse).
AuthHook = Callable[[Request], "User | Awaitable[User | None] | None"]


@dataclass(frozen=True)
class DashboardConfig:
    """How a dashboard runs.

    - ``users``: name -> password hash (:func:`conveyor.web.hash_password`) for the login form
      and HTTP Basic auth.
    - ``auth``: a hook called with each request that returns a :class:`User` (or ``None``);
      used instead of ``users`` when given (e.g. trust your app's own session or a proxy
      header).
    - ``secret_key``: signs session cookies (required with ``users``; keep it stable across
      restarts and processes).
    - ``read_only``: every action (retry, cancel, delete, pause, ...) is refused with 403.
    - ``redact``: task name (or ``"*"``) -> field names shown as ``•••``.
    - ``public_metrics``: serve ``/metrics`` without authentication (for Prometheus).
    - ``count_cap``: counts are exact up to this many jobs per queue and state.
    - ``bulk_limit``: most jobs one group retry or purge touches.
    - ``live_interval``: seconds between the server's checks for changes (SSE).
    - ``secure_cookies``: ``None`` sets the cookie's Secure flag when the request is HTTPS.
    - ``anonymous``: no authentication at all (a trusted local network only).
    """

    users: Mapping[str, str] = field(default_factory=dict)
    auth: AuthHook | None = None
    secret_key: str | None = None
    read_only: bool = False
    redact: Mapping[str, Sequence[str]] = field(default_factory=dict)
    title: str = "Conveyor"
    public_metrics: bool = False
    count_cap: int = 10_000
    bulk_limit: int = 10_000
    live_interval: float = 2.0
    session_max_age: float = 12 * 3600.0
    secure_cookies: bool | None = None
    anonymous: bool = False
