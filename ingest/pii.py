"""Normalizes and hashes identifiers (email, phone). Raw values never leave this module."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

import phonenumbers

__all__ = [
    "EMAIL_KEYS",
    "PHONE_KEYS",
    "EmailDigest",
    "PhoneDigest",
    "google_email",
    "hash_email",
    "hash_phone",
    "is_sha256_hex",
    "looks_like_email",
    "looks_like_phone",
    "normalize_email",
    "normalize_key",
    "normalize_phone",
    "redact_emails",
    "sha256_hex",
]


@dataclass(frozen=True, slots=True)
class EmailDigest:
    sha256: str
    """Lower-case hex SHA-256 of the normalized email."""
    google_sha256: str | None
    """SHA-256 of the Google form (equal to sha256 off gmail); None when given a digest."""


@dataclass(frozen=True, slots=True)
class PhoneDigest:
    sha256: str
    """SHA-256 of the digits with country code, no '+' (what Meta and Snap match)."""
    e164_sha256: str | None
    """SHA-256 of '+' + digits (what Google and TikTok match); None when given a digest."""


EMAIL_KEYS: frozenset[str] = frozenset(
    {
        "email",
        "emailaddress",
        "emailaddr",
        "mail",
        "mailaddress",
        "useremail",
        "contactemail",
        "workemail",
        "personalemail",
        "customeremail",
        "billingemail",
        "primaryemail",
    }
)

PHONE_KEYS: frozenset[str] = frozenset(
    {
        "phone",
        "phonenumber",
        "phoneno",
        "mobile",
        "mobilephone",
        "mobilenumber",
        "mobileno",
        "cellphone",
        "cell",
        "cellnumber",
        "telephone",
        "telephonenumber",
        "tel",
        "msisdn",
        "whatsapp",
        "whatsappnumber",
        "sms",
        "homephone",
        "workphone",
        "userphone",
        "contactphone",
        "primaryphone",
        "billingphone",
    }
)

_GOOGLE_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_KEY_JUNK = re.compile(r"[^a-z0-9]+")

# normalize_email is deliberately loose (values under known email keys); the patterns below are
# stricter because they decide, without a key to go by, whether something is an email at all.
_LOOSE_EMAIL = re.compile(r"[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+")
# Labels and local parts are bounded (RFC 5321: 63 and 64) so a long run of word characters
# before a stray '@' costs linear, not quadratic, time in redact_emails.
_EMAIL_DOMAIN = r"(?:[\w-]{1,63}\.)+(?:[^\W\d_]{2,63}|xn--[\w-]{1,59})"
_PLAIN_EMAIL = re.compile(rf"\w[\w.+'-]*@{_EMAIL_DOMAIN}")
# In free text the local part may carry %2B ('+') and '@' may be %40 (query strings). It must not
# start right after a percent escape, or "mailto%3Ajohn%40x.com" would hash "3ajohn@x.com".
_EMBEDDED_EMAIL = re.compile(
    rf"(?<!%[0-9A-Fa-f])(?<!%)\w(?:[\w.+'-]|%2[bB]){{0,63}}(?:@|%40){_EMAIL_DOMAIN}"
)

_NON_DIGITS = re.compile(r"[^0-9]+")
# What a number may look like when it is read as plain digits: anything else (letters, "ext")
# would silently change the number, so it goes to libphonenumber or is rejected.
_PLAIN_PHONE = re.compile(r"\(?(\+)?[0-9\s().\-/]*+")
# Possessive quantifiers keep these linear on hostile input.
_INTL_PHONE_BODY = re.compile(r"[ .\-]?\(?[0-9]++\)?(?:[ .\-]?\(?[0-9]++\)?)*+")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")
_NANP_PHONE = re.compile(
    r"(?:1[ .\-])?(?:\([0-9]{3}\)[ .\-]?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}"
)

_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15
_MIN_LOOKS_LIKE_PHONE_DIGITS = 8
# What a text looks_like_phone considers can start with (besides whitespace): "+", "(", a digit,
# or the "t" of "tel:". events.py turns ids away by it too.
PHONE_FIRST: Final = frozenset("+(0123456789tT")
_E164 = phonenumbers.PhoneNumberFormat.E164
_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    s = value.strip()
    return len(s) == 64 and _SHA256_HEX.fullmatch(s) is not None


def normalize_key(key: str) -> str:
    return _KEY_JUNK.sub("", key.lower())


# -- email ---------------------------------------------------------------------------------------


def _unwrap_email(s: str) -> str:
    """Strip a mailto: prefix (and its ?query) and decode a %40-encoded '@'."""
    if s[:7].lower() == "mailto:":
        s = s[7:].partition("?")[0]
    if "@" not in s and "%40" in s:
        s = s.replace("%40", "@").replace("%2B", "+").replace("%2b", "+")
    return s


def normalize_email(value: str) -> str | None:
    s = value.strip()
    if "@" not in s and "%40" not in s:
        return None
    s = _unwrap_email(s)
    if _LOOSE_EMAIL.fullmatch(s) is None:
        return None
    return s.lower()


def google_email(normalized: str) -> str:
    local, _, domain = normalized.rpartition("@")
    if domain not in _GOOGLE_DOMAINS:
        return normalized
    local = local.partition("+")[0].replace(".", "")
    # "+tag@gmail.com" has no Google form; keeping it as is beats hashing "@gmail.com".
    return f"{local}@{domain}" if local else normalized


def hash_email(value: str) -> EmailDigest | None:
    if is_sha256_hex(value):
        return EmailDigest(value.strip().lower(), None)
    normalized = normalize_email(value)
    if normalized is None:
        return None
    digest = sha256_hex(normalized)
    google = google_email(normalized)
    return EmailDigest(digest, digest if google == normalized else sha256_hex(google))


def looks_like_email(value: str) -> bool:
    s = value.strip()
    if "@" not in s and "%40" not in s:
        return False
    return _PLAIN_EMAIL.fullmatch(_unwrap_email(s)) is not None


def _redact_match(m: re.Match[str]) -> str:
    found = m.group()
    if "%" in found:
        found = found.replace("%40", "@").replace("%2B", "+").replace("%2b", "+")
    return sha256_hex(found.lower())


def redact_emails(text: str) -> str:
    if "@" not in text and "%40" not in text:
        return text
    return _EMBEDDED_EMAIL.sub(_redact_match, text)


# -- phone ---------------------------------------------------------------------------------------

# A phone number inside free text: written internationally (+ and the separators people type) or
# as a formatted North-American number with its area code in parentheses. Bare digit runs are
# not taken (order numbers, ids). Bounded quantifiers keep it linear on hostile input; each
# match is then checked by looks_like_phone.
_EMBEDDED_PHONE = re.compile(
    r"(?<![\w+])(?:\+[0-9][0-9 .\-()]{6,28}[0-9]"
    r"|(?:1[ .\-])?\([0-9]{3}\)[ .\-]?[0-9]{3}[ .\-][0-9]{4})(?![0-9])"
)


def _strip_tel(value: str) -> str:
    s = value.strip()
    if s[:4].lower() == "tel:":
        s = s[4:].lstrip()
    return s


def _bounded(digits: str) -> str | None:
    return digits if _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS else None


def _national(s: str, country: str) -> str | None:
    try:
        number = phonenumbers.parse(s, country.strip().upper())
    except phonenumbers.NumberParseException:
        return None
    # Possible, not valid: fictional 555-01xx numbers must still hash. IS_POSSIBLE_LOCAL_ONLY
    # (which is_possible_number accepts) is refused: without its area code it can never match.
    if phonenumbers.is_possible_number_with_reason(number) != _POSSIBLE:
        return None
    # format_number keeps Italian-style leading zeros that national_number (an int) loses.
    return _bounded(phonenumbers.format_number(number, _E164)[1:])


def normalize_phone(value: str, default_country: str | None) -> str | None:
    s = _strip_tel(value)
    if not s:
        return None
    plain = _PLAIN_PHONE.fullmatch(s)
    digits = _NON_DIGITS.sub("", s) if plain is not None else ""
    if plain is not None and (plain.group(1) is not None or digits.startswith("00")):
        return _bounded(digits.lstrip("0"))
    if default_country:
        return _national(s, default_country)
    if plain is None or digits.startswith("0"):
        return None
    return _bounded(digits)


def hash_phone(value: str, default_country: str | None) -> PhoneDigest | None:
    if is_sha256_hex(value):
        return PhoneDigest(value.strip().lower(), None)
    normalized = normalize_phone(value, default_country)
    if normalized is None:
        return None
    return PhoneDigest(sha256_hex(normalized), sha256_hex("+" + normalized))


def redact_phones(text: str, default_country: str | None) -> str:
    """``text`` with each phone number written in it replaced by its SHA-256 (normalized as a
    whole value would be)."""
    if "+" not in text and "(" not in text:
        return text

    def replace(m: re.Match[str]) -> str:
        found = m.group()
        if not looks_like_phone(found):
            return found
        phone = hash_phone(found, default_country)
        return phone.sha256 if phone is not None else found

    return _EMBEDDED_PHONE.sub(replace, text)


def mentions_phone(text: str) -> bool:
    """Whether ``text``, as a whole or inside, holds something that looks like a phone number:
    the only case in which the default country can change what the scrubber makes of a text
    with no email in it (looks_like_phone itself knows no country)."""
    return looks_like_phone(text) or any(
        looks_like_phone(m.group()) for m in _EMBEDDED_PHONE.finditer(text)
    )


def looks_like_phone(value: str) -> bool:
    # Every id the parser refuses PII in comes here: most are turned away by their first
    # character (after spaces or "tel:", a phone starts with "+", "(" or a digit) or length.
    first = value[:1]
    if len(value) < 9 or (first not in PHONE_FIRST and not first.isspace()):
        return False
    s = _strip_tel(value)
    # 15 digits with a separator between each is the longest plausible form.
    if len(s) < 9 or len(s) > 40:
        return False
    if s[0] == "+":
        body = s[1:]
    elif s.startswith("00"):
        # Bare "00…" digits are far more often a zero-padded id than a dialled number.
        if s.isdigit():
            return False
        body = s[2:]
    else:
        return _NANP_PHONE.fullmatch(s) is not None
    if _INTL_PHONE_BODY.fullmatch(body) is None or _DECIMAL.fullmatch(body) is not None:
        return False
    if body.count("(") != body.count(")"):
        return False
    n = len(_NON_DIGITS.sub("", body))
    return _MIN_LOOKS_LIKE_PHONE_DIGITS <= n <= _MAX_PHONE_DIGITS
