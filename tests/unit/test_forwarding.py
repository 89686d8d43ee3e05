"""The pure parts of forwarding: device ids set aside by the parser, backoff, Retry-After,
the webhook signature, and which URLs and addresses a destination may use."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import orjson
import pytest

from ingest import netguard
from ingest.config import Settings
from ingest.events import COLUMNS, DEVICES, EventParser, Limits, Source
from ingest.forwarder import Forwarder, backoff_s, retry_after_s, sign
from ingest.metrics import Metrics
from ingest.store import Destination, OutboxRow, Store

PARSER = EventParser(Limits.from_settings(Settings()), lambda ip: None)
SOURCE = Source(
    project_id=uuid.uuid4(), default_country=None, received_at=datetime.now(UTC), peer_geo=None
)
IDFA = "AEBE52E7-03EE-455A-B3C4-E57283966239"


def parse(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str] | None]:
    parsed = PARSER.parse([{"event": "e", "user_id": "u", **event}], SOURCE)
    [row] = parsed.rows
    stored = dict(zip(COLUMNS, row[:DEVICES], strict=True))
    devices = row[DEVICES]
    return stored, orjson.loads(devices) if devices is not None else None


class TestDeviceIds:
    def test_segment_device_ids_leave_the_event_for_the_outbox(self) -> None:
        stored, devices = parse(
            {"context": {"device": {"advertisingId": IDFA, "id": "idfv-1", "model": "iPhone"}}}
        )
        assert devices == {"advertising_id": IDFA, "device_id": "idfv-1"}
        context = orjson.loads(stored["context"])
        assert context == {"device": {"model": "iPhone"}}

    def test_ad_ids_anywhere_are_taken_out(self) -> None:
        stored, devices = parse(
            {"properties": {"idfa": IDFA, "plan": "pro"}, "traits": {"android_id": "a-1"}}
        )
        assert devices == {"advertising_id": IDFA, "device_id": "a-1"}
        assert orjson.loads(stored["properties"]) == {"plan": "pro"}
        assert orjson.loads(stored["traits"]) == {}

    @pytest.mark.parametrize(
        "device",
        [
            {"advertisingId": IDFA, "adTrackingEnabled": False},  # the user opted out
            {"advertisingId": "00000000-0000-0000-0000-000000000000"},  # iOS without consent
        ],
    )
    def test_an_ad_id_without_consent_is_not_kept(self, device: dict[str, Any]) -> None:
        stored, devices = parse({"context": {"device": device}})
        assert devices is None
        assert IDFA not in stored["context"].decode()

    @pytest.mark.parametrize(
        "value",
        ["jane@example.com", "+1 415 555 0100", "4155550100", "192.0.2.7", "2001:db8::1", "a b"],
    )
    def test_personal_data_in_a_device_id_field_is_not_kept(self, value: str) -> None:
        stored, devices = parse(
            {"properties": {"idfa": value}, "context": {"device": {"id": value}}}
        )
        assert devices is None
        assert all(value not in str(column) for column in stored.values())

    def test_no_device_ids_no_devices(self) -> None:
        _, devices = parse({"context": {"device": {"id": 123, "advertisingId": ""}}})
        assert devices is None


class TestBackoff:
    @pytest.mark.parametrize(
        ("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (5, 16.0), (12, 900.0), (80, 900.0)]
    )
    def test_grows_exponentially_up_to_a_cap(self, attempt: int, ceiling: float) -> None:
        assert backoff_s(attempt, 1.0, 900.0, 1.0) == ceiling
        assert backoff_s(attempt, 1.0, 900.0, 0.5) == ceiling / 2


class TestRetryAfter:
    def test_seconds(self) -> None:
        assert retry_after_s("120") == 120.0

    def test_http_date(self) -> None:
        now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
        later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        assert retry_after_s(later, now) == 30.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5"])
    def test_nonsense_is_ignored(self, value: str | None) -> None:
        assert retry_after_s(value) is None


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"batch":[]}'
    expected = hmac.new(b"whsec_abc", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(1700000000, body, "whsec_abc") == f"t=1700000000,v1={expected}"
    # During a rotation's grace: one signature per secret, the new one first.
    old = hmac.new(b"whsec_old", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(1700000000, body, "whsec_abc", "whsec_old") == (
        f"t=1700000000,v1={expected},v1={old}"
    )


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "code"),
        [
            ("http://hooks.example/", "insecure_url"),
            ("ftp://hooks.example/", "invalid_url"),
            ("https://user:pw@hooks.example/", "invalid_url"),
            ("https:///path", "invalid_url"),
            ("https://hooks.example/#x", "invalid_url"),
            ("https://hooks.example/a b", "invalid_url"),
            ("https://hooks.example:99999/", "invalid_url"),
            ("https://hooks.example/" + "a" * 2048, "invalid_url"),
        ],
    )
    def test_refused_forms(self, url: str, code: str) -> None:
        with pytest.raises(netguard.Refused) as refused:
            netguard.parse_url(url, allow_private=False)
        assert refused.value.code == code

    def test_http_is_for_local_development_only(self) -> None:
        target = netguard.parse_url("http://127.0.0.1:8080/h?x=1", allow_private=True)
        assert target.url_for(ipaddress.ip_address("127.0.0.1")) == "http://127.0.0.1:8080/h?x=1"
        assert target.host_header == "127.0.0.1:8080"

    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",  # cloud metadata
            "100.64.0.1",  # carrier-grade NAT
            "0.0.0.0",  # noqa: S104  # an address under test, not a bind
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
        ],
    )
    async def test_private_addresses_are_refused(self, address: str) -> None:
        literal = f"[{address}]" if ":" in address else address
        target = netguard.parse_url(f"https://{literal}/hook", allow_private=False)
        with pytest.raises(netguard.Refused) as refused:
            await netguard.resolve(target, allow_private=False)
        assert refused.value.code == "forbidden_address"
        assert await netguard.resolve(target, allow_private=True)

    async def test_a_public_address_is_allowed(self) -> None:
        target = netguard.parse_url("https://93.184.215.14/hook", allow_private=False)
        assert await netguard.resolve(target, allow_private=False) == [
            ipaddress.ip_address("93.184.215.14")
        ]

    async def test_a_name_that_resolves_to_loopback_is_refused(self) -> None:
        target = netguard.parse_url("https://localhost/hook", allow_private=False)
        with pytest.raises(netguard.Refused) as refused:
            await netguard.resolve(target, allow_private=False)
        assert refused.value.code == "forbidden_address"


def _destination(url: str, kind: str = "webhook") -> Destination:
    now = datetime.now(UTC)
    return Destination(
        uuid.uuid4(), uuid.uuid4(), kind, "d", url, "active", None, {}, None, now, now, True, "s"
    )


def _row() -> OutboxRow:
    now = datetime.now(UTC)
    event = {"message_id": "m1", "type": "track", "event": "e", "timestamp": now}
    return OutboxRow(1, "m1", now, 0, now, event, {"advertising_id": IDFA})


class TestPinnedAddress:
    """The request goes to the address that was checked, never to a second DNS answer."""

    async def test_connects_to_the_checked_address_with_the_name_for_tls(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        answers = iter([[("93.184.215.14", 443)], [("10.0.0.7", 443)]])

        async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in next(answers)]

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200)

        forwarder = Forwarder(
            cast(Store, None), Metrics(), Settings(), transport=httpx.MockTransport(handler)
        )
        destination = _destination("https://hooks.partner.example/in?x=1")
        assert (await forwarder.send(destination, [_row()])).ok
        [request] = seen
        assert request.url.host == "93.184.215.14"
        assert request.url.raw_path == b"/in?x=1"
        assert request.headers["host"] == "hooks.partner.example"
        assert request.extensions["sni_hostname"] == "hooks.partner.example"
        # The name now points inside: refused, and nothing is sent.
        refused = await forwarder.send(destination, [_row()])
        assert (refused.ok, refused.error, refused.retryable) == (False, "forbidden_address", True)
        assert len(seen) == 1
        await forwarder.stop()
