"""Turns posted events into rows: validate, correct the clock, hash PII, drop IPs, set device
ids aside.

Pure code (no starlette, no asyncpg). What leaves this module is a row tuple for COPY plus
per-event results; a raw email, phone or IP never survives into either. Device ids leave the
event too: they ride at the end of the row (DEVICES), outside the columns of events, and only
the forwarding outbox stores them.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from ingest import pii
from ingest.config import Settings
from ingest.geo import GeoResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EVENT_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})

# Column order of the COPY into events; Row tuples follow it exactly.
COLUMNS: Final = (
    "project_id",
    "received_at",
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "app_id",
    "country",
    "region",
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_e164_sha256",
    "properties",
    "traits",
    "context",
)
# A Row is the COLUMNS of events, then one more value: the event's device ids (JSON bytes, or
# None), which events never stores and the outbox keeps until delivery.
Row = tuple[Any, ...]
DEVICES: Final = len(COLUMNS)

# Field spellings accepted on input: native snake_case and Segment's camelCase.
_ALIASES: Final = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "messageId": "message_id",
    "sentAt": "sent_at",
    "originalTimestamp": "original_timestamp",
    "appId": "app_id",
    "groupId": "group_id",
    "previousId": "previous_id",
}
# Normalized keys whose values are IP addresses wherever they appear (T16).
_IP_KEYS: Final = frozenset(
    {
        "ip",
        "ipaddress",
        "clientip",
        "remoteip",
        "userip",
        "ipv4",
        "ipv6",
        "remoteaddr",
        "xforwardedfor",
        "forwardedfor",
        "realip",
    }
)
# Device identifiers, by normalized key: taken out of the event wherever they appear and kept
# (outbox only) until forwarded. Advertising ids (IDFA, GAID) are what ad platforms match on as
# `madid`; vendor ids (IDFV, Android ID) identify the device to the app's own vendor.
_DEVICE_ID_KEYS: Final = {
    "advertisingid": "advertising_id",
    "adid": "advertising_id",
    "idfa": "advertising_id",
    "gaid": "advertising_id",
    "googleadvertisingid": "advertising_id",
    "deviceadvertisingid": "advertising_id",
    "adtrackingid": "advertising_id",
    "idfv": "device_id",
    "androidid": "device_id",
}
# Ad ids and vendor ids are UUIDs (IDFA, GAID, IDFV) or hex (Android ID): letters, digits and
# hyphens. Anything else (an email, a phone, an IP put in the wrong field) is not kept, since the
# outbox stores these values as they are.
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9-]{1,128}")
_PHONE_LIKE: Final = re.compile(r"[0-9]{7,15}")
# What iOS reports as the IDFA when the user has not allowed tracking (ATT): not an id.
_ZERO_AD_ID: Final = "00000000-0000-0000-0000-000000000000"
# Property keys repeat across events (the same SDK sends the same keys): normalise each once.
_normalize_key: Final = functools.lru_cache(maxsize=8192)(pii.normalize_key)
# Longer strings are rarely repeated (free text): not worth remembering, and the bound keeps
# the memory of _Plain small (at most 50,000 of each).
_PLAIN_KEY_CHARS: Final = 128
_PLAIN_VALUE_CHARS: Final = 256
_IPV6_CHARS: Final = re.compile(r"^[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9]+)?$")


@dataclass(frozen=True, slots=True)
class Limits:
    """The parser's share of the settings (their defaults and docs live in config.Settings)."""

    max_event_bytes: int
    max_depth: int
    max_properties: int
    max_message_id_chars: int
    max_name_chars: int
    max_id_chars: int
    skew_threshold_s: float
    max_future_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class Issue:
    """Why an event was rejected, or what was changed in an accepted one (a warning)."""

    index: int
    code: str
    field: str | None
    reason: str
    size: int | None = None  # the actual size, for a limit that was passed

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "index": self.index,
            "code": self.code,
            "field": self.field,
            "reason": self.reason,
        }
        if self.size is not None:
            doc["size"] = self.size
        return doc


@dataclass(frozen=True, slots=True)
class Source:
    """What the request knows about where its events come from."""

    project_id: uuid.UUID
    default_country: str | None
    received_at: datetime
    peer_geo: GeoResult | None
    # context.ip is believed only from the partner's servers (secret or server-side write key).
    trust_context_ip: bool = False
    # The project's identifier_pii is "hash": an email- or phone-shaped id is stored as its
    # SHA-256 instead of refusing the event.
    hash_identifiers: bool = False


@dataclass(slots=True)
class Parsed:
    rows: list[Row] = field(default_factory=list)
    # The index in the request of each row, so the writer's per-row outcome maps back.
    indexes: list[int] = field(default_factory=list)
    rejected: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


class _Reject(Exception):
    def __init__(self, code: str, field: str | None, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.code, self.field, self.reason, self.size = code, field, reason, size


class EventParser:
    """Parses events of one request against the limits; shared by every request of an app."""

    def __init__(self, limits: Limits, lookup: Callable[[IPAddress], GeoResult | None]) -> None:
        self.limits = limits
        self._lookup = lookup
        self._plain = _Plain()
        # The limits as timedeltas, once: compared with each event's times.
        self._skew_threshold = timedelta(seconds=limits.skew_threshold_s)
        self._max_future = timedelta(seconds=limits.max_future_s)

    def parse(self, items: list[Any], source: Source, *, sent_at: Any = None) -> Parsed:
        """``sent_at`` is the batch-level one (Segment batches carry it beside ``batch``)."""
        out = Parsed()
        # Parsed once for the batch: every event without its own shares the one datetime (and
        # the writer converts each distinct one once). Invalid, it refuses each event that
        # needs it, as it did when each parsed it.
        batch_sent_at: datetime | _Reject | None = None
        if sent_at is not None:
            try:
                batch_sent_at = _parse_time(sent_at, "sent_at")
            except _Reject as rej:
                batch_sent_at = rej
        contexts: dict[bytes, bytes] = {}
        for index, item in enumerate(items):
            warnings: list[Issue] = []
            try:
                row = self._parse_one(index, item, source, batch_sent_at, warnings, contexts)
            except _Reject as rej:
                out.rejected.append(Issue(index, rej.code, rej.field, rej.reason, rej.size))
                continue
            out.rows.append(row)
            out.indexes.append(index)
            out.warnings.extend(warnings)
        return out

    def _parse_one(
        self,
        index: int,
        item: Any,
        source: Source,
        batch_sent_at: datetime | _Reject | None,
        warnings: list[Issue],
        contexts: dict[bytes, bytes],
    ) -> Row:
        """One event as a row. ``contexts`` is the request's: each context as sent, encoded,
        and what it was stored as, when scrubbing it found nothing and warned of nothing."""
        if not isinstance(item, dict):
            raise _Reject("invalid_type", None, "an event must be a JSON object")
        # Renamed only when it uses an alias (Segment's camelCase): the native shape is used as
        # it is, not copied (nothing reads the request's items after parsing).
        ev: dict[str, Any] = (
            item
            if _ALIASES.keys().isdisjoint(item)
            else {_ALIASES.get(k) or k: v for k, v in item.items()}
        )
        lim = self.limits

        kind = ev.get("type", "track")
        if not isinstance(kind, str) or kind not in EVENT_TYPES:
            raise _Reject("invalid_type", "type", f"type must be one of {sorted(EVENT_TYPES)}")

        name = _text_field(ev, "event", lim.max_name_chars, "pii_in_name")
        if name is None and kind in ("page", "screen"):
            name = _optional_str(ev, "name", lim.max_name_chars)
            if name is not None:
                _refuse_pii(name, "event", "pii_in_name", "pii_in_name")
        if kind == "track" and not name:
            raise _Reject("missing_field", "event", "a track event needs an event name")

        hashed_ids: list[pii.EmailDigest | pii.PhoneDigest] = []
        user_id = self._id(ev, "user_id", source, hashed_ids)
        anonymous_id = self._id(ev, "anonymous_id", source, hashed_ids)
        if user_id is None and anonymous_id is None:
            raise _Reject("missing_field", "user_id", "an event needs user_id or anonymous_id")

        # An empty message_id is absent: kept, every "" in the window would collide as one.
        message_id = _text_field(ev, "message_id", lim.max_message_id_chars) or None
        if message_id is None:
            # As Segment does; retries of such an event cannot be deduplicated (documented).
            message_id = str(uuid.uuid4())

        app_id = _text_field(ev, "app_id", lim.max_name_chars)
        received_at = source.received_at
        # RudderStack's SDKs send the client's clock as originalTimestamp and no timestamp;
        # Segment documents it as the input timestamp is computed from. timestamp wins.
        client_ts = _optional_time(ev, "timestamp") or _optional_time(ev, "original_timestamp")
        sent_at = _optional_time(ev, "sent_at")
        if sent_at is None and batch_sent_at is not None:
            if isinstance(batch_sent_at, _Reject):
                raise _Reject(batch_sent_at.code, batch_sent_at.field, batch_sent_at.reason)
            sent_at = batch_sent_at
        timestamp = self._corrected(client_ts, sent_at, received_at, index, warnings)

        properties = _object(ev, "properties")
        traits = _object(ev, "traits")
        context = _object(ev, "context")
        # group and alias carry a second id; it is kept in properties, checked like user_id.
        for extra in ("group_id", "previous_id"):
            if extra not in ev:
                continue  # only group and alias events have them
            value = self._id(ev, extra, source, hashed_ids)
            if value is not None:
                properties[extra] = value

        if len(properties) > lim.max_properties:
            raise _Reject(
                "too_many_properties",
                "properties",
                f"properties has {len(properties)} keys; the limit is {lim.max_properties}",
            )

        geo = source.peer_geo
        context_ip = context.get("ip")
        if source.trust_context_ip and isinstance(context_ip, str):
            ip = _parse_ip(context_ip)
            if ip is None:
                # The peer is the partner's server, not the user: no location beats a wrong one.
                geo = None
                warnings.append(Issue(index, "invalid_ip", "context.ip", "not an IP address"))
            else:
                geo = self._lookup(ip)

        found = _Found()
        scrub = _Scrubber(
            source.default_country, lim.max_depth, index, warnings, found, self._plain
        )
        if traits:  # most events (all but identifies) carry none: no call for an empty walk
            scrub.walk_object(traits, "traits", rank=0)
        device = context.get("device")
        if isinstance(device, dict):
            # Segment's context.device.id is the IDFV or Android ID: a device id like the ad ids,
            # though its key is too generic to take out everywhere.
            found.device("device_id", device.pop("id", None))
            if device.get("adTrackingEnabled") is False:
                # The user opted out of ad tracking: the ad id is not ours to pass on.
                found.ad_tracking = False
        ctx_traits = context.pop("traits", None)
        if isinstance(ctx_traits, dict):
            scrub.walk_object(ctx_traits, "context.traits", rank=1)
        if properties:
            scrub.walk_object(properties, "properties", rank=2)
        # The events of one SDK batch mostly share their context (library, device, locale, user
        # agent, page): one scrubbed and encoded stands for the next identical one, as long as
        # scrubbing it had no effect beyond its output. Compared as encoded, after the device id
        # and traits were taken out; a context with traits is always walked.
        sent_context: bytes | None = None
        if ctx_traits is None and context:
            try:  # noqa: SIM105 (contextlib.suppress costs an object and two calls per event)
                sent_context = orjson.dumps(context)
            except TypeError:
                pass  # refused below, as it always was
        context_json = contexts.get(sent_context) if sent_context is not None else None
        if context_json is None:
            scrub.touched = False
            scrub.walk_object(context, "context", rank=3)
        if ctx_traits is not None:
            if not isinstance(ctx_traits, dict):
                raise _Reject("invalid_type", "context.traits", "context.traits must be an object")
            context["traits"] = ctx_traits

        try:
            props_json = orjson.dumps(properties)
            traits_json = orjson.dumps(traits)
            if context_json is None:
                context_json = orjson.dumps(context)
                if sent_context is not None and not scrub.touched:
                    contexts[sent_context] = context_json
        except TypeError as exc:  # e.g. an integer beyond 64 bits; orjson names no value
            raise _Reject("invalid_value", None, "a value cannot be stored as JSON") from exc
        size = len(props_json) + len(traits_json) + len(context_json)
        if size > lim.max_event_bytes:
            raise _Reject(
                "event_too_large",
                None,
                f"the event is {size} bytes; the limit is {lim.max_event_bytes}",
                size,
            )

        email, phone = found.email, found.phone
        # An id that was an email or a phone names the person like a trait would: its digest
        # fills the columns that access and erasure by email or phone search.
        for digest in hashed_ids:
            if isinstance(digest, pii.EmailDigest) and email is None:
                email = digest
            elif isinstance(digest, pii.PhoneDigest) and phone is None:
                phone = digest
        return (
            source.project_id,
            received_at,
            message_id,
            kind,
            name,
            user_id,
            anonymous_id,
            timestamp,
            client_ts,
            sent_at,
            app_id,
            geo.country if geo else None,
            geo.region if geo else None,
            email.sha256 if email else None,
            email.google_sha256 if email else None,
            phone.sha256 if phone else None,
            phone.e164_sha256 if phone else None,
            props_json,
            traits_json,
            context_json,
            found.devices_json(),
        )

    def _id(
        self,
        ev: dict[str, Any],
        name: str,
        source: Source,
        hashed: list[pii.EmailDigest | pii.PhoneDigest],
    ) -> str | None:
        """An identifier field; an email- or phone-shaped one is refused, or (the project's
        identifier_pii is "hash") replaced by its SHA-256, normalized as everywhere else."""
        try:
            if type(ev.get(name)) is str:
                # The usual id, through _text_field's shortcut: one call, not _identifier's
                # four (the same answer, tests/unit/test_properties.py). An empty id is absent.
                return _text_field(ev, name, self.limits.max_id_chars) or None
            return _identifier(ev, name, self.limits.max_id_chars)
        except _Reject as rej:
            if not source.hash_identifiers or rej.code not in (
                f"{name}_is_email",
                f"{name}_is_phone",
            ):
                raise
            text = str(ev[name])
            digest: pii.EmailDigest | pii.PhoneDigest | None
            if rej.code.endswith("email"):
                # Only a whole address can be hashed; an id that merely holds one stays refused.
                digest = pii.hash_email(text) if pii.looks_like_email(text) else None
            else:
                digest = pii.hash_phone(text, source.default_country)
            if digest is None:
                raise
            hashed.append(digest)
            return digest.sha256

    def _corrected(
        self,
        client_ts: datetime | None,
        sent_at: datetime | None,
        received_at: datetime,
        index: int,
        warnings: list[Issue],
    ) -> datetime:
        """Segment's skew correction: timestamp = received_at - (sent_at - timestamp)."""
        if client_ts is None:
            return received_at
        timestamp = client_ts
        if sent_at is not None:
            skew = received_at - sent_at
            # Below the threshold the difference is transit time, not a wrong clock: leave it,
            # so that events of one session keep their order.
            if abs(skew) > self._skew_threshold:
                try:
                    timestamp = client_ts + skew
                except OverflowError:
                    timestamp = received_at
        if timestamp > received_at + self._max_future:
            warnings.append(
                Issue(index, "timestamp_clamped", "timestamp", "in the future; set to received_at")
            )
            timestamp = received_at
        return timestamp


@dataclass(slots=True)
class _Found:
    email: pii.EmailDigest | None = None
    email_rank: int = 99
    phone: pii.PhoneDigest | None = None
    phone_rank: int = 99
    devices: dict[str, str] | None = None
    ad_tracking: bool = True

    def device(self, kind: str, value: Any) -> None:
        """Keep the first device id of each kind; anything not shaped like one is dropped."""
        if (
            not isinstance(value, str)
            or _DEVICE_ID.fullmatch(value) is None
            or _PHONE_LIKE.fullmatch(value) is not None
        ):
            return
        if self.devices is None:
            self.devices = {}
        self.devices.setdefault(kind, value)

    def devices_json(self) -> bytes | None:
        devices = self.devices
        if devices is None:
            return None
        ad_id = devices.get("advertising_id")
        if ad_id is not None and (not self.ad_tracking or ad_id == _ZERO_AD_ID):
            del devices["advertising_id"]
        return orjson.dumps(devices) if devices else None


class _Plain:
    """Keys and string values already seen to pass the scrubber unchanged, whatever the
    project's country: events of one app repeat the same keys and most of the same values
    (library, locale, user agent, page), and a set lookup is cheaper than the checks. Only in
    memory, bounded, and never anything the scrubber hashes or drops."""

    __slots__ = ("keys", "values")

    _MAX: Final = 50_000

    def __init__(self) -> None:
        # A plain key and its normalized form (one that is not an email, phone, IP or device
        # id key: those always take the full path).
        self.keys: dict[str, str] = {}
        self.values: set[str] = set()

    def add_key(self, key: str, nkey: str) -> None:
        if len(self.keys) >= self._MAX:
            self.keys.clear()
        self.keys[key] = nkey

    def add_value(self, value: str) -> None:
        # Only values no country-dependent branch could have touched (phone numbers in text,
        # emails): for those, "unchanged" might not hold for another project. A "+" or "("
        # (user agents, prices, titles) leads to the phone checks, which depend on the country
        # only once something looks like a number (a national one kept as it is without a
        # country is hashed with one).
        if "@" in value or "%40" in value:
            return
        if ("+" in value or "(" in value) and pii.mentions_phone(value):
            return
        if len(self.values) >= self._MAX:
            self.values.clear()
        self.values.add(value)


_PII_KEYS: Final = pii.EMAIL_KEYS | pii.PHONE_KEYS


class _Scrubber:
    """One pass over a JSON tree: depth and U+0000 checks, PII hashed in place, IPs dropped."""

    __slots__ = ("country", "found", "index", "max_depth", "plain", "touched", "warnings")

    def __init__(
        self,
        country: str | None,
        max_depth: int,
        index: int,
        warnings: list[Issue],
        found: _Found,
        plain: _Plain | None = None,
    ) -> None:
        self.country = country
        self.max_depth = max_depth
        self.index = index
        self.warnings = warnings
        self.found = found
        self.plain = plain if plain is not None else _Plain()
        # Set when the walk found an email, phone or device id, or warned: what it did then is
        # more than its output, so its result cannot stand for another event's.
        self.touched = False

    def walk_object(self, obj: dict[str, Any], path: str, rank: int, depth: int = 1) -> None:
        if depth > self.max_depth:
            raise _Reject("too_deep", path, f"nesting is deeper than {self.max_depth} levels")
        plain_keys = self.plain.keys
        plain_values = self.plain.values
        for key in list(obj):
            value = obj[key]
            nkey = plain_keys.get(key)
            if nkey is not None:
                # A key seen before: not PII, not an IP or device id key.
                if type(value) is str:
                    if value not in plain_values:
                        replaced = self._string(value, nkey, path, key, rank if depth == 1 else 9)
                        if replaced is None:
                            del obj[key]
                        elif replaced is not value:
                            obj[key] = replaced
                        elif len(value) <= _PLAIN_VALUE_CHARS:
                            self.plain.add_value(value)
                elif isinstance(value, dict):
                    self.walk_object(value, f"{path}.{key}", 9, depth + 1)
                elif isinstance(value, list):
                    self.walk_list(value, f"{path}.{key}", nkey, depth + 1)
                continue
            new_key = self._key(key, path)
            if new_key is None:
                del obj[key]
                continue
            unchanged = new_key is key
            if not unchanged:
                del obj[key]
                obj[new_key] = value
                key = new_key
            nkey = _normalize_key(key)
            if nkey in _IP_KEYS:
                del obj[key]
                continue
            if nkey in _DEVICE_ID_KEYS:
                self.found.device(_DEVICE_ID_KEYS[nkey], value)
                self.touched = True
                del obj[key]
                continue
            if (
                unchanged
                and len(key) <= _PLAIN_KEY_CHARS
                and nkey not in _PII_KEYS
                and "@" not in key
                and "%40" not in key
            ):
                # _key hashes or drops every key it finds PII in, whatever the country: one it
                # left alone is plain for every project.
                self.plain.add_key(key, nkey)
            if isinstance(value, str):
                replaced = self._string(value, nkey, path, key, rank if depth == 1 else 9)
                if replaced is None:
                    del obj[key]
                elif replaced is not value:
                    obj[key] = replaced
            elif isinstance(value, dict):
                self.walk_object(value, f"{path}.{key}", 9, depth + 1)
            elif isinstance(value, list):
                self.walk_list(value, f"{path}.{key}", nkey, depth + 1)
            elif nkey in pii.PHONE_KEYS and _is_whole_number(value):
                # Phones sent as JSON numbers (15550100 or 15550100.0) are still phones.
                replaced = self._string(str(int(value)), nkey, path, key, rank if depth == 1 else 9)
                if replaced is None:
                    del obj[key]
                else:
                    obj[key] = replaced

    def walk_list(self, items: list[Any], path: str, nkey: str, depth: int) -> None:
        if depth > self.max_depth:
            raise _Reject("too_deep", path, f"nesting is deeper than {self.max_depth} levels")
        for i, value in enumerate(items):
            if isinstance(value, str):
                items[i] = self._string(value, nkey, path, f"[{i}]", 9)
            elif isinstance(value, dict):
                self.walk_object(value, f"{path}[{i}]", 9, depth + 1)
            elif isinstance(value, list):
                self.walk_list(value, f"{path}[{i}]", nkey, depth + 1)

    def _key(self, key: str, path: str) -> str | None:
        """The key to store instead of ``key`` (PII hashed); None drops the entry (an IP)."""
        if "\x00" in key:
            raise _Reject("nul_character", path, "a key contains U+0000, which Postgres refuses")
        if "@" in key or "%40" in key:
            if pii.looks_like_email(key):
                email = pii.hash_email(key)
                return email.sha256 if email else pii.redact_emails(key)
            return pii.redact_emails(key)
        first = key[:1]
        if first and first in "+(t0123456789" and pii.looks_like_phone(key):
            phone = pii.hash_phone(key, self.country)
            return phone.sha256 if phone else None
        if (":" in key or key.count(".") == 3) and _parse_ip(key) is not None:
            return None  # a map keyed by client address
        return key

    def _string(self, value: str, nkey: str, parent: str, key: str, rank: int) -> str | None:
        """The value to store instead of ``value`` (at ``key`` of ``parent``, or at an index
        ``[i]`` of it); None drops it."""
        if "\x00" in value:
            raise _Reject(
                "nul_character",
                _at(parent, key),
                "a string contains U+0000, which Postgres refuses",
            )
        if nkey in pii.EMAIL_KEYS:
            email = pii.hash_email(value)
            if email is None:
                self.touched = True
                self.warnings.append(
                    Issue(
                        self.index,
                        "email_invalid",
                        _at(parent, key),
                        "not an email address; dropped",
                    )
                )
                return None
            self._found_email(email, rank)
            return email.sha256
        if nkey in pii.PHONE_KEYS:
            phone = pii.hash_phone(value, self.country)
            if phone is None:
                self.touched = True
                self.warnings.append(
                    Issue(
                        self.index,
                        "phone_unmatchable",
                        _at(parent, key),
                        "the phone number could not be normalized (a national number needs the "
                        "project's default country); no digest stored",
                    )
                )
                return None
            self._found_phone(phone, rank)
            return phone.sha256
        if "@" in value or "%40" in value:
            if pii.looks_like_email(value):
                email = pii.hash_email(value)
                if email is not None:
                    self._found_email(email, 9)
                    return email.sha256
            value = pii.redact_emails(value)
        first = value[:1]
        if first and (first in "+(t0123456789") and pii.looks_like_phone(value):
            phone = pii.hash_phone(value, self.country)
            if phone is None:
                return None
            self._found_phone(phone, 9)
            return phone.sha256
        if "+" in value or "(" in value:
            # A number written inside free text ("call +1 415 555 0100") is hashed in place.
            value = pii.redact_phones(value, self.country)
        if ":" in value and _IPV6_CHARS.match(value) and _parse_ip(value) is not None:
            return None  # an IPv6 literal is unambiguous wherever it appears
        return value

    def _found_email(self, email: pii.EmailDigest, rank: int) -> None:
        self.touched = True
        if rank < self.found.email_rank:
            self.found.email, self.found.email_rank = email, rank

    def _found_phone(self, phone: pii.PhoneDigest, rank: int) -> None:
        self.touched = True
        if rank < self.found.phone_rank:
            self.found.phone, self.found.phone_rank = phone, rank


def _at(parent: str, key: str) -> str:
    """The path of ``key`` (or of an index ``[i]``) in ``parent``, as warnings name fields.
    Built only for a warning or a refusal: most values never need one."""
    return f"{parent}{key}" if key[:1] == "[" else f"{parent}.{key}"


def _is_whole_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _has_email(text: str) -> bool:
    return pii.redact_emails(text) != text


def _optional_str(ev: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = ev.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject("invalid_type", name, f"{name} must be a string")
    if len(value) > max_chars:
        raise _Reject(
            "too_long", name, f"{name} is {len(value)} characters; the limit is {max_chars}"
        )
    if "\x00" in value:
        raise _Reject("nul_character", name, f"{name} contains U+0000, which Postgres refuses")
    return value


def _text_field(
    ev: dict[str, Any], name: str, max_chars: int, pii_code: str | None = None
) -> str | None:
    """A text stored as it is (an event name, a message id, an app id): None when absent,
    refused unless a str within ``max_chars`` without NUL (_optional_str), and refused when it
    holds an email address or is a phone number (_refuse_pii, with ``pii_code`` for both).

    The usual text is answered at once, without their three calls: no NUL, no "@" or "%40" (no
    email can be in it), and shorter than a phone or not starting as one can (looks_like_phone's
    own first test). EventParser._id takes its text ids through here; the unit tests hold both
    to the full checks (tests/unit/test_properties.py)."""
    value = ev.get(name)
    if (
        type(value) is str
        and len(value) <= max_chars
        and "@" not in value
        and "%40" not in value
        and "\x00" not in value
        and (len(value) < 9 or (value[0] not in pii.PHONE_FIRST and not value[0].isspace()))
    ):
        return value
    text = _optional_str(ev, name, max_chars)
    if text is not None:
        _refuse_pii(text, name, pii_code, pii_code)
    return text


def _identifier(ev: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = ev.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # SDKs send numeric user ids; Segment stores them as strings
        ev[name] = value
    text = _optional_str(ev, name, max_chars)
    if text is None or text == "":
        return None
    # Refused rather than hashed: the partner's key would silently change (RELIABILITY 4.6).
    _refuse_pii(text, name)
    return text


def _refuse_pii(
    text: str, name: str, email_code: str | None = None, phone_code: str | None = None
) -> None:
    """Reject a field that would be stored as it is (an id, a name) when it holds an email
    address or is a phone number: hashing it would change what the partner keys on."""
    if "@" in text or "%40" in text:
        if pii.looks_like_email(text) or _has_email(text):
            raise _Reject(
                email_code or f"{name}_is_email",
                name,
                f"{name} must not contain an email address; send it in traits",
            )
    elif pii.looks_like_phone(text):
        raise _Reject(
            phone_code or f"{name}_is_phone",
            name,
            f"{name} must not be a phone number; send it in traits",
        )


def _object(ev: dict[str, Any], name: str) -> dict[str, Any]:
    value = ev.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Reject("invalid_type", name, f"{name} must be a JSON object")
    return value


def _optional_time(ev: dict[str, Any], name: str) -> datetime | None:
    value = ev.get(name)
    if value is None:
        return None
    return _parse_time(value, name)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise _Reject("invalid_timestamp", name, f"{name} must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject("invalid_timestamp", name, f"{name} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is UTC:
        return parsed  # "Z" or "+00:00", as SDKs send it: already what is stored
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # a time without an offset is taken as UTC
    try:
        # 0001-01-01T00:00+01:00 parses, but is before year 1 in UTC: no datetime can hold it,
        # and it would fail the COPY of every request in the batch.
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _Reject("invalid_timestamp", name, f"{name} is out of range") from None


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def now() -> datetime:
    return datetime.now(UTC)
