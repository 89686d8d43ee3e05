"""The app factory: routes, middleware, error handlers, and the lifespan that owns resources."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypedDict

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest import (
    destinations,
    keyring,
    manage,
    openapi,
    posthog,
    rudderstack,
    segment,
    store as store_mod,
    subjects,
)
from ingest.auth import Authenticator
from ingest.clientip import IPAddress
from ingest.config import Settings
from ingest.console import Console
from ingest.events import EventParser, Limits
from ingest.fastpath import FastWrites
from ingest.forwarder import Forwarder
from ingest.geo import GeoLookup, GeoResult
from ingest.jsonx import problem_response
from ingest.logs import RequestContext, configure_logging
from ingest.metrics import Metrics, use_cached_pid
from ingest.origins import ANY_ORIGIN, CORS_SCOPE_KEY
from ingest.problems import Problem, Unavailable
from ingest.ratelimit import RateLimiter
from ingest.routes import ROUTES, WRITE_PATHS, Services
from ingest.store import PurgeResult, Store
from ingest.writer import Writer

log = structlog.get_logger("ingest.app")


class State(TypedDict):
    services: Services


class DatabaseNotDurable(Exception):
    """Postgres runs with fsync, synchronous_commit or full_page_writes off."""


class WriteCORS:
    """CORS for the write-key routes only: never credentials, preflight answered.

    Access-Control-Allow-Origin is ``*``, or the request's origin when the key's project has an
    allow-list that holds it (the handler decides, see origins.check_origin), or absent when
    the origin is refused. Partner routes get no CORS headers at all, so a browser cannot read
    their answers.
    """

    _PREFLIGHT = (
        # The preflight carries no key, so it cannot know the project: the real request is
        # where an origin is refused.
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        # AnonymousId and SentAt: RudderStack's browser SDK sends them with every event.
        (
            b"access-control-allow-headers",
            b"Authorization, Content-Type, Content-Encoding, AnonymousId, SentAt",
        ),
        (b"access-control-max-age", b"86400"),
        (b"vary", b"Origin"),
    )

    def __init__(
        self, app: ASGIApp, paths: frozenset[str], patterns: tuple[re.Pattern[str], ...] = ()
    ) -> None:
        self.app = app
        self.paths = paths
        self.patterns = patterns

    def _applies(self, path: str) -> bool:
        return path in self.paths or any(p.fullmatch(path) for p in self.patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await send(
                {"type": "http.response.start", "status": 204, "headers": list(self._PREFLIGHT)}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        holder: dict[str, str | None] = {"allow": ANY_ORIGIN}
        scope[CORS_SCOPE_KEY] = holder

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                allow = holder["allow"]
                if allow is not None:
                    headers.append((b"access-control-allow-origin", allow.encode("latin-1")))
                    headers.append((b"access-control-expose-headers", b"Retry-After, X-Request-Id"))
                headers.append((b"vary", b"Origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _request_id(request: Request) -> str | None:
    rid = request.scope.get("ingest.request_id")
    return rid if isinstance(rid, str) else None


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)  # noqa: S101  # registered for Problem only
    return problem_response(exc, _request_id(request))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    """Router 404/405 and the like, in the same problem+json shape as our own errors."""
    assert isinstance(exc, HTTPException)  # noqa: S101  # registered for HTTPException only
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(exc.status_code).phrase,
        "status": exc.status_code,
        "detail": exc.detail,
    }
    if (request_id := _request_id(request)) is not None:
        body["instance"] = request_id
    return Response(
        orjson.dumps(body),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/problem+json",
    )


async def _on_database_away(request: Request, exc: Exception) -> Response:
    """A database outage outside the writer (key lookup, project calls) is a 503, not a 500."""
    log.warning("database_unavailable", error=type(exc).__name__)
    return problem_response(Unavailable("the database is unreachable"), _request_id(request))


async def _on_error(request: Request, exc: Exception) -> Response:
    # Logged with the type only: an exception's text may quote data (asyncpg's DETAIL does).
    log.error("unhandled_error", error=type(exc).__name__)
    return Response(
        b'{"type":"about:blank","title":"Internal Server Error","status":500}',
        status_code=500,
        media_type="application/problem+json",
    )


async def check_durability(store: Store, metrics: Metrics) -> None:
    settings = await store.durability_settings()
    off = sorted(name for name, value in settings.items() if value != "on")
    metrics.database_durable.set(0 if off else 1)
    if off:
        raise DatabaseNotDurable(
            f"Postgres runs with {', '.join(off)} off: a 200 would not mean the event is safe. "
            "Turn them on."
        )


def report_purge(result: PurgeResult, metrics: Metrics | None = None) -> None:
    """The ``purge_done`` log line, and the purge counters when there are metrics to count in."""
    log.info("purge_done", **result.as_dict())
    if metrics is not None:
        metrics.purged_partitions.inc(result.partitions_dropped)
        metrics.purged_rows.labels(data="events").inc(result.events_deleted)
        metrics.purged_rows.labels(data="dedup").inc(result.dedup_deleted)
        metrics.purged_rows.labels(data="idempotency").inc(result.idempotency_deleted)
        metrics.purged_rows.labels(data="dead_letters").inc(result.dead_letters_deleted)
        metrics.purged_rows.labels(data="deliveries").inc(result.deliveries_deleted)


async def maintain_once(svc: Services) -> PurgeResult:
    """Create the coming days' partitions, then purge what is past each project's retention."""
    await svc.store.ensure_partitions()
    result = await svc.store.purge()
    report_purge(result, svc.metrics)
    sessions, rejections = await svc.store.purge_console()
    log.info("console_purge_done", sessions_deleted=sessions, rejections_deleted=rejections)
    return result


async def _maintain(svc: Services) -> None:
    while True:
        await asyncio.sleep(3600)
        try:
            await maintain_once(svc)
        except Exception as exc:  # retried in an hour; the default partition covers the gap
            svc.metrics.purge_failures.inc()
            log.warning("maintenance_failed", error=type(exc).__name__)


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> Starlette:
    """The ASGI app. ``settings.database_url`` must be set (the CLI starts an embedded Postgres
    first when it is not)."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url")
    dsn = settings.database_url.reveal()
    metrics = metrics or Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        ring = keyring.from_settings(settings)
        geo = GeoLookup.open(settings.geoip_path)
        metrics.geoip_build.set(
            datetime(
                geo.build_date.year, geo.build_date.month, geo.build_date.day, tzinfo=UTC
            ).timestamp()
        )
        pool = await store_mod.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            connect_timeout=settings.commit_timeout_s,
        )
        store = Store(pool, ring, one_statement_max=settings.writer_one_statement_events)
        try:
            await check_durability(store, metrics)
            await store.ensure_partitions()
            if wrapped := await store.wrap_project_keys():
                log.info("project_keys_wrapped", projects=wrapped)
        except BaseException:
            await pool.close()
            geo.close()
            raise
        writer = Writer(
            store,
            metrics,
            connections=settings.writer_connections,
            max_batch_events=settings.writer_max_batch_events,
            max_queued_events=settings.writer_queue_events,
            commit_timeout_s=settings.commit_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        await writer.start()
        forwarder = Forwarder(store, metrics, settings)
        store.writes.on_outbox = forwarder.wake
        await forwarder.start()
        limits = Limits.from_settings(settings)

        def locate(ip: IPAddress) -> GeoResult | None:
            metrics.geoip_lookups.inc()
            found = geo.lookup(ip)
            if found is None:
                metrics.geoip_misses.inc()
            return found

        svc = Services(
            settings=settings,
            store=store,
            writer=writer,
            geo=geo,
            parser=EventParser(limits, locate),
            locate=locate,
            auth=Authenticator(store, settings.key_cache_ttl_s),
            metrics=metrics,
            limiter=RateLimiter(
                settings.rate_limit_per_key / settings.workers,
                settings.rate_limit_burst / settings.workers,
            ),
            forwarder=forwarder,
        )
        maintenance = asyncio.create_task(_maintain(svc), name="ingest-maintenance")
        # Everything allocated so far lives as long as the process: move it out of the
        # collector's way (a full collection otherwise rescans it on every cycle).
        gc.freeze()
        try:
            yield {"services": svc}
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            await forwarder.stop()
            await writer.stop()
            await pool.close()
            geo.close()

    write_paths = WRITE_PATHS | segment.WRITE_PATHS | rudderstack.WRITE_PATHS | posthog.WRITE_PATHS
    handlers: dict[Any, Any] = {
        Problem: _on_problem,
        **dict.fromkeys(store_mod.TRANSIENT_ERRORS, _on_database_away),
        HTTPException: _on_http_exception,
        Exception: _on_error,
    }
    routes = [
        # The Segment and PostHog routes live in their own modules, which build on the steps in
        # routes.py: listing them here, not there, keeps the import graph acyclic.
        *ROUTES,
        *manage.ROUTES,
        *subjects.ROUTES,
        *destinations.ROUTES,
        *segment.ROUTES,
        *rudderstack.ROUTES,
        *posthog.ROUTES,
        *openapi.ROUTES,
        *Console(settings).routes(),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContext, metrics=metrics),
            Middleware(
                WriteCORS,
                paths=write_paths,
                patterns=(segment.SETTINGS_PATH, rudderstack.SOURCE_CONFIG_PATH),
            ),
            # The SDKs' write routes skip the router and the exception middleware (the same
            # endpoints and handlers): they are most of the traffic.
            Middleware(
                FastWrites,
                routes=[r for r in routes if isinstance(r, Route) and r.path in write_paths],
                handlers=handlers,
            ),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def tune_gc() -> None:
    """For a serving process. A request's parsed JSON and rows live until its commit: a few
    milliseconds for single events, 100 to 300 under 100-event batches. CPython's default young
    collection (every 700 net allocations) traverses them again and again on their way to the
    old generation: 10% of a worker's CPU under batches. Every 10,000 still left the collector's
    functions at 4% of the whole machine's samples under batches (perf); every 200,000 lets most
    of them die first: none of those functions is left among the top symbols, the server's CPU
    per batched event fell by about 5%, the batches' rate rose 2-5% in alternating pairs, and
    single events and the workers' memory (about 110 MB each under batches) were unchanged
    (loadtests/RESULTS.md). The threshold bounds only cyclic garbage, which these paths hardly
    make; refcounting frees the rest at once."""
    gc.set_threshold(200_000, 10, 10)


def app_from_env() -> Starlette:
    """Factory for worker processes (``ingest serve --workers N``): each reads the environment
    that the parent process prepared, database URL included."""
    tune_gc()
    use_cached_pid()  # before create_app makes the metrics
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
