"""A project's retention settings over the API: defaults, validation, PATCH, tenancy."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import bearer


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
