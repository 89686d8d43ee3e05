"""Destinations, the outbox of events waiting for them, dead letters and deliveries (sql/0006).

The writer fills the outbox (writes.py) in the transaction that stores the events. The
forwarder (ingest/forwarder.py) takes a destination's due rows with FOR UPDATE SKIP LOCKED and
holds them, in one transaction, while its HTTP request runs: every worker process can forward
without two sending the same row, and an erasure's DELETE of a row in flight waits for the
delivery to finish, so its receipt sees the delivery.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from ingest.store._db import EVENT_FIELDS, EVENT_SELECT, Connection, StoreBase, _iso, open_event
from ingest.store.sealing import projects_crypto

_DESTINATION_COLUMNS: Final = """
    project_id, id, type, name, url, status, event_types, settings, retry_at, created_at,
    updated_at, secret IS NOT NULL AS has_secret
"""


@dataclass(frozen=True, slots=True)
class Destination:
    project_id: uuid.UUID
    destination_id: uuid.UUID
    type: str
    name: str
    url: str
    status: str
    event_types: tuple[str, ...] | None
    settings: dict[str, Any]
    retry_at: datetime | None
    created_at: datetime
    updated_at: datetime
    has_secret: bool
    # Only the forwarder reads it (to sign, or to authenticate to the conversions API).
    secret: str | None = field(default=None, repr=False)
    # A webhook's secret before a rotation, while its grace period lasts (signed with both).
    previous_secret: str | None = field(default=None, repr=False)
    # How long its project lets a row wait (projects.forward_queue_days), for the forwarder.
    queue_days: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.destination_id),
            "project_id": str(self.project_id),
            "type": self.type,
            "name": self.name,
            "url": self.url,
            "status": self.status,
            "event_types": list(self.event_types) if self.event_types is not None else None,
            "settings": self.settings,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _destination(row: asyncpg.Record, *, with_secret: bool = False) -> Destination:
    return Destination(
        row["project_id"],
        row["id"],
        row["type"],
        row["name"],
        row["url"],
        row["status"],
        tuple(row["event_types"]) if row["event_types"] is not None else None,
        dict(row["settings"]),
        row["retry_at"],
        row["created_at"],
        row["updated_at"],
        row["has_secret"],
        row["secret"] if with_secret else None,
        row["previous_secret"] if with_secret else None,
        row["queue_days"] if with_secret else 1,
    )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A destination's outbox: rows waiting, dead letters, and the oldest waiting row."""

    pending: int
    dead: int
    oldest_pending: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "dead_letters": self.dead,
            "oldest_pending_at": _iso(self.oldest_pending),
        }


@dataclass(frozen=True, slots=True)
class DestinationChanges:
    """A PATCH: None leaves a field as it is."""

    name: str | None = None
    url: str | None = None
    status: str | None = None
    set_event_types: bool = False
    event_types: tuple[str, ...] | None = None
    secret: str | None = None
    settings: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting for one destination, as the forwarder reads it."""

    outbox_id: int
    message_id: str
    received_at: datetime
    attempts: int
    created_at: datetime
    event: dict[str, Any]  # the stored event's columns, as an export line has them
    devices: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    outbox_id: int
    message_id: str
    type: str
    event: str | None
    received_at: datetime
    attempts: int
    last_error: str | None
    created_at: datetime
    dead_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.outbox_id),
            "message_id": self.message_id,
            "type": self.type,
            "event": self.event,
            "received_at": self.received_at.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "dead_at": _iso(self.dead_at),
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """What the forwarder decided for the rows of a failed attempt."""

    error: str  # an HTTP status or an error class; never a body
    retry: Sequence[tuple[int, float]]  # (outbox id, seconds until its next attempt)
    dead: Sequence[int]  # outbox ids that go to the dead letters
    destination_wait_s: float  # nothing goes to the destination for this long


_INSERT_DESTINATION: Final = f"""
    INSERT INTO destinations (project_id, id, type, name, url, event_types, secret, settings)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING {_DESTINATION_COLUMNS}
"""

_LIST_DESTINATIONS: Final = f"""
    SELECT {_DESTINATION_COLUMNS}
    FROM destinations
    WHERE project_id = $1
    ORDER BY created_at, id
"""

_GET_DESTINATION: Final = f"""
    SELECT {_DESTINATION_COLUMNS}
    FROM destinations
    WHERE project_id = $1
      AND id = $2
"""

_UPDATE_DESTINATION: Final = f"""
    UPDATE destinations
    SET name = coalesce($3, name),
        url = coalesce($4, url),
        status = coalesce($5, status),
        event_types = CASE WHEN $6 THEN $7 ELSE event_types END,
        secret = coalesce($8, secret),
        settings = coalesce($9, settings),
        -- A resumed or re-pointed destination is tried at once.
        retry_at = CASE WHEN $4 IS NOT NULL OR $5 = 'active' THEN NULL ELSE retry_at END,
        updated_at = now()
    WHERE project_id = $1
      AND id = $2
    RETURNING {_DESTINATION_COLUMNS}
"""

# A new signing secret for a webhook; the old one keeps signing for the grace period.
_ROTATE_SECRET: Final = f"""
    UPDATE destinations
    SET previous_secret = CASE WHEN $4 > 0 THEN secret END,
        previous_secret_until = CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END,
        secret = $3,
        updated_at = now()
    WHERE project_id = $1
      AND id = $2
      AND type = 'webhook'
    RETURNING {_DESTINATION_COLUMNS}
"""

# The outbox rows go with it (ON DELETE CASCADE), and with them their device ids.
_DELETE_DESTINATION: Final = """
    DELETE FROM destinations
    WHERE project_id = $1
      AND id = $2
    RETURNING id
"""

_QUEUE_STATS: Final = """
    SELECT destination_id,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           min(created_at) FILTER (WHERE status = 'pending') AS oldest
    FROM outbox
    WHERE project_id = $1
      AND ($2::uuid IS NULL OR destination_id = $2)
    GROUP BY destination_id
"""

_ALL_QUEUE_STATS: Final = """
    SELECT project_id, destination_id,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           min(created_at) FILTER (WHERE status = 'pending') AS oldest
    FROM outbox
    GROUP BY project_id, destination_id
"""

_DEAD_LETTERS: Final = """
    SELECT id, message_id, type, event, received_at, attempts, last_error, created_at, dead_at
    FROM outbox
    WHERE project_id = $1
      AND destination_id = $2
      AND status = 'dead'
      AND id > $3
    ORDER BY id
    LIMIT $4
"""

# A retried dead letter has lost its device ids for good: it is sent without them.
_RETRY_DEAD_LETTERS: Final = """
    UPDATE outbox
    SET status = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL,
        last_error = NULL, created_at = now()
    WHERE project_id = $1
      AND destination_id = $2
      AND status = 'dead'
      AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))
"""

# Active destinations with a row due, of live projects, that did not ask us to wait.
_DUE_DESTINATIONS: Final = f"""
    SELECT {_DESTINATION_COLUMNS}, secret,
           CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret,
           (SELECT p.forward_queue_days FROM projects AS p WHERE p.id = d.project_id)
               AS queue_days
    FROM destinations AS d
    WHERE d.status = 'active'
      AND (d.retry_at IS NULL OR d.retry_at <= now())
      AND EXISTS (SELECT 1 FROM projects AS p WHERE p.id = d.project_id)
      AND EXISTS (
          SELECT 1
          FROM outbox AS o
          WHERE o.project_id = d.project_id
            AND o.destination_id = d.id
            AND o.status = 'pending'
            AND o.next_attempt_at <= now()
      )
    ORDER BY d.retry_at NULLS FIRST, d.id
    LIMIT $1
"""

_CLAIM_OUTBOX: Final = f"""
    SELECT id, attempts, created_at, devices, {EVENT_SELECT}
    FROM outbox
    WHERE project_id = $1
      AND destination_id = $2
      AND status = 'pending'
      AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
"""

_DELIVERED: Final = """
    WITH gone AS (
        DELETE FROM outbox
        WHERE project_id = $1
          AND id = ANY($3::bigint[])
        RETURNING message_id, received_at
    )
    INSERT INTO deliveries (project_id, destination_id, message_id, received_at)
    SELECT $1, $2, g.message_id, g.received_at
    FROM gone AS g
    ON CONFLICT DO NOTHING
"""

_RETRY_LATER: Final = """
    UPDATE outbox AS o
    SET attempts = o.attempts + 1,
        last_error = $2,
        next_attempt_at = now() + make_interval(secs => x.wait)
    FROM unnest($3::bigint[], $4::float8[]) AS x(id, wait)
    WHERE o.project_id = $1
      AND o.id = x.id
"""

# A dead letter keeps what the partner needs to decide on a retry, never the device ids.
_TO_DEAD_LETTERS: Final = """
    UPDATE outbox
    SET attempts = attempts + 1,
        last_error = $2,
        status = 'dead',
        devices = NULL,
        dead_at = now()
    WHERE project_id = $1
      AND id = ANY($3::bigint[])
"""

_DESTINATION_WAIT: Final = """
    UPDATE destinations
    SET retry_at = greatest(retry_at, now() + make_interval(secs => $3))  -- NULL is ignored
    WHERE project_id = $1
      AND id = $2
"""

# Rows that waited longer than their project allows (a paused destination, one that never
# recovered) go dead, and lose their device ids, even when nobody tries to deliver them. No
# project keeps them less than a day: that bound lets the age index narrow the scan.
_EXPIRE_PENDING: Final = """
    WITH expired AS (
        SELECT o.project_id, o.id
        FROM outbox AS o
        JOIN projects AS p ON p.id = o.project_id
        WHERE o.status = 'pending'
          AND o.created_at < now() - interval '1 day'
          AND o.created_at < now() - make_interval(days => p.forward_queue_days)
        LIMIT $1
    )
    UPDATE outbox AS o
    SET status = 'dead', devices = NULL, dead_at = now(),
        last_error = coalesce(o.last_error || '; ', '') || 'expired'
    FROM expired AS e
    WHERE o.project_id = e.project_id
      AND o.id = e.id
    RETURNING o.project_id, o.destination_id
"""

_PURGE_DEAD_LETTERS: Final = """
    DELETE FROM outbox
    WHERE project_id = $1
      AND id IN (
          SELECT id
          FROM outbox
          WHERE project_id = $1
            AND status = 'dead'
            AND dead_at < $2
          LIMIT $3
      )
"""

_PURGE_DELIVERIES: Final = """
    DELETE FROM deliveries
    WHERE project_id = $1
      AND (destination_id, message_id) IN (
          SELECT destination_id, message_id
          FROM deliveries
          WHERE project_id = $1
            AND received_at < $2
          LIMIT $3
      )
"""

# Erasure: a person's rows still waiting (or dead) and the record of what reached each
# destination, by the message ids of the events the erasure deleted.
_ERASE_OUTBOX: Final = """
    DELETE FROM outbox
    WHERE project_id = $1
      AND message_id = ANY($2::text[])
"""

_ERASE_DELIVERIES: Final = """
    DELETE FROM deliveries
    WHERE project_id = $1
      AND message_id = ANY($2::text[])
    RETURNING destination_id, delivered_at
"""

_DESTINATION_NAMES: Final = """
    SELECT id, type, name FROM destinations WHERE project_id = $1 AND id = ANY($2::uuid[])
"""


def _queue_stats(row: asyncpg.Record | None) -> QueueStats:
    if row is None:
        return QueueStats(0, 0, None)
    return QueueStats(row["pending"], row["dead"], row["oldest"])


class ForwardingMixin(StoreBase):
    # -- destinations (partner API) ------------------------------------------------------

    @staticmethod
    async def create_destination(
        conn: Connection,
        project_id: uuid.UUID,
        *,
        type: str,  # the API's field name
        name: str,
        url: str,
        event_types: tuple[str, ...] | None,
        secret: str | None,
        settings: dict[str, Any],
    ) -> Destination:
        row = await conn.fetchrow(
            _INSERT_DESTINATION,
            project_id,
            uuid.uuid4(),
            type,
            name,
            url,
            list(event_types) if event_types is not None else None,
            secret,
            settings,
        )
        assert row is not None  # noqa: S101  # INSERT ... RETURNING returns its row
        return _destination(row)

    async def list_destinations(
        self, project_id: uuid.UUID
    ) -> list[tuple[Destination, QueueStats]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LIST_DESTINATIONS, project_id)
            stats = {
                r["destination_id"]: r for r in await conn.fetch(_QUEUE_STATS, project_id, None)
            }
        return [(_destination(r), _queue_stats(stats.get(r["id"]))) for r in rows]

    async def get_destination(
        self, project_id: uuid.UUID, destination_id: uuid.UUID
    ) -> tuple[Destination, QueueStats] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_GET_DESTINATION, project_id, destination_id)
            if row is None:
                return None
            stats = await conn.fetchrow(_QUEUE_STATS, project_id, destination_id)
        return _destination(row), _queue_stats(stats)

    @staticmethod
    async def update_destination(
        conn: Connection,
        project_id: uuid.UUID,
        destination_id: uuid.UUID,
        changes: DestinationChanges,
    ) -> Destination | None:
        row = await conn.fetchrow(
            _UPDATE_DESTINATION,
            project_id,
            destination_id,
            changes.name,
            changes.url,
            changes.status,
            changes.set_event_types,
            list(changes.event_types) if changes.event_types is not None else None,
            changes.secret,
            changes.settings,
        )
        return None if row is None else _destination(row)

    @staticmethod
    async def rotate_secret(
        conn: Connection,
        project_id: uuid.UUID,
        destination_id: uuid.UUID,
        secret: str,
        grace_s: float,
    ) -> Destination | None:
        """Replace a webhook's signing secret; None when there is no such webhook."""
        row = await conn.fetchrow(
            _ROTATE_SECRET, project_id, destination_id, secret, float(grace_s)
        )
        return None if row is None else _destination(row)

    @staticmethod
    async def delete_destination(
        conn: Connection, project_id: uuid.UUID, destination_id: uuid.UUID
    ) -> bool:
        return await conn.fetchval(_DELETE_DESTINATION, project_id, destination_id) is not None

    async def dead_letters(
        self, project_id: uuid.UUID, destination_id: uuid.UUID, *, after: int, limit: int
    ) -> list[DeadLetter]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_DEAD_LETTERS, project_id, destination_id, after, limit)
        return [
            DeadLetter(
                r["id"],
                r["message_id"],
                r["type"],
                r["event"],
                r["received_at"],
                r["attempts"],
                r["last_error"],
                r["created_at"],
                r["dead_at"],
            )
            for r in rows
        ]

    @staticmethod
    async def retry_dead_letters(
        conn: Connection,
        project_id: uuid.UUID,
        destination_id: uuid.UUID,
        ids: Sequence[int] | None,
    ) -> int:
        """Put dead letters (all, or those of ``ids``) back in the queue; how many."""
        status: str = await conn.execute(
            _RETRY_DEAD_LETTERS,
            project_id,
            destination_id,
            list(ids) if ids is not None else None,
        )
        return int(status.split()[-1])

    # -- delivery (the forwarder) --------------------------------------------------------

    async def due_destinations(self, limit: int) -> list[Destination]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_DUE_DESTINATIONS, limit)
        return [_destination(r, with_secret=True) for r in rows]

    async def claim_outbox(
        self, conn: Connection, destination: Destination, limit: int
    ) -> list[OutboxRow]:
        """Lock up to ``limit`` due rows of ``destination`` until the caller's transaction
        ends; rows another process holds are skipped. Sealed digests come opened: the
        destination gets the plain SHA-256 it matches on."""
        rows = await conn.fetch(
            _CLAIM_OUTBOX, destination.project_id, destination.destination_id, limit
        )
        if not rows:
            return []
        crypto = (await projects_crypto(conn, self.keyring, [destination.project_id])).get(
            destination.project_id
        )
        sealer = crypto.sealer if crypto is not None else None
        return [
            OutboxRow(
                r["id"],
                r["message_id"],
                r["received_at"],
                r["attempts"],
                r["created_at"],
                open_event(sealer, {c: r[c] for c in EVENT_FIELDS}),
                dict(r["devices"]) if r["devices"] is not None else None,
            )
            for r in rows
        ]

    @staticmethod
    async def mark_delivered(
        conn: Connection, destination: Destination, ids: Sequence[int]
    ) -> None:
        """Delete delivered rows (their device ids with them) and record the deliveries."""
        await conn.execute(
            _DELIVERED, destination.project_id, destination.destination_id, list(ids)
        )

    @staticmethod
    async def mark_failed(conn: Connection, destination: Destination, failure: Failure) -> None:
        pid = destination.project_id
        if failure.retry:
            await conn.execute(
                _RETRY_LATER,
                pid,
                failure.error,
                [i for i, _ in failure.retry],
                [w for _, w in failure.retry],
            )
        if failure.dead:
            await conn.execute(_TO_DEAD_LETTERS, pid, failure.error, list(failure.dead))
        if failure.destination_wait_s > 0:
            await conn.execute(
                _DESTINATION_WAIT, pid, destination.destination_id, failure.destination_wait_s
            )

    async def expire_outbox(self, *, batch_rows: int = 1000) -> list[uuid.UUID]:
        """Move rows past their project's forward_queue_days to the dead letters; the
        destination of each."""
        gone: list[uuid.UUID] = []
        async with self.pool.acquire() as conn:
            while True:
                rows = await conn.fetch(_EXPIRE_PENDING, batch_rows)
                gone.extend(r["destination_id"] for r in rows)
                if len(rows) < batch_rows:
                    return gone

    async def outbox_stats(self) -> dict[tuple[uuid.UUID, uuid.UUID], QueueStats]:
        """Every destination's outbox, by (project, destination), for the metrics."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_ALL_QUEUE_STATS)
        return {(r["project_id"], r["destination_id"]): _queue_stats(r) for r in rows}


async def erase_forwarding(
    conn: Connection, project_id: uuid.UUID, message_ids: Sequence[str], *, batch_rows: int
) -> tuple[int, list[dict[str, Any]]]:
    """A person's outbox rows (waiting or dead) and delivery records, by the message ids of
    their erased events: (outbox rows deleted, per destination what had been delivered).

    Run after the events are deleted: an outbox row in flight is locked by its delivery, so
    the DELETE waits for it and the delivery it records is counted here."""
    queued = 0
    delivered: dict[uuid.UUID, list[datetime]] = {}
    for start in range(0, len(message_ids), batch_rows):
        chunk = list(message_ids[start : start + batch_rows])
        status: str = await conn.execute(_ERASE_OUTBOX, project_id, chunk)
        queued += int(status.split()[-1])
        for r in await conn.fetch(_ERASE_DELIVERIES, project_id, chunk):
            delivered.setdefault(r["destination_id"], []).append(r["delivered_at"])
    if not delivered:
        return queued, []
    names = {r["id"]: r for r in await conn.fetch(_DESTINATION_NAMES, project_id, list(delivered))}
    forwarded = []
    for destination_id, times in sorted(delivered.items(), key=lambda kv: min(kv[1])):
        known = names.get(destination_id)
        forwarded.append(
            {
                "destination_id": str(destination_id),
                # A destination deleted since is still listed: the events did reach it.
                "name": known["name"] if known else None,
                "type": known["type"] if known else None,
                "events_delivered": len(times),
                "first_delivered_at": min(times).isoformat(),
                "last_delivered_at": max(times).isoformat(),
            }
        )
    return queued, forwarded


async def purge_forwarding(
    conn: Connection,
    project_id: uuid.UUID,
    *,
    dead_before: datetime,
    received_before: datetime,
    batch_rows: int,
) -> tuple[int, int]:
    """Dead letters past their keeping, and delivery records past the events' retention:
    (dead letters deleted, deliveries deleted)."""
    dead = deliveries = 0
    while True:
        status: str = await conn.execute(_PURGE_DEAD_LETTERS, project_id, dead_before, batch_rows)
        n = int(status.split()[-1])
        dead += n
        if n < batch_rows:
            break
    while True:
        status = await conn.execute(_PURGE_DELIVERIES, project_id, received_before, batch_rows)
        n = int(status.split()[-1])
        deliveries += n
        if n < batch_rows:
            break
    return dead, deliveries
