"""Property tests over parse -> scrub -> encode (RELIABILITY A6), with Hypothesis.

Whatever JSON a client sends, the parser either refuses an event with a reason or produces a row;
and a raw email, phone or IP planted anywhere in the tree never survives into that row.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingest import events, pii
from ingest.config import Settings
from ingest.events import COLUMNS, EventParser, Limits, Source

PARSER = EventParser(Limits.from_settings(Settings()), lambda ip: None)
SOURCE = Source(
    project_id=uuid.UUID(int=1),
    default_country="US",
    received_at=datetime(2026, 1, 1, tzinfo=UTC),
    peer_geo=None,
)

# Canaries in the forms clients really send them.
EMAILS = ["cnry.prop@example.test", "  CNRY.Prop@Example.TEST ", "mailto:cnry.prop@example.test"]
PHONES = ["+1 415 555 0142", "+44 20 7946 0142", "(415) 555-0142", "0044 20 7946 0142"]
IPS = ["192.0.2.142", "2001:db8::142"]
EMAIL_KEYS = ["email", "Email", "$email", "email_address", "contact"]
PHONE_KEYS = ["phone", "Phone_Number", "mobile", "note"]
IP_KEYS = ["ip", "$ip", "ip_address", "client_ip"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
keys = st.text(min_size=1, max_size=12)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=25,
)


def _plant(tree: Any, path: list[int], key: str, value: str) -> dict[str, Any]:
    """Put ``key: value`` into a dict somewhere inside ``tree`` (wrapping it when needed)."""
    root: dict[str, Any] = {"t": tree}
    node: Any = root
    for step in path:
        children = [
            v
            for v in (node.values() if isinstance(node, dict) else node)
            if isinstance(v, dict | list)
        ]
        if not children:
            break
        node = children[step % len(children)]
    if isinstance(node, list):
        node.append({key: value})
    else:
        node[key] = value
    return root


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit()).lstrip("0")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees,
    path=st.lists(st.integers(min_value=0, max_value=7), max_size=6),
    where=st.sampled_from(["properties", "traits", "context"]),
    kind=st.sampled_from(["email", "phone", "ip"]),
    pick=st.integers(min_value=0, max_value=20),
)
def test_a_planted_canary_never_reaches_the_row(
    tree: Any, path: list[int], where: str, kind: str, pick: int
) -> None:
    if kind == "email":
        key, value = EMAIL_KEYS[pick % len(EMAIL_KEYS)], EMAILS[pick % len(EMAILS)]
        needles = ["cnry.prop@example.test", "cnry.prop"]
    elif kind == "phone":
        key, value = PHONE_KEYS[pick % len(PHONE_KEYS)], PHONES[pick % len(PHONES)]
        needles = [_digits(value)[-10:]]
    else:
        key, value = IP_KEYS[pick % len(IP_KEYS)], IPS[pick % len(IPS)]
        needles = [value]
    event = {"event": "e", "user_id": "u", where: _plant(tree, path, key, value)}
    parsed = PARSER.parse([event], SOURCE)
    if parsed.rejected:
        # Refused (too deep, U+0000 in generated text...): then nothing is stored at all, and
        # the reason must not quote the canary either.
        text = orjson.dumps([issue.as_dict() for issue in parsed.rejected]).decode().lower()
    else:
        [row] = parsed.rows
        text = (
            b"|".join(part if isinstance(part, bytes) else str(part).encode() for part in row)
            .decode()
            .lower()
        )
    for needle in needles:
        assert needle.lower() not in text


@settings(max_examples=300, deadline=None)
@given(
    event=st.dictionaries(
        st.sampled_from(
            [
                "type",
                "event",
                "user_id",
                "anonymous_id",
                "message_id",
                "timestamp",
                "sent_at",
                "app_id",
                "properties",
                "traits",
                "context",
                "name",
                "userId",
                "messageId",
                "x",
            ]
        ),
        trees,
        max_size=8,
    )
)
def test_any_event_is_either_a_row_or_a_reason(event: dict[str, Any]) -> None:
    """Never an exception: a row (whose JSON parts re-read), or a refusal with a code."""
    parsed = PARSER.parse([event], SOURCE)
    assert len(parsed.rows) + len(parsed.rejected) == 1
    for issue in parsed.rejected:
        assert issue.code
        assert issue.reason
    for row in parsed.rows:
        # properties, traits, context; then the device ids (JSON or None), kept apart.
        for part in row[-4:-1]:
            assert isinstance(orjson.loads(part), dict)


@given(st.text(max_size=60))
def test_normalizing_an_email_twice_changes_nothing(text: str) -> None:
    once = pii.normalize_email(text)
    if once is not None:
        assert pii.normalize_email(once) == once


@given(
    st.sampled_from([None, "US", "GB", "FR", "DE"]),
    st.text(alphabet="+0123456789 ()-.", max_size=20),
)
def test_a_phone_digest_is_stable_under_its_own_normal_form(country: str | None, text: str) -> None:
    """Hashing the normalized international form gives the same digest as the input did."""
    digest = pii.hash_phone(text, country)
    if digest is not None and digest.e164_sha256 is not None:
        normalized = pii.normalize_phone(text, country)
        assert normalized is not None
        assert pii.hash_phone("+" + normalized, None) == digest


def test_keys_and_values_remembered_as_plain_still_let_no_pii_through() -> None:
    """The parser remembers keys and values that passed unchanged (events repeat them): a
    later event with PII under those keys, or another project's country, is scrubbed the same."""
    parser = EventParser(Limits.from_settings(Settings()), lambda ip: None)
    no_country = Source(
        project_id=uuid.UUID(int=2),
        default_country=None,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        peer_geo=None,
    )

    def props(source: Source, **values: Any) -> dict[str, Any]:
        event = {"type": "track", "event": "E", "user_id": "u", "properties": values}
        parsed = parser.parse([event], source)
        assert not parsed.rejected
        stored: dict[str, Any] = orjson.loads(parsed.rows[0][COLUMNS.index("properties")])
        return stored

    plain = {"note": "hello", "version": "5.2.0", "code": "tel-free"}
    assert props(SOURCE, **plain) == plain
    assert props(SOURCE, **plain) == plain  # now remembered: still stored as sent
    email = pii.hash_email("cnry.prop@example.test")
    assert email is not None
    assert props(SOURCE, note="cnry.prop@example.test")["note"] == email.sha256
    for source in (SOURCE, no_country):
        for phone in ("+44 20 7946 0142", "(415) 555-0142"):
            stored = orjson.dumps(props(source, note=f"call {phone}", version=phone)).decode()
            assert "7946" not in stored, stored
            assert "555-0142" not in stored, stored
    assert props(SOURCE, **{"192.0.2.142": "x", "note": "hello"}) == {"note": "hello"}
    # Texts with "(" or "+" are remembered too when nothing in them looks like a number...
    agent = {"ua": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0", "price": "+5% (est.)"}
    for source in (no_country, SOURCE, no_country):
        assert props(source, **agent) == agent
    # ...but not one holding a number, which a project of one country keeps as sent (it is not
    # a possible French number) and one of another hashes: the first must not teach the second.
    french = dataclasses.replace(SOURCE, default_country="FR")
    national = "call (415) 555-0142"
    assert props(french, note=national) == {"note": national}
    assert props(french, note=national) == {"note": national}
    assert "555-0142" not in orjson.dumps(props(SOURCE, note=national)).decode()


# What an SDK's context may carry beside plain values: PII, an address, device ids, a phone
# field that cannot be normalized (a warning), and nothing.
CONTEXT_EXTRAS = [
    {},
    {"email": EMAILS[0]},
    {"note": f"call {PHONES[0]}"},
    {"phone": "12"},
    {"ip": IPS[0]},
    {"device": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "type": "ios"}},
    {"device": {"advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC"}},
    {
        "device": {
            "advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "adTrackingEnabled": False,
        }
    },
    {"traits": {"email": EMAILS[1]}},
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.dictionaries(keys, trees, max_size=4),
    extras=st.lists(st.sampled_from(CONTEXT_EXTRAS), min_size=1, max_size=3),
    kinds=st.lists(st.sampled_from(["track", "identify", "page"]), min_size=3, max_size=3),
)
def test_a_batch_parses_as_each_of_its_events_alone(
    base: dict[str, Any], extras: list[dict[str, Any]], kinds: list[str]
) -> None:
    """Events of one batch share their context (the parser reuses one scrubbed context for
    the next identical one): each row, warning and refusal is what that event alone gives."""
    context = {k: v for extra in extras for k, v in extra.items()} | base
    events = [
        {
            "type": kind,
            "event": "E",
            "name": "N",
            "user_id": f"u{n}",
            "message_id": f"m{n}",
            "traits": {"plan": "pro"},
            "context": context,
        }
        for n, kind in enumerate(kinds)
    ]

    def copy(event: dict[str, Any]) -> dict[str, Any]:
        copied: dict[str, Any] = orjson.loads(orjson.dumps(event))
        return copied

    batch = PARSER.parse([copy(e) for e in events], SOURCE)
    alone = [PARSER.parse([copy(e)], SOURCE) for e in events]
    assert batch.rows == [row for a in alone for row in a.rows]
    assert [(i.index, i.code, i.field) for i in batch.rejected] == [
        (n, i.code, i.field) for n, a in enumerate(alone) for i in a.rejected
    ]
    assert [(i.index, i.code, i.field) for i in batch.warnings] == [
        (n, i.code, i.field) for n, a in enumerate(alone) for i in a.warnings
    ]


MAX_ID = PARSER.limits.max_id_chars
# Ids as SDKs send them, and texts on every edge of the id checks: emails (also
# percent-encoded), phones in their written forms (a "+", "(", digit, "tel:" or whitespace
# first), NUL, and lengths around a phone's minimum and the limit.
EDGE_IDS = [
    "user-123",
    "5f0c6a8e-3b1d-4c2e-9a7f-0d1e2f3a4b5c",
    "anon_7f3a",
    "jane@example.com",
    "Jane.Doe@Example.COM",
    "mailto:jane@example.com",
    "jane%40example.com",
    "id-jane@example.com-x",
    "a@b",
    "+14155550142",
    "+1 415 555 0142",
    "(415) 555-0142",
    "415-555-0142",
    "tel:+14155550142",
    "TEL: +1 415 555 0142",
    " +14155550142",
    "\u2003+14155550142",
    "\t4155550142",
    "+14155550",
    "+141555501",
    "12345678",
    "123456789",
    "004420794601",
    "0044 20 7946 0142",
    "order 4155550142",
    "u\x00x",
    "\x00",
    "x" * MAX_ID,
    "x" * (MAX_ID + 1),
    "+" + "1" * (MAX_ID - 1),
    "",
    " ",
]


def _id_answers(text: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """(what EventParser._id answers, what the full checks, _identifier, answer): the same
    text, or a refusal's code."""
    source = dataclasses.replace(SOURCE, hash_identifiers=False)
    try:
        expected: tuple[str, str | None] = (
            "ok",
            events._identifier({"user_id": text}, "user_id", MAX_ID),
        )
    except events._Reject as rej:
        expected = ("refused", rej.code)
    try:
        got: tuple[str, str | None] = ("ok", PARSER._id({"user_id": text}, "user_id", source, []))
    except events._Reject as rej:
        got = ("refused", rej.code)
    return got, expected


def _text_answers(value: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """(what _text_field answers, what _optional_str then _refuse_pii answer)."""
    try:
        text = events._optional_str({"f": value}, "f", MAX_ID)
        if text is not None:
            events._refuse_pii(text, "f", "pii_in_name", "pii_in_name")
        expected: tuple[str, Any] = ("ok", text)
    except events._Reject as rej:
        expected = ("refused", (rej.code, rej.field))
    try:
        got: tuple[str, Any] = ("ok", events._text_field({"f": value}, "f", MAX_ID, "pii_in_name"))
    except events._Reject as rej:
        got = ("refused", (rej.code, rej.field))
    return got, expected


@pytest.mark.parametrize("text", EDGE_IDS)
def test_an_id_on_an_edge_is_answered_as_the_full_checks_answer_it(text: str) -> None:
    """EventParser._id and _text_field answer the usual text before the full checks: what
    they answer must be what those answer."""
    got, expected = _id_answers(text)
    assert got == expected
    got, expected = _text_answers(text)
    assert got == expected


@pytest.mark.parametrize("value", [None, 12, 1.5, True, ["x"], {"a": 1}])
def test_a_text_field_that_is_no_text_is_answered_as_the_full_checks_answer_it(
    value: Any,
) -> None:
    got, expected = _text_answers(value)
    assert got == expected


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.sampled_from(list("ab019+()-. @%4tTel:.com\x00\t\u2003")), max_size=24),
    )
)
def test_any_id_is_answered_as_the_full_checks_answer_it(text: str) -> None:
    got, expected = _id_answers(text)
    assert got == expected
    got, expected = _text_answers(text)
    assert got == expected
