"""Keyed digests that prove which person or request a record was about without keeping it.

HMAC-SHA256 under a per-project (or per-organization) random key that lives in the database:
a dump of the suppression list, the receipts or the audit log cannot be reversed by hashing
candidate user ids or emails, as a plain SHA-256 could (RELIABILITY T19).
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum


class Kind(StrEnum):
    """What an identifier is: the kinds a person can be named by in a data-subject request."""

    USER_ID = "user_id"
    ANONYMOUS_ID = "anonymous_id"
    EMAIL = "email"  # the value is the hex SHA-256 of the normalized email
    PHONE = "phone"  # the value is the hex SHA-256 of the normalized phone number


def digest(key: bytes, kind: Kind, value: str) -> bytes:
    # The kind is part of the message, so a user id that happens to equal someone's email
    # digest is another digest.
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).digest()


def fingerprint(key: bytes, *parts: bytes) -> bytes:
    """A keyed digest of a request (method, path, body) for the idempotency cache."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        # Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.digest()
