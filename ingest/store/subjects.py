"""Data-subject requests: a person's export, profile and erasure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from ingest import pseudonyms
from ingest.keyring import Sealer
from ingest.pseudonyms import Kind
from ingest.store._db import DIGEST_FIELDS, EVENT_SELECT, Connection, _iso, _one, open_event
from ingest.store.forwarding import erase_forwarding
from ingest.store.retention import PURGE_BATCH_ROWS
from ingest.store.sealing import SealingMixin
from ingest.store.writes import _SUBJECT_BARRIER, SUBJECT_LOCK


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

    def args(
        self, sealer: Sealer | None = None
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """The statement arguments that find these identifiers: emails and phones in every
        form a row may hold them (plain, and sealed when the project has a sealer)."""
        emails, phones = sorted(self.emails), sorted(self.phones)
        if sealer is not None:
            emails, phones = sealer.lookup_forms(emails), sealer.lookup_forms(phones)
        return sorted(self.user_ids), sorted(self.anonymous_ids), emails, phones

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
    # Per destination, what had already been delivered before the erasure (GDPR Art. 19: the
    # partner passes the erasure on to those recipients).
    forwarded: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.erasure_id),
            "project_id": str(self.project_id),
            "subject": {"kind": self.subject_kind, "digest": self.subject_digest.hex()},
            "request_id": self.request_id,
            "status": self.status,
            "deleted": self.counts,
            "identifiers_suppressed": self.identifiers,
            "forwarded": self.forwarded,
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
        list(row["forwarded"]),
    )


# One page of a person's events, oldest first, after the (received_at, message_id) cursor.
# Each names one identifier column, so each page is one index range scan.
_EVENTS_PAGE: Final = {
    column: f"""
    SELECT {EVENT_SELECT}
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

# How many events name a person, by the columns their kind of identifier is stored in.
_COUNT_EVENTS: Final[dict[tuple[str, ...], str]] = {
    columns: f"""
    SELECT count(*)
    FROM events
    WHERE project_id = $1
      AND ({" OR ".join(f"{c} = ANY($2::text[])" for c in columns)})
"""
    for columns in (
        ("user_id",),
        ("anonymous_id",),
        ("email_sha256", "email_google_sha256"),
        ("phone_sha256", "phone_e164_sha256"),
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
    requested_at, completed_at, forwarded
"""

_COMPLETE_ERASURE: Final = f"""
    UPDATE erasures
    SET status = 'completed', counts = $3, identifiers = $4, forwarded = $5, completed_at = now()
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


class SubjectsMixin(SealingMixin):
    async def events_pages(
        self,
        project_id: uuid.UUID,
        column: str,
        values: Sequence[str],
        *,
        page_rows: int = 1000,
        sealer: Sealer | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The events whose ``column`` is one of ``values``, oldest first, a page at a time,
        with sealed digests opened (``sealer``: the project's). Each page is its own short
        query (no transaction spans the export), so an export never pins vacuum or blocks a
        partition drop."""
        query = _EVENTS_PAGE[column]
        wanted = list(values)
        if sealer is not None and column in DIGEST_FIELDS:
            wanted = sealer.lookup_forms(wanted)
        after: tuple[datetime, str] = (datetime(1, 1, 1, tzinfo=UTC), "")
        while True:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(query, project_id, wanted, *after, page_rows)
            if not rows:
                return
            yield [open_event(sealer, dict(row)) for row in rows]
            if len(rows) < page_rows:
                return
            after = (rows[-1]["received_at"], rows[-1]["message_id"])

    async def subject_barrier(self, project_id: uuid.UUID) -> None:
        """Wait until every writer transaction that holds the project's subject lock ends."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_SUBJECT_BARRIER, project_id, SUBJECT_LOCK)

    async def count_events(
        self,
        project_id: uuid.UUID,
        columns: tuple[str, ...],
        values: Sequence[str],
        sealer: Sealer | None = None,
    ) -> int:
        """How many of the project's events hold one of ``values`` in one of ``columns`` (the
        columns of one kind of identifier, as the export reads them)."""
        wanted = list(values)
        if sealer is not None and columns[0] in DIGEST_FIELDS:
            wanted = sealer.lookup_forms(wanted)
        async with self.pool.acquire() as conn:
            found = await conn.fetchval(_COUNT_EVENTS[columns], project_id, wanted)
        return int(found)

    async def profile(
        self, project_id: uuid.UUID, user_id: str, sealer: Sealer | None = None
    ) -> Profile | None:
        """The user's current state (digests in traits opened with ``sealer``); None when the
        project holds nothing about them."""
        async with self.pool.acquire() as conn:
            state = await conn.fetchrow(_USER_PROFILE, project_id, user_id)
            span = _one(await conn.fetchrow(_USER_SPAN, project_id, user_id))
        if state is None and span["events"] == 0:
            return None
        return Profile(
            user_id,
            (sealer.open_tree(dict(state["traits"])) if sealer else dict(state["traits"]))
            if state
            else {},
            span["events"],
            span["first_seen"],
            span["last_seen"],
            state["updated_at"] if state else None,
        )

    @staticmethod
    async def _linked(
        conn: Connection, project_id: uuid.UUID, subject: Identifiers, sealer: Sealer | None
    ) -> Identifiers:
        """What the subject's events link them to, emails and phones as plain hex (a sealed one
        that no longer opens, after a crypto-shred, names nobody any more and is left out)."""

        def plain(value: str | None) -> str | None:
            return sealer.open_optional(value) if sealer is not None else value

        found = Identifiers()
        for row in await conn.fetch(_LINKED_IDENTIFIERS, project_id, *subject.args(sealer)):
            if row["user_id"] is not None:
                found.user_ids.add(row["user_id"])
            if row["anonymous_id"] is not None:
                found.anonymous_ids.add(row["anonymous_id"])
            if row["previous_id"] is not None:
                # An alias's previous id was an anonymous id or an older user id.
                found.user_ids.add(row["previous_id"])
                found.anonymous_ids.add(row["previous_id"])
            for column in ("email_sha256", "email_google_sha256"):
                if (email := plain(row[column])) is not None:
                    found.emails.add(email)
            for column in ("phone_sha256", "phone_e164_sha256"):
                if (phone := plain(row[column])) is not None:
                    found.phones.add(phone)
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
    ) -> tuple[dict[str, int], int, list[dict[str, Any]]] | None:
        """Erase a person from a project; (counts per data class, identifiers suppressed,
        what had reached each destination), or None when the project is missing. The caller
        completes the receipt.

        The order is what keeps a racing event out (RELIABILITY T17): (1) commit the
        suppressions of every identifier that names the person (and those their events link
        to); (2) wait on the project's subject lock, so every writer transaction that might not
        have seen them has committed; (3) delete. Writers check the suppressions inside their
        own transaction, so nothing for the person is stored afterwards.
        """
        crypto = await self.project_crypto(project_id, org_id)
        if crypto is None:
            return None
        key, sealer = crypto.pseudonym, crypto.sealer
        async with self.pool.acquire() as conn:
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
                everyone.merge(await self._linked(conn, project_id, subject, sealer))
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
                if not everyone.merge(await self._linked(conn, project_id, subject, sealer)):
                    break
            message_ids: list[str] = []
            while True:
                deleted = await conn.fetch(
                    _DELETE_SUBJECT_EVENTS, project_id, *everyone.args(sealer), batch_rows
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
            queued, forwarded = await erase_forwarding(
                conn, project_id, message_ids, batch_rows=batch_rows
            )
            counts = {
                "events": len(message_ids),
                "message_ids": dedup,
                "user_profiles": int(status.split()[-1]),
                # Outbox rows, waiting or dead, device ids included. Nothing else holds a
                # person's data: the idempotency cache keeps no request body (see README).
                "forward_queue": queued,
            }
        return counts, len(everyone), forwarded

    @staticmethod
    async def complete_erasure(
        conn: Connection,
        project_id: uuid.UUID,
        erasure_id: uuid.UUID,
        counts: dict[str, int],
        identifiers: int,
        forwarded: list[dict[str, Any]],
    ) -> Receipt:
        row = await conn.fetchrow(
            _COMPLETE_ERASURE, project_id, erasure_id, counts, identifiers, forwarded
        )
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
