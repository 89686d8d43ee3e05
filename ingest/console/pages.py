"""The console's pages: server-rendered HTML over the partner API and the store.

Changes (projects, settings, keys) are partner API calls made in-process as the session's key
(partner_calls.py), so they validate, audit and answer exactly as the API does. Reads that the
API has no route for (the live view, event counts) and the data-subject requests, which must
not put an identifier in a URL, call the same functions the API's routes do.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ingest import keys, pii, subjects
from ingest.clientip import client_ip
from ingest.config import Settings
from ingest.console import ops
from ingest.console.partner_calls import Answer, call
from ingest.console.sessions import (
    ConsoleHandler,
    SignInThrottle,
    Visit,
    clear_cookie,
    cookie_name,
    csrf_matches,
    current_visit,
    open_session,
    read_form,
    same_origin,
    set_cookie,
)
from ingest.keys import KeyKind
from ingest.partner import Call
from ingest.problems import InvalidBody, Problem
from ingest.pseudonyms import Kind
from ingest.routes import check_rate, services
from ingest.store import Project, open_event

_HERE: Final = Path(__file__).parent
# No inline script or style, nothing from elsewhere, no framing.
_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it browsers send "Origin: null" with the console's own forms.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
# How far back the live view's first look goes, and how many events it shows at most.
LIVE_WINDOW: Final = timedelta(minutes=2)
LIVE_LIMIT: Final = 100
# Each poll re-reads this much before its cursor: an event received just before the cursor
# may commit after the poll that set it (the page drops what it already shows).
LIVE_OVERLAP: Final = timedelta(seconds=10)
_LOOKUP_FIELDS: Final = {
    "user_id": "User id",
    "anonymous_id": "Anonymous id",
    "email": "Email address",
    "phone": "Phone number",
    "email_sha256": "Email SHA-256",
    "phone_sha256": "Phone SHA-256",
}
_SETTINGS_NUMBERS: Final = (
    "events_retention_days",
    "dedup_window_days",
    "forward_queue_days",
    "dead_letter_days",
)


def _uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def _number(raw: str) -> int | str | None:
    """A form's number as the API wants it: an int, or the text as typed so the API's own
    validation names what is wrong; None when left empty."""
    raw = raw.strip()
    if not raw:
        return None
    return int(raw) if raw.isascii() and raw.isdigit() else raw


def _field_errors(answer: Answer) -> dict[str, str]:
    errors = answer.problem.get("errors") or []
    found: dict[str, str] = {}
    for error in errors:
        if isinstance(error, dict) and isinstance(error.get("field"), str):
            found[error["field"]] = str(error.get("reason", "invalid"))
    return found


class Console:
    """The console's routes and what they share: templates and the sign-in throttle."""

    def __init__(self, settings: Settings) -> None:
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.globals["LOOKUP_FIELDS"] = _LOOKUP_FIELDS
        self.throttle = SignInThrottle(settings.console_signin_per_minute)

    # -- plumbing --------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        visit: Visit | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        context.update(
            visit=visit,
            csrf=visit.csrf if visit else "",
            # A fresh Idempotency-Key per rendered form: sending the same form twice (a double
            # click, a reload) makes one change.
            idem=str(uuid.uuid4()),
        )
        return self.templates.TemplateResponse(
            request, name, context, status_code=status, headers=_HEADERS
        )

    def error(self, request: Request, visit: Visit | None, status: int, detail: str) -> Response:
        return self.render(request, "error.html", visit, status=status, detail=detail)

    def page(self, handler: ConsoleHandler) -> Any:
        """A page for signed-in users: POSTs must carry the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            svc = services(request)
            visit = await current_visit(request, svc)
            if visit is None:
                expired = cookie_name(request) in request.cookies
                if request.url.path.endswith("/feed"):
                    response: Response = Response(
                        b'{"signed_out":true}', status_code=401, media_type="application/json"
                    )
                else:
                    target = "/console/sign-in" + ("?expired=1" if expired else "")
                    response = RedirectResponse(target, status_code=303)
                if expired:
                    clear_cookie(request, response)
                return response
            # Every console path parameter is an id; in canonical form it is safe to put into
            # the partner API path the page calls ("..", "?" or "%2F" never get that far).
            params = request.scope.get("path_params", {})
            for name, raw in list(params.items()):
                parsed = _uuid(raw)
                if parsed is None:
                    return self.error(request, visit, 404, "There is no such page.")
                params[name] = str(parsed)
            form: dict[str, str] = {}
            try:
                if request.method == "POST":
                    if not same_origin(request):
                        return self.error(request, visit, 403, "This form came from another site.")
                    form = await read_form(request)
                    if not csrf_matches(visit, form):
                        return self.error(
                            request,
                            visit,
                            403,
                            "This form has expired or did not come from this console. "
                            "Go back, reload the page and send it again.",
                        )
                return await handler(request, visit, form)
            except Problem as exc:
                return self.error(request, visit, exc.status, exc.detail)

        endpoint.__name__ = handler.__name__
        return endpoint

    async def _project(self, request: Request, visit: Visit) -> Project | None:
        project_id = _uuid(request.path_params["project_id"])
        if project_id is None:
            return None
        return await services(request).store.get_project(visit.key.org_id, project_id)

    def _call(self, request: Request, visit: Visit) -> Call:
        """A partner call as the session's key, for the functions the API's routes share."""
        svc = services(request)
        check_rate(svc, visit.key)
        rid = request.scope.get("ingest.request_id")
        return Call(svc, request, visit.key, rid if isinstance(rid, str) else None)

    # -- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/console/projects", status_code=303)

    async def sign_in_page(self, request: Request) -> Response:
        if await current_visit(request, services(request)) is not None:
            return RedirectResponse("/console/projects", status_code=303)
        notice = None
        if request.query_params.get("expired"):
            notice = "Your session ended. Sign in again."
        elif request.query_params.get("signed_out"):
            notice = "You are signed out."
        return self.render(request, "sign_in.html", None, notice=notice)

    async def sign_in(self, request: Request) -> Response:
        svc = services(request)
        if not same_origin(request):
            return self.error(request, None, 403, "This form came from another site.")
        ip = client_ip(
            request.client.host if request.client else None,
            ", ".join(request.headers.getlist("x-forwarded-for")) or None,
            svc.settings.trusted_proxies,
        )
        address = str(ip) if ip is not None else "unknown"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            svc.metrics.rate_limited.inc()
            response = self.render(
                request,
                "sign_in.html",
                None,
                status=429,
                error=f"Too many failed sign-ins. Try again in {wait} seconds.",
            )
            response.headers["retry-after"] = str(wait)
            return response
        try:
            form = await read_form(request)
        except Problem as exc:
            return self.error(request, None, exc.status, exc.detail)
        key = await svc.store.find_key(_key_digest(form.get("key", "")))
        if key is None or key.kind is not KeyKind.SECRET:
            self.throttle.failed(address)
            is_write = key is not None
            return self.render(
                request,
                "sign_in.html",
                None,
                status=401,
                error=(
                    "That is a project's write key. Sign in with an organization secret key "
                    "(it starts with sk_)."
                    if is_write
                    else "That key is not a working secret key. Check it and try again."
                ),
            )
        token = await open_session(svc, key)
        response = RedirectResponse("/console/projects", status_code=303)
        set_cookie(request, response, token, svc.settings.console_max_s)
        return response

    async def sign_out(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        await services(request).store.close_session(visit.cookie_digest)
        response = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
        clear_cookie(request, response)
        return response

    # -- projects and keys -----------------------------------------------------------------

    async def projects(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        answer = await call(request, visit.key, "GET", "/v1/projects")
        return self.render(request, "projects.html", visit, projects=answer.json()["projects"])

    async def create_project(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        body: dict[str, Any] = {"name": form.get("name", "").strip()}
        if country := form.get("default_country", "").strip():
            body["default_country"] = country
        answer = await call(
            request, visit.key, "POST", "/v1/projects", body, idempotency_key=form.get("idem")
        )
        if not answer.ok:
            listed = await call(request, visit.key, "GET", "/v1/projects")
            return self.render(
                request,
                "projects.html",
                visit,
                status=answer.status,
                projects=listed.json()["projects"],
                problem=answer.problem,
                errors=_field_errors(answer),
                form=form,
            )
        created = answer.json()
        return await self._project_page(
            request, visit, created["id"], new_key=created["write_key"], status=201
        )

    async def _project_page(
        self,
        request: Request,
        visit: Visit,
        project_id: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        base = f"/v1/projects/{project_id}"
        project = await call(request, visit.key, "GET", base)
        if project.status == 404:
            return self.error(request, visit, 404, "There is no such project.")
        keys = await call(request, visit.key, "GET", base + "/keys")
        destinations = await call(request, visit.key, "GET", base + "/destinations")
        return self.render(
            request,
            "project.html",
            visit,
            status=status,
            project=project.json(),
            keys=keys.json()["keys"],
            destinations=destinations.json()["destinations"],
            **context,
        )

    async def project(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        return await self._project_page(request, visit, request.path_params["project_id"])

    async def update_project(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        project_id = request.path_params["project_id"]
        body: dict[str, Any] = {
            "name": form.get("name", "").strip(),
            "default_country": form.get("default_country", "").strip().upper() or None,
            "identifier_pii": form.get("identifier_pii", "reject"),
        }
        if storage := form.get("digest_storage"):
            body["digest_storage"] = storage
        origins = [o.strip() for o in form.get("allowed_origins", "").splitlines() if o.strip()]
        body["allowed_origins"] = origins or None
        for name in _SETTINGS_NUMBERS:
            value = _number(form.get(name, ""))
            if value is not None:
                body[name] = value
        answer = await call(
            request,
            visit.key,
            "PATCH",
            f"/v1/projects/{project_id}",
            body,
            idempotency_key=form.get("idem"),
        )
        if answer.ok or answer.status == 409:
            return await self._project_page(request, visit, project_id, saved=answer.ok)
        return await self._project_page(
            request,
            visit,
            project_id,
            status=answer.status,
            problem=answer.problem,
            errors=_field_errors(answer),
        )

    async def crypto_shred(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project_id = request.path_params["project_id"]
        answer = await call(
            request,
            visit.key,
            "POST",
            f"/v1/projects/{project_id}/crypto-shred",
            idempotency_key=form.get("idem"),
        )
        if answer.ok:
            return await self._project_page(
                request,
                visit,
                project_id,
                notice="Crypto-shredded: the digests stored so far can no longer be read.",
            )
        return await self._project_page(
            request, visit, project_id, status=answer.status, problem=answer.problem
        )

    async def _key_action(
        self,
        request: Request,
        visit: Visit,
        form: dict[str, str],
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> tuple[Answer, dict[str, Any]]:
        answer = await call(
            request, visit.key, method, path, body, idempotency_key=form.get("idem")
        )
        context: dict[str, Any] = {}
        if answer.ok:
            doc = answer.json()
            issued = doc.get("key") if isinstance(doc.get("key"), dict) else doc
            if isinstance(issued, dict) and issued.get("key"):
                context["new_key"] = issued
            else:
                context["notice"] = "Done."
        elif answer.status == 409 and answer.problem.get("created"):
            context["notice"] = (
                "This form was sent before and the key was created then; its secret was shown "
                "once, on that page. Rotate the key if the secret was lost."
            )
        else:
            context["problem"] = answer.problem
        return answer, context

    async def create_write_key(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        project_id = request.path_params["project_id"]
        answer, context = await self._key_action(
            request,
            visit,
            form,
            "POST",
            f"/v1/projects/{project_id}/keys",
            {"server_side": form.get("server_side") == "on"},
        )
        return await self._project_page(request, visit, project_id, status=answer.status, **context)

    async def change_write_key(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        project_id = request.path_params["project_id"]
        path = f"/v1/projects/{project_id}/keys/{request.path_params['key_id']}"
        answer, context = await self._key_action(request, visit, form, *_key_change(path, form))
        return await self._project_page(request, visit, project_id, status=answer.status, **context)

    async def org_keys(
        self,
        request: Request,
        visit: Visit,
        form: dict[str, str],
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        keys = await call(request, visit.key, "GET", "/v1/keys")
        return self.render(
            request, "keys.html", visit, status=status, keys=keys.json()["keys"], **context
        )

    async def create_secret_key(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        answer, context = await self._key_action(request, visit, form, "POST", "/v1/keys", {})
        return await self.org_keys(request, visit, form, status=answer.status, **context)

    async def change_secret_key(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        path = f"/v1/keys/{request.path_params['key_id']}"
        answer, context = await self._key_action(request, visit, form, *_key_change(path, form))
        return await self.org_keys(request, visit, form, status=answer.status, **context)

    # -- live events -----------------------------------------------------------------------

    async def live(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project = await self._project(request, visit)
        if project is None:
            return self.error(request, visit, 404, "There is no such project.")
        return self.render(request, "live.html", visit, project=project.as_dict())

    async def live_feed(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        """The project's newest events and refused events since ``since`` (ISO 8601), as
        stored: hashed identifiers, country and region, never a raw value (none is kept)."""
        project = await self._project(request, visit)
        if project is None:
            return Response(b'{"error":"no such project"}', 404, media_type="application/json")
        now = datetime.now(UTC)
        since = now - LIVE_WINDOW
        if raw := request.query_params.get("since"):
            try:
                asked = datetime.fromisoformat(raw).astimezone(UTC) - LIVE_OVERLAP
            except (ValueError, OverflowError):
                asked = since
            since = max(since, asked)
        store = services(request).store
        sealer = await store.project_sealer(project.project_id)
        events = [
            open_event(sealer, e)
            for e in await store.recent_events(project.project_id, since, LIVE_LIMIT)
        ]
        refused = await store.recent_rejections(project.project_id, since, LIVE_LIMIT)
        body = {
            "now": now.isoformat(),
            "events": events,
            "rejected": [
                {
                    "received_at": r.received_at,
                    "type": r.event_type,
                    "code": r.code,
                    "field": r.field,
                    "reason": r.reason,
                }
                for r in refused
            ],
        }
        return Response(orjson.dumps(body), media_type="application/json", headers=_HEADERS)

    # -- data-subject requests -------------------------------------------------------------

    async def _erasures(self, request: Request, visit: Visit, project_id: uuid.UUID) -> Any:
        answer = await call(
            request, visit.key, "GET", f"/v1/projects/{project_id}/erasures", query={"limit": "20"}
        )
        return answer.json()["erasures"]

    async def _people_page(
        self, request: Request, visit: Visit, project: Project, *, status: int = 200, **context: Any
    ) -> Response:
        return self.render(
            request,
            "people.html",
            visit,
            status=status,
            project=project.as_dict(),
            erasures=await self._erasures(request, visit, project.project_id),
            **context,
        )

    async def people(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project = await self._project(request, visit)
        if project is None:
            return self.error(request, visit, 404, "There is no such project.")
        return await self._people_page(request, visit, project)

    async def _subject(
        self, request: Request, visit: Visit, form: dict[str, str], project: Project
    ) -> subjects.Subject:
        """The person a form names: typed (``field`` and ``value``, hashed here exactly as at
        ingest) or carried from the lookup's answer (``kind`` and its ``values``: digests or
        ids, never a raw email or phone)."""
        if "kind" in form:
            try:
                kind = Kind(form["kind"])
            except ValueError:
                raise InvalidBody("kind is not a kind of identifier", field="kind") from None
            raw = form.get("values", "")
            if kind not in (Kind.EMAIL, Kind.PHONE):
                return subjects.subject_from_body({str(kind): raw}, project)
            # An email or phone travels as its digests (every variant the lookup found).
            values = tuple(raw.split())[:2]
            if not values or not all(pii.is_sha256_hex(v) for v in values):
                raise InvalidBody("values must be SHA-256 digests", field="values")
            return subjects.Subject(kind, tuple(v.lower() for v in values))
        name = form.get("field", "")
        if name not in _LOOKUP_FIELDS:
            raise InvalidBody("choose what the person is named by", field="field")
        return subjects.subject_from_body({name: form.get("value", "")}, project)

    async def lookup(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project = await self._project(request, visit)
        if project is None:
            return self.error(request, visit, 404, "There is no such project.")
        try:
            subject = await self._subject(request, visit, form, project)
        except Problem as exc:
            return await self._people_page(
                request,
                visit,
                project,
                status=422,
                problem={"detail": exc.detail},
                chosen=form.get("field"),
            )
        store = services(request).store
        sealer = await store.project_sealer(project.project_id)
        count = await store.count_events(
            project.project_id, subjects.COLUMNS[subject.kind], subject.values, sealer
        )
        profile = None
        if subject.kind is Kind.USER_ID:
            found = await store.profile(project.project_id, subject.values[0], sealer)
            profile = found.as_dict() if found is not None else None
        return await self._people_page(
            request,
            visit,
            project,
            subject=subject,
            shown=_shown(subject),
            count=count,
            profile=profile,
            chosen=form.get("field"),
        )

    async def export(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project = await self._project(request, visit)
        if project is None:
            return self.error(request, visit, 404, "There is no such project.")
        subject = await self._subject(request, visit, form, project)
        response = await subjects.export_events(self._call(request, visit), project, subject)
        assert isinstance(response, StreamingResponse)  # noqa: S101  # export_events streams
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        response.headers["content-disposition"] = (
            f'attachment; filename="export-{subject.kind}-{stamp}.ndjson"'
        )
        response.headers["cache-control"] = "no-store"
        return response

    async def confirm_erase(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project = await self._project(request, visit)
        if project is None:
            return self.error(request, visit, 404, "There is no such project.")
        subject = await self._subject(request, visit, form, project)
        if form.get("confirm") != "erase":
            return self.render(
                request,
                "confirm_erase.html",
                visit,
                project=project.as_dict(),
                subject=subject,
                shown=_shown(subject),
            )
        response = await subjects.erase_events(self._call(request, visit), project, subject)
        receipt = orjson.loads(bytes(response.body))
        return self.render(
            request, "receipt.html", visit, project=project.as_dict(), receipt=receipt, fresh=True
        )

    async def receipt(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        project_id = request.path_params["project_id"]
        answer = await call(
            request,
            visit.key,
            "GET",
            f"/v1/projects/{project_id}/erasures/{request.path_params['erasure_id']}",
        )
        if not answer.ok:
            return self.error(request, visit, answer.status, "There is no such erasure.")
        project = await call(request, visit.key, "GET", f"/v1/projects/{project_id}")
        return self.render(
            request, "receipt.html", visit, project=project.json(), receipt=answer.json()
        )

    # -- audit log and operations ----------------------------------------------------------

    async def audit(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        query = {
            name: value
            for name in ("action", "key_id", "cursor")
            if (value := request.query_params.get(name, "").strip())
        }
        answer = await call(request, visit.key, "GET", "/v1/audit-log", query=query)
        if not answer.ok:
            return self.render(
                request,
                "audit.html",
                visit,
                status=answer.status,
                entries=[],
                next_cursor=None,
                problem=answer.problem,
                query=query,
            )
        doc = answer.json()
        return self.render(
            request,
            "audit.html",
            visit,
            entries=doc["entries"],
            next_cursor=doc["next_cursor"],
            query=query,
        )

    async def operations(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        return self.render(
            request,
            "ops.html",
            visit,
            snapshot=ops.snapshot(services(request).metrics.render()),
        )

    async def operations_feed(
        self, request: Request, visit: Visit, form: dict[str, str]
    ) -> Response:
        snapshot = ops.snapshot(services(request).metrics.render())
        return Response(orjson.dumps(snapshot), media_type="application/json", headers=_HEADERS)

    # -- routes ----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        p = self.page
        project = "/projects/{project_id}"
        return [
            Mount(
                "/console",
                routes=[
                    Route("/", self.home, methods=["GET"]),
                    Route("/sign-in", self.sign_in_page, methods=["GET"]),
                    Route("/sign-in", self.sign_in, methods=["POST"]),
                    Route("/sign-out", p(self.sign_out), methods=["POST"]),
                    Route("/projects", p(self.projects), methods=["GET"]),
                    Route("/projects", p(self.create_project), methods=["POST"]),
                    Route(project, p(self.project), methods=["GET"]),
                    Route(project, p(self.update_project), methods=["POST"]),
                    Route(project + "/crypto-shred", p(self.crypto_shred), methods=["POST"]),
                    Route(project + "/keys", p(self.create_write_key), methods=["POST"]),
                    Route(project + "/keys/{key_id}", p(self.change_write_key), methods=["POST"]),
                    Route(project + "/live", p(self.live), methods=["GET"]),
                    Route(project + "/live/feed", p(self.live_feed), methods=["GET"]),
                    Route(project + "/people", p(self.people), methods=["GET"]),
                    Route(project + "/people", p(self.lookup), methods=["POST"]),
                    Route(project + "/people/export", p(self.export), methods=["POST"]),
                    Route(project + "/people/erase", p(self.confirm_erase), methods=["POST"]),
                    Route(project + "/erasures/{erasure_id}", p(self.receipt), methods=["GET"]),
                    Route("/keys", p(self.org_keys), methods=["GET"]),
                    Route("/keys", p(self.create_secret_key), methods=["POST"]),
                    Route("/keys/{key_id}", p(self.change_secret_key), methods=["POST"]),
                    Route("/audit", p(self.audit), methods=["GET"]),
                    Route("/operations", p(self.operations), methods=["GET"]),
                    Route("/operations/feed", p(self.operations_feed), methods=["GET"]),
                    Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
                ],
            )
        ]


def _key_change(path: str, form: dict[str, str]) -> tuple[str, str, dict[str, Any] | None]:
    """A key form's partner call: rotate (with its grace period in hours) or revoke."""
    if form.get("action") == "rotate":
        hours = _number(form.get("grace_hours", "")) or 0
        grace: Any = hours * 3600 if isinstance(hours, int) else hours
        return "POST", path + "/rotate", {"grace_seconds": grace}
    return "DELETE", path, None


def _shown(subject: subjects.Subject) -> str:
    """How the page names a person: an id as it is stored, an email or phone by the start of
    its SHA-256 (the typed value is never put back into the page)."""
    if subject.kind in (Kind.EMAIL, Kind.PHONE):
        return f"{subject.kind} with SHA-256 {subject.values[0][:12]}…"
    return f"{subject.kind.replace('_', ' ')} {subject.values[0]}"


def _key_digest(plaintext: str) -> bytes:
    return keys.digest(plaintext.strip())
