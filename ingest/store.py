"""Every SQL statement the service runs, and the pool they run on.

Methods return dataclasses or scalars, never asyncpg records. Errors that carry row data
(asyncpg puts Postgres's DETAIL in the exception text) are never logged from here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import asyncpg
import orjson

from ingest import keys
from ingest.events import COLUMNS, Row

# A pooled connection or a plain one: every method here works on both.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Errors that say nothing about the statement: the connection or the server is away, busy or
# restarting. Callers answer 503 (retry) for these, never 500.
TRANSIENT_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection killed mid-protocol (pg_terminate_backend)
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InsufficientResourcesError,
)

# Parameters that would break "a 200 means committed" (RELIABILITY B8).
DURABILITY_SETTINGS: Final = ("fsync", "synchronous_commit", "full_page_writes")


def _encode_jsonb(value: bytes | Any) -> bytes:
    # jsonb's binary format is a version byte (1) then the JSON text. Rows arrive already
    # encoded by events.py, so the COPY path never serialises twice.
    if isinstance(value, bytes):
        return b"\x01" + value
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, connect_timeout: float
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        # Connect attempts fail fast when the database is away, so callers answer 503 quickly.
        timeout=connect_timeout,
        server_settings={"application_name": "ingest"},
    )
    assert pool is not None  # noqa: S101  # create_pool returns None only when not awaited
    return pool


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: uuid.UUID
    kind: keys.KeyKind
    org_id: uuid.UUID
    project_id: uuid.UUID | None
    default_country: str | None
    is_server_side: bool
    digest: bytes
    # The project's browser origin allow-list; None accepts any Origin.
    allowed_origins: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: uuid.UUID
    kind: keys.KeyKind
    plaintext: str
    display_prefix: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.key_id),
            "kind": str(self.kind),
            "key": self.plaintext,
            "prefix": self.display_prefix,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Project:
    project_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    default_country: str | None
    created_at: datetime
    allowed_origins: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.project_id),
            "name": self.name,
            "default_country": self.default_country,
            "allowed_origins": (
                list(self.allowed_origins) if self.allowed_origins is not None else None
            ),
            "created_at": self.created_at.isoformat(),
        }


_INSERT_ORG: Final = """
    INSERT INTO organizations (id, name)
    VALUES ($1, $2)
"""

_INSERT_KEY: Final = """
    INSERT INTO api_keys (id, org_id, project_id, kind, digest, display_prefix, is_server_side)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING created_at
"""

_INSERT_PROJECT: Final = """
    INSERT INTO projects (id, org_id, name, default_country, allowed_origins)
    VALUES ($1, $2, $3, $4, $5)
    RETURNING created_at
"""

_FIND_KEY: Final = """
    SELECT k.id, k.kind, k.org_id, k.project_id, k.is_server_side, k.digest, p.default_country,
           p.allowed_origins
    FROM api_keys AS k
    LEFT JOIN projects AS p ON p.id = k.project_id
    WHERE k.digest = $1
      AND k.revoked_at IS NULL
"""

_GET_PROJECT: Final = """
    SELECT id, org_id, name, default_country, created_at, allowed_origins
    FROM projects
    WHERE id = $1
      AND org_id = $2
"""

# Each field is replaced only when its flag is set, so a PATCH can set a column to NULL.
_UPDATE_PROJECT: Final = """
    UPDATE projects
    SET name = CASE WHEN $3::boolean THEN $4::text ELSE name END,
        default_country = CASE WHEN $5::boolean THEN $6::text ELSE default_country END,
        allowed_origins = CASE WHEN $7::boolean THEN $8::text[] ELSE allowed_origins END
    WHERE id = $1
      AND org_id = $2
    RETURNING id, org_id, name, default_country, created_at, allowed_origins
"""

_INSERT_DEDUP: Final = """
    INSERT INTO event_dedup (project_id, message_id, received_at)
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::timestamptz[])
    ON CONFLICT DO NOTHING
    RETURNING project_id, message_id
"""


@dataclass(frozen=True, slots=True)
class ProjectChanges:
    """A PATCH of a project: each ``set_*`` flag says whether its field was given."""

    set_name: bool = False
    name: str | None = None
    set_default_country: bool = False
    default_country: str | None = None
    set_allowed_origins: bool = False
    allowed_origins: tuple[str, ...] | None = None


def _origins(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _project(row: asyncpg.Record) -> Project:
    return Project(
        row["id"],
        row["org_id"],
        row["name"],
        row["default_country"],
        row["created_at"],
        _origins(row["allowed_origins"]),
    )


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def durability_settings(self) -> dict[str, str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                list(DURABILITY_SETTINGS),
            )
        return {r["name"]: r["setting"] for r in rows}

    async def ensure_partitions(self, today: date | None = None, days_ahead: int = 3) -> int:
        """Create the daily event partitions from yesterday to ``days_ahead``; return how many."""
        today = today or datetime.now(UTC).date()
        async with self.pool.acquire() as conn:
            created: int = await conn.fetchval(
                "SELECT ingest_ensure_event_partitions($1, $2)",
                today - timedelta(days=1),
                today + timedelta(days=days_ahead),
            )
        return created

    async def purge_dedup(self, older_than: datetime) -> int:
        async with self.pool.acquire() as conn:
            status: str = await conn.execute(
                "DELETE FROM event_dedup WHERE received_at < $1", older_than
            )
        return int(status.split()[-1])

    # -- tenancy ----------------------------------------------------------------------------

    async def create_org(self, name: str) -> tuple[uuid.UUID, IssuedKey]:
        org_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT_ORG, org_id, name)
            key = await self._insert_key(conn, org_id, None, keys.KeyKind.SECRET)
        return org_id, key

    async def create_project(
        self,
        org_id: uuid.UUID,
        name: str,
        default_country: str | None,
        allowed_origins: Sequence[str] | None = None,
    ) -> tuple[Project, IssuedKey]:
        project_id = uuid.uuid4()
        origins = tuple(allowed_origins) if allowed_origins is not None else None
        async with self.pool.acquire() as conn, conn.transaction():
            created_at = await conn.fetchval(
                _INSERT_PROJECT,
                project_id,
                org_id,
                name,
                default_country,
                list(origins) if origins is not None else None,
            )
            key = await self._insert_key(conn, org_id, project_id, keys.KeyKind.WRITE)
        return Project(project_id, org_id, name, default_country, created_at, origins), key

    async def get_project(self, org_id: uuid.UUID, project_id: uuid.UUID) -> Project | None:
        """The project if it belongs to ``org_id``; another tenant's is as missing as none."""
        row = await self._fetchrow(_GET_PROJECT, project_id, org_id)
        return None if row is None else _project(row)

    async def update_project(
        self, org_id: uuid.UUID, project_id: uuid.UUID, changes: ProjectChanges
    ) -> Project | None:
        """Apply ``changes``; None when the project is missing or another tenant's."""
        origins = changes.allowed_origins
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                _UPDATE_PROJECT,
                project_id,
                org_id,
                changes.set_name,
                changes.name,
                changes.set_default_country,
                changes.default_country,
                changes.set_allowed_origins,
                list(origins) if origins is not None else None,
            )
        return None if row is None else _project(row)

    async def create_write_key(
        self, org_id: uuid.UUID, project_id: uuid.UUID, is_server_side: bool
    ) -> IssuedKey:
        async with self.pool.acquire() as conn:
            return await self._insert_key(
                conn, org_id, project_id, keys.KeyKind.WRITE, is_server_side=is_server_side
            )

    async def _insert_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        kind: keys.KeyKind,
        *,
        is_server_side: bool = False,
    ) -> IssuedKey:
        new = keys.generate(kind)
        key_id = uuid.uuid4()
        created_at = await conn.fetchval(
            _INSERT_KEY,
            key_id,
            org_id,
            project_id,
            str(kind),
            new.digest,
            new.display_prefix,
            is_server_side,
        )
        return IssuedKey(key_id, kind, new.plaintext, new.display_prefix, created_at)

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """A read, retried once on a fresh connection: after a database restart every pooled
        connection is stale, and a read is always safe to repeat."""
        try:
            async with self.pool.acquire() as conn:
                return await conn.fetchrow(query, *args)
        except TRANSIENT_ERRORS:
            async with self.pool.acquire() as conn:
                return await conn.fetchrow(query, *args)

    async def find_key(self, digest: bytes) -> KeyRecord | None:
        row = await self._fetchrow(_FIND_KEY, digest)
        if row is None:
            return None
        return KeyRecord(
            key_id=row["id"],
            kind=keys.KeyKind(row["kind"]),
            org_id=row["org_id"],
            project_id=row["project_id"],
            default_country=row["default_country"],
            is_server_side=row["is_server_side"],
            digest=row["digest"],
            allowed_origins=_origins(row["allowed_origins"]),
        )

    # -- the write path (called by writer.Writer only) ------------------------------------------

    @staticmethod
    async def insert_events(conn: Connection, rows: Sequence[Row]) -> list[bool]:
        """Store rows not seen before in one transaction; per row, True if stored, False if a
        duplicate of a stored (project_id, message_id). Raises on any database error."""
        # Sorted claims take row locks in one order across writer connections: no deadlocks.
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2]))
        async with conn.transaction():
            claimed = await conn.fetch(
                _INSERT_DEDUP,
                [rows[i][0] for i in order],
                [rows[i][2] for i in order],
                [rows[i][1] for i in order],
            )
            fresh = {(r["project_id"], r["message_id"]) for r in claimed}
            stored: list[bool] = []
            records: list[Row] = []
            for row in rows:
                key = (row[0], row[2])
                if key in fresh:
                    fresh.discard(key)  # a second copy inside the same batch is a duplicate
                    stored.append(True)
                    records.append(row)
                else:
                    stored.append(False)
            if records:
                await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
        return stored
