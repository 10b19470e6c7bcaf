"""An httpx transport that enforces the SSRF :class:`AddressPolicy` at connect time.

httpx resolves and connects inside httpcore's network backend; this module swaps in a backend
that resolves the host itself, checks **every** address against the policy, and connects to a
checked address (TLS still verifies and sends SNI for the original host name). Environment
proxies are ignored (a proxy would connect on our behalf, past the check), and redirects are
never followed by the delivery code.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from conveyor.integrations._extras import require
from conveyor.integrations.webhooks.ssrf import AddressPolicy

require("httpx", "webhooks")
import httpcore  # noqa: E402
import httpx  # noqa: E402

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, without blocking the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend: resolve, check every address, connect to a checked one."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or system_resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            ipaddress.ip_address(host.strip("[]"))
            addresses = [host.strip("[]")]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        checked = self.policy.check(host, addresses)
        last: Exception | None = None
        for address in checked:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks never connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(
    policy: AddressPolicy,
    *,
    resolver: Resolver | None = None,
    max_connections: int = 100,
    verify: bool = True,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every connection passes the SSRF guard.

    It ignores proxy environment variables and never follows redirects.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits, verify=verify)
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # pragma: no cover - httpx changed
        raise RuntimeError("this httpx version hides its connection pool; pin httpx<1")
    transport._pool = httpcore.AsyncConnectionPool(  # the SSRF guard sits in the pool
        ssl_context=pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedNetworkBackend(policy, resolver),
    )
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
