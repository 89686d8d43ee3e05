"""The partner console over HTTP: sign-in and sessions, CSRF, every page's effect in the
database, and no raw identifier in anything it serves. The browser test
(test_console_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import ipaddress
import re
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import basic, bearer, client_for

EMAIL = "Jane.Doe+news@Example.com"
PHONE = "+1 (415) 555-0142"
IP = "203.0.113.77"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def one(conn: asyncpg.Connection, query: str, *args: Any) -> asyncpg.Record:
    row = await conn.fetchrow(query, *args)
    assert row is not None, query
    return row


def field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> str:
    """Sign in; the CSRF token of the session."""
    r = await client.post("/console/sign-in", data={"key": key})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/projects"
    page = await client.get("/console/projects")
    assert page.status_code == 200
    return field(page.text, "csrf")


@pytest.fixture
async def console(client: httpx.AsyncClient, secret_key: str) -> tuple[httpx.AsyncClient, str]:
    return client, await sign_in(client, secret_key)


# -- sign-in, sessions --------------------------------------------------------------------


async def test_sign_in_opens_a_server_side_session_with_a_strict_cookie(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    r = await client.post("/console/sign-in", data={"key": secret_key})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("ingest_console=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http (local development)
    token = cookie.split(";")[0].split("=", 1)[1]
    assert secret_key not in cookie
    # The database keeps the token's digest only, and never the key.
    rows = await conn.fetch("SELECT id_digest, csrf_token FROM console_sessions")
    assert [bytes(r["id_digest"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    dump = str([dict(r) for r in await conn.fetch("SELECT * FROM console_sessions")])
    assert token not in dump
    assert secret_key not in dump


async def test_over_https_the_cookie_is_secure_and_host_prefixed(app: Any, secret_key: str) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest.test") as c:
        r = await c.post("/console/sign-in", data={"key": secret_key})
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-ingest_console=")
        assert "Secure" in cookie
        assert "Path=/;" in cookie + ";"
        assert (await c.get("/console/projects")).status_code == 200


async def test_behind_a_trusted_proxy_that_ends_tls_the_cookie_is_secure_too(
    settings: Settings, secret_key: str
) -> None:
    proxied = dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    async with LifespanManager(create_app(proxied, metrics=Metrics())) as manager:
        https = {"X-Forwarded-Proto": "https"}
        async with client_for(manager.app, "10.1.2.3") as c:
            r = await c.post("/console/sign-in", data={"key": secret_key}, headers=https)
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-ingest_console=")
            assert "Secure" in cookie
        async with client_for(manager.app, "203.0.113.9") as c:
            # Not a trusted proxy: its header is not believed.
            r = await c.post("/console/sign-in", data={"key": secret_key}, headers=https)
            assert r.headers["set-cookie"].startswith("ingest_console=")
            assert "Secure" not in r.headers["set-cookie"]


async def test_a_wrong_key_is_refused_with_a_clear_message_and_nothing_is_opened(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    r = await client.post("/console/sign-in", data={"key": "isk_" + "x" * 43})
    assert r.status_code == 401
    assert "not a working secret key" in r.text
    assert "set-cookie" not in r.headers
    r = await client.post("/console/sign-in", data={"key": write_key})
    assert r.status_code == 401
    assert "write key" in r.text
    assert write_key not in r.text  # the typed key is not put back into the page
    assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 0
    assert (await client.get("/console/projects")).headers["location"] == "/console/sign-in"


async def test_failed_sign_ins_are_rate_limited_per_address(
    settings: Settings, secret_key: str, log_stream: io.BytesIO
) -> None:
    limited = dataclasses.replace(settings, console_signin_per_minute=3)
    async with LifespanManager(create_app(limited, metrics=Metrics())) as manager:
        async with client_for(manager.app, "198.51.100.7") as c:
            for _ in range(3):
                assert (await c.post("/console/sign-in", data={"key": "nope"})).status_code == 401
            r = await c.post("/console/sign-in", data={"key": "nope"})
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert "Too many failed sign-ins" in r.text
            # Even the right key waits: guessing cannot go on by mixing in a good try.
            r = await c.post("/console/sign-in", data={"key": secret_key})
            assert r.status_code == 429
        async with client_for(manager.app, "198.51.100.8") as other:
            # Another address is not held back.
            r = await other.post("/console/sign-in", data={"key": secret_key})
            assert r.status_code == 303
    assert b"198.51.100.7" not in log_stream.getvalue()


async def test_an_expired_session_sends_the_user_back_to_sign_in(
    console: tuple[httpx.AsyncClient, str], conn: asyncpg.Connection
) -> None:
    client, _ = console
    assert (await client.get("/console/projects")).status_code == 200
    await conn.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    r = await client.get("/console/projects")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?expired=1"
    page = await client.get(r.headers["location"])
    assert "Your session ended" in page.text
    # The live view's feed answers its script with a 401 rather than a page.
    feed = await client.get(f"/console/projects/{uuid.uuid4()}/live/feed")
    assert feed.status_code == 401
    assert feed.json() == {"signed_out": True}


async def test_sessions_slide_on_use_within_the_idle_limit_and_stop_at_the_absolute_one(
    settings: Settings, secret_key: str, conn: asyncpg.Connection
) -> None:
    short = dataclasses.replace(settings, console_idle_s=600, console_max_s=900)
    async with (
        LifespanManager(create_app(short, metrics=Metrics())) as manager,
        client_for(manager.app) as c,
    ):
        await sign_in(c, secret_key)
        left = await conn.fetchval("SELECT expires_at - now() FROM console_sessions")
        assert 590 <= left.total_seconds() <= 600
        # Signed in 850 s ago: the next request may extend it to created_at + 900 only.
        await conn.execute(
            "UPDATE console_sessions SET created_at = now() - interval '850 seconds'"
        )
        assert (await c.get("/console/projects")).status_code == 200
        left = await conn.fetchval("SELECT expires_at - now() FROM console_sessions")
        assert 40 <= left.total_seconds() <= 50


async def test_signing_out_ends_the_session_on_the_server(
    console: tuple[httpx.AsyncClient, str], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    cookie = client.cookies.get("ingest_console")
    r = await client.post("/console/sign-out", data={"csrf": csrf})
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?signed_out=1"
    assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 0
    # The old cookie, replayed, opens nothing.
    client.cookies.set("ingest_console", cookie or "", domain="ingest.test", path="/console")
    assert (await client.get("/console/projects")).status_code == 303


async def test_revoking_the_key_ends_its_sessions(
    console: tuple[httpx.AsyncClient, str], secret_key: str, org: dict[str, Any]
) -> None:
    client, _ = console
    other = await client.post("/v1/keys", headers=bearer(secret_key))
    assert other.status_code == 201
    revoked = await client.delete(
        f"/v1/keys/{org['secret_key']['id']}", headers=bearer(other.json()["key"])
    )
    assert revoked.status_code == 200, revoked.text
    assert (await client.get("/console/projects")).status_code == 303


# -- CSRF -----------------------------------------------------------------------------------


async def test_a_form_without_the_sessions_token_changes_nothing(
    console: tuple[httpx.AsyncClient, str], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    before = await conn.fetchval("SELECT count(*) FROM projects")
    for data in ({"name": "Evil"}, {"name": "Evil", "csrf": "x" * len(csrf)}):
        r = await client.post("/console/projects", data=data)
        assert r.status_code == 403
        assert "did not come from this console" in r.text
    r = await client.post(
        "/console/projects",
        data={"name": "Evil", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    r = await client.post("/console/sign-out", data={"next": "/"})
    assert r.status_code == 403
    assert await conn.fetchval("SELECT count(*) FROM projects") == before
    assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 1


async def test_sign_in_from_another_site_is_refused(
    client: httpx.AsyncClient, secret_key: str
) -> None:
    r = await client.post(
        "/console/sign-in", data={"key": secret_key}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    assert "set-cookie" not in r.headers


async def test_pages_forbid_framing_inline_script_and_caching(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = console
    r = await client.get("/console/projects")
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store"
    assert "<script>" not in r.text  # every script is a file: the policy allows no other


# -- projects and keys ----------------------------------------------------------------------


async def test_create_a_project_shows_its_write_key_once_and_audits_as_the_sessions_key(
    console: tuple[httpx.AsyncClient, str],
    conn: asyncpg.Connection,
    org: dict[str, Any],
) -> None:
    client, csrf = console
    page = await client.get("/console/projects")
    idem = field(page.text, "idem")
    form = {"csrf": csrf, "idem": idem, "name": "Shop", "default_country": "GB"}
    r = await client.post("/console/projects", data=form)
    assert r.status_code == 201
    new_key = re.search(r'id="new-key"[^>]*value="(iwk_[^"]+)"', r.text)
    assert new_key
    project = await one(conn, "SELECT id, name, default_country FROM projects")
    assert (project["name"], project["default_country"]) == ("Shop", "GB")
    # The key works for events.
    sent = await client.post(
        "/v1/events",
        json={"type": "track", "event": "Signed Up", "userId": "u1"},
        headers=basic(new_key.group(1)),
    )
    assert sent.status_code == 200
    # Sent twice (a reload, a double click): one project, and the secret is not shown again.
    again = await client.post("/console/projects", data=form)
    assert again.status_code == 409
    assert "iwk_" not in again.text.replace(new_key.group(1)[:12], "")
    assert await conn.fetchval("SELECT count(*) FROM projects") == 1
    audit = await conn.fetch("SELECT action, key_id FROM audit_log ORDER BY seq")
    assert [a["action"] for a in audit] == ["project.create", "key.create"]
    assert {str(a["key_id"]) for a in audit} == {org["secret_key"]["id"]}
    # Another project is listed on the projects page.
    listing = await client.get("/console/projects")
    assert f"/console/projects/{project['id']}" in listing.text


async def test_an_invalid_project_name_is_refused_with_the_field_named(
    console: tuple[httpx.AsyncClient, str], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    r = await client.post("/console/projects", data={"csrf": csrf, "idem": "", "name": " "})
    assert r.status_code == 400  # the partner API's own answer to that body
    assert 'class="err"' in r.text
    assert await conn.fetchval("SELECT count(*) FROM projects") == 0


async def test_settings_are_saved_and_refused_values_say_why(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    url = f"/console/projects/{project['id']}"
    form = {
        "csrf": csrf,
        "idem": str(uuid.uuid4()),
        "name": "Web shop",
        "default_country": "de",
        "events_retention_days": "30",
        "dedup_window_days": "2",
        "forward_queue_days": "3",
        "dead_letter_days": "5",
        "allowed_origins": "https://shop.example\r\nhttps://www.shop.example",
        "identifier_pii": "hash",
        "digest_storage": "plain",
    }
    r = await client.post(url, data=form)
    assert r.status_code == 200, r.text
    assert "Settings saved" in r.text
    row = await one(conn, "SELECT * FROM projects WHERE id = $1", uuid.UUID(project["id"]))
    assert row["name"] == "Web shop"
    assert row["default_country"] == "DE"
    assert (row["events_retention_days"], row["dedup_window_days"]) == (30, 2)
    assert (row["forward_queue_days"], row["dead_letter_days"]) == (3, 5)
    assert list(row["allowed_origins"]) == ["https://shop.example", "https://www.shop.example"]
    assert row["identifier_pii"] == "hash"
    assert row["digest_storage"] == "plain"
    bad = {**form, "idem": str(uuid.uuid4()), "events_retention_days": "forever"}
    r = await client.post(url, data=bad)
    assert r.status_code == 400
    assert 'class="err"' in r.text
    assert "events_retention_days" in r.text
    row = await one(conn, "SELECT * FROM projects WHERE id = $1", uuid.UUID(project["id"]))
    assert row["events_retention_days"] == 30


async def test_write_keys_are_created_rotated_with_grace_and_revoked(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    base = f"/console/projects/{project['id']}/keys"
    r = await client.post(base, data={"csrf": csrf, "idem": str(uuid.uuid4())})
    assert r.status_code == 201
    created = re.search(r'id="new-key"[^>]*value="(iwk_[^"]+)"', r.text)
    assert created
    key_id = await conn.fetchval(
        "SELECT id FROM api_keys WHERE display_prefix = $1", created.group(1)[:12]
    )
    r = await client.post(
        f"{base}/{key_id}",
        data={"csrf": csrf, "idem": str(uuid.uuid4()), "action": "rotate", "grace_hours": "2"},
    )
    assert r.status_code == 201
    assert re.search(r'id="new-key"[^>]*value="iwk_', r.text)
    left = await conn.fetchval("SELECT expires_at - now() FROM api_keys WHERE id = $1", key_id)
    assert 7100 <= left.total_seconds() <= 7200
    r = await client.post(
        f"{base}/{key_id}", data={"csrf": csrf, "idem": str(uuid.uuid4()), "action": "revoke"}
    )
    assert r.status_code == 200
    assert await conn.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1", key_id)


async def test_the_organizations_last_secret_key_cannot_be_revoked_from_the_console(
    console: tuple[httpx.AsyncClient, str], org: dict[str, Any], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    r = await client.post(
        f"/console/keys/{org['secret_key']['id']}",
        data={"csrf": csrf, "idem": str(uuid.uuid4()), "action": "revoke"},
    )
    assert r.status_code == 409
    assert 'class="problem"' in r.text
    assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 1
    r = await client.post("/console/keys", data={"csrf": csrf, "idem": str(uuid.uuid4())})
    assert r.status_code == 201
    assert re.search(r'id="new-key"[^>]*value="isk_', r.text)


# -- live events ----------------------------------------------------------------------------


async def test_the_live_feed_lists_stored_and_refused_events_newest_first(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], write_key: str
) -> None:
    client, _ = console
    feed = f"/console/projects/{project['id']}/live/feed"
    first = (await client.get(feed)).json()
    assert first["events"] == []
    assert first["rejected"] == []
    batch = {
        "batch": [
            {"type": "track", "event": "Viewed", "userId": "u1", "messageId": "m-1"},
            {"type": "nonsense"},
            {"type": "page", "name": "Home", "anonymousId": "a1", "messageId": "m-2"},
        ]
    }
    r = await client.post("/v1/batch", json=batch, headers=basic(write_key))
    assert r.status_code == 200, r.text
    body = (await client.get(feed, params={"since": first["now"]})).json()
    assert {e["message_id"] for e in body["events"]} == {"m-1", "m-2"}
    assert all(e["country"] is None or len(e["country"]) == 2 for e in body["events"])
    assert [(x["code"], x["field"]) for x in body["rejected"]] == [("invalid_type", "type")]
    # Another project's feed shows none of them; a project of another org is not found.
    r = await client.get(f"/console/projects/{uuid.uuid4()}/live/feed")
    assert r.status_code == 404
    page = await client.get(f"/console/projects/{project['id']}/live")
    assert page.status_code == 200
    assert "live.js" in page.text


async def test_a_refused_event_is_listed_without_any_value_from_it(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], write_key: str
) -> None:
    client, _ = console
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["k"] = {}
        node = node["k"]
    batch = {
        "batch": [
            # Refused for the id, which is an email: the id must not reach the console.
            {"type": "identify", "userId": EMAIL},
            # Refused for nesting, under a property key that is an email address.
            {"type": "track", "event": "x", "userId": "u", "properties": {EMAIL: deep}},
        ]
    }
    r = await client.post("/v1/batch", json=batch, headers=basic(write_key))
    assert r.status_code == 200
    assert len(r.json()["rejected"]) == 2
    body = (await client.get(f"/console/projects/{project['id']}/live/feed")).content
    refused = orjson.loads(body)["rejected"]
    assert {x["code"] for x in refused} == {"user_id_is_email", "too_deep"}
    assert EMAIL.encode() not in body
    assert b"Example.com" not in body


# -- data-subject requests ------------------------------------------------------------------


async def _events_for_jane(client: httpx.AsyncClient, write_key: str) -> None:
    r = await client.post(
        "/v1/batch",
        json={
            "batch": [
                {"type": "identify", "userId": "jane", "traits": {"email": EMAIL, "plan": "pro"}},
                {"type": "track", "event": "Bought", "userId": "jane", "messageId": "b1"},
                {"type": "track", "event": "Viewed", "userId": "joe", "messageId": "v1"},
            ]
        },
        headers=basic(write_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3


async def test_look_up_a_person_by_email_without_the_email_reaching_page_url_or_log(
    console: tuple[httpx.AsyncClient, str],
    project: dict[str, Any],
    write_key: str,
    log_stream: io.BytesIO,
) -> None:
    client, csrf = console
    await _events_for_jane(client, write_key)
    url = f"/console/projects/{project['id']}/people"
    r = await client.post(url, data={"csrf": csrf, "field": "email", "value": EMAIL})
    assert r.status_code == 200
    assert str(r.url).endswith(url)  # the value went in the body, not the address
    assert "<strong>1</strong> stored event" in r.text
    normalized = "jane.doe+news@example.com"
    assert _sha(normalized)[:12] in r.text
    for raw in (EMAIL, normalized, "Jane.Doe", "jane.doe"):
        assert raw not in r.text
        assert raw.encode() not in log_stream.getvalue()
    # By user id: the count and the current state (identify traits).
    r = await client.post(url, data={"csrf": csrf, "field": "user_id", "value": "jane"})
    assert "<strong>2</strong> stored events" in r.text
    assert '"plan": "pro"' in r.text
    r = await client.post(url, data={"csrf": csrf, "field": "email", "value": "not an email"})
    assert r.status_code == 422
    assert "not an email address" in r.text


async def test_export_downloads_the_persons_events_as_ndjson(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], write_key: str
) -> None:
    client, csrf = console
    await _events_for_jane(client, write_key)
    base = f"/console/projects/{project['id']}/people"
    found = await client.post(base, data={"csrf": csrf, "field": "user_id", "value": "jane"})
    r = await client.post(
        base + "/export",
        data={
            "csrf": csrf,
            "kind": field(found.text, "kind"),
            "values": field(found.text, "values"),
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"].startswith('attachment; filename="export-user_id-')
    lines = [orjson.loads(line) for line in r.content.splitlines()]
    assert [e["user_id"] for e in lines] == ["jane", "jane"]
    # One batch: both share received_at, and the export orders them by message id.
    (identify,) = [e for e in lines if e["type"] == "identify"]
    assert identify["email_sha256"] == _sha("jane.doe+news@example.com")
    assert identify["traits"] == {"email": _sha("jane.doe+news@example.com"), "plan": "pro"}


async def test_erase_asks_for_confirmation_then_erases_and_shows_the_receipt(
    console: tuple[httpx.AsyncClient, str],
    project: dict[str, Any],
    write_key: str,
    conn: asyncpg.Connection,
    org: dict[str, Any],
) -> None:
    client, csrf = console
    await _events_for_jane(client, write_key)
    base = f"/console/projects/{project['id']}/people"
    found = await client.post(base, data={"csrf": csrf, "field": "email", "value": EMAIL})
    person = {"csrf": csrf, "kind": "email", "values": field(found.text, "values")}
    assert person["values"] == _sha("jane.doe+news@example.com")
    confirm = await client.post(base + "/erase", data=person)
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.text
    assert await conn.fetchval("SELECT count(*) FROM events") == 3  # not yet
    r = await client.post(base + "/erase", data={**person, "confirm": "erase"})
    assert r.status_code == 200
    assert "The person is erased" in r.text
    # The email's events and those of the user they link to are gone; joe's stay.
    assert [r["user_id"] for r in await conn.fetch("SELECT user_id FROM events")] == ["joe"]
    receipt = await one(conn, "SELECT id, status FROM erasures")
    assert receipt["status"] == "completed"
    assert str(receipt["id"]) in r.text
    listing = await client.get(base)
    assert f"/erasures/{receipt['id']}" in listing.text
    shown = await client.get(f"/console/projects/{project['id']}/erasures/{receipt['id']}")
    assert shown.status_code == 200
    assert str(receipt["id"]) in shown.text
    audit = await one(conn, "SELECT key_id FROM audit_log WHERE action = 'subject.erase'")
    assert str(audit["key_id"]) == org["secret_key"]["id"]


async def test_a_tampered_person_field_is_refused(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any]
) -> None:
    client, csrf = console
    base = f"/console/projects/{project['id']}/people"
    for data in (
        {"kind": "email", "values": "jane@example.com"},
        {"kind": "nobody", "values": "x"},
        {"kind": "user_id", "values": ""},
    ):
        r = await client.post(base + "/erase", data={"csrf": csrf, "confirm": "erase", **data})
        assert r.status_code in (400, 422), r.text


# -- audit log, operations ------------------------------------------------------------------


async def test_the_audit_log_page_filters_by_action_and_pages(
    console: tuple[httpx.AsyncClient, str], secret_key: str
) -> None:
    client, _ = console
    for i in range(3):
        r = await client.post("/v1/projects", json={"name": f"P{i}"}, headers=bearer(secret_key))
        assert r.status_code == 201
    page = await client.get("/console/audit", params={"action": "project.create"})
    assert page.status_code == 200
    assert page.text.count("<td>project.create</td>") == 3
    assert "<td>key.create</td>" not in page.text
    bad = await client.get("/console/audit", params={"key_id": "not-a-key"})
    assert bad.status_code == 400
    assert "key_id" in bad.text


async def test_operations_shows_the_scraped_metrics(
    console: tuple[httpx.AsyncClient, str], write_key: str
) -> None:
    client, _ = console
    for _ in range(2):
        r = await client.post(
            "/v1/track", json={"event": "x", "userId": "u"}, headers=basic(write_key)
        )
        assert r.status_code == 200
    page = await client.get("/console/operations")
    assert page.status_code == 200
    assert re.search(r'id="accepted">2<', page.text)
    feed = (await client.get("/console/operations/feed")).json()
    assert feed["accepted"] == 2
    assert feed["geoip_build"] is not None
    assert feed["p99_seconds"] is not None
    # The service's requests so far: the project's creation (the write_key fixture) and the
    # two events. The console's own pages, several by now, are not the service's latency.
    assert feed["latency_buckets"][-1] == ["+Inf", 3]


# -- nothing raw ---------------------------------------------------------------------------


@pytest.fixture
async def canaries_sent(client: httpx.AsyncClient, write_key: str) -> None:
    """Events carrying raw canaries in every place an SDK puts them, valid and refused."""
    batch = [
        {
            "type": "identify",
            "userId": "canary-user",
            "traits": {"email": EMAIL, "phone": PHONE, "note": f"call {PHONE} or {EMAIL}"},
            "context": {"ip": IP, "traits": {"email": EMAIL}},
        },
        {
            "type": "track",
            "event": "Checkout",
            "userId": "canary-user",
            "properties": {"contact": EMAIL, "ip": IP},
        },
        {"type": "identify", "userId": EMAIL},
        {"type": "identify", "anonymousId": PHONE},
    ]
    r = await client.post(
        "/v1/batch",
        json={"batch": batch},
        headers={**basic(write_key), "X-Forwarded-For": IP},
    )
    assert r.status_code == 200, r.text


async def test_no_page_or_feed_of_the_console_carries_a_raw_canary(
    console: tuple[httpx.AsyncClient, str],
    project: dict[str, Any],
    canaries_sent: None,
    log_stream: io.BytesIO,
) -> None:
    client, csrf = console
    pid = project["id"]
    base = f"/console/projects/{pid}"
    answers = [
        await client.get("/console/projects"),
        await client.get(base),
        await client.get(base + "/live"),
        await client.get(base + "/live/feed"),
        await client.get(base + "/people"),
        await client.post(base + "/people", data={"csrf": csrf, "field": "email", "value": EMAIL}),
        await client.post(base + "/people", data={"csrf": csrf, "field": "phone", "value": PHONE}),
        await client.post(
            base + "/people", data={"csrf": csrf, "field": "user_id", "value": "canary-user"}
        ),
        await client.get("/console/audit"),
        await client.get("/console/operations"),
        await client.get("/console/operations/feed"),
    ]
    feed = answers[3].json()
    assert len(feed["events"]) == 2
    assert len(feed["rejected"]) == 2
    digits = re.sub(r"\D", "", PHONE)
    for answer in answers:
        assert answer.status_code == 200, answer.url
        text = answer.text
        for raw in (EMAIL, EMAIL.lower(), PHONE, digits, "+" + digits, IP):
            assert raw not in text, (raw, answer.url)
    logged = log_stream.getvalue()
    for raw in (EMAIL, EMAIL.lower(), PHONE, digits, IP):
        assert raw.encode() not in logged


async def test_an_id_in_a_console_address_that_is_not_an_id_is_a_404(
    console: tuple[httpx.AsyncClient, str], project: dict[str, Any], conn: asyncpg.Connection
) -> None:
    client, csrf = console
    for path in (
        "/console/projects/not-an-id",
        f"/console/projects/{project['id']}/erasures/x%3Fy",
        "/console/projects/%2E%2E",
    ):
        assert (await client.get(path)).status_code == 404, path
    r = await client.post(
        "/console/keys/x%3Fy", data={"csrf": csrf, "idem": str(uuid.uuid4()), "action": "revoke"}
    )
    assert r.status_code == 404
    assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL") == 0


async def test_crypto_shred_from_the_project_page(
    console: tuple[httpx.AsyncClient, str],
    project: dict[str, Any],
    write_key: str,
    conn: asyncpg.Connection,
) -> None:
    client, csrf = console
    await _events_for_jane(client, write_key)
    before = await conn.fetchval("SELECT sealed_keys FROM projects")
    url = f"/console/projects/{project['id']}/crypto-shred"
    r = await client.post(url, data={"csrf": csrf, "idem": str(uuid.uuid4())})
    assert r.status_code == 200
    assert "Crypto-shredded" in r.text
    assert await conn.fetchval("SELECT sealed_keys FROM projects") != before
    audit = await conn.fetchval("SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1")
    assert audit == "project.crypto_shred"
    # The person can no longer be found by their email; the events stay.
    base = f"/console/projects/{project['id']}/people"
    found = await client.post(base, data={"csrf": csrf, "field": "email", "value": EMAIL})
    assert "<strong>0</strong> stored events" in found.text
    assert await conn.fetchval("SELECT count(*) FROM events") == 3
    r = await client.post(url, data={"idem": str(uuid.uuid4())})
    assert r.status_code == 403  # without the session's token
