"""A corpus of hostile requests to POST /v1/events (RELIABILITY A2), generated programmatically.

Each case declares the statuses it may get. Whatever the case, the answer is never a 5xx, every
4xx is ``application/problem+json`` in RFC 9457 shape, and no answer repeats the canary planted in
the request. After each group, the events table holds exactly the events the answers accepted.

The cases run in groups, one app and one database per group (a fresh database per case would take
minutes); a group reports every failing case id at once.
"""

from __future__ import annotations

import gzip
import itertools
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import httpx
import orjson
import pytest

from ingest.config import Settings

CANARY: Final = f"cnry-{uuid.uuid4().hex[:12]}"
PROBLEM: Final = "https://ingest.dev/problems/"
LIMITS: Final = Settings()

OK: Final = frozenset({200})
BAD: Final = frozenset({400})
OK_OR_BAD: Final = frozenset({200, 400})
TOO_LARGE: Final = frozenset({413})
UNSUPPORTED: Final = frozenset({415})


# Request headers a case sets; None removes a default (Content-Type).
Headers = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    body: bytes
    expect: frozenset[int]
    # The problem type a 4xx answer must carry (None: any, as long as it is problem+json).
    slug: str | None = None
    # A 400 validation answer names this field in errors[0]; a 200 batch answer that rejects
    # index 0 names it in rejected[0].
    field: str | None = None
    # How many events a 200 answer accepts (None: not checked).
    accepted: int | None = None
    headers: Headers = ()


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def base(kind: str = "track") -> dict[str, Any]:
    """A valid event of ``kind`` with the canary in an unknown field, which is ignored."""
    event: dict[str, Any] = {
        "type": kind,
        "user_id": "u-1",
        "anonymous_id": "a-1",
        "x_note": CANARY,
        "properties": {"note": CANARY},
    }
    if kind == "track":
        event["event"] = "Hostile"
    if kind == "page":
        event["name"] = "Home"
    return event


GOOD: Final = {"type": "track", "event": "Beside", "user_id": "u-2"}


def single_and_batch(
    case_id: str, event: dict[str, Any], *, ok: bool | None, field: str | None
) -> Iterator[Case]:
    """The event alone, and the same event first in a batch beside a good one.

    ok: True accepted, False refused naming ``field``, None either.
    """
    if ok is None:
        yield Case(f"{case_id}/single", dumps(event), OK_OR_BAD, field=field)
        yield Case(f"{case_id}/batch", dumps({"batch": [event, GOOD]}), OK, field=field)
    elif ok:
        yield Case(f"{case_id}/single", dumps(event), OK, accepted=1)
        yield Case(f"{case_id}/batch", dumps({"batch": [event, GOOD]}), OK, accepted=2)
    else:
        yield Case(f"{case_id}/single", dumps(event), BAD, slug="validation", field=field)
        yield Case(f"{case_id}/batch", dumps({"batch": [event, GOOD]}), OK, field=field, accepted=1)


# --- Odd types and values for every field ---------------------------------------------------------

ODD_VALUES: Final[dict[str, Any]] = {
    "null": None,
    "list": [CANARY],
    "object": {"k": CANARY},
    "int": 7,
    "float": 1.5,
    "bool": True,
    "empty": "",
    "long": CANARY + "x" * 10_000,
    "nul": CANARY + "\x00",
    "unicode": "\u202eRTL\u200f \U0001f469\u200d\U0001f469\u200d\U0001f467 e\u0301 " + CANARY,
}
_IDS: Final = frozenset({"null", "int", "empty", "unicode"})
_OBJECTS: Final = frozenset({"null", "object"})
# field -> (the event type it is tried on, the odd values it accepts)
FIELDS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "type": ("track", frozenset()),
    "event": ("track", frozenset({"unicode"})),
    "user_id": ("track", _IDS),
    "anonymous_id": ("track", _IDS),
    "message_id": ("track", frozenset({"null", "unicode"})),
    "timestamp": ("track", frozenset({"null"})),
    "sent_at": ("track", frozenset({"null"})),
    "app_id": ("track", frozenset({"null", "empty", "unicode"})),
    "properties": ("track", _OBJECTS),
    "traits": ("identify", _OBJECTS),
    "context": ("track", _OBJECTS),
    "name": ("page", frozenset({"null", "empty", "unicode"})),
    "group_id": ("group", _IDS),
    "previous_id": ("alias", _IDS),
}
# Either answer is defensible: a null type could mean the default; an empty message_id could
# mean "none" (test_bad_input checks that it never turns distinct events into duplicates).
EITHER: Final = frozenset({("type", "null"), ("message_id", "empty")})


def field_cases() -> Iterator[Case]:
    for (field, (kind, accepts)), (name, value) in itertools.product(
        FIELDS.items(), ODD_VALUES.items()
    ):
        event = {**base(kind), field: value}
        ok = None if (field, name) in EITHER else name in accepts
        yield from single_and_batch(f"field:{field}={name}", event, ok=ok, field=field)


# --- Odd keys in the three JSON objects -----------------------------------------------------------

ODD_KEYS: Final[dict[str, tuple[str, bool]]] = {
    "empty": ("", True),
    "space": (" ", True),
    "rtl": ("\u202e" + CANARY, True),
    "emoji": ("\U0001f525" + CANARY, True),
    "combining": ("e\u0301\u0302\u0303" + CANARY, True),
    "zero-width": ("\u200b\u200c\u200d" + CANARY, True),
    "bom": ("\ufeff" + CANARY, True),
    "noncharacter": ("\uffff\ufffe" + CANARY, True),
    "line-separator": ("a\u2028b\u2029" + CANARY, True),
    "long": (CANARY + "k" * 1000, True),
    "dots": ("a.b[0]." + CANARY, True),
    "proto": ("__proto__", True),
    "numeric": ("123", True),
    "email": (CANARY + "@example.test", True),
    "nul": (CANARY + "\x00", False),
    "nul-only": ("\x00", False),
}


def key_cases() -> Iterator[Case]:
    for where, (name, (key, ok)) in itertools.product(
        ("properties", "traits", "context"), ODD_KEYS.items()
    ):
        event = {**base("identify" if where == "traits" else "track"), where: {key: CANARY}}
        yield from single_and_batch(f"key:{where}[{name}]", event, ok=ok, field=where)
        nested = {**base(), where: {"outer": {"inner": [{key: 1}]}}}
        yield from single_and_batch(
            f"key:{where}.outer.inner[0][{name}]",
            nested,
            ok=ok,
            field=f"{where}.outer.inner[0]",
        )


# --- Unicode oddities where users write text ------------------------------------------------------

ODD_TEXT: Final[dict[str, str]] = {
    "rtl-override": "\u202e" + "dne",
    "rtl-marks": "\u200f\u200e\u061c",
    "emoji-zwj": "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "flags": "\U0001f1eb\U0001f1f7\U0001f3f4\u200d\u2620\ufe0f",
    "combining": "e\u0301",
    "zalgo": "z" + "\u0336\u0337\u0338\u0321\u0322" * 20,
    "nfd-vs-nfc": "\u00e9 e\u0301",
    "bom-inside": "a\ufeffb",
    "noncharacters": "\uffff\ufffe\U0010ffff",
    "line-separators": "a\u2028b\u2029c",
    "c0-c1-controls": "\x01\x1f\x7f\x85",
    "fullwidth": "\uff45\uff56\uff45\uff4e\uff54",
    "cjk-arabic": "\u4e8b\u4ef6 \u062d\u062f\u062b",
    "private-use": "\ue000\U000f0000",
}


def unicode_cases() -> Iterator[Case]:
    for name, text in ODD_TEXT.items():
        places = {
            "event": {**base(), "event": text},
            "user_id": {**base(), "user_id": text},
            "anonymous_id": {**base(), "anonymous_id": text},
            "app_id": {**base(), "app_id": text},
            "message_id": {**base(), "message_id": text[:40] + str(uuid.uuid4())},
            "property-key": {**base(), "properties": {text: CANARY}},
            "property-value": {**base(), "properties": {"k": text + CANARY}},
            "trait-value": {**base("identify"), "traits": {"plan": text}},
        }
        for place, event in places.items():
            yield from single_and_batch(f"unicode:{place}={name}", event, ok=True, field=None)


# --- Time values ----------------------------------------------------------------------------------

TIMES: Final[dict[str, tuple[Any, bool | None]]] = {
    "iso-z": ("2024-01-01T00:00:00Z", True),
    "iso-offset": ("2024-01-01T00:00:00+14:00", True),
    "date-only": ("2024-01-01", True),
    "epoch": ("1970-01-01T00:00:00Z", True),
    "year-1-utc": ("0001-01-01T00:00:00Z", True),
    "far-future": ("2999-01-01T00:00:00Z", True),
    "micro": ("2024-01-01T00:00:00.123456Z", True),
    "nanos": ("2024-01-01T00:00:00.123456789Z", None),
    "week-date": ("2024-W01-1", None),
    "padded": (" 2024-01-01T00:00:00Z ", None),
    "arabic-digits": ("\u0662\u0660\u0662\u0664-01-01", None),
    "word": ("yesterday " + CANARY, False),
    "empty": ("", False),
    "month-13": ("2024-13-45T00:00:00Z", False),
    "feb-30": ("2024-02-30T00:00:00Z", False),
    "leap-second": ("2016-12-31T23:59:60Z", False),
    "offset-24h": ("2024-01-01T00:00:00+24:00", False),
    "year-0": ("0000-01-01T00:00:00Z", False),
    "year-10000": ("10000-01-01T00:00:00Z", False),
    # Valid ISO 8601 that no timestamptz can hold once converted to UTC.
    "year-1-ahead-of-utc": ("0001-01-01T00:00:00+01:00", False),
    "year-9999-behind-utc": ("9999-12-31T23:59:59-01:00", False),
    "unix-seconds": (1704067200, False),
    "unix-millis": (1704067200000, False),
    "long": ("2024-01-01T00:00:00Z" + "0" * 1000 + CANARY, False),
}


def time_cases() -> Iterator[Case]:
    for field, (name, (value, ok)) in itertools.product(
        ("timestamp", "sent_at", "originalTimestamp"), TIMES.items()
    ):
        # originalTimestamp is the client's clock when there is no timestamp (RudderStack):
        # checked as timestamp is, and named as the parser names it.
        named = "original_timestamp" if field == "originalTimestamp" else field
        event = {**base(), field: value}
        yield from single_and_batch(f"time:{field}={name}", event, ok=ok, field=named)
    event = {**base(), "timestamp": "2024-01-01T00:00:00Z"}
    yield Case(
        "time:batch-sent-at=word",
        dumps({"sent_at": CANARY, "batch": [event]}),
        OK,
        field="sent_at",
        accepted=0,
    )
    yield Case(
        "time:batch-sent-at=number",
        dumps({"sentAt": 5, "batch": [event, event]}),
        OK,
        field="sent_at",
        accepted=0,
    )


# --- Raw bodies: JSON that is broken, odd, or not an event ----------------------------------------

VALID: Final = dumps(base())


def raw_cases() -> Iterator[Case]:
    for cut in range(1, len(VALID), 7):
        yield Case(f"raw:truncated-at-{cut}", VALID[:cut], BAD, slug="invalid-json")
    garbage = {
        "braces": b"{]",
        "brackets": b"[}",
        "double-brace": b"{{}}",
        "key-only": b'{"a"}',
        "no-value": b'{"a":}',
        "lone-comma": b"{,}",
        "single-quoted": b"{'event': '" + CANARY.encode() + b"'}",
        "extra-brace": VALID + b"}",
        "two-docs": VALID + VALID,
        "trailing-comma": VALID[:-1] + b",}",
        "undefined": b"undefined",
        "leading-zero": b'{"event":"x","user_id":"u","properties":{"n":01}}',
        "bare-decimal": b'{"event":"x","user_id":"u","properties":{"n":.5}}',
        "plus-sign": b'{"event":"x","user_id":"u","properties":{"n":+1}}',
        "hex": b'{"event":"x","user_id":"u","properties":{"n":0x10}}',
        "bad-escape": b'{"event":"\\x41","user_id":"u"}',
        "short-unicode-escape": b'{"event":"\\u00","user_id":"u"}',
        "raw-tab-in-string": b'{"event":"a\tb","user_id":"u"}',
        "raw-nul-byte-in-string": b'{"event":"a\x00b","user_id":"u"}',
        "comment": b"{/* " + CANARY.encode() + b' */"event":"x","user_id":"u"}',
        "line-comment": VALID + b"// " + CANARY.encode(),
        "nul-byte": b"\x00",
        "nul-before": b"\x00" + VALID,
        "invalid-utf8": b'{"event":"\xff\xfe' + CANARY.encode() + b'","user_id":"u"}',
        "overlong-utf8": b'{"event":"\xc0\xaf","user_id":"u"}',
        "encoded-surrogate": b'{"event":"\xed\xa0\x80","user_id":"u"}',
        "utf16": VALID.decode().encode("utf-16"),
        "utf32": VALID.decode().encode("utf-32"),
        "nan": b'{"event":"x","user_id":"u","properties":{"n":NaN}}',
        "infinity": b'{"event":"x","user_id":"u","properties":{"n":Infinity}}',
        "minus-infinity": b'{"event":"x","user_id":"u","properties":{"n":-Infinity}}',
        "huge-int-user-id": b'{"event":"x","user_id":' + b"9" * 400 + b"}",
        "lone-high-surrogate": b'{"event":"\\ud800","user_id":"u"}',
        "lone-low-surrogate": b'{"event":"x","user_id":"\\udc00"}',
        "surrogate-in-key": b'{"event":"x","user_id":"u","properties":{"\\ud800":1}}',
        "reversed-pair": b'{"event":"\\ude00\\ud83d","user_id":"u"}',
        "deep-arrays": b"[" * 10_000 + b"]" * 10_000,
        "deep-objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "deep-in-properties": b'{"event":"x","user_id":"u","properties":{"p":'
        + b"[" * 5_000
        + b"]" * 5_000
        + b"}}",
    }
    for name, body in garbage.items():
        yield Case(f"raw:{name}", body, BAD, slug="invalid-json")
    yield Case("raw:empty", b"", BAD, slug="invalid-json")
    yield Case("raw:whitespace", b" \t\r\n", BAD, slug="invalid-json")
    yield Case("raw:bom", b"\xef\xbb\xbf" + VALID, OK_OR_BAD, slug="invalid-json")

    not_events = {
        "number": b"5",
        "string": b'"' + CANARY.encode() + b'"',
        "true": b"true",
        "null": b"null",
        "batch-number": b'{"batch":5}',
        "batch-string": b'{"batch":"' + CANARY.encode() + b'"}',
        "batch-object": b'{"batch":' + VALID + b"}",
        "batch-null": b'{"batch":null}',
        "batch-true": b'{"batch":true}',
    }
    for name, body in not_events.items():
        yield Case(f"raw:{name}", body, BAD, slug="invalid-body")

    values = {
        "1e400": (b"1e400", frozenset({400})),
        "-1e400": (b"-1e400", frozenset({400})),
        "1e-400": (b"1e-400", OK),  # underflows to 0: a number all the same
        "2^64": (str(2**64).encode(), OK_OR_BAD),
        "-2^63-1": (str(-(2**63) - 1).encode(), OK_OR_BAD),
        "2^64-1": (str(2**64 - 1).encode(), OK),
        "400-digits": (b"9" * 400, BAD),
        "-0": (b"-0", OK),
        "1E+2": (b"1E+2", OK),
        "long-fraction": (b"0." + b"1" * 1000, OK),
    }
    for name, (literal, expect) in values.items():
        body = b'{"event":"x","user_id":"u","properties":{"n":' + literal
        body += b',"c":"' + CANARY.encode() + b'"}}'
        yield Case(f"raw:number={name}", body, expect)

    dup = {
        "event": (b'{"event":"a","event":"b","user_id":"u"}', OK),
        "user_id-email-last": (
            b'{"event":"a","user_id":"u","user_id":"' + CANARY.encode() + b'@example.test"}',
            BAD,
        ),
        "properties": (b'{"event":"a","user_id":"u","properties":{"k":1,"k":2}}', OK),
        "batch": (b'{"batch":5,"batch":[' + VALID + b"]}", OK),
    }
    for name, (body, expect) in dup.items():
        yield Case(f"raw:duplicate-key={name}", body, expect)

    nul_escapes = {
        "value": (b'"properties":{"k":"\\u0000' + CANARY.encode() + b'"}', "properties.k"),
        "key": (b'"properties":{"\\u0000":"' + CANARY.encode() + b'"}', "properties"),
        "list": (
            b'"properties":{"l":["a","\\u0000"],"c":"' + CANARY.encode() + b'"}',
            "properties.l[1]",
        ),
        "trait": (b'"traits":{"t":"' + CANARY.encode() + b'\\u0000"}', "traits.t"),
        "context": (
            b'"context":{"page":{"url":"\\u0000' + CANARY.encode() + b'"}}',
            "context.page.url",
        ),
        "event": (b'"event":"\\u0000' + CANARY.encode() + b'"', "event"),
        "user_id": (b'"user_id":"' + CANARY.encode() + b'\\u0000"', "user_id"),
        "message_id": (b'"message_id":"\\u0000' + CANARY.encode() + b'"', "message_id"),
        "app_id": (b'"app_id":"\\u0000"', "app_id"),
    }
    for name, (member, field) in nul_escapes.items():
        body = b'{"event":"e","anonymous_id":"a",' + member + b"}"
        yield Case(f"raw:nul-escape={name}", body, BAD, slug="validation", field=field)
        batch = b'{"batch":[' + body + b"," + dumps(GOOD) + b"]}"
        yield Case(f"raw:nul-escape={name}/batch", batch, OK, field=field, accepted=1)

    for depth, ok in ((LIMITS.max_depth, True), (LIMITS.max_depth + 1, False), (200, False)):
        inner: Any = CANARY
        for _ in range(depth):
            inner = {"a": inner}
        yield from single_and_batch(
            f"raw:depth={depth}", {**base(), "properties": inner}, ok=ok, field=None
        )
    yield Case("raw:depth=1025", b'{"a":' * 1025 + b"1" + b"}" * 1025, BAD, slug="invalid-json")


# --- Batches --------------------------------------------------------------------------------------


def batch_cases() -> Iterator[Case]:
    limit = LIMITS.max_batch_events
    small = {"event": "b", "anonymous_id": "a", "properties": {"c": CANARY}}
    for n, expect in ((0, OK), (1, OK), (2, OK), (limit, OK), (limit + 1, TOO_LARGE)):
        accepted = n if expect == OK else None
        yield Case(
            f"batch:size={n}",
            dumps({"batch": [small] * n}),
            expect,
            slug="payload-too-large",
            accepted=accepted,
        )
        yield Case(
            f"batch:top-level-list-size={n}",
            dumps([small] * n),
            expect,
            slug="payload-too-large",
            accepted=accepted,
        )
    yield Case(
        "batch:size=10*limit",
        dumps({"batch": [{}] * (10 * limit)}),
        TOO_LARGE,
        slug="payload-too-large",
    )
    for name, item in {
        "null": None,
        "number": 1,
        "string": CANARY,
        "list": [small],
        "bool": True,
    }.items():
        yield Case(f"batch:item={name}", dumps({"batch": [item, GOOD]}), OK, accepted=1)
    yield Case("batch:all-bad", dumps({"batch": [None, 1, CANARY, {}]}), OK, accepted=0)
    yield Case("batch:nested-batch", dumps({"batch": [{"batch": [GOOD]}, GOOD]}), OK, accepted=1)
    yield Case(
        "batch:with-unknown-fields",
        dumps({"batch": [GOOD], "x": CANARY, "writeKey": 1}),
        OK,
        accepted=1,
    )
    many = {"event": "m", "user_id": "u", "properties": {f"p{i}": i for i in range(1001)}}
    yield from single_and_batch("batch:1001-properties", many, ok=False, field="properties")
    at = {"event": "m", "user_id": "u", "properties": {f"p{i}": i for i in range(1000)}}
    yield from single_and_batch("batch:1000-properties", at, ok=True, field=None)
    room = LIMITS.max_event_bytes - len(b'{"blob":""}{}{}')
    fits = {"event": "big", "user_id": "u", "properties": {"blob": "x" * room}}
    yield from single_and_batch("batch:event-at-byte-limit", fits, ok=True, field=None)
    big = {"event": "big", "user_id": "u", "properties": {"blob": CANARY + "x" * room}}
    yield Case(
        "batch:event-over-byte-limit/single", dumps(big), TOO_LARGE, slug="payload-too-large"
    )
    yield Case("batch:event-over-byte-limit/batch", dumps({"batch": [big, GOOD]}), OK, accepted=1)
    yield Case(
        "batch:unknown-top-level-fields",
        dumps({**base(), "writeKey": CANARY, "integrations": {"All": False}, "_metadata": [1, 2]}),
        OK,
        accepted=1,
    )


# --- Transport: content types, encodings, lengths, headers ----------------------------------------


def gzip_bomb(inflated: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    out = [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join([*out, packer.flush()])


def content_type(value: str | None) -> Headers:
    return (("Content-Type", value),)


def content_encoding(value: str) -> Headers:
    return (("Content-Encoding", value),)


GZIP: Final = content_encoding("gzip")
ACCEPTED_TYPES: Final = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "text/plain;charset=UTF-8",  # navigator.sendBeacon
    "text/plain; application/json",
    None,
]
REFUSED_TYPES: Final = [
    "application/xml",
    "text/xml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/html",
    "text/csv",
    "application/octet-stream",
    "application/javascript",
    "application/jsonx",
    "application/json-patch+json",
    "application/vnd.api+json",
    "json",
    "*/*",
    "image/png",
    CANARY + "/" + CANARY,
]
REFUSED_ENCODINGS: Final = [
    "gzip, gzip",
    "gzip,identity",
    "identity, gzip",
    "br",
    "deflate",
    "compress",
    "zstd",
    "*",
    CANARY,
]


def transport_cases() -> Iterator[Case]:
    for ctype in ACCEPTED_TYPES:
        yield Case(f"type:{ctype}", VALID, OK, accepted=1, headers=content_type(ctype))
        yield Case(
            f"type:{ctype}/empty-body", b"", BAD, "invalid-json", headers=content_type(ctype)
        )
    for ctype in REFUSED_TYPES:
        yield Case(
            f"type:{ctype}",
            VALID,
            UNSUPPORTED,
            "unsupported-media-type",
            headers=content_type(ctype),
        )
    for ctype in (";", ";charset=utf-8", " "):  # no media type at all: like a missing header
        yield Case(
            f"type:{ctype!r}",
            VALID,
            frozenset({200, 415}),
            "unsupported-media-type",
            headers=content_type(ctype),
        )
    beacon = dumps({"batch": [base(), GOOD]})
    yield Case("type:beacon-batch", beacon, OK, accepted=2, headers=content_type("text/plain"))

    zipped = gzip.compress(VALID)
    for encoding in ("gzip", "x-gzip", "GZIP", " gzip "):
        yield Case(
            f"encoding:{encoding!r}", zipped, OK, accepted=1, headers=content_encoding(encoding)
        )
    for encoding in ("identity", ""):
        yield Case(
            f"encoding:{encoding!r}", VALID, OK, accepted=1, headers=content_encoding(encoding)
        )
    for encoding in REFUSED_ENCODINGS:
        yield Case(
            f"encoding:{encoding}",
            zipped,
            UNSUPPORTED,
            "unsupported-media-type",
            headers=content_encoding(encoding),
        )
    broken = {
        "plain-body": VALID,
        "truncated": zipped[: len(zipped) // 2],
        "no-trailer": zipped[:-4],
        "trailing-garbage": zipped + CANARY.encode(),
        "empty": b"",
        "header-only": zipped[:10],
        "corrupt-crc": zipped[:-8] + bytes(4) + zipped[-4:],
    }
    for name, body in broken.items():
        yield Case(f"gzip:{name}", body, BAD, "invalid-body", headers=GZIP)
    # RFC 1952 allows several members; refusing them as trailing data is allowed too.
    yield Case("gzip:two-members", zipped + zipped, OK_OR_BAD, "invalid-body", headers=GZIP)
    for name, inner in {"garbage": b"{" + CANARY.encode(), "empty": b"", "nan": b"NaN"}.items():
        yield Case(
            f"gzip:inflates-to-{name}", gzip.compress(inner), BAD, "invalid-json", headers=GZIP
        )
    yield Case("gzip:bomb-10MB", gzip_bomb(10 << 20), TOO_LARGE, "payload-too-large", headers=GZIP)
    at = VALID + b" " * (LIMITS.max_body_bytes - len(VALID))
    yield Case("gzip:inflates-to-limit", gzip.compress(at), OK, accepted=1, headers=GZIP)
    yield Case(
        "gzip:inflates-to-limit+1",
        gzip.compress(at + b" "),
        TOO_LARGE,
        "payload-too-large",
        headers=GZIP,
    )
    yield Case("size:at-limit", at, OK, accepted=1)
    yield Case("size:limit+1", at + b" ", TOO_LARGE, "payload-too-large")

    # In-process, the whole body arrives whatever Content-Length says; a real server's HTTP
    # parser may refuse the lie first. Either way: no 5xx, no echo.
    lies = {
        "huge": ("1000000000000", TOO_LARGE),
        "shorter": ("10", OK_OR_BAD),
        "longer": (str(len(VALID) + 100), OK_OR_BAD),
        "zero": ("0", OK_OR_BAD),
        "not-a-number": ("abc", OK_OR_BAD),
        "negative": ("-1", OK_OR_BAD),
    }
    for name, (declared, expect) in lies.items():
        yield Case(f"length:{name}", VALID, expect, headers=(("Content-Length", declared),))

    headers: dict[str, Headers] = {
        "500-headers": tuple((f"X-Flood-{i}", CANARY) for i in range(500)),
        "64KB-value": (("X-Big", CANARY * (65536 // len(CANARY))),),
        "forwarded-for-garbage": (("X-Forwarded-For", CANARY + ", ::::, 999.1.1.1"),),
        "project-id-with-write-key": (("X-Ingest-Project-Id", str(uuid.uuid4())),),
    }
    for name, extra in headers.items():
        yield Case(f"headers:{name}", VALID, OK, accepted=1, headers=extra)


GROUPS: Final[dict[str, list[Case]]] = {
    "fields": list(field_cases()),
    "keys": list(key_cases()),
    "unicode": list(unicode_cases()),
    "times": list(time_cases()),
    "raw": list(raw_cases()),
    "batches": list(batch_cases()),
    "transport": list(transport_cases()),
}


def test_the_corpus_is_large_and_every_case_has_its_own_id() -> None:
    cases = [case for group in GROUPS.values() for case in group]
    assert len(cases) >= 200
    assert len({case.id for case in cases}) == len(cases)
    assert all(case.expect for case in cases)


# --- Running a group ------------------------------------------------------------------------------


@pytest.fixture
async def raw_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``client``, but an unhandled error comes back as the 500 a real server sends."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as c:
        yield c


def verdict(case: Case, r: httpx.Response) -> Iterable[str]:
    status = r.status_code
    if status >= 500:
        yield f"answered {status}: {r.text[:200]}"
        return
    if status not in case.expect:
        yield f"answered {status}, expected one of {sorted(case.expect)}: {r.text[:300]}"
    if CANARY in r.text or any(CANARY in v for v in r.headers.values()):
        yield "the answer echoes the canary"
    if 400 <= status < 500:
        yield from _problem_verdict(case, r)
    elif status == 200:
        yield from _batch_verdict(case, r)


def _problem_verdict(case: Case, r: httpx.Response) -> Iterable[str]:
    if r.headers.get("content-type") != "application/problem+json":
        yield f"content-type {r.headers.get('content-type')!r}"
        return
    body = r.json()
    missing = {"type", "title", "status", "detail", "instance"} - body.keys()
    if missing:
        yield f"the problem lacks {sorted(missing)}"
    if body.get("status") != r.status_code:
        yield f"problem status {body.get('status')} on a {r.status_code}"
    slug = case.slug
    if (
        slug is not None
        and r.status_code == _slug_status(slug)
        and body.get("type") != PROBLEM + slug
    ):
        yield f"type {body.get('type')!r}, expected {case.slug!r}"
    if body.get("type") == PROBLEM + "validation" and case.field is not None:
        field = (body.get("errors") or [{}])[0].get("field")
        if field != case.field:
            yield f"errors[0].field is {field!r}, expected {case.field!r}"


def _slug_status(slug: str) -> int:
    return {"payload-too-large": 413, "unsupported-media-type": 415}.get(slug, 400)


def _batch_verdict(case: Case, r: httpx.Response) -> Iterable[str]:
    body = r.json()
    if case.accepted is not None and body.get("accepted") != case.accepted:
        yield f"accepted {body.get('accepted')}, expected {case.accepted}: {r.text[:300]}"
    rejected = body.get("rejected") or []
    first = rejected[0] if rejected else {}
    if case.field is not None and first.get("index") == 0 and first.get("field") != case.field:
        yield f"rejected[0].field is {first.get('field')!r}, expected {case.field!r}"


async def send(client: httpx.AsyncClient, key: str, case: Case) -> httpx.Response:
    headers: dict[str, str] = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for name, value in case.headers:
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return await client.post("/v1/events", content=case.body, headers=headers)


@pytest.mark.parametrize("group", GROUPS)
async def test_group(
    raw_client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, group: str
) -> None:
    failures: list[str] = []
    stored = 0
    for case in GROUPS[group]:
        r = await send(raw_client, write_key, case)
        failures.extend(f"{case.id}: {problem}" for problem in verdict(case, r))
        if r.status_code == 200:
            answer = r.json()
            stored += answer["accepted"] - answer["duplicates"]
    in_table = await conn.fetchval("SELECT count(*) FROM events")
    if in_table != stored:
        failures.append(f"the answers accepted {stored} new events; the table holds {in_table}")
    assert not failures, f"{len(failures)} of {len(GROUPS[group])} cases failed:\n" + "\n".join(
        failures
    )
