"""Every SQL statement the service runs, and the pool they run on.

Methods return dataclasses or scalars, never asyncpg records. Errors that carry row data
(asyncpg puts Postgres's DETAIL in the exception text) are never logged from here.
"""

from __future__ import annotations

import re
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


# The column defaults of sql/0003_project_retention.sql: 13 months of events, 7 days of dedup.
DEFAULT_EVENTS_RETENTION_DAYS: Final = 395
DEFAULT_DEDUP_WINDOW_DAYS: Final = 7


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeResult:
    """What one purge deleted. ``partitions_deferred`` were busy (a lock wait past
    PURGE_LOCK_TIMEOUT) and are retried by the next run; ``is_skipped`` means another process
    was purging, so this one did nothing."""

    partitions_dropped: int = 0
    partitions_deferred: int = 0
    events_deleted: int = 0
    dedup_deleted: int = 0
    is_skipped: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "partitions_dropped": self.partitions_dropped,
            "partitions_deferred": self.partitions_deferred,
            "events_deleted": self.events_deleted,
            "dedup_deleted": self.dedup_deleted,
            "skipped": self.is_skipped,
        }


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
    events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS
    dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.project_id),
            "name": self.name,
            "default_country": self.default_country,
            "allowed_origins": (
                list(self.allowed_origins) if self.allowed_origins is not None else None
            ),
            "events_retention_days": self.events_retention_days,
            "dedup_window_days": self.dedup_window_days,
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
    INSERT INTO projects (
        id, org_id, name, default_country, allowed_origins, events_retention_days,
        dedup_window_days
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7)
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
    SELECT id, org_id, name, default_country, created_at, allowed_origins, events_retention_days,
           dedup_window_days
    FROM projects
    WHERE id = $1
      AND org_id = $2
"""

# Each field is replaced only when its flag is set, so a PATCH can set a column to NULL.
# A NULL retention leaves the column as it is (the columns are NOT NULL, so NULL never means
# "clear" for them).
_UPDATE_PROJECT: Final = """
    UPDATE projects
    SET name = CASE WHEN $3::boolean THEN $4::text ELSE name END,
        default_country = CASE WHEN $5::boolean THEN $6::text ELSE default_country END,
        allowed_origins = CASE WHEN $7::boolean THEN $8::text[] ELSE allowed_origins END,
        events_retention_days = coalesce($9::integer, events_retention_days),
        dedup_window_days = coalesce($10::integer, dedup_window_days)
    WHERE id = $1
      AND org_id = $2
    RETURNING id, org_id, name, default_country, created_at, allowed_origins,
              events_retention_days, dedup_window_days
"""

_INSERT_DEDUP: Final = """
    INSERT INTO event_dedup (project_id, message_id, received_at)
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::timestamptz[])
    ON CONFLICT DO NOTHING
    RETURNING project_id, message_id
"""


# -- retention ---------------------------------------------------------------------------------

# Rows per DELETE: each statement is a short transaction that never holds many row locks.
PURGE_BATCH_ROWS: Final = 5000
# One purge at a time: every worker's hourly task and `ingest purge` take this lock first.
PURGE_LOCK: Final = 7230003
_TRY_PURGE_LOCK: Final = f"SELECT pg_try_advisory_lock({PURGE_LOCK})"
_RELEASE_PURGE_LOCK: Final = f"SELECT pg_advisory_unlock({PURGE_LOCK})"
# How long a partition DROP may wait for its lock on events while writers queue behind it.
_SET_PURGE_LOCK_TIMEOUT: Final = "SET LOCAL lock_timeout = '2s'"
_PARTITION_NAME: Final = re.compile(r"events_p(\d{8})")

_PROJECT_RETENTIONS: Final = """
    SELECT id, events_retention_days, dedup_window_days
    FROM projects
    ORDER BY id
"""

_EVENT_PARTITIONS: Final = """
    SELECT c.relname
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass
    ORDER BY c.relname
"""

# One project at a time, so that on a distributed cluster each statement is routed to one
# shard. ctid is unique only within one partition: a ctid shared by two partitions could only
# pick another row that matches the outer WHERE too, that is one just as expired.
_DELETE_EXPIRED_EVENTS: Final = """
    DELETE FROM events
    WHERE project_id = $1
      AND received_at < $2
      AND ctid = ANY(ARRAY(
          SELECT ctid
          FROM events
          WHERE project_id = $1
            AND received_at < $2
          LIMIT $3
      ))
"""

_DELETE_EXPIRED_DEDUP: Final = """
    DELETE FROM event_dedup
    WHERE project_id = $1
      AND received_at < $2
      AND message_id = ANY(ARRAY(
          SELECT message_id
          FROM event_dedup
          WHERE project_id = $1
            AND received_at < $2
          LIMIT $3
      ))
"""


def partition_name(day: date) -> str:
    """The daily partition of ``events`` holding ``day`` (as ingest_ensure_event_partitions
    names it)."""
    return f"events_p{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day of a daily partition's name; None for any other table (the default one)."""
    match = _PARTITION_NAME.fullmatch(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date()


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ProjectChanges:
    """A PATCH of a project: each ``set_*`` flag says whether its field was given."""

    set_name: bool = False
    name: str | None = None
    set_default_country: bool = False
    default_country: str | None = None
    set_allowed_origins: bool = False
    allowed_origins: tuple[str, ...] | None = None
    # None leaves the retention as it is (on create: the column default).
    events_retention_days: int | None = None
    dedup_window_days: int | None = None


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
        row["events_retention_days"],
        row["dedup_window_days"],
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

    # -- retention (ingest purge, and the service's hourly task) ---------------------------

    async def purge(
        self, now: datetime | None = None, *, batch_rows: int = PURGE_BATCH_ROWS
    ) -> PurgeResult:
        """Delete what is past each project's retention; see the README's Retention section.

        1. Daily partitions of ``events`` whose whole day is past the longest events retention
           of any project are dropped.
        2. Per project, events past its own retention are deleted from what remains (days
           kept for a longer-lived project, and the default partition), ``batch_rows`` a
           statement.
        3. Per project, message ids older than its dedup window are deleted, in batches too.

        Events are kept by whole UTC days: those received on day D go once D is more than
        ``events_retention_days`` days before today, so an expiry always falls on a partition
        boundary and the longest-lived projects never need a row delete. Every statement is
        short and commits on its own, so the writers it shares tables with wait milliseconds
        at most. Only one purge runs at a time across processes; another returns
        ``is_skipped``.
        """
        now = now or datetime.now(UTC)
        today = now.astimezone(UTC).date()
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(_TRY_PURGE_LOCK):
                return PurgeResult(is_skipped=True)
            try:
                projects = await conn.fetch(_PROJECT_RETENTIONS)
                longest = max(
                    (r["events_retention_days"] for r in projects),
                    default=DEFAULT_EVENTS_RETENTION_DAYS,
                )
                dropped, deferred = await self._drop_partitions(conn, today, longest)
                events = dedup = 0
                for row in projects:
                    events += await self._delete_batches(
                        conn,
                        _DELETE_EXPIRED_EVENTS,
                        row["id"],
                        _day_start(today - timedelta(days=row["events_retention_days"])),
                        batch_rows,
                    )
                    dedup += await self._delete_batches(
                        conn,
                        _DELETE_EXPIRED_DEDUP,
                        row["id"],
                        now - timedelta(days=row["dedup_window_days"]),
                        batch_rows,
                    )
            finally:
                await conn.execute(_RELEASE_PURGE_LOCK)
        return PurgeResult(
            partitions_dropped=dropped,
            partitions_deferred=deferred,
            events_deleted=events,
            dedup_deleted=dedup,
        )

    @staticmethod
    async def _drop_partitions(conn: Connection, today: date, keep_days: int) -> tuple[int, int]:
        """Drop the daily partitions before ``today - keep_days``: (dropped, deferred)."""
        first_kept = today - timedelta(days=keep_days)
        dropped = deferred = 0
        for name in await conn.fetch(_EVENT_PARTITIONS):
            day = partition_day(name["relname"])
            if day is None or day >= first_kept:
                continue
            try:
                async with conn.transaction():
                    # DROP waits for the writers' short transactions on events to end, and
                    # every later writer waits behind it: a busy table is retried next run
                    # instead of stalling the writes for long.
                    await conn.execute(_SET_PURGE_LOCK_TIMEOUT)
                    # The name is rebuilt from the date, never taken from the catalog as is.
                    await conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
            except asyncpg.LockNotAvailableError:
                deferred += 1
            else:
                dropped += 1
        return dropped, deferred

    @staticmethod
    async def _delete_batches(
        conn: Connection, query: str, project_id: uuid.UUID, older_than: datetime, batch: int
    ) -> int:
        total = 0
        while True:
            status: str = await conn.execute(query, project_id, older_than, batch)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:  # the inner SELECT found fewer: nothing expired is left
                return total

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
        *,
        events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS,
        dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
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
                events_retention_days,
                dedup_window_days,
            )
            key = await self._insert_key(conn, org_id, project_id, keys.KeyKind.WRITE)
        project = Project(
            project_id,
            org_id,
            name,
            default_country,
            created_at,
            origins,
            events_retention_days,
            dedup_window_days,
        )
        return project, key

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
                changes.events_retention_days,
                changes.dedup_window_days,
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
