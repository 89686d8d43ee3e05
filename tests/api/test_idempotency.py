"""Idempotency-Key on the partner routes: a retried request has its effect once, and what the
cache keeps is no more than it must (never an issued secret)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.cli import _create_org
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import bearer, is_problem, new_id

# A whole key (prefix and at least one more character of it), and a key's display prefix.
SECRET_LIKE = re.compile(r"i[sw]k_[A-Za-z0-9_-]{9,}")
PREFIX_LIKE = re.compile(r"i[sw]k_[A-Za-z0-9_-]{8}")


def _with_key(secret_key: str, idem: str | bytes) -> dict[str, Any]:
    return {**bearer(secret_key), "Idempotency-Key": idem}


async def _audit_count(conn: asyncpg.Connection, action: str) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = $1", action)
    return n


async def _cache_dump(conn: asyncpg.Connection) -> str:
    """Every idempotency row as text, the body both as Postgres prints bytea and decoded."""
    rows = await conn.fetch(
        "SELECT i::text AS row, encode(body, 'escape') AS body, body::text AS hex "
        "FROM idempotency_keys AS i"
    )
    return "\n".join(f"{r['row']}\n{r['body']}\n{r['hex']}" for r in rows)


class TestReplay:
    async def test_c1_same_key_and_body_twenty_times_has_one_effect(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        idem = new_id()
        first = await client.patch(
            f"/v1/projects/{pid}", json={"name": "Renamed"}, headers=_with_key(secret_key, idem)
        )
        assert first.status_code == 200, first.text
        assert "idempotent-replayed" not in first.headers
        # A change made in between: a replay must not undo it by running again.
        other = await client.patch(
            f"/v1/projects/{pid}", json={"name": "Later"}, headers=bearer(secret_key)
        )
        assert other.status_code == 200
        for _ in range(19):
            again = await client.patch(
                f"/v1/projects/{pid}",
                json={"name": "Renamed"},
                headers=_with_key(secret_key, idem),
            )
            assert again.status_code == first.status_code
            assert again.content == first.content
            assert again.headers["idempotent-replayed"] == "true"
            assert again.headers["content-type"] == first.headers["content-type"]
            assert again.headers["x-request-id"] != first.headers["x-request-id"]
        assert await conn.fetchval("SELECT name FROM projects WHERE id = $1::uuid", pid) == "Later"
        assert await _audit_count(conn, "project.update") == 2  # the first PATCH and `other`
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 1

    async def test_c1_project_creation_twenty_times_creates_one_project(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        idem = new_id()
        answers = [
            await client.post(
                "/v1/projects", json={"name": "Once"}, headers=_with_key(secret_key, idem)
            )
            for _ in range(20)
        ]
        assert answers[0].status_code == 201
        created = answers[0].json()
        expected = {**created, "write_key": {**created["write_key"], "key": None}}
        for r in answers[1:]:
            body = is_problem(r, 409, "key-already-issued")
            assert body["created"] == expected
            assert created["write_key"]["key"] not in r.text
        assert await conn.fetchval("SELECT count(*) FROM projects") == 1
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE kind = 'write'") == 1
        assert await _audit_count(conn, "project.create") == 1
        assert await _audit_count(conn, "key.create") == 1

    async def test_quoted_and_bare_key_are_the_same_key(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        pid = project["id"]
        first = await client.patch(
            f"/v1/projects/{pid}", json={"name": "Q"}, headers=_with_key(secret_key, "abcdefgh-1")
        )
        assert first.status_code == 200
        again = await client.patch(
            f"/v1/projects/{pid}",
            json={"name": "Q"},
            headers=_with_key(secret_key, '"abcdefgh-1"'),
        )
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.content == first.content

    async def test_reads_ignore_the_header(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.get("/v1/projects", headers=_with_key(secret_key, "x"))
        assert r.status_code == 200
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0


class TestReuse:
    async def test_c2_same_key_with_another_body_path_or_method_is_422_and_does_nothing(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        second = await client.post("/v1/projects", json={"name": "Two"}, headers=bearer(secret_key))
        pid2 = second.json()["id"]
        idem = new_id()
        first = await client.patch(
            f"/v1/projects/{pid}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        assert first.status_code == 200
        audit_before = await conn.fetchval("SELECT count(*) FROM audit_log")

        attempts = [
            ("PATCH", f"/v1/projects/{pid}", {"name": "B"}),  # another body
            ("PATCH", f"/v1/projects/{pid}", {"name": "A", "default_country": "FR"}),
            ("PATCH", f"/v1/projects/{pid2}", {"name": "A"}),  # another path
            ("PATCH", f"/v1/projects/{pid}?x=1", {"name": "A"}),  # another query
            ("DELETE", f"/v1/projects/{pid}", None),  # another method
            ("POST", "/v1/projects", {"name": "A"}),
            ("POST", f"/v1/projects/{pid}/keys", {}),
        ]
        for method, path, doc in attempts:
            r = await client.request(method, path, json=doc, headers=_with_key(secret_key, idem))
            is_problem(r, 422, "idempotency-key-reused")
            assert "idempotent-replayed" not in r.headers

        names = await conn.fetch("SELECT id::text, name FROM projects ORDER BY name")
        assert sorted((r["id"], r["name"]) for r in names) == sorted([(pid, "A"), (pid2, "Two")])
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 3
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == audit_before
        # The original is still replayed.
        again = await client.patch(
            f"/v1/projects/{pid}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"


class TestConcurrency:
    async def test_c3_fifty_concurrent_creations_make_one_project(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        idem = new_id()
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/projects", json={"name": "Race"}, headers=_with_key(secret_key, idem)
                )
                for _ in range(50)
            )
        )
        statuses = [r.status_code for r in answers]
        assert statuses.count(201) == 1, statuses
        assert await conn.fetchval("SELECT count(*) FROM projects") == 1
        assert await _audit_count(conn, "project.create") == 1
        winner = next(r for r in answers if r.status_code == 201).json()
        for r in answers:
            if r.status_code == 201:
                continue
            assert r.status_code == 409, r.text
            body = r.json()
            assert body["type"].rsplit("/", 1)[1] in ("idempotency-in-flight", "key-already-issued")
            if body["type"].endswith("/idempotency-in-flight"):
                assert int(r.headers["retry-after"]) >= 1
            else:
                assert body["created"]["id"] == winner["id"]
                assert body["created"]["write_key"]["key"] is None
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 1

    async def test_c3_fifty_concurrent_patches_have_one_effect(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        idem = new_id()
        pid = project["id"]
        answers = await asyncio.gather(
            *(
                client.patch(
                    f"/v1/projects/{pid}",
                    json={"name": "Race"},
                    headers=_with_key(secret_key, idem),
                )
                for _ in range(50)
            )
        )
        firsts = [
            r for r in answers if r.status_code == 200 and "idempotent-replayed" not in r.headers
        ]
        assert len(firsts) == 1
        for r in answers:
            if r.status_code == 200:
                assert r.content == firsts[0].content
            else:
                is_problem(r, 409, "idempotency-in-flight")
                assert r.headers["retry-after"]
        assert await _audit_count(conn, "project.update") == 1


class TestScope:
    async def test_c5_two_organizations_using_the_same_key_are_independent(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        secret_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        other = (await _create_org(settings, "Other"))["secret_key"]["key"]
        idem = "shared-idempotency-key-1"
        mine = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(secret_key, idem)
        )
        theirs = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(other, idem)
        )
        assert mine.status_code == theirs.status_code == 201
        assert mine.json()["id"] != theirs.json()["id"]
        assert theirs.json()["write_key"]["key"]
        # Each organization's replay points at its own project.
        mine_again = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(secret_key, idem)
        )
        theirs_again = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(other, idem)
        )
        assert (
            is_problem(mine_again, 409, "key-already-issued")["created"]["id"] == mine.json()["id"]
        )
        assert (
            is_problem(theirs_again, 409, "key-already-issued")["created"]["id"]
            == theirs.json()["id"]
        )
        # And another body is another org's business: no 422 across organizations.
        other_body = await client.post(
            "/v1/projects", json={"name": "Q"}, headers=_with_key(other, "shared-idempotency-key-2")
        )
        assert other_body.status_code == 201
        assert await conn.fetchval("SELECT count(*) FROM projects") == 3

    async def test_two_secret_keys_of_one_organization_are_independent(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any]
    ) -> None:
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()["key"]
        idem = new_id()
        a = await client.patch(
            f"/v1/projects/{project['id']}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        b = await client.patch(
            f"/v1/projects/{project['id']}", json={"name": "B"}, headers=_with_key(second, idem)
        )
        assert a.status_code == b.status_code == 200
        assert b.json()["name"] == "B"
        assert "idempotent-replayed" not in b.headers


class TestSecretsAreNotKept:
    async def test_key_creation_replay_is_409_with_ids_and_no_secret(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        org: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        calls: list[tuple[str, dict[str, Any] | None]] = [
            ("/v1/projects", {"name": "K"}),
            (f"/v1/projects/{pid}/keys", {"server_side": True}),
            (f"/v1/projects/{pid}/keys", None),
            ("/v1/keys", {}),
            (f"/v1/projects/{pid}/keys/{project['write_key']['id']}/rotate", {"grace_seconds": 5}),
            (f"/v1/keys/{org['secret_key']['id']}/rotate", {"grace_seconds": 60}),
        ]
        secrets: list[str] = []
        for path, doc in calls:
            idem = new_id()
            first = await client.post(path, json=doc, headers=_with_key(secret_key, idem))
            assert first.status_code == 201, (path, first.text)
            body = first.json()
            secret = body["write_key"]["key"] if "write_key" in body else body["key"]
            secrets.append(secret)
            again = await client.post(path, json=doc, headers=_with_key(secret_key, idem))
            problem = is_problem(again, 409, "key-already-issued")
            if "write_key" in body:
                assert problem["created"] == {
                    **body,
                    "write_key": {**body["write_key"], "key": None},
                }
            else:
                assert problem["created"] == {**body, "key": None}
                assert "key" in problem["created"]
            assert secret not in again.text
            assert secret[4:] not in again.text
        # One key per call, not two.
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 2 + len(calls)
        dump = await _cache_dump(conn)
        assert dump.count("\n") >= len(calls)
        # The only key-looking strings kept are the display prefixes (12 characters, public
        # in every key list); never a key.
        assert SECRET_LIKE.findall(dump) == []
        # (A rotation's answer names the key it replaces, by prefix too.)
        prefixes = {s[:12] for s in secrets} | {
            project["write_key"]["prefix"],
            org["secret_key"]["prefix"],
        }
        assert set(PREFIX_LIKE.findall(dump)) <= prefixes
        for secret in secrets:
            assert secret[12:] not in dump
        raw = await conn.fetch("SELECT body FROM idempotency_keys")
        for row in raw:
            body = bytes(row["body"])
            assert SECRET_LIKE.findall(body.decode()) == []
            for secret in secrets:
                assert secret.encode() not in body
                assert secret[12:].encode() not in body
        assert await conn.fetchval("SELECT bool_and(holds_secret) FROM idempotency_keys") is True

    async def test_the_client_key_and_the_body_are_not_kept_in_clear(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        idem = "client-key-canary-5521"
        r = await client.post(
            f"/v1/projects/{project['id']}/events/erase",
            json={"email": "canary-person@example.com"},
            headers=_with_key(secret_key, idem),
        )
        assert r.status_code == 200, r.text
        dump = await _cache_dump(conn)
        assert dump
        assert idem not in dump
        assert "canary-person" not in dump
        assert idem.encode().hex() not in dump


class TestFailuresKeepNothing:
    async def test_a_refused_request_frees_the_key_for_a_corrected_one(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        idem = new_id()
        bad = await client.post(
            "/v1/projects", json={"name": ""}, headers=_with_key(secret_key, idem)
        )
        is_problem(bad, 400, "validation")
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
        again = await client.post(
            "/v1/projects", json={"name": ""}, headers=_with_key(secret_key, idem)
        )
        is_problem(again, 400, "validation")  # run again, not replayed
        assert "idempotent-replayed" not in again.headers
        good = await client.post(
            "/v1/projects", json={"name": "Fixed"}, headers=_with_key(secret_key, idem)
        )
        assert good.status_code == 201, good.text
        assert await conn.fetchval("SELECT count(*) FROM projects") == 1

    async def test_a_conflict_frees_the_key_and_the_same_request_succeeds_later(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        org: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        idem = new_id()
        path = f"/v1/keys/{org['secret_key']['id']}"
        refused = await client.delete(path, headers=_with_key(secret_key, idem))
        is_problem(refused, 409, "conflict")
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()["key"]
        # The scope is the calling key: retry with the same one.
        ok = await client.delete(path, headers=_with_key(secret_key, idem))
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "revoked"
        assert (await client.get("/v1/keys", headers=bearer(second))).status_code == 200

    async def test_a_404_keeps_nothing(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        idem = new_id()
        r = await client.delete(
            "/v1/projects/00000000-0000-4000-8000-000000000000",
            headers=_with_key(secret_key, idem),
        )
        is_problem(r, 404, "not-found")
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0


class TestInvalidKey:
    @pytest.mark.parametrize(
        "idem",
        [
            "short",
            "1234567",
            "x" * 256,
            "with space-in-it",
            "clé-unique-1234".encode(),
            "ключ-ключ-ключ".encode(),
            b"tab\there-12345",
            '""',
            "",
        ],
        ids=[
            "5-chars",
            "7-chars",
            "256-chars",
            "space",
            "latin1",
            "cyrillic",
            "tab",
            "empty-quoted",
            "empty",
        ],
    )
    async def test_invalid_idempotency_key_is_400_and_does_nothing(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        conn: asyncpg.Connection,
        idem: str | bytes,
    ) -> None:
        r = await client.post(
            "/v1/projects", json={"name": "X"}, headers=_with_key(secret_key, idem)
        )
        body = is_problem(r, 400, "invalid-body")
        assert body["field"] == "Idempotency-Key"
        assert await conn.fetchval("SELECT count(*) FROM projects") == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0

    @pytest.mark.parametrize("idem", ["12345678", "x" * 255, "!~#$%&'*+-.^_`|"])
    async def test_edge_lengths_and_visible_ascii_are_accepted(
        self, client: httpx.AsyncClient, secret_key: str, idem: str
    ) -> None:
        r = await client.post(
            "/v1/projects", json={"name": "X"}, headers=_with_key(secret_key, idem)
        )
        assert r.status_code == 201, r.text


class TestErasure:
    async def test_delete_erasure_with_a_key_replays_the_same_receipt(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        metrics: Metrics,
    ) -> None:
        pid = project["id"]
        for _ in range(2):
            r = await client.post(
                "/v1/events",
                json={"event": "x", "user_id": "erase-me", "message_id": new_id()},
                headers=bearer(write_key),
            )
            assert r.status_code == 200
        idem = new_id()
        path = f"/v1/projects/{pid}/events/users/erase-me"
        first = await client.delete(path, headers=_with_key(secret_key, idem))
        assert first.status_code == 200, first.text
        receipt = first.json()
        assert receipt["deleted"]["events"] == 2
        assert receipt["request_id"] == first.headers["x-request-id"]
        for _ in range(3):
            again = await client.delete(path, headers=_with_key(secret_key, idem))
            assert again.status_code == 200
            assert again.content == first.content
            assert again.headers["idempotent-replayed"] == "true"
        assert await conn.fetchval("SELECT count(*) FROM erasures") == 1
        assert await _audit_count(conn, "subject.erase") == 1
        assert (
            metrics.registry.get_sample_value("ingest_subject_requests_total", {"kind": "erase"})
            == 1
        )
        # Without the key, a second erasure is a new one (with nothing left to delete).
        fresh = await client.delete(path, headers=bearer(secret_key))
        assert fresh.status_code == 200
        assert fresh.json()["id"] != receipt["id"]
        assert fresh.json()["deleted"]["events"] == 0

    async def test_project_deletion_with_a_key_replays_the_same_answer(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        r = await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        assert r.status_code == 200
        idem = new_id()
        first = await client.delete(f"/v1/projects/{pid}", headers=_with_key(secret_key, idem))
        assert first.status_code == 200, first.text
        assert first.json()["deleted"]["events"] == 1
        again = await client.delete(f"/v1/projects/{pid}", headers=_with_key(secret_key, idem))
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert await _audit_count(conn, "project.delete") == 1
        # Without the key: the project is gone.
        is_problem(
            await client.delete(f"/v1/projects/{pid}", headers=bearer(secret_key)), 404, "not-found"
        )

    async def test_exports_are_not_cached(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        idem = new_id()
        doc = {"anonymous_id": "anon-x"}
        first = await client.post(
            f"/v1/projects/{pid}/events/export", json=doc, headers=_with_key(secret_key, idem)
        )
        assert first.status_code == 200
        assert first.content == b""
        r = await client.post(
            "/v1/events",
            json={"event": "x", "anonymous_id": "anon-x", "message_id": new_id()},
            headers=bearer(write_key),
        )
        assert r.status_code == 200
        second = await client.post(
            f"/v1/projects/{pid}/events/export", json=doc, headers=_with_key(secret_key, idem)
        )
        assert second.status_code == 200
        assert "idempotent-replayed" not in second.headers
        assert second.text.count("\n") == 1
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
        assert await _audit_count(conn, "subject.export") == 2


class TestExpiry:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, idempotency_ttl_s=1.0)

    async def test_the_key_is_new_again_after_its_ttl(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        idem = new_id()
        first = await client.patch(
            f"/v1/projects/{pid}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        assert first.status_code == 200
        replay = await client.patch(
            f"/v1/projects/{pid}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        assert replay.headers["idempotent-replayed"] == "true"
        await asyncio.sleep(1.5)
        # Another body: no 422, the key is new.
        other = await client.patch(
            f"/v1/projects/{pid}", json={"name": "B"}, headers=_with_key(secret_key, idem)
        )
        assert other.status_code == 200, other.text
        assert "idempotent-replayed" not in other.headers
        assert other.json()["name"] == "B"
        await asyncio.sleep(1.5)
        # The same body: run again, not replayed.
        same = await client.patch(
            f"/v1/projects/{pid}", json={"name": "A"}, headers=_with_key(secret_key, idem)
        )
        assert same.status_code == 200
        assert "idempotent-replayed" not in same.headers
        assert await _audit_count(conn, "project.update") == 3
        assert await conn.fetchval("SELECT name FROM projects WHERE id = $1::uuid", pid) == "A"

    async def test_a_key_issuing_request_may_run_again_after_the_ttl(
        self, client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
    ) -> None:
        idem = new_id()
        first = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(secret_key, idem)
        )
        assert first.status_code == 201
        await asyncio.sleep(1.5)
        second = await client.post(
            "/v1/projects", json={"name": "P"}, headers=_with_key(secret_key, idem)
        )
        assert second.status_code == 201
        assert second.json()["id"] != first.json()["id"]
        assert await conn.fetchval("SELECT count(*) FROM projects") == 2
