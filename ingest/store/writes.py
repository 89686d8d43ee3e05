"""The writer's write of a batch: one statement for a small one (sql/0009), else a transaction
of claim, suppression check, COPY and profile upsert."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import asyncpg
import orjson

from ingest import pseudonyms
from ingest.events import COLUMNS, DEVICES, Row
from ingest.keyring import Keyring, Sealer, holds_digest
from ingest.pseudonyms import Kind
from ingest.store._db import DIGEST_FIELDS, JSON_FIELDS, Connection
from ingest.store.copy import CopyPlan, copy_rows, pg_micros, plan_copy
from ingest.store.sealing import ProjectCrypto, projects_crypto


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
# deletion takes it exclusively for an instant (a barrier), see EventWrites.insert_events.
SUBJECT_LOCK: Final = 7230010

# Batches of at most this many rows are written by ingest_write_events (sql/0009) in one
# statement and one round trip; larger ones by the transaction below, whose binary COPY costs
# the service less per row. INGEST_WRITER_ONE_STATEMENT_EVENTS overrides it; read at each
# call (tests run both paths).
ONE_STATEMENT_MAX = 64

_WRITE_EVENTS: Final = """
    SELECT kind, idx, project
    FROM ingest_write_events($1::jsonb, $2::uuid[], $3::integer[], $4::bytea[], $5::uuid[],
                             $6::bytea[], $7::text[], $8::integer)
"""
# ingest_write_events: a project's keys changed after the writer read them (a crypto-shred,
# the service wrapping them, a change of digest storage); nothing was written.
_KEYS_CHANGED: Final = "IGKEY"
_CRYPTO_CACHE_MAX: Final = 10_000
_KEY_READS_MAX: Final = 5

# The claim of the COPY path. Its rows come as three arrays in claim order: the projects (the
# row's UUID objects), the message ids, and received_at as microseconds since 2000-01-01 UTC
# (timestamptz's own binary form; asyncpg encodes a datetime in Python code, an int in C).
# Instead of a 'claimed' row for each row it claimed (a batch's usual answer: a thousand
# records to decode), it answers 'unclaimed' for the positions whose message id was not
# claimed: the duplicates, usually none (and the dropped rows, which it names anyway).
_CLAIM_EVENTS: Final = """
    WITH c AS MATERIALIZED (
        SELECT *
        FROM ingest_claim_events(
            $1::uuid[],
            $2::text[],
            ARRAY(SELECT timestamptz '2000-01-01 00:00:00+00' + x * interval '1 microsecond'
                  FROM unnest($3::bigint[]) WITH ORDINALITY AS u(x, i) ORDER BY u.i),
            $4::uuid[], $5::integer[], $6::bytea[], $7::integer)
    )
    SELECT c.kind, c.idx, c.project, c.message FROM c WHERE c.kind <> 'claimed'
    UNION ALL
    SELECT 'unclaimed', b.i::integer, NULL::uuid, NULL::text
    FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS b(p, m, i)
    WHERE NOT EXISTS (
        SELECT 1 FROM c WHERE c.kind = 'claimed' AND c.project = b.p AND c.message = b.m
    )
"""

# The outbox holds a copy of the stored event (every column of events but the project, which
# leads), the destination it waits for, and the device ids that events never holds.
_OUTBOX_COLUMNS: Final = ("project_id", "destination_id", *COLUMNS[1:], "devices")

# Where a protected project's rows hold digests: the four columns, and the JSON ones.
_DIGEST_POSITIONS: Final = tuple(COLUMNS.index(c) for c in DIGEST_FIELDS)
_JSON_POSITIONS: Final = tuple(COLUMNS.index(c) for c in JSON_FIELDS)
# The same, as slices: both groups are adjacent columns (checked here), so that testing a row
# for digests is one tuple comparison and a scan of its JSON, instead of seven Python-level
# steps.
_DIGEST_SLICE: Final = slice(_DIGEST_POSITIONS[0], _DIGEST_POSITIONS[-1] + 1)
_JSON_SLICE: Final = slice(_JSON_POSITIONS[0], _JSON_POSITIONS[-1] + 1)
_NO_DIGESTS: Final = (None,) * len(_DIGEST_POSITIONS)
_FIRST_JSON: Final = _JSON_POSITIONS[0]
_PROPERTIES: Final = COLUMNS.index("properties")
_CONTEXT: Final = COLUMNS.index("context")
if (
    tuple(range(len(COLUMNS))[_DIGEST_SLICE]) != _DIGEST_POSITIONS
    or tuple(range(len(COLUMNS))[_JSON_SLICE]) != _JSON_POSITIONS
):
    raise ImportError("events.COLUMNS: the digest and JSON columns must each be adjacent")
if _JSON_SLICE.stop != len(COLUMNS):  # the layout ingest_batch_rows reads (sql/0009)
    raise ImportError("events.COLUMNS: the JSON columns must come last")
_KEY_CACHE_MAX: Final = 100_000

_SUBJECT_BARRIER: Final = "SELECT pg_advisory_xact_lock($2::integer, hashtext($1::uuid::text))"

# The identify rows' traits merged into their users' profiles: the rows come as one JSON array
# of [project, user id, traits, received_at] in arrival order (encoded in C, the traits
# embedded as they are: four array parameters cost asyncpg a Python-level step per element,
# and merging in Python a decode and an encode per row). A user's traits are merged in arrival
# order (later keys win, as dict.update), their first row's time is the profile's; users are
# upserted in the order of (project, user id) in code points, as ingest_write_events does
# (sql/0009), so that writers never deadlock on user_profiles.
_UPSERT_PROFILES: Final = """
    INSERT INTO user_profiles AS u (project_id, user_id, traits, created_at, updated_at)
    SELECT x.p, x.u, ingest_jsonb_merge(x.t ORDER BY x.i),
           (array_agg(x.r ORDER BY x.i))[1], (array_agg(x.r ORDER BY x.i))[1]
    FROM (
        SELECT (e.r->>0)::uuid AS p, e.r->>1 AS u, e.r->2 AS t, (e.r->>3)::timestamptz AS r, e.i
        FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(r, i)
    ) AS x
    GROUP BY x.p, x.u
    ORDER BY x.p, x.u COLLATE "C"
    ON CONFLICT (project_id, user_id) DO UPDATE
    SET traits = u.traits || EXCLUDED.traits,
        updated_at = EXCLUDED.updated_at
"""


class EventWrites:
    """The writer's transaction. Keeps, per process, what never changes or only grows: the
    projects' pseudonym keys, and which projects have suppressions (so that the usual batch,
    for projects with none, costs no keyed digest at all)."""

    def __init__(
        self, keyring: Keyring | None = None, *, one_statement_max: int | None = None
    ) -> None:
        self.keyring = keyring
        # None: ONE_STATEMENT_MAX, read at each call.
        self.one_statement_max = one_statement_max
        self._keys: dict[uuid.UUID, bytes] = {}
        self._suppressing: set[uuid.UUID] = set()
        # The one-statement path's project keys, checked by the database at each use.
        self._crypto: dict[uuid.UUID, ProjectCrypto] = {}
        # Per table, how its rows go over the binary COPY (read from the catalog once).
        self._copy_plans: dict[str, CopyPlan] = {}
        # Called after a transaction that wrote outbox rows commits: the service's forwarder
        # wakes up instead of waiting for its next poll.
        self.on_outbox: Callable[[], None] | None = None

    async def insert_events(self, conn: Connection, rows: Sequence[Row]) -> list[Fate]:
        """Store rows not seen before in one transaction, unless their project is gone or they
        name a suppressed person; update the current state of identified users. Per row, its
        fate. Raises on any database error.

        The claim (ingest_claim_events, sql/0004) first takes a shared per-project lock, which
        is what an erasure waits on (Store.erase_subject): once the erasure's suppressions are
        committed and it has held the lock, every later claim sees them, and every earlier one
        has committed rows that the erasure's DELETE sees.
        """
        if not rows:
            return []
        limit = ONE_STATEMENT_MAX if self.one_statement_max is None else self.one_statement_max
        if len(rows) <= limit:
            return await self._write_one_statement(conn, rows)
        # Sorted claims take row locks in one order across writer connections: no deadlocks.
        order = claim_order(rows)
        claimed = claim_arrays(rows, order)
        async with conn.transaction():
            while True:
                claim = await conn.fetch(
                    _CLAIM_EVENTS,
                    *claimed,
                    *await self._digests(conn, rows, order),
                    SUBJECT_LOCK,
                )
                need = {r["project"] for r in claim if r["kind"] == "need_digests"}
                if not need:
                    break
                self._suppressing |= need  # suppressions are kept until the project goes
            dropped = {order[r["idx"] - 1] for r in claim if r["kind"] == "dropped"}
            unclaimed = {order[r["idx"] - 1] for r in claim if r["kind"] == "unclaimed"}
            destinations = _destinations(claim)
            # Read inside the transaction, after the claim's shared subject lock: a crypto-shred
            # that committed before it is seen, and one after it waits for this commit. Only for
            # the projects of stored rows that hold a digest: most batches need no read at all.
            # The rows to seal: most hold no digest at all and are stored as they are.
            contexts: dict[bytes, bool] = {}
            digested = {i for i, row in enumerate(rows) if _holds_digest(row, contexts)}
            sealing = {rows[i][0] for i in digested if i not in dropped and i not in unclaimed}
            crypto = await projects_crypto(conn, self.keyring, sorted(sealing)) if sealing else {}
            fates: list[Fate] = []
            records: list[Row] = []
            outbox: list[Row] = []
            # Per project: the message ids stored from this batch, its digest -> sealed memo.
            stored: dict[uuid.UUID, set[str]] = {}
            memos: dict[uuid.UUID, dict[str, str]] = {}
            # What is looked up per project is looked up once per run of rows carrying the same
            # project id object (a request's rows share one): uuid.UUID hashes in Python code,
            # and six lookups a row cost more than the rest of this loop.
            project: uuid.UUID | None = None
            seen: set[str] = set()
            memo: dict[str, str] = {}
            sealer: Sealer | None = None
            routes: Sequence[tuple[uuid.UUID, frozenset[str] | None]] = ()
            for index, row in enumerate(rows):
                if row[0] is not project:
                    project = row[0]
                    seen = stored.setdefault(project, set())
                    memo = memos.setdefault(project, {})
                    found = crypto.get(project)
                    sealer = found.seals if found is not None else None
                    routes = destinations.get(project, ())
                if index in dropped:
                    fates.append(Fate.SUPPRESSED)
                elif index in unclaimed or row[2] in seen:
                    # Claimed before, or a second copy inside the same batch.
                    fates.append(Fate.DUPLICATE)
                else:
                    seen.add(row[2])
                    fates.append(Fate.STORED)
                    # The row as it is (the COPY leaves out its device ids, the last value),
                    # or sealed.
                    record = (
                        row
                        if sealer is None or index not in digested
                        else _sealed(row, sealer, memo)
                    )
                    records.append(record)
                    for destination, types in routes:
                        if types is None or row[_TYPE] in types:
                            outbox.append((row[0], destination, *record[1:DEVICES], row[DEVICES]))
            if records:
                await copy_rows(conn, await self._copy_plan(conn, "events", COLUMNS), records)
                await _update_profiles(conn, records)
            if outbox:
                await copy_rows(
                    conn, await self._copy_plan(conn, "outbox", _OUTBOX_COLUMNS), outbox
                )
        if outbox and self.on_outbox is not None:
            self.on_outbox()
        return fates

    async def _write_one_statement(self, conn: Connection, rows: Sequence[Row]) -> list[Fate]:
        """insert_events for a small batch: ingest_write_events does the claim, the insert, the
        outbox and the profiles in one statement (sql/0009). The rows are sealed before it,
        with keys kept from earlier batches; the statement refuses them if the keys changed
        since, and they are read again."""
        order = claim_order(rows)
        ordered = [rows[i] for i in order]
        contexts: dict[bytes, bool] = {}
        digested = [i for i, row in enumerate(ordered) if _holds_digest(row, contexts)]
        for attempt in itertools.count(1):
            if attempt > _KEY_READS_MAX:
                # Keys replaced again between each read and write: never seen unless something
                # rewrites them in a loop; the requests get 500 rather than a stuck writer.
                raise RuntimeError("the projects' keys kept changing while being written")
            crypto = await self._crypto_of(conn, {ordered[i][0] for i in digested})
            records = ordered
            if digested:
                records = list(ordered)
                memos: dict[uuid.UUID, dict[str, str]] = {}
                for i in digested:
                    row = ordered[i]
                    found = crypto.get(row[0])
                    sealer = found.seals if found is not None else None
                    if sealer is not None:
                        memo = memos.setdefault(row[0], {})
                        records[i] = (*_sealed(row, sealer, memo), row[DEVICES])
            projects = sorted(crypto)
            try:
                answer = await conn.fetch(
                    _WRITE_EVENTS,
                    _batch_json(records, order),
                    *await self._digests(conn, ordered, range(len(ordered))),
                    projects,
                    [crypto[p].wrapped for p in projects],
                    [crypto[p].storage for p in projects],
                    SUBJECT_LOCK,
                )
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != _KEYS_CHANGED:
                    raise
                for project in projects:
                    self._crypto.pop(project, None)
                continue
            need = {r["project"] for r in answer if r["kind"] == "need_digests"}
            if not need:
                break
            self._suppressing |= need
        fates = [Fate.DUPLICATE] * len(rows)
        queued = False
        for r in answer:
            if r["kind"] == "stored":
                fates[order[r["idx"] - 1]] = Fate.STORED
            elif r["kind"] == "dropped":
                fates[order[r["idx"] - 1]] = Fate.SUPPRESSED
            elif r["kind"] == "outbox":
                queued = True
        if queued and self.on_outbox is not None:
            self.on_outbox()
        return fates

    async def _copy_plan(self, conn: Connection, table: str, columns: Sequence[str]) -> CopyPlan:
        plan = self._copy_plans.get(table)
        if plan is None:
            plan = self._copy_plans[table] = await plan_copy(conn, table, columns)
        return plan

    async def _crypto_of(
        self, conn: Connection, projects: set[uuid.UUID]
    ) -> dict[uuid.UUID, ProjectCrypto]:
        """The keys of ``projects`` (those that exist), from memory when read before."""
        missing = [p for p in projects if p not in self._crypto]
        if missing:
            if len(self._crypto) > _CRYPTO_CACHE_MAX:
                self._crypto.clear()
            self._crypto.update(await projects_crypto(conn, self.keyring, sorted(missing)))
        return {p: self._crypto[p] for p in projects if p in self._crypto}

    async def _digests(
        self, conn: Connection, rows: Sequence[Row], order: Sequence[int]
    ) -> tuple[list[uuid.UUID], list[int], list[bytes]]:
        """(projects given digests, 1-based positions in ``order``, keyed digests) for the
        rows of projects known to have suppressions."""
        if not self._suppressing:
            return [], [], []  # no project known to have suppressions: no row's projects read
        projects = sorted({rows[i][0] for i in order} & self._suppressing)
        if not projects:
            return [], [], []
        missing = [p for p in projects if p not in self._keys]
        if missing:
            if len(self._keys) > _KEY_CACHE_MAX:
                self._keys.clear()
            # A project's pseudonym key never changes (a crypto-shred replaces the data key).
            for project, found in (await projects_crypto(conn, self.keyring, missing)).items():
                self._keys[project] = found.pseudonym
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


def claim_order(rows: Sequence[Row]) -> list[int]:
    """The rows' positions in the order their claims lock: by (project, message id), ties in
    arrival order. When every row carries the same project id object (a batch of one project's
    requests, the usual case), by message id alone: the same order, sorted on strings instead
    of on (uuid, str) tuples built by a call per row (0.11 us a row against 0.30 to 0.36)."""
    if not rows:
        return []
    first = rows[0][0]
    if all(row[0] is first for row in rows):
        message_ids = [row[2] for row in rows]
        return sorted(range(len(rows)), key=message_ids.__getitem__)
    keys = [(row[0], row[2]) for row in rows]
    return sorted(range(len(rows)), key=keys.__getitem__)


def claim_arrays(
    rows: Sequence[Row], order: Sequence[int]
) -> tuple[list[uuid.UUID], list[str], list[int]]:
    """The COPY path's claim (_CLAIM_EVENTS' $1 to $3): the projects, message ids and
    received_at (in microseconds since 2000) of ``rows`` in ``order``."""
    projects: list[uuid.UUID] = []
    messages: list[str] = []
    received: list[int] = []
    micros: dict[datetime, int] = {}  # a request's rows share one received_at
    for i in order:
        row = rows[i]
        projects.append(row[0])
        messages.append(row[2])
        at = row[1]
        m = micros.get(at)
        if m is None:
            m = micros[at] = pg_micros(at)
        received.append(m)
    return projects, messages, received


def _batch_json(records: Sequence[Row], arrival: Sequence[int]) -> bytes:
    """ingest_write_events' rows (sql/0009): each row's columns, its device ids and its place in
    arrival order, as one JSON array. Encoded JSON columns are embedded as they are."""
    names: dict[uuid.UUID, str] = {}
    return orjson.dumps(
        [
            [
                _text(names, row[0]),
                *row[1:_FIRST_JSON],
                *map(orjson.Fragment, row[_JSON_SLICE]),
                None if row[DEVICES] is None else orjson.Fragment(row[DEVICES]),
                place,
            ]
            for row, place in zip(records, arrival, strict=True)
        ]
    )


def _text(names: dict[uuid.UUID, str], project: uuid.UUID) -> str:
    """A project id as JSON text. orjson writes only uuid.UUID itself, and asyncpg returns its
    own subclass; str() is Python code, so once per project and batch (``names``)."""
    found = names.get(project)
    if found is None:
        found = names[project] = str(project)
    return found


def _holds_digest(row: Row, contexts: dict[bytes, bool]) -> bool:
    """Whether the row holds a digest a protected project seals. ``contexts`` is the batch's
    verdict per context: the events of an SDK batch share theirs (events.py stores one for
    them all), a few hundred bytes scanned once instead of once a row."""
    if row[_DIGEST_SLICE] != _NO_DIGESTS:
        return True
    context = row[_CONTEXT]
    found = contexts.get(context)
    if found is None:
        found = contexts[context] = holds_digest(context)
    return found or holds_digest(row[_PROPERTIES]) or holds_digest(row[_TRAITS])


def _sealed(row: Row, sealer: Sealer, memo: dict[str, str]) -> Row:
    """The row as a protected project stores it: every digest sealed, in its columns and in
    its JSON (what suppression checks read is the plain row, before this). ``memo`` is the
    batch's, for the project: each distinct digest is sealed once."""
    out = list(row[:DEVICES])
    for i in _DIGEST_POSITIONS:
        out[i] = sealer.seal_optional(out[i], memo)
    for i in _JSON_POSITIONS:
        out[i] = sealer.seal_json(out[i], memo)
    return tuple(out)


def _destinations(
    claim: Sequence[Any],
) -> dict[uuid.UUID, list[tuple[uuid.UUID, frozenset[str] | None]]]:
    """The claim's 'destination' answers: per project, each destination and the event types it
    takes (None: every type)."""
    found: dict[uuid.UUID, list[tuple[uuid.UUID, frozenset[str] | None]]] = {}
    for r in claim:
        if r["kind"] != "destination":
            continue
        ident, _, types = r["message"].partition(":")
        found.setdefault(r["project"], []).append(
            (uuid.UUID(ident), frozenset(types.split(",")) if types else None)
        )
    return found


async def _update_profiles(conn: Connection, records: Sequence[Row]) -> None:
    """Merge the traits of stored identify events into their users' current state, in
    arrival order (a corrected identify overwrites what it names; the events stay as sent)."""
    names: dict[uuid.UUID, str] = {}
    identities = [
        [_text(names, row[0]), row[_USER_ID], orjson.Fragment(row[_TRAITS]), row[_RECEIVED_AT]]
        for row in records
        if row[_TYPE] == "identify" and row[_USER_ID] is not None
    ]
    if identities:
        await conn.execute(_UPSERT_PROFILES, orjson.dumps(identities))
