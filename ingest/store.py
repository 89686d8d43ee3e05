"""Every SQL statement the service runs, and the pool they run on.

Methods return dataclasses or scalars, never asyncpg records. Errors that carry row data
(asyncpg puts Postgres's DETAIL in the exception text) are never logged from here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import asyncpg
import orjson

from ingest import keys, pseudonyms
from ingest.events import COLUMNS, Row
from ingest.pseudonyms import Kind

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
    idempotency_deleted: int = 0
    projects_finished: int = 0
    is_skipped: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "partitions_dropped": self.partitions_dropped,
            "partitions_deferred": self.partitions_deferred,
            "events_deleted": self.events_deleted,
            "dedup_deleted": self.dedup_deleted,
            "idempotency_deleted": self.idempotency_deleted,
            "projects_finished": self.projects_finished,
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
      AND (k.expires_at IS NULL OR k.expires_at > now())
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


class Fate(StrEnum):
    """What the writer's transaction did with one row."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # its (project, message_id) was stored before
    SUPPRESSED = "suppressed"  # it names an erased person, or its project was deleted


# Positions in a Row (events.COLUMNS).
_RECEIVED_AT: Final = COLUMNS.index("received_at")
_TYPE: Final = COLUMNS.index("type")
_USER_ID: Final = COLUMNS.index("user_id")
_TRAITS: Final = COLUMNS.index("traits")
# The identifiers of a row that a suppression can name, with their kind.
_SUBJECT_COLUMNS: Final = tuple(
    (kind, COLUMNS.index(column))
    for kind, column in (
        (Kind.USER_ID, "user_id"),
        (Kind.ANONYMOUS_ID, "anonymous_id"),
        (Kind.EMAIL, "email_sha256"),
        (Kind.EMAIL, "email_google_sha256"),
        (Kind.PHONE, "phone_sha256"),
        (Kind.PHONE, "phone_e164_sha256"),
    )
)

# Advisory lock class of a project's subjects: writers hold it shared, an erasure or a project
# deletion takes it exclusively for an instant (a barrier), see Store.insert_events.
SUBJECT_LOCK: Final = 7230010

_CLAIM_EVENTS: Final = """
    SELECT kind, idx, project, message
    FROM ingest_claim_events($1::uuid[], $2::text[], $3::timestamptz[], $4::uuid[],
                             $5::integer[], $6::bytea[], $7::integer)
"""

_PROJECT_KEYS: Final = "SELECT id, pseudonym_key FROM projects WHERE id = ANY($1::uuid[])"
_KEY_CACHE_MAX: Final = 100_000

_SUBJECT_BARRIER: Final = "SELECT pg_advisory_xact_lock($2::integer, hashtext($1::uuid::text))"

_UPSERT_PROFILES: Final = """
    INSERT INTO user_profiles AS u (project_id, user_id, traits, created_at, updated_at)
    SELECT x.project_id, x.user_id, x.traits, x.received_at, x.received_at
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::timestamptz[])
        AS x(project_id, user_id, traits, received_at)
    ON CONFLICT (project_id, user_id) DO UPDATE
    SET traits = u.traits || EXCLUDED.traits,
        updated_at = EXCLUDED.updated_at
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


# -- the partner API: projects, keys, audit log, idempotency, data-subject requests ------------

_LIST_PROJECTS: Final = """
    SELECT id, org_id, name, default_country, created_at, allowed_origins, events_retention_days,
           dedup_window_days
    FROM projects
    WHERE org_id = $1
    ORDER BY created_at, id
"""

_DELETE_PROJECT: Final = """
    DELETE FROM projects
    WHERE id = $1
      AND org_id = $2
    RETURNING id
"""

_INSERT_PROJECT_DELETION: Final = """
    INSERT INTO project_deletions (project_id, org_id)
    VALUES ($1, $2)
    ON CONFLICT DO NOTHING
"""

_PENDING_PROJECT_DELETIONS: Final = """
    SELECT project_id
    FROM project_deletions
    ORDER BY requested_at
"""

_FINISH_PROJECT_DELETION: Final = "DELETE FROM project_deletions WHERE project_id = $1"

# Batched like the retention purge: every statement is short, so writers never wait long.
_DELETE_PROJECT_EVENTS: Final = """
    DELETE FROM events
    WHERE project_id = $1
      AND ctid = ANY(ARRAY(
          SELECT ctid
          FROM events
          WHERE project_id = $1
          LIMIT $2
      ))
"""

_DELETE_PROJECT_DEDUP: Final = """
    DELETE FROM event_dedup
    WHERE project_id = $1
      AND message_id = ANY(ARRAY(
          SELECT message_id
          FROM event_dedup
          WHERE project_id = $1
          LIMIT $2
      ))
"""

# A project's small tables, deleted in one statement each.
_DELETE_PROJECT_ROWS: Final = (
    ("user_profiles", "DELETE FROM user_profiles WHERE project_id = $1"),
    ("suppressions", "DELETE FROM suppressions WHERE project_id = $1"),
    ("erasures", "DELETE FROM erasures WHERE project_id = $1"),
)

_KEY_COLUMNS: Final = """
    id, kind, project_id, display_prefix, is_server_side, created_at, revoked_at, expires_at,
    replaced_by
"""

_LIST_PROJECT_KEYS: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE org_id = $1
      AND project_id = $2
    ORDER BY created_at, id
"""

_LIST_SECRET_KEYS: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE org_id = $1
      AND kind = 'secret'
    ORDER BY created_at, id
"""

# $3 is the project (NULL for an organization's secret keys); the kind must match too, so the
# project route never reaches a secret key and the other way round.
_GET_KEY_FOR_UPDATE: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE id = $1
      AND org_id = $2
      AND project_id IS NOT DISTINCT FROM $3
      AND kind = $4
    FOR UPDATE
"""

# Locks every secret key of the organization (in one order), then counts the ones that will
# keep working: not revoked and not expiring. Two revocations at once serialize here, so they
# can never both see "another one is left" and leave the organization locked out.
_LOCK_ORG_PARTNER_KEYS: Final = """
    SELECT id, revoked_at IS NULL AND expires_at IS NULL AS is_lasting
    FROM api_keys
    WHERE org_id = $1
      AND kind = 'secret'
    ORDER BY id
    FOR UPDATE
"""

_REVOKE_KEY: Final = f"""
    UPDATE api_keys
    SET revoked_at = coalesce(revoked_at, now())
    WHERE id = $1
    RETURNING {_KEY_COLUMNS}
"""

# A grace period of 0 revokes at once; otherwise the key expires when it ends.
_RETIRE_KEY: Final = f"""
    UPDATE api_keys
    SET expires_at = CASE WHEN $2::float8 > 0
                          THEN least(coalesce(expires_at, 'infinity'),
                                     now() + $2::float8 * interval '1 second')
                          ELSE expires_at END,
        revoked_at = CASE WHEN $2::float8 > 0 THEN revoked_at ELSE coalesce(revoked_at, now()) END,
        replaced_by = $3
    WHERE id = $1
    RETURNING {_KEY_COLUMNS}
"""

_INSERT_AUDIT: Final = """
    INSERT INTO audit_log (
        org_id, id, key_id, request_id, action, target_type, target_id, project_id, details
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

_LIST_AUDIT: Final = """
    SELECT seq, id, occurred_at, key_id, request_id, action, target_type, target_id, project_id,
           details
    FROM audit_log
    WHERE org_id = $1
      AND seq < $2
      AND ($3::text IS NULL OR action = $3)
      AND ($4::uuid IS NULL OR key_id = $4)
    ORDER BY seq DESC
    LIMIT $5
"""

_ORG_KEY: Final = "SELECT pseudonym_key FROM organizations WHERE id = $1"
_PROJECT_KEY: Final = "SELECT pseudonym_key FROM projects WHERE id = $1 AND org_id = $2"

# A new key, an expired entry (the key is new again), or the entry of a request that died
# holding it (its lock lapsed) with the same request: claimed. Anything else is answered from
# the row (replay, 409 or 422).
_CLAIM_IDEMPOTENCY: Final = """
    INSERT INTO idempotency_keys AS i (
        org_id, key_id, key_digest, fingerprint, locked_until, expires_at
    )
    VALUES ($1, $2, $3, $4, now() + $5::float8 * interval '1 second',
            now() + $6::float8 * interval '1 second')
    ON CONFLICT (org_id, key_id, key_digest) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint,
        locked_until = EXCLUDED.locked_until,
        expires_at = EXCLUDED.expires_at,
        created_at = now(),
        status = NULL,
        content_type = NULL,
        body = NULL,
        holds_secret = false
    WHERE i.expires_at <= now()
       OR (i.status IS NULL AND i.locked_until <= now() AND i.fingerprint = EXCLUDED.fingerprint)
    RETURNING true
"""

_GET_IDEMPOTENCY: Final = """
    SELECT fingerprint, status, content_type, body, holds_secret, locked_until
    FROM idempotency_keys
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
"""

_COMPLETE_IDEMPOTENCY: Final = """
    UPDATE idempotency_keys
    SET status = $5, content_type = $6, body = $7, holds_secret = $8, locked_until = NULL
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
      AND fingerprint = $4
"""

_RELEASE_IDEMPOTENCY: Final = """
    DELETE FROM idempotency_keys
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
      AND fingerprint = $4
      AND status IS NULL
"""

_DELETE_EXPIRED_IDEMPOTENCY: Final = """
    DELETE FROM idempotency_keys
    WHERE expires_at < $1
      AND ctid = ANY(ARRAY(
          SELECT ctid
          FROM idempotency_keys
          WHERE expires_at < $1
          LIMIT $2
      ))
"""

# The stored event as an export line carries it: every column but the project.
_EXPORT_COLUMNS: Final = """
    message_id, type, event, user_id, anonymous_id, "timestamp", original_timestamp, sent_at,
    received_at, app_id, country, region, email_sha256, email_google_sha256, phone_sha256,
    phone_e164_sha256, properties, traits, context
"""

# One page of a person's events, oldest first, after the (received_at, message_id) cursor.
# Each names one identifier column, so each page is one index range scan.
_EVENTS_PAGE: Final = {
    column: f"""
    SELECT {_EXPORT_COLUMNS}
    FROM events
    WHERE project_id = $1
      AND {column} = ANY($2::text[])
      AND {exclude}
      AND (received_at, message_id) > ($3, $4)
    ORDER BY received_at, message_id
    LIMIT $5
"""
    for column, exclude in (
        ("user_id", "true"),
        ("anonymous_id", "true"),
        ("email_sha256", "true"),
        # An event whose two email forms are both the one asked for was on the first pass.
        ("email_google_sha256", "(email_sha256 IS NULL OR NOT email_sha256 = ANY($2::text[]))"),
        ("phone_sha256", "true"),
        ("phone_e164_sha256", "(phone_sha256 IS NULL OR NOT phone_sha256 = ANY($2::text[]))"),
    )
}

_USER_PROFILE: Final = """
    SELECT traits, created_at, updated_at
    FROM user_profiles
    WHERE project_id = $1
      AND user_id = $2
"""

_USER_SPAN: Final = """
    SELECT count(*) AS events, min("timestamp") AS first_seen, max("timestamp") AS last_seen
    FROM events
    WHERE project_id = $1
      AND user_id = $2
"""

# Everything that names the person asked for, and what those events link to them (one hop):
# the anonymous ids an identify or alias tied to a user id, the email and phone digests their
# events carried, the previous id an alias named.
_LINKED_IDENTIFIERS: Final = """
    SELECT DISTINCT user_id, anonymous_id, email_sha256, email_google_sha256, phone_sha256,
           phone_e164_sha256,
           CASE WHEN type = 'alias' THEN properties ->> 'previous_id' END AS previous_id
    FROM events
    WHERE project_id = $1
      AND (user_id = ANY($2::text[])
           OR anonymous_id = ANY($3::text[])
           OR email_sha256 = ANY($4::text[])
           OR email_google_sha256 = ANY($4::text[])
           OR phone_sha256 = ANY($5::text[])
           OR phone_e164_sha256 = ANY($5::text[]))
"""

_SUBJECT_CONDITION: Final = """
          (user_id = ANY($2::text[])
           OR anonymous_id = ANY($3::text[])
           OR email_sha256 = ANY($4::text[])
           OR email_google_sha256 = ANY($4::text[])
           OR phone_sha256 = ANY($5::text[])
           OR phone_e164_sha256 = ANY($5::text[]))
"""

_DELETE_SUBJECT_EVENTS: Final = f"""
    DELETE FROM events
    WHERE project_id = $1
      AND {_SUBJECT_CONDITION}
      AND ctid = ANY(ARRAY(
          SELECT ctid
          FROM events
          WHERE project_id = $1
            AND {_SUBJECT_CONDITION}
          LIMIT $6
      ))
    RETURNING message_id
"""

_DELETE_SUBJECT_DEDUP: Final = """
    DELETE FROM event_dedup
    WHERE project_id = $1
      AND message_id = ANY($2::text[])
"""

_DELETE_SUBJECT_PROFILES: Final = """
    DELETE FROM user_profiles
    WHERE project_id = $1
      AND user_id = ANY($2::text[])
"""

_INSERT_SUPPRESSIONS: Final = """
    INSERT INTO suppressions (project_id, digest, kind, erasure_id)
    SELECT $1, x.digest, x.kind, $4
    FROM unnest($2::bytea[], $3::text[]) AS x(digest, kind)
    ON CONFLICT DO NOTHING
"""

_INSERT_ERASURE: Final = """
    INSERT INTO erasures (
        project_id, id, org_id, subject_kind, subject_digest, key_id, request_id, status
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'running')
"""

_ERASURE_COLUMNS: Final = """
    id, project_id, subject_kind, subject_digest, request_id, status, counts, identifiers,
    requested_at, completed_at
"""

_COMPLETE_ERASURE: Final = f"""
    UPDATE erasures
    SET status = 'completed', counts = $3, identifiers = $4, completed_at = now()
    WHERE project_id = $1
      AND id = $2
    RETURNING {_ERASURE_COLUMNS}
"""

# Through the project, so another organization's receipt is as missing as none.
_GET_ERASURE: Final = f"""
    SELECT {_ERASURE_COLUMNS}
    FROM erasures
    WHERE project_id = $1
      AND id = $2
      AND org_id = $3
"""

_LIST_ERASURES: Final = f"""
    SELECT {_ERASURE_COLUMNS}
    FROM erasures
    WHERE project_id = $1
      AND org_id = $2
      AND (requested_at, id) < ($3, $4)
    ORDER BY requested_at DESC, id DESC
    LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as lists show it: never the key itself, which only its creation answer holds."""

    key_id: uuid.UUID
    kind: keys.KeyKind
    project_id: uuid.UUID | None
    display_prefix: str
    is_server_side: bool
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    replaced_by: uuid.UUID | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None or (self.expires_at is not None and self.expires_at <= now):
            return "revoked"
        return "active" if self.expires_at is None else "expiring"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.key_id),
            "kind": str(self.kind),
            "prefix": self.display_prefix,
            "status": self.status(now),
            "created_at": self.created_at.isoformat(),
            "revoked_at": _iso(self.revoked_at),
            "expires_at": _iso(self.expires_at),
            "replaced_by": str(self.replaced_by) if self.replaced_by else None,
        }
        if self.kind is keys.KeyKind.WRITE:
            out["project_id"] = str(self.project_id)
            out["server_side"] = self.is_server_side
        return out


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a statement always returns (an UPDATE of a row locked before it, an aggregate)."""
    if row is None:
        raise LookupError("the statement returned no row")
    return row


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        row["id"],
        keys.KeyKind(row["kind"]),
        row["project_id"],
        row["display_prefix"],
        row["is_server_side"],
        row["created_at"],
        row["revoked_at"],
        row["expires_at"],
        row["replaced_by"],
    )


class LastSecretKey(Exception):
    """Revoking this key would leave its organization without a working secret key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One audit row: who (key, request) did what to which target."""

    org_id: uuid.UUID
    key_id: uuid.UUID | None
    request_id: str | None
    action: str
    target_type: str
    target_id: str
    project_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    entry_id: uuid.UUID
    occurred_at: datetime
    key_id: uuid.UUID | None
    request_id: str | None
    action: str
    target_type: str
    target_id: str
    project_id: uuid.UUID | None
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.entry_id),
            "occurred_at": self.occurred_at.isoformat(),
            "key_id": str(self.key_id) if self.key_id else None,
            "request_id": self.request_id,
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id},
            "project_id": str(self.project_id) if self.project_id else None,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A claimable Idempotency-Key: scoped to the organization and the calling key."""

    org_id: uuid.UUID
    key_id: uuid.UUID
    key_digest: bytes
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyState:
    """The stored entry of a key that could not be claimed."""

    fingerprint: bytes
    status: int | None
    content_type: str | None
    body: bytes | None
    holds_secret: bool


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's current state: identify traits merged in arrival order, and their event span."""

    user_id: str
    traits: dict[str, Any]
    events: int
    first_seen: datetime | None
    last_seen: datetime | None
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "traits": self.traits,
            "events": self.events,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "traits_updated_at": _iso(self.updated_at),
        }


@dataclass(slots=True)
class Identifiers:
    """The identifiers that name one person in one project (emails and phones as hex
    SHA-256 digests, every variant)."""

    user_ids: set[str] = field(default_factory=set)
    anonymous_ids: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)

    def args(self) -> tuple[list[str], list[str], list[str], list[str]]:
        return (
            sorted(self.user_ids),
            sorted(self.anonymous_ids),
            sorted(self.emails),
            sorted(self.phones),
        )

    def digests(self, key: bytes) -> list[tuple[bytes, Kind]]:
        return [
            (pseudonyms.digest(key, kind, value), kind)
            for kind, values in (
                (Kind.USER_ID, self.user_ids),
                (Kind.ANONYMOUS_ID, self.anonymous_ids),
                (Kind.EMAIL, self.emails),
                (Kind.PHONE, self.phones),
            )
            for value in sorted(values)
        ]

    def merge(self, other: Identifiers) -> bool:
        """Add ``other``'s identifiers; True when that added any."""
        before = len(self)
        self.user_ids |= other.user_ids
        self.anonymous_ids |= other.anonymous_ids
        self.emails |= other.emails
        self.phones |= other.phones
        return len(self) > before

    def __len__(self) -> int:
        return len(self.user_ids) + len(self.anonymous_ids) + len(self.emails) + len(self.phones)


@dataclass(frozen=True, slots=True)
class Receipt:
    """An erasure's receipt: what was removed, when, and a keyed digest of whom (never the
    person)."""

    erasure_id: uuid.UUID
    project_id: uuid.UUID
    subject_kind: str
    subject_digest: bytes
    request_id: str | None
    status: str
    counts: dict[str, int]
    identifiers: int
    requested_at: datetime
    completed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.erasure_id),
            "project_id": str(self.project_id),
            "subject": {"kind": self.subject_kind, "digest": self.subject_digest.hex()},
            "request_id": self.request_id,
            "status": self.status,
            "deleted": self.counts,
            "identifiers_suppressed": self.identifiers,
            "requested_at": self.requested_at.isoformat(),
            "completed_at": _iso(self.completed_at),
        }


def _receipt(row: asyncpg.Record) -> Receipt:
    return Receipt(
        row["id"],
        row["project_id"],
        row["subject_kind"],
        row["subject_digest"],
        row["request_id"],
        row["status"],
        dict(row["counts"]),
        row["identifiers"],
        row["requested_at"],
        row["completed_at"],
    )


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

    def given(self) -> list[str]:
        """The names of the fields this change sets (what the audit log records)."""
        named = {
            "name": self.set_name,
            "default_country": self.set_default_country,
            "allowed_origins": self.set_allowed_origins,
            "events_retention_days": self.events_retention_days is not None,
            "dedup_window_days": self.dedup_window_days is not None,
        }
        return [name for name, is_set in named.items() if is_set]


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
        self.writes = EventWrites()

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
                idempotency = await self._delete_batches(
                    conn, _DELETE_EXPIRED_IDEMPOTENCY, None, now, batch_rows
                )
            finally:
                await conn.execute(_RELEASE_PURGE_LOCK)
        # A deleted project whose request died mid-way: its data goes now.
        finished = 0
        for project_id in await self.pending_project_deletions():
            await self.delete_project_data(project_id, batch_rows=batch_rows)
            finished += 1
        return PurgeResult(
            partitions_dropped=dropped,
            partitions_deferred=deferred,
            events_deleted=events,
            dedup_deleted=dedup,
            idempotency_deleted=idempotency,
            projects_finished=finished,
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
        conn: Connection,
        query: str,
        project_id: uuid.UUID | None,
        older_than: datetime,
        batch: int,
    ) -> int:
        """Run a batched DELETE until it deletes fewer than ``batch`` rows; ``project_id``
        None for a query that takes no project (it then reads $1 and $2)."""
        args = (older_than, batch) if project_id is None else (project_id, older_than, batch)
        total = 0
        while True:
            status: str = await conn.execute(query, *args)
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
        conn: Connection | None = None,
    ) -> tuple[Project, IssuedKey]:
        """A project and its first write key; on ``conn`` (inside the caller's transaction)
        when given."""
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self.create_project(
                    org_id,
                    name,
                    default_country,
                    allowed_origins,
                    events_retention_days=events_retention_days,
                    dedup_window_days=dedup_window_days,
                    conn=own,
                )
        project_id = uuid.uuid4()
        origins = tuple(allowed_origins) if allowed_origins is not None else None
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
        self,
        org_id: uuid.UUID,
        project_id: uuid.UUID,
        changes: ProjectChanges,
        *,
        conn: Connection | None = None,
    ) -> Project | None:
        """Apply ``changes``; None when the project is missing or another tenant's."""
        if conn is None:
            async with self.pool.acquire() as own:
                return await self.update_project(org_id, project_id, changes, conn=own)
        origins = changes.allowed_origins
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

    # -- projects and keys (the partner API) -----------------------------------------------

    async def list_projects(self, org_id: uuid.UUID) -> list[Project]:
        async with self.pool.acquire() as conn:
            return [_project(row) for row in await conn.fetch(_LIST_PROJECTS, org_id)]

    @staticmethod
    async def delete_project(conn: Connection, org_id: uuid.UUID, project_id: uuid.UUID) -> bool:
        """Delete the project row (its keys go with it) and note that its data is to be
        deleted; the caller commits, then calls delete_project_data. False when missing."""
        if await conn.fetchval(_DELETE_PROJECT, project_id, org_id) is None:
            return False
        await conn.execute(_INSERT_PROJECT_DELETION, project_id, org_id)
        return True

    async def delete_project_data(
        self, project_id: uuid.UUID, *, batch_rows: int = PURGE_BATCH_ROWS
    ) -> dict[str, int]:
        """Delete every row of a deleted project, in short statements; per table, how many."""
        async with self.pool.acquire() as conn:
            # Writers that saw the project alive commit before this returns; later ones see it
            # gone and drop their rows (insert_events).
            async with conn.transaction():
                await conn.execute(_SUBJECT_BARRIER, project_id, SUBJECT_LOCK)
            counts = {
                "events": await self._delete_all(
                    conn, _DELETE_PROJECT_EVENTS, project_id, batch_rows
                ),
                "message_ids": await self._delete_all(
                    conn, _DELETE_PROJECT_DEDUP, project_id, batch_rows
                ),
            }
            for table, query in _DELETE_PROJECT_ROWS:
                status: str = await conn.execute(query, project_id)
                counts[table] = int(status.split()[-1])
            await conn.execute(_FINISH_PROJECT_DELETION, project_id)
        return counts

    async def pending_project_deletions(self) -> list[uuid.UUID]:
        """Deleted projects whose data deletion did not finish (the process died)."""
        async with self.pool.acquire() as conn:
            return [r["project_id"] for r in await conn.fetch(_PENDING_PROJECT_DELETIONS)]

    @staticmethod
    async def _delete_all(conn: Connection, query: str, project_id: uuid.UUID, batch: int) -> int:
        total = 0
        while True:
            status: str = await conn.execute(query, project_id, batch)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:
                return total

    async def list_keys(self, org_id: uuid.UUID, project_id: uuid.UUID | None) -> list[KeyInfo]:
        """A project's write keys, or (``project_id`` None) the organization's secret keys."""
        async with self.pool.acquire() as conn:
            if project_id is None:
                rows = await conn.fetch(_LIST_SECRET_KEYS, org_id)
            else:
                rows = await conn.fetch(_LIST_PROJECT_KEYS, org_id, project_id)
        return [_key_info(row) for row in rows]

    async def create_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        *,
        is_server_side: bool = False,
    ) -> IssuedKey:
        """A new write key for ``project_id``, or a secret key when it is None."""
        kind = keys.KeyKind.SECRET if project_id is None else keys.KeyKind.WRITE
        return await self._insert_key(conn, org_id, project_id, kind, is_server_side=is_server_side)

    @staticmethod
    async def _key_for_update(
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
    ) -> KeyInfo | None:
        kind = keys.KeyKind.SECRET if project_id is None else keys.KeyKind.WRITE
        row = await conn.fetchrow(_GET_KEY_FOR_UPDATE, key_id, org_id, project_id, str(kind))
        return None if row is None else _key_info(row)

    async def revoke_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
    ) -> KeyInfo | None:
        """Revoke now (again is a no-op); None when missing. Raises LastSecretKey rather than
        lock an organization out: a secret key is revoked only while another one is neither
        revoked nor expiring."""
        if project_id is None:
            org_keys = await conn.fetch(_LOCK_ORG_PARTNER_KEYS, org_id)
            others = [k for k in org_keys if k["is_lasting"] and k["id"] != key_id]
        found = await self._key_for_update(conn, org_id, project_id, key_id)
        if found is None:
            return None
        if project_id is None and found.revoked_at is None and not others:
            raise LastSecretKey()
        return _key_info(_one(await conn.fetchrow(_REVOKE_KEY, key_id)))

    async def rotate_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
        grace_s: float,
    ) -> tuple[IssuedKey, KeyInfo] | None:
        """Issue the key's successor (same kind, project and server-side flag); the old key
        works for ``grace_s`` more seconds. None when the key is missing or no longer works."""
        found = await self._key_for_update(conn, org_id, project_id, key_id)
        if found is None or found.status(datetime.now(UTC)) == "revoked":
            return None
        issued = await self.create_key(
            conn, org_id, project_id, is_server_side=found.is_server_side
        )
        old = _key_info(_one(await conn.fetchrow(_RETIRE_KEY, key_id, grace_s, issued.key_id)))
        return issued, old

    # -- audit log -------------------------------------------------------------------------

    @staticmethod
    async def audit(conn: Connection, entry: AuditEntry) -> None:
        await conn.execute(
            _INSERT_AUDIT,
            entry.org_id,
            uuid.uuid4(),
            entry.key_id,
            entry.request_id,
            entry.action,
            entry.target_type,
            entry.target_id,
            entry.project_id,
            entry.details,
        )

    async def list_audit(
        self,
        org_id: uuid.UUID,
        *,
        before_seq: int | None,
        limit: int,
        action: str | None = None,
        key_id: uuid.UUID | None = None,
    ) -> list[AuditRecord]:
        """The organization's audit rows, newest first, older than ``before_seq``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                _LIST_AUDIT,
                org_id,
                before_seq if before_seq is not None else 2**63 - 1,
                action,
                key_id,
                limit,
            )
        return [
            AuditRecord(
                r["seq"],
                r["id"],
                r["occurred_at"],
                r["key_id"],
                r["request_id"],
                r["action"],
                r["target_type"],
                r["target_id"],
                r["project_id"],
                dict(r["details"]),
            )
            for r in rows
        ]

    # -- idempotency -----------------------------------------------------------------------

    async def org_key(self, org_id: uuid.UUID) -> bytes:
        row = await self._fetchrow(_ORG_KEY, org_id)
        if row is None:  # the caller's key was just authenticated: its organization exists
            raise LookupError("organization not found")
        key: bytes = row["pseudonym_key"]
        return key

    async def project_key(self, org_id: uuid.UUID, project_id: uuid.UUID) -> bytes | None:
        row = await self._fetchrow(_PROJECT_KEY, project_id, org_id)
        return None if row is None else bytes(row["pseudonym_key"])

    async def claim_idempotency(
        self, key: IdempotencyKey, lock_s: float, ttl_s: float
    ) -> IdempotencyState | None:
        """Claim ``key`` for this request (None), or return the entry that holds it."""
        async with self.pool.acquire() as conn:
            claimed = await conn.fetchval(
                _CLAIM_IDEMPOTENCY,
                key.org_id,
                key.key_id,
                key.key_digest,
                key.fingerprint,
                lock_s,
                ttl_s,
            )
            if claimed:
                return None
            row = await conn.fetchrow(_GET_IDEMPOTENCY, key.org_id, key.key_id, key.key_digest)
        if row is None:  # expired and purged between the two statements: a new key
            return await self.claim_idempotency(key, lock_s, ttl_s)
        return IdempotencyState(
            row["fingerprint"], row["status"], row["content_type"], row["body"], row["holds_secret"]
        )

    @staticmethod
    async def complete_idempotency(
        conn: Connection,
        key: IdempotencyKey,
        status: int,
        content_type: str | None,
        body: bytes,
        *,
        holds_secret: bool,
    ) -> None:
        await conn.execute(
            _COMPLETE_IDEMPOTENCY,
            key.org_id,
            key.key_id,
            key.key_digest,
            key.fingerprint,
            status,
            content_type,
            body,
            holds_secret,
        )

    async def release_idempotency(self, key: IdempotencyKey) -> None:
        """Forget a claim whose request failed: the same key may be retried at once."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                _RELEASE_IDEMPOTENCY, key.org_id, key.key_id, key.key_digest, key.fingerprint
            )

    # -- data-subject requests -------------------------------------------------------------

    async def events_pages(
        self, project_id: uuid.UUID, column: str, values: Sequence[str], *, page_rows: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The events whose ``column`` is one of ``values``, oldest first, a page at a time.
        Each page is its own short query (no transaction spans the export), so an export never
        pins vacuum or blocks a partition drop."""
        query = _EVENTS_PAGE[column]
        after: tuple[datetime, str] = (datetime(1, 1, 1, tzinfo=UTC), "")
        while True:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(query, project_id, list(values), *after, page_rows)
            if not rows:
                return
            yield [dict(row) for row in rows]
            if len(rows) < page_rows:
                return
            after = (rows[-1]["received_at"], rows[-1]["message_id"])

    async def profile(self, project_id: uuid.UUID, user_id: str) -> Profile | None:
        """The user's current state; None when the project holds nothing about them."""
        async with self.pool.acquire() as conn:
            state = await conn.fetchrow(_USER_PROFILE, project_id, user_id)
            span = _one(await conn.fetchrow(_USER_SPAN, project_id, user_id))
        if state is None and span["events"] == 0:
            return None
        return Profile(
            user_id,
            dict(state["traits"]) if state else {},
            span["events"],
            span["first_seen"],
            span["last_seen"],
            state["updated_at"] if state else None,
        )

    @staticmethod
    async def _linked(conn: Connection, project_id: uuid.UUID, subject: Identifiers) -> Identifiers:
        found = Identifiers()
        for row in await conn.fetch(_LINKED_IDENTIFIERS, project_id, *subject.args()):
            if row["user_id"] is not None:
                found.user_ids.add(row["user_id"])
            if row["anonymous_id"] is not None:
                found.anonymous_ids.add(row["anonymous_id"])
            if row["previous_id"] is not None:
                # An alias's previous id was an anonymous id or an older user id.
                found.user_ids.add(row["previous_id"])
                found.anonymous_ids.add(row["previous_id"])
            for column in ("email_sha256", "email_google_sha256"):
                if row[column] is not None:
                    found.emails.add(row[column])
            for column in ("phone_sha256", "phone_e164_sha256"):
                if row[column] is not None:
                    found.phones.add(row[column])
        return found

    async def erase_subject(
        self,
        org_id: uuid.UUID,
        project_id: uuid.UUID,
        subject: Identifiers,
        subject_kind: Kind,
        subject_digest: bytes,
        *,
        erasure_id: uuid.UUID,
        key_id: uuid.UUID | None,
        request_id: str | None,
        batch_rows: int = PURGE_BATCH_ROWS,
    ) -> tuple[dict[str, int], int] | None:
        """Erase a person from a project; (counts per data class, identifiers suppressed),
        or None when the project is missing. The caller completes the receipt.

        The order is what keeps a racing event out (RELIABILITY T17): (1) commit the
        suppressions of every identifier that names the person (and those their events link
        to); (2) wait on the project's subject lock, so every writer transaction that might not
        have seen them has committed; (3) delete. Writers check the suppressions inside their
        own transaction, so nothing for the person is stored afterwards.
        """
        async with self.pool.acquire() as conn:
            key = await conn.fetchval(_PROJECT_KEY, project_id, org_id)
            if key is None:
                return None
            await conn.execute(
                _INSERT_ERASURE,
                project_id,
                erasure_id,
                org_id,
                str(subject_kind),
                subject_digest,
                key_id,
                request_id,
            )
            # One hop: the subject's own identifiers and what their events link to, never
            # what those link to in turn (a shared device would otherwise erase a second
            # person). Suppressed first, then looked up again after the barrier: an identify
            # committed meanwhile may have linked one more.
            everyone = Identifiers()
            everyone.merge(subject)
            for _ in range(3):
                everyone.merge(await self._linked(conn, project_id, subject))
                digests = everyone.digests(key)
                await conn.execute(
                    _INSERT_SUPPRESSIONS,
                    project_id,
                    [d for d, _ in digests],
                    [str(k) for _, k in digests],
                    erasure_id,
                )
                async with conn.transaction():
                    await conn.execute(_SUBJECT_BARRIER, project_id, SUBJECT_LOCK)
                if not everyone.merge(await self._linked(conn, project_id, subject)):
                    break
            message_ids: list[str] = []
            while True:
                deleted = await conn.fetch(
                    _DELETE_SUBJECT_EVENTS, project_id, *everyone.args(), batch_rows
                )
                message_ids.extend(r["message_id"] for r in deleted)
                if len(deleted) < batch_rows:
                    break
            dedup = 0
            for start in range(0, len(message_ids), batch_rows):
                status: str = await conn.execute(
                    _DELETE_SUBJECT_DEDUP, project_id, message_ids[start : start + batch_rows]
                )
                dedup += int(status.split()[-1])
            status = await conn.execute(
                _DELETE_SUBJECT_PROFILES, project_id, sorted(everyone.user_ids)
            )
            counts = {
                "events": len(message_ids),
                "message_ids": dedup,
                "user_profiles": int(status.split()[-1]),
                # Nothing else holds a person's data yet: forwarding (its outbox) does not
                # exist, and the idempotency cache keeps no request body (see README).
                "forward_queue": 0,
            }
        return counts, len(everyone)

    @staticmethod
    async def complete_erasure(
        conn: Connection,
        project_id: uuid.UUID,
        erasure_id: uuid.UUID,
        counts: dict[str, int],
        identifiers: int,
    ) -> Receipt:
        row = await conn.fetchrow(_COMPLETE_ERASURE, project_id, erasure_id, counts, identifiers)
        return _receipt(_one(row))

    async def get_erasure(
        self, org_id: uuid.UUID, project_id: uuid.UUID, erasure_id: uuid.UUID
    ) -> Receipt | None:
        row = await self._fetchrow(_GET_ERASURE, project_id, erasure_id, org_id)
        return None if row is None else _receipt(row)

    async def list_erasures(
        self,
        org_id: uuid.UUID,
        project_id: uuid.UUID,
        *,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Receipt]:
        start = before or (datetime(9999, 12, 31, tzinfo=UTC), uuid.UUID(int=2**128 - 1))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LIST_ERASURES, project_id, org_id, *start, limit)
        return [_receipt(row) for row in rows]


class EventWrites:
    """The writer's transaction. Keeps, per process, what never changes or only grows: the
    projects' pseudonym keys, and which projects have suppressions (so that the usual batch,
    for projects with none, costs no keyed digest at all)."""

    def __init__(self) -> None:
        self._keys: dict[uuid.UUID, bytes] = {}
        self._suppressing: set[uuid.UUID] = set()

    async def insert_events(self, conn: Connection, rows: Sequence[Row]) -> list[Fate]:
        """Store rows not seen before in one transaction, unless their project is gone or they
        name a suppressed person; update the current state of identified users. Per row, its
        fate. Raises on any database error.

        The claim (ingest_claim_events, sql/0004) first takes a shared per-project lock, which
        is what an erasure waits on (Store.erase_subject): once the erasure's suppressions are
        committed and it has held the lock, every later claim sees them, and every earlier one
        has committed rows that the erasure's DELETE sees.
        """
        # Sorted claims take row locks in one order across writer connections: no deadlocks.
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2]))
        async with conn.transaction():
            while True:
                claim = await conn.fetch(
                    _CLAIM_EVENTS,
                    [rows[i][0] for i in order],
                    [rows[i][2] for i in order],
                    [rows[i][1] for i in order],
                    *await self._digests(conn, rows, order),
                    SUBJECT_LOCK,
                )
                need = {r["project"] for r in claim if r["kind"] == "need_digests"}
                if not need:
                    break
                self._suppressing |= need  # suppressions are kept until the project goes
            dropped = {order[r["idx"] - 1] for r in claim if r["kind"] == "dropped"}
            fresh = {(r["project"], r["message"]) for r in claim if r["kind"] == "claimed"}
            fates: list[Fate] = []
            records: list[Row] = []
            for index, row in enumerate(rows):
                key = (row[0], row[2])
                if index in dropped:
                    fates.append(Fate.SUPPRESSED)
                elif key in fresh:
                    fresh.discard(key)  # a second copy inside the same batch is a duplicate
                    fates.append(Fate.STORED)
                    records.append(row)
                else:
                    fates.append(Fate.DUPLICATE)
            if records:
                await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
                await _update_profiles(conn, records)
        return fates

    async def _digests(
        self, conn: Connection, rows: Sequence[Row], order: Sequence[int]
    ) -> tuple[list[uuid.UUID], list[int], list[bytes]]:
        """(projects given digests, 1-based positions in ``order``, keyed digests) for the
        rows of projects known to have suppressions."""
        projects = sorted({rows[i][0] for i in order} & self._suppressing)
        if not projects:
            return [], [], []
        missing = [p for p in projects if p not in self._keys]
        if missing:
            if len(self._keys) > _KEY_CACHE_MAX:
                self._keys.clear()
            for r in await conn.fetch(_PROJECT_KEYS, missing):
                self._keys[r["id"]] = bytes(r["pseudonym_key"])
        positions: list[int] = []
        digests: list[bytes] = []
        for position, index in enumerate(order, start=1):
            row = rows[index]
            key = self._keys.get(row[0])
            if key is None or row[0] not in self._suppressing:
                continue
            for kind, column in _SUBJECT_COLUMNS:
                value = row[column]
                if value is not None:
                    positions.append(position)
                    digests.append(pseudonyms.digest(key, kind, value))
        return projects, positions, digests


async def _update_profiles(conn: Connection, records: Sequence[Row]) -> None:
    """Merge the traits of stored identify events into their users' current state, in
    arrival order (a corrected identify overwrites what it names; the events stay as sent)."""
    merged: dict[tuple[uuid.UUID, str], tuple[dict[str, Any], datetime]] = {}
    for row in records:
        if row[_TYPE] != "identify" or row[_USER_ID] is None:
            continue
        key = (row[0], row[_USER_ID])
        traits = orjson.loads(row[_TRAITS])
        if key in merged:
            merged[key][0].update(traits)
        else:
            merged[key] = (traits, row[_RECEIVED_AT])
    if not merged:
        return
    # Sorted: two writer connections upsert the same users in one order, never deadlocking.
    ordered = sorted(merged)
    await conn.execute(
        _UPSERT_PROFILES,
        [k[0] for k in ordered],
        [k[1] for k in ordered],
        [orjson.dumps(merged[k][0]) for k in ordered],
        [merged[k][1] for k in ordered],
    )
