"""Shared fixtures: a real Postgres, a migrated template database, one clone of it per test,
and the real app (lifespan, pool, writer) behind an in-process HTTP client.

Postgres is the one in INGEST_TEST_DATABASE_URL when set, else an embedded pgserver.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from geoip.build_test_mmdb import build as build_test_mmdb
from ingest import migrate
from ingest.app import create_app
from ingest.cli import _create_org
from ingest.config import Secret, Settings
from ingest.keyring import Keyring, parse_master_key
from ingest.logs import configure_logging
from ingest.metrics import Metrics
from ingest.store import init_connection, writes

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/db/" in str(item.path) or "/tests/api/" in str(item.path):
            item.add_marker(pytest.mark.db)


def dsn_for(admin_dsn: str, dbname: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(params=["one_statement", "copy"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on both of the writer's paths (store/writes.py): small batches in one
    statement (sql/0009), the others by a transaction around a binary COPY. Modules about what
    the writer stores use it: the two paths must agree on every fate, seal, profile and outbox
    row."""
    if request.param == "copy":
        monkeypatch.setattr(writes, "ONE_STATEMENT_MAX", 0)
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The embedded server, or None when INGEST_TEST_DATABASE_URL names one."""
    if os.environ.get("INGEST_TEST_DATABASE_URL"):
        yield None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

        server = get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: Any) -> str:
    url = os.environ.get("INGEST_TEST_DATABASE_URL")
    if url:
        return url
    uri: str = pg_server.get_uri()
    return uri


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str, worker_id: str) -> Iterator[str]:
    """Created and migrated once per session (synchronously, so no pool crosses loops)."""
    name = f"ingest_tpl_{worker_id}_{os.getpid()}"
    asyncio.run(
        _admin(
            pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
        )
    )

    async def apply() -> None:
        conn = await asyncpg.connect(dsn_for(pg_admin_dsn, name))
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(apply())
    yield name
    asyncio.run(_admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture
async def db_dsn(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database for this test, cloned from the migrated template."""
    name = f"ingest_t_{os.getpid()}_{next(_counter)}"
    await _admin(pg_admin_dsn, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield dsn_for(pg_admin_dsn, name)
    await _admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for asserting on rows."""
    connection = await asyncpg.connect(db_dsn)
    await init_connection(connection)  # jsonb as Python objects, as the app reads it
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_mmdb(tmp_path_factory.mktemp("geoip") / "test-city.mmdb")


# The master key every test server and app uses (a test-only value: keyring.py).
TEST_MASTER_KEY = "7e" * 32


def keyring_for_tests() -> Keyring:
    """The keyring of TEST_MASTER_KEY, for tests that build a Store themselves."""
    return Keyring(parse_master_key(TEST_MASTER_KEY))


async def unseal(conn: asyncpg.Connection, value: Any) -> Any:
    """``value`` (a row as a dict, a list of them, a string) with every sealed digest opened
    by the project that sealed it: what tests that compare stored digests with the vectors
    read (projects are protected by default; test_protected_digests checks the stored form)."""
    ring = keyring_for_tests()
    sealers = [
        ring.sealer(r["id"], bytes(r["sealed_keys"]))
        for r in await conn.fetch(
            "SELECT id, sealed_keys FROM projects WHERE sealed_keys IS NOT NULL"
        )
    ]

    def open_value(v: Any) -> Any:
        if isinstance(v, str) and "enc:" in v:
            for sealer in sealers:
                opened = sealer.open_text(v)
                if opened != v:
                    return opened
            return v
        if isinstance(v, dict):
            return {open_value(k): open_value(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [open_value(x) for x in v]
        return v

    return open_value(dict(value) if isinstance(value, asyncpg.Record) else value)


@pytest.fixture
def settings(db_dsn: str, geoip_db: Path) -> Settings:
    return Settings(
        database_url=Secret(db_dsn),
        master_key=Secret(TEST_MASTER_KEY),
        geoip_path=geoip_db,
        # Tests revoke keys and expect the next request to see it.
        key_cache_ttl_s=0.0,
        pool_min_size=1,
        pool_max_size=4,
        # Forwarding tests deliver to receivers on loopback, as the issue asks tests to.
        destinations_allow_private=True,
    )


@pytest.fixture
def log_stream() -> Iterator[io.BytesIO]:
    """Everything the app logs during the test, exactly as it would be written."""
    stream = io.BytesIO()
    configure_logging("debug", "json", stream)
    yield stream
    configure_logging("warning", "json", io.BytesIO())


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def app(settings: Settings, metrics: Metrics, log_stream: io.BytesIO) -> AsyncIterator[Any]:
    async with LifespanManager(create_app(settings, metrics=metrics)) as manager:
        yield manager.app


def client_for(
    app: Any, peer: str = "127.0.0.1", *, raise_errors: bool = True
) -> httpx.AsyncClient:
    """``raise_errors=False`` gives the answer of an app that failed (its 500) instead of raising
    the exception the server would log."""
    transport = httpx.ASGITransport(
        app=app, client=(peer, 40000), raise_app_exceptions=raise_errors
    )
    return httpx.AsyncClient(transport=transport, base_url="http://ingest.test")


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


@pytest.fixture
async def org(settings: Settings) -> dict[str, Any]:
    """An organization made the way a partner makes one: ``ingest admin create-org``."""
    return await _create_org(settings, "Acme")


@pytest.fixture
def secret_key(org: dict[str, Any]) -> str:
    key: str = org["secret_key"]["key"]
    return key


@pytest.fixture
async def project(client: httpx.AsyncClient, secret_key: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/projects", json={"name": "Web"}, headers={"Authorization": f"Bearer {secret_key}"}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def write_key(project: dict[str, Any]) -> str:
    key: str = project["write_key"]["key"]
    return key


def is_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """An RFC 9457 answer with this status and type (its last path segment); its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def new_id() -> str:
    return str(uuid.uuid4())
