"""The client IP: resolved to a country and region with the test GeoIP database, then dropped.

The test .mmdb (geoip/build_test_mmdb.py) maps 192.0.2.0/24 to US/CA, 198.51.100.0/24 to GB/ENG,
2001:db8::/32 to DE/BE and 203.0.113.0/25 to FR without a region; everything else is a miss. Which
address counts as the client's: the socket peer; X-Forwarded-For only from a trusted proxy (the
right-most hop that is not itself a trusted proxy); ``context.ip`` only from the partner's servers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import bearer, client_for, new_id

Location = tuple[str | None, str | None]
Headers = Sequence[tuple[str, str]]

US_CA: Location = ("US", "CA")
GB_ENG: Location = ("GB", "ENG")
DE_BE: Location = ("DE", "BE")
NOWHERE: Location = (None, None)


@pytest.fixture
async def proxy_app(settings: Settings, log_stream: Any) -> AsyncIterator[Any]:
    """The same service behind a load balancer: 10.0.0.0/8 may set X-Forwarded-For."""
    proxied = dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    async with LifespanManager(create_app(proxied, metrics=Metrics())) as manager:
        yield manager.app


@pytest.fixture
async def server_key(client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]) -> str:
    """A write key the partner uses from its own servers: its context.ip is believed."""
    r = await client.post(
        f"/v1/projects/{project['id']}/keys",
        json={"server_side": True},
        headers=bearer(secret_key),
    )
    assert r.status_code == 201, r.text
    assert r.json()["server_side"] is True
    key: str = r.json()["key"]
    return key


async def post_event(
    app: Any,
    auth: dict[str, str],
    *,
    peer: str = "192.0.2.7",
    headers: Headers = (),
    context: dict[str, Any] | None = None,
) -> tuple[httpx.Response, str]:
    """Post one event from ``peer``; return the answer and the event's message id."""
    message_id = new_id()
    event: dict[str, Any] = {"event": "Located", "user_id": "u-1", "message_id": message_id}
    if context is not None:
        event["context"] = context
    async with client_for(app, peer=peer) as c:
        r = await c.post("/v1/events", json=event, headers=[*auth.items(), *headers])
    return r, message_id


async def stored(conn: asyncpg.Connection, message_id: str) -> tuple[Location, dict[str, Any]]:
    """The stored location and context of one event."""
    row = await conn.fetchrow(
        "SELECT country, region, context FROM events WHERE message_id = $1", message_id
    )
    assert row is not None, "the event was not stored"
    context: dict[str, Any] = row["context"]
    return (row["country"], row["region"]), context


async def located(conn: asyncpg.Connection, answer: httpx.Response, message_id: str) -> Location:
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    location, context = await stored(conn, message_id)
    assert "ip" not in context, "an IP address was stored in context"
    return location


async def counter(app: Any, name: str) -> float:
    """A counter's value as /metrics shows it to Prometheus."""
    async with client_for(app) as c:
        text = (await c.get("/metrics")).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} is not exported"
    return float(match.group(1))


# -- the socket peer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("192.0.2.7", US_CA),
        ("2001:db8::1", DE_BE),
        ("203.0.113.5", ("FR", None)),
        ("::ffff:192.0.2.7", US_CA),  # an IPv4 client on a dual-stack socket
        ("10.0.0.1", NOWHERE),
        ("2001:db9::1", NOWHERE),
    ],
)
async def test_socket_peer_is_resolved(
    app: Any, write_key: str, conn: asyncpg.Connection, peer: str, expected: Location
) -> None:
    lookups = await counter(app, "ingest_geoip_lookups_total")
    misses = await counter(app, "ingest_geoip_misses_total")
    answer, mid = await post_event(app, bearer(write_key), peer=peer)
    assert await located(conn, answer, mid) == expected
    assert await counter(app, "ingest_geoip_lookups_total") == lookups + 1
    is_miss = expected == NOWHERE
    assert await counter(app, "ingest_geoip_misses_total") == misses + (1 if is_miss else 0)


# -- X-Forwarded-For -------------------------------------------------------------------------------


async def test_forwarded_for_is_ignored_when_no_proxy_is_trusted(
    app: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    answer, mid = await post_event(
        app, bearer(write_key), headers=[("X-Forwarded-For", "198.51.100.9")]
    )
    assert await located(conn, answer, mid) == US_CA  # the peer's, not the header's


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        pytest.param("192.0.2.7", "198.51.100.9", US_CA, id="forged by an untrusted peer"),
        pytest.param(
            "192.0.2.7", "198.51.100.9, 10.0.0.2", US_CA, id="forged chain, untrusted peer"
        ),
        pytest.param("10.0.0.1", "198.51.100.9", GB_ENG, id="one hop"),
        pytest.param("10.0.0.1", "198.51.100.9, 10.0.0.2", GB_ENG, id="through two proxies"),
        pytest.param(
            "10.0.0.1", "192.0.2.1, 198.51.100.9", GB_ENG, id="client-forged left part ignored"
        ),
        pytest.param(
            "10.0.0.1", "not-an-ip, 198.51.100.9", GB_ENG, id="junk left of the client ignored"
        ),
        pytest.param("10.0.0.1", "2001:db8::5, 10.0.0.2", DE_BE, id="IPv6 client"),
        pytest.param("10.0.0.1", " 198.51.100.9 ", GB_ENG, id="spaces around a hop"),
        pytest.param("10.0.0.1", "198.51.100.9, not-an-ip", NOWHERE, id="malformed hop"),
        pytest.param("10.0.0.1", "198.51.100.9, ", NOWHERE, id="empty hop"),
        pytest.param("10.0.0.1", "", NOWHERE, id="empty header: the proxy itself"),
        pytest.param(
            "::ffff:10.0.0.1", "198.51.100.9", GB_ENG, id="proxy seen on a dual-stack socket"
        ),
        pytest.param(
            "10.0.0.1", "198.51.100.9, ::ffff:10.0.0.2", GB_ENG, id="IPv4-mapped proxy hop"
        ),
    ],
)
async def test_forwarded_for_from_trusted_proxies_only(
    proxy_app: Any,
    write_key: str,
    conn: asyncpg.Connection,
    peer: str,
    forwarded_for: str,
    expected: Location,
) -> None:
    answer, mid = await post_event(
        proxy_app, bearer(write_key), peer=peer, headers=[("X-Forwarded-For", forwarded_for)]
    )
    assert await located(conn, answer, mid) == expected


async def test_trusted_proxy_without_forwarded_for_is_the_client(
    proxy_app: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    misses = await counter(proxy_app, "ingest_geoip_misses_total")
    answer, mid = await post_event(proxy_app, bearer(write_key), peer="10.0.0.1")
    assert await located(conn, answer, mid) == NOWHERE
    assert await counter(proxy_app, "ingest_geoip_misses_total") == misses + 1


async def test_forwarded_for_split_over_two_header_lines_is_one_list(
    proxy_app: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    """A client sends its own (forged) X-Forwarded-For and a proxy such as HAProxy adds a second
    header line rather than appending: RFC 9110 5.3 says the lines form one comma-separated
    list, so the right-most untrusted hop is still the proxy's, not the client's forgery."""
    answer, mid = await post_event(
        proxy_app,
        bearer(write_key),
        peer="10.0.0.1",
        headers=[("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "198.51.100.9")],
    )
    assert await located(conn, answer, mid) == GB_ENG


# -- context.ip ------------------------------------------------------------------------------------


async def test_context_ip_from_a_browser_write_key_is_ignored_and_dropped(
    app: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    answer, mid = await post_event(
        app, bearer(write_key), context={"ip": "198.51.100.9", "locale": "en-GB"}
    )
    assert await located(conn, answer, mid) == US_CA  # the peer 192.0.2.7
    assert (await stored(conn, mid))[1] == {"locale": "en-GB"}
    assert answer.json()["warnings"] == []


@pytest.mark.parametrize(
    ("context_ip", "expected"),
    [("198.51.100.9", GB_ENG), ("2001:db8::7", DE_BE), ("203.0.113.5", ("FR", None))],
)
async def test_context_ip_from_a_server_side_write_key_is_resolved_then_dropped(
    app: Any, server_key: str, conn: asyncpg.Connection, context_ip: str, expected: Location
) -> None:
    answer, mid = await post_event(
        app, bearer(server_key), context={"ip": context_ip, "library": {"name": "py"}}
    )
    assert await located(conn, answer, mid) == expected
    assert (await stored(conn, mid))[1] == {"library": {"name": "py"}}


async def test_context_ip_with_the_secret_key_is_resolved_then_dropped(
    app: Any, secret_key: str, project: dict[str, Any], conn: asyncpg.Connection
) -> None:
    answer, mid = await post_event(
        app,
        {**bearer(secret_key), "X-Ingest-Project-Id": project["id"]},
        context={"ip": "198.51.100.9"},
    )
    assert await located(conn, answer, mid) == GB_ENG
    assert (await stored(conn, mid))[1] == {}


async def test_context_ip_from_a_server_is_not_used_for_a_browser_key_of_the_same_project(
    app: Any, write_key: str, server_key: str, conn: asyncpg.Connection
) -> None:
    """Trust belongs to the key, not to the project."""
    trusted, trusted_mid = await post_event(app, bearer(server_key), context={"ip": "2001:db8::9"})
    browser, browser_mid = await post_event(app, bearer(write_key), context={"ip": "2001:db8::9"})
    assert await located(conn, trusted, trusted_mid) == DE_BE
    assert await located(conn, browser, browser_mid) == US_CA


@pytest.mark.parametrize("bad_ip", ["not-an-ip", "198.51.100.300", "", "2001:db8::zz"])
async def test_invalid_context_ip_from_a_trusted_source_is_a_warning(
    app: Any, server_key: str, conn: asyncpg.Connection, bad_ip: str
) -> None:
    answer, mid = await post_event(app, bearer(server_key), context={"ip": bad_ip})
    assert answer.status_code == 200, answer.text
    assert answer.json()["warnings"] == [
        {"index": 0, "code": "invalid_ip", "field": "context.ip", "reason": "not an IP address"}
    ]
    location, context = await stored(conn, mid)
    assert context == {}
    # The peer is the partner's server (192.0.2.7 -> US/CA), not the user: no location is stored.
    assert location == NOWHERE


async def test_a_trusted_context_ip_the_database_does_not_know_counts_as_a_miss(
    app: Any, server_key: str, conn: asyncpg.Connection
) -> None:
    """The metric counts client IPs the GeoIP database does not know (E3), whichever source the
    client IP came from; the server's own (known) peer address is not the client's."""
    misses = await counter(app, "ingest_geoip_misses_total")
    answer, mid = await post_event(app, bearer(server_key), context={"ip": "10.1.2.3"})
    assert await located(conn, answer, mid) == NOWHERE  # not the server's US/CA
    assert await counter(app, "ingest_geoip_misses_total") == misses + 1


# -- never stored ----------------------------------------------------------------------------------


async def test_no_ip_is_stored_in_any_column(
    proxy_app: Any, write_key: str, server_key: str, conn: asyncpg.Connection
) -> None:
    """Every source at once; then no column of any stored row holds one of the addresses."""
    sent = [
        await post_event(
            proxy_app,
            bearer(write_key),
            peer="10.0.0.1",
            headers=[("X-Forwarded-For", "198.51.100.21, 10.0.0.2")],
            context={"ip": "192.0.2.22"},
        ),
        await post_event(proxy_app, bearer(server_key), context={"ip": "2001:db8::23"}),
        await post_event(proxy_app, bearer(write_key), peer="2001:db8::24"),
    ]
    assert [await located(conn, answer, mid) for answer, mid in sent] == [GB_ENG, DE_BE, DE_BE]
    rows = await conn.fetch("SELECT events::text AS row FROM events")
    assert len(rows) == 3
    addresses = ("198.51.100.21", "192.0.2.22", "2001:db8::23", "2001:db8::24", "10.0.0.")
    assert [a for a in addresses if any(a in r["row"] for r in rows)] == []
