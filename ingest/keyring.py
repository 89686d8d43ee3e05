"""Project key material, sealed under a master key that the database never holds, and the
sealing of partner-matchable SHA-256 digests at rest.

Plain SHA-256 of an email or phone number is reversible by brute force (RELIABILITY T12): a
dump of the events would be a list of people. A protected project stores each such digest
sealed instead: ``enc:`` and 64 base64url characters, a deterministic authenticated encryption
of the 32 digest bytes under the project's data key. It is the SIV composition (Rogaway and
Shrimpton, 2006) with HMAC-SHA256 as its PRF: the first 16 bytes are a keyed digest (HMAC) of
the SHA-256, which also serves as the IV of AES-256-CTR for the other 32. Equal digests seal
equally, so lookups, suppression and erasure compare sealed values (the keyed digest inside
them) and never need the plain one; opening checks the HMAC, so a forged or foreign value opens
to nothing. Exports and forwards open what they send, so partners still get the plain SHA-256
they match on, exactly as ``shared/vectors/pii.json`` gives it.

Each project's key material (the pseudonym key of its keyed digests and receipts, and the data
key above) is stored only wrapped with AES-256-GCM under the master key (``INGEST_MASTER_KEY``
or a key file). Replacing the data key (a crypto-shred) or deleting the project makes every
digest it sealed unrecoverable at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from ingest.config import Settings

PREFIX: Final = "enc:"
_SEALED_CHARS: Final = 64  # base64url of 48 bytes, no padding
SEALED_RE: Final = re.compile(r"enc:[A-Za-z0-9_-]{64}")
_SEALED_BYTES_RE: Final = re.compile(rb"enc:[A-Za-z0-9_-]{64}")
# What a protected project seals: every lower-case hex SHA-256 that stands alone (a whole
# string, a JSON key, or a digest that replaced a phone number inside a text): 64 of
# [0-9a-f] with no ASCII letter or digit on either side, as the regex
# (?<![0-9A-Za-z])[0-9a-f]{64}(?![0-9A-Za-z]) finds them (tests/unit/test_keyring.py holds it
# to that). Found by mapping each byte to its class, "x" lower-case hex, "a" another ASCII
# letter or digit, " " anything else, and searching the classes for 64 x's: both loops in C,
# where the regex tries every position of a text in turn (three times the time on an event's
# traits, ten on its context).
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_CLASSES: Final = bytes(
    ord("x") if c in "0123456789abcdef" else ord("a") if c.isascii() and c.isalnum() else ord(" ")
    for c in map(chr, range(256))
)
_HEX_RUN: Final = b"x" * 64
_OTHER: Final = ord(" ")
# Sealed digests a keyring remembers (Sealer.seal): about 350 bytes each.
_RECENT_SEALS_MAX: Final = 16_384
# RFC 2104's inner and outer pads, as translation tables: XOR of each key byte with the pad.
# The 32-byte key is shorter than SHA-256's 64-byte block: the zeros that pad it become the
# pad's own byte.
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_WRAP_VERSION: Final = b"\x01"
_WRAP_AAD: Final = b"ingest project keys v1:"
_KEY_BYTES: Final = 32


def holds_digest(data: bytes) -> bool:
    """Whether encoded JSON holds something a protected project seals."""
    return bool(_digest_starts(data))


def _digest_starts(data: bytes) -> list[int]:
    """Where each stand-alone lower-case hex SHA-256 in ``data`` starts."""
    if len(data) < 64:
        return []
    classes = data.translate(_CLASSES)
    start = classes.find(_HEX_RUN)
    starts: list[int] = []
    while start != -1:
        end = start + 64
        if (start == 0 or classes[start - 1] == _OTHER) and (
            end == len(classes) or classes[end] == _OTHER
        ):
            starts.append(start)
            start = classes.find(_HEX_RUN, end)
        else:
            # Part of a longer run of letters and digits: no digest starts before its end.
            after = classes.find(b" ", end)
            start = -1 if after == -1 else classes.find(_HEX_RUN, after)
    return starts


NO_MASTER_KEY: Final = (
    "no master key: set INGEST_MASTER_KEY (32 bytes as hex or base64; "
    "`ingest admin new-master-key` prints one) or INGEST_MASTER_KEY_FILE. It wraps every "
    "project's keys and is never stored in the database: keep it apart from the "
    "database's backups, and give every host the same one"
)


class MasterKeyError(Exception):
    """The master key is missing or malformed; the message says how to provide one."""


def parse_master_key(text: str) -> bytes:
    """32 bytes, written as 64 hex characters or as base64 (44 characters with padding)."""
    text = text.strip()
    try:
        if len(text) == 64:
            key = bytes.fromhex(text)
        else:
            key = base64.b64decode(text, altchars=b"-_" if "-" in text or "_" in text else None)
    except (ValueError, binascii.Error):
        raise MasterKeyError("the master key must be 32 bytes as hex or base64") from None
    if len(key) != _KEY_BYTES:
        raise MasterKeyError("the master key must be 32 bytes as hex or base64")
    return key


def new_master_key() -> str:
    return secrets.token_bytes(_KEY_BYTES).hex()


def read_key_file(path: Path) -> bytes:
    try:
        return parse_master_key(path.read_text())
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key file {path}: {exc.strerror}") from None


def create_key_file(path: Path) -> bool:
    """Write a new master key to ``path`` (mode 0600) unless one is there; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(new_master_key() + "\n")
    return True


@dataclass(frozen=True, slots=True)
class ProjectKeys:
    """A project's key material, unwrapped: ``pseudonym`` keys its keyed digests (suppressions,
    receipts); ``data`` seals its digests."""

    pseudonym: bytes
    data: bytes

    @staticmethod
    def generate(pseudonym: bytes | None = None) -> ProjectKeys:
        return ProjectKeys(pseudonym or secrets.token_bytes(_KEY_BYTES), secrets.token_bytes(32))


def key_id(master: bytes) -> bytes:
    """Names a master key in what it wrapped, without revealing it."""
    return hashlib.sha256(b"ingest master key id:" + master).digest()[:8]


class Keyring:
    """The master key (and, while a rotation is under way, the previous ones), and what it
    unwraps (cached per wrapped value: a wrapped value never changes meaning, a new key is a
    new value).

    Wrapped key material is a version byte, the 8-byte id of the master key that wrapped it,
    a 12-byte nonce and the AES-256-GCM ciphertext, bound to its project by the associated
    data."""

    def __init__(self, master: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(master) != _KEY_BYTES or any(len(p) != _KEY_BYTES for p in previous):
            raise MasterKeyError("a master key must be 32 bytes")
        self.current_id = key_id(master)
        self._aeads = {key_id(k): AESGCM(k) for k in (*previous, master)}
        self._sealers: dict[tuple[uuid.UUID, bytes], Sealer] = {}
        # Digests sealed lately, by every project's sealer (see Sealer.seal).
        self._recent: dict[tuple[bytes, str], str] = {}

    def wrap(self, project_id: uuid.UUID, keys: ProjectKeys) -> bytes:
        nonce = secrets.token_bytes(12)
        aead = self._aeads[self.current_id]
        sealed = aead.encrypt(nonce, keys.pseudonym + keys.data, _WRAP_AAD + project_id.bytes)
        return _WRAP_VERSION + self.current_id + nonce + sealed

    def wrapped_by_current(self, wrapped: bytes) -> bool:
        return wrapped[1:9] == self.current_id

    def unwrap(self, project_id: uuid.UUID, wrapped: bytes) -> ProjectKeys:
        """Raises MasterKeyError when no key of this keyring wrapped it."""
        aead = self._aeads.get(wrapped[1:9]) if wrapped[:1] == _WRAP_VERSION else None
        if aead is None:
            raise MasterKeyError(
                "the project's keys were wrapped under a master key this service does not have"
            )
        try:
            plain = aead.decrypt(wrapped[9:21], wrapped[21:], _WRAP_AAD + project_id.bytes)
        except InvalidTag:
            raise MasterKeyError("the project's wrapped keys do not open (damaged?)") from None
        return ProjectKeys(plain[:_KEY_BYTES], plain[_KEY_BYTES:])

    def sealer(self, project_id: uuid.UUID, wrapped: bytes) -> Sealer:
        # Keyed by the project too: the wrap is bound to it, so another project's copy of the
        # same bytes must fail to unwrap, not find this one.
        cached = (project_id, wrapped)
        found = self._sealers.get(cached)
        if found is None:
            if len(self._sealers) > 10_000:
                self._sealers.clear()
            found = self._sealers[cached] = Sealer(self.unwrap(project_id, wrapped), self._recent)
        return found


class Sealer:
    """Seals and opens one project's digests."""

    __slots__ = ("_blocks", "_inner", "_name", "_outer", "_recent", "keys")

    def __init__(
        self, keys: ProjectKeys, recent: dict[tuple[bytes, str], str] | None = None
    ) -> None:
        self.keys = keys
        self._recent = recent
        mac = hmac.new(keys.data, b"ingest seal mac", hashlib.sha256).digest()
        # Names this key in ``recent`` (shared by every sealer of the keyring) without being it.
        self._name = hashlib.sha256(b"ingest seal memo:" + mac).digest()
        # HMAC-SHA256 under the mac key with its two padded-key states hashed once (RFC 2104):
        # each tag then costs two hash copies, not hmac.digest's key setup (3x the time).
        self._inner = hashlib.sha256(mac.translate(_IPAD) + b"\x36" * 32)
        self._outer = hashlib.sha256(mac.translate(_OPAD) + b"\x5c" * 32)
        enc = hmac.new(keys.data, b"ingest seal enc", hashlib.sha256).digest()
        # AES-256-CTR over exactly two blocks, computed as the two counter blocks enciphered
        # with one reusable ECB context (creating a CTR context per value costs 10 us; this is
        # the same keystream: tests/unit/test_keyring.py checks it against modes.CTR).
        self._blocks = Cipher(algorithms.AES(enc), modes.ECB()).encryptor()  # noqa: S305

    def _tag(self, raw: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(raw)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:16]

    def _keystream(self, iv: bytes) -> int:
        counter = int.from_bytes(iv, "big")
        second = ((counter + 1) % (1 << 128)).to_bytes(16, "big")
        return int.from_bytes(self._blocks.update(iv + second), "big")

    def seal(self, hex_digest: str, memo: dict[str, str] | None = None) -> str:
        """``hex_digest`` sealed. Deterministic (the IV is the digest's MAC), so ``memo``, a
        dict that lives as long as one batch, lets a batch seal each distinct digest once: a
        row repeats its digests (the email's in its column and in its traits). A keyring's
        sealers also remember the digests sealed lately, across batches and projects (a
        returning user's identify carries the same ones): the last few thousand, forgotten all
        at once when full, a few megabytes at most."""
        if memo is not None:
            found = memo.get(hex_digest)
            if found is not None:
                return found
        recent = self._recent
        if recent is None:
            found = self._seal_now(hex_digest)
        else:
            name = (self._name, hex_digest)
            found = recent.get(name)
            if found is None:
                found = self._seal_now(hex_digest)
                if len(recent) >= _RECENT_SEALS_MAX:
                    recent.clear()
                recent[name] = found
        if memo is not None:
            memo[hex_digest] = found
        return found

    def _seal_now(self, hex_digest: str) -> str:
        raw = bytes.fromhex(hex_digest)
        tag = self._tag(raw)
        body = (int.from_bytes(raw, "big") ^ self._keystream(tag)).to_bytes(32, "big")
        # 48 bytes: base64 without padding; b2a_base64 and a translation to the URL-safe
        # alphabet are urlsafe_b64encode's result at half its cost.
        return PREFIX + binascii.b2a_base64(tag + body, newline=False).translate(_URLSAFE).decode()

    def open(self, sealed: str) -> str | None:
        """The hex SHA-256 inside ``sealed``; None when it was not sealed with this key."""
        if not sealed.startswith(PREFIX) or len(sealed) != len(PREFIX) + _SEALED_CHARS:
            return None
        try:
            blob = base64.urlsafe_b64decode(sealed[len(PREFIX) :] + "==")
        except (ValueError, binascii.Error):
            return None
        if len(blob) != 48:
            return None
        tag, body = blob[:16], blob[16:]
        raw = (int.from_bytes(body, "big") ^ self._keystream(tag)).to_bytes(32, "big")
        if not hmac.compare_digest(self._tag(raw), tag):
            return None
        return raw.hex()

    # -- in stored values --------------------------------------------------------------------

    def seal_optional(self, value: str | None, memo: dict[str, str] | None = None) -> str | None:
        if value is None:
            return None
        if memo is not None:
            found = memo.get(value)  # a memo holds digests only: no need to check it again
            if found is not None:
                return found
        if len(value) != 64 or not _HEX_RE.fullmatch(value):
            return value
        return self.seal(value, memo)

    def seal_json(self, data: bytes, memo: dict[str, str] | None = None) -> bytes:
        """Encoded JSON with every stand-alone lower-case hex SHA-256 sealed (values, keys, and
        digests inside texts); unchanged, and not copied, when it holds none."""
        starts = _digest_starts(data)
        if not starts:
            return data
        parts: list[bytes] = []
        done = 0
        for start in starts:
            parts.append(data[done:start])
            parts.append(self.seal(data[start : start + 64].decode(), memo).encode())
            done = start + 64
        parts.append(data[done:])
        return b"".join(parts)

    def open_optional(self, value: str | None) -> str | None:
        """A stored digest column as partners get it: opened; a value this key did not seal
        (a crypto-shredded one) is None; a plain one (not re-encoded yet) as it is."""
        if value is None or not value.startswith(PREFIX):
            return value
        return self.open(value)

    def open_text(self, text: str) -> str:
        if PREFIX not in text:
            return text
        return SEALED_RE.sub(lambda m: self.open(m[0]) or m[0], text)

    def open_tree(self, value: Any) -> Any:
        """Decoded JSON with every sealed digest opened (one this key cannot open stays
        sealed: it is noise to anyone)."""
        if isinstance(value, str):
            return self.open_text(value)
        if isinstance(value, dict):
            return {self.open_text(k): self.open_tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.open_tree(v) for v in value]
        return value

    def lookup_forms(self, values: list[str]) -> list[str]:
        """What stored columns may hold for these digests: each plain (rows written before the
        project was protected, or re-encoded) and sealed."""
        return values + [self.seal(v) for v in values if _HEX_RE.fullmatch(v)]


def from_settings(settings: Settings) -> Keyring:
    return load(
        settings.master_key.reveal() if settings.master_key is not None else None,
        settings.master_key_file,
        settings.master_key_previous.reveal() if settings.master_key_previous else None,
    )


def load(
    master_key: str | None, master_key_file: Path | None, previous: str | None = None
) -> Keyring:
    """The keyring from the configured master key (the value wins over the file), with the
    previous key of a rotation under way (comma-separated when several)."""
    older = [parse_master_key(k) for k in previous.split(",") if k.strip()] if previous else []
    if master_key is not None:
        return Keyring(parse_master_key(master_key), older)
    if master_key_file is not None:
        return Keyring(read_key_file(master_key_file), older)
    raise MasterKeyError(NO_MASTER_KEY)
