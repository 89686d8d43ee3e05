"""A live ``ingest serve`` in a subprocess, for the tests that drive it from outside: the real
SDKs (tests/sdk) and a real browser (tests/console)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import TEST_MASTER_KEY

INGEST = [sys.executable, "-m", "ingest.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def live_server(db_dsn: str, geoip_db: Path, *serve_args: str) -> Iterator[tuple[str, str]]:
    """``ingest serve`` on a free port of loopback, ready; its base URL and the secret key of
    an organization made with ``ingest admin create-org``. Stopped with SIGTERM afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(
        INGEST_DATABASE_URL=db_dsn,
        INGEST_GEOIP_DB=str(geoip_db),
        INGEST_MASTER_KEY=TEST_MASTER_KEY,
    )
    port = free_port()
    proc = subprocess.Popen(
        [*INGEST, "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "ingest serve exited"
            assert time.monotonic() < deadline, "ingest serve did not start"
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        created = subprocess.run(
            [*INGEST, "admin", "create-org", "Acme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        yield base, json.loads(created.stdout)["secret_key"]["key"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
