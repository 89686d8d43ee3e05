"""PostHog's capture routes: the bodies posthog-js and posthog-python send, mapped and stored."""

from __future__ import annotations

import base64
import gzip
import hashlib
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import new_id, unseal


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM events ORDER BY timestamp, message_id")
    return [await unseal(conn, r) for r in rows]


def _js_event(write_key: str, event: str = "clicked", **props: Any) -> dict[str, Any]:
    """The shape posthog-js posts: the token and ids inside properties."""
    return {
        "event": event,
        "uuid": new_id(),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "properties": {
            "token": write_key,
            "distinct_id": "dev-1",
            "$device_id": "dev-1",
            "$lib": "web",
            "$lib_version": "1.200.0",
            **props,
        },
    }


class TestPaths:
    @pytest.mark.parametrize("path", ["/capture", "/capture/", "/e", "/e/", "/i/v0/e", "/i/v0/e/"])
    async def test_single_event_with_api_key(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, path: str
    ) -> None:
        """A server SDK's single capture: api_key, distinct_id, uuid -> message_id."""
        mid = new_id()
        body = {
            "api_key": write_key,
            "event": "Order Done",
            "distinct_id": "user-7",
            "uuid": mid,
            "properties": {"total": 9, "$set": {"plan": "pro"}},
        }
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == 1
        [row] = await _rows(conn)
        assert (row["type"], row["event"], row["user_id"], row["message_id"]) == (
            "track",
            "Order Done",
            "user-7",
            mid,
        )
        assert row["properties"] == {"total": 9}
        assert row["traits"] == {"plan": "pro"}

    async def test_posthog_python_batch(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """posthog-python posts {api_key, batch, sent_at} to /batch/, gzipped; $set events and
        $identify are identifies, alias maps to previous_id, email and phone are hashed."""
        batch = {
            "api_key": write_key,
            "sent_at": "2026-01-01T00:00:00+00:00",
            "batch": [
                {
                    "event": "$identify",
                    "distinct_id": "user-1",
                    "properties": {"$anon_distinct_id": "anon-1", "$set": {"email": "A@B.example"}},
                },
                {"event": "$set", "distinct_id": "user-1", "$set": {"phone": "+1 415 555 0100"}},
                {
                    "event": "$create_alias",
                    "distinct_id": "old-1",
                    "properties": {"distinct_id": "old-1", "alias": "user-1"},
                },
                {"event": "$pageview", "distinct_id": "user-1", "properties": {"$ip": "8.8.8.8"}},
            ],
        }
        r = await client.post(
            "/batch/",
            content=gzip.compress(orjson.dumps(batch)),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 4
        rows = await _rows(conn)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_type.setdefault(row["type"], []).append(row)
        identify = next(x for x in by_type["identify"] if x["email_sha256"])
        assert identify["email_sha256"] == _sha("a@b.example")
        assert identify["anonymous_id"] == "anon-1"
        assert any(x["phone_sha256"] == _sha("14155550100") for x in by_type["identify"])
        [alias] = by_type["alias"]
        assert (alias["user_id"], alias["properties"]) == ("user-1", {"previous_id": "old-1"})
        [page] = by_type["page"]
        assert "8.8.8.8" not in orjson.dumps(page, default=str).decode()
        dump = orjson.dumps(rows, default=str).decode()
        assert "A@B.example" not in dump
        assert "555 0100" not in dump
        assert write_key not in dump


class TestPostHogJS:
    async def test_gzip_js_list_with_token_in_properties(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """posthog-js: ?compression=gzip-js, text/plain, a list; an anonymous visitor's
        distinct_id (its device id) is the anonymous_id."""
        events = [_js_event(write_key), _js_event(write_key, "$pageview")]
        r = await client.post(
            "/e/?compression=gzip-js&ip=1&_=1767225600000&ver=1.200.0",
            content=gzip.compress(orjson.dumps(events)),
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 200, r.text
        rows = await _rows(conn)
        assert sorted(r["type"] for r in rows) == ["page", "track"]
        assert all((r["anonymous_id"], r["user_id"]) == ("dev-1", None) for r in rows)
        assert all(r["context"]["library"] == {"name": "web", "version": "1.200.0"} for r in rows)
        assert all("token" not in r["properties"] for r in rows)
        assert all(r["sent_at"] is not None for r in rows)

    async def test_base64_form(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """posthog-js without compression support: data=<base64> as a form."""
        data = base64.b64encode(orjson.dumps(_js_event(write_key, "signed up"))).decode()
        r = await client.post(
            "/i/v0/e/",
            content=f"data={quote(data, safe='')}&compression=base64".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200, r.text
        [row] = await _rows(conn)
        assert row["event"] == "signed up"


class TestRefusals:
    async def test_missing_or_unknown_key_is_401(self, client: httpx.AsyncClient) -> None:
        for body in (
            {"event": "x", "distinct_id": "u"},
            {"api_key": "phc_nope", "event": "x", "distinct_id": "u"},
        ):
            r = await client.post("/capture/", json=body)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"

    async def test_bad_bodies_are_problems(self, client: httpx.AsyncClient, write_key: str) -> None:
        """Bad gzip, bad base64, lz64 and mixed keys are 4xx problems, never a 500."""
        cases: list[tuple[str, bytes, str, int]] = [
            ("/e/?compression=gzip-js", b"\x1f\x8b\x08garbage", "text/plain", 400),
            ("/e/", b"data=%%%%", "application/x-www-form-urlencoded", 400),
            ("/e/?compression=lz64", b"data=abcd", "application/x-www-form-urlencoded", 415),
            ("/e/", b"{nope", "text/plain", 400),
            ("/capture/", b"{}", "application/xml", 415),
            (
                "/batch/",
                orjson.dumps([_js_event(write_key), _js_event("iwk_other")]),
                "text/plain",
                400,
            ),
        ]
        for path, content, media, status in cases:
            r = await client.post(path, content=content, headers={"Content-Type": media})
            assert (path, r.status_code) == (path, status), r.text
            assert r.headers["content-type"] == "application/problem+json"

    async def test_gzip_bomb_is_413(self, client: httpx.AsyncClient, write_key: str) -> None:
        """A small gzip-js body that inflates past the limit is refused without inflating it."""
        bomb = gzip.compress(b"[" + b" " * (2 * 1024 * 1024) + b"]")
        r = await client.post(
            "/e/?compression=gzip-js", content=bomb, headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 413

    async def test_allow_list_applies(
        self, client: httpx.AsyncClient, write_key: str, secret_key: str, project: Any
    ) -> None:
        """posthog-js in a page from an unlisted origin is refused like analytics.js."""
        await client.patch(
            f"/v1/projects/{project['id']}",
            json={"allowed_origins": ["https://shop.example"]},
            headers={"Authorization": f"Bearer {secret_key}"},
        )
        body = orjson.dumps([_js_event(write_key)])
        refused = await client.post("/e/", content=body, headers={"Origin": "https://evil.example"})
        allowed = await client.post("/e/", content=body, headers={"Origin": "https://shop.example"})
        assert (refused.status_code, allowed.status_code) == (403, 200)
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
