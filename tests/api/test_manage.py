"""The partner API for an organization's own objects: projects and keys, through HTTP, against
what Postgres holds afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.cli import _create_org
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import bearer, client_for, is_problem, new_id

MISSING = "00000000-0000-4000-8000-000000000000"


async def _event(client: httpx.AsyncClient, key: str, **fields: Any) -> httpx.Response:
    doc = {"event": "x", "user_id": "u", "message_id": new_id(), **fields}
    return await client.post("/v1/events", json=doc, headers=bearer(key))


async def _count(conn: asyncpg.Connection, table: str, project_id: str) -> int:
    n: int = await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE project_id = $1::uuid",  # fixed names
        project_id,
    )
    return n


async def _new_project(client: httpx.AsyncClient, secret_key: str, name: str) -> dict[str, Any]:
    r = await client.post("/v1/projects", json={"name": name}, headers=bearer(secret_key))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


class TestProjects:
    async def test_list_holds_every_project_of_the_org_in_creation_order_without_keys(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        shop = await _new_project(client, secret_key, "Shop")
        r = await client.get("/v1/projects", headers=bearer(secret_key))
        assert r.status_code == 200
        listed = r.json()["projects"]
        assert [p["id"] for p in listed] == [project["id"], shop["id"]]
        assert [p["name"] for p in listed] == ["Web", "Shop"]
        first = {k: v for k, v in project.items() if k != "write_key"}
        assert listed[0] == first
        assert "iwk_" not in r.text

    async def test_list_of_another_org_is_empty(
        self, client: httpx.AsyncClient, settings: Settings, project: dict[str, Any]
    ) -> None:
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        r = await client.get("/v1/projects", headers=bearer(other))
        assert r.status_code == 200
        assert r.json() == {"projects": []}

    async def test_read_one_project(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        r = await client.get(f"/v1/projects/{project['id']}", headers=bearer(secret_key))
        assert r.status_code == 200
        assert r.json() == {k: v for k, v in project.items() if k != "write_key"}
        assert r.json()["events_retention_days"] >= 1

    @pytest.mark.parametrize("pid", [MISSING, "not-a-uuid"])
    async def test_read_missing_project_is_404(
        self, client: httpx.AsyncClient, secret_key: str, pid: str
    ) -> None:
        is_problem(
            await client.get(f"/v1/projects/{pid}", headers=bearer(secret_key)), 404, "not-found"
        )

    async def test_another_orgs_project_reads_as_missing(
        self, client: httpx.AsyncClient, settings: Settings, project: dict[str, Any]
    ) -> None:
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        theirs = await client.get(f"/v1/projects/{project['id']}", headers=bearer(other))
        missing = await client.get(f"/v1/projects/{MISSING}", headers=bearer(other))
        is_problem(theirs, 404, "not-found")
        body, ref = theirs.json(), missing.json()
        body.pop("instance")
        ref.pop("instance")
        assert body == ref

    async def test_rename_changes_the_name_only(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        created = await client.post(
            "/v1/projects",
            json={"name": "Web", "default_country": "FR", "allowed_origins": ["https://a.example"]},
            headers=bearer(secret_key),
        )
        assert created.status_code == 201
        pid = created.json()["id"]
        r = await client.patch(
            f"/v1/projects/{pid}", json={"name": "  Storefront "}, headers=bearer(secret_key)
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "Storefront"
        assert body["default_country"] == "FR"
        assert body["allowed_origins"] == ["https://a.example"]
        assert body["id"] == pid
        row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1::uuid", pid)
        assert row is not None
        assert (row["name"], row["default_country"]) == ("Storefront", "FR")
        again = await client.get(f"/v1/projects/{pid}", headers=bearer(secret_key))
        assert again.json() == body

    async def test_patch_with_a_bad_field_changes_nothing(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        r = await client.patch(
            f"/v1/projects/{project['id']}",
            json={"name": "New", "events_retention_days": 0},
            headers=bearer(secret_key),
        )
        is_problem(r, 400, "validation")
        assert [e["field"] for e in r.json()["errors"]] == ["events_retention_days"]
        assert (
            await conn.fetchval("SELECT name FROM projects WHERE id = $1::uuid", project["id"])
            == "Web"
        )

    async def test_patch_missing_project_is_404(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        r = await client.patch(
            f"/v1/projects/{MISSING}", json={"name": "x"}, headers=bearer(secret_key)
        )
        is_problem(r, 404, "not-found")


class TestDeleteProject:
    async def test_delete_removes_that_projects_data_and_only_its(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        other = await _new_project(client, secret_key, "Other")
        other_key = other["write_key"]["key"]
        for key in (write_key, other_key):
            assert (await _event(client, key)).status_code == 200
            assert (await _event(client, key, user_id="v")).status_code == 200
            identify = await _event(
                client, key, type="identify", user_id="u", traits={"plan": "pro"}, event=None
            )
            assert identify.status_code == 200, identify.text
        pid, oid = project["id"], other["id"]
        before = {t: await _count(conn, t, oid) for t in ("events", "event_dedup", "user_profiles")}
        assert before == {"events": 3, "event_dedup": 3, "user_profiles": 1}
        assert await _count(conn, "events", pid) == 3

        r = await client.delete(f"/v1/projects/{pid}", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == pid
        assert body["deleted"] == {
            "events": 3,
            "message_ids": 3,
            "user_profiles": 1,
            "suppressions": 0,
            "erasures": 0,
            "destinations": 0,
            "outbox": 0,
            "deliveries": 0,
        }
        assert body["completed_at"]

        for table in ("events", "event_dedup", "user_profiles", "api_keys"):
            assert await _count(conn, table, pid) == 0, table
        assert await conn.fetchval("SELECT count(*) FROM projects WHERE id = $1::uuid", pid) == 0
        assert await conn.fetchval("SELECT count(*) FROM project_deletions") == 0
        after = {t: await _count(conn, t, oid) for t in ("events", "event_dedup", "user_profiles")}
        assert after == before
        assert await _count(conn, "api_keys", oid) == 1

        # Gone for the partner, and its key is refused (key cache TTL is 0 in these tests).
        is_problem(
            await client.get(f"/v1/projects/{pid}", headers=bearer(secret_key)), 404, "not-found"
        )
        is_problem(
            await client.delete(f"/v1/projects/{pid}", headers=bearer(secret_key)),
            404,
            "not-found",
        )
        is_problem(await _event(client, write_key), 401, "invalid-key")
        assert (await _event(client, other_key)).status_code == 200
        listed = (await client.get("/v1/projects", headers=bearer(secret_key))).json()
        assert [p["id"] for p in listed["projects"]] == [oid]

    async def test_another_org_cannot_delete_it(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        assert (await _event(client, write_key)).status_code == 200
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        r = await client.delete(f"/v1/projects/{project['id']}", headers=bearer(other))
        is_problem(r, 404, "not-found")
        assert await _count(conn, "events", project["id"]) == 1
        assert (await _event(client, write_key)).status_code == 200

    async def test_delete_counts_and_removes_suppressions_and_erasures(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        other = await _new_project(client, secret_key, "Other")
        for key, p in ((write_key, pid), (other["write_key"]["key"], other["id"])):
            assert (
                await _event(client, key, user_id="gone", anonymous_id="a-gone")
            ).status_code == 200
            erased = await client.delete(
                f"/v1/projects/{p}/events/users/gone", headers=bearer(secret_key)
            )
            assert erased.status_code == 200, erased.text
        suppressions = await _count(conn, "suppressions", pid)
        assert suppressions == 2  # the user id and the anonymous id it linked to
        r = await client.delete(f"/v1/projects/{pid}", headers=bearer(secret_key))
        assert r.status_code == 200
        assert r.json()["deleted"] == {
            "events": 0,
            "message_ids": 0,
            "user_profiles": 0,
            "suppressions": 2,
            "erasures": 1,
            "destinations": 0,
            "outbox": 0,
            "deliveries": 0,
        }
        for table in ("suppressions", "erasures"):
            assert await _count(conn, table, pid) == 0
            assert await _count(conn, table, other["id"]) > 0
        is_problem(
            await client.get(f"/v1/projects/{pid}/erasures", headers=bearer(secret_key)),
            404,
            "not-found",
        )


@pytest.fixture
async def cached_keys(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Metrics]]:
    """The app with the production key cache (1 s): a deleted project's key still passes
    authentication for up to a second."""
    metrics = Metrics()
    cached = dataclasses.replace(settings, key_cache_ttl_s=1.0)
    async with (
        LifespanManager(create_app(cached, metrics=metrics)) as manager,
        client_for(manager.app) as c,
    ):
        yield c, metrics


async def test_events_sent_with_a_cached_key_of_a_deleted_project_are_not_stored(
    cached_keys: tuple[httpx.AsyncClient, Metrics],
    secret_key: str,
    conn: asyncpg.Connection,
) -> None:
    client, metrics = cached_keys
    project = await _new_project(client, secret_key, "Doomed")
    key, pid = project["write_key"]["key"], project["id"]
    assert (await _event(client, key)).status_code == 200  # the key is now cached
    r = await client.delete(f"/v1/projects/{pid}", headers=bearer(secret_key))
    assert r.status_code == 200
    assert r.json()["deleted"]["events"] == 1

    late = await _event(client, key, user_id="late")
    assert late.status_code == 200, late.text  # acknowledged...
    assert await _count(conn, "events", pid) == 0  # ...not stored
    assert await _count(conn, "event_dedup", pid) == 0
    assert await _count(conn, "user_profiles", pid) == 0
    assert metrics.registry.get_sample_value("ingest_events_suppressed_total") == 1

    await asyncio.sleep(1.2)
    is_problem(await _event(client, key), 401, "invalid-key")
    assert await _count(conn, "events", pid) == 0


class TestWriteKeys:
    async def test_list_shows_every_key_and_no_secret(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        pid = project["id"]
        issued = await client.post(
            f"/v1/projects/{pid}/keys", json={"server_side": True}, headers=bearer(secret_key)
        )
        assert issued.status_code == 201
        second = issued.json()
        r = await client.get(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))
        assert r.status_code == 200
        keys = r.json()["keys"]
        assert [k["id"] for k in keys] == [project["write_key"]["id"], second["id"]]
        for k in keys:
            assert set(k) == {
                "id",
                "kind",
                "prefix",
                "status",
                "created_at",
                "revoked_at",
                "expires_at",
                "replaced_by",
                "project_id",
                "server_side",
            }
            assert (k["kind"], k["status"], k["project_id"]) == ("write", "active", pid)
            assert k["revoked_at"] is k["expires_at"] is k["replaced_by"] is None
        assert [k["server_side"] for k in keys] == [False, True]
        assert keys[0]["prefix"] == write_key[:12]
        for secret in (write_key, second["key"], secret_key):
            assert secret not in r.text
            assert secret[12:] not in r.text

    async def test_issue_a_write_key_that_writes_to_the_project(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        r = await client.post(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["kind"] == "write"
        assert body["key"].startswith("iwk_")
        assert body["prefix"] == body["key"][:12]
        assert (body["project_id"], body["server_side"]) == (pid, False)
        assert (await _event(client, body["key"])).status_code == 200
        assert await _count(conn, "events", pid) == 1

    async def test_revoke_refuses_the_key_at_once_and_again_is_the_same(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        pid, kid = project["id"], project["write_key"]["id"]
        assert (await _event(client, write_key)).status_code == 200
        r = await client.delete(f"/v1/projects/{pid}/keys/{kid}", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["id"], body["status"]) == (kid, "revoked")
        assert body["revoked_at"] is not None
        assert "key" not in body
        is_problem(await _event(client, write_key), 401, "invalid-key")
        again = await client.delete(f"/v1/projects/{pid}/keys/{kid}", headers=bearer(secret_key))
        assert again.status_code == 200
        assert again.json() == body
        listed = (await client.get(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))).json()
        assert [k["status"] for k in listed["keys"]] == ["revoked"]

    async def test_revoke_missing_or_foreign_key_is_404(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        org: dict[str, Any],
    ) -> None:
        pid = project["id"]
        other = await _new_project(client, secret_key, "Other")
        for kid in (MISSING, "nope", other["write_key"]["id"], org["secret_key"]["id"]):
            r = await client.delete(f"/v1/projects/{pid}/keys/{kid}", headers=bearer(secret_key))
            is_problem(r, 404, "not-found")
        assert (await _event(client, other["write_key"]["key"])).status_code == 200

    async def test_rotate_with_grace_keeps_the_old_key_until_it_ends(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        pid, kid = project["id"], project["write_key"]["id"]
        r = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate",
            json={"grace_seconds": 1.5},
            headers=bearer(secret_key),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        new_key = body["key"]
        assert new_key.startswith("iwk_")
        assert new_key != write_key
        assert (body["kind"], body["project_id"], body["server_side"]) == ("write", pid, False)
        old = body["replaces"]
        assert (old["id"], old["status"], old["replaced_by"]) == (kid, "expiring", body["id"])
        assert old["expires_at"] is not None
        assert old["revoked_at"] is None
        assert (await _event(client, write_key)).status_code == 200
        assert (await _event(client, new_key)).status_code == 200
        listed = (await client.get(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))).json()
        assert [(k["id"], k["status"]) for k in listed["keys"]] == [
            (kid, "expiring"),
            (body["id"], "active"),
        ]

        await asyncio.sleep(1.7)
        is_problem(await _event(client, write_key), 401, "invalid-key")
        assert (await _event(client, new_key)).status_code == 200
        listed = (await client.get(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))).json()
        assert [k["status"] for k in listed["keys"]] == ["revoked", "active"]
        # An expired key is no longer rotatable.
        again = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate", json={}, headers=bearer(secret_key)
        )
        is_problem(again, 404, "not-found")

    async def test_rotate_with_no_grace_refuses_the_old_key_at_once(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        pid, kid = project["id"], project["write_key"]["id"]
        r = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate",
            json={"grace_seconds": 0},
            headers=bearer(secret_key),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["replaces"]["status"] == "revoked"
        assert body["replaces"]["revoked_at"] is not None
        assert body["replaces"]["replaced_by"] == body["id"]
        is_problem(await _event(client, write_key), 401, "invalid-key")
        assert (await _event(client, body["key"])).status_code == 200
        # A revoked key cannot be rotated.
        again = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate", headers=bearer(secret_key)
        )
        is_problem(again, 404, "not-found")

    async def test_rotate_defaults_to_no_grace_and_keeps_server_side(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        pid = project["id"]
        issued = (
            await client.post(
                f"/v1/projects/{pid}/keys", json={"server_side": True}, headers=bearer(secret_key)
            )
        ).json()
        r = await client.post(
            f"/v1/projects/{pid}/keys/{issued['id']}/rotate", headers=bearer(secret_key)
        )
        assert r.status_code == 201, r.text
        assert r.json()["server_side"] is True
        assert r.json()["replaces"]["status"] == "revoked"
        is_problem(await _event(client, issued["key"]), 401, "invalid-key")


class TestSecretKeys:
    async def test_issue_list_and_use_a_second_secret_key(
        self, client: httpx.AsyncClient, secret_key: str, org: dict[str, Any]
    ) -> None:
        r = await client.post("/v1/keys", headers=bearer(secret_key))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["kind"] == "secret"
        assert body["key"].startswith("isk_")
        assert body["prefix"] == body["key"][:12]
        assert "project_id" not in body
        assert "server_side" not in body
        with_body = await client.post("/v1/keys", json={}, headers=bearer(secret_key))
        assert with_body.status_code == 201
        listed = await client.get("/v1/keys", headers=bearer(body["key"]))
        assert listed.status_code == 200
        keys = listed.json()["keys"]
        assert [k["id"] for k in keys] == [
            org["secret_key"]["id"],
            body["id"],
            with_body.json()["id"],
        ]
        assert {k["kind"] for k in keys} == {"secret"}
        assert {k["status"] for k in keys} == {"active"}
        for secret in (secret_key, body["key"], with_body.json()["key"]):
            assert secret not in listed.text
            assert secret[12:] not in listed.text

    async def test_secret_key_list_holds_no_write_keys(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        listed = (await client.get("/v1/keys", headers=bearer(secret_key))).json()["keys"]
        assert project["write_key"]["id"] not in [k["id"] for k in listed]

    async def test_revoke_a_secret_key(
        self, client: httpx.AsyncClient, secret_key: str, org: dict[str, Any]
    ) -> None:
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()
        r = await client.delete(f"/v1/keys/{second['id']}", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["status"]) == (second["id"], "revoked")
        is_problem(await client.get("/v1/keys", headers=bearer(second["key"])), 401, "invalid-key")
        assert (await client.get("/v1/keys", headers=bearer(secret_key))).status_code == 200

    async def test_revoking_the_last_working_secret_key_is_a_conflict(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        org: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        kid = org["secret_key"]["id"]
        r = await client.delete(f"/v1/keys/{kid}", headers=bearer(secret_key))
        is_problem(r, 409, "conflict")
        assert (
            await conn.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1::uuid", kid) is None
        )
        assert (await client.get("/v1/keys", headers=bearer(secret_key))).status_code == 200
        # With a second one, the first may go (by the second, or by itself); then the second
        # is the last.
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()
        assert (
            await client.delete(f"/v1/keys/{kid}", headers=bearer(secret_key))
        ).status_code == 200
        is_problem(await client.get("/v1/keys", headers=bearer(secret_key)), 401, "invalid-key")
        last = await client.delete(f"/v1/keys/{second['id']}", headers=bearer(second["key"]))
        is_problem(last, 409, "conflict")
        # Revoking the already revoked one again is fine: it changes nothing.
        again = await client.delete(f"/v1/keys/{kid}", headers=bearer(second["key"]))
        assert again.status_code == 200
        assert again.json()["status"] == "revoked"

    async def test_rotate_a_secret_key(
        self, client: httpx.AsyncClient, secret_key: str, org: dict[str, Any]
    ) -> None:
        kid = org["secret_key"]["id"]
        r = await client.post(f"/v1/keys/{kid}/rotate", json={}, headers=bearer(secret_key))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["kind"] == "secret"
        assert body["key"].startswith("isk_")
        assert (body["replaces"]["id"], body["replaces"]["status"]) == (kid, "revoked")
        assert body["replaces"]["replaced_by"] == body["id"]
        assert "project_id" not in body
        is_problem(await client.get("/v1/keys", headers=bearer(secret_key)), 401, "invalid-key")
        listed = await client.get("/v1/keys", headers=bearer(body["key"]))
        assert [(k["id"], k["status"]) for k in listed.json()["keys"]] == [
            (kid, "revoked"),
            (body["id"], "active"),
        ]
        # The successor is now the last working one.
        last = await client.delete(f"/v1/keys/{body['id']}", headers=bearer(body["key"]))
        is_problem(last, 409, "conflict")

    async def test_rotate_a_secret_key_with_grace(
        self, client: httpx.AsyncClient, secret_key: str, org: dict[str, Any]
    ) -> None:
        kid = org["secret_key"]["id"]
        r = await client.post(
            f"/v1/keys/{kid}/rotate", json={"grace_seconds": 1}, headers=bearer(secret_key)
        )
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["replaces"]["status"] == "expiring"
        assert (await client.get("/v1/keys", headers=bearer(secret_key))).status_code == 200
        await asyncio.sleep(1.2)
        is_problem(await client.get("/v1/keys", headers=bearer(secret_key)), 401, "invalid-key")
        assert (await client.get("/v1/keys", headers=bearer(new["key"]))).status_code == 200

    async def test_the_two_key_routes_never_reach_each_others_keys(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        org: dict[str, Any],
    ) -> None:
        write_id = project["write_key"]["id"]
        secret_id = org["secret_key"]["id"]
        is_problem(
            await client.delete(f"/v1/keys/{write_id}", headers=bearer(secret_key)),
            404,
            "not-found",
        )
        is_problem(
            await client.post(f"/v1/keys/{write_id}/rotate", headers=bearer(secret_key)),
            404,
            "not-found",
        )
        is_problem(
            await client.post(
                f"/v1/projects/{project['id']}/keys/{secret_id}/rotate", headers=bearer(secret_key)
            ),
            404,
            "not-found",
        )
        assert (await _event(client, project["write_key"]["key"])).status_code == 200

    async def test_another_orgs_secret_key_is_missing(
        self, client: httpx.AsyncClient, secret_key: str, settings: Settings
    ) -> None:
        other = await _create_org(settings, "Other")
        # Give the other org a second key so that only the tenancy check can refuse.
        spare = await client.post("/v1/keys", headers=bearer(other["secret_key"]["key"]))
        assert spare.status_code == 201
        r = await client.delete(f"/v1/keys/{other['secret_key']['id']}", headers=bearer(secret_key))
        is_problem(r, 404, "not-found")
        assert (
            await client.get("/v1/keys", headers=bearer(other["secret_key"]["key"]))
        ).status_code == 200
        listed = (await client.get("/v1/keys", headers=bearer(secret_key))).json()["keys"]
        assert other["secret_key"]["id"] not in [k["id"] for k in listed]


class TestValidation:
    @pytest.mark.parametrize("grace", [-1, 2592001, "5", True, None, [1], {"s": 1}])
    async def test_bad_grace_seconds_is_400_and_rotates_nothing(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        grace: Any,
    ) -> None:
        pid, kid = project["id"], project["write_key"]["id"]
        r = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate",
            json={"grace_seconds": grace},
            headers=bearer(secret_key),
        )
        is_problem(r, 400, "validation")
        assert [e["field"] for e in r.json()["errors"]] == ["grace_seconds"]
        assert await _count(conn, "api_keys", pid) == 1
        assert (await _event(client, write_key)).status_code == 200

    async def test_grace_seconds_at_the_maximum_is_accepted(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        pid, kid = project["id"], project["write_key"]["id"]
        r = await client.post(
            f"/v1/projects/{pid}/keys/{kid}/rotate",
            json={"grace_seconds": 2592000},
            headers=bearer(secret_key),
        )
        assert r.status_code == 201, r.text
        assert r.json()["replaces"]["status"] == "expiring"

    @pytest.mark.parametrize("server_side", [True, False])
    async def test_server_side_on_a_secret_key_is_400(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        org: dict[str, Any],
        conn: asyncpg.Connection,
        server_side: bool,
    ) -> None:
        r = await client.post(
            "/v1/keys", json={"server_side": server_side}, headers=bearer(secret_key)
        )
        is_problem(r, 400, "validation")
        assert [e["field"] for e in r.json()["errors"]] == ["server_side"]
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 1

    async def test_server_side_must_be_a_boolean(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        r = await client.post(
            f"/v1/projects/{project['id']}/keys",
            json={"server_side": "yes"},
            headers=bearer(secret_key),
        )
        is_problem(r, 400, "validation")

    @pytest.mark.parametrize("body", [b"[]", b"not json", b'"x"'])
    async def test_key_bodies_must_be_json_objects(
        self, client: httpx.AsyncClient, secret_key: str, body: bytes
    ) -> None:
        r = await client.post(
            "/v1/keys",
            content=body,
            headers={**bearer(secret_key), "Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"


def _partner_routes(
    project_id: str, write_key_id: str, secret_key_id: str
) -> list[tuple[str, str, dict[str, Any] | None]]:
    p = f"/v1/projects/{project_id}"
    return [
        ("GET", "/v1/projects", None),
        ("POST", "/v1/projects", {"name": "x"}),
        ("GET", p, None),
        ("PATCH", p, {"name": "x"}),
        ("DELETE", p, None),
        ("GET", f"{p}/keys", None),
        ("POST", f"{p}/keys", {}),
        ("DELETE", f"{p}/keys/{write_key_id}", None),
        ("POST", f"{p}/keys/{write_key_id}/rotate", {}),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {}),
        ("DELETE", f"/v1/keys/{secret_key_id}", None),
        ("POST", f"/v1/keys/{secret_key_id}/rotate", {}),
        ("GET", "/v1/audit-log", None),
        ("GET", f"{p}/events/users/u", None),
        ("DELETE", f"{p}/events/users/u", None),
        ("GET", f"{p}/users/u", None),
        ("POST", f"{p}/events/export", {"user_id": "u"}),
        ("POST", f"{p}/events/erase", {"user_id": "u"}),
        ("GET", f"{p}/erasures", None),
        ("GET", f"{p}/erasures/{MISSING}", None),
    ]


async def _state(conn: asyncpg.Connection) -> list[Any]:
    return [
        await conn.fetchval("SELECT count(*) FROM projects"),
        await conn.fetch("SELECT id, revoked_at, expires_at FROM api_keys ORDER BY id"),
        await conn.fetchval("SELECT count(*) FROM audit_log"),
        await conn.fetchval("SELECT count(*) FROM erasures"),
        await conn.fetchval("SELECT count(*) FROM events"),
    ]


class TestRefusals:
    async def test_a_write_key_is_refused_on_every_partner_route(
        self,
        client: httpx.AsyncClient,
        project: dict[str, Any],
        write_key: str,
        org: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        assert (await _event(client, write_key)).status_code == 200
        before = await _state(conn)
        routes = _partner_routes(project["id"], project["write_key"]["id"], org["secret_key"]["id"])
        seen = []
        for method, path, doc in routes:
            r = await client.request(method, path, json=doc, headers=bearer(write_key))
            seen.append((method, path, r.status_code))
            assert r.headers["content-type"] == "application/problem+json", (method, path)
            assert r.json()["type"].endswith("/forbidden"), (method, path)
        assert [s for s in seen if s[2] != 403] == []
        assert await _state(conn) == before
        assert (await _event(client, write_key)).status_code == 200

    @pytest.mark.parametrize(
        "browser",
        [
            {"Origin": "https://app.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ],
        ids=["origin", "null-origin", "cross-site", "same-site"],
    )
    async def test_a_secret_key_from_a_browser_is_refused_on_every_partner_route(
        self,
        client: httpx.AsyncClient,
        project: dict[str, Any],
        secret_key: str,
        org: dict[str, Any],
        conn: asyncpg.Connection,
        browser: dict[str, str],
    ) -> None:
        before = await _state(conn)
        routes = _partner_routes(project["id"], project["write_key"]["id"], org["secret_key"]["id"])
        seen = []
        for method, path, doc in routes:
            r = await client.request(
                method, path, json=doc, headers={**bearer(secret_key), **browser}
            )
            seen.append((method, path, r.status_code))
            assert r.json()["type"].endswith("/forbidden"), (method, path)
            # No CORS grant: a page could not read the answer anyway.
            assert "access-control-allow-origin" not in r.headers
        assert [s for s in seen if s[2] != 403] == []
        assert await _state(conn) == before
        # The same key from a server is fine.
        assert (await client.get("/v1/projects", headers=bearer(secret_key))).status_code == 200

    async def test_no_key_unknown_key_and_revoked_key_are_401(
        self, client: httpx.AsyncClient, secret_key: str, org: dict[str, Any]
    ) -> None:
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()
        await client.delete(f"/v1/keys/{second['id']}", headers=bearer(secret_key))
        for headers in (
            {},
            bearer("isk_" + "A" * 43),
            bearer(second["key"]),
            {"Authorization": "Bearer"},
        ):
            is_problem(await client.get("/v1/projects", headers=headers), 401, "invalid-key")


async def test_concurrent_revocations_never_leave_the_org_without_a_working_secret_key(
    client: httpx.AsyncClient, secret_key: str, org: dict[str, Any], conn: asyncpg.Connection
) -> None:
    """The org's only two secret keys are revoked at the same time (by the first of them):
    whatever the interleaving, one revocation must be refused (409), so one key keeps working.
    Repeated, since a race may not show on every try."""
    caller = secret_key
    caller_id = org["secret_key"]["id"]
    for _ in range(5):
        second = (await client.post("/v1/keys", headers=bearer(caller))).json()
        a, b = await asyncio.gather(
            client.delete(f"/v1/keys/{second['id']}", headers=bearer(caller)),
            client.delete(f"/v1/keys/{caller_id}", headers=bearer(caller)),
        )
        working = await conn.fetch(
            "SELECT id::text FROM api_keys WHERE kind = 'secret' AND revoked_at IS NULL"
        )
        assert len(working) == 1, (a.status_code, a.text, b.status_code, b.text)
        assert 409 in (a.status_code, b.status_code)
        if working[0]["id"] == second["id"]:
            caller, caller_id = second["key"], second["id"]
