"""What every module of the store shares: the pool, its jsonb codec, transient errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import asyncpg
import orjson

from ingest.keyring import Keyring, MasterKeyError, Sealer

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

# A stored event as a partner receives it (an export line, a forwarded event): every column of
# events but the project, in this order.
EVENT_FIELDS: Final = (
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "app_id",
    "country",
    "region",
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_e164_sha256",
    "properties",
    "traits",
    "context",
)
EVENT_SELECT: Final = ", ".join(f'"{c}"' for c in EVENT_FIELDS)
# The columns a protected project stores sealed (keyring.py), and the JSON ones whose hex
# digests it seals.
DIGEST_FIELDS: Final = ("email_sha256", "email_google_sha256", "phone_sha256", "phone_e164_sha256")
JSON_FIELDS: Final = ("properties", "traits", "context")


def open_event(sealer: Sealer | None, doc: dict[str, Any]) -> dict[str, Any]:
    """A stored event (as decoded from its row) with its sealed digests opened: what exports,
    forwards and the console show. ``sealer`` None: stored plain, as it is."""
    if sealer is None:
        return doc
    for name in DIGEST_FIELDS:
        if name in doc:
            doc[name] = sealer.open_optional(doc[name])
    for name in JSON_FIELDS:
        if doc.get(name) is not None:
            doc[name] = sealer.open_tree(doc[name])
    return doc


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


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a statement always returns (an UPDATE of a row locked before it, an aggregate)."""
    if row is None:
        raise LookupError("the statement returned no row")
    return row


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class StoreBase:
    """The pool every mixin of Store runs its statements on, and the keyring that unwraps the
    projects' keys (None in a store that never touches a project's identifiers: the CLI's
    purge and create-org)."""

    pool: asyncpg.Pool
    keyring: Keyring | None = None

    def require_keyring(self) -> Keyring:
        if self.keyring is None:
            raise MasterKeyError("this needs the master key (INGEST_MASTER_KEY)")
        return self.keyring

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

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """A read, retried once on a fresh connection: after a database restart every pooled
        connection is stale, and a read is always safe to repeat."""
        try:
            async with self.pool.acquire() as conn:
                return await conn.fetchrow(query, *args)
        except TRANSIENT_ERRORS:
            async with self.pool.acquire() as conn:
                return await conn.fetchrow(query, *args)
