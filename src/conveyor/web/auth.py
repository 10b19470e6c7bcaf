"""Who may use the dashboard: password hashing, the signed session cookie, the access policy.

Passwords are stored as ``scrypt$n$r$p$salt$hash`` (stdlib :func:`hashlib.scrypt`; make one
with :func:`hash_password` or ``conveyor dashboard --hash-password``). The session is a cookie
signed with the dashboard's secret (itsdangerous), holding the user name, a CSRF token and the
time it was issued; it expires after ``session_max_age``. Changing the secret logs everybody
out.

:class:`Access` is the one access decision every route goes through: ``ALL`` (read and act),
``READ_ONLY`` (read; every action refused with 403) or ``FORBIDDEN``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "conveyor_session"
_SCRYPT = (2**14, 8, 1)


class Access(StrEnum):
    """What a user may do."""

    ALL = "all"
    READ_ONLY = "read_only"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user. ``access`` is capped by the dashboard's ``read_only`` flag."""

    name: str
    access: Access = Access.ALL


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password`` to put in ``DashboardConfig.users``."""
    n, r, p = _SCRYPT
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash no password matches, checked when the user is unknown (same time as a known one).
_DUMMY = hash_password("unused", salt=b"\0" * 16)


def check_login(users: dict[str, str], name: str, password: str) -> bool:
    """Whether ``name``/``password`` match ``users`` (name -> hash), in constant-ish time."""
    stored = users.get(name)
    ok = verify_password(password, stored if stored is not None else _DUMMY)
    return ok and stored is not None


class Sessions:
    """Signs and reads the session cookie."""

    def __init__(self, secret: str, max_age: float) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="conveyor.dashboard.session")
        self.max_age = max_age

    def issue(self, user: str) -> tuple[str, str]:
        """A new cookie value for ``user`` and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        return self._s.dumps({"u": user, "c": csrf}), csrf

    def read(self, value: str | None) -> dict[str, Any] | None:
        """The session's data (``u`` user, ``c`` CSRF token), or ``None`` when absent, forged
        or expired."""
        if not value:
            return None
        try:
            data = self._s.loads(value, max_age=int(self.max_age))
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            return None
        return data
