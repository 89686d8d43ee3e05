"""POST /v1/events end to end: what an SDK sends, what it is answered, what lands in Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import basic, bearer, new_id


async def _events(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM events ORDER BY received_at, message_id")
    return [dict(r) for r in rows]


class TestAccept:
    async def test_single_event_is_committed_before_the_answer(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, project: Any
    ) -> None:
        """The 200 comes after COMMIT: the row is readable from another connection at once."""
        mid = new_id()
        r = await client.post(
            "/v1/events",
            json={
                "type": "track",
                "event": "Signed Up",
                "user_id": "u-1",
                "message_id": mid,
                "app_id": "ios",
                "properties": {"plan": "pro"},
            },
            headers=bearer(write_key),
        )
        assert r.status_code == 200
        assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": [], "warnings": []}
        [row] = await _events(conn)
        assert str(row["project_id"]) == project["id"]
        assert (row["message_id"], row["type"], row["event"], row["user_id"], row["app_id"]) == (
            mid,
            "track",
            "Signed Up",
            "u-1",
            "ios",
        )
        assert row["properties"] == {"plan": "pro"}

    async def test_basic_auth_with_key_as_user_name(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/events", json={"event": "Opened", "anonymous_id": "a-1"}, headers=basic(write_key)
        )
        assert r.status_code == 200
        [row] = await _events(conn)
        assert row["type"] == "track"  # the default type
        assert row["anonymous_id"] == "a-1"

    async def test_batch_stores_good_events_and_reports_each_bad_one(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        batch = [
            {"type": "track", "event": "A", "user_id": "u"},
            {"type": "track", "event": "B"},  # no id
            {"type": "identify", "user_id": "u", "traits": {"plan": "x"}},
            {"type": "track", "event": "C", "user_id": "u", "timestamp": "yesterday"},
            {"type": "bogus", "user_id": "u"},
            "not an object",
        ]
        r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] == 2
        assert [(e["index"], e["code"], e["field"]) for e in body["rejected"]] == [
            (1, "missing_field", "user_id"),
            (3, "invalid_timestamp", "timestamp"),
            (4, "invalid_type", "type"),
            (5, "invalid_type", None),
        ]
        assert sorted(row["type"] for row in await _events(conn)) == ["identify", "track"]

    async def test_segment_camel_case_fields_are_accepted(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/events",
            json={
                "type": "page",
                "name": "Home",
                "userId": "u",
                "anonymousId": "a",
                "messageId": "m-1",
                "sentAt": datetime.now(UTC).isoformat(),
            },
            headers=bearer(write_key),
        )
        assert r.status_code == 200
        [row] = await _events(conn)
        assert (row["event"], row["user_id"], row["anonymous_id"], row["message_id"]) == (
            "Home",
            "u",
            "a",
            "m-1",
        )

    async def test_text_plain_body_is_accepted_as_json(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """navigator.sendBeacon and the browser SDKs send text/plain to avoid a preflight."""
        r = await client.post(
            "/v1/events",
            content=b'{"event":"Beacon","anonymous_id":"a"}',
            headers={**bearer(write_key), "Content-Type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 200
        assert len(await _events(conn)) == 1

    async def test_every_answer_carries_a_request_id(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        r = await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        assert len(r.headers["x-request-id"]) == 32


class TestDedup:
    async def test_retries_with_one_message_id_are_stored_once(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        event = {"event": "Paid", "user_id": "u", "message_id": "retry-1"}
        answers = await asyncio.gather(
            *(client.post("/v1/events", json=event, headers=bearer(write_key)) for _ in range(5))
        )
        assert [a.status_code for a in answers] == [200] * 5
        assert sum(a.json()["duplicates"] for a in answers) == 4
        again = await client.post("/v1/events", json=event, headers=bearer(write_key))
        assert again.json() == {"accepted": 1, "duplicates": 1, "rejected": [], "warnings": []}
        assert await conn.fetchval("SELECT count(*) FROM events") == 1

    async def test_duplicates_inside_one_batch_are_stored_once(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        event = {"event": "Paid", "user_id": "u", "message_id": "same"}
        r = await client.post(
            "/v1/events", json={"batch": [event, event, event]}, headers=bearer(write_key)
        )
        assert r.json()["accepted"] == 3
        assert r.json()["duplicates"] == 2
        assert await conn.fetchval("SELECT count(*) FROM events") == 1

    async def test_message_ids_are_scoped_to_the_project(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        other = await client.post(
            "/v1/projects", json={"name": "Other"}, headers=bearer(secret_key)
        )
        other_key = other.json()["write_key"]["key"]
        event = {"event": "Paid", "user_id": "u", "message_id": "shared-id"}
        for key in (write_key, other_key):
            r = await client.post("/v1/events", json=event, headers=bearer(key))
            assert r.json()["duplicates"] == 0
        assert await conn.fetchval("SELECT count(DISTINCT project_id) FROM events") == 2

    async def test_events_without_message_id_get_one_from_the_server(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        event = {"event": "x", "user_id": "u"}
        await client.post("/v1/events", json={"batch": [event, event]}, headers=bearer(write_key))
        ids = [row["message_id"] for row in await _events(conn)]
        assert len(set(ids)) == 2
        assert all(len(i) == 36 for i in ids)


class TestClock:
    # RudderStack's SDKs send the client's clock as originalTimestamp, and no timestamp.
    @pytest.mark.parametrize("field", ["timestamp", "originalTimestamp"])
    async def test_skew_beyond_the_threshold_is_corrected(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, field: str
    ) -> None:
        """A phone whose clock is a year behind: timestamp = received_at - (sent_at - ts)."""
        r = await client.post(
            "/v1/events",
            json={
                "event": "x",
                "user_id": "u",
                field: "2025-01-01T00:00:00Z",
                "sent_at": "2025-01-01T00:00:30Z",
            },
            headers=bearer(write_key),
        )
        assert r.status_code == 200, r.text
        [row] = await _events(conn)
        assert row["received_at"] - row["timestamp"] == timedelta(seconds=30)
        assert row["original_timestamp"] == datetime(2025, 1, 1, tzinfo=UTC)
        assert row["sent_at"] == datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC)

    async def test_skew_within_the_threshold_is_transit_time_and_kept(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        now = datetime.now(UTC)
        ts = now - timedelta(seconds=20)
        sent = now - timedelta(seconds=10)  # 10 s in transit: no correction
        await client.post(
            "/v1/events",
            json={
                "event": "x",
                "user_id": "u",
                "timestamp": ts.isoformat(),
                "sent_at": sent.isoformat(),
            },
            headers=bearer(write_key),
        )
        [row] = await _events(conn)
        assert row["timestamp"] == ts

    async def test_batch_level_sent_at_applies_to_its_events(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        await client.post(
            "/v1/events",
            json={
                "sent_at": "2030-01-01T00:10:00Z",
                "batch": [{"event": "x", "user_id": "u", "timestamp": "2030-01-01T00:00:00Z"}],
            },
            headers=bearer(write_key),
        )
        [row] = await _events(conn)
        assert row["received_at"] - row["timestamp"] == timedelta(minutes=10)

    async def test_far_future_timestamp_without_sent_at_is_clamped(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/events",
            json={"event": "x", "user_id": "u", "timestamp": "2999-01-01T00:00:00Z"},
            headers=bearer(write_key),
        )
        assert r.json()["warnings"] == [
            {
                "index": 0,
                "code": "timestamp_clamped",
                "field": "timestamp",
                "reason": "in the future; set to received_at",
            }
        ]
        [row] = await _events(conn)
        assert row["timestamp"] == row["received_at"]
        assert row["original_timestamp"].year == 2999

    async def test_timestamp_wins_over_original_timestamp(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/events",
            json={
                "event": "x",
                "user_id": "u",
                "timestamp": "2025-01-01T00:00:00Z",
                "originalTimestamp": "2020-06-01T00:00:00Z",
            },
            headers=bearer(write_key),
        )
        assert r.status_code == 200, r.text
        [row] = await _events(conn)
        assert row["timestamp"] == datetime(2025, 1, 1, tzinfo=UTC)
        assert row["original_timestamp"] == datetime(2025, 1, 1, tzinfo=UTC)

    async def test_missing_timestamp_is_received_at(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        [row] = await _events(conn)
        assert row["timestamp"] == row["received_at"]
        assert row["original_timestamp"] is None


class TestCors:
    async def test_preflight_allows_authorization_from_any_origin_without_credentials(
        self, client: httpx.AsyncClient
    ) -> None:
        r = await client.options(
            "/v1/events",
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

    async def test_answers_and_errors_on_write_routes_carry_cors(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        ok = await client.post(
            "/v1/events",
            json={"event": "x", "user_id": "u"},
            headers={**bearer(write_key), "Origin": "https://a.example"},
        )
        bad = await client.post("/v1/events", json={}, headers={"Origin": "https://a.example"})
        assert ok.headers["access-control-allow-origin"] == "*"
        assert bad.status_code == 401
        assert bad.headers["access-control-allow-origin"] == "*"

    async def test_partner_routes_send_no_cors_and_refuse_browsers(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        r = await client.post(
            "/v1/projects",
            json={"name": "x"},
            headers={**bearer(secret_key), "Origin": "https://evil.example"},
        )
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert "access-control-allow-origin" not in r.headers
