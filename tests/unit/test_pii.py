"""Unit tests for ingest.pii against the shared vectors and the detection heuristics."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from ingest import pii
from ingest.pii import (
    EMAIL_KEYS,
    PHONE_KEYS,
    EmailDigest,
    PhoneDigest,
    google_email,
    hash_email,
    hash_phone,
    is_sha256_hex,
    looks_like_email,
    looks_like_phone,
    normalize_email,
    normalize_key,
    normalize_phone,
    redact_emails,
    sha256_hex,
)

Row = dict[str, Any]

VECTORS_PATH = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "pii.json"
if not VECTORS_PATH.is_file():
    raise FileNotFoundError(f"shared PII test vectors are missing: {VECTORS_PATH}")
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

DIGEST = "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"  # john.doe@example.com


def _rows(name: str) -> list[Row]:
    rows: list[Row] = VECTORS[name]
    assert rows, f"vector list {name!r} is empty"
    return rows


def _id(row: Row) -> str:
    text = " ".join(str(row["input"]).split()) or repr(row["input"])
    if "default_country" in row:
        text += f" [{row['default_country'] or 'no country'}]"
    return text


def _params(name: str) -> list[Any]:
    return [pytest.param(row, id=_id(row)) for row in _rows(name)]


class TestVectors:
    """Every row of the shared vectors reproduces exactly."""

    @pytest.mark.parametrize("row", _params("email"))
    def test_email(self, row: Row) -> None:
        assert normalize_email(row["input"]) == row["normalized"]
        assert sha256_hex(row["normalized"]) == row["sha256"]
        digest = hash_email(row["input"])
        assert digest is not None
        assert digest.sha256 == row["sha256"]

    @pytest.mark.parametrize("row", _params("email_variants"))
    def test_email_variant(self, row: Row) -> None:
        normalized = normalize_email(row["input"])
        assert normalized == row["normalized"]
        assert normalized is not None
        assert google_email(normalized) == row["google_normalized"]
        assert hash_email(row["input"]) == EmailDigest(row["sha256"], row["google_sha256"])

    @pytest.mark.parametrize("row", _params("phone"))
    def test_phone(self, row: Row) -> None:
        assert normalize_phone(row["input"], None) == row["normalized"]
        digest = hash_phone(row["input"], None)
        assert digest is not None
        assert digest.sha256 == row["sha256"]
        assert digest.e164_sha256 == sha256_hex("+" + row["normalized"])

    @pytest.mark.parametrize("row", _params("phone_variants"))
    def test_phone_variant(self, row: Row) -> None:
        country = row["default_country"]
        if row.get("unmatchable"):
            assert normalize_phone(row["input"], country) is None
            assert hash_phone(row["input"], country) is None
            return
        assert normalize_phone(row["input"], country) == row["normalized"]
        assert "+" + row["normalized"] == row["e164"]
        assert hash_phone(row["input"], country) == PhoneDigest(row["sha256"], row["e164_sha256"])


class TestHashing:
    def test_sha256_hex(self) -> None:
        assert sha256_hex("john.doe@example.com") == DIGEST

    @pytest.mark.parametrize("value", [DIGEST, DIGEST.upper(), f"  {DIGEST}\n"])
    def test_is_sha256_hex_true(self, value: str) -> None:
        assert is_sha256_hex(value)

    @pytest.mark.parametrize(
        "value", ["", DIGEST[:-1], DIGEST + "0", DIGEST[:-1] + "g", "0x" + DIGEST]
    )
    def test_is_sha256_hex_false(self, value: str) -> None:
        assert not is_sha256_hex(value)


class TestEmail:
    def test_digest_input_is_kept_not_rehashed(self) -> None:
        """A pre-hashed email is stored as given, lower-cased, with no Google form."""
        assert hash_email(f" {DIGEST.upper()} ") == EmailDigest(DIGEST, None)

    @pytest.mark.parametrize(
        "value",
        [
            "mailto:John.Doe@Example.com",
            "MAILTO:john.doe@example.com",
            "mailto:john.doe@example.com?subject=hi",
            "John.Doe%40Example.com",
            "mailto:john.doe%40example.com",
        ],
    )
    def test_wrapped_forms_hash_like_plain(self, value: str) -> None:
        assert normalize_email(value) == "john.doe@example.com"
        assert hash_email(value) == EmailDigest(DIGEST, DIGEST)

    def test_percent_encoded_plus(self) -> None:
        assert normalize_email("jane%2Bnews%40x.com") == "jane+news@x.com"

    @pytest.mark.parametrize(
        "value",
        ["", "   ", "john.doe", "@example.com", "john@", "john@localhost", "a@b@c.com",
         "john doe@example.com", "john@exa mple.com", "john@.com", "john@example.", "not an email"],
    )  # fmt: skip
    def test_not_an_email(self, value: str) -> None:
        assert normalize_email(value) is None
        assert hash_email(value) is None

    def test_google_form_only_for_google_domains(self) -> None:
        assert google_email("j.o.e+x@gmail.com") == "joe@gmail.com"
        assert google_email("j.o.e+x@googlemail.com") == "joe@googlemail.com"
        assert google_email("j.o.e+x@example.com") == "j.o.e+x@example.com"
        assert google_email("j.o.e+x@mail.gmail.com") == "j.o.e+x@mail.gmail.com"

    def test_google_form_never_empties_the_local_part(self) -> None:
        assert google_email("+tag@gmail.com") == "+tag@gmail.com"

    @pytest.mark.parametrize(
        "value",
        [
            "john.doe@example.com",
            "  John.Doe@Example.COM ",
            "o'brien@example.ie",
            "Müller@Beispiel.de",
            "jane+news@mail.example.org",
            "mailto:john@x.com",
            "john%40x.com",
            "x@xn--p1ai.xn--p1ai",
        ],
    )
    def test_looks_like_email(self, value: str) -> None:
        assert looks_like_email(value)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "john",
            "john@localhost",
            "@example.com",
            "a@b.c",
            "john doe@example.com",
            "write to john@example.com",
            "https://x.test/?e=john@example.com",
            "john@example.com, jane@example.com",
            "a@b@example.com",
            "100%",
        ],
    )
    def test_not_looks_like_email(self, value: str) -> None:
        assert not looks_like_email(value)


class TestRedactEmails:
    def test_url_with_percent_encoded_address(self) -> None:
        url = "https://x.test/?e=John.Doe%40Example.com&y=1"
        assert redact_emails(url) == f"https://x.test/?e={DIGEST}&y=1"

    def test_sentence(self) -> None:
        text = "Please write to John.Doe@Example.com. Thanks!"
        redacted = redact_emails(text)
        assert "john.doe" not in redacted.lower()
        assert "example.com" not in redacted.lower()
        assert redacted == f"Please write to {DIGEST}. Thanks!"

    def test_several_addresses_and_forms(self) -> None:
        text = "mailto:a@x.com <b@y.org> (c.d@z.co.uk) mailto%3Ajane%2Bnews%40x.com"
        redacted = redact_emails(text)
        assert "@" not in redacted
        assert "%40" not in redacted
        for address in ["a@x.com", "b@y.org", "c.d@z.co.uk", "jane+news@x.com"]:
            assert sha256_hex(address) in redacted
        assert redacted.startswith("mailto:")

    def test_text_without_address_is_returned_unchanged(self) -> None:
        text = "no addresses here, 100% sure"
        assert redact_emails(text) is text

    def test_at_sign_without_address(self) -> None:
        text = "meet @ noon, ping @john"
        assert redact_emails(text) == text

    def test_long_run_before_at_sign_is_fast(self) -> None:
        """Bounded local parts keep a pathological input linear."""
        text = "a" * 200_000 + "@"
        assert redact_emails(text) == text


class TestPhone:
    def test_digest_input_is_kept_not_rehashed(self) -> None:
        """A pre-hashed phone is stored as given, lower-cased, with no E.164 form."""
        assert hash_phone(f" {DIGEST.upper()} ", "US") == PhoneDigest(DIGEST, None)
        assert hash_phone(DIGEST, None) == PhoneDigest(DIGEST, None)

    @pytest.mark.parametrize("country", [None, "US", "GB", "FR"])
    def test_international_ignores_default_country(self, country: str | None) -> None:
        assert normalize_phone("+44 20 7946 0958", country) == "442079460958"
        assert normalize_phone("0044 20 7946 0958", country) == "442079460958"
        assert normalize_phone("TEL:+44 20 7946 0958", country) == "442079460958"

    def test_lower_case_country(self) -> None:
        assert normalize_phone("020 7946 0958", "gb") == "442079460958"

    def test_italian_leading_zero_is_kept(self) -> None:
        assert normalize_phone("02 1234 5678", "IT") == "390212345678"

    def test_fictional_number_still_hashes(self) -> None:
        """555-01xx numbers are not valid, only possible, and must still hash."""
        assert normalize_phone("(415) 555-0199", "US") == "14155550199"

    @pytest.mark.parametrize(
        ("value", "country"),
        [
            ("", "US"),
            ("   ", None),
            ("+", None),
            ("tel:", "US"),
            ("not a phone", None),
            ("+1 415", None),  # too short
            ("+1234567890123456", None),  # too long
            ("123456", None),
            ("0612345678", None),  # national number, unknown country
            ("+1 415 555 0100 ext. 5", None),  # digits alone would change the number
            ("555-0100", "US"),  # local only: no area code
            ("12", "US"),
            ("020 7946 0958", "XX"),  # unknown region
        ],
    )
    def test_unmatchable(self, value: str, country: str | None) -> None:
        assert normalize_phone(value, country) is None
        assert hash_phone(value, country) is None

    def test_extension_dropped_with_default_country(self) -> None:
        assert normalize_phone("+1 415 555 0100 ext. 5", "US") == "14155550100"

    @pytest.mark.parametrize(
        "value",
        [
            "+1 (415) 555-0100",
            "+14155550100",
            "+1.415.555.0100",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "0044 20 7946 0958",
            "tel:+81-3-1234-5678",
            "+55 (11) 91234-5678",
            "(415) 555-0100",
            "(650)555-1212",
            "415-555-0100",
            "415.555.0100",
            "415 555 0100",
            "1-415-555-0100",
            "  +1 415 555 0100 ",
            "\u2003+44 20 7946 0958",  # any Unicode space before it
            "TEL: (415) 555-0100",
        ],
    )
    def test_looks_like_phone(self, value: str) -> None:
        assert looks_like_phone(value)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "not a phone",
            "14155550100",  # pure digits: an id as often as a phone
            "00123456789",  # zero-padded id
            "4155550100",
            "2024-01-15",
            "2024-01-15T10:30:00+01:00",
            "10:30:00",
            "1.2.3.4",
            "1.2.3.4567",
            "192.168.1.1",
            "192.168.100.200",
            "3.14159",
            "1234567.89",
            "+12345678.90",
            "+1 415",
            "+1..415 555 0100",
            "+1 (415 555 0100",
            "415-555-010",
            "415/555/0100",
            "ext. 415-555-0100",
            "x+1 415 555 0100",
            "+1 (415) 55",
        ],
    )
    def test_not_looks_like_phone(self, value: str) -> None:
        assert not looks_like_phone(value)


class TestKeys:
    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("$email", "email"),
            ("Phone_Number", "phonenumber"),
            ("E-Mail Address", "emailaddress"),
            ("user.email", "useremail"),
            ("mobile-phone", "mobilephone"),
            ("$$", ""),
        ],
    )
    def test_normalize_key(self, key: str, expected: str) -> None:
        assert normalize_key(key) == expected

    def test_key_sets(self) -> None:
        assert "email" in EMAIL_KEYS
        assert "phone" in PHONE_KEYS
        assert not EMAIL_KEYS & PHONE_KEYS
        assert all(normalize_key(k) == k for k in EMAIL_KEYS | PHONE_KEYS)


def test_module_imports_no_web_or_db_stack() -> None:
    """pii stays pure: importable without starlette or asyncpg."""
    # The source beside the module: pii.__file__ is the extension when compiled (hatch_build.py).
    source = Path(pii.__file__).parent / "pii.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"starlette", "asyncpg"}


class TestPhonesInFreeText:
    """A number written inside free text is replaced in place by the digest the same number
    gets as a whole value; what only resembles one stays."""

    @pytest.mark.parametrize(
        ("text", "number"),
        [
            ("call +1 415 555 0142 now", "+1 415 555 0142"),
            ("call +1 (415) 555-0142.", "+1 (415) 555-0142"),
            ("tel +44 20 7946 0958, ok", "+44 20 7946 0958"),
            ("office (415) 555-0142 ext", "(415) 555-0142"),
        ],
    )
    def test_replaced_by_its_digest(self, text: str, number: str) -> None:
        digest = pii.hash_phone(number, None)
        assert digest is not None
        assert pii.redact_phones(text, None) == text.replace(number, digest.sha256)

    @pytest.mark.parametrize(
        "text",
        ["price (3) items +5 points", "version 1.2 (build 3)", "order 4155550142", "a+b", "+1"],
    )
    def test_what_only_resembles_one_stays(self, text: str) -> None:
        assert pii.redact_phones(text, None) == text
