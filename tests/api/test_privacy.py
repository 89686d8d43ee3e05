"""The promise, end to end: no raw email, phone, IP or device id is kept anywhere.

Every test plants canaries that are unique to the test (``cnry-<run>-<n>@example.test``, a
``+1 555 01xx xxx`` number written many ways, documentation-range IPs, random device ids), sends
them through the API in as many disguises and on as many paths as it can (valid, rejected and
malformed events, partner routes, headers, the socket peer), and then searches every place a raw
value could survive: ``pg_dump`` of the database (data only, and with the schema), the
Postgres WAL and server log when the embedded server is in use, the application log, ``/metrics``,
and every HTTP answer, body and headers. Where a value is stored, it must be exactly its
documented digest. The negative controls at the end prove that each search finds what it looks
for, so a clean result means something.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import ipaddress
import logging
import random
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import structlog

from ingest.config import Settings
from tests.conftest import basic, bearer, client_for, unseal

TRUSTED_PROXY = "10.0.0.1"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pg_dump_binary() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # the pg_dump (16) that ships with the embedded server

    return Path(str(pgserver.__file__)).parent / "pginstall" / "bin" / "pg_dump"


# -- canaries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canaries:
    """Raw values no store, log, metric or answer may ever hold; fresh for every test."""

    run: str
    ipv4_peer: str  # 192.0.2.0/24 -> US/CA
    ipv4_forwarded: str  # 198.51.100.0/24 -> GB/ENG
    ipv4_context: str  # 198.51.100.0/24 -> GB/ENG
    ipv6: str  # 2001:db8::/32 -> DE/BE
    ipv6_peer: str
    idfa: str
    gaid: str
    national: str  # 555 01xx xxx, ten digits
    phone: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls) -> Canaries:
        rnd = random.Random()  # uniqueness, not secrecy
        national = f"55501{rnd.randrange(100):02d}{rnd.randrange(1000):03d}"
        a, b, c = national[:3], national[3:7], national[7:]  # 555 01xx xxx
        n1, n2, n3 = national[:3], national[3:6], national[6:]  # 555 01x xxxx (NANP grouping)
        v4a, v4b, v4c = rnd.sample(range(10, 250), 3)
        six = [rnd.randrange(0x1000, 0xFFFF) for _ in range(6)]
        return cls(
            run=uuid.uuid4().hex[:12],
            ipv4_peer=f"192.0.2.{v4a}",
            ipv4_forwarded=f"198.51.100.{v4b}",
            ipv4_context=f"198.51.100.{v4c}",
            ipv6=str(ipaddress.IPv6Address(f"2001:db8:{six[0]:x}:{six[1]:x}::{six[2]:x}")),
            ipv6_peer=str(ipaddress.IPv6Address(f"2001:db8:{six[3]:x}:{six[4]:x}::{six[5]:x}")),
            idfa=str(uuid.uuid4()).upper(),
            gaid=str(uuid.uuid4()),
            national=national,
            phone={
                "spaces": f"+1 {a} {b} {c}",
                "dashes": f"+1-{a}-{b}-{c}",
                "dots": f"+1.{a}.{b}.{c}",
                "brackets": f"+1 ({a}) {b} {c}",
                "00 prefix": f"001 {a} {b} {c}",
                "nanp": f"1 ({n1}) {n2}-{n3}",
            },
        )

    def email(self, n: int) -> str:
        return f"cnry-{self.run}-{n}@example.test"

    @property
    def phone_digits(self) -> str:
        """What the documented normalization makes of every written form: digits with the 1."""
        return "1" + self.national

    @property
    def phone_number(self) -> int:
        return int(self.phone_digits)

    @property
    def ipv4_peer_int(self) -> int:
        return int(ipaddress.IPv4Address(self.ipv4_peer))

    def forbidden(self) -> dict[str, str]:
        """label -> raw form; searched case-insensitively."""
        forms = {
            # Every canary email contains this, whatever the disguise (%40, mailto:, upper case).
            "email (any canary's local part)": f"cnry-{self.run}-",
            "phone digits": self.phone_digits,
            "phone national digits": self.national,
            "phone e164": "+" + self.phone_digits,
            "ipv4 peer": self.ipv4_peer,
            "ipv4 peer as integer": str(self.ipv4_peer_int),
            "ipv4 forwarded": self.ipv4_forwarded,
            "ipv4 context": self.ipv4_context,
            "ipv6": self.ipv6,
            "ipv6 exploded": ipaddress.IPv6Address(self.ipv6).exploded,
            "ipv6 peer": self.ipv6_peer,
            "ipv6 peer exploded": ipaddress.IPv6Address(self.ipv6_peer).exploded,
            "idfa": self.idfa,
            "gaid": self.gaid,
        }
        forms.update({f"phone {name}": written for name, written in self.phone.items()})
        return forms


def leaks(haystack: str | bytes, forbidden: Mapping[str, str]) -> list[str]:
    """The labels of the raw forms found in ``haystack`` (case-insensitive)."""
    if isinstance(haystack, bytes):
        low = haystack.lower()
        return sorted(k for k, form in forbidden.items() if form.lower().encode() in low)
    text = haystack.lower()
    return sorted(k for k, form in forbidden.items() if form.lower() in text)


# -- where raw values could survive ----------------------------------------------------------------


async def pg_dump(dsn: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(_pg_dump_binary()),
        f"--dbname={dsn}",
        "--no-password",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"pg_dump failed: {err.decode(errors='replace')}"
    return out.decode()


def _read_wal(pgdata: Path, since: float) -> bytes:
    """Every WAL segment written since ``since`` (older ones cannot hold this test's rows)."""
    chunks = []
    for path in sorted((pgdata / "pg_wal").iterdir()):
        if path.is_file() and path.stat().st_mtime >= since:
            chunks.append(path.read_bytes())
    return b"".join(chunks)


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


class Sinks:
    """Records every answer of the watched clients; searches every sink for raw values."""

    def __init__(self, app: Any, db_dsn: str, log_stream: io.BytesIO, pg_server: Any) -> None:
        self.app = app
        self.db_dsn = db_dsn
        self.log_stream = log_stream
        self.pg_server = pg_server
        self.responses: list[httpx.Response] = []
        # Slack: file times are coarse on some file systems.
        self.started = time.time() - 2.0
        self.server_log_offset = 0
        if pg_server is not None and Path(pg_server.log).exists():
            self.server_log_offset = Path(pg_server.log).stat().st_size

    def watch(self, client: httpx.AsyncClient) -> httpx.AsyncClient:
        async def record(response: httpx.Response) -> None:
            await response.aread()
            self.responses.append(response)

        client.event_hooks = {"request": [], "response": [record]}
        return client

    async def dumps(self) -> dict[str, str]:
        return {
            "pg_dump --data-only": await pg_dump(self.db_dsn, "--data-only"),
            "pg_dump (schema and data)": await pg_dump(self.db_dsn),
        }

    def files(self) -> dict[str, bytes]:
        """The Postgres WAL and server log, when the embedded server's files are at hand."""
        if self.pg_server is None:
            return {}
        out = {"postgres WAL": _read_wal(Path(self.pg_server.pgdata), self.started)}
        log = Path(self.pg_server.log)
        if log.exists():
            out["postgres server log"] = _read_from(log, self.server_log_offset)
        return out

    async def found(self, forbidden: Mapping[str, str]) -> dict[str, list[str]]:
        """sink -> labels of the raw forms found there."""
        async with client_for(self.app) as client:
            scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        hits: dict[str, list[str]] = {}
        for name, text in (await self.dumps()).items():
            hits[name] = [
                f"{label} in {_tables_holding(text, forbidden[label])}"
                for label in leaks(text, forbidden)
            ]
        for name, blob in (await asyncio.to_thread(self.files)).items():
            hits[name] = leaks(blob, forbidden)
        hits["application log"] = leaks(self.log_stream.getvalue(), forbidden)
        hits["/metrics"] = leaks(scraped.text, forbidden)
        for i, r in enumerate(self.responses):
            where = f"answer {i} to {r.request.method} {r.request.url.path} ({r.status_code})"
            hits[f"{where} body"] = leaks(r.content, forbidden)
            headers = "\n".join(f"{k.decode()}: {v.decode()}" for k, v in r.headers.raw)
            hits[f"{where} headers"] = leaks(headers, forbidden)
        return {sink: labels for sink, labels in hits.items() if labels}

    async def assert_clean(self, forbidden: Mapping[str, str]) -> None:
        assert self.responses, "no answer was recorded: the test sent nothing"
        found = await self.found(forbidden)
        assert found == {}, f"raw values survived (sink: what): {found}"


def _tables_holding(dump: str, form: str) -> list[str]:
    """Which tables' COPY blocks in a plain-text dump hold ``form`` (for the failure message)."""
    tables: set[str] = set()
    table = "(schema)"
    for line in dump.lower().splitlines():
        if line.startswith("copy "):
            table = line.split()[1]
        elif line == "\\.":
            table = "(schema)"
        elif form.lower() in line:
            tables.add(table)
    return sorted(tables)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings, plus one trusted proxy range so forwarded addresses are used."""
    return dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))


@pytest.fixture
def canaries() -> Canaries:
    return Canaries.new()


@pytest.fixture
def sinks(app: Any, db_dsn: str, log_stream: io.BytesIO, pg_server: Any) -> Iterator[Sinks]:
    # httpx (the test's client, not the app) logs every URL it requests at INFO into the same
    # root logger; some URLs here carry canaries on purpose, so that line is the test's own noise.
    httpx_log = logging.getLogger("httpx")
    was_disabled = httpx_log.disabled
    httpx_log.disabled = True
    yield Sinks(app, db_dsn, log_stream, pg_server)
    httpx_log.disabled = was_disabled


async def _row(conn: asyncpg.Connection, message_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM events WHERE message_id = $1", message_id)
    assert row is not None, f"event {message_id} was not stored"
    opened: dict[str, Any] = await unseal(conn, row)
    return opened


def _ok(response: httpx.Response, accepted: int) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["accepted"] == accepted, body
    assert body["rejected"] == [], body
    return body


# -- valid events ----------------------------------------------------------------------------------


async def test_valid_events_store_only_documented_digests(
    app: Any, write_key: str, conn: asyncpg.Connection, canaries: Canaries, sinks: Sinks
) -> None:
    c = canaries
    digits = c.phone_digits
    async with client_for(app, peer=c.ipv4_peer) as v4, client_for(app, peer=c.ipv6_peer) as v6:
        sinks.watch(v4)
        sinks.watch(v6)
        # A single identify event from an IPv4 peer with a forged X-Forwarded-For.
        r = await v4.post(
            "/v1/events",
            json={
                "type": "identify",
                "user_id": "u-1",
                "message_id": "m-identify",
                "traits": {"email": c.email(1), "phone": c.phone["spaces"], "first_name": "Ann"},
                "context": {
                    "ip": c.ipv6,  # a browser's write key: not believed, and dropped
                    "traits": {"email": f"  {c.email(3)}  "},
                    "device": {"advertisingId": c.idfa, "model": "iPhone15,2"},
                    "page": {"url": f"https://shop.example/welcome?email={quote(c.email(9))}&u=1"},
                    "userAgent": "Mozilla/5.0",
                },
            },
            headers={**bearer(write_key), "X-Forwarded-For": f"{c.ipv4_forwarded}, {c.ipv6}"},
        )
        _ok(r, 1)
        # A batch over HTTP Basic from an IPv6 peer: emails and phones in every disguise.
        r = await v6.post(
            "/v1/events",
            json={
                "batch": [
                    {
                        "event": "Order Completed",
                        "user_id": "u-1",
                        "message_id": "m-emails",
                        "properties": {
                            "email": f"  {c.email(2).upper()}  ",
                            "contact": f"mailto:{c.email(4)}",
                            "ref": c.email(5).replace("@", "%40"),
                            "link": f"https://shop.example/?e={quote(c.email(6))}&x=1",
                            "note": f"please write to {c.email(7)} today",
                            c.email(8): True,
                            "cc": [c.email(10), "x"],
                            "ip": c.ipv4_forwarded,
                            "$ip": c.ipv4_peer,
                            "ip_address": c.ipv6,
                            "client_ip": c.ipv4_peer_int,
                            "peer": c.ipv6,
                            "idfa": c.idfa,
                            "gaid": c.gaid,
                            "total": 42,
                        },
                    },
                    {
                        "event": "Called Back",
                        "anonymous_id": "a-1",
                        "message_id": "m-phones",
                        "properties": {
                            "phone": c.phone_number,
                            "callback": c.phone["dashes"],
                            "alt": c.phone["dots"],
                            "office": c.phone["brackets"],
                            "intl": c.phone["00 prefix"],
                            "us": c.phone["nanp"],
                        },
                        "context": {"device": {"advertisingId": c.idfa, "gaid": c.gaid}},
                    },
                ]
            },
            headers={**basic(write_key), "X-Forwarded-For": c.ipv4_forwarded},
        )
        _ok(r, 2)

    identify = await _row(conn, "m-identify")
    assert identify["email_sha256"] == sha(c.email(1))
    assert identify["email_google_sha256"] == sha(c.email(1))  # not gmail: the same form
    assert identify["phone_sha256"] == sha(digits)
    assert identify["phone_e164_sha256"] == sha("+" + digits)
    assert identify["traits"] == {
        "email": sha(c.email(1)),
        "phone": sha(digits),
        "first_name": "Ann",
    }
    assert identify["context"] == {
        "traits": {"email": sha(c.email(3))},
        "device": {"model": "iPhone15,2"},
        "page": {"url": f"https://shop.example/welcome?email={sha(c.email(9))}&u=1"},
        "userAgent": "Mozilla/5.0",
    }
    # The socket peer located the event; the forged header and the untrusted context.ip did not.
    assert (identify["country"], identify["region"]) == ("US", "CA")

    emails = await _row(conn, "m-emails")
    assert emails["email_sha256"] == sha(c.email(2))  # properties.email: trimmed, lower-cased
    assert emails["email_google_sha256"] == sha(c.email(2))
    assert emails["properties"] == {
        "email": sha(c.email(2)),
        "contact": sha(c.email(4)),
        "ref": sha(c.email(5)),
        "link": f"https://shop.example/?e={sha(c.email(6))}&x=1",
        "note": f"please write to {sha(c.email(7))} today",
        sha(c.email(8)): True,
        "cc": [sha(c.email(10)), "x"],
        "total": 42,
    }
    assert (emails["country"], emails["region"]) == ("DE", "BE")

    phones = await _row(conn, "m-phones")
    assert phones["phone_sha256"] == sha(digits)
    assert phones["phone_e164_sha256"] == sha("+" + digits)
    assert phones["properties"] == dict.fromkeys(
        ["phone", "callback", "alt", "office", "intl", "us"], sha(digits)
    )
    assert phones["context"] == {"device": {}}

    assert await conn.fetchval("SELECT count(*) FROM events") == 3
    # The dump searched below is this test's database: it holds these events' digests, sealed
    # (the project is protected: not even the plain SHA-256 is in it).
    dump = (await sinks.dumps())["pg_dump --data-only"]
    assert sha(c.email(10)) not in dump
    assert sha(c.email(10)) in await unseal(conn, dump)
    await sinks.assert_clean(c.forbidden())


async def test_ip_from_every_source_is_resolved_then_dropped(
    app: Any,
    write_key: str,
    secret_key: str,
    project: dict[str, Any],
    conn: asyncpg.Connection,
    canaries: Canaries,
    sinks: Sinks,
) -> None:
    c = canaries
    async with client_for(app, peer=TRUSTED_PROXY) as proxy, client_for(app) as server:
        sinks.watch(proxy)
        sinks.watch(server)
        created = await server.post(
            f"/v1/projects/{project['id']}/keys",
            json={"server_side": True},
            headers=bearer(secret_key),
        )
        assert created.status_code == 201, created.text
        server_key = created.json()["key"]
        # Through the trusted proxy: the forwarded client address locates the event.
        r = await proxy.post(
            "/v1/events",
            json={
                "event": "Via Proxy",
                "user_id": "u-1",
                "message_id": "m-proxy",
                "properties": {"ip": c.ipv4_forwarded},
            },
            headers={**bearer(write_key), "X-Forwarded-For": f"{c.ipv4_forwarded}, 10.0.0.2"},
        )
        _ok(r, 1)
        # A partner's server, with a server-side write key, then with its secret key.
        r = await server.post(
            "/v1/events",
            json={
                "event": "From Server",
                "user_id": "u-1",
                "message_id": "m-server-key",
                "context": {"ip": c.ipv4_context, "library": {"name": "analytics-python"}},
            },
            headers=bearer(server_key),
        )
        _ok(r, 1)
        r = await server.post(
            "/v1/events",
            json={
                "batch": [
                    {
                        "event": "From Secret",
                        "user_id": "u-1",
                        "message_id": "m-secret-key",
                        "context": {"ip": c.ipv6},
                    },
                    {
                        "event": "Integer IP",
                        "user_id": "u-1",
                        "message_id": "m-int-ip",
                        "context": {"ip": c.ipv4_peer_int},
                    },
                ]
            },
            headers={**bearer(secret_key), "X-Ingest-Project-Id": project["id"]},
        )
        _ok(r, 2)

    located = {
        mid: ((row := await _row(conn, mid))["country"], row["region"], row["context"])
        for mid in ("m-proxy", "m-server-key", "m-secret-key")
    }
    assert located == {
        "m-proxy": ("GB", "ENG", {}),
        "m-server-key": ("GB", "ENG", {"library": {"name": "analytics-python"}}),
        "m-secret-key": ("DE", "BE", {}),
    }
    assert (await _row(conn, "m-int-ip"))["context"] == {}
    await sinks.assert_clean(c.forbidden())


# -- rejected and malformed input ------------------------------------------------------------------


def _nested(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    node = leaf
    for _ in range(depth):
        node = {"a": node}
    return node


async def test_rejected_events_leave_no_trace(
    client: httpx.AsyncClient,
    write_key: str,
    conn: asyncpg.Connection,
    canaries: Canaries,
    sinks: Sinks,
) -> None:
    c = canaries
    sinks.watch(client)
    batch: list[Any] = [
        {
            "event": "Kept",
            "user_id": "u-2",
            "message_id": "m-kept",
            "traits": {"email": c.email(11)},
        },
        {
            "event": "Signed Up",
            "traits": {"email": c.email(12), "phone": c.phone["spaces"]},
            "properties": {"ip": c.ipv4_peer, "idfa": c.idfa},
        },
        {
            "event": "x",
            "user_id": "u-2",
            "timestamp": c.email(13),
            "properties": {"note": f"from {c.email(14)}", "mobile": c.phone["dashes"]},
        },
        {"event": "x", "user_id": c.email(15)},
        {"event": "x", "anonymous_id": c.email(16).upper()},
        {"event": f"Invited {c.email(17)}", "user_id": "u-2"},
        {"event": "x", "user_id": c.phone["spaces"]},
        {"type": "group", "user_id": "u-2", "group_id": f"mailto:{c.email(18)}"},
        {"event": "x", "user_id": "u-2", "properties": _nested(40, {"email": c.email(19)})},
        {"event": "x", "user_id": "u-2", "properties": {"email": c.email(20), "bad": "a\x00b"}},
        {"event": "x", "user_id": "u-2", "properties": {c.email(21): {"v": "\x00"}}},
        {"type": c.email(22), "user_id": "u-2"},
        {"type": "alias", "user_id": "u-2", "previous_id": c.phone["dots"]},
        {"event": "x", "user_id": "u-2", "traits": c.email(23)},
        {"event": "x", "anonymous_id": c.email(24).replace("@", "%40")},
    ]
    r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert [(e["index"], e["code"]) for e in body["rejected"]] == [
        (1, "missing_field"),
        (2, "invalid_timestamp"),
        (3, "user_id_is_email"),
        (4, "anonymous_id_is_email"),
        (5, "pii_in_name"),
        (6, "user_id_is_phone"),
        (7, "group_id_is_email"),
        (8, "too_deep"),
        (9, "nul_character"),
        (10, "nul_character"),
        (11, "invalid_type"),
        (12, "previous_id_is_phone"),
        (13, "invalid_type"),
        (14, "anonymous_id_is_email"),
    ]

    singles: list[tuple[dict[str, Any], int, str | None]] = [
        ({"event": "x", "user_id": c.email(25)}, 400, "user_id_is_email"),
        (
            {
                "event": "x",
                "user_id": "u-2",
                "timestamp": "yesterday",
                "traits": {"email": c.email(26), "phone": c.phone["00 prefix"]},
                "context": {"ip": c.ipv4_peer},
            },
            400,
            "invalid_timestamp",
        ),
        (
            {
                "event": "x",
                "user_id": "u-2",
                "properties": {"email": c.email(27), "blob": "y" * 40_000},
            },
            413,
            "event_too_large",
        ),
    ]
    for event, status, code in singles:
        r = await client.post("/v1/events", json=event, headers=bearer(write_key))
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["code"] for e in r.json()["errors"]] == [code]

    truncated = f'{{"event":"x","user_id":"u","traits":{{"email":"{c.email(28)}"'
    r = await client.post(
        "/v1/events",
        content=truncated.encode(),
        headers={**bearer(write_key), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    r = await client.post(
        "/v1/events",
        content=f'{{"event":"x","user_id":"u","traits":{{"email":"{c.email(29)}"}}}}'.encode(),
        headers={**bearer(write_key), "Content-Type": "application/xml"},
    )
    assert r.status_code == 415, r.text
    for auth in (f"Bearer {c.email(30)}", basic(c.email(31))["Authorization"]):
        r = await client.post(
            f"/v1/events?email={quote(c.email(32))}",
            json={"event": "x", "user_id": "u", "traits": {"phone": c.phone["spaces"]}},
            headers={"Authorization": auth, "X-Forwarded-For": c.ipv4_forwarded},
        )
        assert r.status_code == 401, r.text
    r = await client.get(f"/v1/{c.email(33)}")
    assert r.status_code == 404

    assert [row["message_id"] for row in await conn.fetch("SELECT message_id FROM events")] == [
        "m-kept"
    ]
    assert (await _row(conn, "m-kept"))["email_sha256"] == sha(c.email(11))
    await sinks.assert_clean(c.forbidden())


async def test_partner_route_errors_leave_no_trace(
    client: httpx.AsyncClient,
    secret_key: str,
    write_key: str,
    project: dict[str, Any],
    conn: asyncpg.Connection,
    canaries: Canaries,
    sinks: Sinks,
) -> None:
    c = canaries
    sinks.watch(client)
    cases: list[tuple[str, Any, dict[str, str], int]] = [
        (
            "/v1/projects",
            {"name": c.email(40) * 8, "default_country": c.email(41)},
            bearer(secret_key),
            400,
        ),
        (
            "/v1/projects",
            {"name": " ", "default_country": c.phone["spaces"]},
            bearer(secret_key),
            400,
        ),
        ("/v1/projects", [c.email(42)], bearer(secret_key), 400),
        ("/v1/projects", {"name": c.email(43)}, bearer(write_key), 403),
        (
            "/v1/projects",
            {"name": c.email(44)},
            {**bearer(secret_key), "Origin": f"https://{c.ipv4_peer}"},
            403,
        ),
        (f"/v1/projects/{quote(c.email(45))}/keys", {}, bearer(secret_key), 404),
        (
            f"/v1/projects/{project['id']}/keys",
            {"server_side": c.email(46)},
            bearer(secret_key),
            400,
        ),
        (f"/v1/projects/{c.ipv6}/keys", {}, bearer(secret_key), 404),
    ]
    for path, doc, headers, status in cases:
        r = await client.post(path, json=doc, headers=headers)
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.post(
        "/v1/projects",
        content=f'{{"name": "{c.email(47)}'.encode(),
        headers={**bearer(secret_key), "Content-Type": "application/json"},
    )
    assert r.status_code == 400

    assert await conn.fetchval("SELECT count(*) FROM projects") == 1  # the fixture's own
    await sinks.assert_clean(c.forbidden())


async def test_data_subject_requests_by_email_and_phone_leave_no_trace(
    client: httpx.AsyncClient,
    secret_key: str,
    write_key: str,
    project: dict[str, Any],
    conn: asyncpg.Connection,
    canaries: Canaries,
    sinks: Sinks,
) -> None:
    """A DSR names the person by raw email or phone in its body: that value reaches no row (not
    the receipt, the suppressions, the audit log or the idempotency cache), no log line and no
    answer, in valid, replayed and refused requests alike."""
    c = canaries
    sinks.watch(client)
    pid = project["id"]
    batch = [
        {
            "type": "identify",
            "user_id": f"u-{n}",
            "traits": {"email": c.email(60 + n), "phone": written},
        }
        for n, written in enumerate(c.phone.values())
    ]
    r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
    _ok(r, len(batch))
    partner = bearer(secret_key)
    # Access, then erasure, by every written form; each erasure with an Idempotency-Key, sent
    # twice (the replay comes from the cache).
    for n, written in enumerate(c.phone.values()):
        email = f"  {c.email(60 + n).upper()} " if n % 2 else f"mailto:{c.email(60 + n)}"
        for body in ({"email": email}, {"phone": written}):
            r = await client.post(f"/v1/projects/{pid}/events/export", json=body, headers=partner)
            assert r.status_code == 200, r.text
            headers = {**partner, "Idempotency-Key": f"erase-{c.run}-{n}-{sorted(body)[0]}"}
            for _ in range(2):
                r = await client.post(
                    f"/v1/projects/{pid}/events/erase", json=body, headers=headers
                )
                assert r.status_code == 200, r.text
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
    # Refused requests that carry the values.
    for body in (
        {"email": c.email(70), "phone": c.phone["spaces"]},
        {"email_sha256": c.email(71)},
        {"phone": c.email(72)},
        {"phone_sha256": c.phone["dashes"]},
    ):
        r = await client.post(f"/v1/projects/{pid}/events/erase", json=body, headers=partner)
        assert r.status_code == 400, r.text
    r = await client.post(
        f"/v1/projects/{pid}/events/export",
        json={"email": c.email(73)},
        headers={**partner, "Idempotency-Key": c.email(74)},
    )
    assert r.status_code == 200, r.text
    for path in ("/v1/audit-log", f"/v1/projects/{pid}/erasures"):
        r = await client.get(path, headers=partner)
        assert r.status_code == 200, r.text
    await sinks.assert_clean(c.forbidden())


# -- PII where the scrubber does not look for it: keys and envelope fields -------------------------


def _envelope_case(c: Canaries, case: str) -> tuple[dict[str, Any], dict[str, str]]:
    """An event carrying one canary in an unusual place, and the raw forms it must not leave."""
    phone = {"phone spaces": c.phone["spaces"], "phone digits": c.phone_digits}
    if case == "event name is a phone number":
        return {"event": c.phone["spaces"], "user_id": "u"}, phone
    if case == "message_id is an email":
        return {"event": "x", "user_id": "u", "message_id": c.email(50)}, {"email": c.email(50)}
    if case == "app_id is an email":
        return {"event": "x", "user_id": "u", "app_id": c.email(51)}, {"email": c.email(51)}
    if case == "property key is a phone number":
        return {"event": "x", "user_id": "u", "properties": {c.phone["spaces"]: 1}}, phone
    if case == "property key is an IPv6 address":
        return (
            {"event": "x", "user_id": "u", "properties": {"seen": {c.ipv6: 3}}},
            {"ipv6": c.ipv6},
        )
    if case == "phone sent as a JSON float":
        return (
            {"event": "x", "user_id": "u", "properties": {"phone": float(c.phone_number)}},
            phone,
        )
    if case == "rejected event under a phone-number key":
        return (
            {"event": "x", "user_id": "u", "properties": {c.phone["spaces"]: {"v": "\x00"}}},
            phone,
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "event name is a phone number",
        "message_id is an email",
        "app_id is an email",
        "property key is a phone number",
        "property key is an IPv6 address",
        "phone sent as a JSON float",
        "rejected event under a phone-number key",
    ],
)
async def test_pii_in_keys_and_envelope_fields_is_not_kept(
    client: httpx.AsyncClient, write_key: str, canaries: Canaries, sinks: Sinks, case: str
) -> None:
    """DESIGN: email and phone 'anywhere in an event'; T13: scan keys and event names too.
    Refusing the event or hashing the value both keep the promise; storing it raw does not."""
    event, forbidden = _envelope_case(canaries, case)
    sinks.watch(client)
    r = await client.post("/v1/events", json={"batch": [event]}, headers=bearer(write_key))
    assert r.status_code == 200, r.text
    await sinks.assert_clean(forbidden)


# -- negative controls: the searches find what they look for ---------------------------------------


async def test_control_every_search_finds_a_planted_canary(
    client: httpx.AsyncClient, conn: asyncpg.Connection, canaries: Canaries, sinks: Sinks
) -> None:
    """Each raw form, written straight into a row, is found in both dumps (and in the WAL): a
    clean search elsewhere in this module is evidence, not an accident of the search."""
    forbidden = canaries.forbidden()
    planted = " | ".join(form.upper() for form in forbidden.values())  # case must not matter
    # Three copies: a WAL record that crosses an 8 kB WAL page has a page header spliced into
    # it, so one copy of a form can straddle that seam and hide from a byte search.
    for _ in range(3):
        await conn.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, $2)", uuid.uuid4(), planted
        )
    sinks.watch(client)
    answer = await client.get("/healthz")
    assert answer.status_code == 200
    found = await sinks.found(forbidden)
    in_org = [f"{label} in ['public.organizations']" for label in sorted(forbidden)]
    assert found.get("pg_dump --data-only") == in_org
    assert found.get("pg_dump (schema and data)") == in_org
    if sinks.pg_server is not None:
        assert found.get("postgres WAL") == sorted(forbidden)
    assert "application log" not in found


async def test_control_log_search_sees_what_the_app_writes(
    app: Any, log_stream: io.BytesIO, canaries: Canaries
) -> None:
    """A harmless marker built like the canaries reaches the log verbatim and is found there."""
    structlog.get_logger("tests.privacy").info("marker", note=f"cnry-{canaries.run}-marker")
    assert leaks(log_stream.getvalue(), canaries.forbidden()) == ["email (any canary's local part)"]


# -- the last line of defence: the log redaction processor -----------------------------------------


LOG_FIELD_CASES = {
    "email": ("email", "[email]"),
    "email %40": ("email %40", "[email]"),
    "phone +": ("phone spaces", "[phone]"),
    "phone dashes": ("phone dashes", "[phone]"),
    "phone 00 prefix": ("phone 00 prefix", "[phone]"),
    "phone nanp": ("phone nanp", "[phone]"),
    "ipv4": ("ipv4 peer", "[ip]"),
    "ipv6": ("ipv6", "[ip]"),
}


def _raw(c: Canaries, label: str) -> str:
    return {
        "email": c.email(60),
        "email %40": c.email(61).replace("@", "%40"),
        "phone spaces": c.phone["spaces"],
        "phone dashes": c.phone["dashes"],
        "phone 00 prefix": c.phone["00 prefix"],
        "phone nanp": c.phone["nanp"],
        "ipv4 peer": c.ipv4_peer,
        "ipv6": c.ipv6,
    }[label]


@pytest.mark.parametrize("case", sorted(LOG_FIELD_CASES))
async def test_log_redaction_masks_pii_in_fields(
    log_stream: io.BytesIO, canaries: Canaries, case: str
) -> None:
    label, mask = LOG_FIELD_CASES[case]
    raw = _raw(canaries, label)
    structlog.get_logger("tests.privacy").info("x", note=raw, nested={"list": [f"see {raw} now"]})
    written = log_stream.getvalue().decode()
    assert raw.lower() not in written.lower()
    assert written.count(mask) == 2, written


async def test_log_redaction_masks_pii_in_the_message_itself(
    log_stream: io.BytesIO, canaries: Canaries
) -> None:
    """An f-string message is the commonest way PII reaches a log."""
    email = canaries.email(62)
    structlog.get_logger("tests.privacy").warning(f"could not deliver to {email}")
    written = log_stream.getvalue().decode()
    assert email not in written
    assert "[email]" in written


async def test_log_redaction_masks_pii_in_foreign_stdlib_records(
    log_stream: io.BytesIO, canaries: Canaries
) -> None:
    """asyncpg's and uvicorn's records go through the same chain (T15: 'Failing row
    contains ...' carries row data)."""
    email, ip = canaries.email(63), canaries.ipv4_peer
    logging.getLogger("asyncpg").error("Failing row contains (%s, %s).", email, ip)
    written = log_stream.getvalue().decode()
    assert written, "the stdlib record was not written at all"
    assert leaks(written, {"email": email, "ip": ip}) == []


async def test_segment_device_ids_are_not_stored(
    client: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    """context.device.id (IDFV / Android ID) and the ad ids go; other device fields stay."""
    r = await client.post(
        "/v1/events",
        json={
            "event": "Opened",
            "user_id": "u",
            "context": {
                "device": {
                    "id": "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB",
                    "advertisingId": "7A3CBEA0-BDF5-11E4-8DFC-AA07A5B093DB",
                    "manufacturer": "Apple",
                    "model": "iPhone7,2",
                },
                "order": {"id": "kept-1"},
            },
        },
        headers={"Authorization": f"Bearer {write_key}"},
    )
    assert r.status_code == 200
    context = await conn.fetchval("SELECT context FROM events")
    assert context["device"] == {"manufacturer": "Apple", "model": "iPhone7,2"}
    assert context["order"] == {"id": "kept-1"}
