"""Which address a request came from: the socket peer, or X-Forwarded-For from trusted proxies.

The address is used for one GeoIP lookup and then dropped; nothing here stores or logs it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from ingest.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(value: str) -> IPAddress | None:
    return _parse_cached(value.strip())


@functools.lru_cache(maxsize=4096)
def _parse_cached(value: str) -> IPAddress | None:
    # Cached: the same few peers (a load balancer, an app's servers) send most requests, and
    # ipaddress parses in Python. Process memory only, like the GeoIP cache beside it.
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    # A server listening on :: sees IPv4 clients as ::ffff:a.b.c.d; compare them as IPv4.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def is_trusted_proxy(peer: str | None, proxies: Sequence[IPNetwork]) -> bool:
    """Whether the socket peer is one of the configured proxies (whose headers we believe)."""
    ip = _parse(peer) if peer else None
    return ip is not None and _trusted(ip, proxies)


def client_ip(
    peer: str | None, forwarded_for: str | None, proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address. X-Forwarded-For is read only when the peer is a trusted proxy,
    right to left, and the first hop that is not itself a trusted proxy is the client: anything
    further left was written by the client and could be forged."""
    ip = _parse(peer) if peer else None
    if ip is None or not forwarded_for or not proxies or not _trusted(ip, proxies):
        return ip
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _parse(hop)
        if hop_ip is None:
            return None  # a malformed chain: better no location than a forged one
        if not _trusted(hop_ip, proxies):
            return hop_ip
    return ip
