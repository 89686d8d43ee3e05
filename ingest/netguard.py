"""Where a destination may point: public addresses only (no SSRF into our own network).

A partner-supplied URL is checked when the destination is saved and again at every delivery:
its host is resolved, every address must be public (not loopback, private, link-local, shared,
multicast or reserved), and the request then connects to an address that was checked, never
resolving the name a second time (DNS rebinding). Redirects are not followed by the forwarder.
``allow_private`` (INGEST_DESTINATIONS_ALLOW_PRIVATE) lifts the address check and allows plain
http, for tests and local development.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS: Final = 2048
_RESOLVE_TIMEOUT_S: Final = 5.0


class Refused(ValueError):
    """The URL or its address may not be used; the message says why (no secret in it)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str  # as written (a name, or an address without brackets)
    port: int
    path: str  # path and query, as sent in the request line

    def url_for(self, address: IPAddress) -> str:
        """The URL with ``address`` in place of the host (the Host header and TLS name stay
        ``host``)."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def address(self) -> IPAddress | None:
        """The host when it is an IP address literal, else None (a name)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        literal = f"[{self.host}]" if ":" in self.host else self.host
        return literal if self.port == default else f"{literal}:{self.port}"


def parse_url(url: str, *, allow_private: bool) -> Target:
    """Check a destination URL's form; raise Refused."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise Refused(
            "invalid_url", f"url must be an absolute URL of {MAX_URL_CHARS} chars at most"
        )
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise Refused("invalid_url", "url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("invalid_url", "url is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise Refused("invalid_url", "url must be an https URL")
    if scheme == "http" and not allow_private:
        raise Refused("insecure_url", "url must use https: events are personal data in transit")
    if not parts.hostname:
        raise Refused("invalid_url", "url must name a host")
    if parts.username is not None or parts.password is not None:
        raise Refused("invalid_url", "url must not carry credentials; the payload is signed")
    if parts.fragment:
        raise Refused("invalid_url", "url must not have a fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """The addresses ``target`` may be reached at; raise Refused when there are none (every
    address of the name must be public, so a name cannot mix one in)."""
    literal = target.address
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, TimeoutError, UnicodeError):
            raise Refused("unresolvable_host", "the url's host does not resolve") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Refused("unresolvable_host", "the url's host does not resolve")
    if not allow_private and not all(is_public(a) for a in addresses):
        raise Refused(
            "forbidden_address",
            "the url's host resolves to a loopback, private, link-local or reserved address",
        )
    return addresses
