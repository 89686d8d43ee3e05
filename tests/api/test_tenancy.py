"""Organizations, projects and keys: what a partner bootstraps with, and what the store keeps."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import httpx

from ingest.keys import KeyKind, kind_of
from tests.conftest import bearer


class TestCreateOrg:
    async def test_admin_create_org_issues_a_secret_key_kept_only_as_a_digest(
        self, org: dict[str, Any], conn: asyncpg.Connection
    ) -> None:
        key = org["secret_key"]["key"]
        assert kind_of(key) is KeyKind.SECRET
        assert key.startswith("isk_")
        assert org["secret_key"]["prefix"] == key[:12]
        row = await conn.fetchrow(
            "SELECT * FROM api_keys WHERE id = $1::uuid", org["secret_key"]["id"]
        )
        assert row is not None
        assert row["digest"] == hashlib.sha256(key.encode()).digest()
        assert str(row["org_id"]) == org["org_id"]
        dump = str([dict(r) for r in await conn.fetch("SELECT * FROM api_keys")])
        assert key not in dump
        assert key[12:] not in dump

    async def test_keys_are_unique_and_high_entropy(self, settings: Any) -> None:
        from ingest.cli import _create_org

        keys = {(await _create_org(settings, f"o{i}"))["secret_key"]["key"] for i in range(5)}
        assert len(keys) == 5
        assert all(len(k) == 4 + 43 for k in keys)


class TestProjects:
    async def test_create_project_answers_201_with_id_and_write_key(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/projects",
            json={"name": " Shop ", "default_country": "gb"},
            headers=bearer(secret_key),
        )
        assert r.status_code == 201
        body = r.json()
        assert body["name"] == "Shop"
        assert body["default_country"] == "GB"
        assert kind_of(body["write_key"]["key"]) is KeyKind.WRITE
        row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1::uuid", body["id"])
        assert row is not None
        assert (row["name"], row["default_country"]) == ("Shop", "GB")

    async def test_invalid_project_names_every_bad_field(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        r = await client.post(
            "/v1/projects",
            json={"name": "", "default_country": "Narnia"},
            headers=bearer(secret_key),
        )
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"
        assert sorted(e["field"] for e in r.json()["errors"]) == ["default_country", "name"]

    async def test_write_key_cannot_create_projects(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        r = await client.post("/v1/projects", json={"name": "x"}, headers=bearer(write_key))
        assert r.status_code == 403

    async def test_write_key_only_writes_to_its_own_project(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        write_key: str,
        project: Any,
        conn: asyncpg.Connection,
    ) -> None:
        await client.post("/v1/projects", json={"name": "Other"}, headers=bearer(secret_key))
        await client.post(
            "/v1/events",
            json={
                "event": "x",
                "user_id": "u",
                "project_id": "00000000-0000-0000-0000-000000000000",
            },
            headers=bearer(write_key),
        )
        # A project_id in the body is ignored: the key decides (mass assignment, API3).
        assert [
            str(r["project_id"]) for r in await conn.fetch("SELECT project_id FROM events")
        ] == [project["id"]]


class TestKeys:
    async def test_server_side_write_key(
        self, client: httpx.AsyncClient, secret_key: str, project: Any, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            f"/v1/projects/{project['id']}/keys",
            json={"server_side": True},
            headers=bearer(secret_key),
        )
        assert r.status_code == 201
        assert r.json()["server_side"] is True
        assert await conn.fetchval(
            "SELECT is_server_side FROM api_keys WHERE id = $1::uuid", r.json()["id"]
        )

    async def test_another_orgs_project_is_exactly_as_missing_as_none(
        self, client: httpx.AsyncClient, settings: Any, project: Any
    ) -> None:
        from ingest.cli import _create_org

        intruder = (await _create_org(settings, "Intruder"))["secret_key"]["key"]
        theirs = await client.post(
            f"/v1/projects/{project['id']}/keys", json={}, headers=bearer(intruder)
        )
        missing = await client.post(
            "/v1/projects/00000000-0000-4000-8000-000000000000/keys",
            json={},
            headers=bearer(intruder),
        )
        assert theirs.status_code == missing.status_code == 404

        def strip(r: httpx.Response) -> dict[str, Any]:
            body: dict[str, Any] = r.json()
            body.pop("instance")
            return body

        assert strip(theirs) == strip(missing)

    async def test_revoked_key_is_refused(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        ok = await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        assert ok.status_code == 200
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
        refused = await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/invalid-key")
