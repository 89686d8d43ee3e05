"""Segment's Tracking API: every path, both key forms, the SDKs' bodies, settings, CORS."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.cli import _create_org
from ingest.config import Settings
from tests.conftest import basic, bearer, client_for, new_id, unseal

SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}
BODIES: dict[str, dict[str, Any]] = {
    "track": {"event": "Order Completed", "properties": {"total": 3}},
    "identify": {"traits": {"plan": "pro"}},
    "page": {"name": "Home", "category": "Docs", "properties": {"path": "/"}},
    "screen": {"name": "Settings"},
    "group": {"groupId": "g-1", "traits": {"seats": 4}},
    "alias": {"previousId": "old-1"},
}


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM events ORDER BY timestamp, message_id")
    return [await unseal(conn, r) for r in rows]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 100):
        yield data[i : i + 100]


class TestPaths:
    @pytest.mark.parametrize("path", [*SHORT, *SHORT.values()])
    async def test_each_single_path_stores_the_type_it_implies(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, path: str
    ) -> None:
        """/v1/t and /v1/track alike store a track; the route wins over a type in the body."""
        kind = SHORT.get(path, path)
        mid = new_id()
        body = {**BODIES[kind], "userId": "u-1", "messageId": mid, "type": "bogus"}
        r = await client.post(f"/v1/{path}", json=body, headers=basic(write_key))
        assert r.status_code == 200, r.text
        assert (r.json()) == {
            "success": True,
            "accepted": 1,
            "duplicates": 0,
            "rejected": [],
            "warnings": [],
        }
        [row] = await _rows(conn)
        assert (kind, mid, "u-1") == (row["type"], row["message_id"], row["user_id"])

    async def test_spec_fields_map_onto_the_event(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """page name/category, group groupId, alias previousId, context; integrations dropped."""
        base = {"anonymousId": "a-1", "integrations": {"All": False}, "context": {"locale": "fr"}}
        for path, body in (("p", BODIES["page"]), ("g", BODIES["group"]), ("a", BODIES["alias"])):
            r = await client.post(f"/v1/{path}", json={**base, **body}, headers=basic(write_key))
            assert r.status_code == 200, r.text
        rows = {r["type"]: r for r in await _rows(conn)}
        assert rows["page"]["event"] == "Home"
        assert rows["page"]["properties"] == {"path": "/", "category": "Docs"}
        assert rows["group"]["properties"] == {"group_id": "g-1"}
        assert rows["group"]["traits"] == {"seats": 4}
        assert rows["alias"]["properties"] == {"previous_id": "old-1"}
        for row in rows.values():
            assert row["context"] == {"locale": "fr"}
            assert "integrations" not in row["properties"]


class TestKeys:
    async def test_write_key_in_the_body(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """analytics.js sends the key as writeKey in a text/plain body; it is not stored."""
        body = {"writeKey": write_key, "event": "Clicked", "anonymousId": "a-1"}
        r = await client.post(
            "/v1/t", content=orjson.dumps(body), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 200, r.text
        [row] = await _rows(conn)
        assert write_key not in orjson.dumps(row, default=str).decode()

    async def test_unknown_key_in_basic_or_body_is_401(self, client: httpx.AsyncClient) -> None:
        """A bad key is a problem+json 401, never a stored event."""
        bad = "iwk_" + "0" * 40
        r1 = await client.post("/v1/t", json={"event": "x", "userId": "u"}, headers=basic(bad))
        r2 = await client.post("/v1/t", json={"writeKey": bad, "event": "x", "userId": "u"})
        r3 = await client.post("/v1/t", json={"event": "x", "userId": "u"})
        for r in (r1, r2, r3):
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"

    async def test_a_secret_key_is_refused(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        """The Segment routes take write keys only: a secret key in a body is a leak."""
        r = await client.post(
            "/v1/t", json={"event": "x", "userId": "u"}, headers=bearer(secret_key)
        )
        assert r.status_code == 403


class TestBodies:
    async def test_gzip_chunked_text_plain_batch(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """What analytics-kotlin sends to /v1/b: gzip, no Content-Length, text/plain; PII
        hashed, batch sentAt and context applied."""
        batch = {
            "batch": [
                {"type": "identify", "userId": "u-1", "traits": {"email": " Ann@Example.com "}},
                {"type": "track", "event": "Paid", "userId": "u-1", "messageId": new_id()},
                {"type": "track", "userId": "u-1"},  # no event name: reported, not stored
            ],
            "sentAt": "2030-01-01T00:00:00Z",
            "context": {"library": {"name": "analytics-kotlin"}},
        }
        r = await client.post(
            "/v1/b",
            content=_chunks(gzip.compress(orjson.dumps(batch))),
            headers={**basic(write_key), "Content-Type": "text/plain", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["success"], body["accepted"]) == (True, 2)
        assert [(e["index"], e["code"]) for e in body["rejected"]] == [(2, "missing_field")]
        rows = await _rows(conn)
        identify = next(r for r in rows if r["type"] == "identify")
        assert _sha("ann@example.com") == identify["email_sha256"]
        assert "Ann@Example.com" not in orjson.dumps(rows, default=str).decode()
        assert all(r["context"]["library"] == {"name": "analytics-kotlin"} for r in rows)
        assert all(r["sent_at"].year == 2030 for r in rows)

    async def test_retry_of_a_message_is_stored_once(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """messageId dedups across /v1/track and /v1/batch like native events."""
        event = {"event": "Paid", "userId": "u-1", "messageId": new_id()}
        await client.post("/v1/track", json=event, headers=basic(write_key))
        r = await client.post(
            "/v1/batch", json={"batch": [{**event, "type": "track"}]}, headers=basic(write_key)
        )
        assert r.json()["duplicates"] == 1
        assert len(await _rows(conn)) == 1

    async def test_malformed_bodies_are_problems(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        """Bad JSON, a batch that is not a list, and a refused single event are 4xx problems."""
        cases = [
            ("/v1/t", b"{nope", 400, "invalid-json"),
            ("/v1/b", b'{"batch": 3}', 400, "invalid-body"),
            ("/v1/t", b'{"userId": "u"}', 400, "validation"),
        ]
        for path, content, status, slug in cases:
            r = await client.post(path, content=content, headers=basic(write_key))
            assert status == r.status_code
            assert r.json()["type"].endswith(slug)


class TestSettings:
    async def test_settings_name_this_host(self, client: httpx.AsyncClient, write_key: str) -> None:
        """analytics.js reads integrations["Segment.io"].apiKey/apiHost/protocol."""
        r = await client.get(f"/v1/projects/{write_key}/settings")
        assert r.status_code == 200
        seg = r.json()["integrations"]["Segment.io"]
        assert (write_key, "ingest.test/v1", "http") == (
            seg["apiKey"],
            seg["apiHost"],
            seg["protocol"],
        )
        assert r.json()["metrics"]["sampleRate"] == 0
        assert r.headers["access-control-allow-origin"] == "*"

    async def test_forwarded_proto_only_from_a_trusted_proxy(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        """The test peer (127.0.0.1) is not a trusted proxy: X-Forwarded-Proto is ignored."""
        r = await client.get(
            f"/v1/projects/{write_key}/settings", headers={"X-Forwarded-Proto": "https"}
        )
        assert r.json()["integrations"]["Segment.io"]["protocol"] == "http"

    async def test_unknown_key_is_not_200(self, client: httpx.AsyncClient) -> None:
        """analytics-kotlin raises on a non-200: right for a key that does not exist."""
        r = await client.get("/v1/projects/iwk_nothing/settings")
        assert r.status_code == 401


@pytest.fixture(name="public_settings")
def _public_settings(settings: Settings) -> Settings:
    return replace(settings, public_url="https://events.example.com")


async def test_settings_use_the_configured_public_url(
    public_settings: Any, metrics: Any, secret_key: str
) -> None:
    """INGEST_PUBLIC_URL wins over the Host header."""
    app = create_app(public_settings, metrics=metrics)
    async with LifespanManager(app) as manager, client_for(manager.app) as c:
        project = await c.post("/v1/projects", json={"name": "P"}, headers=bearer(secret_key))
        key = project.json()["write_key"]["key"]
        r = await c.get(f"/v1/projects/{key}/settings")
    seg = r.json()["integrations"]["Segment.io"]
    assert (seg["apiHost"], seg["protocol"]) == ("events.example.com/v1", "https")


class TestCORS:
    @pytest.mark.parametrize("path", ["/v1/t", "/v1/b", "/v1/events", "/v1/identify"])
    async def test_preflight_allows_authorization(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        """analytics.js sends Authorization, so the browser asks first."""
        r = await client.options(
            path,
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "*"
        assert "Authorization" in r.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in r.headers

    async def test_without_a_list_any_origin_gets_star(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        r = await client.post(
            "/v1/t",
            json={"event": "x", "anonymousId": "a"},
            headers={**basic(write_key), "Origin": "https://anything.example"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "Origin" in r.headers["vary"]

    async def test_allow_list_answers_the_origin_and_refuses_others(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        """A listed origin is echoed (no credentials); another is 403 on Segment and native
        routes and on settings; a server SDK without Origin is unaffected."""
        created = await client.post(
            "/v1/projects",
            json={
                "name": "Shop",
                "allowed_origins": ["https://Shop.example", "http://localhost:3000"],
            },
            headers=bearer(secret_key),
        )
        assert created.status_code == 201, created.text
        assert created.json()["allowed_origins"] == [
            "https://shop.example",
            "http://localhost:3000",
        ]
        key = created.json()["write_key"]["key"]
        event = {"event": "x", "anonymousId": "a"}
        ok = await client.post(
            "/v1/t", json=event, headers={**basic(key), "Origin": "https://shop.example"}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        assert "access-control-allow-credentials" not in ok.headers
        for path in ("/v1/t", "/v1/events"):
            r = await client.post(
                path, json=event, headers={**basic(key), "Origin": "https://evil.example"}
            )
            assert r.status_code == 403
            assert "access-control-allow-origin" not in r.headers
        r = await client.get(
            f"/v1/projects/{key}/settings", headers={"Origin": "https://evil.example"}
        )
        assert r.status_code == 403
        server = await client.post("/v1/t", json=event, headers=basic(key))
        assert server.status_code == 200
        assert await conn.fetchval("SELECT count(*) FROM events") == 2


class TestProjects:
    async def test_patch_changes_only_given_fields(
        self, client: httpx.AsyncClient, secret_key: str, project: Any, write_key: str
    ) -> None:
        """PATCH sets the allow-list; the next write-key request obeys it; null clears it."""
        url = f"/v1/projects/{project['id']}"
        r = await client.patch(
            url, json={"allowed_origins": ["https://a.example"]}, headers=bearer(secret_key)
        )
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["allowed_origins"]) == ("Web", ["https://a.example"])
        refused = await client.post(
            "/v1/t",
            json={"event": "x", "anonymousId": "a"},
            headers={**basic(write_key), "Origin": "https://b.example"},
        )
        assert refused.status_code == 403
        r = await client.patch(
            url,
            json={"name": "Renamed", "default_country": "fr", "allowed_origins": None},
            headers=bearer(secret_key),
        )
        assert (
            r.json()["name"],
            r.json()["default_country"],
            r.json()["allowed_origins"],
        ) == ("Renamed", "FR", None)

    async def test_patch_refuses_bad_fields_and_other_tenants(
        self, client: httpx.AsyncClient, secret_key: str, project: Any, settings: Any
    ) -> None:
        """A bad origin is a 400 naming the field; another org's project is a 404 like none."""
        url = f"/v1/projects/{project['id']}"
        r = await client.patch(
            url, json={"allowed_origins": ["https://a.example/path"]}, headers=bearer(secret_key)
        )
        assert r.status_code == 400
        assert [e["field"] for e in r.json()["errors"]] == ["allowed_origins"]
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        theirs = await client.patch(url, json={"name": "x"}, headers=bearer(other))
        missing = await client.patch(f"/v1/projects/{new_id()}", json={}, headers=bearer(other))
        assert (theirs.status_code, missing.status_code) == (404, 404)
        assert theirs.json()["detail"] == missing.json()["detail"]
