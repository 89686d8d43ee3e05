"""The console's changes go through the partner API itself, called in-process.

A console form becomes the partner request it stands for (``PATCH /v1/projects/{id}`` and so
on), dispatched to this app's own router with the session's key in the scope instead of an
Authorization header. Validation, audit log, Idempotency-Key, rate limit and error answers are
then the partner API's, not a second copy of them: what the console can do is exactly what
the key could do with curl, and the audit log shows it as that key's request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.types import Message

from ingest.logs import LOG_STATE
from ingest.partner import CONSOLE_KEY
from ingest.store import KeyRecord

# What the partner call inherits from the console request's scope: lifespan state (services),
# the app's exception handlers (a Problem becomes its problem+json answer), the log line and
# request id (the call is part of this request), and the connection's facts.
_INHERITED = (
    "state",
    "app",
    "starlette.exception_handlers",
    LOG_STATE,
    "ingest.request_id",
    "client",
    "server",
    "scheme",
    "http_version",
)


@dataclass(slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def problem(self) -> dict[str, Any]:
        """The problem+json body of a failed call (``{}`` for a success)."""
        if self.ok:
            return {}
        doc = self.json()
        return doc if isinstance(doc, dict) else {}


async def call(
    request: Request,
    key: KeyRecord,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    query: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Answer:
    """``method path`` on the partner API as ``key``; the whole answer, read into memory (the
    console never calls an export through here: those stream, see pages.py)."""
    raw = orjson.dumps(body) if body is not None else b""
    headers = [(b"content-type", b"application/json")]
    if idempotency_key:
        headers.append((b"idempotency-key", idempotency_key.encode("ascii", "replace")))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(query or {}).encode(),
        "headers": headers,
        CONSOLE_KEY: key,
    }
    for name in _INHERITED:
        if name in request.scope:
            scope[name] = request.scope[name]
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes: the call is in-process
        raise AssertionError("unreachable")

    status = 500
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                out_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app.router(scope, receive, send)
    return Answer(
        status,
        out_headers.get("content-type", ""),
        b"".join(chunks),
        out_headers,
    )
