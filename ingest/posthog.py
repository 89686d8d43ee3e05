"""PostHog's capture routes on our write path, so the PostHog SDKs work with only api_host changed.

Bodies are decoded the ways the SDKs send them, then mapped onto native events and stored by
the same steps as /v1/events.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import bodies
from ingest.jsonx import JSONResponse
from ingest.keys import KeyKind
from ingest.problems import (
    Forbidden,
    InvalidBody,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingest.routes import (
    check_batch_size,
    event_target,
    ingest_items,
    parse_json,
    services,
)

# posthog-js posts to /e/ and /i/v0/e/, posthog-python to /batch/: with and without the slash.
PATHS: Final = ("/capture", "/batch", "/e", "/i/v0/e")
WRITE_PATHS: Final = frozenset({*PATHS, *(f"{p}/" for p in PATHS)})

_FORM: Final = "application/x-www-form-urlencoded"
_GZIP_MAGIC: Final = b"\x1f\x8b"
# PostHog's special events that are Segment's other types; every other event is a track.
_SPECIAL: Final = {
    "$identify": "identify",
    "$set": "identify",
    "$set_once": "identify",
    "$create_alias": "alias",
    "$groupidentify": "group",
    "$pageview": "page",
    "$screen": "screen",
}
# Properties that say how the event was sent, not what happened; never stored.
_TRANSPORT: Final = ("token", "api_key", "distinct_id", "$distinct_id", "$anon_distinct_id")


def _inflate(data: bytes, limit: int) -> bytes:
    """gunzip ``data``, stopping one byte past ``limit`` so a bomb never expands further."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise InvalidBody("the body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"the body inflates to more than {limit} bytes; the limit is {limit}", limit=limit
        )
    if not inflater.eof:
        raise InvalidBody("the gzip stream is truncated")
    return out


def _unbase64(data: bytes) -> bytes:
    try:
        # A form decoder turns an unescaped '+' into a space: undo that first.
        return base64.b64decode(data.replace(b" ", b"+"), validate=True)
    except binascii.Error:
        raise InvalidBody("the data field is not valid base64") from None


async def _payload(request: Request, limit: int) -> Any:
    """The JSON the SDK meant: plain, gzip (header or ?compression=gzip-js), or base64 in a
    ``data=`` form field, which is how posthog-js sends when it cannot compress."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in bodies.JSON_TYPES and media != _FORM:
        raise UnsupportedMediaType(
            "the body must be JSON, text/plain or a data= form",
            accepted=sorted({*bodies.JSON_TYPES, _FORM} - {""}),
        )
    raw = await bodies.read_body(request, limit)  # Content-Encoding: gzip is undone here
    compression = request.query_params.get("compression", "").lower()
    if media == _FORM or raw.startswith(b"data="):
        # latin-1 both ways: percent-escapes decode to bytes 0-255, so .encode() below cannot
        # fail on %C4%80 (which UTF-8 would turn into U+0100); base64 then judges the bytes.
        form = parse_qs(raw.decode("latin-1"), max_num_fields=20, encoding="latin-1")
        data = form.get("data", [""])[0].encode("latin-1")
        compression = form.get("compression", [compression])[0].lower()
        if not data:
            raise InvalidBody("the form has no data field", field="data")
        raw = _unbase64(data)
    elif compression == "base64":
        raw = _unbase64(raw.strip())
    if compression == "lz64":
        # Only posthog-js before 2023 sent lz-string; today's SDKs use gzip-js or base64.
        raise UnsupportedMediaType("lz64 is not supported; send gzip-js or base64")
    if raw.startswith(_GZIP_MAGIC):
        raw = _inflate(raw, limit)
    elif compression == "gzip-js":
        raise InvalidBody("compression=gzip-js but the body is not gzip")
    return parse_json(raw)


def _items(doc: Any) -> tuple[list[Any], Any, bool]:
    """(events, batch-level sent_at, whether the body was a batch)."""
    if isinstance(doc, list):
        return doc, None, True
    if not isinstance(doc, dict):
        raise InvalidBody("the body must be an event, a list of events or {batch: [...]}")
    if "batch" in doc:
        batch = doc["batch"]
        if not isinstance(batch, list):
            raise InvalidBody("batch must be an array of events", field="batch")
        return batch, doc.get("sent_at"), True
    return [doc], doc.get("sent_at"), False


def _token(doc: Any, items: list[Any]) -> str | None:
    """The project API key: beside the batch, or in each event (all must agree)."""
    if isinstance(doc, dict):
        for name in ("api_key", "token"):
            if isinstance(doc.get(name), str):
                return str(doc[name])
    found: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        props = item.get("properties")
        for value in (
            item.get("api_key"),
            item.get("token"),
            props.get("token") if isinstance(props, dict) else None,
        ):
            if isinstance(value, str):
                found.add(value)
                break
    if len(found) > 1:
        raise InvalidBody("the events carry different project keys")
    return found.pop() if found else None


def to_native(item: Any) -> Any:
    """One PostHog event as a native one. distinct_id is the user id, except when posthog-js
    says the user is anonymous (``$is_identified`` false, or the distinct id is the device id)."""
    if not isinstance(item, dict):
        return item  # refused by the parser, with its index
    raw_props = item.get("properties", {})
    if not isinstance(raw_props, dict):
        return {"type": "track", "properties": raw_props}  # the parser names the bad field
    props = dict(raw_props)
    name = item.get("event")
    distinct = item.get("distinct_id", props.get("distinct_id", props.get("$distinct_id")))
    anon = props.get("$anon_distinct_id")
    for key in _TRANSPORT:
        props.pop(key, None)

    traits: dict[str, Any] = {}
    for source in (props.pop("$set_once", None), item.get("$set_once")):
        if isinstance(source, dict):
            traits.update(source)
    for source in (props.pop("$set", None), item.get("$set")):
        if isinstance(source, dict):
            traits.update(source)  # $set wins over $set_once
    context: dict[str, Any] = {}
    ip = props.pop("$ip", None)
    if isinstance(ip, str):
        context["ip"] = ip  # believed only from a server-side key, as native context.ip
    lib, version = props.pop("$lib", None), props.pop("$lib_version", None)
    if isinstance(lib, str):
        context["library"] = {"name": lib, "version": version}

    kind = _SPECIAL.get(name, "track") if isinstance(name, str) else "track"
    event: dict[str, Any] = {
        "type": kind,
        "message_id": item.get("uuid"),
        "timestamp": item.get("timestamp"),
        "properties": props,
        "traits": traits,
        "context": context,
    }
    if kind == "track":
        event["event"] = name
    elif kind == "screen":
        event["name"] = props.get("$screen_name")
    elif kind == "alias":
        # posthog: distinct_id is the old id, properties.alias the new one.
        event["previous_id"], distinct = distinct, props.pop("alias", None)
    elif kind == "group":
        event["group_id"] = props.pop("$group_key", None)
        group_set = props.pop("$group_set", None)
        if isinstance(group_set, dict):
            traits.update(group_set)
    anonymous = props.get("$is_identified") is False or (
        distinct is not None and distinct == props.get("$device_id")
    )
    if kind == "identify" and isinstance(anon, str):
        event["anonymous_id"] = anon
    if anonymous and kind != "identify":
        event["anonymous_id"] = distinct
    else:
        event["user_id"] = distinct
    return {k: v for k, v in event.items() if v is not None}


def _sent_at(request: Request, batch_sent_at: Any) -> Any:
    """posthog-python sends ``sent_at``; posthog-js sends the time as ``?_=<epoch ms>``."""
    if batch_sent_at is not None:
        return batch_sent_at
    millis = request.query_params.get("_", "")
    if millis.isdigit() and len(millis) <= 15:
        return datetime.fromtimestamp(int(millis) / 1000, UTC).isoformat()
    return None


async def capture(request: Request) -> Response:
    svc = services(request)
    doc = await _payload(request, svc.settings.max_body_bytes)
    items, batch_sent_at, is_batch = _items(doc)
    key = await svc.auth.lookup(_token(doc, items))
    if key.kind is not KeyKind.WRITE:
        # A secret key in a browser's body would be a leaked secret: refuse it outright.
        raise Forbidden("the PostHog routes take a project write key as api_key")
    target = await event_target(request, svc, key)
    check_batch_size(svc, items)  # before the mapping does any work
    native = [to_native(item) for item in items]
    sent_at = _sent_at(request, batch_sent_at)
    tally = await ingest_items(request, svc, target, native, sent_at, is_batch=is_batch)
    # PostHog answers {"status": 1}; the per-event results are ours, beside it.
    return JSONResponse({"status": 1, **tally.as_dict()})


ROUTES: Final = [Route(path, capture, methods=["POST"]) for path in sorted(WRITE_PATHS)]
