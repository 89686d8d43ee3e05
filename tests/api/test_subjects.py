"""Data-subject requests end to end: a person's events (access, portability), their current
state, erasure and the suppression that keeps them erased, through HTTP against a real Postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from ingest.cli import _create_org
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import basic, bearer, new_id

# What the writer stores, on both of its paths (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("write_path")

NDJSON = "application/x-ndjson"
# The race (F3): concurrent posters, and the user's events in each batch one of them sends.
POSTERS = 8
BATCH = 20


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def suppressed(metrics: Metrics) -> float:
    return sample(metrics, "ingest_events_suppressed_total")


def user_path(project_id: str, user_id: str) -> str:
    return f"/v1/projects/{project_id}/events/users/{quote(user_id, safe='')}"


async def send(client: httpx.AsyncClient, key: str, *events: dict[str, Any]) -> dict[str, Any]:
    """POST a batch; every event must be acknowledged."""
    r = await client.post("/v1/events", json={"batch": list(events)}, headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["rejected"] == [], body
    assert body["accepted"] == len(events)
    return body


def parse_ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == NDJSON
    if not r.content:
        return []
    assert r.text.endswith("\n")
    lines: list[dict[str, Any]] = []
    for line in r.text.split("\n")[:-1]:
        doc = json.loads(line)
        assert isinstance(doc, dict)
        lines.append(doc)
    return lines


async def export_user(
    client: httpx.AsyncClient, secret_key: str, project_id: str, user_id: str
) -> list[dict[str, Any]]:
    r = await client.get(user_path(project_id, user_id), headers=bearer(secret_key))
    return parse_ndjson(r)


async def export_by(
    client: httpx.AsyncClient, secret_key: str, project_id: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    r = await client.post(
        f"/v1/projects/{project_id}/events/export", json=body, headers=bearer(secret_key)
    )
    return parse_ndjson(r)


async def erase_user(
    client: httpx.AsyncClient, secret_key: str, project_id: str, user_id: str
) -> dict[str, Any]:
    r = await client.delete(user_path(project_id, user_id), headers=bearer(secret_key))
    assert r.status_code == 200, r.text
    receipt: dict[str, Any] = r.json()
    return receipt


async def create_project(
    client: httpx.AsyncClient, secret_key: str, name: str, **fields: Any
) -> tuple[str, str]:
    """(project id, write key) of a new project."""
    r = await client.post("/v1/projects", json={"name": name, **fields}, headers=bearer(secret_key))
    assert r.status_code == 201, r.text
    body = r.json()
    return body["id"], body["write_key"]["key"]


async def stored_ids(conn: asyncpg.Connection, where: str, *args: Any) -> set[str]:
    rows = await conn.fetch(f"SELECT message_id FROM events WHERE {where}", *args)
    return {r["message_id"] for r in rows}


async def table_text(conn: asyncpg.Connection, table: str) -> str:
    text: str | None = await conn.fetchval(f"SELECT string_agg(t::text, E'\\n') FROM {table} AS t")
    return text or ""


@pytest.fixture
async def other_org(settings: Settings) -> dict[str, Any]:
    return await _create_org(settings, "Globex")


@pytest.fixture
def other_secret(other_org: dict[str, Any]) -> str:
    key: str = other_org["secret_key"]["key"]
    return key


def assert_receipt(receipt: dict[str, Any], project_id: str, kind: str) -> None:
    assert set(receipt) == {
        "id",
        "project_id",
        "subject",
        "request_id",
        "status",
        "deleted",
        "identifiers_suppressed",
        "requested_at",
        "completed_at",
        "forwarded",
    }
    assert receipt["project_id"] == project_id
    assert receipt["status"] == "completed"
    assert receipt["subject"]["kind"] == kind
    digest = receipt["subject"]["digest"]
    assert len(digest) == 64
    int(digest, 16)
    assert set(receipt["deleted"]) == {"events", "message_ids", "user_profiles", "forward_queue"}
    assert all(isinstance(v, int) and v >= 0 for v in receipt["deleted"].values())
    assert isinstance(receipt["identifiers_suppressed"], int)
    assert receipt["completed_at"] is not None
    assert datetime.fromisoformat(receipt["completed_at"]) >= datetime.fromisoformat(
        receipt["requested_at"]
    )


# -- access --------------------------------------------------------------------------------


class TestExport:
    async def test_a_users_events_as_ndjson_oldest_first_and_nothing_raw(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        pid = project["id"]
        email = "Ada.Lovelace@Example.test"
        mine = [f"mine-{i}-{new_id()}" for i in range(4)]
        # One request each: received_at grows with the order of sending.
        await send(
            client,
            write_key,
            {
                "type": "identify",
                "user_id": "u-1",
                "anonymous_id": "anon-1",
                "message_id": mine[0],
                "traits": {"email": email, "plan": "free"},
            },
        )
        await send(
            client,
            write_key,
            {"event": "Noise", "user_id": "u-2", "message_id": new_id()},
            {"event": "Viewed", "user_id": "u-1", "message_id": mine[1]},
        )
        _, other_key = await create_project(client, secret_key, "Other")
        await send(client, other_key, {"event": "Elsewhere", "user_id": "u-1"})
        await send(client, write_key, {"event": "Paid", "user_id": "u-1", "message_id": mine[2]})
        await send(
            client,
            write_key,
            {"type": "page", "name": "Home", "user_id": "u-1", "message_id": mine[3]},
            {"event": "Noise", "anonymous_id": "anon-9", "message_id": new_id()},
        )

        r = await client.get(user_path(pid, "u-1"), headers=bearer(secret_key))
        lines = parse_ndjson(r)
        assert [line["message_id"] for line in lines] == mine
        assert {line["user_id"] for line in lines} == {"u-1"}
        assert "Elsewhere" not in r.text  # the other project's user of the same id
        received = [datetime.fromisoformat(line["received_at"]) for line in lines]
        assert received == sorted(received)
        assert set(lines[0]) == {
            "message_id",
            "type",
            "event",
            "user_id",
            "anonymous_id",
            "timestamp",
            "original_timestamp",
            "sent_at",
            "received_at",
            "app_id",
            "country",
            "region",
            "email_sha256",
            "email_google_sha256",
            "phone_sha256",
            "phone_e164_sha256",
            "properties",
            "traits",
            "context",
        }
        assert lines[0]["type"] == "identify"
        assert lines[0]["anonymous_id"] == "anon-1"
        assert lines[0]["email_sha256"] == sha(email.lower())
        assert lines[0]["traits"]["plan"] == "free"
        assert lines[0]["traits"]["email"] == sha(email.lower())
        assert "lovelace" not in r.text.lower()
        assert lines[3]["event"] == "Home"

    async def test_a_user_with_nothing_is_an_empty_200(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        await send(client, write_key, {"event": "x", "user_id": "someone"})
        r = await client.get(user_path(project["id"], "nobody"), headers=bearer(secret_key))
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == NDJSON
        assert r.content == b""

    async def test_export_is_counted_and_audited(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        metrics: Metrics,
        conn: asyncpg.Connection,
    ) -> None:
        await send(client, write_key, {"event": "x", "user_id": "audited-user-1"})
        before = sample(metrics, "ingest_subject_requests_total", kind="export")
        r = await client.get(user_path(project["id"], "audited-user-1"), headers=bearer(secret_key))
        assert len(parse_ndjson(r)) == 1
        assert sample(metrics, "ingest_subject_requests_total", kind="export") == before + 1
        row = await conn.fetchrow(
            "SELECT * FROM audit_log WHERE action = 'subject.export' ORDER BY seq DESC LIMIT 1"
        )
        assert row is not None
        assert row["request_id"] == r.headers["x-request-id"]
        assert "audited-user-1" not in await table_text(conn, "audit_log")

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/events/users/u-1", None),
            ("GET", "/users/u-1", None),
            ("DELETE", "/events/users/u-1", None),
            ("POST", "/events/export", {"user_id": "u-1"}),
            ("POST", "/events/erase", {"user_id": "u-1"}),
            ("GET", "/erasures", None),
        ],
    )
    async def test_another_orgs_key_is_answered_as_a_missing_project(
        self,
        client: httpx.AsyncClient,
        project: dict[str, Any],
        write_key: str,
        other_secret: str,
        secret_key: str,
        conn: asyncpg.Connection,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        await send(client, write_key, {"type": "identify", "user_id": "u-1", "traits": {"a": 1}})
        answers = []
        for pid in (project["id"], new_id()):
            r = await client.request(
                method, f"/v1/projects/{pid}{path}", json=body, headers=bearer(other_secret)
            )
            assert r.status_code == 404, r.text
            assert r.headers["content-type"] == "application/problem+json"
            doc = r.json()
            assert doc["type"].endswith("/not-found")
            assert doc.pop("instance") == r.headers["x-request-id"]
            answers.append(doc)
        assert answers[0] == answers[1]
        # Nothing was read or erased on the way.
        assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = 'u-1'") == 1
        assert await conn.fetchval("SELECT count(*) FROM erasures") == 0
        assert len(await export_user(client, secret_key, project["id"], "u-1")) == 1


class TestCurrentState:
    async def test_identify_traits_are_merged_and_a_correction_leaves_past_events_as_sent(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        pid = project["id"]
        await send(
            client,
            write_key,
            {
                "type": "identify",
                "user_id": "u-7",
                "message_id": "id-1",
                "timestamp": "2025-03-02T10:00:00Z",
                "traits": {"plan": "free", "company": "Acme"},
            },
        )
        await send(
            client,
            write_key,
            {
                "event": "Viewed",
                "user_id": "u-7",
                "message_id": "tr-1",
                "timestamp": "2025-03-01T09:00:00Z",  # the earliest, sent second
            },
        )
        await send(
            client,
            write_key,
            {
                "type": "identify",
                "user_id": "u-7",
                "message_id": "id-2",
                "timestamp": "2025-03-05T12:30:00Z",
                "traits": {"plan": "pro", "seats": 5},
            },
        )
        await send(client, write_key, {"type": "identify", "user_id": "u-8", "traits": {"x": 1}})

        r = await client.get(f"/v1/projects/{pid}/users/u-7", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        state = r.json()
        assert state["user_id"] == "u-7"
        assert state["traits"] == {"plan": "pro", "company": "Acme", "seats": 5}
        assert state["events"] == 3
        assert datetime.fromisoformat(state["first_seen"]) == datetime(2025, 3, 1, 9, tzinfo=UTC)
        assert datetime.fromisoformat(state["last_seen"]) == datetime(
            2025, 3, 5, 12, 30, tzinfo=UTC
        )
        assert state["traits_updated_at"] is not None

        lines = await export_user(client, secret_key, pid, "u-7")
        assert [line["message_id"] for line in lines] == ["id-1", "tr-1", "id-2"]
        assert lines[0]["traits"] == {"plan": "free", "company": "Acme"}  # rectified, not rewritten
        assert lines[2]["traits"] == {"plan": "pro", "seats": 5}

    async def test_identifies_of_one_batch_merge_in_arrival_order_and_a_duplicate_adds_nothing(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        # Message ids sort against arrival order: the merge must follow arrival, not the ids.
        def identify(message_id: str, user_id: str, **traits: Any) -> dict[str, Any]:
            return {
                "type": "identify",
                "user_id": user_id,
                "message_id": message_id,
                "traits": traits,
            }

        batch = [
            identify("m-3", "u-9", plan="free", seats=1),
            identify("m-1", "u-9", plan="pro"),
            identify("m-0", "u-10", plan="team"),
            identify("m-2", "u-9", seats=3),
            identify("m-3", "u-9", plan="enterprise"),  # a copy of the first: a duplicate
        ]
        r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        assert r.status_code == 200, r.text
        assert r.json()["duplicates"] == 1
        states = {}
        for user in ("u-9", "u-10"):
            got = await client.get(
                f"/v1/projects/{project['id']}/users/{user}", headers=bearer(secret_key)
            )
            assert got.status_code == 200, got.text
            states[user] = got.json()["traits"]
        assert states == {"u-9": {"plan": "pro", "seats": 3}, "u-10": {"plan": "team"}}
        lines = await export_user(client, secret_key, project["id"], "u-9")
        assert sorted(line["message_id"] for line in lines) == ["m-1", "m-2", "m-3"]
        assert next(line for line in lines if line["message_id"] == "m-3")["traits"] == {
            "plan": "free",
            "seats": 1,
        }

    async def test_a_user_known_only_by_events_has_empty_traits(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        await send(client, write_key, {"event": "x", "user_id": "quiet"})
        r = await client.get(
            f"/v1/projects/{project['id']}/users/quiet", headers=bearer(secret_key)
        )
        assert r.status_code == 200
        assert r.json()["traits"] == {}
        assert r.json()["events"] == 1

    async def test_an_unknown_user_is_404(
        self, client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], write_key: str
    ) -> None:
        await send(client, write_key, {"type": "identify", "user_id": "known", "traits": {"a": 1}})
        r = await client.get(
            f"/v1/projects/{project['id']}/users/unknown", headers=bearer(secret_key)
        )
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/not-found")


# -- erasure -------------------------------------------------------------------------------

ERASED_EMAIL = "Grace.Hopper@Example.test"
ERASED_ANON = "anon-grace"


async def plant_user(
    client: httpx.AsyncClient, write_key: str, user_id: str
) -> tuple[list[str], list[str]]:
    """A user (identify linking an anonymous id and an email, tracks, an anonymous-only event
    before the identify) and a bystander; (the user's message ids, the bystander's)."""
    mine = [f"{user_id}-{i}" for i in range(4)]
    theirs = [f"bystander-{i}" for i in range(2)]
    await send(
        client,
        write_key,
        {"event": "Landed", "anonymous_id": ERASED_ANON, "message_id": mine[0]},
        {
            "type": "identify",
            "user_id": user_id,
            "anonymous_id": ERASED_ANON,
            "message_id": mine[1],
            "traits": {"email": ERASED_EMAIL, "plan": "pro"},
        },
        {"event": "Bought", "user_id": user_id, "message_id": mine[2]},
        {"event": "Bought", "user_id": user_id, "message_id": mine[3], "properties": {"n": 2}},
        {
            "type": "identify",
            "user_id": "bystander",
            "message_id": theirs[0],
            "traits": {"email": "other@example.test"},
        },
        {"event": "Bought", "user_id": "bystander", "message_id": theirs[1]},
    )
    return mine, theirs


class TestErasure:
    async def test_erasure_deletes_everything_and_the_receipt_names_nobody(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        metrics: Metrics,
    ) -> None:
        pid = project["id"]
        uid = f"user-{new_id()}"
        mine, theirs = await plant_user(client, write_key, uid)
        assert len(await export_user(client, secret_key, pid, uid)) == 3
        before = sample(metrics, "ingest_subject_requests_total", kind="erase")

        r = await client.delete(user_path(pid, uid), headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        receipt = r.json()
        assert_receipt(receipt, pid, "user_id")
        assert receipt["request_id"] == r.headers["x-request-id"]
        # The anonymous-only event is linked by the identify (one hop): four events.
        assert receipt["deleted"]["events"] == 4
        assert receipt["deleted"]["message_ids"] == 4
        assert receipt["deleted"]["user_profiles"] == 1
        assert receipt["identifiers_suppressed"] >= 3  # user id, anonymous id, email digest(s)
        for value in (uid, ERASED_ANON, ERASED_EMAIL.lower(), sha(ERASED_EMAIL.lower())):
            assert value not in r.text
        assert sample(metrics, "ingest_subject_requests_total", kind="erase") == before + 1

        assert await export_user(client, secret_key, pid, uid) == []
        gone = await client.get(f"/v1/projects/{pid}/users/{uid}", headers=bearer(secret_key))
        assert gone.status_code == 404
        assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", uid) == 0
        assert await stored_ids(conn, "message_id = ANY($1::text[])", mine) == set()
        assert (
            await conn.fetchval("SELECT count(*) FROM user_profiles WHERE user_id = $1", uid) == 0
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM event_dedup WHERE message_id = ANY($1::text[])", mine
            )
            == 0
        )
        # The bystander is untouched.
        assert await stored_ids(conn, "user_id = 'bystander'") == set(theirs)
        assert await conn.fetchval("SELECT count(*) FROM user_profiles") == 1
        # No table that remembers the erasure holds the person.
        for table in ("erasures", "suppressions", "audit_log"):
            text = await table_text(conn, table)
            assert text, table
            for value in (uid, ERASED_ANON, ERASED_EMAIL.lower(), sha(ERASED_EMAIL.lower())):
                assert value not in text, (table, value)
        entry = await conn.fetchrow("SELECT * FROM audit_log WHERE action = 'subject.erase'")
        assert entry is not None
        assert entry["target_id"] == receipt["subject"]["digest"]

    async def test_late_events_are_acknowledged_and_not_stored(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        metrics: Metrics,
    ) -> None:
        pid = project["id"]
        uid = f"user-{new_id()}"
        await plant_user(client, write_key, uid)
        await erase_user(client, secret_key, pid, uid)
        start = suppressed(metrics)
        late: list[str] = []

        def mid(tag: str) -> str:
            late.append(f"late-{tag}-{new_id()}")
            return late[-1]

        # A single event: the usual answer, nothing to tell the SDK the person was erased.
        r = await client.post(
            "/v1/events",
            json={"event": "Came back", "user_id": uid, "message_id": mid("single")},
            headers=bearer(write_key),
        )
        assert r.status_code == 200
        assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": [], "warnings": []}
        # A batch mixed with other users: theirs are stored.
        others = [f"other-{i}-{new_id()}" for i in range(3)]
        body = await send(
            client,
            write_key,
            {"event": "a", "user_id": "someone-1", "message_id": others[0]},
            {"event": "b", "user_id": uid, "message_id": mid("batch")},
            {"event": "c", "user_id": "someone-2", "message_id": others[1]},
            {"type": "identify", "user_id": uid, "traits": {"plan": "x"}, "message_id": mid("id")},
            {"event": "d", "anonymous_id": "anon-someone", "message_id": others[2]},
        )
        assert body["duplicates"] == 0
        # The Segment route.
        r = await client.post(
            "/v1/track",
            json={"userId": uid, "event": "Segment", "messageId": mid("segment")},
            headers=basic(write_key),
        )
        assert r.status_code == 200, r.text
        # An event from long ago (a device that was offline).
        await send(
            client,
            write_key,
            {
                "event": "Old",
                "user_id": uid,
                "timestamp": "2020-01-01T00:00:00Z",
                "message_id": mid("old"),
            },
        )
        # Only the anonymous id the user's identify linked.
        await send(
            client,
            write_key,
            {"event": "Anon", "anonymous_id": ERASED_ANON, "message_id": mid("anon")},
        )
        # Only the email, raw, differently written, under a new anonymous id.
        await send(
            client,
            write_key,
            {
                "type": "identify",
                "anonymous_id": "fresh-device",
                "traits": {"email": " GRACE.hopper@example.TEST"},
                "message_id": mid("email"),
            },
        )

        assert await stored_ids(conn, "message_id = ANY($1::text[])", late) == set()
        assert await stored_ids(conn, "message_id = ANY($1::text[])", others) == set(others)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", uid) == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM event_dedup WHERE message_id = ANY($1::text[])", late
            )
            == 0
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM user_profiles WHERE user_id = $1", uid) == 0
        )
        assert suppressed(metrics) - start == len(late)
        assert await export_user(client, secret_key, pid, uid) == []

    @pytest.mark.parametrize("run", range(3))
    async def test_events_racing_the_erasure_are_never_left_stored(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        run: int,
    ) -> None:
        """F3: posters keep sending the user's events before, during and after the DELETE;
        once it has answered, none of them is in the database, and none gets in later."""
        pid = project["id"]
        uid = f"racer-{run}-{new_id()}"
        stop = asyncio.Event()
        erased_at: list[float] = []
        answers: list[tuple[float, int]] = []

        async def poster(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                if n % 2:
                    payload: dict[str, Any] = {
                        "event": "tick",
                        "user_id": uid,
                        "anonymous_id": f"dev-{n}",
                        "message_id": f"{uid}-{n}-{i}",
                    }
                else:
                    payload = {
                        "batch": [
                            {"event": "tick", "user_id": uid, "message_id": f"{uid}-{n}-{i}-{j}"}
                            for j in range(BATCH)
                        ]
                        + [{"event": "tock", "user_id": f"bystander-{n}"}]
                    }
                r = await client.post("/v1/events", json=payload, headers=bearer(write_key))
                answers.append((time.monotonic(), r.status_code))
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(poster(n)) for n in range(POSTERS)]
        try:
            await asyncio.sleep(1.0)
            assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", uid) > 0
            receipt = await erase_user(client, secret_key, pid, uid)
            erased_at.append(time.monotonic())
            assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", uid) == 0
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert receipt["deleted"]["events"] > 0
        assert {status for _, status in answers} == {200}
        assert sum(1 for t, _ in answers if t > erased_at[0]) > 10  # posting went on after it
        assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", uid) == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM events WHERE anonymous_id LIKE 'dev-%'") == 0
        )
        assert await export_user(client, secret_key, pid, uid) == []
        assert await conn.fetchval("SELECT count(*) FROM events WHERE event = 'tock'") > 0


# -- by identifier -------------------------------------------------------------------------

MAIL = "Jane.Doe@Example.test"
GMAIL = "jane.doe+news@gmail.com"
PHONE = "+44 7700 900123"
PHONE_DIGITS = "447700900123"


@pytest.fixture
async def uk(client: httpx.AsyncClient, secret_key: str) -> tuple[str, str]:
    """A project whose default country is GB, holding one event per identifier kind."""
    pid, key = await create_project(client, secret_key, "UK", default_country="GB")
    await send(
        client,
        key,
        {
            "type": "identify",
            "user_id": "u-mail",
            "message_id": "m-mail",
            "traits": {"email": MAIL},
        },
        {
            "type": "identify",
            "user_id": "u-gmail",
            "message_id": "m-gmail",
            "traits": {"email": GMAIL},
        },
        {
            "type": "identify",
            "user_id": "u-phone",
            "message_id": "m-phone",
            "traits": {"phone": PHONE},
        },
        {"event": "Seen", "anonymous_id": "anon-only", "message_id": "m-anon"},
        {
            "type": "identify",
            "user_id": "u-noise",
            "message_id": "m-noise",
            "traits": {"email": "noise@example.test", "phone": "+44 7700 900999"},
        },
    )
    return pid, key


IDENTIFIERS: list[tuple[dict[str, str], str, str]] = [
    ({"user_id": "u-mail"}, "user_id", "m-mail"),
    ({"anonymous_id": "anon-only"}, "anonymous_id", "m-anon"),
    ({"email": "  JANE.DOE@example.TEST "}, "email", "m-mail"),
    ({"email_sha256": sha("jane.doe@example.test")}, "email", "m-mail"),
    ({"email_sha256": sha("jane.doe@example.test").upper()}, "email", "m-mail"),
    ({"email": "JaneDoe@GMAIL.com"}, "email", "m-gmail"),  # the Google form's digest
    ({"email_sha256": sha("janedoe@gmail.com")}, "email", "m-gmail"),
    ({"phone": "07700 900123"}, "phone", "m-phone"),  # national: the project's default_country
    ({"phone_sha256": sha(PHONE_DIGITS)}, "phone", "m-phone"),
    ({"phone_sha256": sha("+" + PHONE_DIGITS)}, "phone", "m-phone"),
]
IDS = [f"{next(iter(body))}-{i}" for i, (body, _, _) in enumerate(IDENTIFIERS)]


class TestByIdentifier:
    @pytest.mark.parametrize(("body", "kind", "expected"), IDENTIFIERS, ids=IDS)
    async def test_export_by_identifier(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        uk: tuple[str, str],
        body: dict[str, str],
        kind: str,
        expected: str,
    ) -> None:
        pid, _ = uk
        lines = await export_by(client, secret_key, pid, body)
        assert [line["message_id"] for line in lines] == [expected]

    @pytest.mark.parametrize(("body", "kind", "expected"), IDENTIFIERS, ids=IDS)
    async def test_erase_by_identifier(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        uk: tuple[str, str],
        conn: asyncpg.Connection,
        metrics: Metrics,
        body: dict[str, str],
        kind: str,
        expected: str,
    ) -> None:
        pid, key = uk
        r = await client.post(
            f"/v1/projects/{pid}/events/erase", json=body, headers=bearer(secret_key)
        )
        assert r.status_code == 200, r.text
        receipt = r.json()
        assert_receipt(receipt, pid, kind)
        assert receipt["deleted"]["events"] == 1
        for value in body.values():
            assert value.strip().lower() not in r.text.lower()
        assert await stored_ids(conn, "project_id = $1::uuid", pid) == {
            "m-mail",
            "m-gmail",
            "m-phone",
            "m-anon",
            "m-noise",
        } - {expected}
        assert await export_by(client, secret_key, pid, body) == []
        # The same person, named the way the erasure named them, stays out.
        late_events: dict[str, dict[str, Any]] = {
            "m-mail": {"type": "identify", "user_id": "u-mail", "traits": {"email": MAIL}},
            "m-gmail": {"type": "identify", "user_id": "u-gmail", "traits": {"email": GMAIL}},
            "m-phone": {"type": "identify", "user_id": "u-phone", "traits": {"phone": PHONE}},
            "m-anon": {"event": "Seen", "anonymous_id": "anon-only"},
        }
        again = late_events[expected]
        start = suppressed(metrics)
        await send(client, key, {**again, "message_id": "late"})
        assert suppressed(metrics) == start + 1
        assert await stored_ids(conn, "message_id = 'late'") == set()

    @pytest.mark.parametrize("action", ["export", "erase"])
    @pytest.mark.parametrize(
        ("body", "secret"),
        [
            ({"user_id": "canary-uid-1", "email": "canary-mail@example.test"}, "canary"),
            ({"email_sha256": "canary" + "0" * 58}, "canary"),
            ({"phone_sha256": "ab" * 31}, "ab" * 31),
            ({"email_sha256": "ab" * 33}, "ab" * 33),
            ({"email": "canary-not-an-email"}, "canary"),
            ({"phone": "canary-phone"}, "canary"),
            ({"user_id": ""}, None),
            ({"anonymous_id": 12345}, None),
            ({}, None),
            ({"name": "canary-what"}, "canary"),
        ],
    )
    async def test_bad_bodies_are_400_and_never_echo_the_value(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        uk: tuple[str, str],
        conn: asyncpg.Connection,
        action: str,
        body: dict[str, Any],
        secret: str | None,
    ) -> None:
        pid, _ = uk
        r = await client.post(
            f"/v1/projects/{pid}/events/{action}", json=body, headers=bearer(secret_key)
        )
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert {"type", "title", "status", "detail"} <= problem.keys()
        if secret is not None:
            assert secret not in r.text
        assert await conn.fetchval("SELECT count(*) FROM events") == 5
        assert await conn.fetchval("SELECT count(*) FROM erasures") == 0


# -- receipts ------------------------------------------------------------------------------


class TestReceipts:
    async def test_receipts_are_listed_newest_first_and_fetched_by_id(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        other_secret: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        pid = project["id"]
        await send(
            client,
            write_key,
            {"event": "x", "user_id": "first"},
            {"event": "x", "user_id": "second"},
        )
        first = await erase_user(client, secret_key, pid, "first")
        second = await erase_user(client, secret_key, pid, "second")
        r = await client.get(f"/v1/projects/{pid}/erasures", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        assert r.json() == {"erasures": [second, first], "next_cursor": None}
        for receipt in (first, second):
            one = await client.get(
                f"/v1/projects/{pid}/erasures/{receipt['id']}", headers=bearer(secret_key)
            )
            assert one.status_code == 200
            assert one.json() == receipt
        # Paged.
        page = await client.get(f"/v1/projects/{pid}/erasures?limit=1", headers=bearer(secret_key))
        assert page.json()["erasures"] == [second]
        cursor = page.json()["next_cursor"]
        assert isinstance(cursor, str)
        rest = await client.get(
            f"/v1/projects/{pid}/erasures",
            params={"limit": 1, "cursor": cursor},
            headers=bearer(secret_key),
        )
        assert rest.json()["erasures"] == [first]
        # Another organization sees none of it, exactly as if it did not exist.
        for path in (f"/v1/projects/{pid}/erasures", f"/v1/projects/{pid}/erasures/{first['id']}"):
            denied = await client.get(path, headers=bearer(other_secret))
            assert denied.status_code == 404
            assert "first" not in denied.text
        missing = await client.get(
            f"/v1/projects/{pid}/erasures/{new_id()}", headers=bearer(secret_key)
        )
        assert missing.status_code == 404
        assert (
            await client.get(f"/v1/projects/{pid}/erasures/not-a-uuid", headers=bearer(secret_key))
        ).status_code == 404

    async def test_another_orgs_receipt_is_not_found_through_its_own_project(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        other_secret: str,
        project: dict[str, Any],
        write_key: str,
    ) -> None:
        await send(client, write_key, {"event": "x", "user_id": "someone"})
        receipt = await erase_user(client, secret_key, project["id"], "someone")
        theirs, _ = await create_project(client, other_secret, "Theirs")
        r = await client.get(
            f"/v1/projects/{theirs}/erasures/{receipt['id']}", headers=bearer(other_secret)
        )
        assert r.status_code == 404
        listed = await client.get(f"/v1/projects/{theirs}/erasures", headers=bearer(other_secret))
        assert listed.json() == {"erasures": [], "next_cursor": None}


# -- project deletion ----------------------------------------------------------------------


PER_PROJECT_TABLES = (
    "events",
    "event_dedup",
    "user_profiles",
    "suppressions",
    "erasures",
    "destinations",
    "outbox",
    "deliveries",
)


async def project_rows(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    return {
        table: await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE project_id = $1::uuid",
            project_id,
        )
        for table in PER_PROJECT_TABLES
    }


class TestProjectDeletion:
    async def test_deleting_a_project_removes_its_subject_data_only(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
    ) -> None:
        keep_pid, keep_key = await create_project(client, secret_key, "Keep")
        for pid, key in ((project["id"], write_key), (keep_pid, keep_key)):
            # A paused destination: its outbox fills, nothing is sent.
            destination = uuid.uuid4()
            await conn.execute(
                "INSERT INTO destinations (project_id, id, type, name, url, status)"
                " VALUES ($1::uuid, $2, 'webhook', 'hook', 'https://hooks.example/', 'paused')",
                pid,
                destination,
            )
            await conn.execute(
                "INSERT INTO deliveries (project_id, destination_id, message_id, received_at)"
                " VALUES ($1::uuid, $2, 'm-delivered', now())",
                pid,
                destination,
            )
            await plant_user(client, key, "gone-user")
            await send(client, key, {"type": "identify", "user_id": "stays", "traits": {"a": 1}})
            await erase_user(client, secret_key, pid, "gone-user")
        doomed = await project_rows(conn, project["id"])
        kept = await project_rows(conn, keep_pid)
        assert all(n > 0 for n in doomed.values()), doomed
        assert doomed == kept

        r = await client.delete(f"/v1/projects/{project['id']}", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == project["id"]
        assert body["deleted"] == {
            "events": doomed["events"],
            "message_ids": doomed["event_dedup"],
            "user_profiles": doomed["user_profiles"],
            "suppressions": doomed["suppressions"],
            "erasures": doomed["erasures"],
            "destinations": doomed["destinations"],
            "outbox": doomed["outbox"],
            "deliveries": doomed["deliveries"],
        }
        assert await project_rows(conn, project["id"]) == dict.fromkeys(PER_PROJECT_TABLES, 0)
        assert await project_rows(conn, keep_pid) == kept
        assert len(await export_user(client, secret_key, keep_pid, "stays")) == 1
        gone = await client.get(user_path(project["id"], "stays"), headers=bearer(secret_key))
        assert gone.status_code == 404
