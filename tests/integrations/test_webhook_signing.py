"""Standard Webhooks signing and the SSRF address table (no network)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.integrations import EventEnvelope, Secret, lookup_path, redact_url
from conveyor.integrations.webhooks import (
    AddressPolicy,
    BlockedAddressError,
    EndpointHealth,
    RetrySchedule,
    WebhookEndpoint,
    WebhookVerificationError,
    classify,
    generate_secret,
    parse_retry_after,
    sign,
    signature_headers,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BODY = b'{"type":"order.created","data":{"id":1}}'
NOW = 1_700_000_000


def test_signature_is_hmac_sha256_over_id_timestamp_body() -> None:
    expected = hmac.new(b"k" * 32, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", NOW, BODY) == "v1," + base64.b64encode(expected).decode()


def test_valid_signature_verifies_and_returns_the_id() -> None:
    headers = signature_headers([SECRET], "msg_1", BODY, timestamp=NOW)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify(SECRET, upper, BODY, now=NOW + 10) == "msg_1"


def test_several_signatures_one_valid_verifies_during_rotation() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signature_headers([old, new], "msg_2", BODY, timestamp=NOW)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(new, headers, BODY, now=NOW) == "msg_2"
    assert verify([generate_secret(), old], headers, BODY, now=NOW) == "msg_2"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: (h, b + b" "), "no_matching_signature"),
        (lambda h, b: ({**h, "webhook-id": "other"}, b), "no_matching_signature"),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
            "missing_headers",
        ),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "bad_timestamp"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW - 301)}, b), "timestamp_too_old"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 301)}, b), "timestamp_too_new"),
    ],
)
def test_tampering_is_refused_with_a_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    headers, body = mutate(signature_headers([SECRET], "msg_3", BODY, timestamp=NOW), BODY)
    with pytest.raises(WebhookVerificationError) as info:
        verify(SECRET, headers, body, now=NOW)
    assert info.value.reason == reason
    assert info.value.code == "webhook_verification"


def test_wrong_secret_is_refused() -> None:
    headers = signature_headers([SECRET], "msg_4", BODY, timestamp=NOW)
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, BODY, now=NOW)


def test_secret_never_prints() -> None:
    secret = generate_secret()
    raw = secret.reveal()
    assert raw.startswith("whsec_")
    assert raw not in repr(secret) and raw not in str(secret) and raw not in f"{secret}"
    endpoint = WebhookEndpoint.create(
        "https://example.com/hook", secret, headers={"Authorization": "Bearer tok-123"}
    )
    assert raw not in repr(endpoint) and "tok-123" not in repr(endpoint)
    assert redact_url("amqp://guest:hunter2@127.0.0.1:5672/") == "amqp://guest:•••@127.0.0.1:5672/"


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("168.63.129.16", True),
        ("198.18.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fec0::1", True),
        ("::ffff:127.0.0.1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2606:4700:4700::1111", False),
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
    ],
)
def test_ssrf_address_table(address: str, blocked: bool) -> None:
    import ipaddress

    assert (classify(ipaddress.ip_address(address)) is not None) is blocked


def test_policy_allows_listed_networks_and_refuses_mixed_answers() -> None:
    policy = AddressPolicy(allow=("127.0.0.0/8",))
    assert policy.check("localhost", ["127.0.0.1"]) == ["127.0.0.1"]
    with pytest.raises(BlockedAddressError):
        policy.check("evil.test", ["8.8.8.8", "10.0.0.1"])
    assert AddressPolicy.from_config(["*"]).check("x", ["10.0.0.1"]) == ["10.0.0.1"]
    with pytest.raises(ValueError, match="AddressPolicy"):
        AddressPolicy(allow=("not-a-network",))


def test_retry_schedule_and_retry_after() -> None:
    schedule = RetrySchedule()
    assert schedule.max_attempts == 8
    assert [schedule.delay_after(n) for n in range(1, 9)] == [
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        36000.0,
        None,
    ]
    assert schedule.delay_after(1, retry_after=60) == 60
    assert schedule.delay_after(1, retry_after=10**9) == schedule.max_retry_after
    assert RetrySchedule.from_config({"maxRetries": 3, "initialDelayMs": 1000}).delays == (
        1.0,
        2.0,
        4.0,
    )
    assert parse_retry_after("120") == 120.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, now) == 30.0
    assert parse_retry_after("soon") is None
    with pytest.raises(ValueError, match="backoff strategy"):
        RetrySchedule.backoff(2, strategy="cubic")


def test_endpoint_health_disables_after_n_and_resets_on_success() -> None:
    health = EndpointHealth()
    health, off = health.after_attempt(False, 3)
    health, off = health.after_attempt(True, 3)
    assert health.consecutive_failures == 0 and not off
    for _ in range(2):
        health, off = health.after_attempt(False, 3)
    assert not off
    health, off = health.after_attempt(False, 3)
    assert off and health.disabled and "3 consecutive" in (health.disabled_reason or "")
    assert health.enabled() == EndpointHealth()


def test_endpoint_validation_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookEndpoint.create("ftp://x/", "s")
    with pytest.raises(ValueError, match="headers="):
        WebhookEndpoint.create("https://u:p@x/", "s")
    with pytest.raises(ValueError, match="secret"):
        WebhookEndpoint.create("https://x/", "")
    assert isinstance(WebhookEndpoint.create("https://x/", "s").secrets[0], Secret)


def test_envelope_round_trip_and_dotted_paths() -> None:
    event = EventEnvelope(
        "ev1",
        "order.created",
        {"order": {"id": 7}, "items": [{"sku": "a"}]},
        key="k",
        metadata={"tenantId": "t-9"},
    )
    back = EventEnvelope.from_json(event.to_json())
    assert back == event
    assert lookup_path(event, "metadata.tenantId") == "t-9"
    assert lookup_path(event, "data.order.id") == "7"
    assert lookup_path(event, "order.id") == "7"
    assert lookup_path(event, "items.0.sku") == "a"
    assert lookup_path(event, "metadata.missing") is None
    with pytest.raises(ValueError, match="'id'"):
        EventEnvelope.from_dict({"type": "x"})
