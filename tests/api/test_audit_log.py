"""GET /v1/audit-log: every change a partner makes is recorded (who, which request, what),
newest first, paged, filtered, per organization, and never names an erased person."""

from __future__ import annotations

import base64
import re
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from ingest.cli import _create_org
from ingest.config import Settings
from tests.conftest import bearer, new_id

HEX64 = re.compile(r"[0-9a-f]{64}")
# A user id no one would pick by chance: it must appear nowhere in the audit log.
CANARY_USER = "canary-user-7f3e9a2b41"


def _rid(r: httpx.Response) -> str:
    rid = r.headers["x-request-id"]
    assert rid
    return rid


async def _log(client: httpx.AsyncClient, key: str, query: str = "") -> dict[str, Any]:
    r = await client.get("/v1/audit-log" + query, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    return body


async def _all(client: httpx.AsyncClient, key: str, query: str = "") -> list[dict[str, Any]]:
    body = await _log(client, key, "?limit=200" + query)
    assert body["next_cursor"] is None
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def _shape(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["action"],
        e["target"]["type"],
        e["target"]["id"],
        e["project_id"],
        e["key_id"],
        e["request_id"],
    )


class TestRecorded:
    async def test_every_action_is_recorded_with_key_request_target_and_project(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        org: dict[str, Any],
    ) -> None:
        sk = org["secret_key"]["id"]
        expected: list[tuple[Any, ...]] = []

        created = await client.post(
            "/v1/projects", json={"name": "Web"}, headers=bearer(secret_key)
        )
        assert created.status_code == 201
        pid = created.json()["id"]
        first_wk = created.json()["write_key"]
        rid = _rid(created)
        expected += [
            ("project.create", "project", pid, pid, sk, rid),
            ("key.create", "key", first_wk["id"], pid, sk, rid),
        ]

        patched = await client.patch(
            f"/v1/projects/{pid}",
            json={"name": "Shop", "default_country": "DE"},
            headers=bearer(secret_key),
        )
        assert patched.status_code == 200
        expected.append(("project.update", "project", pid, pid, sk, _rid(patched)))

        issued = await client.post(f"/v1/projects/{pid}/keys", headers=bearer(secret_key))
        assert issued.status_code == 201
        wk2 = issued.json()
        expected.append(("key.create", "key", wk2["id"], pid, sk, _rid(issued)))

        rotated = await client.post(
            f"/v1/projects/{pid}/keys/{first_wk['id']}/rotate",
            json={"grace_seconds": 60},
            headers=bearer(secret_key),
        )
        assert rotated.status_code == 201
        wk3 = rotated.json()
        rid = _rid(rotated)
        expected += [
            ("key.rotate", "key", first_wk["id"], pid, sk, rid),
            ("key.create", "key", wk3["id"], pid, sk, rid),
        ]

        revoked = await client.delete(
            f"/v1/projects/{pid}/keys/{wk2['id']}", headers=bearer(secret_key)
        )
        assert revoked.status_code == 200
        expected.append(("key.revoke", "key", wk2["id"], pid, sk, _rid(revoked)))

        # A second secret key does the rest: key_id names the key that acted.
        secret2 = await client.post("/v1/keys", headers=bearer(secret_key))
        assert secret2.status_code == 201
        sk2, sk2_key = secret2.json()["id"], secret2.json()["key"]
        expected.append(("key.create", "key", sk2, None, sk, _rid(secret2)))

        ev = await client.post(
            "/v1/events",
            json={"event": "x", "user_id": CANARY_USER, "message_id": new_id()},
            headers=bearer(wk3["key"]),
        )
        assert ev.status_code == 200

        exported = await client.get(
            f"/v1/projects/{pid}/events/users/{CANARY_USER}", headers=bearer(sk2_key)
        )
        assert exported.status_code == 200
        assert exported.text.count("\n") == 1
        expected.append(("subject.export", "subject", None, pid, sk2, _rid(exported)))

        exported_by_body = await client.post(
            f"/v1/projects/{pid}/events/export",
            json={"anonymous_id": "anon-1"},
            headers=bearer(sk2_key),
        )
        assert exported_by_body.status_code == 200
        expected.append(("subject.export", "subject", None, pid, sk2, _rid(exported_by_body)))

        erased = await client.delete(
            f"/v1/projects/{pid}/events/users/{CANARY_USER}", headers=bearer(sk2_key)
        )
        assert erased.status_code == 200, erased.text
        receipt = erased.json()
        expected.append(
            ("subject.erase", "subject", receipt["subject"]["digest"], pid, sk2, _rid(erased))
        )

        erased_by_body = await client.post(
            f"/v1/projects/{pid}/events/erase",
            json={"email": "someone@example.com"},
            headers=bearer(sk2_key),
        )
        assert erased_by_body.status_code == 200, erased_by_body.text
        expected.append(
            (
                "subject.erase",
                "subject",
                erased_by_body.json()["subject"]["digest"],
                pid,
                sk2,
                _rid(erased_by_body),
            )
        )

        rotated_secret = await client.post(
            f"/v1/keys/{sk}/rotate", json={"grace_seconds": 0}, headers=bearer(sk2_key)
        )
        assert rotated_secret.status_code == 201
        sk3 = rotated_secret.json()["id"]
        rid = _rid(rotated_secret)
        expected += [
            ("key.rotate", "key", sk, None, sk2, rid),
            ("key.create", "key", sk3, None, sk2, rid),
        ]

        deleted = await client.delete(f"/v1/projects/{pid}", headers=bearer(sk2_key))
        assert deleted.status_code == 200
        expected.append(("project.delete", "project", pid, pid, sk2, _rid(deleted)))

        entries = await _all(client, sk2_key)
        got = [_shape(e) for e in entries]
        # Subject exports are keyed digests nobody outside knows: compare their shape only.
        for i, e in enumerate(entries):
            if e["target"]["type"] == "subject":
                assert HEX64.fullmatch(e["target"]["id"]), e
                if e["action"] == "subject.export":
                    got[i] = (*got[i][:2], None, *got[i][3:])
        assert got == expected[::-1]

        # Every request id is distinct per request and is the one the response carried.
        assert len({e["id"] for e in entries}) == len(entries)
        by_action = {e["action"]: e for e in entries}
        assert by_action["project.update"]["details"]["fields"] == ["name", "default_country"]
        rotate = next(e for e in entries if e["action"] == "key.rotate" and e["project_id"])
        assert rotate["details"]["new_key_id"] == wk3["id"]
        assert rotate["details"]["grace_seconds"] == 60
        erase = next(e for e in entries if e["request_id"] == _rid(erased))
        assert erase["details"]["erasure_id"] == receipt["id"]
        assert erase["details"]["deleted"] == receipt["deleted"]
        assert erase["details"]["subject_kind"] == "user_id"
        assert receipt["request_id"] == _rid(erased)
        # The export of the same user is keyed on the same digest as its erasure.
        export = next(e for e in entries if e["request_id"] == _rid(exported))
        assert export["target"]["id"] == receipt["subject"]["digest"]
        # Newest first.
        stamps = [e["occurred_at"] for e in entries]
        assert stamps == sorted(stamps, reverse=True)
        # Nothing in the log holds a secret.
        text = orjson.dumps(entries).decode()
        for secret in (secret_key, sk2_key, wk2["key"], wk3["key"], first_wk["key"]):
            assert secret[4:] not in text

    async def test_reads_and_failed_requests_are_not_recorded(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        org: dict[str, Any],
    ) -> None:
        before = await _all(client, secret_key)
        assert [e["action"] for e in before] == ["key.create", "project.create"]
        pid = project["id"]
        assert (await client.get("/v1/projects", headers=bearer(secret_key))).status_code == 200
        assert (
            await client.get(f"/v1/projects/{pid}", headers=bearer(secret_key))
        ).status_code == 200
        assert (await client.get("/v1/keys", headers=bearer(secret_key))).status_code == 200
        bad = await client.patch(
            f"/v1/projects/{pid}", json={"name": ""}, headers=bearer(secret_key)
        )
        assert bad.status_code == 400
        conflict = await client.delete(
            f"/v1/keys/{org['secret_key']['id']}", headers=bearer(secret_key)
        )
        assert conflict.status_code == 409
        missing = await client.delete(
            "/v1/projects/00000000-0000-4000-8000-000000000000", headers=bearer(secret_key)
        )
        assert missing.status_code == 404
        assert await _all(client, secret_key) == before


async def _make_entries(client: httpx.AsyncClient, key: str, n: int) -> None:
    for _ in range(n):
        assert (await client.post("/v1/keys", headers=bearer(key))).status_code == 201


class TestPaging:
    @pytest.mark.parametrize("limit", [1, 3, 5, 7, 11, 12])
    async def test_pages_walk_every_entry_once_newest_first(
        self, client: httpx.AsyncClient, secret_key: str, limit: int
    ) -> None:
        await _make_entries(client, secret_key, 10)
        everything = await _all(client, secret_key)
        assert len(everything) == 10
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = await _log(client, secret_key, query)
            assert 1 <= len(page["entries"]) <= limit
            seen += page["entries"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert isinstance(cursor, str)
            assert pages < 20
        assert seen == everything
        assert pages == -(-10 // limit)  # no empty last page, even when the limit divides 10

    async def test_default_limit_is_50(self, client: httpx.AsyncClient, secret_key: str) -> None:
        await _make_entries(client, secret_key, 51)
        page = await _log(client, secret_key)
        assert len(page["entries"]) == 50
        assert page["next_cursor"] is not None
        rest = await _log(client, secret_key, f"?cursor={page['next_cursor']}")
        assert len(rest["entries"]) == 1
        assert rest["next_cursor"] is None

    async def test_entries_made_after_the_first_page_do_not_shift_the_walk(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        await _make_entries(client, secret_key, 4)
        first = await _log(client, secret_key, "?limit=2")
        await _make_entries(client, secret_key, 3)
        second = await _log(client, secret_key, f"?limit=2&cursor={first['next_cursor']}")
        ids = [e["id"] for e in first["entries"] + second["entries"]]
        assert len(set(ids)) == 4
        assert second["next_cursor"] is None

    @pytest.mark.parametrize(
        "cursor",
        [
            "garbage!",
            "bm9wZQ",  # "nope"
            base64.urlsafe_b64encode(b"a1.x").decode(),
            base64.urlsafe_b64encode(b"b1.5").decode(),
            "%FF%FE",
            "a1.5",
        ],
    )
    async def test_a_bad_cursor_is_a_400_problem(
        self, client: httpx.AsyncClient, secret_key: str, cursor: str
    ) -> None:
        await _make_entries(client, secret_key, 1)
        r = await client.get(f"/v1/audit-log?cursor={cursor}", headers=bearer(secret_key))
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/invalid-body")
        assert r.json()["field"] == "cursor"

    @pytest.mark.parametrize("limit", ["0", "201", "-1", "x", "1.5", ""])
    async def test_a_bad_limit_is_a_400_problem(
        self, client: httpx.AsyncClient, secret_key: str, limit: str
    ) -> None:
        r = await client.get(f"/v1/audit-log?limit={limit}", headers=bearer(secret_key))
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"

    async def test_a_bad_key_id_filter_is_a_400_problem(
        self, client: httpx.AsyncClient, secret_key: str
    ) -> None:
        r = await client.get("/v1/audit-log?key_id=nope", headers=bearer(secret_key))
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"


class TestFilters:
    async def test_action_and_key_id_filters(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        org: dict[str, Any],
        project: dict[str, Any],
    ) -> None:
        sk = org["secret_key"]["id"]
        second = (await client.post("/v1/keys", headers=bearer(secret_key))).json()
        r = await client.patch(
            f"/v1/projects/{project['id']}", json={"name": "A"}, headers=bearer(second["key"])
        )
        assert r.status_code == 200
        r = await client.patch(
            f"/v1/projects/{project['id']}", json={"name": "B"}, headers=bearer(secret_key)
        )
        assert r.status_code == 200
        everything = await _all(client, secret_key)
        assert len(everything) == 5

        creates = await _all(client, secret_key, "&action=key.create")
        assert [e["action"] for e in creates] == ["key.create", "key.create"]
        assert creates == [e for e in everything if e["action"] == "key.create"]

        by_second = await _all(client, secret_key, f"&key_id={second['id']}")
        assert [(e["action"], e["key_id"]) for e in by_second] == [("project.update", second["id"])]

        both = await _all(client, secret_key, f"&action=project.update&key_id={sk}")
        assert [(e["action"], e["key_id"]) for e in both] == [("project.update", sk)]

        assert await _all(client, secret_key, "&action=project.delete") == []
        assert await _all(client, secret_key, "&action=nonsense") == []

        # Paging and filters together.
        page = await _log(client, secret_key, f"?limit=1&key_id={sk}")
        assert page["next_cursor"] is not None
        rest = await _log(client, secret_key, f"?limit=10&key_id={sk}&cursor={page['next_cursor']}")
        walked = page["entries"] + rest["entries"]
        assert walked == [e for e in everything if e["key_id"] == sk]


class TestTenancy:
    async def test_another_organization_sees_none_of_the_first_ones_entries(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        secret_key: str,
        org: dict[str, Any],
        project: dict[str, Any],
    ) -> None:
        await _make_entries(client, secret_key, 3)
        mine = await _all(client, secret_key)
        assert len(mine) == 5

        other = await _create_org(settings, "Other")
        other_key = other["secret_key"]["key"]
        assert await _all(client, other_key) == []
        # Their own action is theirs alone.
        theirs = await client.post(
            "/v1/projects", json={"name": "Theirs"}, headers=bearer(other_key)
        )
        assert theirs.status_code == 201
        their_log = await _all(client, other_key)
        assert [e["action"] for e in their_log] == ["key.create", "project.create"]
        assert {e["key_id"] for e in their_log} == {other["secret_key"]["id"]}
        assert await _all(client, secret_key) == mine

        # The first org's key id as a filter, or one of its cursors, reveals nothing.
        sk = org["secret_key"]["id"]
        assert await _all(client, other_key, f"&key_id={sk}") == []
        assert await _all(client, other_key, "&action=key.create") == [their_log[0]]
        page = await _log(client, secret_key, "?limit=1")
        via_cursor = await _log(client, other_key, f"?cursor={page['next_cursor']}")
        assert {e["id"] for e in via_cursor["entries"]} <= {e["id"] for e in their_log}


class TestErasure:
    async def test_erasing_a_user_leaves_an_entry_that_does_not_name_them(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        pid = project["id"]
        for doc in (
            {"event": "x", "user_id": CANARY_USER, "anonymous_id": "anon-canary"},
            {"type": "identify", "user_id": CANARY_USER, "traits": {"plan": "pro"}},
        ):
            r = await client.post(
                "/v1/events", json={**doc, "message_id": new_id()}, headers=bearer(write_key)
            )
            assert r.status_code == 200, r.text

        exported = await client.get(
            f"/v1/projects/{pid}/events/users/{CANARY_USER}", headers=bearer(secret_key)
        )
        assert exported.status_code == 200
        erased = await client.delete(
            f"/v1/projects/{pid}/events/users/{CANARY_USER}", headers=bearer(secret_key)
        )
        assert erased.status_code == 200, erased.text
        receipt = erased.json()
        assert receipt["deleted"]["events"] == 2
        assert CANARY_USER not in erased.text

        r = await client.get("/v1/audit-log?action=subject.erase", headers=bearer(secret_key))
        assert r.status_code == 200
        [entry] = r.json()["entries"]
        assert entry["request_id"] == _rid(erased)
        assert entry["target"] == {"type": "subject", "id": receipt["subject"]["digest"]}
        assert entry["project_id"] == pid
        assert entry["details"]["erasure_id"] == receipt["id"]

        whole = await client.get("/v1/audit-log?limit=200", headers=bearer(secret_key))
        assert [e["action"] for e in whole.json()["entries"]][:2] == [
            "subject.erase",
            "subject.export",
        ]
        assert CANARY_USER not in whole.text
        assert "anon-canary" not in whole.text
        assert CANARY_USER[-10:] not in whole.text

        rows = await conn.fetch("SELECT * FROM audit_log")
        dump = str([dict(row) for row in rows])
        assert CANARY_USER not in dump
        assert "anon-canary" not in dump
        text_dump = await conn.fetchval("SELECT string_agg(a::text, '\n') FROM audit_log AS a")
        assert CANARY_USER not in text_dump
        assert "anon-canary" not in text_dump
        # Nor the erasure receipts and suppressions.
        for table in ("erasures", "suppressions"):
            text = await conn.fetchval(
                f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} AS t"
            )
            assert CANARY_USER not in text
            assert "anon-canary" not in text


@pytest.mark.parametrize(
    "position",
    ["99999999999999999999999", "9223372036854775808", "-99999999999999999999999"],
)
async def test_a_cursor_past_any_position_is_a_400_not_a_500(
    app: Any, client: httpx.AsyncClient, secret_key: str, position: str
) -> None:
    """A cursor is client input: one whose number does not fit a bigint is refused like any
    other bad cursor (not passed to Postgres, which fails the request with a 500)."""
    await _make_entries(client, secret_key, 1)
    cursor = base64.urlsafe_b64encode(f"a1.{position}".encode()).decode().rstrip("=")
    # As a real server answers: an unhandled error is a 500, not an exception in the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as c:
        r = await c.get(f"/v1/audit-log?cursor={cursor}", headers=bearer(secret_key))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "cursor"


@pytest.mark.parametrize("limit", ["%C2%B2", "1%C2%B2", "%E2%91%A0"], ids=["²", "1²", "①"])
async def test_a_limit_of_unicode_digits_is_a_400_not_a_500(
    app: Any, client: httpx.AsyncClient, secret_key: str, limit: str
) -> None:
    """str.isdigit() is true for superscripts and circled digits, which int() refuses: such a
    limit must be refused like any other bad limit."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as c:
        r = await c.get(f"/v1/audit-log?limit={limit}", headers=bearer(secret_key))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "limit"
