"""Webhooks: Standard Webhooks signing, an SSRF guard at connect time, and delivery.

Signing and verification (:func:`sign`, :func:`verify`, :func:`generate_secret`) and the
address policy need only the standard library, so a receiver can import them without httpx.
Delivery (:class:`WebhookSender`) needs ``pip install 'conveyor[webhooks]'``; it is imported
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.integrations.errors import BlockedAddressError, WebhookVerificationError
from conveyor.integrations.webhooks.policy import (
    EndpointHealth,
    RetrySchedule,
    WebhookEndpoint,
    parse_retry_after,
)
from conveyor.integrations.webhooks.signing import (
    generate_secret,
    sign,
    signature_headers,
    verify,
)
from conveyor.integrations.webhooks.ssrf import AddressPolicy, classify

if TYPE_CHECKING:
    from conveyor.integrations.webhooks.delivery import (
        DeliveryAttempt,
        DeliveryResult,
        WebhookSender,
    )

__all__ = [
    "AddressPolicy",
    "BlockedAddressError",
    "DeliveryAttempt",
    "DeliveryResult",
    "EndpointHealth",
    "RetrySchedule",
    "WebhookEndpoint",
    "WebhookSender",
    "WebhookVerificationError",
    "classify",
    "generate_secret",
    "parse_retry_after",
    "sign",
    "signature_headers",
    "verify",
]

_LAZY = {"DeliveryAttempt", "DeliveryResult", "WebhookSender"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from conveyor.integrations.webhooks import delivery

        return getattr(delivery, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
