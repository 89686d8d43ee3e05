"""The start-up self-check: a Postgres that could lose acknowledged events is refused (B8)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager

from ingest import migrate
from ingest.app import DatabaseNotDurable, create_app
from ingest.config import Secret, Settings
from ingest.metrics import Metrics
from tests.conftest import TEST_MASTER_KEY


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Postgres of this module's own: the tests change its server settings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

        server = get_server(tmp_path_factory.mktemp("durable") / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()


async def _set(dsn: str, name: str, value: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
        await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.mark.parametrize("setting", ["fsync", "synchronous_commit", "full_page_writes"])
async def test_refuses_to_start_when_a_durability_setting_is_off(
    own_server: Any, geoip_db: Path, setting: str
) -> None:
    dsn = own_server.get_uri()
    metrics = Metrics()
    settings = Settings(
        database_url=Secret(dsn), geoip_path=geoip_db, master_key=Secret(TEST_MASTER_KEY)
    )
    await _set(dsn, setting, "off")
    try:
        with pytest.raises(DatabaseNotDurable, match=setting):
            async with LifespanManager(create_app(settings, metrics=metrics)):
                pass
        assert metrics.registry.get_sample_value("ingest_database_durable") == 0
    finally:
        await _set(dsn, setting, "on")
    async with LifespanManager(create_app(settings, metrics=metrics)):
        assert metrics.registry.get_sample_value("ingest_database_durable") == 1
