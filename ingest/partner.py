"""What every partner route (organization secret key) shares: authentication, the per-key rate
limit, the audit log, and ``Idempotency-Key``.

A handler is ``async def handler(request, call) -> Response`` wrapped by ``partner_route``. It
makes its change in one transaction and, inside that transaction, calls ``call.finish`` with its
response and audit entries: the audit row, the change and the idempotency cache entry commit
together, so a replayed key never runs the change twice, and a crash leaves none of them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ingest import bodies, pseudonyms
from ingest.jsonx import problem_response
from ingest.problems import (
    IdempotencyInFlight,
    IdempotencyKeyReused,
    InvalidBody,
    KeyAlreadyIssued,
    NotFound,
)
from ingest.routes import Services, check_rate, log_fields, parse_json, services
from ingest.store import AuditEntry, Connection, IdempotencyKey, KeyRecord, Project, Store

# Methods that change something, and so honour Idempotency-Key.
_MUTATING: Final = frozenset({"POST", "PATCH", "DELETE"})
_IDEMPOTENCY_KEY_CHARS: Final = range(8, 256)
MAX_PARTNER_BODY: Final = 64 * 1024

PartnerHandler = Callable[[Request, "Call"], Awaitable[Response]]


@dataclass(slots=True)
class Call:
    """One partner request: who is calling, and the idempotency claim it holds, if any."""

    svc: Services
    request: Request
    key: KeyRecord
    request_id: str | None
    idempotency: IdempotencyKey | None = None
    finished: bool = False

    @property
    def org_id(self) -> uuid.UUID:
        return self.key.org_id

    def entry(
        self,
        action: str,
        target_type: str,
        target_id: str,
        project_id: uuid.UUID | None = None,
        **details: Any,
    ) -> AuditEntry:
        return AuditEntry(
            org_id=self.key.org_id,
            key_id=self.key.key_id,
            request_id=self.request_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            project_id=project_id,
            details=details,
        )

    async def finish(
        self,
        conn: Connection,
        response: Response,
        *audit: AuditEntry,
        replay_without_secret: dict[str, Any] | None = None,
    ) -> Response:
        """Record ``audit`` and the idempotency entry on ``conn``, inside the caller's
        transaction. A response that holds a new key's secret passes
        ``replay_without_secret``: that (the body minus the secret) is what the cache keeps,
        and a replay answers 409 key-already-issued with it (T14)."""
        for entry in audit:
            await Store.audit(conn, entry)
        if self.idempotency is not None:
            if replay_without_secret is not None:
                body, holds_secret = orjson.dumps(replay_without_secret), True
            else:
                body, holds_secret = bytes(response.body), False
            await Store.complete_idempotency(
                conn,
                self.idempotency,
                response.status_code,
                response.media_type,
                body,
                holds_secret=holds_secret,
            )
        self.finished = True
        return response

    async def own_project(self, raw_id: str) -> Project:
        """The caller's project ``raw_id``; another organization's is as missing as none."""
        try:
            project_id = uuid.UUID(raw_id)
        except ValueError:
            raise NotFound("no such project") from None
        project = await self.svc.store.get_project(self.key.org_id, project_id)
        if project is None:
            raise NotFound("no such project")
        log_fields(self.request, project_id=str(project.project_id))
        return project

    async def doc(self, *, empty_is_object: bool = False) -> dict[str, Any]:
        """The request's JSON object body (64 KiB at most); optionally empty means ``{}``."""
        bodies.check_content_type(self.request)
        raw = await bodies.read_body(self.request, MAX_PARTNER_BODY)
        doc = {} if empty_is_object and not raw.strip() else parse_json(raw)
        if not isinstance(doc, dict):
            raise InvalidBody("the body must be a JSON object")
        return doc


# Scope key under which the console passes the signed-in session's key to a partner route it
# calls in-process (console/partner_calls.py). Only server code sets scope keys: a client
# cannot send one.
CONSOLE_KEY: Final = "ingest.console_key"


def partner_route(handler: PartnerHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        svc = services(request)
        console_key = request.scope.get(CONSOLE_KEY)
        if isinstance(console_key, KeyRecord):
            key = console_key
        else:
            key = await svc.auth.secret_key(request)
        log_fields(request, org_id=str(key.org_id), key_id=str(key.key_id))
        check_rate(svc, key)
        rid = request.scope.get("ingest.request_id")
        call = Call(svc, request, key, rid if isinstance(rid, str) else None)
        raw_key = request.headers.get("idempotency-key")
        if raw_key is None or request.method not in _MUTATING:
            return await handler(request, call)
        idempotency = await _idempotency_key(request, svc, key, raw_key)
        held = await svc.store.claim_idempotency(
            idempotency, svc.settings.idempotency_lock_s, svc.settings.idempotency_ttl_s
        )
        if held is not None:
            if held.fingerprint != idempotency.fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was sent with another method, path or body; "
                    "use a new key for a new request"
                )
            if held.status is None:
                raise IdempotencyInFlight(
                    "the first request with this Idempotency-Key is still running; retry later"
                )
            if held.holds_secret:
                return problem_response(
                    KeyAlreadyIssued(
                        "the first request with this Idempotency-Key created a key, whose secret "
                        "is shown only once; what it created is in `created`",
                        created=orjson.loads(held.body or b"null"),
                    ),
                    call.request_id,
                )
            return Response(
                held.body,
                status_code=held.status,
                media_type=held.content_type,
                headers={"Idempotent-Replayed": "true"},
            )
        call.idempotency = idempotency
        try:
            response = await handler(request, call)
        except BaseException:
            # Nothing was done (the change and the entry commit together): the key is free
            # for a retry at once. Shielded, so a cancelled request still releases it.
            await asyncio.shield(svc.store.release_idempotency(idempotency))
            raise
        if not call.finished:
            if isinstance(response, StreamingResponse):
                # An export: a read that cannot be replayed byte for byte, and is safe to
                # repeat. The key is not kept.
                await svc.store.release_idempotency(idempotency)
            else:
                async with svc.store.pool.acquire() as conn:
                    await call.finish(conn, response)
        return response

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _idempotency_key(
    request: Request, svc: Services, key: KeyRecord, raw: str
) -> IdempotencyKey:
    value = raw.strip()
    # An sf-string (draft-ietf-httpapi-idempotency-key-header) is quoted; Stripe's clients
    # send the bare string. Both name the same key.
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if len(value) not in _IDEMPOTENCY_KEY_CHARS or not all(33 <= ord(c) < 127 for c in value):
        raise InvalidBody(
            "Idempotency-Key must be 8 to 255 visible ASCII characters (a UUID is ideal)",
            field="Idempotency-Key",
        )
    # The body as sent (still compressed, if it is): the handler reads it again from here.
    body = await bodies.read_raw(request, MAX_PARTNER_BODY)
    org_key = await svc.store.org_key(key.org_id)
    target = request.url.path + ("?" + request.url.query if request.url.query else "")
    return IdempotencyKey(
        key.org_id,
        key.key_id,
        pseudonyms.fingerprint(org_key, value.encode()),
        pseudonyms.fingerprint(org_key, request.method.encode(), target.encode(), body),
    )
