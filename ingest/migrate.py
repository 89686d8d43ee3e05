"""Applies the ordered ``sql/NNNN_name.sql`` files once each, under one advisory lock.

An applied file is never edited: a checksum mismatch refuses to start, because the database would
no longer be what the file says.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import asyncpg
import structlog

log = structlog.get_logger("ingest.migrate")

# Any constant that no other program on the database uses; shared by every ingest process.
MIGRATION_LOCK: Final = 7230000
_NAME_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     integer PRIMARY KEY,
        name        text NOT NULL,
        sha256      text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""


class MigrationError(Exception):
    """The database's migrations disagree with the files shipped with this version."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """``ingest/sql`` inside an installed wheel, else ``sql/`` at the top of the checkout."""
    packaged = resources.files("ingest") / "sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql"


def load(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the names applied. Safe to run from many processes at once."""
    migrations = migrations if migrations is not None else load()
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, sha256 FROM schema_migrations")
        applied = {r["version"]: (r["name"], r["sha256"]) for r in rows}
        for m in migrations:
            if m.version in applied:
                if applied[m.version][1] != m.sha256:
                    raise MigrationError(
                        f"{m.version:04d}_{m.name}.sql was edited after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.sha256,
                )
            log.info("migration_applied", version=m.version, name=m.name)
            applied_now.append(f"{m.version:04d}_{m.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now
