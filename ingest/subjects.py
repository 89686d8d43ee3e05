"""Data-subject requests: a person's events (access, portability), current state, erasure.

A person is named by user id in the path, or in a POST body by anonymous id, email or phone
(raw: normalized and hashed exactly as at ingest) or by the SHA-256 digest of either. A raw
email or phone never goes in a URL, where proxies and access logs would keep it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingest import pii, pseudonyms
from ingest.jsonx import JSONResponse
from ingest.manage import page_limit
from ingest.partner import Call, partner_route
from ingest.problems import InvalidBody, NotFound, ValidationFailed
from ingest.pseudonyms import Kind
from ingest.store import Identifiers, Project, ProjectCrypto

NDJSON: Final = "application/x-ndjson"
# Rows per export query: at most 500 x 32 KiB (the event size limit) in memory at once.
EXPORT_PAGE_ROWS: Final = 500
# Identifier columns each kind is looked up in, in export order.
COLUMNS: Final = {
    Kind.USER_ID: ("user_id",),
    Kind.ANONYMOUS_ID: ("anonymous_id",),
    Kind.EMAIL: ("email_sha256", "email_google_sha256"),
    Kind.PHONE: ("phone_sha256", "phone_e164_sha256"),
}
_ID_MAX_CHARS: Final = 255


@dataclass(frozen=True, slots=True)
class Subject:
    """The person a request names: their kind of identifier and its values (every digest
    variant for an email or phone; the first is the one receipts are keyed on)."""

    kind: Kind
    values: tuple[str, ...]

    def identifiers(self) -> Identifiers:
        found = Identifiers()
        target = {
            Kind.USER_ID: found.user_ids,
            Kind.ANONYMOUS_ID: found.anonymous_ids,
            Kind.EMAIL: found.emails,
            Kind.PHONE: found.phones,
        }[self.kind]
        target.update(self.values)
        return found


def _path_user(request: Request) -> Subject:
    user_id = request.path_params["user_id"]
    # No stored id holds U+0000 (Postgres text cannot): such a user is simply not there.
    if not user_id or len(user_id) > _ID_MAX_CHARS or "\x00" in user_id:
        raise NotFound("no such user")
    return Subject(Kind.USER_ID, (user_id,))


_BODY_FIELDS: Final = ("user_id", "anonymous_id", "email", "phone", "email_sha256", "phone_sha256")


def subject_from_body(doc: dict[str, Any], project: Project) -> Subject:
    given = [name for name in _BODY_FIELDS if name in doc]
    if len(given) != 1:
        raise ValidationFailed(
            f"name the person by exactly one of {', '.join(_BODY_FIELDS)}",
            errors=[{"field": name, "reason": "exactly one identifier"} for name in given]
            or [{"field": "user_id", "reason": "an identifier is required"}],
        )
    name = given[0]
    value = doc[name]
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > _ID_MAX_CHARS
        or "\x00" in value
    ):
        raise ValidationFailed(
            f"{name} must be a non-empty string",
            errors=[
                {
                    "field": name,
                    "reason": f"a string of 1 to {_ID_MAX_CHARS} characters, without U+0000",
                }
            ],
        )
    if name in ("user_id", "anonymous_id"):
        return Subject(Kind(name), (value,))
    if name.endswith("_sha256") and not pii.is_sha256_hex(value):
        raise ValidationFailed(
            f"{name} must be a hex SHA-256 digest",
            errors=[{"field": name, "reason": "64 hexadecimal characters"}],
        )
    # The raw forms are hashed exactly as at ingest (a digest passes through as it is); the
    # field named in an error never echoes the value.
    if name.startswith("email"):
        email = pii.hash_email(value)
        if email is None:
            raise ValidationFailed(
                "email is not an email address", errors=[{"field": name, "reason": "an email"}]
            )
        return Subject(Kind.EMAIL, _unique(email.sha256, email.google_sha256))
    phone = pii.hash_phone(value, project.default_country)
    if phone is None:
        raise ValidationFailed(
            "phone is not a phone number (a national number needs the project's default_country)",
            errors=[{"field": name, "reason": "a phone number"}],
        )
    return Subject(Kind.PHONE, _unique(phone.sha256, phone.e164_sha256))


def _unique(*values: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v is not None))


async def _project_crypto(call: Call, project: Project) -> ProjectCrypto:
    crypto = await call.svc.store.project_crypto(project.project_id, call.org_id)
    if crypto is None:  # deleted since own_project read it
        raise NotFound("no such project")
    return crypto


def _subject_digest(crypto: ProjectCrypto, subject: Subject) -> bytes:
    return pseudonyms.digest(crypto.pseudonym, subject.kind, subject.values[0])


# -- access --------------------------------------------------------------------------------


async def export_events(call: Call, project: Project, subject: Subject) -> Response:
    crypto = await _project_crypto(call, project)
    digest = _subject_digest(crypto, subject)
    store = call.svc.store
    # Recorded before the first byte: an export that the client abandons was still made.
    async with store.pool.acquire() as conn:
        await store.audit(
            conn,
            call.entry(
                "subject.export",
                "subject",
                digest.hex(),
                project.project_id,
                subject_kind=str(subject.kind),
            ),
        )
    call.svc.metrics.subject_requests.labels(kind="export").inc()

    sealer = crypto.sealer

    async def lines() -> AsyncIterator[bytes]:
        for column in COLUMNS[subject.kind]:
            async for page in store.events_pages(
                project.project_id,
                column,
                subject.values,
                page_rows=EXPORT_PAGE_ROWS,
                sealer=sealer,
            ):
                yield b"".join(orjson.dumps(row) + b"\n" for row in page)

    return StreamingResponse(lines(), media_type=NDJSON)


@partner_route
async def export_user_events(request: Request, call: Call) -> Response:
    """Every event of one user, as NDJSON, oldest first, streamed in constant memory."""
    project = await call.own_project(request.path_params["project_id"])
    return await export_events(call, project, _path_user(request))


@partner_route
async def export_subject_events(request: Request, call: Call) -> Response:
    """Every event carrying an anonymous id, an email or a phone (raw or digest), as NDJSON."""
    project = await call.own_project(request.path_params["project_id"])
    return await export_events(call, project, subject_from_body(await call.doc(), project))


@partner_route
async def get_user(request: Request, call: Call) -> Response:
    """A user's current state: identify traits merged in arrival order, first and last seen."""
    project = await call.own_project(request.path_params["project_id"])
    subject = _path_user(request)
    store = call.svc.store
    profile = await store.profile(
        project.project_id, subject.values[0], await store.project_sealer(project.project_id)
    )
    if profile is None:
        raise NotFound("no such user")
    return JSONResponse(profile.as_dict())


# -- erasure -------------------------------------------------------------------------------


async def erase_events(call: Call, project: Project, subject: Subject) -> Response:
    store = call.svc.store
    digest = _subject_digest(await _project_crypto(call, project), subject)
    erasure_id = uuid.uuid4()
    erased = await store.erase_subject(
        call.org_id,
        project.project_id,
        subject.identifiers(),
        subject.kind,
        digest,
        erasure_id=erasure_id,
        key_id=call.key.key_id,
        request_id=call.request_id,
    )
    if erased is None:
        raise NotFound("no such project")
    counts, identifiers, forwarded = erased
    call.svc.metrics.subject_requests.labels(kind="erase").inc()
    async with store.pool.acquire() as conn, conn.transaction():
        receipt = await store.complete_erasure(
            conn, project.project_id, erasure_id, counts, identifiers, forwarded
        )
        return await call.finish(
            conn,
            JSONResponse(receipt.as_dict()),
            call.entry(
                "subject.erase",
                "subject",
                digest.hex(),
                project.project_id,
                subject_kind=str(subject.kind),
                erasure_id=str(erasure_id),
                deleted=counts,
            ),
        )


@partner_route
async def erase_user(request: Request, call: Call) -> Response:
    """Erase a user (and the identifiers their events link to) and keep them suppressed."""
    project = await call.own_project(request.path_params["project_id"])
    return await erase_events(call, project, _path_user(request))


@partner_route
async def erase_subject(request: Request, call: Call) -> Response:
    """Erase the person an anonymous id, email or phone (raw or digest) names."""
    project = await call.own_project(request.path_params["project_id"])
    return await erase_events(call, project, subject_from_body(await call.doc(), project))


@partner_route
async def list_erasures(request: Request, call: Call) -> Response:
    """The project's erasure receipts, newest first."""
    project = await call.own_project(request.path_params["project_id"])
    limit = page_limit(request)
    before: tuple[datetime, uuid.UUID] | None = None
    if cursor := request.query_params.get("cursor"):
        stamp, _, raw_id = cursor.partition("~")
        try:
            before = (datetime.fromisoformat(stamp).astimezone(UTC), uuid.UUID(raw_id))
        except (ValueError, OverflowError):
            raise InvalidBody("cursor is not a cursor this API returned", field="cursor") from None
    receipts = await call.svc.store.list_erasures(
        call.org_id, project.project_id, before=before, limit=limit + 1
    )
    more = len(receipts) > limit
    receipts = receipts[:limit]
    last = receipts[-1] if more else None
    return JSONResponse(
        {
            "erasures": [r.as_dict() for r in receipts],
            "next_cursor": (
                f"{last.requested_at.isoformat()}~{last.erasure_id}" if last is not None else None
            ),
        }
    )


@partner_route
async def get_erasure(request: Request, call: Call) -> Response:
    project = await call.own_project(request.path_params["project_id"])
    try:
        erasure_id = uuid.UUID(request.path_params["erasure_id"])
    except ValueError:
        raise NotFound("no such erasure") from None
    receipt = await call.svc.store.get_erasure(call.org_id, project.project_id, erasure_id)
    if receipt is None:
        raise NotFound("no such erasure")
    return JSONResponse(receipt.as_dict())


ROUTES: Final = [
    Route("/v1/projects/{project_id}/events/users/{user_id}", export_user_events, methods=["GET"]),
    Route("/v1/projects/{project_id}/events/users/{user_id}", erase_user, methods=["DELETE"]),
    Route("/v1/projects/{project_id}/users/{user_id}", get_user, methods=["GET"]),
    Route("/v1/projects/{project_id}/events/export", export_subject_events, methods=["POST"]),
    Route("/v1/projects/{project_id}/events/erase", erase_subject, methods=["POST"]),
    Route("/v1/projects/{project_id}/erasures", list_erasures, methods=["GET"]),
    Route("/v1/projects/{project_id}/erasures/{erasure_id}", get_erasure, methods=["GET"]),
]
