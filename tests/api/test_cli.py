"""The command line as a partner runs it: real processes, real ports, the embedded Postgres."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_MASTER_KEY
from tests.live import INGEST, free_port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INGEST, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    """Starts `ingest serve` and waits for /healthz; stops it (SIGTERM) afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = subprocess.Popen(
            [*INGEST, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(
                    f"ingest serve exited: {proc.stdout.read() if proc.stdout else ''}"
                )
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("ingest serve did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _bootstrap(env: dict[str, str], base: str) -> str:
    created = _run(["admin", "create-org", "Acme Ltd"], env)
    assert created.returncode == 0, created.stderr
    org = json.loads(created.stdout)
    assert org["name"] == "Acme Ltd"
    project = httpx.post(
        base + "/v1/projects",
        json={"name": "App"},
        headers={"Authorization": f"Bearer {org['secret_key']['key']}"},
    )
    assert project.status_code == 201
    key: str = project.json()["write_key"]["key"]
    return key


def test_serve_migrate_and_admin_against_a_database_url(
    serve: Any, db_dsn: str, geoip_db: Path
) -> None:
    env = _env(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
    )
    migrated = _run(["migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"applied": []}  # the template is migrated already
    proc, base = serve(env)
    key = _bootstrap(env, base)
    r = httpx.post(
        base + "/v1/events",
        json={"event": "Opened", "user_id": "u1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    out = _stop(proc)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert any(
        x.get("event") == "request_finished" and x.get("route") == "/v1/events" for x in lines
    )
    assert not any(x.get("event") == "geoip_database_bundled" for x in lines)


def test_bad_configuration_is_refused_with_every_reason() -> None:
    r = _run(
        ["migrate"],
        _env(
            INGEST_PORT="high",
            INGEST_MAX_BODY_BYTES="-1",
            INGEST_WRITER_ONE_STATEMENT_EVENTS="-1",
        ),
    )
    assert r.returncode == 2
    assert "INGEST_PORT" in r.stderr
    assert "INGEST_MAX_BODY_BYTES" in r.stderr
    assert "INGEST_WRITER_ONE_STATEMENT_EVENTS" in r.stderr


def test_zero_configuration_serve_keeps_events_across_restarts(serve: Any, tmp_path: Path) -> None:
    """No database configured: an embedded Postgres under INGEST_DATA_DIR, and the bundled
    GeoLite2 database, announced as dated 2018; a restart finds the events again."""
    env = _env(INGEST_DATA_DIR=str(tmp_path / "data"))
    proc, base = serve(env)
    key = _bootstrap(env, base)
    r = httpx.post(
        base + "/v1/events",
        json={"event": "Kept", "user_id": "u1", "message_id": "keep-1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    out = _stop(proc)
    assert "geoip_database_bundled" in out
    assert "INGEST_GEOIP_DB" in out

    proc, base = serve(env)
    again = httpx.post(
        base + "/v1/events",
        json={"event": "Kept", "user_id": "u1", "message_id": "keep-1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1  # the first copy survived the restart
    _stop(proc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

        server = get_server(tmp_path / "data" / "pg", cleanup_mode="stop")
    try:
        import asyncio

        async def count() -> int:
            conn = await asyncpg.connect(server.get_uri("ingest"))
            try:
                n: int = await conn.fetchval("SELECT count(*) FROM events WHERE event = 'Kept'")
                return n
            finally:
                await conn.close()

        assert asyncio.run(count()) == 1
    finally:
        server.cleanup()


def test_workers_share_the_load_and_metrics_add_up(serve: Any, db_dsn: str, geoip_db: Path) -> None:
    """`--workers 2`: two processes answer, and a scrape (served by either) counts every event."""
    env = _env(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
    )
    proc, base = serve(env, "--workers", "2")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    # uvicorn's supervisor, its workers, and possibly multiprocessing's resource tracker.
    workers = [
        c
        for c in children
        if "ingest.app" in Path(f"/proc/{c}/cmdline").read_text()
        or "multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_text()
    ]
    assert len(workers) >= 2, children
    key = _bootstrap(env, base)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
        for i in range(40):
            # A new connection each time so both workers get requests.
            r = c.post(
                "/v1/events",
                json={"event": "x", "user_id": f"u{i}"},
                headers={"Connection": "close"},
            )
            assert r.status_code == 200
        for _ in range(4):
            text = c.get("/metrics", headers={"Connection": "close"}).text
            accepted = [
                line
                for line in text.splitlines()
                if line.startswith("ingest_events_accepted_total ")
            ]
            assert accepted == ["ingest_events_accepted_total 40.0"]
    _stop(proc)


def test_connections_past_the_limit_get_503(serve: Any, db_dsn: str, geoip_db: Path) -> None:
    """INGEST_MAX_CONNECTIONS bounds open connections per worker; the excess gets 503 at once."""
    env = _env(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_MAX_CONNECTIONS="2",
        INGEST_WORKERS="1",
    )
    proc, base = serve(env)
    port = int(base.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        # Stop mid-headers: no response is ever due, so the server keeps all three open.
        for s in held:
            s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        statuses = []
        for _ in range(50):  # until the server has accepted them (milliseconds, normally)
            statuses.append(httpx.get(base + "/healthz", timeout=5).status_code)
            if statuses[-1] == 503:
                break
            time.sleep(0.1)
        assert statuses[-1] == 503, statuses
    finally:
        for s in held:
            s.close()
    # And it lets go once they close.
    for _ in range(50):
        if httpx.get(base + "/healthz", timeout=5).status_code == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("still 503 after the held connections closed")
    _stop(proc)


def test_workers_from_the_command_line_split_the_rate_limit(
    serve: Any, db_dsn: str, geoip_db: Path
) -> None:
    """`--workers 3` (not the environment) reaches the workers: each enforces a third."""
    env = _env(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_RATE_LIMIT_PER_KEY="30",
        INGEST_RATE_LIMIT_BURST="3",
    )
    proc, base = serve(env, "--workers", "3")
    key = _bootstrap(env, base)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
        answers = [c.post("/v1/events", json={"event": "x", "user_id": "u"}) for _ in range(5)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert "may send 10 requests a second" in refused[0].json()["detail"]
    _stop(proc)


def _response(conn: socket.socket) -> bytes:
    """One whole /healthz answer (its body is the last thing in it), or what came before the
    connection closed."""
    data = b""
    while not data.endswith(b"}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_request_sent_on_an_idle_connection_during_the_drain_is_answered(
    serve: Any, db_dsn: str, geoip_db: Path
) -> None:
    """RELIABILITY B6: an SDK's next request on its keep-alive connection, sent just after the
    server got SIGTERM, gets an answer (with Connection: close), not a closed connection."""
    env = _env(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
        INGEST_WORKERS="1",
    )
    proc, base = serve(env)
    port = int(base.rsplit(":", 1)[1])
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        assert _response(conn).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the server is draining; the connection is idle
        conn.sendall(request)
        answer = _response(conn)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"connection: close" in answer.lower()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
