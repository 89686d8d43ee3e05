"""Partner routes for a project's forwarding destinations and their dead letters.

Every route takes the organization's secret key (partner.partner_route); another
organization's project or destination answers exactly like a missing one. A webhook's signing
secret is shown once, in the answer that creates it (an Idempotency-Key replay answers 409
key-already-issued instead); a conversions API's access token is never shown.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import netguard
from ingest.events import EVENT_TYPES
from ingest.jsonx import JSONResponse
from ingest.manage import page_limit
from ingest.partner import Call, partner_route
from ingest.problems import InvalidBody, NotFound, ValidationFailed
from ingest.store import Destination, DestinationChanges, Project, QueueStats

TYPES: Final = ("webhook", "conversions_api")
STATUSES: Final = ("active", "paused")
# Meta's action_source values (Conversions API, server event parameters).
ACTION_SOURCES: Final = (
    "website",
    "app",
    "email",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
)
# A conversions API takes conversions: what a person did, not who they are.
DEFAULT_EVENT_TYPES: Final = {"webhook": None, "conversions_api": ("track", "page", "screen")}
_FIELDS: Final = frozenset({"type", "name", "url", "event_types", "settings", "access_token"})
_PATCH_FIELDS: Final = frozenset(
    {"name", "url", "status", "event_types", "settings", "access_token"}
)
_MAX_NAME: Final = 200
_MAX_TOKEN: Final = 1024
_MAX_RETRY_IDS: Final = 1000
# A rotated signing secret keeps signing (beside the new one) for at most a week.
MAX_GRACE_SECONDS: Final = 7 * 86400


def _name(value: Any, errors: list[dict[str, str]]) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_NAME and "\x00" not in value:
        return value.strip()
    errors.append({"field": "name", "reason": f"a non-empty string of at most {_MAX_NAME} chars"})
    return None


def _event_types(value: Any, errors: list[dict[str, str]]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and v in EVENT_TYPES for v in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    errors.append(
        {
            "field": "event_types",
            "reason": f"null (every type) or a non-empty list of distinct {sorted(EVENT_TYPES)}",
        }
    )
    return None


def _settings(kind: str, value: Any, errors: list[dict[str, str]]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append({"field": "settings", "reason": "an object"})
        return {}
    allowed = {"action_source", "test_event_code"} if kind == "conversions_api" else set()
    unknown = sorted(k for k in value if k not in allowed)
    if unknown:
        errors.append(
            {"field": "settings", "reason": f"{kind} takes no setting {', '.join(unknown)}"}
        )
    source = value.get("action_source")
    if "action_source" in value and source not in ACTION_SOURCES:
        errors.append(
            {"field": "settings.action_source", "reason": f"one of {', '.join(ACTION_SOURCES)}"}
        )
    code = value.get("test_event_code")
    if "test_event_code" in value and not (
        isinstance(code, str) and 0 < len(code) <= 100 and "\x00" not in code
    ):
        errors.append(
            {"field": "settings.test_event_code", "reason": "a string of at most 100 chars"}
        )
    return {k: v for k, v in value.items() if k in allowed}


def _token(kind: str, value: Any, errors: list[dict[str, str]]) -> str | None:
    if kind != "conversions_api":
        errors.append({"field": "access_token", "reason": "only a conversions_api takes one"})
        return None
    if isinstance(value, str) and 0 < len(value) <= _MAX_TOKEN and "\x00" not in value:
        return value
    errors.append(
        {"field": "access_token", "reason": f"a non-empty string of at most {_MAX_TOKEN} chars"}
    )
    return None


async def _url(call: Call, value: Any, errors: list[dict[str, str]]) -> str | None:
    """The URL, when its form and every address its host resolves to are allowed."""
    allow = call.svc.settings.destinations_allow_private
    try:
        if not isinstance(value, str):
            raise netguard.Refused("invalid_url", "url must be a string")
        await netguard.resolve(netguard.parse_url(value, allow_private=allow), allow_private=allow)
    except netguard.Refused as exc:
        errors.append({"field": "url", "reason": f"{exc.code}: {exc.reason}"})
        return None
    return value


_FIELD_NAME: Final = re.compile(r"[A-Za-z_]{1,40}")


def _unknown(doc: dict[str, Any], allowed: frozenset[str]) -> list[dict[str, str]]:
    # A key is named back only when it looks like a field name: a key that is an email or a
    # phone number is not echoed into the answer.
    return [
        {
            "field": k if _FIELD_NAME.fullmatch(k) else "(unnamed)",
            "reason": "not a field of a destination",
        }
        for k in sorted(doc)
        if k not in allowed
    ]


def _body(destination: Destination, queue: QueueStats) -> dict[str, Any]:
    doc = destination.as_dict()
    if destination.type == "conversions_api":
        doc["has_access_token"] = destination.has_secret
    doc["queue"] = queue.as_dict()
    return doc


async def _own_destination(call: Call, request: Request) -> tuple[Project, uuid.UUID]:
    project = await call.own_project(request.path_params["project_id"])
    try:
        destination_id = uuid.UUID(request.path_params["destination_id"])
    except ValueError:
        raise NotFound("no such destination") from None
    return project, destination_id


@partner_route
async def post_destinations(request: Request, call: Call) -> Response:
    """Create a destination; a webhook's answer carries its signing secret, shown once."""
    project = await call.own_project(request.path_params["project_id"])
    doc = await call.doc()
    errors = _unknown(doc, _FIELDS)
    kind = doc.get("type")
    if kind not in TYPES:
        errors.append({"field": "type", "reason": '"webhook" or "conversions_api"'})
        raise ValidationFailed("the destination is invalid", errors=errors)
    assert isinstance(kind, str)  # noqa: S101  # one of TYPES
    name = _name(doc.get("name"), errors)
    event_types = (
        _event_types(doc["event_types"], errors)
        if "event_types" in doc
        else DEFAULT_EVENT_TYPES[kind]
    )
    settings = _settings(kind, doc.get("settings"), errors)
    token = _token(kind, doc["access_token"], errors) if "access_token" in doc else None
    url = await _url(call, doc.get("url"), errors) if not errors else None
    if errors or name is None or url is None:
        raise ValidationFailed("the destination is invalid", errors=errors)
    secret = "whsec_" + secrets.token_urlsafe(32) if kind == "webhook" else token
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        created = await store.create_destination(
            conn,
            project.project_id,
            type=kind,
            name=name,
            url=url,
            event_types=event_types,
            secret=secret,
            settings=settings,
        )
        body = _body(created, QueueStats(0, 0, None))
        shown = {**body, "signing_secret": secret} if kind == "webhook" else body
        pid, did = project.project_id, created.destination_id
        return await call.finish(
            conn,
            JSONResponse(shown, status_code=201),
            call.entry(
                "destination.create",
                "destination",
                str(did),
                pid,
                type=kind,
                name=name,
                host=netguard.parse_url(url, allow_private=True).host,
            ),
            replay_without_secret=body if kind == "webhook" else None,
        )


@partner_route
async def list_destinations(request: Request, call: Call) -> Response:
    project = await call.own_project(request.path_params["project_id"])
    found = await call.svc.store.list_destinations(project.project_id)
    return JSONResponse({"destinations": [_body(d, q) for d, q in found]})


@partner_route
async def get_destination(request: Request, call: Call) -> Response:
    project, destination_id = await _own_destination(call, request)
    found = await call.svc.store.get_destination(project.project_id, destination_id)
    if found is None:
        raise NotFound("no such destination")
    return JSONResponse(_body(*found))


@partner_route
async def patch_destination(request: Request, call: Call) -> Response:
    """Rename, re-point, pause or resume a destination, or change what it takes."""
    project, destination_id = await _own_destination(call, request)
    store = call.svc.store
    found = await store.get_destination(project.project_id, destination_id)
    if found is None:
        raise NotFound("no such destination")
    current, queue = found  # a change of the destination leaves its queue as it is
    doc = await call.doc()
    errors = _unknown(doc, _PATCH_FIELDS)
    if not doc:
        raise InvalidBody("name at least one field to change")
    name = _name(doc["name"], errors) if "name" in doc else None
    status = doc.get("status")
    if "status" in doc and status not in STATUSES:
        errors.append({"field": "status", "reason": '"active" or "paused"'})
    event_types = _event_types(doc["event_types"], errors) if "event_types" in doc else None
    settings = _settings(current.type, doc["settings"], errors) if "settings" in doc else None
    token = _token(current.type, doc["access_token"], errors) if "access_token" in doc else None
    url = await _url(call, doc["url"], errors) if "url" in doc and not errors else None
    if errors:
        raise ValidationFailed("the change is invalid", errors=errors)
    changes = DestinationChanges(
        name=name,
        url=url,
        status=status if isinstance(status, str) else None,
        set_event_types="event_types" in doc,
        event_types=event_types,
        secret=token,
        settings=settings,
    )
    async with store.pool.acquire() as conn, conn.transaction():
        updated = await store.update_destination(conn, project.project_id, destination_id, changes)
        if updated is None:  # deleted meanwhile
            raise NotFound("no such destination")
        return await call.finish(
            conn,
            JSONResponse(_body(updated, queue)),
            call.entry(
                "destination.update",
                "destination",
                str(destination_id),
                project.project_id,
                fields=sorted(doc),
            ),
        )


@partner_route
async def rotate_secret(request: Request, call: Call) -> Response:
    """A new signing secret for a webhook, shown once. With ``grace_seconds`` the old one keeps
    signing too (a second ``v1`` in the header) until the receiver has switched."""
    project, destination_id = await _own_destination(call, request)
    doc = await call.doc(empty_is_object=True)
    errors = _unknown(doc, frozenset({"grace_seconds"}))
    grace = doc.get("grace_seconds", 0)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_SECONDS:
        errors.append(
            {"field": "grace_seconds", "reason": f"whole seconds, 0 to {MAX_GRACE_SECONDS}"}
        )
    if errors:
        raise ValidationFailed("the rotation is invalid", errors=errors)
    store = call.svc.store
    found = await store.get_destination(project.project_id, destination_id)
    if found is None:
        raise NotFound("no such destination")
    if found[0].type != "webhook":
        raise ValidationFailed(
            "only a webhook has a signing secret; change a conversions API's access_token "
            "with PATCH",
            errors=[{"field": "type", "reason": "not a webhook"}],
        )
    secret = "whsec_" + secrets.token_urlsafe(32)
    async with store.pool.acquire() as conn, conn.transaction():
        rotated = await store.rotate_secret(conn, project.project_id, destination_id, secret, grace)
        if rotated is None:  # deleted meanwhile
            raise NotFound("no such destination")
        body = _body(rotated, found[1])
        return await call.finish(
            conn,
            JSONResponse({**body, "signing_secret": secret}),
            call.entry(
                "destination.rotate_secret",
                "destination",
                str(destination_id),
                project.project_id,
                grace_seconds=grace,
            ),
            replay_without_secret=body,
        )


@partner_route
async def delete_destination(request: Request, call: Call) -> Response:
    """Delete a destination; what still waits for it (device ids included) goes with it."""
    project, destination_id = await _own_destination(call, request)
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        if not await store.delete_destination(conn, project.project_id, destination_id):
            raise NotFound("no such destination")
        return await call.finish(
            conn,
            Response(status_code=204),
            call.entry(
                "destination.delete", "destination", str(destination_id), project.project_id
            ),
        )


@partner_route
async def list_dead_letters(request: Request, call: Call) -> Response:
    project, destination_id = await _own_destination(call, request)
    store = call.svc.store
    if await store.get_destination(project.project_id, destination_id) is None:
        raise NotFound("no such destination")
    limit = page_limit(request)
    raw = request.query_params.get("cursor")
    after = 0
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise InvalidBody("cursor is not a cursor this API returned", field="cursor")
        after = int(raw)
    rows = await store.dead_letters(
        project.project_id, destination_id, after=after, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {
            "dead_letters": [r.as_dict() for r in rows],
            "next_cursor": str(rows[-1].outbox_id) if more else None,
        }
    )


@partner_route
async def retry_dead_letters(request: Request, call: Call) -> Response:
    """Queue dead letters again: all, or those named in ``ids``. They were stripped of their
    device ids when they died, and are sent without them."""
    project, destination_id = await _own_destination(call, request)
    doc = await call.doc(empty_is_object=True)
    errors = _unknown(doc, frozenset({"ids"}))
    ids: list[int] | None = None
    if "ids" in doc:
        raw = doc["ids"]
        if (
            isinstance(raw, list)
            and 0 < len(raw) <= _MAX_RETRY_IDS
            and all(isinstance(i, str) and i.isascii() and i.isdigit() and len(i) < 19 for i in raw)
        ):
            ids = [int(i) for i in raw]
        else:
            errors.append(
                {"field": "ids", "reason": f"1 to {_MAX_RETRY_IDS} dead-letter ids (strings)"}
            )
    if errors:
        raise ValidationFailed("the retry is invalid", errors=errors)
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        if await store.get_destination(project.project_id, destination_id) is None:
            raise NotFound("no such destination")
        retried = await store.retry_dead_letters(conn, project.project_id, destination_id, ids)
        response = await call.finish(
            conn,
            JSONResponse({"retried": retried}),
            call.entry(
                "destination.retry_dead_letters",
                "destination",
                str(destination_id),
                project.project_id,
                retried=retried,
            ),
        )
    call.svc.forwarder.wake()  # committed: this worker sends them now, not at its next poll
    return response


_BASE: Final = "/v1/projects/{project_id}/destinations"
ROUTES: Final = [
    Route(_BASE, list_destinations, methods=["GET"]),
    Route(_BASE, post_destinations, methods=["POST"]),
    Route(_BASE + "/{destination_id}", get_destination, methods=["GET"]),
    Route(_BASE + "/{destination_id}", patch_destination, methods=["PATCH"]),
    Route(_BASE + "/{destination_id}", delete_destination, methods=["DELETE"]),
    Route(_BASE + "/{destination_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route(_BASE + "/{destination_id}/dead-letters", list_dead_letters, methods=["GET"]),
    Route(_BASE + "/{destination_id}/dead-letters/retry", retry_dead_letters, methods=["POST"]),
]
