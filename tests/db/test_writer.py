"""The group-commit writer against a real Postgres: batching, isolation, back-pressure, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Secret, Settings
from ingest.events import COLUMNS, EventParser, Limits, Row, Source
from ingest.geo import GeoResult
from ingest.metrics import Metrics
from ingest.problems import Unavailable
from ingest.store import Store, create_pool
from ingest.store._db import JSON_FIELDS
from ingest.store.writes import SUBJECT_LOCK
from ingest.writer import Outcome, Writer
from tests.conftest import TEST_MASTER_KEY, bearer, client_for, keyring_for_tests

# What the writer stores, on both of its paths (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("write_path")

PROJECT = uuid.uuid4()


def rows(n: int, *, received_at: datetime | None = None, prefix: str = "m") -> list[Row]:
    parser = EventParser(Limits.from_settings(Settings()), lambda ip: None)
    source = Source(
        project_id=PROJECT,
        default_country=None,
        received_at=received_at or datetime.now(UTC),
        peer_geo=GeoResult("US", "CA"),
    )
    items = [
        {"event": "e", "user_id": f"u{i}", "message_id": f"{prefix}-{uuid.uuid4()}"}
        for i in range(n)
    ]
    return parser.parse(items, source).rows


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(db_dsn, min_size=1, max_size=4, connect_timeout=5)
    store = Store(pool, keyring_for_tests())
    await store.ensure_partitions()  # as the app's lifespan does
    # The writer drops rows of a project that does not exist (a deleted one): PROJECT must.
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, 'o')", PROJECT)
        await conn.execute("INSERT INTO projects (id, org_id, name) VALUES ($1, $1, 'p')", PROJECT)
    yield store
    await pool.close()


@pytest.fixture
async def writer(store: Store, metrics: Metrics) -> AsyncIterator[Writer]:
    w = Writer(store, metrics, connections=2, max_queued_events=1000)
    await w.start()
    yield w
    await w.stop()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


class TestGroupCommit:
    async def test_concurrent_requests_share_commits(
        self, writer: Writer, metrics: Metrics, conn: asyncpg.Connection
    ) -> None:
        """100 concurrent requests are answered by far fewer commits than requests."""
        results = await asyncio.gather(*(writer.submit(rows(2)) for _ in range(100)))
        assert all(r == [Outcome.STORED, Outcome.STORED] for r in results)
        commits = sample(metrics, "ingest_write_batch_size_count")
        assert commits < 100 / 4
        assert sample(metrics, "ingest_write_batch_size_sum") == 200
        assert await conn.fetchval("SELECT count(*) FROM events") == 200

    async def test_a_request_waits_for_a_stuck_commit_only_a_moment_not_for_its_end(
        self, writer: Writer, db_dsn: str, conn: asyncpg.Connection
    ) -> None:
        """While one commit is in flight the next batch gathers a moment (a few ms at most),
        then commits on the other connection: it never waits for the first to finish."""
        other = uuid.uuid4()
        await conn.execute(
            "INSERT INTO projects (id, org_id, name) VALUES ($1, $2, 'q')", other, PROJECT
        )
        blocker = await asyncpg.connect(db_dsn)
        try:
            # An erasure's exclusive lock on PROJECT: its rows' commit waits on it.
            await blocker.execute("BEGIN")
            await blocker.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2::text))", SUBJECT_LOCK, str(PROJECT)
            )
            stuck = asyncio.create_task(writer.submit(rows(1)))
            await asyncio.sleep(0.3)
            assert not stuck.done()
            free = [(other, *row[1:]) for row in rows(2)]
            assert await asyncio.wait_for(writer.submit(free), timeout=2) == [Outcome.STORED] * 2
            assert not stuck.done()
        finally:
            await blocker.execute("ROLLBACK")
            await blocker.close()
        assert await stuck == [Outcome.STORED]
        assert await conn.fetchval("SELECT count(*) FROM events") == 3

    async def test_http_requests_are_coalesced_and_each_answered_after_commit(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        metrics: Metrics,
        conn: asyncpg.Connection,
    ) -> None:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/events", json={"event": "x", "user_id": f"u{i}"}, headers=bearer(write_key)
                )
                for i in range(50)
            )
        )
        assert {a.status_code for a in answers} == {200}
        assert sample(metrics, "ingest_write_batch_size_count") < 50
        assert await conn.fetchval("SELECT count(*) FROM events") == 50

    async def test_dedup_holds_across_daily_partitions(
        self, store: Store, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """A retry that lands in the next day's partition is still stored once (T3)."""
        today = datetime.now(UTC).replace(hour=23, minute=59, second=59)
        tomorrow = today + timedelta(seconds=2)
        first = rows(1, received_at=today)
        retry = [(*first[0][:1], tomorrow, *first[0][2:])]
        assert await writer.submit(first) == [Outcome.STORED]
        assert await writer.submit(retry) == [Outcome.DUPLICATE]
        partitions = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) FROM events GROUP BY 1"
        )
        assert [(p["part"], p["count"]) for p in partitions] == [(f"events_p{today:%Y%m%d}", 1)]
        assert await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"events_p{tomorrow:%Y%m%d}"
        )


class TestEveryColumn:
    async def test_each_column_is_stored_exactly_as_the_row_holds_it(
        self, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """Both paths (tests/conftest.py write_path) put each value in its own column, texts
        with quotes, backslashes, control characters and emoji as they are, times to the
        microsecond."""
        at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
        text = 'q"uote \\ back\\slash \t tab \n line \u00e9 \U0001f389'
        row: Row = (
            PROJECT,
            at,
            "m-every-column",
            "identify",
            f"event {text}",
            f"user {text}",
            "anon-1",
            at - timedelta(seconds=1),
            at - timedelta(seconds=2, microseconds=3),
            at - timedelta(seconds=4),
            "app-1",
            "FR",
            "IDF",
            "a" * 64,
            "b" * 64,
            "c" * 64,
            "d" * 64,
            orjson.dumps({"p": text, "n": 1.5, "nested": {"list": [1, None, True]}}),
            orjson.dumps({"t": text}),
            orjson.dumps({"c": [text]}),
            None,
        )
        assert await writer.submit([row]) == [Outcome.STORED]
        # JSON as text: the test connection may decode it or not.
        names = [f'"{c}"::text' if c in JSON_FIELDS else f'"{c}"' for c in COLUMNS]
        stored = await conn.fetchrow(f"SELECT {', '.join(names)} FROM events")
        assert stored is not None
        json_at = COLUMNS.index("properties")
        assert tuple(stored)[:json_at] == row[:json_at]
        assert [orjson.loads(v) for v in tuple(stored)[json_at:]] == [
            orjson.loads(v) for v in row[json_at : len(COLUMNS)]
        ]
        profile = await conn.fetchrow("SELECT traits::text, created_at FROM user_profiles")
        assert profile is not None
        assert (orjson.loads(profile["traits"]), profile["created_at"]) == ({"t": text}, at)

    async def test_a_batchs_identify_traits_merge_into_profiles_in_arrival_order(
        self, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """Identify rows of one commit: a user's traits merged in arrival order (later keys
        win, the first row's time is the profile's), merged into what an earlier commit stored;
        rows without a user id make no profile."""
        parser = EventParser(Limits.from_settings(Settings()), lambda ip: None)

        def parsed(at: datetime, items: list[dict[str, Any]]) -> list[Row]:
            source = Source(project_id=PROJECT, default_country=None, received_at=at, peer_geo=None)
            return parser.parse(items, source).rows

        def identify(user: str | None, traits: dict[str, Any]) -> dict[str, Any]:
            who = {"user_id": user} if user else {"anonymous_id": "anon"}
            return {"type": "identify", **who, "message_id": str(uuid.uuid4()), "traits": traits}

        early = datetime(2026, 1, 1, tzinfo=UTC)
        first, second = early + timedelta(days=1), early + timedelta(days=2, microseconds=7)
        before = parsed(early, [identify("u-2", {"x": 0, "y": 5})])
        assert await writer.submit(before) == [Outcome.STORED]
        batch = [
            *parsed(first, [identify("\u00fc-1", {"a": 1, "b": 1}), identify(None, {"z": 1})]),
            *parsed(second, [{"event": "e", "user_id": "\u00fc-1"}]),
            *parsed(second, [identify("\u00fc-1", {"b": 2, "c": {"d": 3}})]),
            *parsed(second, [identify("u-2", {"x": 1})]),
        ]
        assert await writer.submit(batch) == [Outcome.STORED] * len(batch)
        profiles = {
            r["user_id"]: (orjson.loads(r["traits"]), r["created_at"], r["updated_at"])
            for r in await conn.fetch(
                "SELECT user_id, traits::text, created_at, updated_at FROM user_profiles"
            )
        }
        assert profiles == {
            "\u00fc-1": ({"a": 1, "b": 2, "c": {"d": 3}}, first, first),
            "u-2": ({"x": 1, "y": 5}, early, second),
        }

    async def test_times_far_from_now_are_stored_to_the_microsecond(
        self, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """The COPY sends times as microseconds from Postgres's epoch (ingest/store/copy.py):
        before it, at its edge, years ahead, and with an offset, the same instant comes back."""
        base = rows(1)[0]
        times = (
            datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        )
        for n, at in enumerate(times):
            row = list(base)
            row[COLUMNS.index("message_id")] = f"m-time-{n}"
            for name in ("timestamp", "original_timestamp", "sent_at"):
                row[COLUMNS.index(name)] = at
            assert await writer.submit([tuple(row)]) == [Outcome.STORED]
        stored = await conn.fetch(
            'SELECT "timestamp", original_timestamp, sent_at FROM events ORDER BY message_id'
        )
        assert [tuple(r) for r in stored] == [(at, at, at) for at in times]

    async def test_the_dedup_claim_keeps_each_requests_received_at(
        self, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """The claim sends received_at as microseconds from Postgres's epoch (store/writes.py):
        two requests committed together keep each its own instant in event_dedup, which the
        dedup window's purge reads, as in events."""
        now = datetime.now(UTC).replace(microsecond=123457)
        first = now - timedelta(days=1, microseconds=1)
        second = now.astimezone(timezone(timedelta(hours=-3, minutes=-30)))
        results = await asyncio.gather(
            writer.submit(rows(3, received_at=first, prefix="first")),
            writer.submit(rows(2, received_at=second, prefix="second")),
        )
        assert list(results) == [[Outcome.STORED] * 3, [Outcome.STORED] * 2]
        claimed = await conn.fetch(
            "SELECT d.message_id, d.received_at AS claimed, e.received_at AS stored "
            "FROM event_dedup AS d JOIN events AS e USING (project_id, message_id)"
        )
        assert sorted((r["message_id"].split("-")[0], r["claimed"]) for r in claimed) == [
            ("first", first),
            ("first", first),
            ("first", first),
            ("second", second),
            ("second", second),
        ]
        assert all(r["claimed"] == r["stored"] for r in claimed)


class TestDeletedProjects:
    async def test_rows_of_a_missing_project_are_acknowledged_and_not_stored(
        self, writer: Writer, conn: asyncpg.Connection
    ) -> None:
        """A write key cached for a moment after its project was deleted: nothing lands."""
        live = rows(2)
        gone = [(uuid.uuid4(), *row[1:]) for row in rows(2)]
        results = await asyncio.gather(writer.submit(live), writer.submit(gone))
        assert list(results) == [[Outcome.STORED] * 2, [Outcome.SUPPRESSED] * 2]
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        assert await conn.fetchval("SELECT count(*) FROM event_dedup") == 2


class TestFates:
    async def test_interleaved_projects_and_copies_get_each_their_own_fate(
        self, store: Store, conn: asyncpg.Connection
    ) -> None:
        """One write holding two projects' rows in turn, each project id sometimes a distinct
        but equal object (as from two requests): a message id is stored once per project, its
        second copy in the batch is a duplicate, and the other project's same id is its own."""
        other = uuid.uuid4()
        await conn.execute(
            "INSERT INTO projects (id, org_id, name) VALUES ($1, $2, 'q')", other, PROJECT
        )
        template = rows(1)[0]

        def row(project: uuid.UUID, message_id: str) -> Row:
            return (project, template[1], message_id, *template[3:])

        batch = [
            row(PROJECT, "m1"),
            row(other, "m1"),
            row(uuid.UUID(str(PROJECT)), "m1"),  # the same project, another object: a copy
            row(uuid.UUID(str(PROJECT)), "m2"),
            row(other, "m2"),
            row(uuid.UUID(str(other)), "m1"),  # a copy of the other project's m1
            row(PROJECT, "m2"),  # a copy of m2, after a run of another object
        ]
        fates = await store.writes.insert_events(conn, batch)

        assert [str(f) for f in fates] == [
            "stored",
            "stored",
            "duplicate",
            "stored",
            "stored",
            "duplicate",
            "duplicate",
        ]
        stored = await conn.fetch("SELECT project_id, message_id FROM events")
        assert sorted((r["project_id"] == PROJECT, r["message_id"]) for r in stored) == [
            (False, "m1"),
            (False, "m2"),
            (True, "m1"),
            (True, "m2"),
        ]


class TestIsolation:
    async def test_a_row_postgres_refuses_fails_only_itself(
        self, writer: Writer, conn: asyncpg.Connection, log_stream: io.BytesIO
    ) -> None:
        """One poisoned row in a coalesced batch: its neighbours and other requests still land."""
        poisoned = rows(3)
        # Past validation but refused by the table's CHECK constraint: the shape of a row the
        # validator missed. Its event name is a canary that must not reach the log.
        bad = list(poisoned[1])
        bad[3] = "not-a-type"
        bad[4] = "canary-row-data-7731"
        poisoned[1] = tuple(bad)
        others = [rows(2) for _ in range(5)]
        results = await asyncio.gather(writer.submit(poisoned), *(writer.submit(r) for r in others))
        assert results[0] == [Outcome.STORED, Outcome.REJECTED, Outcome.STORED]
        assert all(r == [Outcome.STORED, Outcome.STORED] for r in results[1:])
        assert await conn.fetchval("SELECT count(*) FROM events") == 12
        log = log_stream.getvalue().decode()
        assert "batch_rejected" in log
        assert "23514" in log  # the SQLSTATE (check_violation), not the row
        assert "canary-row-data-7731" not in log
        assert "not-a-type" not in log

    async def test_a_refused_event_in_an_http_batch_is_reported_by_index(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """Validation mirrors Postgres's rules, so the refusal happens before the writer."""
        batch = [
            {"event": "a", "user_id": "u"},
            {"event": "b\u0000", "user_id": "u"},
            {"event": "c", "user_id": "u"},
        ]
        r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        assert r.status_code == 200
        assert [(e["index"], e["code"]) for e in r.json()["rejected"]] == [(1, "nul_character")]
        assert await conn.fetchval("SELECT count(*) FROM events") == 2


class TestBackPressure:
    async def test_a_full_queue_answers_503_at_once_and_stores_nothing(
        self, store: Store, metrics: Metrics, conn: asyncpg.Connection
    ) -> None:
        w = Writer(store, metrics, max_queued_events=5, retry_after_s=3)
        # Not started: nothing drains the queue, so it stays full.
        first = asyncio.ensure_future(w.submit(rows(5)))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as caught:
            await w.submit(rows(1))
        assert caught.value.status == 503
        assert caught.value.headers == {"Retry-After": "3"}
        assert sample(metrics, "ingest_unavailable_total", reason="queue_full") == 1
        await w.start()
        assert await first == [Outcome.STORED] * 5
        await w.stop()
        assert await conn.fetchval("SELECT count(*) FROM events") == 5

    async def test_http_answer_is_503_problem_with_retry_after(
        self, settings: Settings, write_key: str, metrics: Metrics
    ) -> None:
        small = dataclasses.replace(settings, writer_queue_events=2)
        async with (
            LifespanManager(create_app(small, metrics=Metrics())) as m,
            client_for(m.app) as c,
        ):
            batch = [{"event": "x", "user_id": "u"}] * 3
            r = await c.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "2"
        assert "retry with the same message_id" in r.json()["detail"]

    async def test_stop_drains_what_was_queued(
        self, store: Store, metrics: Metrics, conn: asyncpg.Connection
    ) -> None:
        w = Writer(store, metrics)
        await w.start()
        pending = [asyncio.ensure_future(w.submit(rows(3))) for _ in range(10)]
        await asyncio.sleep(0)
        await w.stop()
        assert [await p for p in pending] == [[Outcome.STORED] * 3] * 10
        assert await conn.fetchval("SELECT count(*) FROM events") == 30
        with pytest.raises(Unavailable):
            await w.submit(rows(1))


# -- a database that goes away and comes back ---------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Any]:
    """A Postgres of this test's own, so the test may stop it (never the shared one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

        server = get_server(tmp_path / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()


def _pg_ctl(server: Any, *args: str) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # untyped internals

    pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)


class TestRecovery:
    async def test_503_while_down_then_200_again_without_restart(
        self, own_server: Any, geoip_db: Path
    ) -> None:
        from ingest import migrate
        from ingest.cli import _create_org

        dsn = own_server.get_uri()
        conn = await asyncpg.connect(dsn)
        await migrate.migrate(conn)
        await conn.close()
        settings = Settings(
            database_url=Secret(dsn),
            geoip_path=geoip_db,
            key_cache_ttl_s=60,
            master_key=Secret(TEST_MASTER_KEY),
        )
        org = await _create_org(settings, "Acme")
        async with LifespanManager(create_app(settings, metrics=Metrics())) as m:
            c = client_for(m.app)
            p = await c.post(
                "/v1/projects", json={"name": "p"}, headers=bearer(org["secret_key"]["key"])
            )
            key = p.json()["write_key"]["key"]

            async def post(mid: str) -> httpx.Response:
                return await c.post(
                    "/v1/events",
                    json={"event": "x", "user_id": "u", "message_id": mid},
                    headers=bearer(key),
                )

            assert (await post("before")).status_code == 200
            _pg_ctl(own_server, "-w", "-m", "immediate", "stop")
            down = [await post(f"down-{i}") for i in range(5)]
            assert {r.status_code for r in down} == {503}
            assert all(re.fullmatch(r"\d+", r.headers["retry-after"]) for r in down)
            assert (await c.get("/readyz")).status_code == 503

            own_server.ensure_postgres_running()
            # Recovery is the pool's and the writer's job: poll as an SDK would retry.
            deadline = asyncio.get_running_loop().time() + 30
            statuses = []
            while asyncio.get_running_loop().time() < deadline:
                r = await post("after")
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert statuses[-1] == 200, statuses
            assert set(statuses) <= {200, 503}
            assert (await c.get("/readyz")).status_code == 200
            await c.aclose()
        conn = await asyncpg.connect(dsn)
        stored = await conn.fetch("SELECT message_id FROM events ORDER BY 1")
        await conn.close()
        assert [r["message_id"] for r in stored] == ["after", "before"]

    async def test_killed_writer_connections_recover(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """pg_terminate_backend on every app connection: the next requests still succeed."""
        ok = await client.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
        )
        assert ok.status_code == 200
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ingest' AND pid <> pg_backend_pid()"
        )
        statuses = []
        for i in range(20):
            r = await client.post(
                "/v1/events",
                json={"event": "x", "user_id": "u", "message_id": f"k-{i}"},
                headers=bearer(write_key),
            )
            statuses.append(r.status_code)
            if r.status_code == 200:
                break
            await asyncio.sleep(0.6)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}
