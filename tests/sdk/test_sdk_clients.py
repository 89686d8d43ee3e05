"""The real PyPI SDKs (segment-analytics-python, rudder-sdk-python, posthog) against a live
`ingest serve`.

Each test sends through the SDK, flushes it, then waits (with a deadline, polling the
database) for the rows, and checks that what was raw in the call is hashed in the row.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import orjson
import pytest
from posthog import Posthog
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from ingest.store import init_connection
from tests.conftest import unseal
from tests.live import live_server

INGEST = [sys.executable, "-m", "ingest.cli"]
EMAIL = " Ann.Lee@Example.com "
PHONE = "+1 415 555 0100"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Live(NamedTuple):
    base: str
    write_key: str
    secret: str
    project_id: str


@pytest.fixture(name="server")
def _server(db_dsn: str, geoip_db: Path) -> Iterator[Live]:
    """A live server, a fresh project on it with its write key, and the org's secret key."""
    with live_server(db_dsn, geoip_db) as (base, secret):
        project = httpx.post(
            base + "/v1/projects",
            json={"name": "SDKs"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert project.status_code == 201, project.text
        body = project.json()
        yield Live(base, body["write_key"]["key"], secret, body["id"])


def _wait_for_rows(dsn: str, count: int) -> list[dict[str, Any]]:
    """The events once ``count`` have been stored; fails at the deadline with what there is."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)  # jsonb as Python objects
        try:
            rows = await conn.fetch("SELECT * FROM events ORDER BY timestamp")
            return [await unseal(conn, r) for r in rows]
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    rows = asyncio.run(fetch())
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval, not an assertion
        rows = asyncio.run(fetch())
    assert len(rows) == count, [(r["type"], r["event"]) for r in rows]
    return rows


def _no_raw_pii(rows: list[dict[str, Any]]) -> None:
    dump = orjson.dumps(rows, default=str).decode()
    for raw in (EMAIL.strip(), EMAIL.strip().lower(), "555 0100", "4155550100"):
        assert raw not in dump


def test_segment_python_sdk(server: Live, db_dsn: str) -> None:
    """segment-analytics-python: identify, track and a batch of tracks via /v1/batch, gzip."""
    base, write_key = server.base, server.write_key
    errors: list[Any] = []
    client = SegmentClient(
        write_key=write_key,
        host=base,
        gzip=True,
        on_error=lambda error, _items: errors.append(type(error).__name__),
        upload_size=3,  # several batches, not one
        max_retries=1,
    )
    client.identify("user-1", {"email": EMAIL, "phone": PHONE, "plan": "pro"})
    client.track("user-1", "Signed Up", {"source": "ads"})
    for n in range(5):
        client.track(anonymous_id="anon-1", event="Viewed", properties={"n": n})
    client.flush()
    client.join()
    assert errors == []
    rows = _wait_for_rows(db_dsn, 7)
    [identify] = [r for r in rows if r["type"] == "identify"]
    assert identify["email_sha256"] == _sha(EMAIL.strip().lower())
    assert identify["phone_sha256"] == _sha("14155550100")
    assert identify["traits"]["plan"] == "pro"
    assert identify["context"]["library"]["name"] == "analytics-python"
    assert sorted(r["properties"]["n"] for r in rows if r["event"] == "Viewed") == list(range(5))
    _no_raw_pii(rows)


def test_rudderstack_python_sdk(server: Live, db_dsn: str) -> None:
    """rudder-sdk-python: identify, track and a screen via /v1/batch, gzip, Basic auth. Its
    identify carries the traits in context.traits only: they must make the user's state."""
    base, write_key = server.base, server.write_key
    errors: list[Any] = []
    client = RudderClient(
        write_key=write_key,
        host=base,
        gzip=True,
        on_error=lambda error, _items: errors.append(type(error).__name__),
        upload_size=2,  # several batches, not one
        max_retries=1,
    )
    client.identify("user-1", {"email": EMAIL, "phone": PHONE, "plan": "pro"})
    client.track("user-1", "Signed Up", {"source": "ads"})
    client.screen("user-1", name="Home", properties={"n": 1})
    for n in range(3):
        client.track(anonymous_id="anon-1", event="Viewed", properties={"n": n})
    client.flush()
    client.join()
    assert errors == []
    rows = _wait_for_rows(db_dsn, 6)
    [identify] = [r for r in rows if r["type"] == "identify"]
    assert identify["email_sha256"] == _sha(EMAIL.strip().lower())
    assert identify["phone_sha256"] == _sha("14155550100")
    assert identify["traits"]["plan"] == "pro"
    assert identify["context"]["library"]["name"] == "analytics-python"
    [screen] = [r for r in rows if r["type"] == "screen"]
    assert screen["event"] == "Home"
    assert sorted(r["properties"]["n"] for r in rows if r["event"] == "Viewed") == list(range(3))
    _no_raw_pii(rows)
    profile = httpx.get(
        f"{base}/v1/projects/{server.project_id}/users/user-1",
        headers={"Authorization": f"Bearer {server.secret}"},
    )
    assert profile.status_code == 200, profile.text
    traits = profile.json()["traits"]
    assert traits["plan"] == "pro"
    assert traits["email"] == _sha(EMAIL.strip().lower())


def test_posthog_python_sdk(server: Live, db_dsn: str) -> None:
    """posthog: capture, set (person properties) and alias via /batch/, gzip."""
    base, write_key = server.base, server.write_key
    errors: list[Any] = []
    client = Posthog(
        write_key,
        host=base,
        gzip=True,
        on_error=lambda error, _items: errors.append(type(error).__name__),
        flush_at=3,
        max_retries=1,
    )
    client.set(distinct_id="user-1", properties={"email": EMAIL, "phone": PHONE})
    client.capture("Signed Up", distinct_id="user-1", properties={"$set": {"plan": "pro"}})
    for n in range(4):
        client.capture("Viewed", distinct_id="user-1", properties={"n": n})
    client.alias(previous_id="anon-1", distinct_id="user-1")
    client.flush()
    client.shutdown()
    assert errors == []
    rows = _wait_for_rows(db_dsn, 7)
    [identify] = [r for r in rows if r["type"] == "identify"]
    assert identify["user_id"] == "user-1"
    assert identify["email_sha256"] == _sha(EMAIL.strip().lower())
    assert identify["phone_sha256"] == _sha("14155550100")
    assert identify["context"]["library"]["name"] == "posthog-python"
    [signed_up] = [r for r in rows if r["event"] == "Signed Up"]
    assert signed_up["traits"] == {"plan": "pro"}
    [alias] = [r for r in rows if r["type"] == "alias"]
    assert alias["properties"]["previous_id"] == "anon-1"
    _no_raw_pii(rows)
