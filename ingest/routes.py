"""HTTP handlers. They parse and answer; storage goes through Store and Writer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import bodies
from ingest.auth import Authenticator, presented_key
from ingest.clientip import IPAddress, client_ip
from ingest.config import Settings
from ingest.events import EVENT_TYPES, EventParser, Issue, Parsed, Source, now
from ingest.forwarder import Forwarder
from ingest.geo import GeoLookup, GeoResult
from ingest.jsonx import JSONResponse
from ingest.keys import KeyKind
from ingest.logs import LOG_STATE, redact_text
from ingest.metrics import Metrics
from ingest.origins import check_origin
from ingest.problems import (
    Forbidden,
    InvalidBody,
    InvalidJSON,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    ValidationFailed,
)
from ingest.ratelimit import RateLimiter
from ingest.store import (
    KeyRecord,
    Store,
)
from ingest.writer import Outcome, Writer

log = structlog.get_logger("ingest.routes")

# Routes that browsers' SDKs post to with a write key: CORS applies to exactly these.
WRITE_PATHS: Final = frozenset({"/v1/events"})


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan builds and every handler reads, instead of module globals."""

    settings: Settings
    store: Store
    writer: Writer
    geo: GeoLookup
    parser: EventParser
    # GeoIP lookup that counts lookups and misses; the parser uses it for context.ip too.
    locate: Callable[[IPAddress], GeoResult | None]
    auth: Authenticator
    metrics: Metrics
    limiter: RateLimiter
    forwarder: Forwarder


def services(request: Request) -> Services:
    svc: Services = request.state.services
    return svc


def log_fields(request: Request, **fields: Any) -> None:
    request.scope[LOG_STATE].update(fields)


def _project_header(request: Request) -> uuid.UUID:
    raw = request.headers.get("x-ingest-project-id", "")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Forbidden(
            "a secret key posts events for one of its projects: name it in X-Ingest-Project-Id"
        ) from None


@dataclass(frozen=True, slots=True)
class Target:
    """The project a request's events go to, and how far its sender is trusted."""

    project_id: uuid.UUID
    default_country: str | None
    trust_context_ip: bool
    hash_identifiers: bool = False


@dataclass(frozen=True, slots=True)
class Tally:
    """What happened to a request's events, in request order."""

    accepted: int
    duplicates: int
    rejected: list[Issue]
    warnings: list[Issue]

    def as_dict(self) -> dict[str, Any]:
        """The per-event results every write route answers with."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [issue.as_dict() for issue in self.rejected],
            "warnings": [issue.as_dict() for issue in self.warnings],
        }


def check_rate(svc: Services, key: KeyRecord) -> None:
    """The per-key rate limit (429), checked before the body is read: a key over its rate
    costs us nothing more."""
    try:
        svc.limiter.check(key.key_id)
    except TooManyRequests:
        svc.metrics.rate_limited.inc()
        raise


async def event_target(request: Request, svc: Services, key: KeyRecord) -> Target:
    """A write key names its project; a secret key names one of its org's in a header."""
    log_fields(request, org_id=str(key.org_id), key_id=str(key.key_id))
    check_rate(svc, key)
    if key.kind is KeyKind.WRITE:
        assert key.project_id is not None  # noqa: S101  # a CHECK constraint guarantees it
        check_origin(request, key.allowed_origins)
        target = Target(
            key.project_id, key.default_country, key.is_server_side, key.hash_identifiers
        )
    else:
        project = await svc.store.get_project(key.org_id, _project_header(request))
        if project is None:
            raise NotFound("no such project")
        target = Target(
            project.project_id,
            project.default_country,
            True,
            project.identifier_pii == "hash",
        )
    log_fields(request, project_id=str(target.project_id))
    return target


def check_batch_size(svc: Services, items: list[Any]) -> None:
    limit = svc.settings.max_batch_events
    if len(items) > limit:
        raise PayloadTooLarge(
            f"the batch has {len(items)} events; the limit is {limit}", limit=limit, size=len(items)
        )


def parse_events(
    request: Request, svc: Services, target: Target, items: list[Any], batch_sent_at: Any = None
) -> Parsed:
    """Validate and scrub ``items`` (already in the native shape) for ``target``."""
    ip = client_ip(
        request.client.host if request.client else None,
        # A proxy may add its hop as a second header line (HAProxy does): read them all.
        ", ".join(request.headers.getlist("x-forwarded-for")) or None,
        svc.settings.trusted_proxies,
    )
    source = Source(
        project_id=target.project_id,
        default_country=target.default_country,
        received_at=now(),
        peer_geo=svc.locate(ip) if ip is not None else None,
        trust_context_ip=target.trust_context_ip,
        hash_identifiers=target.hash_identifiers,
    )
    return svc.parser.parse(items, source, sent_at=batch_sent_at)


def refuse_single(request: Request, svc: Services, issue: Issue) -> NoReturn:
    """A request that held one event, and that event was refused: a 4xx for the request."""
    _count_rejected(svc.metrics, [issue])
    log_fields(request, events_accepted=0, events_rejected=1)
    if issue.code == "event_too_large":
        raise PayloadTooLarge(
            issue.reason,
            limit=svc.settings.max_event_bytes,
            size=issue.size,
            errors=[issue.as_dict()],
        )
    raise ValidationFailed(issue.reason, errors=[issue.as_dict()])


async def store_events(request: Request, svc: Services, parsed: Parsed) -> Tally:
    """Hand the rows to the writer; return once committed (Unavailable otherwise)."""
    outcomes = await svc.writer.submit(parsed.rows)
    rejected = list(parsed.rejected)
    duplicates = suppressed = 0
    for index, outcome in zip(parsed.indexes, outcomes, strict=True):
        if outcome is Outcome.REJECTED:
            rejected.append(Issue(index, "store_rejected", None, "the database refused this event"))
        elif outcome is Outcome.DUPLICATE:
            duplicates += 1
        elif outcome is Outcome.SUPPRESSED:
            # Acknowledged like any other (as Segment does): the SDK must not retry it, and the
            # answer must not reveal that the person was erased.
            suppressed += 1
    accepted = len(outcomes) - (len(rejected) - len(parsed.rejected))
    m = svc.metrics
    # Only what changed: with several workers every increment is a write to a shared file.
    if accepted:
        m.events_accepted.inc(accepted)
    if duplicates:
        m.events_duplicate.inc(duplicates)
    if suppressed:
        m.events_suppressed.inc(suppressed)
    _count_rejected(m, rejected)
    for warning in parsed.warnings:
        m.events_warnings.labels(code=warning.code).inc()
    log_fields(request, events_accepted=accepted, events_rejected=len(rejected))
    rejected.sort(key=lambda issue: issue.index)
    return Tally(accepted, duplicates, rejected, parsed.warnings)


async def ingest_items(
    request: Request,
    svc: Services,
    target: Target,
    items: list[Any],
    batch_sent_at: Any = None,
    *,
    is_batch: bool,
) -> Tally:
    """The whole write path for native-shaped ``items``: limits, parsing, the group commit.

    A batch answers per event; a request that held a single event that was refused raises
    its 4xx instead.
    """
    check_batch_size(svc, items)
    parsed = parse_events(request, svc, target, items, batch_sent_at)
    if not is_batch and parsed.rejected:
        await remember_rejected(svc, target, items, parsed.rejected)
        refuse_single(request, svc, parsed.rejected[0])
    tally = await store_events(request, svc, parsed)
    if tally.rejected:
        await remember_rejected(svc, target, items, tally.rejected)
    if not is_batch and tally.rejected:  # refused by the database; already counted
        issue = tally.rejected[0]
        raise ValidationFailed(issue.reason, errors=[issue.as_dict()])
    return tally


# Refused events kept per request for the console's live view: enough to show a sender what is
# wrong, while a flood of bad events costs one short INSERT a request.
_REMEMBER_REJECTED: Final = 20


async def remember_rejected(
    svc: Services, target: Target, items: list[Any], rejected: list[Issue]
) -> None:
    """Keep what the live view shows of refused events: the reason as the sender was told it
    (anything shaped like an email, phone or IP in it masked: a field path can hold a property
    key) and the event's type. Never a value from the event. Best effort: the answer to the
    sender does not wait on a failure here."""
    rows = []
    for issue in rejected[:_REMEMBER_REJECTED]:
        item = items[issue.index] if 0 <= issue.index < len(items) else None
        kind = item.get("type") if isinstance(item, dict) else None
        rows.append(
            (
                kind if isinstance(kind, str) and kind in EVENT_TYPES else None,
                issue.code,
                redact_text(issue.field) if issue.field is not None else None,
                redact_text(issue.reason),
            )
        )
    try:
        await svc.store.record_rejections(target.project_id, now(), rows)
    except Exception as exc:  # the events' answer matters more than the log
        log.warning("rejections_not_recorded", error=type(exc).__name__)


async def read_json(
    request: Request, svc: Services, media_types: frozenset[str] = bodies.JSON_TYPES
) -> Any:
    bodies.check_content_type(request, media_types)
    return _loads(
        await bodies.read_body(request, svc.settings.max_body_bytes, svc.settings.body_timeout_s)
    )


async def post_events(request: Request) -> Response:
    svc = services(request)
    key = await svc.auth.lookup(presented_key(request))
    target = await event_target(request, svc, key)
    items, batch_sent_at, is_batch = _items(await read_json(request, svc))
    tally = await ingest_items(request, svc, target, items, batch_sent_at, is_batch=is_batch)
    return JSONResponse(
        {
            "accepted": tally.accepted,
            "duplicates": tally.duplicates,
            "rejected": [issue.as_dict() for issue in tally.rejected],
            "warnings": [issue.as_dict() for issue in tally.warnings],
        }
    )


def parse_json(raw: bytes) -> Any:
    """A body decoded by the caller (base64, gzip-js) as JSON, with read_json's errors."""
    return _loads(raw)


def _count_rejected(metrics: Metrics, rejected: list[Issue]) -> None:
    for issue in rejected:
        metrics.events_rejected.labels(reason=issue.code).inc()


def _loads(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidJSON("the body is empty")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # The position only: orjson's message can quote the offending input.
        raise InvalidJSON(f"the body is not valid JSON (at byte {exc.pos})") from None
    if _LONG_DIGITS in raw.translate(_DIGIT_MAP):
        # orjson reads integers beyond 64 bits as floats, silently rounding them. Such bodies
        # are rare: re-read them exactly, so the event holding one is refused, not corrupted.
        try:
            doc = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise InvalidJSON("the body is not valid JSON") from None
    return doc


# 19 digits in a row somewhere in the body (a string's too: this only decides whether to re-read
# exactly). Found by mapping digits to "d" and the rest to " ", then a substring search: both run
# in C, about 15 times faster than the regex \d{19,} over a batch, which cost more than the parse.
_DIGIT_MAP: Final = bytes(ord("d") if b in b"0123456789" else ord(" ") for b in range(256))
_LONG_DIGITS: Final = b"d" * 19


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _items(doc: Any) -> tuple[list[Any], Any, bool]:
    """(events, batch-level sent_at, whether the body was a batch)."""
    if isinstance(doc, list):
        return doc, None, True
    if not isinstance(doc, dict):
        raise InvalidBody('the body must be an event object or {"batch": [...]}')
    if "batch" in doc:
        batch = doc["batch"]
        if not isinstance(batch, list):
            raise InvalidBody("batch must be an array of events", field="batch")
        return batch, doc.get("sent_at", doc.get("sentAt")), True
    return [doc], None, False


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    try:
        async with asyncio.timeout(2.0):
            await svc.store.ping()
    except Exception:  # any failure means "not ready"; the reason is in the database's log
        raise Unavailable(
            "the database does not answer", retry_after=svc.settings.retry_after_s
        ) from None
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    svc = services(request)
    pool = svc.store.pool
    svc.metrics.pool_connections.labels(state="size").set(pool.get_size())
    svc.metrics.pool_connections.labels(state="idle").set(pool.get_idle_size())
    svc.metrics.pool_connections.labels(state="max").set(pool.get_max_size())
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


ROUTES: Final = [
    Route("/v1/events", post_events, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
