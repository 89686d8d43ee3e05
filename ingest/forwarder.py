"""Delivery of the outbox to destinations: a background task of every worker process.

Per destination with rows due, one transaction locks a batch of its rows (FOR UPDATE SKIP
LOCKED: the workers share the work without sending a row twice), sends them in one HTTP
request, and in the same transaction deletes them (device ids included) and records the
deliveries, or schedules the next attempt. A crash between the answer and the commit sends the
batch again: delivery is at least once, and every event carries its message_id (receivers
deduplicate on it, as Meta does on event_id).

Retries: 5xx, 408, 429 and network errors back off exponentially with jitter, and never sooner
than the receiver's Retry-After; any other answer (a 3xx is never followed, a 4xx will not
change) puts the batch in the dead letters at once. A row also goes dead after
``forward_max_attempts`` attempts or its project's ``forward_queue_days``; a dead row loses its
device ids and can be retried through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import orjson
import structlog

from ingest import __version__, netguard
from ingest.config import Settings
from ingest.metrics import Metrics
from ingest.store import TRANSIENT_ERRORS, Destination, Failure, OutboxRow, Store

log = structlog.get_logger("ingest.forwarder")

SIGNATURE_HEADER: Final = "X-Ingest-Signature"
_USER_AGENT: Final = f"ingest-forwarder/{__version__}"
_RETRYABLE_STATUS: Final = frozenset({408, 429})
_DUE_LIMIT: Final = 100
# A busy writer wakes the forwarder at every commit: scans for due rows are at least this far
# apart, so a burst of commits costs one scan.
_MIN_SCAN_GAP_S: Final = 0.02
_STOP_GRACE_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery request got."""

    ok: bool
    error: str | None = None  # http_503, timeout, network, forbidden_address...
    retryable: bool = True
    retry_after_s: float | None = None


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """The wait after the ``attempt``-th failure (1-based): exponential, capped, times
    ``jitter`` (drawn between 0.5 and 1 per failed request), so that the retries of many
    destinations and workers do not arrive together."""
    return float(min(max_s, base_s * 2.0 ** min(attempt - 1, 62)) * jitter)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def sign(timestamp: int, body: bytes, *secrets: str) -> str:
    """The signature header's value: ``t=<unix time>,v1=<hex HMAC-SHA256 of "t." + body>``,
    one ``v1`` per secret (the current one first; the previous one too while a rotation's
    grace lasts). Receivers accept any ``v1`` they can recompute, and refuse old timestamps."""
    signed = f"{timestamp}.".encode() + body
    macs = (hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets)
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


def event_doc(row: OutboxRow) -> dict[str, Any]:
    """The event as an export line has it, with its device ids when it had any."""
    doc = dict(row.event)
    if row.devices:
        doc["devices"] = row.devices
    return doc


def webhook_body(destination: Destination, rows: Sequence[OutboxRow], sent_at: datetime) -> bytes:
    return orjson.dumps(
        {
            "project_id": str(destination.project_id),
            "destination_id": str(destination.destination_id),
            "sent_at": sent_at,
            "batch": [event_doc(row) for row in rows],
        }
    )


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# Meta's standard events for the page and screen calls; a track event keeps its own name.
_CAPI_NAMES: Final = {"page": "PageView", "screen": "PageView"}
_APP_OS: Final = frozenset({"ios", "android", "ipados", "tvos", "watchos"})


def capi_event(row: OutboxRow, settings: dict[str, Any]) -> dict[str, Any]:
    """One event shaped as Meta's Conversions API takes it: user_data holds only digests
    (SHA-256, as Meta matches them) and the advertising id as ``madid``."""
    ev = row.event
    kind: str = ev["type"]
    context: dict[str, Any] = ev.get("context") or {}
    properties: dict[str, Any] = dict(ev.get("properties") or {})
    user_data: dict[str, Any] = {}
    if ev.get("email_sha256"):
        user_data["em"] = [ev["email_sha256"]]
    if ev.get("phone_sha256"):
        user_data["ph"] = [ev["phone_sha256"]]
    if ev.get("user_id"):
        user_data["external_id"] = [_sha256(ev["user_id"])]
    if ev.get("country"):
        user_data["country"] = [_sha256(ev["country"].lower())]
    if row.devices and row.devices.get("advertising_id"):
        user_data["madid"] = row.devices["advertising_id"]
    agent = context.get("userAgent")
    if isinstance(agent, str):
        user_data["client_user_agent"] = agent
    os_name = (context.get("os") or {}).get("name") if isinstance(context.get("os"), dict) else None
    is_app = (
        kind == "screen"
        or isinstance(context.get("app"), dict)
        or (isinstance(os_name, str) and os_name.lower() in _APP_OS)
    )
    out: dict[str, Any] = {
        "event_name": ev.get("event") if kind == "track" else _CAPI_NAMES.get(kind, kind),
        "event_time": int(ev["timestamp"].timestamp()),
        "event_id": ev["message_id"],
        "action_source": settings.get("action_source") or ("app" if is_app else "website"),
        "user_data": user_data,
    }
    page = context.get("page")
    url = page.get("url") if isinstance(page, dict) else None
    if isinstance(url, str):
        out["event_source_url"] = url
    if "value" not in properties:
        for name in ("revenue", "total"):
            if isinstance(properties.get(name), int | float):
                properties["value"] = properties[name]
                break
    if properties:
        out["custom_data"] = properties
    return out


def capi_body(destination: Destination, rows: Sequence[OutboxRow]) -> bytes:
    doc: dict[str, Any] = {"data": [capi_event(row, destination.settings) for row in rows]}
    # In the body, not the query string: URLs end up in proxies' and servers' access logs.
    if destination.secret:
        doc["access_token"] = destination.secret
    code = destination.settings.get("test_event_code")
    if code:
        doc["test_event_code"] = code
    return orjson.dumps(doc)


class Forwarder:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._rng = random.Random()  # noqa: S311  # jitter, not a secret
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[tuple[uuid.UUID, uuid.UUID], asyncio.Task[None]] = {}
        self._known: set[str] = set()  # destinations with gauges, to zero those that go
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.forward_timeout_s),
            follow_redirects=False,  # a redirect could point anywhere, our network included
            trust_env=False,  # no proxy from the environment between us and the check
            headers={"User-Agent": _USER_AGENT},
            limits=httpx.Limits(max_connections=max(4, settings.forward_concurrency * 2)),
        )

    def wake(self) -> None:
        """New outbox rows were committed by this process: look now, not at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-forwarder")

    async def stop(self) -> None:
        """Stop taking batches; give those in flight a moment to finish, then cancel them (a
        cancelled batch is rolled back and sent again later: at least once), then close.
        The moment is short: a slow receiver must not hold up a rolling restart."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            _, pending = await asyncio.wait(
                list(self._inflight.values()),
                timeout=min(_STOP_GRACE_S, self._settings.forward_timeout_s),
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._http.aclose()

    async def _run(self) -> None:
        next_sweep = 0.0
        while not self._closing:
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._settings.forward_sweep_s
                    await self.sweep()
                started = await self._start_due()
            except TRANSIENT_ERRORS as exc:
                log.warning("forwarder_database_away", error=type(exc).__name__)
                started = 0
            except Exception:  # a bug here must not stop forwarding for good
                log.exception("forwarder_failed")
                started = 0
            if started and len(self._inflight) < self._settings.forward_concurrency:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.forward_poll_s):
                    await self._wakeup.wait()
            await asyncio.sleep(_MIN_SCAN_GAP_S)

    async def _start_due(self) -> int:
        """Start a delivery task for each due destination not already in flight here."""
        room = self._settings.forward_concurrency - len(self._inflight)
        if room <= 0:
            return 0
        started = 0
        for destination in await self._store.due_destinations(_DUE_LIMIT):
            key = (destination.project_id, destination.destination_id)
            if key in self._inflight:
                continue
            task = asyncio.create_task(self._deliver_guarded(destination, key))
            self._inflight[key] = task
            started += 1
            if started >= room:
                break
        return started

    async def _deliver_guarded(
        self, destination: Destination, key: tuple[uuid.UUID, uuid.UUID]
    ) -> None:
        took = 0
        try:
            took = await self.deliver(destination)
        except TRANSIENT_ERRORS as exc:
            # The transaction is gone: its rows are unlocked and sent again later.
            log.warning(
                "forward_batch_interrupted",
                destination_id=str(destination.destination_id),
                error=type(exc).__name__,
            )
        except Exception:
            log.exception("forward_batch_failed", destination_id=str(destination.destination_id))
        finally:
            self._inflight.pop(key, None)
            if took:
                # The destination may have more due. Not after an empty claim: another
                # worker holds those rows, and looking again at once would spin.
                self._wakeup.set()

    async def deliver(self, destination: Destination) -> int:
        """Send one batch of ``destination``'s due rows; how many rows it took."""
        label = str(destination.destination_id)
        async with self._store.pool.acquire() as conn, conn.transaction():
            rows = await self._store.claim_outbox(
                conn, destination, self._settings.forward_batch_events
            )
            if not rows:
                return 0
            started = time.perf_counter()
            attempt = await self.send(destination, rows)
            elapsed = time.perf_counter() - started
            self._metrics.forward_seconds.labels(destination=label).observe(elapsed)
            if attempt.ok:
                await Store.mark_delivered(conn, destination, [r.outbox_id for r in rows])
                self._metrics.forward_delivered.labels(destination=label).inc(len(rows))
                log.info(
                    "forward_delivered",
                    destination_id=label,
                    events=len(rows),
                    duration_ms=round(elapsed * 1000, 1),
                )
                return len(rows)
            failure = self._failure(destination, rows, attempt)
            await Store.mark_failed(conn, destination, failure)
        error = attempt.error or "error"
        self._metrics.forward_failed.labels(destination=label, reason=error).inc(len(rows))
        if failure.retry:
            self._metrics.forward_retried.labels(destination=label).inc(len(failure.retry))
        if failure.dead:
            self._metrics.forward_dead.labels(destination=label).inc(len(failure.dead))
        log.warning(
            "forward_failed",
            destination_id=label,
            error=error,
            events=len(rows),
            retried=len(failure.retry),
            dead_lettered=len(failure.dead),
            wait_s=round(failure.destination_wait_s, 3),
        )
        return len(rows)

    def _failure(
        self, destination: Destination, rows: Sequence[OutboxRow], attempt: Attempt
    ) -> Failure:
        s = self._settings
        now = datetime.now(UTC)
        max_age_s = destination.queue_days * 86400.0
        retry: list[tuple[int, float]] = []
        dead: list[int] = []
        honoured = min(attempt.retry_after_s or 0.0, max_age_s)
        # One draw per request: rows that failed together stay together (one batch next time).
        jitter = self._rng.uniform(0.5, 1.0)
        wait = 0.0
        for row in rows:
            number = row.attempts + 1
            expired = (now - row.created_at).total_seconds() >= max_age_s
            if not attempt.retryable or number >= s.forward_max_attempts or expired:
                dead.append(row.outbox_id)
                continue
            delay = max(
                honoured,
                backoff_s(number, s.forward_backoff_base_s, s.forward_backoff_max_s, jitter),
            )
            retry.append((row.outbox_id, delay))
            wait = delay if wait == 0.0 else min(wait, delay)
        # The whole destination waits too: its other rows would meet the same trouble.
        return Failure(attempt.error or "error", retry, dead, wait)

    async def send(self, destination: Destination, rows: Sequence[OutboxRow]) -> Attempt:
        """One HTTP request with ``rows``; never raises for what the receiver or the network
        does."""
        allow = self._settings.destinations_allow_private
        try:
            target = netguard.parse_url(destination.url, allow_private=allow)
        except netguard.Refused as exc:
            return Attempt(ok=False, error=exc.code, retryable=False)
        try:
            addresses = await netguard.resolve(target, allow_private=allow)
        except netguard.Refused as exc:
            return Attempt(ok=False, error=exc.code)
        sent_at = datetime.now(UTC)
        headers = {"Content-Type": "application/json", "Host": target.host_header}
        try:
            if destination.type == "webhook":
                body = webhook_body(destination, rows, sent_at)
                keys = [destination.secret or "", destination.previous_secret]
                headers[SIGNATURE_HEADER] = sign(
                    int(sent_at.timestamp()), body, *(k for k in keys if k is not None)
                )
                headers["X-Ingest-Destination-Id"] = str(destination.destination_id)
            else:
                body = capi_body(destination, rows)
        except Exception:
            # A row this code cannot shape (a bug): dead letters, not a batch retried forever.
            log.exception("forward_payload_failed", destination_id=str(destination.destination_id))
            return Attempt(ok=False, error="payload", retryable=False)
        extensions: dict[str, Any] = {}
        if target.scheme == "https" and target.address is None:
            # Connect to the address we checked, but verify the certificate against the name.
            extensions["sni_hostname"] = target.host
        last = Attempt(ok=False, error="network")
        for address in addresses:
            try:
                request = self._http.build_request(
                    "POST",
                    target.url_for(address),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                )
                # The answer's body is never read: nothing of it is kept or logged.
                response = await self._http.send(request, stream=True)
                await response.aclose()
            except httpx.TimeoutException:
                return Attempt(ok=False, error="timeout")
            except httpx.ConnectError:
                last = Attempt(ok=False, error="connect_error")
                continue  # the next address of the name
            except httpx.HTTPError:
                return Attempt(ok=False, error="network")
            return _judge(response)
        return last

    async def sweep(self) -> None:
        """Expire rows that waited too long, and refresh the queue gauges."""
        expired = await self._store.expire_outbox()
        for destination_id in expired:
            self._metrics.forward_dead.labels(destination=str(destination_id)).inc()
        stats = await self._store.outbox_stats()
        now = datetime.now(UTC)
        seen: set[str] = set()
        for (_, destination_id), queue in stats.items():
            label = str(destination_id)
            seen.add(label)
            self._metrics.forward_queue_events.labels(destination=label).set(queue.pending)
            self._metrics.forward_dead_letters.labels(destination=label).set(queue.dead)
            oldest = (now - queue.oldest_pending).total_seconds() if queue.oldest_pending else 0
            self._metrics.forward_oldest_seconds.labels(destination=label).set(max(0.0, oldest))
        for label in self._known - seen:
            self._metrics.forward_queue_events.labels(destination=label).set(0)
            self._metrics.forward_dead_letters.labels(destination=label).set(0)
            self._metrics.forward_oldest_seconds.labels(destination=label).set(0)
        self._known = seen


def _judge(response: httpx.Response) -> Attempt:
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(ok=True)
    error = f"http_{status}"
    if status >= 500 or status in _RETRYABLE_STATUS:
        return Attempt(
            ok=False, error=error, retry_after_s=retry_after_s(response.headers.get("retry-after"))
        )
    # A redirect is not followed, and another 4xx will not change by itself: dead letters,
    # which the partner retries once the destination is fixed.
    return Attempt(ok=False, error=error, retryable=False)
