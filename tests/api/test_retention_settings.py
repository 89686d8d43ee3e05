"""A project's retention settings over the API: defaults, validation, PATCH, tenancy."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.config import Settings
from tests.api.test_forwarding import set_status
from tests.conftest import bearer


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The forward queue's expiry sweep every 0.05 s instead of every 5 s."""
    return dataclasses.replace(settings, forward_sweep_s=0.05)


class TestRetentionSettings:
    async def test_a_new_project_keeps_events_13_months_and_message_ids_7_days(
        self, project: dict[str, Any]
    ) -> None:
        assert project["events_retention_days"] == 395
        assert project["dedup_window_days"] == 7

    async def test_create_and_patch_set_them(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        made = await client.post(
            "/v1/projects",
            json={"name": "Shop", "events_retention_days": 30, "dedup_window_days": 2},
            headers=bearer(secret_key),
        )
        assert made.status_code == 201, made.text
        assert (made.json()["events_retention_days"], made.json()["dedup_window_days"]) == (30, 2)
        patched = await client.patch(
            f"/v1/projects/{made.json()['id']}",
            json={"events_retention_days": 90},
            headers=bearer(secret_key),
        )
        assert patched.status_code == 200, patched.text
        # Absent fields stay as they were.
        assert (patched.json()["events_retention_days"], patched.json()["dedup_window_days"]) == (
            90,
            2,
        )
        row = await conn.fetchrow(
            "SELECT events_retention_days, dedup_window_days FROM projects WHERE id = $1::uuid",
            made.json()["id"],
        )
        assert row is not None
        assert tuple(row) == (90, 2)

    @pytest.mark.parametrize(
        "value", [0, -1, 3651, 1.5, "30", None, True, [30], {"days": 30}, 10**30]
    )
    @pytest.mark.parametrize("field", ["events_retention_days", "dedup_window_days"])
    async def test_anything_but_1_to_3650_days_is_a_400_naming_the_field(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        field: str,
        value: Any,
    ) -> None:
        for method, url, body in (
            ("POST", "/v1/projects", {"name": "x", field: value}),
            ("PATCH", f"/v1/projects/{project['id']}", {field: value}),
        ):
            r = await client.request(method, url, json=body, headers=bearer(secret_key))
            assert r.status_code == 400, (method, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"].endswith("/validation")
            assert [e["field"] for e in r.json()["errors"]] == [field]

    async def test_the_database_refuses_a_retention_below_one_day(
        self, project: dict[str, Any], conn: asyncpg.Connection
    ) -> None:
        for column in ("events_retention_days", "dedup_window_days"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    f"UPDATE projects SET {column} = 0 WHERE id = $1::uuid", project["id"]
                )

    async def test_another_orgs_project_answers_404_and_keeps_its_settings(
        self,
        client: httpx.AsyncClient,
        settings: Any,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        from ingest.cli import _create_org

        intruder = (await _create_org(settings, "Intruder"))["secret_key"]["key"]
        r = await client.patch(
            f"/v1/projects/{project['id']}",
            json={"events_retention_days": 1, "dedup_window_days": 1},
            headers=bearer(intruder),
        )
        assert r.status_code == 404
        assert r.json()["type"].endswith("/not-found")
        row = await conn.fetchrow(
            "SELECT events_retention_days, dedup_window_days FROM projects WHERE id = $1::uuid",
            project["id"],
        )
        assert row is not None
        assert tuple(row) == (395, 7)


class TestForwardQueueRetention:
    async def test_a_day_to_deliver_a_week_for_dead_letters_by_default(
        self, project: dict[str, Any]
    ) -> None:
        assert (project["forward_queue_days"], project["dead_letter_days"]) == (1, 7)

    async def test_set_per_project_and_bounded(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        path = f"/v1/projects/{project['id']}"
        r = await client.patch(
            path, json={"forward_queue_days": 3, "dead_letter_days": 30}, headers=bearer(secret_key)
        )
        assert r.status_code == 200, r.text
        assert (r.json()["forward_queue_days"], r.json()["dead_letter_days"]) == (3, 30)
        row = await conn.fetchrow(
            "SELECT forward_queue_days, dead_letter_days FROM projects WHERE id = $1::uuid",
            project["id"],
        )
        assert row is not None
        assert tuple(row) == (3, 30)
        # Device ids wait a month at most.
        for field, value in (("forward_queue_days", 31), ("forward_queue_days", 0)):
            r = await client.patch(path, json={field: value}, headers=bearer(secret_key))
            assert r.status_code == 400, r.text
            assert [e["field"] for e in r.json()["errors"]] == [field]
            assert "1 to 30" in r.json()["errors"][0]["reason"]

    async def test_rows_wait_as_long_as_their_project_says(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        """Two days old: kept where forward_queue_days is 3, dead where it is 1 (the default)."""
        other = await client.post("/v1/projects", json={"name": "B"}, headers=bearer(secret_key))
        patient = await client.patch(
            f"/v1/projects/{project['id']}",
            json={"forward_queue_days": 3},
            headers=bearer(secret_key),
        )
        assert patient.status_code == 200, patient.text
        for pid, key in (
            (project["id"], write_key),
            (other.json()["id"], other.json()["write_key"]["key"]),
        ):
            r = await client.post(
                f"/v1/projects/{pid}/destinations",
                json={"type": "webhook", "name": "h", "url": "http://127.0.0.1:9/h"},
                headers=bearer(secret_key),
            )
            await set_status(client, secret_key, pid, r.json()["id"], "paused")
            r = await client.post(
                "/v1/track", json={"event": "e", "user_id": "u"}, headers=bearer(key)
            )
            assert r.status_code == 200, r.text
        await conn.execute("UPDATE outbox SET created_at = now() - interval '2 days'")
        for _ in range(200):  # the sweep runs every INGEST_FORWARD_SWEEP_SECONDS
            if await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'dead'"):
                break
            await asyncio.sleep(0.05)
        rows = await conn.fetch("SELECT project_id::text AS p, status FROM outbox")
        assert {(r["p"], r["status"]) for r in rows} == {
            (project["id"], "pending"),
            (other.json()["id"], "dead"),
        }
