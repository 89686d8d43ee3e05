"""A project's identifier_pii setting: an email- or phone-shaped id is refused by default, or
stored as its SHA-256 (normalized as everywhere else) when the project chose "hash"."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import bearer, new_id, unseal


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def hashing_project(client: httpx.AsyncClient, secret_key: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/projects",
        json={"name": "hashes ids", "default_country": "US", "identifier_pii": "hash"},
        headers=bearer(secret_key),
    )
    assert r.status_code == 201, r.text
    assert r.json()["identifier_pii"] == "hash"
    project: dict[str, Any] = r.json()
    return project


async def test_the_default_refuses_and_a_patch_switches_to_hashing(
    client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], conn: asyncpg.Connection
) -> None:
    assert project["identifier_pii"] == "reject"
    key = project["write_key"]["key"]
    event = {"event": "x", "user_id": "Jane.Doe@Example.com", "message_id": new_id()}
    r = await client.post("/v1/events", json=event, headers=bearer(key))
    assert r.status_code == 400, r.text

    r = await client.patch(
        f"/v1/projects/{project['id']}", json={"identifier_pii": "hash"}, headers=bearer(secret_key)
    )
    assert r.status_code == 200, r.text
    assert r.json()["identifier_pii"] == "hash"
    # The key cache (1 s in the tests' settings) may still hold the old setting.
    for _ in range(30):
        r = await client.post("/v1/events", json=event, headers=bearer(key))
        if r.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text
    row = await conn.fetchrow(
        "SELECT user_id, email_sha256 FROM events WHERE message_id = $1", event["message_id"]
    )
    assert row is not None
    row = await unseal(conn, row)
    assert row["user_id"] == sha("jane.doe@example.com")
    assert row["email_sha256"] == sha("jane.doe@example.com")


async def test_hashed_ids_are_normalized_and_fill_the_identifier_columns(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    created = await hashing_project(client, secret_key)
    key = created["write_key"]["key"]
    batch = [
        {"event": "a", "user_id": " JANE.DOE@example.COM ", "message_id": "m1"},
        {"event": "b", "anonymous_id": "(415) 555-0100", "message_id": "m2"},
        {
            "event": "c",
            "user_id": "u-7",
            "anonymous_id": "mailto:jane.doe@example.com",
            "message_id": "m3",
        },
        # Only a whole address can be hashed: an id that merely holds one stays refused.
        {"event": "d", "user_id": "user:jane.doe@example.com", "message_id": "m4"},
    ]
    r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert [(e["index"], e["code"]) for e in r.json()["rejected"]] == [(3, "user_id_is_email")]
    rows = {
        r["message_id"]: await unseal(conn, r)
        for r in await conn.fetch(
            "SELECT message_id, user_id, anonymous_id, email_sha256, phone_sha256 FROM events"
        )
    }
    email = sha("jane.doe@example.com")
    phone = sha("14155550100")
    assert rows["m1"]["user_id"] == email
    assert rows["m1"]["email_sha256"] == email
    assert rows["m2"]["anonymous_id"] == phone
    assert rows["m2"]["phone_sha256"] == phone
    assert rows["m3"]["user_id"] == "u-7"
    assert rows["m3"]["anonymous_id"] == email
    dump = "".join(str(v) for row in rows.values() for v in row.values()).lower()
    assert "jane" not in dump
    assert "555" not in dump

    # Erasure by the email reaches the events whose id was that email.
    r = await client.post(
        f"/v1/projects/{created['id']}/events/erase",
        json={"email": "jane.doe@example.com"},
        headers=bearer(secret_key),
    )
    assert r.status_code == 200, r.text
    assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", email) == 0


@pytest.mark.parametrize("value", ["maybe", "", None, 1, ["hash"]])
async def test_an_unknown_setting_is_a_400(
    client: httpx.AsyncClient, secret_key: str, project: dict[str, Any], value: Any
) -> None:
    r = await client.patch(
        f"/v1/projects/{project['id']}", json={"identifier_pii": value}, headers=bearer(secret_key)
    )
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["identifier_pii"]
