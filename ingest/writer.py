"""Group commit: the events of every concurrent request go to Postgres in one write and one commit
(one statement for a small batch, a binary COPY for a large one: store/writes.py).

A request's rows wait in a bounded queue; an idle writer task takes everything queued (waiting
at most _GATHER_S for more, and only while another commit is in flight), writes it in one
transaction, and answers each waiting request when the commit returns. A full queue or an
unreachable database answers at once with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import asyncpg
import structlog

from ingest.events import Row
from ingest.metrics import Metrics
from ingest.problems import Unavailable
from ingest.store import TRANSIENT_ERRORS, Fate, Store

log = structlog.get_logger("ingest.writer")

# The connection or the server failed, not the rows: the whole batch is answered 503 and the
# SDK retries it with the same message ids.
_TRANSIENT = TRANSIENT_ERRORS
# Errors a row causes: Postgres refusing it, or asyncpg failing to encode it (a datetime out of
# range raises OverflowError while the COPY is being written; a text orjson cannot encode raises
# TypeError before the one-statement write is sent).
_ROW_ERRORS = (asyncpg.PostgresError, OverflowError, ValueError, TypeError)


# See Writer._committing: a request waits at most this long for others to share its commit.
_GATHER_S: Final = 0.002
_GATHER_EVENTS: Final = 64


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # Postgres refused this row although it passed validation
    SUPPRESSED = "suppressed"  # names an erased person (or its project was deleted): dropped


@dataclass(slots=True)
class _Pending:
    rows: Sequence[Row]
    future: asyncio.Future[list[Outcome]]
    enqueued: float = field(default_factory=time.perf_counter)


class Writer:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        connections: int = 2,
        max_batch_events: int = 5000,
        max_queued_events: int = 50_000,
        commit_timeout_s: float = 5.0,
        retry_after_s: int = 2,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._connections = connections
        self._max_batch = max_batch_events
        self._max_queued = max_queued_events
        self._timeout = commit_timeout_s
        self._retry_after = retry_after_s
        self._queue: deque[_Pending] = deque()
        self._queued_events = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # After a connection failure, new requests get 503 at once for this long instead of
        # queueing behind a database that is away; then one batch probes it again.
        self._down_until = 0.0
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Writers committing right now. When one is, another that finds only a few events
        # queued lets them gather a moment (until _GATHER_EVENTS are queued, at most
        # _GATHER_S) instead of committing them alone: the commits stagger and carry more
        # events each, and every commit costs the server the same round trips however small.
        self._committing = 0
        self._gathered = asyncio.Event()

    async def start(self) -> None:
        # Kept: get_running_loop() costs a getpid() system call on every request.
        self._event_loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"ingest-writer-{i}")
            for i in range(self._connections)
        ]

    async def stop(self) -> None:
        """Write everything already queued, then stop: no acknowledged request is dropped."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Anything left (the database was down while draining) gets its 503 now.
        while self._queue:
            self._fail(self._queue.popleft(), "shutting down")

    def _loop_ref(self) -> asyncio.AbstractEventLoop:
        return self._event_loop or asyncio.get_running_loop()

    @property
    def queued_events(self) -> int:
        return self._queued_events

    async def submit(self, rows: Sequence[Row]) -> list[Outcome]:
        """Store ``rows``; return once they are committed. Raises Unavailable (503) otherwise."""
        if not rows:
            return []
        if self._closing:
            raise self._unavailable("shutting_down", "the service is shutting down")
        if time.monotonic() < self._down_until:
            raise self._unavailable("database_down", "the database is unreachable")
        if self._queued_events + len(rows) > self._max_queued:
            raise self._unavailable("queue_full", "the write queue is full")
        future: asyncio.Future[list[Outcome]] = self._loop_ref().create_future()
        self._queue.append(_Pending(rows, future))
        self._queued_events += len(rows)
        self._metrics.writer_queue_events.set(self._queued_events)
        self._wakeup.set()
        if self._queued_events >= _GATHER_EVENTS:
            self._gathered.set()
        return await future

    def _unavailable(self, reason: str, detail: str) -> Unavailable:
        self._metrics.unavailable.labels(reason=reason).inc()
        return Unavailable(
            detail + "; retry with the same message_id", retry_after=self._retry_after
        )

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].rows) <= self._max_batch):
            pending = self._queue.popleft()
            batch.append(pending)
            count += len(pending.rows)
        self._queued_events -= count
        self._metrics.writer_queue_events.set(self._queued_events)
        return batch

    async def _run(self) -> None:
        lease = _Lease(self._store.pool)
        try:
            await self._loop(lease)
        finally:
            await lease.drop()

    async def _loop(self, lease: _Lease) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._committing and self._queued_events < _GATHER_EVENTS and not self._closing:
                self._gathered.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_GATHER_S):
                        await self._gathered.wait()
                if not self._queue:
                    continue
            batch = self._take()
            self._committing += 1
            try:
                await self._write(batch, lease)
            except Exception:  # a bug here must not kill the writer and strand every request
                log.exception("writer_failed")
                for pending in batch:
                    self._fail(pending, "internal error")
            finally:
                self._committing -= 1

    async def _write(self, batch: list[_Pending], lease: _Lease) -> None:
        rows = [row for pending in batch for row in pending.rows]
        started = time.perf_counter()
        try:
            stored = await self._insert(rows, lease)
        except _TRANSIENT as exc:
            self._down_until = time.monotonic() + 0.5
            self._metrics.write_errors.labels(kind="transient").inc()
            log.warning(
                "batch_failed", error=type(exc).__name__, sqlstate=_sqlstate(exc), events=len(rows)
            )
            for pending in batch:
                self._fail(pending, "the database is unreachable")
            return
        except _ROW_ERRORS as exc:
            # One row Postgres refuses (or that cannot be encoded) fails the write for all:
            # isolate it (T4).
            self._metrics.write_errors.labels(kind="data").inc()
            log.warning(
                "batch_rejected",
                sqlstate=_sqlstate(exc),
                events=len(rows),
                constraint=getattr(exc, "constraint_name", None),
            )
            await self._isolate(batch, lease)
            return
        elapsed = time.perf_counter() - started
        self._metrics.write_batch_events.observe(len(rows))
        self._metrics.write_seconds.observe(elapsed)
        offset = 0
        for pending in batch:
            n = len(pending.rows)
            self._resolve(pending, [_outcome(s) for s in stored[offset : offset + n]])
            offset += n

    async def _insert(self, rows: Sequence[Row], lease: _Lease) -> list[Fate]:
        try:
            async with asyncio.timeout(self._timeout):
                conn = await lease.get()
                return await self._store.writes.insert_events(conn, rows)
        except _TRANSIENT:
            # The connection's state is unknown (killed, timed out mid-COPY): never reuse it.
            await lease.drop()
            raise

    async def _isolate(self, batch: list[_Pending], lease: _Lease) -> None:
        """Retry each request alone, then each row of a failing request alone."""
        for pending in batch:
            try:
                stored = await self._insert(pending.rows, lease)
            except _TRANSIENT:
                self._fail(pending, "the database is unreachable")
                continue
            except _ROW_ERRORS:
                outcomes: list[Outcome] = []
                for row in pending.rows:
                    try:
                        one = await self._insert([row], lease)
                    except _TRANSIENT:
                        self._fail(pending, "the database is unreachable")
                        break
                    except _ROW_ERRORS as exc:
                        log.warning("event_rejected_by_database", sqlstate=_sqlstate(exc))
                        outcomes.append(Outcome.REJECTED)
                    else:
                        outcomes.append(_outcome(one[0]))
                else:
                    self._resolve(pending, outcomes)
                continue
            self._resolve(pending, [_outcome(s) for s in stored])

    def _resolve(self, pending: _Pending, outcomes: list[Outcome]) -> None:
        self._metrics.write_wait_seconds.observe(time.perf_counter() - pending.enqueued)
        # The request may have gone (client disconnect cancels its await); its rows are stored
        # anyway and its retry is deduplicated.
        if not pending.future.done():
            pending.future.set_result(outcomes)

    def _fail(self, pending: _Pending, detail: str) -> None:
        if not pending.future.done():
            pending.future.set_exception(self._unavailable("write_failed", detail))
        with contextlib.suppress(asyncio.CancelledError, Unavailable):
            # Mark the exception retrieved when nobody awaits it any more.
            if pending.future.done() and not pending.future.cancelled():
                pending.future.exception()


class _Lease:
    """One writer task's own connection, held across batches: a pool release would run
    asyncpg's reset query, one more round trip per commit."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None

    async def get(self) -> asyncpg.pool.PoolConnectionProxy:
        if self._conn is not None and self._conn.is_closed():
            await self.drop()
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.terminate()
        with contextlib.suppress(Exception):
            await self._pool.release(conn)


_OUTCOMES = {
    Fate.STORED: Outcome.STORED,
    Fate.DUPLICATE: Outcome.DUPLICATE,
    Fate.SUPPRESSED: Outcome.SUPPRESSED,
}


def _outcome(fate: Fate) -> Outcome:
    return _OUTCOMES[fate]


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)
