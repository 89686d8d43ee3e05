"""Migrations: applied once each, in order, under an advisory lock, and never silently edited."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ingest import migrate
from tests.conftest import _admin, dsn_for


@pytest.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    name = f"ingest_m_{os.getpid()}"
    await _admin(
        pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    yield dsn_for(pg_admin_dsn, name)
    await _admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _migrate(dsn: str, migrations: list[migrate.Migration] | None = None) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate.migrate(conn, migrations)
    finally:
        await conn.close()


async def test_applies_every_file_once(empty_dsn: str) -> None:
    shipped = migrate.load()
    first = await _migrate(empty_dsn)
    assert first == [f"{m.version:04d}_{m.name}" for m in shipped]
    assert await _migrate(empty_dsn) == []
    conn = await asyncpg.connect(empty_dsn)
    rows = await conn.fetch("SELECT version, sha256 FROM schema_migrations ORDER BY version")
    await conn.close()
    assert [(r["version"], r["sha256"]) for r in rows] == [(m.version, m.sha256) for m in shipped]


async def test_concurrent_processes_apply_each_file_once(empty_dsn: str) -> None:
    """Four `ingest migrate` at once (G3): the lock serialises them; one does the work."""
    results = await asyncio.gather(*(_migrate(empty_dsn) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrate.load())]
    conn = await asyncpg.connect(empty_dsn)
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(migrate.load())
    await conn.close()


async def test_an_edited_applied_migration_refuses_to_start(empty_dsn: str) -> None:
    await _migrate(empty_dsn)
    edited = [migrate.Migration(m.version, m.name, m.sql + "\n-- edited") for m in migrate.load()]
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        await _migrate(empty_dsn, edited)


async def test_a_failing_migration_leaves_nothing_half_applied(empty_dsn: str) -> None:
    broken = [*migrate.load(), migrate.Migration(9999, "broken", "CREATE TABLE t (a int); SELEC")]
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await _migrate(empty_dsn, broken)
    conn = await asyncpg.connect(empty_dsn)
    assert await conn.fetchval("SELECT to_regclass('t')") is None
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") < 9999
    await conn.close()


def test_files_are_named_and_numbered(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(migrate.MigrationError, match="NNNN_snake_case"):
        migrate.load(tmp_path)
