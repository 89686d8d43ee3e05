"""API keys: generation, parsing and digests. The full key is shown once and never stored.

Format ``<kind prefix>_<43 url-safe characters>`` (256 random bits): ``iwk_`` for a project's write
key, ``isk_`` for an organization's secret key. The prefix lets secret scanners find leaked keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum


class KeyKind(StrEnum):
    WRITE = "write"
    SECRET = "secret"  # noqa: S105  # the name of a kind, not a credential


PREFIXES = {KeyKind.WRITE: "iwk_", KeyKind.SECRET: "isk_"}
_KEY_RE = re.compile(r"^(iwk|isk)_[A-Za-z0-9_-]{43}$")
# Shown in lists so a partner can tell keys apart; 8 of 256 random bits reveal nothing useful.
DISPLAY_CHARS = 12


@dataclass(frozen=True, slots=True)
class NewKey:
    kind: KeyKind
    plaintext: str
    digest: bytes
    display_prefix: str


def generate(kind: KeyKind) -> NewKey:
    plaintext = PREFIXES[kind] + secrets.token_urlsafe(32)
    return NewKey(kind, plaintext, digest(plaintext), plaintext[:DISPLAY_CHARS])


def digest(plaintext: str) -> bytes:
    # 256-bit random keys need no slow hash: SHA-256 cannot be brute-forced back to them.
    return hashlib.sha256(plaintext.encode()).digest()


def kind_of(plaintext: str) -> KeyKind | None:
    """The kind a well-formed key claims, or None for anything malformed."""
    if not _KEY_RE.match(plaintext):
        return None
    return KeyKind.WRITE if plaintext.startswith("iwk_") else KeyKind.SECRET


def matches(stored_digest: bytes, presented_digest: bytes) -> bool:
    return hmac.compare_digest(stored_digest, presented_digest)
