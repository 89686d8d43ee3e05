"""Identifiers at rest that a stolen dump cannot reverse (#7, keyring.py): a protected project
(the default) stores every email and phone SHA-256 sealed under its own key, wrapped under the
master key; exports and forwards give partners the plain SHA-256; lookups, suppression and
erasure work by the digest; a crypto-shred or the project's deletion makes them unreadable;
``ingest reencode`` seals what older rows still hold plain."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Secret, Settings
from ingest.keyring import MasterKeyError
from ingest.metrics import Metrics
from tests.api.test_forwarding import Receiver, create_destination, eventually, serve
from tests.conftest import TEST_MASTER_KEY, basic, bearer, client_for, new_id

# What the writer stores, on both of its paths (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("write_path")

VECTORS_PATH = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "pii.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
EMAIL = "Ada.Lovelace+crm@Example.com"
EMAIL_SHA = hashlib.sha256(b"ada.lovelace+crm@example.com").hexdigest()
PHONE = "+1 415 555 0142"
PHONE_SHA = hashlib.sha256(b"14155550142").hexdigest()


async def _dump(conn: asyncpg.Connection) -> str:
    """Every row of every table of the database, as text: what a stolen dump holds."""
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
    )
    parts: list[str] = []
    for t in tables:
        rows = await conn.fetch(f'SELECT t::text AS row FROM "{t["relname"]}" AS t')
        parts.extend(r["row"] for r in rows)
    return "\n".join(parts)


async def _project(client: httpx.AsyncClient, secret_key: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/v1/projects", json={"name": "P", **fields}, headers=bearer(secret_key))
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def _send(client: httpx.AsyncClient, write_key: str, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, headers=basic(write_key))
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == [], r.text


async def _export(
    client: httpx.AsyncClient, secret_key: str, project_id: str, **subject: str
) -> list[dict[str, Any]]:
    r = await client.post(
        f"/v1/projects/{project_id}/events/export", json=subject, headers=bearer(secret_key)
    )
    assert r.status_code == 200, r.text
    return [orjson.loads(line) for line in r.content.splitlines()]


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``ingest ARGS`` in a subprocess, off the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ingest.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _identify(email: str | None = None, phone: str | None = None, **more: Any) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    if email is not None:
        traits["email"] = email
    if phone is not None:
        traits["phone"] = phone
    return {
        "type": "identify",
        "userId": f"u-{new_id()}",
        "messageId": new_id(),
        "traits": traits,
        **more,
    }


async def test_projects_are_protected_by_default_and_their_dump_holds_no_digest(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    project = await _project(client, secret_key)
    assert project["digest_storage"] == "protected"
    rows = VECTORS["email"] + VECTORS["email_variants"]
    events = [_identify(r["input"]) for r in rows]
    events.append(
        {
            "type": "track",
            "event": "Note",
            "userId": "u-note",
            "properties": {"text": f"call {PHONE} soon", "contact": EMAIL},
            "context": {"traits": {"phone": PHONE}},
        }
    )
    # A digest the client computed, in an event with no email or phone: only its JSON holds one.
    client_sha = hashlib.sha256(b"client-side@example.test").hexdigest()
    events.append(
        {"type": "track", "event": "Ref", "userId": "u-ref", "properties": {"ref": client_sha}}
    )
    # The same in a context two events share (the writer scans a batch's context once), and
    # in traits alone.
    context_sha = hashlib.sha256(b"context-side@example.test").hexdigest()
    shared = {"page": {"url": f"https://shop.example/?ref={context_sha}"}}
    events += [
        {"type": "track", "event": "Ctx", "userId": f"u-ctx-{n}", "context": shared}
        for n in range(2)
    ]
    traits_sha = hashlib.sha256(b"traits-side@example.test").hexdigest()
    events.append({"type": "identify", "userId": "u-tr", "traits": {"ref": traits_sha}})
    await _send(client, project["write_key"]["key"], events)
    dump = await _dump(conn)
    digests = {r["sha256"] for r in rows} | {r.get("google_sha256") for r in rows} - {None}
    digests |= {EMAIL_SHA, PHONE_SHA, client_sha, context_sha, traits_sha}
    leaked = sorted(d for d in digests if d and d in dump)
    assert leaked == [], "plain SHA-256 digests in the dump"
    assert "enc:" in dump
    # Nor the project's keys in the clear: the pseudonym key column is empty once wrapped.
    row = await conn.fetchrow(
        "SELECT pseudonym_key, sealed_keys FROM projects WHERE id = $1",
        uuid.UUID(project["id"]),
    )
    assert row is not None
    assert row["pseudonym_key"] is None
    assert row["sealed_keys"] is not None


async def test_exports_give_the_vectors_sha256_exactly_every_variant(
    client: httpx.AsyncClient, secret_key: str
) -> None:
    project = await _project(client, secret_key)
    rows = VECTORS["email"] + VECTORS["email_variants"]
    events = [_identify(r["input"]) for r in rows]
    await _send(client, project["write_key"]["key"], events)
    problems = []
    for row, event in zip(rows, events, strict=True):
        found = await _export(client, secret_key, project["id"], user_id=event["userId"])
        assert len(found) == 1
        got = found[0]
        expected = {
            "email_sha256": row["sha256"],
            "email_google_sha256": row.get("google_sha256", row["sha256"]),
            "traits": {"email": row["sha256"]},
        }
        for name, value in expected.items():
            if got[name] != value:
                problems.append(f"{row['input']!r}: {name} {got[name]!r} != {value!r}")
    assert problems == []


async def test_phone_vectors_with_default_country_export_exactly(
    client: httpx.AsyncClient, secret_key: str
) -> None:
    by_country: dict[str | None, list[dict[str, Any]]] = {}
    for row in VECTORS["phone_variants"]:
        by_country.setdefault(row["default_country"], []).append(row)
    for country, rows in by_country.items():
        project = await _project(client, secret_key, default_country=country)
        kept = [r for r in rows if r.get("sha256")]
        events = [_identify(phone=r["input"]) for r in kept]
        await _send(client, project["write_key"]["key"], events)
        for row, event in zip(kept, events, strict=True):
            (got,) = await _export(client, secret_key, project["id"], user_id=event["userId"])
            assert got["phone_sha256"] == row["sha256"], row
            assert got["phone_e164_sha256"] == row["e164_sha256"], row


async def test_a_partner_with_only_the_sha256_finds_exports_and_erases_the_person(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    project = await _project(client, secret_key)
    key, pid = project["write_key"]["key"], project["id"]
    await _send(client, key, [_identify(EMAIL, PHONE), _identify("someone@else.example")])
    assert len(await _export(client, secret_key, pid, email_sha256=EMAIL_SHA)) == 1
    assert len(await _export(client, secret_key, pid, phone_sha256=PHONE_SHA)) == 1
    assert len(await _export(client, secret_key, pid, email=EMAIL)) == 1
    r = await client.post(
        f"/v1/projects/{pid}/events/erase",
        json={"email_sha256": EMAIL_SHA},
        headers=bearer(secret_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["events"] == 1
    assert await conn.fetchval("SELECT count(*) FROM events") == 1
    # Suppressed by the digest: sending the person again stores nothing.
    await _send(client, key, [_identify(EMAIL)])
    assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_a_plain_project_stores_plain_sha256_as_it_chose(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    project = await _project(client, secret_key, digest_storage="plain")
    assert project["digest_storage"] == "plain"
    await _send(client, project["write_key"]["key"], [_identify(EMAIL)])
    row = await conn.fetchrow("SELECT email_sha256, traits FROM events")
    assert row is not None
    assert row["email_sha256"] == EMAIL_SHA
    r = await client.patch(
        f"/v1/projects/{project['id']}",
        json={"digest_storage": "secret"},
        headers=bearer(secret_key),
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "digest_storage"


async def test_a_change_of_digest_storage_applies_to_the_next_event(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    """The writer keeps each project's keys between batches: a change must not wait for it."""
    project = await _project(client, secret_key)
    key, path = project["write_key"]["key"], f"/v1/projects/{project['id']}"
    stored = "SELECT email_sha256 FROM events WHERE user_id = $1"
    for n, storage in enumerate(("protected", "plain", "protected", "plain")):
        if n:
            r = await client.patch(
                path, json={"digest_storage": storage}, headers=bearer(secret_key)
            )
            assert r.status_code == 200, r.text
        await _send(client, key, [_identify(EMAIL, userId=f"u-{n}")])
        value = await conn.fetchval(stored, f"u-{n}")
        assert value == EMAIL_SHA if storage == "plain" else value.startswith("enc:"), value


async def test_forwards_carry_the_plain_sha256(
    client: httpx.AsyncClient,
    secret_key: str,
    conn: asyncpg.Connection,
    serve: Callable[[Receiver], Awaitable[Receiver]],
) -> None:
    project = await _project(client, secret_key)
    receiver = await serve(Receiver())
    await create_destination(client, secret_key, project["id"], url=receiver.url)
    await _send(client, project["write_key"]["key"], [_identify(EMAIL, PHONE)])

    async def delivered() -> bool:
        return len(receiver.events()) == 1

    await eventually(delivered)
    (event,) = receiver.events()
    assert event["email_sha256"] == EMAIL_SHA
    assert event["phone_sha256"] == PHONE_SHA
    assert event["traits"] == {"email": EMAIL_SHA, "phone": PHONE_SHA}


async def test_crypto_shred_makes_every_digest_unreadable_at_once_and_keeps_suppressions(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection
) -> None:
    project = await _project(client, secret_key)
    key, pid = project["write_key"]["key"], project["id"]
    await _send(client, key, [_identify(EMAIL)])
    erased = _identify("gone@example.com")
    await _send(client, key, [erased])
    r = await client.delete(
        f"/v1/projects/{pid}/events/users/{erased['userId']}", headers=bearer(secret_key)
    )
    assert r.status_code == 200
    before = await conn.fetchval("SELECT email_sha256 FROM events")
    r = await client.post(f"/v1/projects/{pid}/crypto-shred", headers=bearer(secret_key))
    assert r.status_code == 200, r.text
    assert r.json()["shredded_at"]
    # The stored value did not change; nobody can open it any more.
    assert await conn.fetchval("SELECT email_sha256 FROM events") == before
    assert await _export(client, secret_key, pid, email=EMAIL) == []  # found by nobody
    events = await client.get(
        f"/v1/projects/{pid}/events/users/{(await conn.fetchval('SELECT user_id FROM events'))}",
        headers=bearer(secret_key),
    )
    line = orjson.loads(events.content.splitlines()[0])
    assert line["email_sha256"] is None
    assert line["traits"]["email"].startswith("enc:")  # noise to anyone
    # New events are sealed under the new key and found again; the erased person stays out.
    await _send(client, key, [_identify(EMAIL), _identify("gone@example.com")])
    assert len(await _export(client, secret_key, pid, email=EMAIL)) == 1
    assert await conn.fetchval("SELECT count(*) FROM events") == 2
    audit = await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'project.crypto_shred'"
    )
    assert audit == 1


async def test_the_service_refuses_a_master_key_that_does_not_open_the_projects_keys(
    settings: Settings, project: dict[str, Any]
) -> None:
    other = dataclasses.replace(settings, master_key=Secret("11" * 32))
    with pytest.raises(MasterKeyError, match="master key"):
        async with LifespanManager(create_app(other, metrics=Metrics())):
            pass


async def test_project_keys_made_outside_the_service_are_wrapped_at_its_start(
    settings: Settings, conn: asyncpg.Connection, org: dict[str, Any], log_stream: io.BytesIO
) -> None:
    pid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO projects (id, org_id, name) VALUES ($1, $2, 'raw')",
        pid,
        uuid.UUID(org["org_id"]),
    )
    assert await conn.fetchval("SELECT pseudonym_key IS NOT NULL FROM projects WHERE id = $1", pid)
    async with LifespanManager(create_app(settings, metrics=Metrics())):
        pass
    row = await conn.fetchrow("SELECT pseudonym_key, sealed_keys FROM projects WHERE id = $1", pid)
    assert row is not None
    assert row["pseudonym_key"] is None
    assert row["sealed_keys"] is not None
    assert b"project_keys_wrapped" in log_stream.getvalue()


__all__ = ["serve"]  # the receiver fixture, used here


async def test_reencode_seals_what_older_rows_hold_plain_online_with_progress(
    client: httpx.AsyncClient, secret_key: str, conn: asyncpg.Connection, db_dsn: str
) -> None:
    project = await _project(client, secret_key, digest_storage="plain")
    key, pid = project["write_key"]["key"], project["id"]
    await _send(client, key, [_identify(EMAIL, PHONE, userId="ada")])
    r = await client.patch(
        f"/v1/projects/{pid}", json={"digest_storage": "protected"}, headers=bearer(secret_key)
    )
    assert r.status_code == 200
    await _send(client, key, [_identify(EMAIL, userId="ada")])
    # Both forms are found while the older row is still plain.
    assert len(await _export(client, secret_key, pid, email=EMAIL)) == 2
    assert EMAIL_SHA in await _dump(conn)

    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(INGEST_DATABASE_URL=db_dsn, INGEST_MASTER_KEY=TEST_MASTER_KEY)
    run = await _cli(env, "reencode")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert any("blocks" in line and line["rows"] >= 1 for line in lines), lines
    assert lines[-1]["rows_reencoded"]["events"] == 1
    assert lines[-1]["rows_reencoded"]["user_profiles"] == 1
    dump = await _dump(conn)
    assert EMAIL_SHA not in dump
    assert PHONE_SHA not in dump
    exported = await _export(client, secret_key, pid, email=EMAIL)
    assert [e["email_sha256"] for e in exported] == [EMAIL_SHA, EMAIL_SHA]
    assert exported[0]["phone_sha256"] == PHONE_SHA
    profile = await client.get(f"/v1/projects/{pid}/users/ada", headers=bearer(secret_key))
    assert profile.json()["traits"]["email"] == EMAIL_SHA
    # Nothing left: a second run changes nothing.
    again = await _cli(env, "reencode")
    assert json.loads(again.stdout.splitlines()[-1])["rows_reencoded"] == {
        "events": 0,
        "outbox": 0,
        "user_profiles": 0,
    }


async def test_the_embedded_default_makes_a_master_key_file_once_and_says_so(
    tmp_path: Path, log_stream: io.BytesIO
) -> None:
    from ingest import cli

    settings = Settings(data_dir=tmp_path)
    saved = dict(os.environ)
    try:
        with_key = cli._master_key(settings)
        assert with_key.master_key_file == tmp_path / "master.key"
        assert os.environ["INGEST_MASTER_KEY_FILE"] == str(tmp_path / "master.key")
        first = (tmp_path / "master.key").read_text()
        assert b"master_key_created" in log_stream.getvalue()
        assert first.strip().encode() not in log_stream.getvalue()
        cli._master_key(settings)
        assert (tmp_path / "master.key").read_text() == first
        with pytest.raises(cli.CommandError, match="INGEST_MASTER_KEY"):
            cli._master_key(dataclasses.replace(settings, database_url=Secret("postgresql://x/y")))
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def test_a_master_key_rotation_rewraps_every_project_so_the_old_key_can_go(
    client: httpx.AsyncClient,
    secret_key: str,
    settings: Settings,
    conn: asyncpg.Connection,
    db_dsn: str,
) -> None:
    project = await _project(client, secret_key)
    await _send(client, project["write_key"]["key"], [_identify(EMAIL, userId="ada")])
    new_key = "5a" * 32
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(INGEST_DATABASE_URL=db_dsn)
    refused = await _cli({**env, "INGEST_MASTER_KEY": new_key}, "rotate-master-key")
    assert refused.returncode == 1
    assert "INGEST_MASTER_KEY_PREVIOUS" in refused.stderr
    run = await _cli(
        {**env, "INGEST_MASTER_KEY": new_key, "INGEST_MASTER_KEY_PREVIOUS": TEST_MASTER_KEY},
        "rotate-master-key",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["projects_rewrapped"] >= 1
    # The new key alone now opens everything; the old one alone opens nothing.
    rotated = dataclasses.replace(settings, master_key=Secret(new_key))
    async with (
        LifespanManager(create_app(rotated, metrics=Metrics())) as m,
        client_for(m.app) as c,
    ):
        r = await c.get(
            f"/v1/projects/{project['id']}/events/users/ada", headers=bearer(secret_key)
        )
        assert orjson.loads(r.content.splitlines()[0])["email_sha256"] == EMAIL_SHA
    with pytest.raises(MasterKeyError):
        async with LifespanManager(create_app(settings, metrics=Metrics())):
            pass
