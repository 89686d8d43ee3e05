"""The shared PII vectors through the API: what a partner re-hashing on its side must match.

Every row of ``email``, ``email_variants``, ``phone`` and ``phone_variants`` in
``shared/vectors/pii.json`` is posted as an identify event and the stored row is compared with the
vector: the digest columns and the hashed trait. Rows are grouped (one batch per list, one project
per default country); each mismatch names its vector row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import bearer, new_id, unseal

VECTORS_PATH = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "pii.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

GOOGLE_DOMAINS = ("@gmail.com", "@googlemail.com")
HEX_EMAIL = "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"  # john.doe@...
HEX_PHONE = "5e7ec4c79ccac6e420876e65ad0e6b4b2ccf73ec3dccb50297bf2890a1ec73b9"  # 14155550100
UK_PHONE = "+44 20 7946 0958"
UK_SHA256 = "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
UK_E164_SHA256 = "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows_of(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = VECTORS[name]
    assert rows, f"vector list {name!r} is empty"
    return rows


def label(name: str, index: int, row: dict[str, Any]) -> str:
    country = f" [default_country={row['default_country']}]" if "default_country" in row else ""
    return f"{name}[{index}] {row['input']!r}{country}"


async def post_identifies(
    client: httpx.AsyncClient, key: str, traits: Iterable[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """One batch of identify events, one per traits object; the answer and the message ids."""
    batch: list[dict[str, Any]] = []
    for i, t in enumerate(traits):
        batch.append({"type": "identify", "user_id": f"u-{i}", "message_id": new_id(), "traits": t})
    r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["rejected"] == [], body
    assert body["accepted"] == len(batch), body
    return body, [e["message_id"] for e in batch]


async def stored(conn: asyncpg.Connection, message_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM events WHERE message_id = $1", message_id)
    assert row is not None, f"event {message_id} was not stored"
    opened: dict[str, Any] = await unseal(conn, row)
    return opened


def diff(what: str, got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per field of ``expected`` that ``got`` does not match, naming the vector row."""
    return [
        f"{what}: {field} is {got.get(field)!r}, expected {value!r}"
        for field, value in expected.items()
        if got.get(field) != value
    ]


async def create_project(
    client: httpx.AsyncClient, secret_key: str, default_country: str | None
) -> str:
    """A project with ``default_country``; its write key."""
    r = await client.post(
        "/v1/projects",
        json={"name": f"Phones {default_country}", "default_country": default_country},
        headers=bearer(secret_key),
    )
    assert r.status_code == 201, r.text
    assert r.json()["default_country"] == default_country
    key: str = r.json()["write_key"]["key"]
    return key


# -- the vectors -----------------------------------------------------------------------------------


async def test_email_vectors(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    rows = rows_of("email")
    # The vectors' premise: none of these is a Google address, so the Google form is the same.
    assert not [r["input"] for r in rows if r["normalized"].endswith(GOOGLE_DOMAINS)]
    answer, mids = await post_identifies(client, write_key, ({"email": r["input"]} for r in rows))
    assert answer["warnings"] == []
    problems: list[str] = []
    for i, (row, mid) in enumerate(zip(rows, mids, strict=True)):
        got = await stored(conn, mid)
        problems += diff(
            label("email", i, row),
            {**got, "trait": got["traits"]},
            {
                "email_sha256": row["sha256"],
                "email_google_sha256": row["sha256"],
                "trait": {"email": row["sha256"]},
                "phone_sha256": None,
            },
        )
    assert not problems, "\n".join(problems)


async def test_email_variant_vectors(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    rows = rows_of("email_variants")
    answer, mids = await post_identifies(client, write_key, ({"email": r["input"]} for r in rows))
    assert answer["warnings"] == []
    problems: list[str] = []
    for i, (row, mid) in enumerate(zip(rows, mids, strict=True)):
        got = await stored(conn, mid)
        problems += diff(
            label("email_variants", i, row),
            {**got, "trait": got["traits"]},
            {
                "email_sha256": row["sha256"],
                "email_google_sha256": row["google_sha256"],
                "trait": {"email": row["sha256"]},
            },
        )
    assert not problems, "\n".join(problems)


async def test_phone_vectors(
    client: httpx.AsyncClient,
    write_key: str,
    project: dict[str, Any],
    conn: asyncpg.Connection,
) -> None:
    assert project["default_country"] is None  # these rows are read without a default country
    rows = rows_of("phone")
    answer, mids = await post_identifies(client, write_key, ({"phone": r["input"]} for r in rows))
    assert answer["warnings"] == []
    problems: list[str] = []
    for i, (row, mid) in enumerate(zip(rows, mids, strict=True)):
        got = await stored(conn, mid)
        problems += diff(
            label("phone", i, row),
            {**got, "trait": got["traits"]},
            {
                "phone_sha256": row["sha256"],
                # The E.164 form is the same digits with their '+' (the vectors' "about").
                "phone_e164_sha256": sha("+" + row["normalized"]),
                "trait": {"phone": row["sha256"]},
                "email_sha256": None,
            },
        )
    assert not problems, "\n".join(problems)


async def test_phone_variant_vectors(
    client: httpx.AsyncClient,
    secret_key: str,
    write_key: str,
    project: dict[str, Any],
    conn: asyncpg.Connection,
) -> None:
    assert project["default_country"] is None
    rows = rows_of("phone_variants")
    countries = sorted({r["default_country"] for r in rows if r["default_country"]})
    keys: dict[str | None, str] = {None: write_key}
    for country in countries:
        keys[country] = await create_project(client, secret_key, country)

    problems: list[str] = []
    for country, key in keys.items():
        group = [(i, r) for i, r in enumerate(rows) if r["default_country"] == country]
        answer, mids = await post_identifies(client, key, ({"phone": r["input"]} for _, r in group))
        warnings = {w["index"]: w for w in answer["warnings"]}
        for n, ((i, row), mid) in enumerate(zip(group, mids, strict=True)):
            what = label("phone_variants", i, row)
            got = await stored(conn, mid)
            warning = warnings.pop(n, None)
            if row.get("unmatchable"):
                problems += diff(
                    what,
                    {**got, "trait": got["traits"], "warning": warning},
                    {
                        "phone_sha256": None,
                        "phone_e164_sha256": None,
                        "trait": {},
                        "warning": {
                            "index": n,
                            "code": "phone_unmatchable",
                            "field": "traits.phone",
                            "reason": (warning or {}).get("reason"),
                        },
                    },
                )
                if warning is not None and row["input"] in warning["reason"]:
                    problems.append(f"{what}: the warning quotes the raw number")
            else:
                assert row["e164"] == "+" + row["normalized"], what  # the vectors agree
                problems += diff(
                    what,
                    {**got, "trait": got["traits"], "warning": warning},
                    {
                        "phone_sha256": row["sha256"],
                        "phone_e164_sha256": row["e164_sha256"],
                        "trait": {"phone": row["sha256"]},
                        "warning": None,
                    },
                )
        problems += [f"unexpected warning {w}" for w in warnings.values()]
    assert not problems, "\n".join(problems)


async def test_an_unmatchable_phone_in_a_single_event_is_stored_without_it(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    mid = new_id()
    r = await client.post(
        "/v1/events",
        json={
            "type": "identify",
            "user_id": "u",
            "message_id": mid,
            "traits": {"phone": "0612345678", "plan": "pro"},
        },
        headers=bearer(write_key),
    )
    assert r.status_code == 200, r.text
    assert [(w["index"], w["code"], w["field"]) for w in r.json()["warnings"]] == [
        (0, "phone_unmatchable", "traits.phone")
    ]
    got = await stored(conn, mid)
    assert (got["phone_sha256"], got["phone_e164_sha256"]) == (None, None)
    assert got["traits"] == {"plan": "pro"}


# -- digests given, precedence, detection outside the usual keys -----------------------------------


async def test_a_digest_is_stored_lower_cased_as_given_never_hashed_twice(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    answer, [mid] = await post_identifies(
        client,
        write_key,
        [{"email": HEX_EMAIL.upper(), "phone": f"  {HEX_PHONE.upper()} "}],
    )
    assert answer["warnings"] == []
    got = await stored(conn, mid)
    assert got["traits"] == {"email": HEX_EMAIL, "phone": HEX_PHONE}
    assert (got["email_sha256"], got["phone_sha256"]) == (HEX_EMAIL, HEX_PHONE)
    # The other forms cannot be derived from a digest: absent, never a digest of the digest.
    assert (got["email_google_sha256"], got["phone_e164_sha256"]) == (None, None)


async def test_traits_beat_context_traits_beat_properties(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    a, b, c = "a@example.com", "b@example.com", "c@example.com"
    pa, pb = "+14155550100", "+442079460958"
    events = {
        "all three": {
            "type": "identify",
            "traits": {"email": a, "phone": pa},
            "context": {"traits": {"email": c}},
            "properties": {"email": b, "phone": pb},
        },
        "no traits": {
            "type": "track",
            "event": "x",
            "context": {"traits": {"email": c, "phone": pb}},
            "properties": {"email": b, "phone": pa},
        },
        "properties only": {
            "type": "track",
            "event": "x",
            # An email merely found in another property ranks below properties.email.
            "properties": {"note": f"mailto:{c}", "email": b, "contact": pa},
        },
    }
    mids = {name: new_id() for name in events}
    r = await client.post(
        "/v1/events",
        json={
            "batch": [
                {**ev, "user_id": "u", "message_id": mids[name]} for name, ev in events.items()
            ]
        },
        headers=bearer(write_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3

    all_three = await stored(conn, mids["all three"])
    assert all_three["email_sha256"] == sha(a)
    assert all_three["phone_sha256"] == sha(pa[1:])
    assert all_three["properties"] == {"email": sha(b), "phone": sha(pb[1:])}
    assert all_three["context"] == {"traits": {"email": sha(c)}}

    no_traits = await stored(conn, mids["no traits"])
    assert no_traits["email_sha256"] == sha(c)
    assert no_traits["phone_sha256"] == sha(pb[1:])

    properties_only = await stored(conn, mids["properties only"])
    assert properties_only["email_sha256"] == sha(b)
    assert properties_only["phone_sha256"] == sha(pa[1:])  # found in a non-phone key
    assert properties_only["properties"] == {
        "note": sha(c),
        "email": sha(b),
        "contact": sha(pa[1:]),
    }


async def test_emails_in_any_property_are_replaced_by_their_digest(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    mid = new_id()
    r = await client.post(
        "/v1/events",
        json={
            "event": "Shared",
            "user_id": "u",
            "message_id": mid,
            "properties": {
                "recipient": "  John.Doe@Example.COM ",
                "buyer": {"contact": "USER@EXAMPLE.COM"},
                "cc": ["john.doe@example.com", "not an email"],
                "message": "reply to USER@EXAMPLE.COM please",
                "back": "https://shop.example/?to=john.doe%40example.com&x=1",
            },
        },
        headers=bearer(write_key),
    )
    assert r.status_code == 200, r.text
    got = await stored(conn, mid)
    john, user = rows_of("email")[0]["sha256"], rows_of("email")[6]["sha256"]
    assert got["properties"] == {
        "recipient": john,
        "buyer": {"contact": user},
        "cc": [john, "not an email"],
        "message": f"reply to {user} please",
        "back": f"https://shop.example/?to={john}&x=1",
    }
    assert got["email_sha256"] == john  # the first one found at the top level


async def test_a_phone_number_in_any_property_is_hashed(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    mid = new_id()
    r = await client.post(
        "/v1/events",
        json={
            "event": "Call Requested",
            "user_id": "u",
            "message_id": mid,
            "properties": {"callback_number": UK_PHONE, "slot": "morning"},
        },
        headers=bearer(write_key),
    )
    assert r.status_code == 200, r.text
    got = await stored(conn, mid)
    assert got["properties"] == {"callback_number": UK_SHA256, "slot": "morning"}
    assert (got["phone_sha256"], got["phone_e164_sha256"]) == (UK_SHA256, UK_E164_SHA256)


ORDINARY = {
    "date": "2024-01-15",
    "datetime": "2024-01-15T10:30:00Z",
    "version": "1.2.3.4",
    "order_id": "12345678",
    "padded_id": "0012345678",
    "amount": "1234.5678",
    "zip": "94107",
    "sku": "AB-1234-567",
    "uuid": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "checksum": HEX_EMAIL.upper(),
    "handle": "@johndoe",
    "text": "meet at 10:30 on 2024-01-15",
}


async def test_ordinary_ids_dates_and_versions_are_left_untouched(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection
) -> None:
    mid = new_id()
    r = await client.post(
        "/v1/events",
        json={
            "event": "Ordered",
            "user_id": 12345678,
            "message_id": mid,
            "properties": ORDINARY,
        },
        headers=bearer(write_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == []
    got = await stored(conn, mid)
    assert got["properties"] == ORDINARY
    assert got["user_id"] == "12345678"
    assert (got["email_sha256"], got["phone_sha256"]) == (None, None)


# -- identifiers that are emails -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["user_id", "anonymous_id", "userId", "anonymousId"])
@pytest.mark.parametrize(
    "value",
    ["john.doe@example.com", "  John.Doe@Example.COM ", "mailto:john.doe@example.com"],
)
async def test_an_id_that_is_an_email_is_refused(
    client: httpx.AsyncClient, write_key: str, conn: asyncpg.Connection, field: str, value: str
) -> None:
    code = ("user_id" if field.startswith("user") else "anonymous_id") + "_is_email"
    r = await client.post(
        "/v1/events", json={"event": "x", field: value}, headers=bearer(write_key)
    )
    assert r.status_code == 400, r.text
    assert [e["code"] for e in r.json()["errors"]] == [code]
    assert "john.doe" not in r.text.lower()

    batch = [{"event": "x", "user_id": "ok"}, {"event": "x", "user_id": "ok", field: value}]
    r = await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
    assert r.status_code == 200, r.text
    assert [(e["index"], e["code"]) for e in r.json()["rejected"]] == [(1, code)]
    assert await conn.fetchval("SELECT count(*) FROM events") == 1
