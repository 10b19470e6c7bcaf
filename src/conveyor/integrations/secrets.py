"""Secrets that never print: signing keys, auth header values, broker passwords.

A :class:`Secret` keeps its value out of ``repr``/``str`` (and so out of logs, tracebacks, the
CLI and anything that formats it); code that needs the value calls :meth:`Secret.reveal`.
:func:`redact_url` removes the password from a connection URL before it is shown.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "•••"


class Secret:
    """A string that shows as ``•••`` wherever it is printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        self._value = value.reveal() if isinstance(value, Secret) else str(value)

    def reveal(self) -> str:
        """The secret value (for signing or connecting, never for display)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``•••`` (``amqp://guest:•••@host/``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
