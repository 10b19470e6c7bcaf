"""The SSRF guard's address policy (stdlib only).

A webhook URL is user input, so Conveyor refuses to connect to internal addresses: private
ranges, loopback, link-local (cloud metadata at 169.254.169.254), CGNAT, multicast, reserved
and unspecified addresses, the IPv6 equivalents, and IPv4 addresses hidden inside IPv6
(mapped, NAT64 ``64:ff9b::/96``, 6to4, Teredo). The check runs **at connect time** on every
address the name resolves to (see :mod:`conveyor.integrations.webhooks.transport`), so DNS
rebinding cannot slip an internal address past a check made earlier.

``AddressPolicy(allow=["127.0.0.0/8"])`` explicitly allows networks (tests, internal
receivers); ``AddressPolicy.unrestricted()`` allows everything (trusted configurations only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from conveyor.integrations.errors import BlockedAddressError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges refused beyond what ``ipaddress`` flags as private/loopback/link-local/reserved.
EXTRA_BLOCKED: tuple[tuple[str, str], ...] = (
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("198.18.0.0/15", "benchmarking"),
    ("168.63.129.16/32", "cloud platform (Azure wire server)"),
    ("fec0::/10", "site-local"),
    ("64:ff9b:1::/48", "local-use NAT64"),
)
_EXTRA = tuple((ipaddress.ip_network(net), why) for net, why in EXTRA_BLOCKED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def classify(address: IPAddress) -> str | None:
    """Why ``address`` is internal (``"loopback"``, ``"private"``, …), or ``None`` if public."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = classify(inner)
            return f"{why} (embedded in IPv6)" if why else None
    for network, why in _EXTRA:
        if address.version == network.version and address in network:
            return why
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    )
    for why, hit in checks:
        if hit:
            return why
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses outgoing webhook connections may reach.

    By default only public (global) addresses. ``allow`` lists networks (CIDR strings or
    addresses) that are allowed even though internal.
    """

    allow: tuple[str, ...] = ()
    allow_everything: bool = False
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            nets = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow)
        except ValueError as exc:
            raise ValueError(f"AddressPolicy(allow=...): {exc}") from None
        object.__setattr__(self, "allow", tuple(str(n) for n in nets))
        object.__setattr__(self, "_networks", nets)

    @classmethod
    def unrestricted(cls) -> AddressPolicy:
        """Allow every address (only for fully trusted webhook configurations)."""
        return cls(allow_everything=True)

    @classmethod
    def from_config(cls, allow: Iterable[str] | None) -> AddressPolicy:
        """From a configuration list; ``["*"]`` means unrestricted."""
        items = list(allow or ())
        if "*" in items:
            return cls.unrestricted()
        return cls(allow=tuple(items))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused under this policy, or ``None`` if it may be reached."""
        if self.allow_everything:
            return None
        for network in self._networks:
            if address.version == network.version and address in network:
                return None
        return classify(address)

    def check(self, host: str, addresses: Iterable[str]) -> list[str]:
        """Every address of ``host`` must be allowed; return them, or raise
        :class:`~conveyor.integrations.errors.BlockedAddressError` for the first refused one
        (a name resolving to one public and one internal address is refused as a whole)."""
        checked: list[str] = []
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            why = self.refusal(address)
            if why is not None:
                raise BlockedAddressError(host, str(address), why)
            checked.append(str(address))
        if not checked:
            raise BlockedAddressError(host, "-", "unresolvable")
        return checked
