"""A user's export streams in constant memory: 100,000 events through a real `ingest serve`
process, read line by line, while the server's resident set is watched."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.cli import _create_org
from ingest.config import Settings
from ingest.events import COLUMNS
from tests.conftest import TEST_MASTER_KEY
from tests.live import free_port

EVENTS = 100_000
USER = "heavy-user"
MAX_GROWTH_BYTES = 50 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def server(db_dsn: str, geoip_db: Path, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`ingest serve` with one worker (this very process serves) against the test database;
    (its pid, its base URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_WORKERS="1",
        INGEST_LOG_LEVEL="warning",
    )
    port = free_port()
    # Its output goes to a file: a pipe nobody reads would block the server once full.
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "ingest.cli"),
                *("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ingest serve exited: {(tmp_path / 'serve.log').read_text()}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("ingest serve did not start")
            time.sleep(0.2)
        yield proc.pid, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _records(project_id: Any, start: datetime) -> Iterator[tuple[Any, ...]]:
    filler = "x" * 250
    for i in range(EVENTS):
        received = start + timedelta(milliseconds=i)
        values = {
            "project_id": project_id,
            "received_at": received,
            # Zero-padded: message ids sort like i, though received_at alone orders them.
            "message_id": f"m-{i:06d}",
            "type": "track",
            "event": "Viewed Item",
            "user_id": USER,
            "anonymous_id": None,
            "timestamp": received,
            "original_timestamp": None,
            "sent_at": None,
            "app_id": None,
            "country": "GB",
            "region": None,
            "email_sha256": None,
            "email_google_sha256": None,
            "phone_sha256": None,
            "phone_e164_sha256": None,
            "properties": {"i": i, "item": f"sku-{i}", "note": filler},  # about 300 bytes
            "traits": {},
            "context": {"library": {"name": "load", "version": "1"}},
        }
        yield tuple(values[c] for c in COLUMNS)


def _stream_export(pid: int, url: str, secret_key: str) -> tuple[int, int, list[str]]:
    """Read the export line by line; (baseline RSS, peak RSS while streaming, message ids)."""
    baseline = rss_bytes(pid)
    peak = baseline
    ids: list[str] = []
    previous: datetime | None = None
    headers = {"Authorization": f"Bearer {secret_key}"}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == "application/x-ndjson"
        for n, line in enumerate(response.iter_lines()):
            if not line:
                continue
            doc = json.loads(line)
            assert doc["user_id"] == USER
            received = datetime.fromisoformat(doc["received_at"])
            assert previous is None or received > previous, (n, doc["message_id"])
            previous = received
            ids.append(doc["message_id"])
            if n % 2000 == 0:
                peak = max(peak, rss_bytes(pid))
    peak = max(peak, rss_bytes(pid))
    return baseline, peak, ids


async def test_a_100k_event_export_streams_in_constant_memory(
    server: tuple[int, str], settings: Settings, conn: asyncpg.Connection
) -> None:
    pid, base = server
    org = await _create_org(settings, "Bulk")
    secret_key = org["secret_key"]["key"]
    auth = {"Authorization": f"Bearer {secret_key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
        created = await client.post("/v1/projects", json={"name": "Bulk"})
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]

    start = datetime.now(UTC) - timedelta(seconds=EVENTS / 1000 + 60)
    await conn.copy_records_to_table("events", records=_records(project_id, start), columns=COLUMNS)
    # Someone else's events, interleaved in time: not in the export.
    await conn.execute(
        """
        INSERT INTO events (project_id, received_at, message_id, type, user_id, "timestamp")
        SELECT $1::uuid, $2::timestamptz + g * interval '7 ms', 'other-' || g, 'track', 'other',
               $2::timestamptz
        FROM generate_series(1, 1000) AS g
        """,
        project_id,
        start,
    )
    await conn.execute("ANALYZE events")
    assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", USER) == EVENTS

    url = f"{base}/v1/projects/{project_id}/events/users/{USER}"
    # Warm up the route (imports, pools, first allocations) before the baseline is taken.
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
        warm = await client.get(f"/v1/projects/{project_id}/events/users/nobody")
    assert warm.status_code == 200
    assert warm.content == b""

    began = time.monotonic()
    baseline, peak, ids = await asyncio.to_thread(_stream_export, pid, url, secret_key)
    elapsed = time.monotonic() - began

    assert len(ids) == EVENTS
    assert ids == [f"m-{i:06d}" for i in range(EVENTS)]  # oldest first, each once
    growth = peak - baseline
    assert growth < MAX_GROWTH_BYTES, (
        f"RSS grew {growth / 2**20:.1f} MiB (from {baseline / 2**20:.1f} MiB) while streaming"
    )
    assert elapsed < 60, f"the export took {elapsed:.1f} s"
