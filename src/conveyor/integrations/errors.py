"""Errors of the integrations, each with a stable code (they extend the tree in
:mod:`conveyor.errors`)::

    ConveyorError
    └── IntegrationError                 integration
        ├── WebhookVerificationError     webhook_verification (``reason`` says which check)
        ├── BlockedAddressError          blocked_address (SSRF guard)
        └── BrokerUnavailableError       broker_unavailable
"""

from __future__ import annotations

from conveyor.errors import ConveyorError


class IntegrationError(ConveyorError):
    """A webhook, bridge or realtime channel failed."""

    code = "integration"


class WebhookVerificationError(IntegrationError):
    """A received webhook failed verification.

    ``reason`` is one of ``missing_headers``, ``bad_timestamp``, ``timestamp_too_old``,
    ``timestamp_too_new``, ``no_matching_signature``.
    """

    code = "webhook_verification"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BlockedAddressError(IntegrationError):
    """The SSRF guard refused a target: it resolves to a private, loopback, link-local or
    otherwise internal address that the address policy does not allow."""

    code = "blocked_address"

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(
            f"refused to connect to {host} ({address}): {why} address; allow it explicitly "
            "with AddressPolicy(allow=[...]) if this target is intended"
        )
        self.host = host
        self.address = address
        self.why = why


class BrokerUnavailableError(IntegrationError):
    """A bridge could not reach its broker (it keeps retrying; this is what it reports)."""

    code = "broker_unavailable"
