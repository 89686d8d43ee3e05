"""Sealing digests and wrapping project keys (ingest/keyring.py)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest import keyring
from ingest.keyring import Keyring, MasterKeyError, ProjectKeys, Sealer

DIGEST = hashlib.sha256(b"jane@example.com").hexdigest()


def _sealer() -> Sealer:
    return Sealer(ProjectKeys.generate())


def test_a_sealed_digest_opens_to_itself_and_seals_the_same_every_time() -> None:
    sealer = _sealer()
    sealed = sealer.seal(DIGEST)
    assert sealed.startswith("enc:")
    assert len(sealed) == 68
    assert DIGEST not in sealed
    assert sealer.seal(DIGEST) == sealed  # deterministic: lookups compare sealed values
    assert sealer.open(sealed) == DIGEST
    assert sealer.seal(hashlib.sha256(b"other").hexdigest()) != sealed


def test_another_projects_key_or_a_changed_value_opens_to_nothing() -> None:
    sealed = _sealer().seal(DIGEST)
    assert _sealer().open(sealed) is None
    flipped = sealed[:-1] + ("A" if sealed[-1] != "A" else "B")
    assert _sealer().open(flipped) is None
    for junk in ("enc:", "enc:" + "!" * 64, "plain", DIGEST):
        assert _sealer().open(junk) is None


def test_json_seals_every_stand_alone_hex_digest_and_opens_back_exactly() -> None:
    sealer = _sealer()
    doc = {
        "email": DIGEST,
        DIGEST: "a key that was an email",
        "note": f"call {DIGEST} now",
        "nested": [{"phone": DIGEST}],
        "UPPER": DIGEST.upper(),  # not one of ours: left alone
        "longer": DIGEST + "0",  # 65 hex characters: not a digest
        "n": 5,
    }
    sealed = sealer.seal_json(orjson.dumps(doc))
    for plain_form in (b'"' + DIGEST.encode() + b'"', b" " + DIGEST.encode() + b" "):
        assert plain_form not in sealed
    back = sealer.open_tree(orjson.loads(sealed))
    assert back == doc
    plain = orjson.dumps({"a": "b"})
    assert sealer.seal_json(plain) is plain
    # A batch's memo seals each distinct digest once, with the same result.
    memo: dict[str, str] = {}
    assert sealer.seal_json(orjson.dumps(doc), memo) == sealed
    assert sealer.seal_optional(DIGEST, memo) == sealer.seal(DIGEST)
    assert memo == {DIGEST: sealer.seal(DIGEST)}


def test_open_optional_keeps_plain_values_and_drops_what_no_longer_opens() -> None:
    sealer = _sealer()
    assert sealer.open_optional(None) is None
    assert sealer.open_optional(DIGEST) == DIGEST  # written before the project was protected
    assert sealer.open_optional(_sealer().seal(DIGEST)) is None  # shredded
    assert sealer.lookup_forms([DIGEST]) == [DIGEST, sealer.seal(DIGEST)]


def test_project_keys_are_wrapped_for_their_project_under_the_master_key() -> None:
    ring = Keyring(bytes(range(32)))
    project = uuid.uuid4()
    keys = ProjectKeys.generate()
    wrapped = ring.wrap(project, keys)
    assert keys.data not in wrapped
    assert keys.pseudonym not in wrapped
    assert ring.unwrap(project, wrapped) == keys
    with pytest.raises(MasterKeyError, match="do not open"):
        ring.unwrap(uuid.uuid4(), wrapped)  # bound to its project
    with pytest.raises(MasterKeyError, match="does not have"):
        Keyring(bytes(32)).unwrap(project, wrapped)  # another master key
    # During a rotation the previous key still opens what it wrapped; new wraps use the new key.
    rotating = Keyring(bytes(32), previous=[bytes(range(32))])
    assert rotating.unwrap(project, wrapped) == keys
    assert not rotating.wrapped_by_current(wrapped)
    assert rotating.wrapped_by_current(rotating.wrap(project, keys))


def test_a_keyrings_sealers_remember_recent_seals_per_key_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sealers of one keyring share what they sealed lately: each key's own seals (another
    project's key seals the same digest otherwise), and never more than the bound."""
    monkeypatch.setattr(keyring, "_RECENT_SEALS_MAX", 8)
    ring = Keyring(bytes(range(32)))
    projects = [uuid.uuid4(), uuid.uuid4()]
    keys = [ProjectKeys.generate(), ProjectKeys.generate()]
    sealers = [ring.sealer(p, ring.wrap(p, k)) for p, k in zip(projects, keys, strict=True)]
    digests = [secrets.token_hex(32) for _ in range(20)]
    for _ in range(2):  # the second pass reads what the first remembered, or sealed again
        for digest in digests:
            for sealer, k in zip(sealers, keys, strict=True):
                assert sealer.seal(digest) == Sealer(k).seal(digest)
                assert sealer.seal(digest, {}) == Sealer(k).seal(digest)
            assert len(ring._recent) <= 8
    assert sealers[0].seal(DIGEST) != sealers[1].seal(DIGEST)


def test_master_keys_are_read_as_hex_or_base64_and_refused_otherwise() -> None:
    raw = bytes(range(32))
    assert keyring.parse_master_key(raw.hex()) == raw
    assert keyring.parse_master_key(" " + raw.hex().upper() + "\n") == raw
    import base64

    assert keyring.parse_master_key(base64.b64encode(raw).decode()) == raw
    assert keyring.parse_master_key(base64.urlsafe_b64encode(raw).decode()) == raw
    for bad in ("", "short", "zz" * 32, raw.hex()[:-2]):
        with pytest.raises(MasterKeyError):
            keyring.parse_master_key(bad)
    with pytest.raises(MasterKeyError, match="INGEST_MASTER_KEY"):
        keyring.load(None, None)


def test_a_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.key"
    assert keyring.create_key_file(path)
    first = path.read_text()
    assert not keyring.create_key_file(path)  # never replaced: it opens every project's keys
    assert path.read_text() == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(keyring.read_key_file(path)) == 32


def test_the_seal_is_aes_256_ctr_under_an_hmac_synthetic_iv() -> None:
    """The construction as the module documents it, rebuilt from the library's own CTR mode:
    tag = HMAC-SHA256(mac key, digest)[:16], body = AES-256-CTR(enc key, iv=tag)(digest)."""
    import base64
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    keys = ProjectKeys.generate()
    mac = hmac.new(keys.data, b"ingest seal mac", hashlib.sha256).digest()
    enc = hmac.new(keys.data, b"ingest seal enc", hashlib.sha256).digest()
    sealer = Sealer(keys)
    # Random digests too: the tag's HMAC is computed from precomputed pad states, the base64
    # by hand; any slip shows on some input.
    for digest in (DIGEST, "f" * 64, "0" * 64, *(secrets.token_hex(32) for _ in range(200))):
        raw = bytes.fromhex(digest)
        tag = hmac.digest(mac, raw, "sha256")[:16]
        ctr = Cipher(algorithms.AES(enc), modes.CTR(tag)).encryptor()
        body = ctr.update(raw) + ctr.finalize()
        expected = "enc:" + base64.urlsafe_b64encode(tag + body).decode().rstrip("=")
        assert sealer.seal(digest) == expected
        assert sealer.open(expected) == digest
    # The counter wraps at 2**128 as CTR's does.
    ctr = Cipher(algorithms.AES(enc), modes.CTR(b"\xff" * 16)).encryptor()
    stream = ctr.update(bytes(32)) + ctr.finalize()
    assert sealer._keystream(b"\xff" * 16) == int.from_bytes(stream, "big")


def test_holds_digest_finds_exactly_the_stand_alone_hex_digests() -> None:
    assert keyring.holds_digest(orjson.dumps({"email": DIGEST}))
    assert keyring.holds_digest(f"call {DIGEST}".encode())
    for without in (
        DIGEST[:63],  # one short
        DIGEST + "0",  # part of a longer hex run
        "x" + DIGEST,  # glued to a letter
        DIGEST.upper(),
        "",
    ):
        assert not keyring.holds_digest(orjson.dumps({"v": without})), without


# What a protected project seals, as the module defines it; the scan must find exactly these.
STAND_ALONE_DIGEST = re.compile(rb"(?<![0-9A-Za-z])[0-9a-f]{64}(?![0-9A-Za-z])")
SEALER = Sealer(ProjectKeys.generate())
# Texts made of digests, runs of hex of other lengths, letters, digits, separators and UTF-8:
# every way a run can touch a digest.
_PIECES = st.one_of(
    st.sampled_from([DIGEST, DIGEST.upper(), DIGEST[:63], DIGEST + "f", "g" + DIGEST]),
    st.text(alphabet="0123456789abcdef", min_size=60, max_size=130),
    st.text(alphabet="0123456789abcdefABCDEFxyz_- \"':é😀", max_size=8),
)


@given(st.lists(_PIECES, max_size=12))
@settings(max_examples=400, deadline=None)
def test_the_scan_finds_what_the_regex_finds_and_seals_it_as_re_sub_would(
    pieces: list[str],
) -> None:
    data = "".join(pieces).encode()
    expected = [m.start() for m in STAND_ALONE_DIGEST.finditer(data)]
    assert keyring._digest_starts(data) == expected
    assert keyring.holds_digest(data) == bool(expected)
    assert SEALER.seal_json(data) == STAND_ALONE_DIGEST.sub(
        lambda m: SEALER.seal(m[0].decode()).encode(), data
    )
