"""Standard Webhooks signing and verification (stdlib only).

Every request carries three headers:

* ``webhook-id`` — the event id, the same on every retry (receivers deduplicate on it);
* ``webhook-timestamp`` — Unix seconds of *this* attempt;
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}``, one
  entry per active secret, separated by spaces (so keys can be rotated without downtime).

Secrets look like ``whsec_<base64>`` (24–64 random bytes). A receiver verifies with
:func:`verify` over the **raw** body bytes, never over re-serialised JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta

from conveyor.integrations.errors import WebhookVerificationError
from conveyor.integrations.secrets import Secret

PREFIX = "whsec_"
DEFAULT_TOLERANCE = timedelta(minutes=5)
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

SecretLike = str | bytes | Secret


def generate_secret(size: int = 32) -> Secret:
    """A new random signing secret, ``whsec_`` + base64 of ``size`` bytes (24–64)."""
    if not 24 <= size <= 64:
        raise ValueError("a webhook secret must have 24 to 64 random bytes")
    return Secret(PREFIX + base64.b64encode(_random.token_bytes(size)).decode())


def secret_key(secret: SecretLike) -> bytes:
    """The HMAC key of a secret: the decoded bytes of ``whsec_…``, else the raw bytes."""
    if isinstance(secret, bytes):
        return secret
    text = secret.reveal() if isinstance(secret, Secret) else secret
    if not text:
        raise ValueError("a webhook secret must not be empty")
    if text.startswith(PREFIX):
        try:
            return base64.b64decode(text[len(PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return text.encode()


def sign(secret: SecretLike, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secrets: Iterable[SecretLike], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp`` defaults to now)."""
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    signatures = " ".join(sign(s, msg_id, stamp, body) for s in secrets)
    if not signatures:
        raise ValueError("at least one secret is needed to sign a webhook")
    return {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(stamp), HEADER_SIGNATURE: signatures}


def verify(
    secrets: SecretLike | Iterable[SecretLike],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received webhook; return its ``webhook-id`` or raise
    :class:`~conveyor.integrations.errors.WebhookVerificationError` (with a ``reason``).

    ``secrets`` is one secret or several (during a rotation); ``headers`` any mapping (looked
    up case-insensitively); ``body`` the raw request body. The timestamp must be within
    ``tolerance`` of ``now`` either way. Comparison is constant-time.
    """
    keys = [secrets] if isinstance(secrets, (str, bytes, Secret)) else list(secrets)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    stamp_text = lowered.get(HEADER_TIMESTAMP)
    signature_text = lowered.get(HEADER_SIGNATURE)
    if not msg_id or not stamp_text or not signature_text:
        raise WebhookVerificationError(
            "missing_headers",
            f"missing one of the {HEADER_ID}, {HEADER_TIMESTAMP}, {HEADER_SIGNATURE} headers",
        )
    try:
        stamp = int(stamp_text)
    except ValueError:
        raise WebhookVerificationError(
            "bad_timestamp", f"{HEADER_TIMESTAMP} is not Unix seconds"
        ) from None
    current = time.time() if now is None else now
    window = tolerance.total_seconds()
    if stamp < current - window:
        raise WebhookVerificationError("timestamp_too_old", "the webhook timestamp is too old")
    if stamp > current + window:
        raise WebhookVerificationError(
            "timestamp_too_new", "the webhook timestamp is in the future"
        )
    offered = [part.strip() for part in signature_text.split(" ") if part.strip()]
    for key in keys:
        expected = sign(key, msg_id, stamp, body)
        for candidate in offered:
            if hmac.compare_digest(candidate.encode(), expected.encode()):
                return msg_id
    raise WebhookVerificationError(
        "no_matching_signature", "no webhook signature matches a known secret"
    )
