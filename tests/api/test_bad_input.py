"""Bad input on POST /v1/events: never a 500, never an echo, never the good events beside it lost.

Every refusal is RFC 9457 ``application/problem+json`` (type, title, status, detail, instance)
that names the field, limit or size concerned and never repeats the offending value: each bad
input below carries a canary string that must not come back in the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Settings
from ingest.keys import digest
from ingest.metrics import Metrics
from tests.conftest import basic, bearer, client_for

PROBLEM = "https://ingest.dev/problems/"
CANARY = f"cnry-{uuid.uuid4().hex[:12]}"
CANARY_EMAIL = f"{CANARY}@example.test"
DEFAULT_BODY_LIMIT = Settings().max_body_bytes
DEFAULT_EVENT_LIMIT = Settings().max_event_bytes
DEFAULT_BATCH_LIMIT = Settings().max_batch_events
DEFAULT_DEPTH = Settings().max_depth


def good(n: int) -> dict[str, Any]:
    return {"type": "track", "event": f"Good {n}", "user_id": f"u-{n}", "message_id": f"good-{n}"}


def assert_no_echo(r: httpx.Response, *secrets: str) -> None:
    for secret in (CANARY, *secrets):
        assert secret not in r.text, f"the response echoes {secret!r}"
        for name, value in r.headers.items():
            assert secret not in value, f"header {name} echoes {secret!r}"


def assert_problem(r: httpx.Response, status: int, slug: str | None) -> dict[str, Any]:
    """The RFC 9457 shape; ``slug`` None for the router's own errors (type about:blank)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys(), body
    assert body["type"] == (PROBLEM + slug if slug else "about:blank")
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == r.headers["x-request-id"]
    assert_no_echo(r)
    return body


def assert_rejected(body: dict[str, Any], code: str, field: str | None = None) -> dict[str, Any]:
    """A single event refused with 400 validation: errors[0] carries the code and field."""
    [error] = body["errors"]
    assert error["index"] == 0
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    return dict(error)


async def stored_message_ids(conn: asyncpg.Connection) -> list[str]:
    return sorted(r["message_id"] for r in await conn.fetch("SELECT message_id FROM events"))


async def count_events(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM events")
    return n


async def post_json(client: httpx.AsyncClient, key: str, doc: Any) -> httpx.Response:
    return await client.post(
        "/v1/events",
        content=orjson.dumps(doc),
        headers={**bearer(key), "Content-Type": "application/json"},
    )


async def post_raw(
    client: httpx.AsyncClient, key: str, body: bytes, **headers: str
) -> httpx.Response:
    return await client.post(
        "/v1/events",
        content=body,
        headers={**bearer(key), "Content-Type": "application/json", **headers},
    )


async def post_batch_beside_goods(
    client: httpx.AsyncClient, key: str, bad: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    """[good, bad, good]: answered 200, the bad one reported at index 1."""
    r = await post_json(client, key, {"batch": [good(0), bad, good(2)]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert_no_echo(r)
    body: dict[str, Any] = r.json()
    return r, body


async def assert_only_goods_stored(conn: asyncpg.Connection) -> None:
    assert await stored_message_ids(conn) == ["good-0", "good-2"]


def _rejected_at_1(body: dict[str, Any], code: str, field: str | None = None) -> None:
    assert body["accepted"] == 2
    [issue] = body["rejected"]
    assert issue["index"] == 1
    assert issue["code"] == code, issue
    if field is not None:
        assert issue["field"] == field, issue


@contextlib.asynccontextmanager
async def app_with(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same database with some limits changed."""
    custom = dataclasses.replace(settings, **overrides)
    async with (
        LifespanManager(create_app(custom, metrics=Metrics())) as manager,
        client_for(manager.app) as c,
    ):
        yield c


def padded(doc: dict[str, Any], size: int) -> bytes:
    """``doc`` as JSON, padded with trailing whitespace (still valid JSON) to exactly ``size``."""
    raw = orjson.dumps(doc)
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def nested(levels: int, leaf: Any) -> dict[str, Any]:
    """``levels`` objects, one inside the other; the innermost holds ``leaf``."""
    doc: dict[str, Any] = {"leaf": leaf}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


# --- 1. Malformed JSON and the wrong shape --------------------------------------------------------


class TestMalformedJSON:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"event": "' + CANARY.encode() + b'", "user_id": "u"',  # truncated
            b'{"event": "' + CANARY.encode(),  # truncated inside a string
            b"garbage " + CANARY.encode(),
            b"{'event': '" + CANARY.encode() + b"'}",  # single quotes
            b'{"event": "x", "user_id": "' + CANARY.encode() + b'",}',  # trailing comma
            b'{"event": "x"} {"event": "' + CANARY.encode() + b'"}',  # two documents
            b"\xff\xfe" + CANARY.encode(),  # not UTF-8
            b"",
            b"   \n\t ",
        ],
        ids=[
            "truncated",
            "truncated-string",
            "garbage",
            "single-quotes",
            "trailing-comma",
            "two-documents",
            "not-utf8",
            "empty",
            "whitespace",
        ],
    )
    async def test_is_400_invalid_json(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, body: bytes
    ) -> None:
        r = await post_raw(client, write_key, body)
        assert_problem(r, 400, "invalid-json")
        assert await count_events(conn) == 0

    async def test_empty_body_says_so(self, client: httpx.AsyncClient, write_key: str) -> None:
        r = await post_raw(client, write_key, b"")
        assert "empty" in assert_problem(r, 400, "invalid-json")["detail"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (b"5", None),
            (b'"' + CANARY.encode() + b'"', None),
            (b"true", None),
            (b"null", None),
            (b'{"batch": 5}', "batch"),
            (b'{"batch": "' + CANARY.encode() + b'"}', "batch"),
            (b'{"batch": {"event": "x", "user_id": "u"}}', "batch"),
            (b'{"batch": null}', "batch"),
        ],
        ids=[
            "number",
            "string",
            "bool",
            "null",
            "batch-number",
            "batch-string",
            "batch-object",
            "batch-null",
        ],
    )
    async def test_json_that_is_not_an_event_is_400_invalid_body(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        body: bytes,
        field: str | None,
    ) -> None:
        r = await post_raw(client, write_key, body)
        problem = assert_problem(r, 400, "invalid-body")
        if field is not None:
            assert problem["field"] == field
        assert await count_events(conn) == 0


# --- 2. Content type ------------------------------------------------------------------------------


class TestContentType:
    @pytest.mark.parametrize(
        "content_type",
        [
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "text/html",
            "application/vnd.api+json",
        ],
    )
    async def test_other_types_are_415(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        content_type: str,
    ) -> None:
        body = orjson.dumps({"event": "x", "user_id": "u", "properties": {"c": CANARY}})
        r = await post_raw(client, write_key, body, **{"Content-Type": content_type})
        problem = assert_problem(r, 415, "unsupported-media-type")
        assert problem["accepted"] == ["application/json", "text/plain"]
        assert await count_events(conn) == 0

    @pytest.mark.parametrize(
        "content_type",
        [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/json; charset=utf-8",
            "Application/JSON",
            None,
        ],
    )
    async def test_json_text_and_none_are_accepted(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        content_type: str | None,
    ) -> None:
        headers = bearer(write_key)
        if content_type is not None:  # None: httpx sends no Content-Type with raw bytes
            headers["Content-Type"] = content_type
        r = await client.post("/v1/events", content=orjson.dumps(good(1)), headers=headers)
        assert r.request.headers.get("content-type") == content_type
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1
        assert await stored_message_ids(conn) == ["good-1"]


# --- 3. Body size ---------------------------------------------------------------------------------

SMALL_LIMIT = 4096


class TestBodySize:
    async def test_declared_length_over_the_limit_is_413_with_limit_and_size(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        body = padded({**good(1), "properties": {"c": CANARY}}, DEFAULT_BODY_LIMIT + 10)
        r = await post_raw(client, write_key, body)
        problem = assert_problem(r, 413, "payload-too-large")
        assert problem["limit"] == DEFAULT_BODY_LIMIT
        assert problem["size"] == DEFAULT_BODY_LIMIT + 10
        assert str(DEFAULT_BODY_LIMIT) in problem["detail"]
        assert await count_events(conn) == 0

    async def test_exactly_at_the_limit_is_accepted_and_one_byte_more_is_413(
        self, settings: Settings, write_key: str, conn: asyncpg.Connection
    ) -> None:
        async with app_with(settings, max_body_bytes=SMALL_LIMIT) as c:
            at = await post_raw(c, write_key, padded(good(1), SMALL_LIMIT))
            over = await post_raw(c, write_key, padded(good(2), SMALL_LIMIT + 1))
        assert at.status_code == 200, at.text
        problem = assert_problem(over, 413, "payload-too-large")
        assert (problem["limit"], problem["size"]) == (SMALL_LIMIT, SMALL_LIMIT + 1)
        assert await stored_message_ids(conn) == ["good-1"]

    async def test_chunked_body_without_length_over_the_limit_is_413(
        self, settings: Settings, write_key: str, conn: asyncpg.Connection
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"event": "x", "user_id": "u", "properties": {"c": "' + CANARY.encode()
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}}'

        async with app_with(settings, max_body_bytes=SMALL_LIMIT) as c:
            r = await c.post(
                "/v1/events",
                content=chunks(),
                headers={**bearer(write_key), "Content-Type": "application/json"},
            )
        assert "content-length" not in r.request.headers
        problem = assert_problem(r, 413, "payload-too-large")
        assert problem["limit"] == SMALL_LIMIT
        assert await count_events(conn) == 0

    async def test_chunked_body_at_the_limit_is_accepted(
        self, settings: Settings, write_key: str, conn: asyncpg.Connection
    ) -> None:
        body = padded(good(1), SMALL_LIMIT)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        async with app_with(settings, max_body_bytes=SMALL_LIMIT) as c:
            r = await c.post("/v1/events", content=chunks(), headers=bearer(write_key))
        assert r.status_code == 200, r.text
        assert await stored_message_ids(conn) == ["good-1"]


# --- 4. gzip --------------------------------------------------------------------------------------


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes, gzip-compressed without ever holding them all in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    out = [packer.compress(block) for _ in range(inflated // len(block))]
    out.append(packer.flush())
    return b"".join(out)


class TestGzip:
    async def test_valid_gzip_is_inflated_and_stored(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        body = gzip.compress(orjson.dumps({"batch": [good(1), good(2)]}))
        r = await post_raw(client, write_key, body, **{"Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 2
        assert await stored_message_ids(conn) == ["good-1", "good-2"]

    async def test_bomb_is_413_without_being_inflated(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """50 MB of zeros in ~50 KB: refused once the limit is passed, never inflated whole."""
        bomb = gzip_bomb(50 * 1024 * 1024)
        assert len(bomb) < 100 * 1024
        tracemalloc.start()
        try:
            r = await post_raw(client, write_key, bomb, **{"Content-Encoding": "gzip"})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        problem = assert_problem(r, 413, "payload-too-large")
        assert problem["limit"] == DEFAULT_BODY_LIMIT
        # The body limit twice over plus slack; inflating it all would take 50 MB.
        assert peak < 2 * DEFAULT_BODY_LIMIT + 4 * 1024 * 1024, peak
        assert await count_events(conn) == 0

    @pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip,identity", "br", "deflate", "zstd"])
    async def test_chains_and_other_encodings_are_415(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, encoding: str
    ) -> None:
        body = gzip.compress(gzip.compress(orjson.dumps({**good(1), "properties": {"c": CANARY}})))
        r = await post_raw(client, write_key, body, **{"Content-Encoding": encoding})
        assert_problem(r, 415, "unsupported-media-type")
        assert await count_events(conn) == 0

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda z: z[: len(z) // 2],  # truncated
            lambda z: z[:-4],  # the size trailer cut off
            lambda z: z + b"trailing " + CANARY.encode(),
            lambda z: b"not gzip " + CANARY.encode(),
            lambda z: b"",
        ],
        ids=["truncated", "no-trailer", "trailing-garbage", "not-gzip", "empty"],
    )
    async def test_broken_gzip_is_400(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, mangle: Any
    ) -> None:
        body = gzip.compress(orjson.dumps({**good(1), "properties": {"c": CANARY}}))
        r = await post_raw(client, write_key, mangle(body), **{"Content-Encoding": "gzip"})
        assert_problem(r, 400, "invalid-body")
        assert await count_events(conn) == 0

    async def test_inflating_to_exactly_the_limit_is_accepted_and_one_more_byte_is_413(
        self, settings: Settings, write_key: str, conn: asyncpg.Connection
    ) -> None:
        async with app_with(settings, max_body_bytes=SMALL_LIMIT) as c:
            at = await post_raw(
                c,
                write_key,
                gzip.compress(padded(good(1), SMALL_LIMIT)),
                **{"Content-Encoding": "gzip"},
            )
            over = await post_raw(
                c,
                write_key,
                gzip.compress(padded(good(2), SMALL_LIMIT + 1)),
                **{"Content-Encoding": "gzip"},
            )
        assert at.status_code == 200, at.text
        assert assert_problem(over, 413, "payload-too-large")["limit"] == SMALL_LIMIT
        assert await stored_message_ids(conn) == ["good-1"]


# --- 5. Events per batch and bytes per event ------------------------------------------------------


class TestBatchAndEventLimits:
    async def test_one_event_over_the_batch_limit_is_413_with_limit_and_size(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        batch = [{"event": "e", "anonymous_id": f"a{i}"} for i in range(DEFAULT_BATCH_LIMIT + 1)]
        r = await post_json(client, write_key, {"batch": batch})
        problem = assert_problem(r, 413, "payload-too-large")
        assert (problem["limit"], problem["size"]) == (
            DEFAULT_BATCH_LIMIT,
            DEFAULT_BATCH_LIMIT + 1,
        )
        assert await count_events(conn) == 0

    async def test_a_batch_of_exactly_the_limit_is_stored(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        batch = [{"event": "e", "anonymous_id": f"a{i}"} for i in range(DEFAULT_BATCH_LIMIT)]
        r = await post_json(client, write_key, {"batch": batch})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == DEFAULT_BATCH_LIMIT
        assert await count_events(conn) == DEFAULT_BATCH_LIMIT

    async def test_an_event_over_the_event_limit_alone_is_413(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        big = {**good(1), "properties": {"blob": CANARY + "x" * DEFAULT_EVENT_LIMIT}}
        r = await post_json(client, write_key, big)
        problem = assert_problem(r, 413, "payload-too-large")
        assert problem["limit"] == DEFAULT_EVENT_LIMIT
        # The size the limit applies to (properties + traits + context as stored).
        assert problem.get("size") == len(orjson.dumps(big["properties"])) + len(b"{}{}"), problem
        assert problem["errors"][0]["code"] == "event_too_large"
        assert await count_events(conn) == 0

    async def test_the_same_event_in_a_batch_is_rejected_alone(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        big = {**good(1), "properties": {"blob": CANARY + "x" * DEFAULT_EVENT_LIMIT}}
        _, body = await post_batch_beside_goods(client, write_key, big)
        _rejected_at_1(body, "event_too_large")
        assert str(DEFAULT_EVENT_LIMIT) in body["rejected"][0]["reason"]
        await assert_only_goods_stored(conn)


# --- 6. Nesting -----------------------------------------------------------------------------------


class TestDepth:
    async def test_too_deep_alone_is_400_naming_the_path(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        event = {**good(1), "properties": nested(40, CANARY)}
        r = await post_json(client, write_key, event)
        problem = assert_problem(r, 400, "validation")
        error = assert_rejected(problem, "too_deep")
        assert error["field"].startswith("properties.a.a.a")
        assert await count_events(conn) == 0

    async def test_too_deep_in_a_batch_is_rejected_alone(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        event = {**good(1), "properties": nested(40, CANARY)}
        _, body = await post_batch_beside_goods(client, write_key, event)
        _rejected_at_1(body, "too_deep")
        await assert_only_goods_stored(conn)

    @pytest.mark.parametrize("where", ["properties", "traits", "context"])
    async def test_the_limit_is_accepted_and_one_more_level_rejected(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, where: str
    ) -> None:
        at = {**good(0), where: nested(DEFAULT_DEPTH, "leaf")}
        over = {**good(1), where: nested(DEFAULT_DEPTH + 1, CANARY)}
        r = await post_json(client, write_key, {"batch": [at, over]})
        assert r.status_code == 200, r.text
        assert_no_echo(r)
        assert [(i["index"], i["code"]) for i in r.json()["rejected"]] == [(1, "too_deep")]
        assert r.json()["rejected"][0]["field"].startswith(where + ".a")
        assert await stored_message_ids(conn) == ["good-0"]

    async def test_deep_lists_are_counted_too(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        deep: Any = [CANARY]
        for _ in range(40):
            deep = [deep]
        _, body = await post_batch_beside_goods(
            client, write_key, {**good(1), "properties": {"l": deep}}
        )
        _rejected_at_1(body, "too_deep")
        await assert_only_goods_stored(conn)

    @pytest.mark.parametrize("opener", [b"[", b'{"a":'])
    async def test_ten_thousand_levels_is_400_invalid_json(
        self, client: httpx.AsyncClient, write_key: str, opener: bytes
    ) -> None:
        closer = b"]" if opener == b"[" else b"}"
        body = b'{"event":"x","user_id":"u","properties":{"p":' + opener * 10_000
        body += b'"' + CANARY.encode() + b'"' + closer * 10_000 + b"}}"
        r = await post_raw(client, write_key, body)
        assert_problem(r, 400, "invalid-json")


# --- 7. U+0000 and surrogates ---------------------------------------------------------------------

NUL_PLACES: dict[str, tuple[dict[str, Any], str]] = {
    "value": ({"properties": {"k": CANARY + "\x00"}}, "properties.k"),
    "nested-value": ({"properties": {"o": {"l": ["ok", CANARY + "\x00"]}}}, "properties.o.l[1]"),
    "key": ({"properties": {CANARY + "\x00": "v"}}, "properties"),
    "traits-value": ({"traits": {"plan": CANARY + "\x00"}}, "traits.plan"),
    "context-value": ({"context": {"locale": CANARY + "\x00"}}, "context.locale"),
    "event": ({"event": CANARY + "\x00"}, "event"),
    "user_id": ({"user_id": CANARY + "\x00"}, "user_id"),
    "anonymous_id": ({"anonymous_id": CANARY + "\x00"}, "anonymous_id"),
    "message_id": ({"message_id": "m\x00" + CANARY}, "message_id"),
    "app_id": ({"app_id": CANARY + "\x00"}, "app_id"),
}


class TestNul:
    @pytest.mark.parametrize("place", NUL_PLACES)
    async def test_alone_is_400_naming_the_field(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, place: str
    ) -> None:
        patch, field = NUL_PLACES[place]
        r = await post_json(client, write_key, {**good(1), **patch})
        assert_rejected(assert_problem(r, 400, "validation"), "nul_character", field)
        assert await count_events(conn) == 0

    @pytest.mark.parametrize("place", NUL_PLACES)
    async def test_in_a_batch_the_others_are_stored(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, place: str
    ) -> None:
        patch, field = NUL_PLACES[place]
        _, body = await post_batch_beside_goods(client, write_key, {**good(1), **patch})
        _rejected_at_1(body, "nul_character", field)
        await assert_only_goods_stored(conn)

    @pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\ud800\\u0041", b"\\udc00x"])
    async def test_lone_surrogate_escape_is_4xx(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, escape: bytes
    ) -> None:
        body = b'{"batch":[' + orjson.dumps(good(0)) + b","
        body += b'{"event":"x","user_id":"u","properties":{"s":"' + CANARY.encode() + escape
        body += b'"}},' + orjson.dumps(good(2)) + b"]}"
        r = await post_raw(client, write_key, body)
        if r.status_code == 200:  # refusing that one event alone would be fine too
            assert_no_echo(r)
            _rejected_at_1(r.json(), r.json()["rejected"][0]["code"])
            await assert_only_goods_stored(conn)
        else:
            assert_problem(r, 400, "invalid-json")
            assert await count_events(conn) == 0

    async def test_a_surrogate_pair_is_an_ordinary_character(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        body = b'{"event":"x","user_id":"u","message_id":"m","properties":{"s":"\\ud83d\\ude00"}}'
        r = await post_raw(client, write_key, body)
        assert r.status_code == 200, r.text
        assert await conn.fetchval("SELECT properties->>'s' FROM events") == "\U0001f600"


# --- 8. Timestamps --------------------------------------------------------------------------------

NOT_TIMES = {
    "word": "yesterday",
    "number": 12345,
    "month-13": "2024-13-45T00:00:00Z",
    "empty": "",
    "leap-second": "2016-12-31T23:59:60Z",
    "offset-24h": "2024-01-01T00:00:00+24:00",
    "long": "2024-01-01T00:00:00Z" + "0" * 100,
    "list": ["2024-01-01T00:00:00Z"],
    "bool": True,
    "object": {"t": "2024-01-01T00:00:00Z"},
}
# Valid ISO 8601 that no timestamptz column can take once converted to UTC.
OUT_OF_RANGE = {
    "year-1-ahead-of-utc": "0001-01-01T00:00:00+01:00",
    "year-9999-behind-utc": "9999-12-31T23:59:59-01:00",
}


class TestTimestamps:
    @pytest.mark.parametrize("field", ["timestamp", "sent_at"])
    @pytest.mark.parametrize("value", NOT_TIMES.values(), ids=NOT_TIMES.keys())
    async def test_not_a_time_alone_is_400(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        field: str,
        value: Any,
    ) -> None:
        r = await post_json(client, write_key, {**good(1), field: value, "app_id": CANARY})
        assert_rejected(assert_problem(r, 400, "validation"), "invalid_timestamp", field)
        assert await count_events(conn) == 0

    @pytest.mark.parametrize("field", ["timestamp", "sent_at"])
    @pytest.mark.parametrize("value", ["yesterday", 12345, "2024-13-45T00:00:00Z", ""])
    async def test_not_a_time_in_a_batch_is_rejected_alone(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        field: str,
        value: Any,
    ) -> None:
        _, body = await post_batch_beside_goods(client, write_key, {**good(1), field: value})
        _rejected_at_1(body, "invalid_timestamp", field)
        await assert_only_goods_stored(conn)

    async def test_a_bad_batch_level_sent_at_is_reported_per_event(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """Each event that would take it is refused; one with its own sent_at is stored."""
        own = {**good(2), "sent_at": "2026-01-02T03:04:05Z"}
        batch = [good(1), own, good(3)]
        r = await post_json(client, write_key, {"sent_at": CANARY, "batch": batch})
        assert r.status_code == 200, r.text
        assert_no_echo(r)
        assert r.json()["accepted"] == 1
        assert [(i["index"], i["code"], i["field"]) for i in r.json()["rejected"]] == [
            (0, "invalid_timestamp", "sent_at"),
            (2, "invalid_timestamp", "sent_at"),
        ]
        assert await count_events(conn) == 1

    @pytest.mark.parametrize("field", ["timestamp", "sent_at"])
    @pytest.mark.parametrize("value", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
    async def test_out_of_range_alone_is_400_not_503(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        field: str,
        value: str,
    ) -> None:
        """A 503 would have the SDK retry an event that can never be stored, forever."""
        r = await post_json(client, write_key, {**good(1), field: value})
        assert_rejected(assert_problem(r, 400, "validation"), "invalid_timestamp", field)
        assert await count_events(conn) == 0

    @pytest.mark.parametrize("field", ["timestamp", "sent_at"])
    @pytest.mark.parametrize("value", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
    async def test_out_of_range_in_a_batch_is_rejected_alone(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        field: str,
        value: str,
    ) -> None:
        _, body = await post_batch_beside_goods(client, write_key, {**good(1), field: value})
        _rejected_at_1(body, "invalid_timestamp", field)
        await assert_only_goods_stored(conn)

    async def test_an_unstorable_event_fails_no_other_request(
        self, settings: Settings, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """T4: requests share one COPY; an event it cannot take must fail alone."""
        poison = {**good(101), "timestamp": OUT_OF_RANGE["year-1-ahead-of-utc"]}
        async with app_with(settings, writer_connections=1) as c:
            answers = await asyncio.gather(
                *(post_json(c, write_key, good(i)) for i in range(10)),
                post_json(c, write_key, {"batch": [good(100), poison]}),
                *(post_json(c, write_key, good(i)) for i in range(10, 20)),
            )
        assert [a.status_code for a in answers] == [200] * 21, [a.text for a in answers]
        assert answers[10].json()["rejected"][0]["index"] == 1
        expected = sorted([f"good-{i}" for i in range(20)] + ["good-100"])
        assert await stored_message_ids(conn) == expected


# --- 9. Other per-event validation ----------------------------------------------------------------

INVALID_EVENTS = {
    "no-ids": ({"type": "track", "event": "x", "app_id": CANARY}, "missing_field", "user_id"),
    "empty-ids": ({"event": "x", "user_id": "", "anonymous_id": ""}, "missing_field", "user_id"),
    "track-without-name": ({"type": "track", "user_id": CANARY}, "missing_field", "event"),
    "track-empty-name": ({"event": "", "user_id": CANARY}, "missing_field", "event"),
    "unknown-type": ({"type": CANARY, "user_id": "u"}, "invalid_type", "type"),
    "type-list": ({"type": ["track"], "event": "x", "user_id": "u"}, "invalid_type", "type"),
    "type-object": ({"type": {"t": CANARY}, "event": "x", "user_id": "u"}, "invalid_type", "type"),
    "type-number": ({"type": 1, "event": "x", "user_id": "u"}, "invalid_type", "type"),
    "properties-list": (
        {"event": "x", "user_id": "u", "properties": [CANARY]},
        "invalid_type",
        "properties",
    ),
    "properties-string": (
        {"event": "x", "user_id": "u", "properties": CANARY},
        "invalid_type",
        "properties",
    ),
    "traits-number": ({"type": "identify", "user_id": "u", "traits": 5}, "invalid_type", "traits"),
    "context-list": ({"event": "x", "user_id": "u", "context": []}, "invalid_type", "context"),
    "context-traits-string": (
        {"event": "x", "user_id": "u", "context": {"traits": CANARY}},
        "invalid_type",
        "context.traits",
    ),
    "message-id-101": (
        {"event": "x", "user_id": "u", "message_id": CANARY + "m" * 101},
        "too_long",
        "message_id",
    ),
    "message-id-number": (
        {"event": "x", "user_id": "u", "message_id": 7},
        "invalid_type",
        "message_id",
    ),
    "user-id-257": ({"event": "x", "user_id": CANARY + "u" * 257}, "too_long", "user_id"),
    "user-id-float": ({"event": "x", "user_id": 1.5}, "invalid_type", "user_id"),
    "user-id-bool": ({"event": "x", "user_id": True}, "invalid_type", "user_id"),
    "user-id-list": ({"event": "x", "user_id": [CANARY]}, "invalid_type", "user_id"),
    "event-201": ({"event": CANARY + "e" * 201, "user_id": "u"}, "too_long", "event"),
    "event-object": ({"event": {"n": CANARY}, "user_id": "u"}, "invalid_type", "event"),
    "user-id-email": ({"event": "x", "user_id": CANARY_EMAIL}, "user_id_is_email", "user_id"),
    "user-id-mailto": (
        {"event": "x", "user_id": "mailto:" + CANARY_EMAIL},
        "user_id_is_email",
        "user_id",
    ),
    "anonymous-id-email": (
        {"event": "x", "anonymous_id": CANARY_EMAIL},
        "anonymous_id_is_email",
        "anonymous_id",
    ),
    "event-name-email": ({"event": CANARY_EMAIL, "user_id": "u"}, "pii_in_name", "event"),
    "too-many-properties": (
        {"event": "x", "user_id": "u", "properties": {f"p{i}": CANARY for i in range(1001)}},
        "too_many_properties",
        "properties",
    ),
}


class TestEventValidation:
    @pytest.mark.parametrize("case", INVALID_EVENTS)
    async def test_alone_is_400_naming_the_field(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, case: str
    ) -> None:
        event, code, field = INVALID_EVENTS[case]
        r = await post_json(client, write_key, event)
        assert_rejected(assert_problem(r, 400, "validation"), code, field)
        assert_no_echo(r, CANARY_EMAIL)
        assert await count_events(conn) == 0

    @pytest.mark.parametrize("case", INVALID_EVENTS)
    async def test_in_a_batch_the_others_are_stored(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, case: str
    ) -> None:
        event, code, field = INVALID_EVENTS[case]
        r, body = await post_batch_beside_goods(client, write_key, event)
        assert_no_echo(r, CANARY_EMAIL)
        _rejected_at_1(body, code, field)
        await assert_only_goods_stored(conn)

    async def test_a_rejected_email_user_id_is_not_logged_either(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        log_stream: Any,
    ) -> None:
        r = await post_json(client, write_key, {"event": "x", "user_id": CANARY_EMAIL})
        assert r.status_code == 400
        assert CANARY.encode() not in log_stream.getvalue()

    @pytest.mark.parametrize("user_id", [12345, 0, -7, 2**63 - 1])
    async def test_numeric_user_id_is_stored_as_a_string(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, user_id: int
    ) -> None:
        r = await post_json(client, write_key, {"event": "x", "user_id": user_id})
        assert r.status_code == 200, r.text
        assert await conn.fetchval("SELECT user_id FROM events") == str(user_id)

    async def test_unknown_fields_are_ignored(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await post_json(
            client, write_key, {**good(1), "zzz": CANARY, "__proto__": {"admin": True}}
        )
        assert r.status_code == 200, r.text
        assert_no_echo(r)
        assert await stored_message_ids(conn) == ["good-1"]

    @pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30 + 1])
    async def test_integer_beyond_64_bits_is_refused_or_stored_exactly(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, big: int
    ) -> None:
        """Never a 500, never silently rounded to a float; the events beside it are stored."""
        body = b'{"batch":[' + orjson.dumps(good(0)) + b","
        body += b'{"event":"x","user_id":"u","message_id":"big","properties":{"n":'
        body += str(big).encode() + b',"c":"' + CANARY.encode() + b'"}},'
        body += orjson.dumps(good(2)) + b"]}"
        r = await post_raw(client, write_key, body)
        assert r.status_code == 200, r.text
        assert_no_echo(r)
        stored = await stored_message_ids(conn)
        if r.json()["rejected"]:
            _rejected_at_1(r.json(), r.json()["rejected"][0]["code"])
            assert stored == ["good-0", "good-2"]
        else:
            assert stored == ["big", "good-0", "good-2"]
            text = await conn.fetchval(
                "SELECT properties->>'n' FROM events WHERE message_id = 'big'"
            )
            assert text == str(big), f"{big} was stored as {text}"

    async def test_1e400_never_stores_something_else(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        body = b'{"batch":[' + orjson.dumps(good(0)) + b","
        body += b'{"event":"x","user_id":"u","properties":{"n":1e400,"c":"'
        body += CANARY.encode() + b'"}},' + orjson.dumps(good(2)) + b"]}"
        r = await post_raw(client, write_key, body)
        if r.status_code == 200:  # refusing that event alone
            assert_no_echo(r)
            _rejected_at_1(r.json(), r.json()["rejected"][0]["code"])
            await assert_only_goods_stored(conn)
        else:  # or the body as a whole, telling the client nothing was stored
            assert_problem(r, 400, "invalid-json")
            assert await count_events(conn) == 0

    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
    async def test_nan_and_infinity_are_not_json(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, literal: bytes
    ) -> None:
        body = b'{"batch":[' + orjson.dumps(good(0)) + b","
        body += b'{"event":"x","user_id":"u","properties":{"n":' + literal + b',"c":"'
        body += CANARY.encode() + b'"}},' + orjson.dumps(good(2)) + b"]}"
        r = await post_raw(client, write_key, body)
        assert_problem(r, 400, "invalid-json")
        assert await count_events(conn) == 0

    async def test_an_empty_message_id_never_makes_distinct_events_duplicates(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        """Two different events that both send message_id "" are two events, or refused:
        counting the second as a retry of the first would drop it silently."""
        batch = [
            {"event": "First", "user_id": "u", "message_id": ""},
            {"event": "Second", "user_id": "u", "message_id": ""},
        ]
        r = await post_json(client, write_key, {"batch": batch})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["duplicates"] == 0
        stored = sorted(r["event"] for r in await conn.fetch("SELECT event FROM events"))
        rejected = {issue["index"] for issue in body["rejected"]}
        assert stored == [e["event"] for i, e in enumerate(batch) if i not in rejected]


# --- 10. Authentication ---------------------------------------------------------------------------

UNKNOWN_KEY = "iwk_" + "A" * 43


def _shape(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    body.pop("instance")
    return body


class TestAuth:
    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "",
            "Bearer",
            "Bearer garbage-" + CANARY,
            f"Bearer {UNKNOWN_KEY}",
            f"Bearer {UNKNOWN_KEY}x",
            "Bearer isk_" + CANARY,
            "Token " + CANARY,
            "Basic !!!" + CANARY + "!!!",
            "Basic " + CANARY,
            "Basic //79/w==",  # valid base64, not UTF-8
        ],
        ids=[
            "none",
            "empty",
            "bearer-nothing",
            "bearer-garbage",
            "unknown",
            "unknown-too-long",
            "malformed-secret",
            "other-scheme",
            "basic-bad-base64",
            "basic-not-base64",
            "basic-not-utf8",
        ],
    )
    async def test_bad_keys_are_401_all_alike(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        conn: asyncpg.Connection,
        authorization: str | None,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        r = await client.post("/v1/events", content=orjson.dumps(good(1)), headers=headers)
        assert_problem(r, 401, "invalid-key")
        assert r.headers["www-authenticate"].lower().startswith("bearer")
        reference = await client.post("/v1/events", content=orjson.dumps(good(1)))
        assert _shape(r) == _shape(reference)
        assert await count_events(conn) == 0

    async def test_unknown_revoked_and_malformed_keys_answer_identically(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        ok = await post_json(client, write_key, good(0))
        assert ok.status_code == 200
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE digest = $1", digest(write_key)
        )
        revoked = await post_json(client, write_key, good(1))
        revoked_basic = await client.post(
            "/v1/events", content=orjson.dumps(good(1)), headers=basic(write_key)
        )
        unknown = await post_json(client, UNKNOWN_KEY, good(1))
        malformed = await client.post(
            "/v1/events",
            content=orjson.dumps(good(1)),
            headers={"Authorization": "Basic %%%" + CANARY},
        )
        for r in (revoked, revoked_basic, unknown, malformed):
            assert_problem(r, 401, "invalid-key")
        assert _shape(revoked) == _shape(revoked_basic) == _shape(unknown) == _shape(malformed)
        assert await stored_message_ids(conn) == ["good-0"]

    async def test_a_secret_key_without_project_header_is_403(
        self, client: httpx.AsyncClient, secret_key: str, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await post_json(client, secret_key, good(1))
        problem = assert_problem(r, 403, "forbidden")
        assert "X-Ingest-Project-Id" in problem["detail"]
        garbage = await client.post(
            "/v1/events",
            content=orjson.dumps(good(1)),
            headers={**bearer(secret_key), "X-Ingest-Project-Id": CANARY},
        )
        assert_problem(garbage, 403, "forbidden")
        assert await count_events(conn) == 0

    async def test_a_write_key_cannot_create_projects(
        self, client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
    ) -> None:
        r = await client.post(
            "/v1/projects", content=orjson.dumps({"name": CANARY}), headers=bearer(write_key)
        )
        assert_problem(r, 403, "forbidden")
        assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", CANARY) == 0


# --- 11. Routing ----------------------------------------------------------------------------------


class TestRouting:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/nope"),
            ("POST", "/v1/event"),
            ("POST", "/v1/events/" + CANARY),
            ("GET", "/v2/events"),
            ("DELETE", "/v1/" + CANARY),
        ],
    )
    async def test_unknown_routes_are_404_problems(
        self, client: httpx.AsyncClient, write_key: str, method: str, path: str
    ) -> None:
        r = await client.request(method, path, headers=bearer(write_key))
        assert_problem(r, 404, None)

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/events"),
            ("PUT", "/v1/events"),
            ("DELETE", "/v1/events"),
            ("PUT", "/v1/projects"),
            ("POST", "/healthz"),
        ],
    )
    async def test_wrong_method_is_405_problem(
        self, client: httpx.AsyncClient, write_key: str, method: str, path: str
    ) -> None:
        r = await client.request(method, path, headers=bearer(write_key))
        assert_problem(r, 405, None)
        assert "POST" in r.headers["allow"] or "GET" in r.headers["allow"]
