"""Where a webhook may be sent: not to this machine or its network unless an administrator says so.

An outbound request to a URL a user chose is a server-side request forgery risk: the API could be
made to POST to a database's admin port on loopback, a cloud's metadata address (link-local), or a
service on the private network. A target's addresses are checked when the subscription is made
(a clear 422) and again at each delivery, on the addresses the connection is actually opened to (a
name that resolved to a public address at creation and to a private one later is refused then: no
DNS rebinding). Redirects are never followed. `TRAINYARD_WEBHOOKS_ALLOW_PRIVATE=true` lets
loopback and private targets through (a test, an internal receiver).
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL or the address it leads to may not be a webhook's target."""


def check_url(url: str) -> tuple[str, int]:
    """The host and port of a webhook URL, or TargetRefused saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("a webhook URL is http:// or https://")
    if not parts.hostname:
        raise TargetRefused("a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("a webhook URL carries no user or password (sign with the secret instead)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("the URL's port is not a number from 1 to 65535") from None
    return parts.hostname, port


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def refuse_private(addresses: Iterable[IPAddress], allow_private: bool) -> None:
    if allow_private:
        return
    for address in addresses:
        if not _public(address):
            raise TargetRefused(
                f"the target resolves to {address}, a loopback, private, link-local or reserved address; "
                "an administrator may allow such targets (TRAINYARD_WEBHOOKS_ALLOW_PRIVATE)"
            )


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise TargetRefused(
            f"the target's host {host!r} does not resolve ({error.strerror or error})"
        ) from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in found))


async def check_target(url: str, allow_private: bool) -> None:
    host, port = check_url(url)
    refuse_private(await resolve(host, port), allow_private)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses `refuse_private` lets through: the
    name is resolved here and the connection opened to the checked address itself (TLS still verifies
    the name in the URL)."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        refuse_private(addresses, self._allow_private)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("a webhook is never sent to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
