"""Bulk deletes (expired data, deleted projects), in short batches so writers never wait long."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import asyncpg

from ingest.store._db import Connection, StoreBase
from ingest.store.forwarding import purge_forwarding
from ingest.store.idempotency import _DELETE_EXPIRED_IDEMPOTENCY
from ingest.store.tenancy import DEFAULT_EVENTS_RETENTION_DAYS
from ingest.store.writes import _SUBJECT_BARRIER, SUBJECT_LOCK


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
    dead_letters_deleted: int = 0
    deliveries_deleted: int = 0
    projects_finished: int = 0
    is_skipped: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "partitions_dropped": self.partitions_dropped,
            "partitions_deferred": self.partitions_deferred,
            "events_deleted": self.events_deleted,
            "dedup_deleted": self.dedup_deleted,
            "idempotency_deleted": self.idempotency_deleted,
            "dead_letters_deleted": self.dead_letters_deleted,
            "deliveries_deleted": self.deliveries_deleted,
            "projects_finished": self.projects_finished,
            "skipped": self.is_skipped,
        }


PURGE_BATCH_ROWS: Final = 5000
# One purge at a time: every worker's hourly task and `ingest purge` take this lock first.
PURGE_LOCK: Final = 7230003
_TRY_PURGE_LOCK: Final = f"SELECT pg_try_advisory_lock({PURGE_LOCK})"
_RELEASE_PURGE_LOCK: Final = f"SELECT pg_advisory_unlock({PURGE_LOCK})"
# How long a partition DROP may wait for its lock on events while writers queue behind it.
_SET_PURGE_LOCK_TIMEOUT: Final = "SET LOCAL lock_timeout = '2s'"
_PARTITION_NAME: Final = re.compile(r"events_p(\d{8})")

_PROJECT_RETENTIONS: Final = """
    SELECT id, events_retention_days, dedup_window_days, dead_letter_days
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

# A project's small tables, deleted in one statement each. The outbox goes before its
# destinations (whose DELETE would otherwise cascade to it).
_DELETE_PROJECT_ROWS: Final = (
    ("outbox", "DELETE FROM outbox WHERE project_id = $1"),
    ("deliveries", "DELETE FROM deliveries WHERE project_id = $1"),
    ("destinations", "DELETE FROM destinations WHERE project_id = $1"),
    ("user_profiles", "DELETE FROM user_profiles WHERE project_id = $1"),
    ("suppressions", "DELETE FROM suppressions WHERE project_id = $1"),
    ("erasures", "DELETE FROM erasures WHERE project_id = $1"),
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


class RetentionMixin(StoreBase):
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

    async def purge(
        self,
        now: datetime | None = None,
        *,
        batch_rows: int = PURGE_BATCH_ROWS,
    ) -> PurgeResult:
        """Delete what is past each project's retention; see the README's Retention section.

        1. Daily partitions of ``events`` whose whole day is past the longest events retention
           of any project are dropped.
        2. Per project, events past its own retention are deleted from what remains (days
           kept for a longer-lived project, and the default partition), ``batch_rows`` a
           statement.
        3. Per project, message ids older than its dedup window are deleted, in batches too.
        4. Per project, forwarding's dead letters older than its ``dead_letter_days`` and the
           delivery records of events past its retention are deleted.

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
                events = dedup = dead_letters = deliveries = 0
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
                    dead, delivered = await purge_forwarding(
                        conn,
                        row["id"],
                        dead_before=now - timedelta(days=row["dead_letter_days"]),
                        received_before=_day_start(
                            today - timedelta(days=row["events_retention_days"])
                        ),
                        batch_rows=batch_rows,
                    )
                    dead_letters += dead
                    deliveries += delivered
                idempotency = await self._delete_batches(
                    conn, _DELETE_EXPIRED_IDEMPOTENCY, now, batch_rows
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
            dead_letters_deleted=dead_letters,
            deliveries_deleted=deliveries,
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
    async def _delete_batches(conn: Connection, query: str, *args: Any) -> int:
        """Run a batched DELETE until it deletes fewer rows than its batch size, which is its
        last argument (the inner SELECT found fewer: nothing matching is left)."""
        batch: int = args[-1]
        total = 0
        while True:
            status: str = await conn.execute(query, *args)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:
                return total

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
                "events": await self._delete_batches(
                    conn, _DELETE_PROJECT_EVENTS, project_id, batch_rows
                ),
                "message_ids": await self._delete_batches(
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
