"""Reading request bodies within limits, gzip included.

The size limit applies to the decoded body and is enforced while streaming, so a gzip bomb costs
at most the limit in memory, never its inflated size: nobody gets more room by arriving compressed.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Final

from starlette.requests import Request

from ingest.problems import InvalidBody, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

JSON_TYPES: Final = frozenset({"application/json", "text/plain", ""})
# The Tracking API's routes also take JSON labelled as a form: rudder-sdk-node (through axios)
# labels its gzip bodies application/x-www-form-urlencoded, and RudderStack's own server reads
# the body whatever its label. A real form is not JSON and is refused as such (400).
TRACKING_TYPES: Final = JSON_TYPES | {"application/x-www-form-urlencoded"}


def check_content_type(request: Request, accepted: frozenset[str] = JSON_TYPES) -> None:
    # text/plain is what navigator.sendBeacon and the Segment browser SDK send, to skip preflight.
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in accepted:
        named = sorted(accepted - {""})
        raise UnsupportedMediaType(
            f"the body must be {', '.join(named[:-1])} or {named[-1]}", accepted=named
        )


async def read_body(request: Request, limit: int, deadline_s: float = 30.0) -> bytes:
    """The decoded body, refused past ``limit`` bytes or ``deadline_s`` seconds (a slow client
    holding a connection open byte by byte is a cheap attack on a server)."""
    if _arrived(request):
        return await _read_body(request, limit)
    try:
        async with asyncio.timeout(deadline_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {deadline_s:g} seconds") from None


def _arrived(request: Request) -> bool:
    """Whether the server holds the whole body already, so that reading it cannot wait and
    needs no deadline: the usual SDK request arrives with its headers in one segment, and the
    deadline's timer (asyncio.timeout: a timer armed and cancelled) was the dearest single step
    of a single-event request, about 5 us of 150. Known for uvicorn's receive only (its
    request cycle's more_body turns False once the message is complete, with both of its
    HTTP implementations); for any other server, or a body still arriving, False."""
    cycle = getattr(request.receive, "__self__", None)
    return getattr(cycle, "more_body", True) is False


async def _read_body(request: Request, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if "," in encoding:
        raise UnsupportedMediaType("one content encoding at most (gzip); chains are refused")
    if encoding not in ("identity", "gzip", "x-gzip", ""):
        raise UnsupportedMediaType("the content encoding must be gzip or identity")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {int(declared)} bytes; the limit is {limit}",
            limit=limit,
            size=int(declared),
        )
    if encoding in ("gzip", "x-gzip"):
        return await _read_gzip(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the body is more than {limit} bytes; the limit is {limit}", limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_gzip(request: Request, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    size = 0
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(
                    f"the compressed body is more than {limit} bytes", limit=limit
                )
            if inflater.eof:
                if chunk:
                    raise InvalidBody("data follows the end of the gzip stream")
                continue
            # max_length stops inflating one byte past the limit: the rest is never expanded.
            piece = inflater.decompress(chunk, limit - size + 1)
            size += len(piece)
            if size > limit or inflater.unconsumed_tail:
                raise PayloadTooLarge(
                    f"the body inflates to more than {limit} bytes; the limit is {limit}",
                    limit=limit,
                )
            out.append(piece)
            if inflater.unused_data:
                raise InvalidBody("data follows the end of the gzip stream")
    except zlib.error:
        raise InvalidBody("the body is not valid gzip") from None
    if not inflater.eof:
        raise InvalidBody("the gzip stream is truncated")
    return b"".join(out)


async def read_raw(request: Request, limit: int, deadline_s: float = 30.0) -> bytes:
    """The body as sent (not decoded), at most ``limit`` bytes, kept on the request so that a
    later read_body reads (and decodes) it again."""
    try:
        async with asyncio.timeout(deadline_s):
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body is more than {limit} bytes; the limit is {limit}", limit=limit
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {deadline_s:g} seconds") from None
    body = b"".join(chunks)
    # Starlette's Request.stream() yields _body when it is set: the documented way to read a
    # body twice is request.body(), which has no size limit.
    request._body = body
    return body
