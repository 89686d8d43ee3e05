"""Segment's Tracking API on our write path, so the Segment SDKs work by changing only their host.

Each route maps Segment's fields onto the native event and runs the same steps as /v1/events.
"""

from __future__ import annotations

import re
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import presented_key
from ingest.bodies import TRACKING_TYPES
from ingest.clientip import is_trusted_proxy
from ingest.jsonx import JSONResponse
from ingest.keys import KeyKind
from ingest.logs import LOG_STATE
from ingest.origins import check_origin
from ingest.problems import Forbidden, InvalidBody, InvalidKey
from ingest.routes import (
    Services,
    event_target,
    ingest_items,
    read_json,
    services,
)
from ingest.store import KeyRecord

# Route -> the event type it implies. The one-letter paths are what analytics.js really calls.
SINGLE_ROUTES: Final = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_PATHS: Final = ("/v1/batch", "/v1/b")
SETTINGS_PATH: Final = re.compile(r"/v1/projects/[^/]+/settings")
WRITE_PATHS: Final = frozenset({f"/v1/{name}" for name in SINGLE_ROUTES} | set(BATCH_PATHS))

# Keys of a Segment message that are about delivery, not the event. ``integrations`` turns
# Segment's destinations on and off; ours are configured per project, so it is not stored.
_DROPPED: Final = ("writeKey", "integrations", "_metadata")
# A Host header we are willing to repeat back in the settings (it becomes the SDK's apiHost).
_HOST: Final = re.compile(
    r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)


async def write_key(svc: Services, plaintext: Any) -> KeyRecord:
    try:
        key = await svc.auth.lookup(plaintext if isinstance(plaintext, str) else None)
    except InvalidKey:
        # RudderStack's Android and iOS SDKs stop sending (rather than retry for ever) when an
        # error body says "invalid write key", as RudderStack's own server words it.
        raise InvalidKey("invalid write key: missing, unknown or revoked") from None
    if key.kind is not KeyKind.WRITE:
        # A secret key in a browser's body would be a leaked secret: refuse it outright.
        raise Forbidden("the Segment and RudderStack routes take a project write key")
    return key


def _message(item: Any, kind: str | None, batch_context: Any) -> Any:
    """One Segment message in the native shape (camelCase ids are read by the parser)."""
    if not isinstance(item, dict):
        return item  # refused by the parser, with its index
    event = {k: v for k, v in item.items() if k not in _DROPPED}
    if kind is not None:
        event["type"] = kind  # the route says what it is, whatever the body claims
    if isinstance(batch_context, dict) and batch_context:
        # Segment applies a batch's context to each message; the message's own keys win.
        own = event.get("context")
        event["context"] = {**batch_context, **own} if isinstance(own, dict) else batch_context
    if event.get("type") == "identify" and event.get("traits") in (None, {}):
        # RudderStack's SDKs send an identify's traits in context.traits, not beside it: they
        # are the identify's traits (the user's current state), kept in context as sent too.
        # An empty traits object beside them says nothing, so it does not hide them.
        context = event.get("context")
        traits = context.get("traits") if isinstance(context, dict) else None
        if isinstance(traits, dict):
            event["traits"] = dict(traits)
    if event.get("type") == "page" and "category" in event:
        category = event.pop("category")
        properties = event.get("properties")
        if properties is None:
            event["properties"] = properties = {}
        if isinstance(properties, dict):
            properties.setdefault("category", category)
    return event


def _items(doc: Any, kind: str | None) -> tuple[list[Any], Any, bool]:
    """(events, batch-level sentAt, whether the body was a batch)."""
    if not isinstance(doc, dict):
        raise InvalidBody("the body must be a JSON object")
    if kind is not None:
        return [_message(doc, kind, None)], None, False
    batch = doc.get("batch")
    if not isinstance(batch, list):
        raise InvalidBody("batch must be an array of messages", field="batch")
    context = doc.get("context")
    return (
        [_message(item, None, context) for item in batch],
        doc.get("sentAt", doc.get("sent_at")),
        True,
    )


async def track_api(request: Request, kind: str | None, *, query_key: bool = False) -> Response:
    """A Tracking API call: one message of ``kind``, or a batch when ``kind`` is None. The key
    is the Basic user, else (``query_key``, sendBeacon's URL) ``?writeKey=``, else the body's."""
    svc = services(request)
    header_key = presented_key(request)
    if header_key is None and query_key:
        header_key = request.query_params.get("writeKey")
    if header_key is not None:
        # The Basic user first: an unknown key, or one over its rate, is refused before the
        # body is read.
        target = await event_target(request, svc, await write_key(svc, header_key))
        doc = await read_json(request, svc, TRACKING_TYPES)
    else:
        doc = await read_json(request, svc, TRACKING_TYPES)
        key = await write_key(svc, doc.get("writeKey") if isinstance(doc, dict) else None)
        target = await event_target(request, svc, key)
    items, sent_at, is_batch = _items(doc, kind)
    tally = await ingest_items(request, svc, target, items, sent_at, is_batch=is_batch)
    # Segment answers {"success": true}; the per-event results are ours, beside it.
    return JSONResponse({"success": True, **tally.as_dict()})


def _single(kind: str) -> Any:
    async def handler(request: Request) -> Response:
        return await track_api(request, kind)

    handler.__name__ = f"segment_{kind}"
    return handler


async def post_batch(request: Request) -> Response:
    return await track_api(request, None)


def public_base(request: Request, svc: Services) -> tuple[str, str]:
    """(protocol, host[:port][/path]) where SDKs reach this server: INGEST_PUBLIC_URL, else the
    request's Host, with X-Forwarded-Proto believed only from a trusted proxy."""
    if svc.settings.public_url is not None:
        scheme, _, rest = svc.settings.public_url.partition("://")
        return scheme, rest
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        raise InvalidBody("the Host header is not a host name; set INGEST_PUBLIC_URL")
    return public_scheme(request, svc), host


def public_scheme(request: Request, svc: Services) -> str:
    """The scheme clients reach this server with: INGEST_PUBLIC_URL's, else the request's, or
    the X-Forwarded-Proto of a trusted proxy (one that ends TLS in front of us)."""
    if svc.settings.public_url is not None:
        return svc.settings.public_url.partition("://")[0]
    forwarded = request.headers.get("x-forwarded-proto", "").strip().lower()
    peer = request.client.host if request.client else None
    if forwarded in ("http", "https") and is_trusted_proxy(peer, svc.settings.trusted_proxies):
        return forwarded
    return request.url.scheme


async def get_settings(request: Request) -> Response:
    """What analytics.js (from its cdnURL) and analytics-kotlin/swift fetch at start."""
    svc = services(request)
    plaintext = request.path_params["write_key"]
    key = await write_key(svc, plaintext)
    request.scope[LOG_STATE].update(
        org_id=str(key.org_id), key_id=str(key.key_id), project_id=str(key.project_id)
    )
    check_origin(request, key.allowed_origins)
    protocol, host = public_base(request, svc)
    segment_io = {
        # analytics.js sends exactly this value as the key of every call, and none without it.
        "apiKey": plaintext,
        "apiHost": f"{host}/v1",
        "protocol": protocol,
        "unbundledIntegrations": [],
        "addBundledMetadata": True,
        "maybeBundledConfigIds": {},
    }
    doc = {
        "integrations": {"Segment.io": segment_io},
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        # analytics.js reports its own telemetry to Segment's host unless told not to sample.
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return JSONResponse(doc, headers={"Cache-Control": "no-store"})


ROUTES: Final = [
    *(
        Route(f"/v1/{name}", _single(kind), methods=["POST"])
        for name, kind in SINGLE_ROUTES.items()
    ),
    *(Route(path, post_batch, methods=["POST"]) for path in BATCH_PATHS),
    Route("/v1/projects/{write_key}/settings", get_settings, methods=["GET"]),
]
