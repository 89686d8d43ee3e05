"""RudderStack's SDKs beyond the Tracking API: the source config they fetch at start, the
browser SDK's beacon batch and extra headers, the Node SDK's form-labelled gzip bodies, and the
mobile SDKs' identify traits in context.traits and client time in originalTimestamp.

The requests are shaped as rudder-sdk-js v3, Android, iOS and rudder-sdk-node send them (their
sources: the README's RudderStack section names what each sends).
"""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import basic, bearer, new_id, unseal

PREFLIGHT = {
    "Origin": "https://shop.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "anonymousid,authorization,content-type,sentat",
}


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM events ORDER BY timestamp, message_id")
    return [await unseal(conn, r) for r in rows]


class TestSourceConfig:
    @pytest.mark.parametrize(
        ("path", "by_query"),
        [
            ("/sourceConfig/?p=npm&v=3.11.0&build=modern&lockIntegrationsVersion=false", True),
            ("/sourceConfig?p=android&v=1.25.1&bv=34", False),  # mobile: Basic only
            ("/sourceConfig?p=ios&v=1.29.0", False),
        ],
    )
    async def test_each_sdk_gets_an_enabled_source(
        self, client: httpx.AsyncClient, write_key: str, project: Any, path: str, by_query: bool
    ) -> None:
        """What the JS SDK validates (id, config object, destinations array) and what the mobile
        SDKs need (enabled: true), with the SDK's reports to RudderStack off."""
        if by_query:
            path += f"&writeKey={write_key}"
        r = await client.get(path, headers=basic(write_key))
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        source = r.json()["source"]
        assert source["id"] == project["id"]
        assert source["enabled"] is True
        assert source["destinations"] == []
        assert source["config"]["statsCollection"] == {
            "errors": {"enabled": False},
            "metrics": {"enabled": False},
        }
        assert "dataplanes" not in source  # it would override the SDK's data plane URL

    async def test_key_in_the_query_alone(self, client: httpx.AsyncClient, write_key: str) -> None:
        r = await client.get(f"/sourceConfig/?p=cdn&writeKey={write_key}")
        assert r.status_code == 200, r.text
        assert r.json()["source"]["writeKey"] == write_key

    async def test_bad_keys_are_refused(self, client: httpx.AsyncClient, secret_key: str) -> None:
        """No key or an unknown one: 401 (the SDKs then send nothing); a secret key: 403."""
        unknown = "iwk_" + "0" * 40
        for r in (
            await client.get("/sourceConfig/?p=npm"),
            await client.get("/sourceConfig?p=android", headers=basic(unknown)),
            await client.get(f"/sourceConfig/?writeKey={unknown}"),
        ):
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
        r = await client.get("/sourceConfig", headers=basic(secret_key))
        assert r.status_code == 403

    async def test_a_bad_key_is_worded_as_the_mobile_sdks_look_for(
        self, client: httpx.AsyncClient
    ) -> None:
        """Android and iOS stop their uploader when a body says "invalid write key"; any other
        401 they retry with backoff, for ever."""
        unknown = "iwk_" + "0" * 40
        batch = {"batch": [{"type": "track", "event": "x", "anonymousId": "a"}]}
        for r in (
            await client.post("/v1/batch", json=batch, headers=basic(unknown)),
            await client.get("/sourceConfig", headers=basic(unknown)),
        ):
            assert r.status_code == 401
            assert "invalid write key" in r.text.lower()

    async def test_preflight_and_allow_list(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        """The browser SDK sends Basic auth cross-origin: preflighted, then the project's
        origin allow-list decides, as for the data plane routes."""
        pre = await client.options("/sourceConfig/", headers=PREFLIGHT)
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "*"
        created = await client.post(
            "/v1/projects",
            json={"name": "Shop", "allowed_origins": ["https://shop.example"]},
            headers=bearer(secret_key),
        )
        key = created.json()["write_key"]["key"]
        ok = await client.get(
            "/sourceConfig/", headers={**basic(key), "Origin": "https://shop.example"}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        refused = await client.get(
            "/sourceConfig/", headers={**basic(key), "Origin": "https://evil.example"}
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers


class TestBrowser:
    async def test_preflight_allows_the_sdk_headers(self, client: httpx.AsyncClient) -> None:
        """rudder-sdk-js sends AnonymousId and SentAt headers with each event: a preflight
        that did not allow them would stop every event in the browser."""
        for path in ("/v1/track", "/v1/batch", "/beacon/v1/batch"):
            r = await client.options(path, headers=PREFLIGHT)
            assert r.status_code == 204
            allowed = r.headers["access-control-allow-headers"].lower()
            assert {"anonymousid", "sentat", "authorization"} <= {
                h.strip() for h in allowed.split(",")
            }

    async def test_xhr_event_with_the_sdk_headers(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """One event as the v3 XHR queue posts it: originalTimestamp (no timestamp), channel,
        the AnonymousId header (ignored: the body has the id)."""
        sent = datetime.now(UTC)
        event: dict[str, Any] = {
            "type": "track",
            "event": "Added",
            "anonymousId": "anon-1",
            "channel": "web",
            "messageId": new_id(),
            "originalTimestamp": (sent - timedelta(seconds=2)).isoformat(),
            "sentAt": sent.isoformat(),
            "context": {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.11.0"}},
            "properties": {"sku": "a-1"},
            "integrations": {"All": True},
        }
        r = await client.post(
            "/v1/track",
            json=event,
            headers={
                **basic(write_key),
                "Content-Type": "application/json;charset=UTF-8",
                "AnonymousId": "YW5vbi0x",
                "SentAt": sent.isoformat(),
                "Origin": "https://shop.example",
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        [row] = await _rows(conn)
        assert row["original_timestamp"] == sent - timedelta(seconds=2)
        assert row["timestamp"] == sent - timedelta(seconds=2)  # transit time: no correction

    async def test_beacon_batch_with_the_key_in_the_query(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """navigator.sendBeacon: text/plain {batch, sentAt}, no Authorization header."""
        batch = {
            "batch": [
                {"type": "page", "name": "Home", "anonymousId": "a-1", "messageId": new_id()},
                {"type": "track", "event": "Left", "anonymousId": "a-1", "messageId": new_id()},
            ],
            "sentAt": datetime.now(UTC).isoformat(),
        }
        r = await client.post(
            f"/beacon/v1/batch?writeKey={write_key}",
            content=orjson.dumps(batch),
            headers={"Content-Type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 2
        assert {row["event"] for row in await _rows(conn)} == {"Home", "Left"}

    async def test_beacon_without_a_good_key_stores_nothing(
        self, client: httpx.AsyncClient, conn: asyncpg.Connection
    ) -> None:
        body = orjson.dumps({"batch": [{"type": "track", "event": "x", "anonymousId": "a"}]})
        for url in ("/beacon/v1/batch", "/beacon/v1/batch?writeKey=iwk_" + "0" * 40):
            r = await client.post(url, content=body, headers={"Content-Type": "text/plain"})
            assert r.status_code == 401
        assert await conn.fetchval("SELECT count(*) FROM events") == 0


class TestServerAndMobile:
    async def test_node_sdk_gzip_labelled_as_a_form(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """rudder-sdk-node's gzip batch goes out as application/x-www-form-urlencoded (axios's
        label for a Buffer): it is JSON, and read as such on the Tracking API's routes only."""
        now = datetime.now(UTC).isoformat()
        batch = {
            "batch": [
                {
                    "type": "track",
                    "event": "Paid",
                    "userId": "u-1",
                    "channel": "server",
                    "messageId": new_id(),
                    "originalTimestamp": now,
                    "sentAt": now,
                }
            ],
            "timestamp": now,
            "sentAt": now,
        }
        headers = {
            **basic(write_key),
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Encoding": "gzip",
        }
        body = gzip.compress(orjson.dumps(batch))
        r = await client.post("/v1/batch", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1
        # The native route stays strict: a form there is still 415.
        native = await client.post(
            "/v1/events",
            content=body,
            headers={**headers, "Authorization": bearer(write_key)["Authorization"]},
        )
        assert native.status_code == 415
        # A real form is not JSON: 400, nothing stored.
        form = await client.post(
            "/v1/batch",
            content=b"event=x&userId=u",
            headers={**basic(write_key), "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 400
        assert form.json()["type"].endswith("invalid-json")
        assert len(await _rows(conn)) == 1

    async def test_mobile_identify_traits_in_context_make_the_user_state(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        secret_key: str,
        project: Any,
        conn: asyncpg.Connection,
    ) -> None:
        """Android and iOS send an identify's traits in context.traits only: they are the
        identify's traits (hashed, and the user's current state); a later identify wins."""
        sent = datetime.now(UTC)

        def identify(plan: str, at: datetime, **extra: Any) -> dict[str, Any]:
            return {
                **extra,
                "type": "identify",
                "userId": "u-7",
                "anonymousId": "a-7",
                "channel": "mobile",
                "messageId": new_id(),
                "originalTimestamp": at.isoformat(),
                "sentAt": sent.isoformat(),
                "context": {"traits": {"email": " Ann@Example.com ", "plan": plan}},
            }

        batch = {
            "sentAt": sent.isoformat(),
            "batch": [
                identify("free", sent - timedelta(seconds=5)),
                identify("pro", sent - timedelta(seconds=1), traits={}),  # says nothing
            ],
        }
        r = await client.post(
            "/v1/batch",
            content=gzip.compress(orjson.dumps(batch)),
            headers={**basic(write_key), "Content-Encoding": "gzip", "AnonymousId": "YS03"},
        )
        assert r.status_code == 200, r.text
        rows = await _rows(conn)
        assert [row["traits"]["plan"] for row in rows] == ["free", "pro"]
        assert all(row["email_sha256"] == _sha("ann@example.com") for row in rows)
        assert "Ann@Example.com" not in orjson.dumps(rows, default=str).decode()
        profile = await client.get(
            f"/v1/projects/{project['id']}/users/u-7", headers=bearer(secret_key)
        )
        assert profile.status_code == 200, profile.text
        assert profile.json()["traits"]["plan"] == "pro"
        assert profile.json()["traits"]["email"] == _sha("ann@example.com")
