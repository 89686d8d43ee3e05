"""Browser and npm SDK test: analytics-next, RudderStack's analytics-js and posthog-js in
headless Chromium, and rudder-sdk-node in Node, send to a live ingest; rows are checked.

Run by ./run (which installs Chromium and the npm packages first); not collected by pytest.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ingest.keyring import Keyring, new_master_key, parse_master_key
from ingest.store import init_connection, open_event

HERE = Path(__file__).resolve().parent
INGEST = [sys.executable, "-m", "ingest.cli"]
CHECKS = 25  # the conditions main() checks, for the closing "N passed, N failed" line


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the name is the base class's
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rows(dsn: str, count: int, master_key: str, project_id: str) -> list[dict[str, Any]]:
    """The project's events once ``count`` are stored, polling until a deadline, with their
    sealed digests opened (the project is protected: keyring.py)."""
    ring = Keyring(parse_master_key(master_key))

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)
        try:
            sealers = {
                r["id"]: ring.sealer(r["id"], bytes(r["sealed_keys"]))
                for r in await conn.fetch("SELECT id, sealed_keys FROM projects")
            }
            return [
                open_event(sealers[r["project_id"]], dict(r))
                for r in await conn.fetch(
                    "SELECT * FROM events WHERE project_id = $1", uuid.UUID(project_id)
                )
            ]
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    rows = asyncio.run(fetch())
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval, not an assertion
        rows = asyncio.run(fetch())
    return rows


Stored = dict[tuple[str, str | None], dict[str, Any]]


def _stored(
    sdk: str, rows: list[dict[str, Any]], want: set[tuple[str, str | None]], email: str
) -> tuple[Stored, list[str]]:
    """The rows by (type, event name), and what is wrong with them: not the wanted events, the
    identify's ``email`` (as the page sent it) not stored as its digest, or stored raw."""
    failures: list[str] = []
    by = {(r["type"], r["event"]): r for r in rows}
    if set(by) != want:
        failures.append(f"{sdk} rows {sorted(map(str, by))} != {sorted(map(str, want))}")
    identify = by.get(("identify", None))
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    if identify is None or identify["email_sha256"] != digest:
        failures.append(f"{sdk}: the identify's email was not stored hashed")
    dump = json.dumps(rows, default=str)
    if email.strip() in dump or email.strip().lower() in dump:
        failures.append(f"{sdk}: a raw email reached a row")
    return by, failures


def _rudderstack(project: tuple[str, str], drive: Any, dsn: str, master_key: str) -> list[str]:
    """@rudderstack/analytics-js: its source config from ingest, three events by XHR (with
    its AnonymousId and SentAt headers, so through a preflight), then one by sendBeacon."""
    project_id, write_key = project
    failures: list[str] = []
    xhr = drive(
        f"rudder.html?writeKey={write_key}",
        "POST /v1/page,POST /v1/identify,POST /v1/track",
    )
    beacon = drive(f"rudder.html?writeKey={write_key}&beacon=1", "POST /beacon/v1/batch")
    for result in (xhr, beacon):
        if not result.get("ok"):
            failures.append(f"the RudderStack page failed: {result}")
        if "GET /sourceConfig/" not in result.get("requests", []):
            failures.append("analytics-js did not fetch its source config from ingest")
    if "POST /beacon/v1/batch" not in beacon.get("requests", []):
        failures.append("analytics-js sent no beacon")
    by, wrong = _stored(
        "analytics-js",
        _rows(dsn, 4, master_key, project_id),
        {("page", "Home"), ("identify", None), ("track", "Clicked"), ("track", "Left")},
        " Rudder.User@Example.com ",
    )
    failures += wrong
    identify = by.get(("identify", None))
    if identify is None or (identify["traits"] or {}).get("plan") != "gold":
        failures.append("the RudderStack identify's traits (context.traits) were not its traits")
    clicked = by.get(("track", "Clicked"))
    if clicked is None or clicked["original_timestamp"] is None:
        failures.append("the client's originalTimestamp was not kept")
    return failures


def _rudderstack_node(project: tuple[str, str], api: str, dsn: str, master_key: str) -> list[str]:
    """rudder-sdk-node: identify, track and page in gzip batches labelled as a form."""
    project_id, write_key = project
    sent = subprocess.run(
        ["node", str(HERE / "node-sdk.cjs"), write_key, f"http://{api}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    failures: list[str] = []
    if sent.returncode != 0 or sent.stdout.strip() != "flushed":
        failures.append(f"rudder-sdk-node did not flush: {sent.stdout.strip()} {sent.stderr}")
    _, wrong = _stored(
        "rudder-sdk-node",
        _rows(dsn, 3, master_key, project_id),
        {("identify", None), ("track", "Bought"), ("page", "Home")},
        " Node.User@Example.com ",
    )
    return failures + wrong


def _posthog(project: tuple[str, str], drive: Any, dsn: str, master_key: str) -> list[str]:
    """posthog-js with the README's configuration: its $pageview, identify ($set) and a
    capture, each a POST to /e/."""
    project_id, write_key = project
    failures: list[str] = []
    result = drive(f"posthog.html?writeKey={write_key}", "POST /e/,POST /e/,POST /e/")
    if not result.get("ok"):
        failures.append(f"the PostHog page failed: {result}")
    by, wrong = _stored(
        "posthog-js",
        _rows(dsn, 3, master_key, project_id),
        {("page", None), ("identify", None), ("track", "Clicked")},
        " PostHog.User@Example.com ",
    )
    identify = by.get(("identify", None))
    if identify is None or identify["user_id"] != "user-p":
        failures.append("posthog-js's identify was not stored for its distinct id")
    return failures + wrong


def main() -> int:
    from pgserver import get_server  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory() as tmp:
        pg = get_server(Path(tmp) / "pg", cleanup_mode="stop")
        dsn = pg.get_uri()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        env["INGEST_DATABASE_URL"] = dsn
        env["INGEST_MASTER_KEY"] = master_key = new_master_key()
        subprocess.run([*INGEST, "migrate"], env=env, check=True, capture_output=True)
        port = _free_port()
        server = subprocess.Popen(
            [*INGEST, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The page comes from another origin (another port), so every call is cross-origin.
        handler = functools.partial(_QuietHandler, directory=str(HERE))
        pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=pages.serve_forever, daemon=True).start()
        try:
            api = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("ingest serve did not start")
                try:
                    if httpx.get(f"http://{api}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            created = subprocess.run(
                [*INGEST, "admin", "create-org", "Browser"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            secret = json.loads(created.stdout)["secret_key"]["key"]
            origin = f"http://127.0.0.1:{pages.server_port}"

            def new_project(name: str) -> tuple[str, str]:
                project = httpx.post(
                    f"http://{api}/v1/projects",
                    json={"name": name, "allowed_origins": [origin]},
                    headers={"Authorization": f"Bearer {secret}"},
                ).json()
                return project["id"], project["write_key"]["key"]

            def drive(page: str, wanted: str) -> dict[str, Any]:
                driven = subprocess.run(
                    ["node", str(HERE / "drive.mjs"), f"{origin}/{page}&api={api}", wanted],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                print(driven.stderr, file=sys.stderr)
                result: dict[str, Any] = json.loads(driven.stdout.strip().splitlines()[-1])
                return result

            failures: list[str] = []
            project_id, write_key = new_project("Site")
            result = drive(f"index.html?writeKey={write_key}", "POST /v1/t,POST /v1/t")
            if not result.get("ok") or not result.get("queued"):
                failures.append(f"the page failed: {result}")
            if f"GET /v1/projects/{write_key}/settings" not in result["requests"]:
                failures.append("analytics-next did not fetch its settings from ingest")
            by, wrong = _stored(
                "analytics-next",
                _rows(dsn, 4, master_key, project_id),
                {("page", "Home"), ("identify", None), ("track", "Clicked"), ("track", "Left")},
                " Ann.Lee@Example.com ",
            )
            failures += wrong
            page = by.get(("page", "Home"))
            if page is not None and page["properties"].get("category") != "Docs":
                failures.append("the page category was not kept")
            failures += _rudderstack(new_project("RudderStack site"), drive, dsn, master_key)
            failures += _rudderstack_node(new_project("Node server"), api, dsn, master_key)
            failures += _posthog(new_project("PostHog site"), drive, dsn, master_key)
            for failure in failures:
                print(f"FAIL {failure}", file=sys.stderr)
            print(f"{CHECKS - len(failures)} passed, {len(failures)} failed")
            return 1 if failures else 0
        finally:
            pages.shutdown()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            pg.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
