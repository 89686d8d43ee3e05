"""Console sign-in: a secret key exchanged for a server-side session, CSRF, sign-in throttling.

The browser holds only a random session id, in an HttpOnly, SameSite=Strict cookie (Secure, and
``__Host-`` prefixed, when served over https). The database holds its SHA-256, the organization
and the id of the key it acts as; the key itself is never kept, in the browser or here. Every
request looks the session up again and the key behind it, so signing out, expiry, or revoking
the key ends it at once.

Every state-changing form carries the session's synchronizer token (compared in constant
time), and every console POST must come from the console's own origin when the browser says
where it comes from (Origin header). Sign-in has no session yet: SameSite and the Origin check
cover it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ingest import bodies
from ingest.keys import KeyKind
from ingest.problems import Problem
from ingest.routes import Services, log_fields, services
from ingest.segment import public_scheme
from ingest.store import ConsoleSession, KeyRecord

# Forms are small: a project's settings are the largest.
MAX_FORM_BYTES: Final = 32 * 1024
_PLAIN_COOKIE: Final = "ingest_console"
_TLS_COOKIE: Final = "__Host-ingest_console"
# Failed sign-ins remembered per client address, at most this many addresses per worker.
_MAX_ADDRESSES: Final = 10_000


def _tls(request: Request) -> bool:
    """Served over https as the browser sees it (behind a TLS-ending proxy too)."""
    return public_scheme(request, services(request)) == "https"


def cookie_name(request: Request) -> str:
    return _TLS_COOKIE if _tls(request) else _PLAIN_COOKIE


def session_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Visit:
    """A signed-in request: the session and the secret key it acts as."""

    session: ConsoleSession
    key: KeyRecord
    cookie_digest: bytes

    @property
    def csrf(self) -> str:
        return self.session.csrf_token


class FormError(Problem):
    """The form could not be read."""

    slug = "invalid-form"


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (the console's forms are nothing else): last value of
    each name wins."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await bodies.read_raw(request, MAX_FORM_BYTES)
    if content_type != "application/x-www-form-urlencoded":
        raise FormError("the console's forms are sent url-encoded")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=200))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (CSRF, including
    login CSRF); True when it comes from ours or says nothing (a non-browser client)."""
    # Fetch metadata first (every current browser sends it): the browser's own verdict.
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    # The host only: behind a proxy that ends TLS the scheme seen here is not the browser's.
    return urlsplit(origin).netloc == request.headers.get("host", "")


def csrf_matches(visit: Visit, form: dict[str, str]) -> bool:
    return hmac.compare_digest(form.get("csrf", "").encode(), visit.csrf.encode())


async def current_visit(request: Request, svc: Services) -> Visit | None:
    token = request.cookies.get(cookie_name(request))
    if not token or len(token) > 128:
        return None
    digest = session_digest(token)
    settings = svc.settings
    session = await svc.store.touch_session(digest, settings.console_idle_s, settings.console_max_s)
    if session is None:
        return None
    # The key is looked up afresh (not through the key cache): revoking it signs its
    # sessions out on their next request.
    key = await svc.store.find_key(session.key_digest)
    if key is None or key.kind is not KeyKind.SECRET:
        return None
    log_fields(request, org_id=str(key.org_id), key_id=str(key.key_id))
    return Visit(session, key, digest)


async def open_session(svc: Services, key: KeyRecord) -> str:
    """A new session for ``key``; the cookie value that names it."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    await svc.store.open_session(
        session_digest(token), key.org_id, key.key_id, csrf, svc.settings.console_idle_s
    )
    return token


def set_cookie(request: Request, response: Response, token: str, max_age: float) -> None:
    response.set_cookie(
        cookie_name(request),
        token,
        max_age=math.ceil(max_age),
        path="/" if _tls(request) else "/console",
        secure=_tls(request),
        httponly=True,
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        cookie_name(request),
        path="/" if _tls(request) else "/console",
        secure=_tls(request),
        httponly=True,
        samesite="strict",
    )


class SignInThrottle:
    """Failed sign-ins per client address and minute, in this worker (a sliding window).

    The address is held in memory only, for at most a minute, and never written anywhere.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, ()) if now - t < 60.0]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again; None when it may now."""
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) < self.per_minute:
            return None
        return max(1, math.ceil(60.0 - (now - times[0])))

    def failed(self, address: str) -> None:
        if len(self._failures) >= _MAX_ADDRESSES:
            self._failures.clear()  # bounded memory; a reset only ever lets a try through
        self._failures.setdefault(address, []).append(time.monotonic())


ConsoleHandler = Callable[[Request, Visit, dict[str, str]], Awaitable[Response]]
