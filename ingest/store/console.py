"""The partner console's own data: sign-in sessions, refused events, and the live view's read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ingest.store._db import EVENT_SELECT, StoreBase


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    org_id: uuid.UUID
    key_id: uuid.UUID
    # The digest of the secret key the session acts as: looked up again on every request, so
    # a revoked key ends its sessions at once.
    key_digest: bytes
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused event as the live view lists it: no value from the event itself."""

    project_id: uuid.UUID
    received_at: datetime
    event_type: str | None
    code: str
    field: str | None
    reason: str


_OPEN_SESSION: Final = """
    INSERT INTO console_sessions (id_digest, org_id, key_id, csrf_token, expires_at)
    VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
"""

# Sliding expiry (idle_s after the last request), never past created_at + absolute_s.
_TOUCH_SESSION: Final = """
    UPDATE console_sessions
    SET last_seen_at = now(),
        expires_at = least(
            created_at + make_interval(secs => $3), now() + make_interval(secs => $2)
        )
    WHERE id_digest = $1
      AND expires_at > now()
    RETURNING org_id, key_id, csrf_token, expires_at
"""

_SESSION_KEY: Final = """
    SELECT digest FROM api_keys WHERE id = $1
"""

_CLOSE_SESSION: Final = """
    DELETE FROM console_sessions WHERE id_digest = $1
"""

_DELETE_EXPIRED_SESSIONS: Final = """
    DELETE FROM console_sessions WHERE expires_at <= now()
"""

_INSERT_REJECTIONS: Final = """
    INSERT INTO rejections (project_id, received_at, event_type, code, field, reason)
    SELECT $1, $2, t.event_type, t.code, t.field, t.reason
    FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
        AS t (event_type, code, field, reason)
"""

_RECENT_REJECTIONS: Final = """
    SELECT project_id, received_at, event_type, code, field, reason
    FROM rejections
    WHERE project_id = $1
      AND received_at > $2
    ORDER BY received_at DESC, id DESC
    LIMIT $3
"""

_DELETE_OLD_REJECTIONS: Final = """
    DELETE FROM rejections WHERE received_at < now() - interval '1 day'
"""

# received_at only: the BRIN index on it finds the last seconds' pages of the partition.
_RECENT_EVENTS: Final = f"""
    SELECT {EVENT_SELECT}
    FROM events
    WHERE project_id = $1
      AND received_at > $2
    ORDER BY received_at DESC, message_id DESC
    LIMIT $3
"""


class ConsoleMixin(StoreBase):
    async def open_session(
        self,
        id_digest: bytes,
        org_id: uuid.UUID,
        key_id: uuid.UUID,
        csrf_token: str,
        idle_s: float,
    ) -> None:
        async with self.pool.acquire() as conn:
            # Expired sessions go on sign-in: their number is bounded by sign-ins, and no
            # background task is needed for a table this small.
            await conn.execute(_DELETE_EXPIRED_SESSIONS)
            await conn.execute(_OPEN_SESSION, id_digest, org_id, key_id, csrf_token, idle_s)

    async def touch_session(
        self, id_digest: bytes, idle_s: float, absolute_s: float
    ) -> ConsoleSession | None:
        """The live session the cookie names, its expiry pushed on; None when it has ended."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_TOUCH_SESSION, id_digest, idle_s, absolute_s)
            if row is None:
                return None
            digest = await conn.fetchval(_SESSION_KEY, row["key_id"])
        if digest is None:
            return None
        return ConsoleSession(
            row["org_id"], row["key_id"], bytes(digest), row["csrf_token"], row["expires_at"]
        )

    async def close_session(self, id_digest: bytes) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(_CLOSE_SESSION, id_digest)

    async def record_rejections(
        self,
        project_id: uuid.UUID,
        received_at: datetime,
        rejected: Sequence[tuple[str | None, str, str | None, str]],
    ) -> None:
        """``rejected``: (event type, code, field, reason) of each refused event."""
        columns: list[list[Any]] = [[], [], [], []]
        for row in rejected:
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        async with self.pool.acquire() as conn:
            await conn.execute(_INSERT_REJECTIONS, project_id, received_at, *columns)

    async def recent_rejections(
        self, project_id: uuid.UUID, since: datetime, limit: int
    ) -> list[Rejection]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_RECENT_REJECTIONS, project_id, since, limit)
        return [Rejection(**dict(row)) for row in rows]

    async def recent_events(
        self, project_id: uuid.UUID, since: datetime, limit: int
    ) -> list[dict[str, Any]]:
        """The project's events received after ``since``, newest first, as stored."""
        async with self.pool.acquire() as conn:
            return [dict(row) for row in await conn.fetch(_RECENT_EVENTS, project_id, since, limit)]

    async def purge_console(self) -> tuple[int, int]:
        """Drop ended sessions and refused events older than a day: (sessions, rejections)."""
        async with self.pool.acquire() as conn:
            sessions = await conn.execute(_DELETE_EXPIRED_SESSIONS)
            rejections = await conn.execute(_DELETE_OLD_REJECTIONS)
        return int(sessions.split()[-1]), int(rejections.split()[-1])
