"""The destination routes as a partner uses them: create (the signing secret once), list, read,
change, pause, delete, dead letters; what they refuse; tenancy; the audit log."""

from __future__ import annotations

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
from tests.api.test_forwarding import set_status
from tests.conftest import bearer, client_for, is_problem

HOOK = "http://127.0.0.1:9/hook"  # never reached: these tests pause or never send


def base(project: dict[str, Any]) -> str:
    return f"/v1/projects/{project['id']}/destinations"


async def create(
    client: httpx.AsyncClient, key: str, project: dict[str, Any], **doc: Any
) -> httpx.Response:
    doc = {"type": "webhook", "name": "warehouse", "url": HOOK, **doc}
    return await client.post(base(project), json=doc, headers=bearer(key))


class TestCreate:
    async def test_a_webhook_shows_its_signing_secret_once(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        r = await create(client, secret_key, project)
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created["signing_secret"]
        assert secret.startswith("whsec_")
        assert len(secret) > 40
        assert created["type"] == "webhook"
        assert created["status"] == "active"
        assert created["event_types"] is None
        assert created["queue"] == {"pending": 0, "dead_letters": 0, "oldest_pending_at": None}
        stored = await conn.fetchval("SELECT secret FROM destinations")
        assert stored == secret
        listed = await client.get(base(project), headers=bearer(secret_key))
        read = await client.get(f"{base(project)}/{created['id']}", headers=bearer(secret_key))
        for answer in (listed, read):
            assert answer.status_code == 200
            assert secret not in answer.text
            assert "signing_secret" not in answer.text
        assert listed.json()["destinations"][0]["id"] == created["id"]

    async def test_a_replay_never_shows_the_secret_again(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        headers = {**bearer(secret_key), "Idempotency-Key": "create-hook-0001"}
        doc = {"type": "webhook", "name": "w", "url": HOOK}
        first = await client.post(base(project), json=doc, headers=headers)
        assert first.status_code == 201
        again = await client.post(base(project), json=doc, headers=headers)
        problem = is_problem(again, 409, "key-already-issued")
        assert problem["created"]["id"] == first.json()["id"]
        assert first.json()["signing_secret"] not in again.text

    async def test_a_conversions_api_keeps_its_token_to_itself(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        r = await create(
            client,
            secret_key,
            project,
            type="conversions_api",
            access_token="EAAB-secret-token",
            settings={"action_source": "app"},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["has_access_token"] is True
        assert created["event_types"] == ["track", "page", "screen"]
        assert created["settings"] == {"action_source": "app"}
        assert "signing_secret" not in created
        assert "EAAB-secret-token" not in r.text
        assert await conn.fetchval("SELECT secret FROM destinations") == "EAAB-secret-token"
        audit = await client.get("/v1/audit-log", headers=bearer(secret_key))
        assert "EAAB-secret-token" not in audit.text

    @pytest.mark.parametrize(
        ("doc", "field"),
        [
            ({"type": "email"}, "type"),
            ({"name": ""}, "name"),
            ({"name": "x" * 201}, "name"),
            ({"url": "ftp://hooks.example/"}, "url"),
            ({"url": "https://user:pw@hooks.example/"}, "url"),
            ({"url": 7}, "url"),
            ({"event_types": []}, "event_types"),
            ({"event_types": ["track", "track"]}, "event_types"),
            ({"event_types": ["purchase"]}, "event_types"),
            ({"settings": {"action_source": "app"}}, "settings"),  # a webhook takes none
            ({"access_token": "t"}, "access_token"),  # a webhook takes none
            ({"type": "conversions_api", "settings": {"action_source": "tv"}}, "action_source"),
            ({"type": "conversions_api", "settings": {"pixel": 1}}, "settings"),
            ({"color": "blue"}, "color"),
        ],
    )
    async def test_refused_with_the_field_named(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
        doc: dict[str, Any],
        field: str,
    ) -> None:
        r = await create(client, secret_key, project, **doc)
        problem = is_problem(r, 400, "validation")
        assert any(field in e["field"] for e in problem["errors"]), problem
        assert await conn.fetchval("SELECT count(*) FROM destinations") == 0


@pytest.fixture
async def guarded_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The service as deployed: no private destinations, no plain http."""
    app = create_app(dataclasses.replace(settings, destinations_allow_private=False))
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        yield client


class TestAddresses:
    @pytest.mark.parametrize(
        ("url", "code"),
        [
            ("http://hooks.example.com/", "insecure_url"),
            ("https://127.0.0.1/hook", "forbidden_address"),
            ("https://10.0.0.1/hook", "forbidden_address"),
            ("https://[::1]/hook", "forbidden_address"),
            ("https://169.254.169.254/latest/meta-data", "forbidden_address"),
            ("https://localhost/hook", "forbidden_address"),
            ("https://no-such-host.invalid/hook", "unresolvable_host"),
        ],
    )
    async def test_our_own_network_is_out_of_reach(
        self,
        guarded_client: httpx.AsyncClient,
        secret_key: str,
        url: str,
        code: str,
    ) -> None:
        r = await guarded_client.post(
            "/v1/projects", json={"name": "p"}, headers=bearer(secret_key)
        )
        project = r.json()
        r = await create(guarded_client, secret_key, project, url=url)
        problem = is_problem(r, 400, "validation")
        assert problem["errors"][0]["field"] == "url"
        assert problem["errors"][0]["reason"].startswith(code)

    async def test_a_public_address_is_accepted(
        self, guarded_client: httpx.AsyncClient, secret_key: str
    ) -> None:
        r = await guarded_client.post(
            "/v1/projects", json={"name": "p"}, headers=bearer(secret_key)
        )
        r = await create(guarded_client, secret_key, r.json(), url="https://93.184.215.14/hook")
        assert r.status_code == 201, r.text


class TestChange:
    async def test_pause_resume_rename_and_repoint(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        created = (await create(client, secret_key, project)).json()
        path = f"{base(project)}/{created['id']}"
        for change, expected in (
            ({"status": "paused"}, {"status": "paused"}),
            ({"status": "active"}, {"status": "active"}),
            ({"name": "lake"}, {"name": "lake"}),
            ({"url": "http://127.0.0.1:10/other"}, {"url": "http://127.0.0.1:10/other"}),
            ({"event_types": ["track"]}, {"event_types": ["track"]}),
            ({"event_types": None}, {"event_types": None}),
        ):
            r = await client.patch(path, json=change, headers=bearer(secret_key))
            assert r.status_code == 200, r.text
            assert {k: r.json()[k] for k in expected} == expected
        for bad in ({}, {"status": "stopped"}, {"url": "gopher://x/"}, {"type": "webhook"}):
            r = await client.patch(path, json=bad, headers=bearer(secret_key))
            assert r.status_code == 400, (bad, r.text)
        r = await client.get(path, headers=bearer(secret_key))
        assert r.json()["name"] == "lake"

    async def test_delete_takes_what_waits_with_it(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        created = (await create(client, secret_key, project)).json()
        path = f"{base(project)}/{created['id']}"
        await set_status(client, secret_key, project["id"], created["id"], "paused")
        event = {
            "event": "e",
            "user_id": "u1",
            "context": {"device": {"advertisingId": "AEBE52E7-03EE-455A-B3C4-E57283966239"}},
        }
        r = await client.post("/v1/track", json=event, headers=bearer(write_key))
        assert r.status_code == 200, r.text
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
        r = await client.delete(path, headers=bearer(secret_key))
        assert r.status_code == 204
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        is_problem(await client.get(path, headers=bearer(secret_key)), 404, "not-found")
        is_problem(await client.delete(path, headers=bearer(secret_key)), 404, "not-found")
        # Events still arrive and are stored; nothing is queued for the deleted destination.
        r = await client.post("/v1/track", json=event, headers=bearer(write_key))
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0

    async def test_event_types_decide_what_is_queued(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        created = (await create(client, secret_key, project, event_types=["identify"])).json()
        await set_status(client, secret_key, project["id"], created["id"], "paused")
        batch = [
            {"type": "identify", "user_id": "u1", "traits": {"plan": "pro"}},
            {"type": "track", "event": "e", "user_id": "u1"},
        ]
        r = await client.post("/v1/batch", json={"batch": batch}, headers=bearer(write_key))
        assert r.status_code == 200, r.text
        assert await conn.fetchval("SELECT array_agg(type) FROM outbox") == ["identify"]


class TestDeadLetterRoutes:
    async def test_pages_and_bad_cursors(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        created = (await create(client, secret_key, project)).json()
        path = f"{base(project)}/{created['id']}"
        await set_status(client, secret_key, project["id"], created["id"], "paused")
        batch = [{"event": "e", "user_id": "u1", "message_id": f"m{n}"} for n in range(5)]
        await client.post("/v1/batch", json={"batch": batch}, headers=bearer(write_key))
        await conn.execute(
            "UPDATE outbox SET status = 'dead', devices = NULL, dead_at = now(), attempts = 3,"
            " last_error = 'http_500'"
        )
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            r = await client.get(f"{path}/dead-letters", params=params, headers=bearer(secret_key))
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [d["message_id"] for d in page["dead_letters"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"m{n}" for n in range(5)]
        for bad in ("x", "-1", "1" * 30):
            r = await client.get(
                f"{path}/dead-letters", params={"cursor": bad}, headers=bearer(secret_key)
            )
            is_problem(r, 400, "invalid-body")
        some = [
            d["id"]
            for d in (await client.get(f"{path}/dead-letters", headers=bearer(secret_key))).json()[
                "dead_letters"
            ][:2]
        ]
        r = await client.post(
            f"{path}/dead-letters/retry", json={"ids": some}, headers=bearer(secret_key)
        )
        assert r.json() == {"retried": 2}
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'") == 2
        bad_bodies: list[dict[str, Any]] = [{"ids": []}, {"ids": [1]}, {"ids": ["x"]}, {"a": 1}]
        for bad_body in bad_bodies:
            r = await client.post(
                f"{path}/dead-letters/retry", json=bad_body, headers=bearer(secret_key)
            )
            is_problem(r, 400, "validation")


class TestTenancy:
    async def test_another_organization_sees_nothing(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        settings: Settings,
    ) -> None:
        created = (await create(client, secret_key, project)).json()
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        path = f"{base(project)}/{created['id']}"
        answers = [
            await client.get(base(project), headers=bearer(other)),
            await create(client, other, project),
            await client.get(path, headers=bearer(other)),
            await client.patch(path, json={"name": "x"}, headers=bearer(other)),
            await client.delete(path, headers=bearer(other)),
            await client.get(f"{path}/dead-letters", headers=bearer(other)),
            await client.post(f"{path}/dead-letters/retry", headers=bearer(other)),
        ]
        for r in answers:
            is_problem(r, 404, "not-found")
        mine = await client.get(path, headers=bearer(secret_key))
        assert mine.json()["name"] == "warehouse"

    async def test_a_write_key_reaches_no_destination_route(
        self, client: httpx.AsyncClient, write_key: str, project: dict[str, Any]
    ) -> None:
        r = await client.get(base(project), headers=bearer(write_key))
        assert r.status_code in (401, 403)


async def test_every_change_is_audited(
    client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
) -> None:
    created = (await create(client, secret_key, project)).json()
    path = f"{base(project)}/{created['id']}"
    await set_status(client, secret_key, project["id"], created["id"], "paused")
    await client.post(f"{path}/dead-letters/retry", headers=bearer(secret_key))
    await client.delete(path, headers=bearer(secret_key))
    r = await client.get("/v1/audit-log", headers=bearer(secret_key))
    entries = [e for e in r.json()["entries"] if e["action"].startswith("destination.")]
    assert [e["action"] for e in entries] == [
        "destination.delete",
        "destination.retry_dead_letters",
        "destination.update",
        "destination.create",
    ]
    assert {e["target"]["id"] for e in entries} == {created["id"]}
    assert entries[2]["details"] == {"fields": ["status"]}
    assert created["signing_secret"] not in r.text


class TestRotateSecret:
    async def test_a_new_secret_once_and_the_old_one_only_during_the_grace(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        created = (await create(client, secret_key, project)).json()
        path = f"{base(project)}/{created['id']}/rotate-secret"
        headers = {**bearer(secret_key), "Idempotency-Key": "rotate-hook-0001"}
        r = await client.post(path, json={"grace_seconds": 3600}, headers=headers)
        assert r.status_code == 200, r.text
        new = r.json()["signing_secret"]
        assert new.startswith("whsec_")
        assert new != created["signing_secret"]
        row = await conn.fetchrow(
            "SELECT secret, previous_secret, previous_secret_until > now() + interval '59 minutes'"
            " AS lasts FROM destinations"
        )
        assert row is not None
        assert (row["secret"], row["previous_secret"], row["lasts"]) == (
            new,
            created["signing_secret"],
            True,
        )
        replay = await client.post(path, json={"grace_seconds": 3600}, headers=headers)
        is_problem(replay, 409, "key-already-issued")
        assert new not in replay.text
        # Without grace the old secret stops signing at once.
        r = await client.post(path, headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        row = await conn.fetchrow("SELECT previous_secret, previous_secret_until FROM destinations")
        assert row is not None
        assert (row["previous_secret"], row["previous_secret_until"]) == (None, None)
        for bad in ({"grace_seconds": -1}, {"grace_seconds": 10**9}, {"grace": 5}):
            is_problem(
                await client.post(path, json=bad, headers=bearer(secret_key)), 400, "validation"
            )

    async def test_a_conversions_api_has_no_signing_secret(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        created = (await create(client, secret_key, project, type="conversions_api")).json()
        r = await client.post(
            f"{base(project)}/{created['id']}/rotate-secret", headers=bearer(secret_key)
        )
        is_problem(r, 400, "validation")


async def test_an_unknown_field_that_is_personal_data_is_not_echoed(
    client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
) -> None:
    r = await create(client, secret_key, project, **{"jane.doe@example.com": 1, "colour": 2})
    problem = is_problem(r, 400, "validation")
    assert "jane.doe" not in r.text
    assert {e["field"] for e in problem["errors"]} == {"(unnamed)", "colour"}
