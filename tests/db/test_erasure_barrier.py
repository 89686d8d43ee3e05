"""The erasure's barrier, deterministically: a writer transaction that claimed its rows before
the suppressions existed holds the erasure until it commits, and the erasure then deletes its
rows (RELIABILITY T17). The HTTP race test (tests/api/test_subjects.py) shows the same end to
end, but only catches a missing barrier now and then."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from ingest.config import Settings
from ingest.events import COLUMNS, EventParser, Limits, Row, Source
from ingest.pseudonyms import Kind
from ingest.store import (
    _CLAIM_EVENTS,
    SUBJECT_LOCK,
    Fate,
    Identifiers,
    Store,
    create_pool,
    init_connection,
)
from ingest.store.writes import claim_arrays
from tests.conftest import keyring_for_tests

# What the writer stores, on both of its paths (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("write_path")


def rows_for(project_id: uuid.UUID, user_id: str, n: int) -> list[Row]:
    parser = EventParser(Limits.from_settings(Settings()), lambda ip: None)
    source = Source(
        project_id=project_id,
        default_country=None,
        received_at=datetime.now(UTC),
        peer_geo=None,
    )
    items = [{"event": "e", "user_id": user_id, "message_id": str(uuid.uuid4())} for _ in range(n)]
    return parser.parse(items, source).rows


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(db_dsn, min_size=1, max_size=4, connect_timeout=5)
    store = Store(pool, keyring_for_tests())
    await store.ensure_partitions()
    yield store
    await pool.close()


@pytest.fixture
async def project(store: Store) -> tuple[uuid.UUID, uuid.UUID]:
    org_id, _ = await store.create_org("o")
    created, _ = await store.create_project(org_id, "p", None)
    return org_id, created.project_id


async def test_the_erasure_waits_for_a_writer_that_missed_its_suppressions(
    store: Store, project: tuple[uuid.UUID, uuid.UUID], db_dsn: str, conn: asyncpg.Connection
) -> None:
    org_id, project_id = project
    writer = await asyncpg.connect(db_dsn)
    await init_connection(writer)
    try:
        rows = rows_for(project_id, "u-1", 3)
        tx = writer.transaction()
        await tx.start()
        # The writer's claim, before any suppression exists: everything is claimed.
        claim = await writer.fetch(
            _CLAIM_EVENTS,
            *claim_arrays(rows, range(len(rows))),
            [],
            [],
            [],
            SUBJECT_LOCK,
        )
        assert [r["kind"] for r in claim] == []  # nothing unclaimed, dropped or missing
        assert await writer.fetchval("SELECT count(*) FROM event_dedup") == 3
        await writer.copy_records_to_table("events", records=rows, columns=COLUMNS)

        subject = Identifiers(user_ids={"u-1"})
        erasure = asyncio.create_task(
            store.erase_subject(
                org_id,
                project_id,
                subject,
                Kind.USER_ID,
                b"digest",
                erasure_id=uuid.uuid4(),
                key_id=None,
                request_id=None,
            )
        )
        # The suppressions commit at once; then the erasure waits on the writer's lock.
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM suppressions"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert not erasure.done(), "the erasure did not wait for the open writer transaction"

        await tx.commit()
        erased = await asyncio.wait_for(erasure, 10)
        assert erased is not None
        counts, identifiers, forwarded = erased
        assert forwarded == []
        assert counts["events"] == 3
        assert identifiers == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = 'u-1'") == 0
    finally:
        await writer.close()

    # And a writer after the erasure drops the user's rows, keeping the others.
    late = rows_for(project_id, "u-1", 2) + rows_for(project_id, "u-2", 1)
    async with store.pool.acquire() as c:
        fates = await store.writes.insert_events(c, late)
    assert fates == [Fate.SUPPRESSED, Fate.SUPPRESSED, Fate.STORED]
    assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = 'u-1'") == 0
    assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id = 'u-2'") == 1
