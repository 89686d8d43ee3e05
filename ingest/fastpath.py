"""The write routes without Starlette's router and exception middleware.

Every SDK request goes to one of a few fixed POST paths, and per request the server has tens of
microseconds to spend in all (issue 5). Starlette's ExceptionMiddleware, its router's matching,
and the request_response wrapper (each with its own send wrapper and exception context) cost
more than the request line and the CORS headers together. This middleware sits where they
would run (inside RequestContext and WriteCORS, inside ServerErrorMiddleware) and calls the
same endpoint with the same exception handlers; any other request goes on to Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Exception], Awaitable[Response]]


class FastWrites:
    def __init__(
        self,
        app: ASGIApp,
        routes: Iterable[Route],
        handlers: Mapping[type[Exception], Handler],
    ) -> None:
        self.app = app
        # Exact paths only (no parameters), POST only: anything else is the router's.
        self.routes: dict[str, Route] = {
            route.path: route
            for route in routes
            if "{" not in route.path and route.methods is not None and "POST" in route.methods
        }
        # Exception itself is ServerErrorMiddleware's (a 500, and the exception re-raised).
        self.handlers = {kind: h for kind, h in handlers.items() if kind is not Exception}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # What the router would have set: RequestContext names the route in the log line and
        # the metrics by its template.
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        endpoint: Callable[[Request], Awaitable[Response]] = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        # As Starlette looks them up: the most specific registered class of the exception.
        for kind in type(exc).__mro__:
            found: Any = self.handlers.get(kind)
            if found is not None:
                handler: Handler = found
                return handler
        return None
