"""Retention per project: whole partitions dropped past the longest retention, rows of
shorter-lived projects deleted in batches, message ids past each project's window, and a purge
under write load that loses nothing."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app, maintain_once
from ingest.config import Settings
from ingest.metrics import Metrics
from ingest.store import PURGE_LOCK, Store, create_pool, partition_name
from tests.conftest import bearer, client_for, keyring_for_tests

TODAY = datetime.now(UTC).date()


@pytest.fixture(autouse=True)
def _today() -> None:
    """TODAY is read when each test starts, not when the module is imported: a session that
    crosses midnight UTC would otherwise purge with a later day than the data was laid out for."""
    global TODAY  # the tests read it as a module constant
    TODAY = datetime.now(UTC).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(db_dsn, min_size=1, max_size=4, connect_timeout=5)
    store = Store(pool, keyring_for_tests())
    await store.ensure_partitions()
    yield store
    await pool.close()


async def add_project(
    conn: asyncpg.Connection, events_days: int = 395, dedup_days: int = 7
) -> uuid.UUID:
    org_id = await conn.fetchval(
        "INSERT INTO organizations (id, name) VALUES (gen_random_uuid(), 'o') "
        "ON CONFLICT DO NOTHING RETURNING id"
    )
    project_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO projects (id, org_id, name, events_retention_days, dedup_window_days) "
        "VALUES ($1, $2, 'p', $3, $4)",
        project_id,
        org_id,
        events_days,
        dedup_days,
    )
    return project_id


async def add_partitions(conn: asyncpg.Connection, first: date, last: date) -> None:
    await conn.execute("SELECT ingest_ensure_event_partitions($1, $2)", first, last)


async def add_events(
    conn: asyncpg.Connection, project_id: uuid.UUID, day: date, n: int, prefix: str = "old"
) -> None:
    """``n`` events received at noon of ``day``."""
    await conn.execute(
        "INSERT INTO events (project_id, received_at, message_id, type, event, timestamp) "
        "SELECT $1, $2, $3 || g, 'track', 'e', $2 FROM generate_series(1, $4) AS g",
        project_id,
        day_start(day) + timedelta(hours=12),
        f"{prefix}-{day}-",
        n,
    )


async def count_events(conn: asyncpg.Connection, project_id: uuid.UUID, day: date) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM events WHERE project_id = $1 "
        "AND received_at >= $2 AND received_at < $2 + interval '1 day'",
        project_id,
        day_start(day),
    )
    return count


async def partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass"
    )
    return {r["relname"] for r in rows}


class TestEvents:
    async def test_partitions_past_the_longest_retention_are_dropped_whole(
        self, store: Store, conn: asyncpg.Connection
    ) -> None:
        long = await add_project(conn, events_days=30)
        short = await add_project(conn, events_days=10)
        await add_partitions(conn, TODAY - timedelta(days=40), TODAY)
        for project_id in (long, short):
            for age in (35, 31, 30, 20, 5):
                await add_events(conn, project_id, TODAY - timedelta(days=age), 3)

        result = await store.purge()

        # Days 40..31 ago are past 30 days for every project: ten partitions dropped whole.
        assert result.partitions_dropped == 10
        assert result.partitions_deferred == 0
        left = await partitions(conn)
        assert partition_name(TODAY - timedelta(days=31)) not in left
        assert partition_name(TODAY - timedelta(days=30)) in left
        # The longest-lived project's expiry falls on a partition boundary: no row delete.
        assert [await count_events(conn, long, TODAY - timedelta(days=a)) for a in (30, 20, 5)] == [
            3,
            3,
            3,
        ]
        # The shorter-lived one's rows go from the partitions that remain.
        assert [
            await count_events(conn, short, TODAY - timedelta(days=a)) for a in (30, 20, 5)
        ] == [0, 0, 3]
        assert result.events_deleted == 6

    async def test_a_project_with_a_shorter_retention_loses_its_rows_in_batches(
        self, store: Store, conn: asyncpg.Connection
    ) -> None:
        """Rows in the partitions kept for others, and in the default partition (a day that
        had no partition), are deleted ``batch_rows`` at a time; nobody else's are touched."""
        keeper = await add_project(conn)
        brief = await add_project(conn, events_days=2)
        await add_partitions(conn, TODAY - timedelta(days=10), TODAY)
        for project_id in (keeper, brief):
            await add_events(conn, project_id, TODAY - timedelta(days=5), 23)
            await add_events(conn, project_id, TODAY - timedelta(days=100), 11)  # default
            await add_events(conn, project_id, TODAY - timedelta(days=2), 4)
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 22

        result = await store.purge(batch_rows=5)

        assert result.partitions_dropped == 0
        assert result.events_deleted == 23 + 11
        assert await count_events(conn, brief, TODAY - timedelta(days=5)) == 0
        assert await count_events(conn, brief, TODAY - timedelta(days=100)) == 0
        assert await count_events(conn, brief, TODAY - timedelta(days=2)) == 4
        for age in (5, 100, 2):
            assert await count_events(conn, keeper, TODAY - timedelta(days=age)) > 0
        again = await store.purge(batch_rows=5)
        assert (again.partitions_dropped, again.events_deleted) == (0, 0)

    async def test_a_busy_partition_is_deferred_not_waited_for(
        self, store: Store, conn: asyncpg.Connection, db_dsn: str
    ) -> None:
        """A long transaction on an expired partition: the DROP gives up after its lock
        timeout and the next run drops it; nothing fails."""
        await add_project(conn, events_days=1)
        old = TODAY - timedelta(days=5)
        await add_partitions(conn, old, old)
        reader = await asyncpg.connect(db_dsn)
        try:
            tr = reader.transaction()
            await tr.start()
            await reader.execute(f"LOCK TABLE {partition_name(old)} IN ACCESS SHARE MODE")
            busy = await store.purge()
            await tr.rollback()
        finally:
            await reader.close()
        assert (busy.partitions_dropped, busy.partitions_deferred) == (0, 1)
        later = await store.purge()
        assert (later.partitions_dropped, later.partitions_deferred) == (1, 0)
        assert partition_name(old) not in await partitions(conn)

    async def test_one_purge_at_a_time(
        self, store: Store, conn: asyncpg.Connection, db_dsn: str
    ) -> None:
        other = await asyncpg.connect(db_dsn)
        try:
            await other.execute("SELECT pg_advisory_lock($1)", PURGE_LOCK)
            assert (await store.purge()).is_skipped
        finally:
            await other.close()
        assert not (await store.purge()).is_skipped


class TestDedup:
    async def test_message_ids_older_than_their_projects_window_are_forgotten(
        self, store: Store, conn: asyncpg.Connection
    ) -> None:
        short = await add_project(conn, dedup_days=1)
        long = await add_project(conn, dedup_days=30)
        now = datetime.now(UTC)
        for project_id in (short, long):
            await conn.executemany(
                "INSERT INTO event_dedup (project_id, message_id, received_at) VALUES ($1, $2, $3)",
                [
                    (project_id, f"m{i}", now - timedelta(days=age))
                    for i, age in enumerate([2, 2, 2, 40, 0.5])
                ],
            )

        result = await store.purge(batch_rows=2)

        assert result.dedup_deleted == 4 + 1
        left = await conn.fetch(
            "SELECT project_id, message_id FROM event_dedup ORDER BY project_id, message_id"
        )
        assert {(r["project_id"], r["message_id"]) for r in left} == {
            (short, "m4"),
            (long, "m0"),
            (long, "m1"),
            (long, "m2"),
            (long, "m4"),
        }


class TestPartitions:
    async def test_a_day_whose_rows_went_to_the_default_partition_gets_its_partition(
        self, store: Store, conn: asyncpg.Connection
    ) -> None:
        """Partitions ran out (maintenance failed for days): the rows went to the default
        partition. Creating their days' partitions moves them there, indexes and all."""
        project_id = await add_project(conn)
        late = TODAY + timedelta(days=8)  # past the days made ahead (yesterday to +3)
        await add_events(conn, project_id, late, 7)
        await add_events(conn, project_id, late + timedelta(days=1), 2)
        await add_events(conn, project_id, TODAY + timedelta(days=30), 1)  # stays: not asked for
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 10

        created = await store.ensure_partitions(today=late)  # late - 1 to late + 3

        assert created == 5
        left = await partitions(conn)
        for day in (late, late + timedelta(days=1)):
            assert partition_name(day) in left
        assert await conn.fetchval(f"SELECT count(*) FROM {partition_name(late)}") == 7
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 1
        assert await count_events(conn, project_id, late) == 7
        assert await count_events(conn, project_id, late + timedelta(days=1)) == 2
        # The moved partition has the events' indexes, as one created empty does.
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1", partition_name(late)
        )
        empty = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1",
            partition_name(late + timedelta(days=2)),
        )
        assert len(indexes) == len(empty) >= 5
        # New rows of the day go to the partition, and the day is not created again.
        await add_events(conn, project_id, late, 3, prefix="new")
        assert await conn.fetchval(f"SELECT count(*) FROM {partition_name(late)}") == 10
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 1
        assert await store.ensure_partitions(today=late) == 0

    async def test_the_service_starts_when_the_default_partition_holds_a_days_rows(
        self, store: Store, conn: asyncpg.Connection, settings: Settings, metrics: Metrics
    ) -> None:
        """It creates the partitions of the days ahead before it serves; rows of one of those
        days in the default partition used to stop it from starting."""
        project_id = await add_project(conn)
        ahead = TODAY + timedelta(days=3)
        await conn.execute(f"DROP TABLE {partition_name(ahead)}")
        await add_events(conn, project_id, ahead, 4)
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 4

        app = create_app(settings, metrics=metrics)
        async with LifespanManager(app) as manager, client_for(manager.app) as client:
            assert (await client.get("/readyz")).status_code == 200

        assert partition_name(ahead) in await partitions(conn)
        assert await conn.fetchval(f"SELECT count(*) FROM {partition_name(ahead)}") == 4
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 0


@pytest.fixture
async def running(
    settings: Settings, metrics: Metrics, log_stream: io.BytesIO
) -> AsyncIterator[LifespanManager]:
    async with LifespanManager(create_app(settings, metrics=metrics)) as manager:
        yield manager


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


class TestUnderLoad:
    async def test_purging_while_events_arrive_loses_nothing_and_fails_nothing(
        self,
        running: LifespanManager,
        secret_key: str,
        conn: asyncpg.Connection,
        metrics: Metrics,
        log_stream: io.BytesIO,
    ) -> None:
        """The service's own maintenance pass (partitions, purge) runs while two projects
        write through the API: every acknowledged event is stored, every request is answered
        200, and afterwards nothing past either project's retention remains."""
        async with client_for(running.app) as client:
            made = [
                (await client.post("/v1/projects", json=body, headers=bearer(secret_key))).json()
                for body in ({"name": "keeps"}, {"name": "brief", "events_retention_days": 2})
            ]
        keeps, brief = (uuid.UUID(p["id"]) for p in made)
        await add_partitions(conn, TODAY - timedelta(days=400), TODAY - timedelta(days=390))
        await add_partitions(conn, TODAY - timedelta(days=10), TODAY)
        for project_id in (keeps, brief):
            await add_events(conn, project_id, TODAY - timedelta(days=398), 500)
            await add_events(conn, project_id, TODAY - timedelta(days=393), 500)
            await add_events(conn, project_id, TODAY - timedelta(days=5), 20_000)
        svc = running._state["services"]  # the lifespan's Services, as handlers see them
        assert svc.store is not None

        acknowledged: list[str] = []
        statuses: list[int] = []

        async def send(client: httpx.AsyncClient, key: str, n: int) -> None:
            for i in range(n):
                ids = [f"live-{uuid.uuid4()}" for _ in range(10)]
                batch = [{"event": "e", "user_id": f"u{i}", "message_id": m} for m in ids]
                r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(key))
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acknowledged.extend(ids)

        async def purge() -> Any:
            await asyncio.sleep(0.01)  # let the writes start first
            return await maintain_once(svc)

        async with client_for(running.app) as client:
            keys = [p["write_key"]["key"] for p in made]
            result, *_ = await asyncio.gather(
                purge(), *(send(client, key, 40) for key in keys for _ in range(3))
            )

        assert set(statuses) == {200}
        assert len(acknowledged) == 2 * 3 * 40 * 10
        stored = await conn.fetchval(
            "SELECT count(*) FROM events WHERE message_id = ANY($1::text[])", acknowledged
        )
        assert stored == len(acknowledged)
        assert result.partitions_dropped == 5  # 400..396 days ago
        assert result.events_deleted == 20_000 + 500  # brief's, from the kept partitions
        for project_id, days in ((keeps, 395), (brief, 2)):
            assert not await conn.fetchval(
                "SELECT count(*) FROM events WHERE project_id = $1 AND received_at < $2",
                project_id,
                day_start(TODAY - timedelta(days=days)),
            )
        assert await count_events(conn, keeps, TODAY - timedelta(days=5)) == 20_000
        # Reported as a log line and as metrics.
        done = [
            line
            for line in map(json.loads, log_stream.getvalue().splitlines())
            if line["event"] == "purge_done"
        ]
        assert done[-1]["events_deleted"] == 20_500
        assert done[-1]["partitions_dropped"] == 5
        assert sample(metrics, "ingest_purged_partitions_total") == 5
        assert sample(metrics, "ingest_purged_rows_total", data="events") == 20_500
