"""Structured logging, and the middleware that writes one canonical line per request.

The line names the request, the tenant, the route template, the status and the time taken. It
never holds a body, a header value, a key, an IP, an email or a phone; a redaction processor
at the end of the chain is the last line of defence if code ever tries.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO, Final

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.metrics import Metrics

log = structlog.get_logger("ingest.http")

LOG_STATE: Final = "ingest.log"  # scope key: what handlers add to the request's log line

_EMAIL_RE: Final = re.compile(r"[^\s@\"'<>(),;:]+(@|%40)[^\s@\"'<>(),;:]+\.[A-Za-z]{2,}")
_DIGIT_RE: Final = re.compile(r"\d")
_IPV4_RE: Final = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_RE: Final = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}")
# International (+ or 00) numbers, and North-American ones written with separators.
_PHONE_RE: Final = re.compile(
    r"(?:\+|\b00)\d[\d\s().-]{6,}\d"
    r"|(?<![\d.])(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\d.])"
)
# "event" (the message) is redacted too: an f-string message is the likeliest side door. The
# request line's own fields are ids and numbers this service generated: no need to scan them.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SAFE_KEYS: Final = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "request_id",
        "org_id",
        "key_id",
        "project_id",
        "route",
        "method",
        "status",
        "duration_ms",
        "events_accepted",
        "events_rejected",
        # The address this server listens on: configuration, not a client's address.
        "host",
        "port",
    }
)


def redact_text(text: str) -> str:
    """``text`` with anything shaped like an email, phone or IP address masked."""
    if "@" in text or "%40" in text:
        text = _EMAIL_RE.sub("[email]", text)
    if _DIGIT_RE.search(text):  # _PHONE_RE needs one; the search is in C, unlike a loop
        text = _PHONE_RE.sub("[phone]", text)
    if "." in text:
        text = _IPV4_RE.sub(lambda m: "[ip]" if _is_ip(m[0]) else m[0], text)
    if ":" in text:
        text = _IPV6_RE.sub(lambda m: "[ip]" if _is_ip(m[0]) else m[0], text)
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_pii(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: mask anything shaped like an email, phone or IP address."""
    return {k: (v if k in _SAFE_KEYS else _redact(v)) for k, v in event_dict.items()}


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: BinaryIO | None = None
) -> None:
    """Called once by the CLI (and by tests that read the log), never at import.

    Lines go to ``stream`` (stdout by default): JSON, or a readable console format when
    ``fmt`` is "console", or "auto" and the stream is a terminal.
    """
    out = stream if stream is not None else sys.stdout.buffer
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # show_locals=False: a local variable of a failing frame may hold a request body.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        redact_pii,
    ]
    level_no = logging.getLevelNamesMapping()[level.upper()]
    if console:
        renderer: Any = structlog.dev.ConsoleRenderer()
        structlog.configure(
            processors=[*shared, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(level_no),
            logger_factory=_NamedPrintLoggerFactory(_TextStream(out)),
            cache_logger_on_first_use=stream is None,
        )
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        structlog.configure(
            processors=[*shared, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(level_no),
            logger_factory=structlog.BytesLoggerFactory(out),
            cache_logger_on_first_use=stream is None,
        )

    # Foreign (stdlib) records, e.g. uvicorn's and asyncpg's, get the same shape and redaction.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[:-1],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_pii,
            structlog.processors.JSONRenderer() if not console else structlog.dev.ConsoleRenderer(),
        ],
    )
    handler = logging.StreamHandler(_TextStream(out))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    # uvicorn's access log prints client IPs; our request line replaces it.
    logging.getLogger("uvicorn.access").disabled = True


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows its name, as BytesLogger does (add_logger_name reads it)."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "")


class _TextStream:
    """Lets a stdlib handler write into the same bytes stream as structlog."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def write(self, text: str) -> int:
        return self._raw.write(text.encode())

    def flush(self) -> None:
        self._raw.flush()

    def isatty(self) -> bool:
        return self._raw.isatty()


class RequestContext:
    """Request id, the canonical request line, and request metrics.

    Pure ASGI: BaseHTTPMiddleware would cut contextvars off from the handlers.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Request ids: a random per-process prefix and a counter. Unique across workers and
        # restarts, and without uuid4's getrandom() system call on every request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        # prometheus-client's labels() takes a lock and builds a key on every call; the label
        # sets here are few and fixed, so their children are kept.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Always our own id: a client-chosen one could carry anything into every log line.
        request_id = f"{self._id_prefix}{next(self._ids):016x}"
        line: dict[str, Any] = {}
        scope[LOG_STATE] = line
        scope["ingest.request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            # A mounted route's template is relative to its mount (the console's /console).
            template = scope.get("root_path", "") + path if path else "unmatched"
            elapsed = time.perf_counter() - started
            # The method is client-chosen (any token, digits and '+' included): a fixed set only.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            children = self._children.get((template, method, status))
            if children is None:
                children = (
                    self.metrics.requests.labels(route=template, method=method, status=str(status)),
                    self.metrics.request_seconds.labels(route=template),
                )
                if template != "unmatched" or len(self._children) < 1000:
                    self._children[(template, method, status)] = children
            children[0].inc()
            children[1].observe(elapsed)
            if template not in ("/metrics", "/healthz", "/readyz"):
                log.info(
                    "request_finished",
                    method=method,
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    **line,
                )
