"""Partner routes for the organization's own objects: projects, keys, and the audit log.

Every route takes the organization's secret key (partner.partner_route). A project, key or audit
entry of another organization answers exactly as a missing one does (404, same body).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.jsonx import JSONResponse
from ingest.origins import OriginsInvalid, parse_allowed_origins
from ingest.partner import Call, partner_route
from ingest.problems import Conflict, InvalidBody, NotFound, ValidationFailed
from ingest.store import (
    DEFAULT_DEAD_LETTER_DAYS,
    DEFAULT_DEDUP_WINDOW_DAYS,
    DEFAULT_EVENTS_RETENTION_DAYS,
    DEFAULT_FORWARD_QUEUE_DAYS,
    IssuedKey,
    LastSecretKey,
    ProjectChanges,
)

# A project's retention settings (sql/0003, sql/0006), in days, and the most each may be: ten
# years, but a month for the forward queue, where device ids wait.
MAX_DAYS: Final = 3650
RETENTION_FIELDS: Final = {
    "events_retention_days": MAX_DAYS,
    "dedup_window_days": MAX_DAYS,
    "forward_queue_days": 30,
    "dead_letter_days": MAX_DAYS,
}
# What a project does with an email- or phone-shaped user_id or anonymous_id (sql/0005).
IDENTIFIER_PII: Final = ("reject", "hash")
# How a project stores email and phone digests (sql/0008, keyring.py).
DIGEST_STORAGE: Final = ("protected", "plain")


def _project_fields(doc: dict[str, Any], *, partial: bool) -> ProjectChanges:
    """The project fields of a POST (``name`` required) or a PATCH (each optional)."""
    errors: list[dict[str, str]] = []
    name = doc.get("name")
    if (not partial or "name" in doc) and (
        not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name
    ):
        errors.append({"field": "name", "reason": "a non-empty string of at most 200 characters"})
    country = doc.get("default_country")
    if country is not None and (
        not isinstance(country, str)
        or len(country) != 2
        or not country.isascii()
        or not country.isalpha()
    ):
        errors.append({"field": "default_country", "reason": "an ISO 3166 alpha-2 code or null"})
    origins: tuple[str, ...] | None = None
    try:
        origins = parse_allowed_origins(doc.get("allowed_origins"))
    except OriginsInvalid as exc:
        errors.append({"field": "allowed_origins", "reason": str(exc)})
    retention: dict[str, int | None] = {}
    for field, most in RETENTION_FIELDS.items():
        value = doc.get(field)
        # Absent keeps the current value (on create: the default); null is refused, since a
        # retention cannot be cleared. bool is an int to Python, not to a partner.
        if field not in doc:
            retention[field] = None
        elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most:
            retention[field] = value
        else:
            errors.append({"field": field, "reason": f"a whole number of days, 1 to {most}"})
    identifier_pii = doc.get("identifier_pii")
    if "identifier_pii" in doc and identifier_pii not in IDENTIFIER_PII:
        errors.append({"field": "identifier_pii", "reason": '"reject" or "hash"'})
    digest_storage = doc.get("digest_storage")
    if "digest_storage" in doc and digest_storage not in DIGEST_STORAGE:
        errors.append({"field": "digest_storage", "reason": '"protected" or "plain"'})
    if errors:
        raise ValidationFailed("the project is invalid", errors=errors)
    return ProjectChanges(
        set_name="name" in doc,
        name=name.strip() if isinstance(name, str) else None,
        set_default_country="default_country" in doc,
        default_country=country.upper() if isinstance(country, str) else None,
        set_allowed_origins="allowed_origins" in doc,
        allowed_origins=origins,
        events_retention_days=retention["events_retention_days"],
        dedup_window_days=retention["dedup_window_days"],
        forward_queue_days=retention["forward_queue_days"],
        dead_letter_days=retention["dead_letter_days"],
        identifier_pii=identifier_pii if isinstance(identifier_pii, str) else None,
        digest_storage=digest_storage if isinstance(digest_storage, str) else None,
    )


# -- projects ------------------------------------------------------------------------------


@partner_route
async def list_projects(request: Request, call: Call) -> Response:
    projects = await call.svc.store.list_projects(call.org_id)
    return JSONResponse({"projects": [p.as_dict() for p in projects]})


@partner_route
async def post_projects(request: Request, call: Call) -> Response:
    """Create a project; the answer carries its first write key (shown once)."""
    fields = _project_fields(await call.doc(), partial=False)
    assert fields.name is not None  # noqa: S101  # required by _project_fields
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        project, write_key = await store.create_project(
            call.org_id,
            fields.name,
            fields.default_country,
            fields.allowed_origins,
            events_retention_days=fields.events_retention_days or DEFAULT_EVENTS_RETENTION_DAYS,
            dedup_window_days=fields.dedup_window_days or DEFAULT_DEDUP_WINDOW_DAYS,
            identifier_pii=fields.identifier_pii or "reject",
            forward_queue_days=fields.forward_queue_days or DEFAULT_FORWARD_QUEUE_DAYS,
            dead_letter_days=fields.dead_letter_days or DEFAULT_DEAD_LETTER_DAYS,
            digest_storage=fields.digest_storage or "protected",
            conn=conn,
        )
        body = {**project.as_dict(), "write_key": write_key.as_dict()}
        pid = project.project_id
        return await call.finish(
            conn,
            JSONResponse(body, status_code=201),
            call.entry("project.create", "project", str(pid), pid, name=project.name),
            call.entry("key.create", "key", str(write_key.key_id), pid, kind="write"),
            replay_without_secret={**body, "write_key": _without_secret(write_key)},
        )


@partner_route
async def get_project(request: Request, call: Call) -> Response:
    project = await call.own_project(request.path_params["project_id"])
    return JSONResponse(project.as_dict())


@partner_route
async def patch_project(request: Request, call: Call) -> Response:
    """Change a project's name, default country, origin allow-list or retention; absent
    fields stay."""
    project = await call.own_project(request.path_params["project_id"])
    changes = _project_fields(await call.doc(), partial=True)
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        updated = await store.update_project(call.org_id, project.project_id, changes, conn=conn)
        if updated is None:  # deleted between the two statements
            raise NotFound("no such project")
        pid = updated.project_id
        return await call.finish(
            conn,
            JSONResponse(updated.as_dict()),
            call.entry("project.update", "project", str(pid), pid, fields=changes.given()),
        )


@partner_route
async def delete_project(request: Request, call: Call) -> Response:
    """Delete a project and all of its data: events, message ids, current state,
    suppressions, receipts and keys (the end of a partnership)."""
    project = await call.own_project(request.path_params["project_id"])
    store = call.svc.store
    pid = project.project_id
    async with store.pool.acquire() as conn, conn.transaction():
        if not await store.delete_project(conn, call.org_id, pid):
            raise NotFound("no such project")
        await store.audit(conn, call.entry("project.delete", "project", str(pid), pid))
    # The keys are gone with the row; cached lookups expire within the key cache TTL, and
    # the writer drops any event of a deleted project that still arrives.
    counts = await store.delete_project_data(pid)
    response = JSONResponse(
        {"id": str(pid), "deleted": counts, "completed_at": datetime.now(UTC).isoformat()}
    )
    async with store.pool.acquire() as conn:
        return await call.finish(conn, response)


@partner_route
async def crypto_shred(request: Request, call: Call) -> Response:
    """Replace the project's data key: every email and phone digest it stored sealed so far
    can no longer be read by anyone, at once (crypto-shredding). Events stay, without them;
    suppressions stay in force."""
    project = await call.own_project(request.path_params["project_id"])
    store = call.svc.store
    pid = project.project_id
    async with store.pool.acquire() as conn, conn.transaction():
        shredded_at = await store.shred_keys(conn, call.org_id, pid)
        if shredded_at is None:
            raise NotFound("no such project")
        response = await call.finish(
            conn,
            JSONResponse({"id": str(pid), "shredded_at": shredded_at.isoformat()}),
            call.entry("project.crypto_shred", "project", str(pid), pid),
        )
    # A writer that read the old key inside its transaction holds the project's subject lock
    # shared until it commits: once this exclusive instant is had, none is left, and every
    # later row is sealed under the new key.
    await store.subject_barrier(pid)
    return response


# -- keys ----------------------------------------------------------------------------------


def _without_secret(issued: IssuedKey) -> dict[str, Any]:
    return {**issued.as_dict(), "key": None}


def _key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such key") from None


async def _scope(request: Request, call: Call) -> uuid.UUID | None:
    """The project whose write keys a route manages, or None for the org's secret keys."""
    if "project_id" not in request.path_params:
        return None
    return (await call.own_project(request.path_params["project_id"])).project_id


@partner_route
async def list_keys(request: Request, call: Call) -> Response:
    """The keys (never their secrets): a project's write keys, or the organization's secret
    keys."""
    project_id = await _scope(request, call)
    now = datetime.now(UTC)
    found = await call.svc.store.list_keys(call.org_id, project_id)
    return JSONResponse({"keys": [k.as_dict(now) for k in found]})


@partner_route
async def post_keys(request: Request, call: Call) -> Response:
    """Issue a key: a write key for the project (``server_side`` marks one whose context.ip is
    trusted), or a secret key for the organization. The secret is in this answer only."""
    project_id = await _scope(request, call)
    doc = await call.doc(empty_is_object=True)
    server_side = doc.get("server_side", False)
    if project_id is None and "server_side" in doc:
        raise ValidationFailed(
            "server_side applies to write keys only",
            errors=[{"field": "server_side", "reason": "not allowed on a secret key"}],
        )
    if not isinstance(server_side, bool):
        raise ValidationFailed(
            "server_side must be a boolean", errors=[{"field": "server_side", "reason": "boolean"}]
        )
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        issued = await store.create_key(conn, call.org_id, project_id, is_server_side=server_side)
        body = issued.as_dict()
        if project_id is not None:
            body |= {"project_id": str(project_id), "server_side": server_side}
        return await call.finish(
            conn,
            JSONResponse(body, status_code=201),
            call.entry("key.create", "key", str(issued.key_id), project_id, kind=str(issued.kind)),
            replay_without_secret={**body, "key": None},
        )


@partner_route
async def delete_key(request: Request, call: Call) -> Response:
    """Revoke a key now: it is refused everywhere within the key cache TTL (1 s)."""
    project_id = await _scope(request, call)
    key_id = _key_id(request.path_params["key_id"])
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        try:
            revoked = await store.revoke_key(conn, call.org_id, project_id, key_id)
        except LastSecretKey:
            raise Conflict(
                "every other secret key of the organization is revoked or expiring; "
                "issue another first"
            ) from None
        if revoked is None:
            raise NotFound("no such key")
        return await call.finish(
            conn,
            JSONResponse(revoked.as_dict(datetime.now(UTC))),
            call.entry("key.revoke", "key", str(key_id), project_id, kind=str(revoked.kind)),
        )


# Thirty days: long enough to roll a new key out to every server, short enough to matter.
MAX_GRACE_SECONDS: Final = 30 * 86400


@partner_route
async def rotate_key(request: Request, call: Call) -> Response:
    """Issue the key's successor; the old key keeps working for ``grace_seconds`` (default 0:
    refused at once), then is refused."""
    project_id = await _scope(request, call)
    key_id = _key_id(request.path_params["key_id"])
    doc = await call.doc(empty_is_object=True)
    grace = doc.get("grace_seconds", 0)
    if (
        not isinstance(grace, int | float)
        or isinstance(grace, bool)
        or not 0 <= grace <= MAX_GRACE_SECONDS
    ):
        raise ValidationFailed(
            f"grace_seconds must be a number from 0 to {MAX_GRACE_SECONDS}",
            errors=[{"field": "grace_seconds", "reason": f"0 to {MAX_GRACE_SECONDS} seconds"}],
        )
    store = call.svc.store
    async with store.pool.acquire() as conn, conn.transaction():
        rotated = await store.rotate_key(conn, call.org_id, project_id, key_id, float(grace))
        if rotated is None:
            raise NotFound("no such key")
        issued, old = rotated
        now = datetime.now(UTC)
        body = {**issued.as_dict(), "replaces": old.as_dict(now)}
        if project_id is not None:
            body |= {"project_id": str(project_id), "server_side": old.is_server_side}
        return await call.finish(
            conn,
            JSONResponse(body, status_code=201),
            call.entry(
                "key.rotate",
                "key",
                str(key_id),
                project_id,
                kind=str(old.kind),
                new_key_id=str(issued.key_id),
                grace_seconds=grace,
            ),
            call.entry("key.create", "key", str(issued.key_id), project_id, kind=str(old.kind)),
            replay_without_secret={**body, "key": None},
        )


# -- audit log -----------------------------------------------------------------------------

_CURSOR_PREFIX: Final = "a1."
MAX_PAGE: Final = 200


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """An audit cursor's position. It holds no organization: every page is read with the
    caller's own organization in the query, so a cursor from another one reveals nothing."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        seq = int(text.removeprefix(_CURSOR_PREFIX))
        if not 0 < seq < 2**63:  # audit_log.seq is a bigint identity
            raise ValueError(text)
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidBody("cursor is not a cursor this API returned", field="cursor") from None


def page_limit(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidBody(f"limit must be a whole number from 1 to {MAX_PAGE}", field="limit")
    return int(raw)


@partner_route
async def get_audit_log(request: Request, call: Call) -> Response:
    """The organization's audit log, newest first; ``next_cursor`` fetches the next page."""
    limit = page_limit(request)
    cursor = request.query_params.get("cursor")
    action = request.query_params.get("action") or None
    raw_key = request.query_params.get("key_id")
    key_id: uuid.UUID | None = None
    if raw_key:
        try:
            key_id = uuid.UUID(raw_key)
        except ValueError:
            raise InvalidBody("key_id must be a key id", field="key_id") from None
    rows = await call.svc.store.list_audit(
        call.org_id,
        before_seq=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
        action=action,
        key_id=key_id,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {
            "entries": [r.as_dict() for r in rows],
            "next_cursor": encode_cursor(rows[-1].seq) if more else None,
        }
    )


ROUTES: Final = [
    Route("/v1/projects", list_projects, methods=["GET"]),
    Route("/v1/projects", post_projects, methods=["POST"]),
    Route("/v1/projects/{project_id}", get_project, methods=["GET"]),
    Route("/v1/projects/{project_id}", patch_project, methods=["PATCH"]),
    Route("/v1/projects/{project_id}", delete_project, methods=["DELETE"]),
    Route("/v1/projects/{project_id}/crypto-shred", crypto_shred, methods=["POST"]),
    Route("/v1/projects/{project_id}/keys", list_keys, methods=["GET"]),
    Route("/v1/projects/{project_id}/keys", post_keys, methods=["POST"]),
    Route("/v1/projects/{project_id}/keys/{key_id}", delete_key, methods=["DELETE"]),
    Route("/v1/projects/{project_id}/keys/{key_id}/rotate", rotate_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys", post_keys, methods=["POST"]),
    Route("/v1/keys/{key_id}", delete_key, methods=["DELETE"]),
    Route("/v1/keys/{key_id}/rotate", rotate_key, methods=["POST"]),
    Route("/v1/audit-log", get_audit_log, methods=["GET"]),
]
