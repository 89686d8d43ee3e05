"""Forwarding end to end: events posted by SDKs reach real HTTP receivers on loopback.

Each receiver is a small Starlette app under uvicorn, started by the test, that records what it
was sent and answers as told: 200, 500 then 200, slowly, 429 with Retry-After, 400, a redirect.
What is checked is what the partner sees: the requests (bodies, signatures), the outbox and
deliveries rows, the dead-letter API, the erasure receipt, the metrics, and a dump of the
database in which no device id survives a delivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.app import create_app
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.api.test_privacy import pg_dump
from tests.conftest import bearer, client_for, unseal

# What the writer stores, on both of its paths (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("write_path")

AD_ID = "AEBE52E7-03EE-455A-B3C4-E57283966239"
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"
IDFV = "7D8B1C36-9A3B-4C52-8E0F-0F1E2D3C4B5A"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast retries and sweeps, so that backoff and expiry play out within a test."""
    return dataclasses.replace(
        settings,
        forward_poll_s=0.05,
        forward_sweep_s=0.1,
        forward_backoff_base_s=0.05,
        forward_backoff_max_s=0.2,
        forward_timeout_s=1.0,
        forward_max_attempts=4,
    )


Answer = tuple[int, dict[str, str]]


@dataclass
class Receiver:
    """A partner's endpoint. ``answer`` decides each response from the request number
    (1-based); ``accepted`` holds the bodies it answered 2xx to."""

    url: str = ""
    answer: Callable[[int], Answer] = lambda n: (200, {})
    delay: Callable[[int], float] = lambda n: 0.0
    gate: asyncio.Event | None = None  # when set, requests wait for it before answering
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((time.monotonic(), dict(request.headers), body))
        self.arrived.set()
        n = len(self.requests)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay(n))
        status, headers = self.answer(n)
        if 200 <= status < 300:
            self.accepted.append(orjson.loads(body))
        return Response(status_code=status, headers=headers)

    def events(self) -> list[dict[str, Any]]:
        return [event for body in self.accepted for event in body.get("batch", [])]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Awaitable[Receiver]]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(receiver: Receiver) -> Receiver:
        app = Starlette(
            routes=[
                Route("/hook", receiver.handle, methods=["POST"]),
                Route("/elsewhere", receiver.handle, methods=["POST"]),
            ]
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(500):  # uvicorn has no "started" event to wait on
            if server.started:
                break
            await asyncio.sleep(0.01)
        servers.append((server, task))
        receiver.url = f"http://127.0.0.1:{port}/hook"
        return receiver

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        await asyncio.sleep(0.05)


async def create_destination(
    client: httpx.AsyncClient, secret_key: str, project_id: str, **doc: Any
) -> dict[str, Any]:
    doc.setdefault("type", "webhook")
    doc.setdefault("name", "hook")
    r = await client.post(
        f"/v1/projects/{project_id}/destinations", json=doc, headers=bearer(secret_key)
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def set_status(
    client: httpx.AsyncClient, secret_key: str, project_id: str, destination_id: str, status: str
) -> None:
    """Pause (the outbox fills, nothing is sent) or resume a destination."""
    r = await client.patch(
        f"/v1/projects/{project_id}/destinations/{destination_id}",
        json={"status": status},
        headers=bearer(secret_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == status


async def send(client: httpx.AsyncClient, write_key: str, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, headers=bearer(write_key))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events), r.text


def app_event(n: int, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "event": "Order Completed",
        "user_id": user,
        "message_id": f"m-{user}-{n}",
        "properties": {"revenue": 9.5, "currency": "EUR"},
        "context": {
            "device": {"advertisingId": AD_ID, "id": IDFV, "adTrackingEnabled": True},
            "os": {"name": "iOS"},
        },
        **extra,
    }


async def outbox_count(conn: asyncpg.Connection, status: str | None = None) -> int:
    if status is None:
        return int(await conn.fetchval("SELECT count(*) FROM outbox"))
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE status = $1", status))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class TestWebhook:
    async def test_every_event_arrives_once_signed_and_its_device_ids_leave_the_database(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        db_dsn: str,
        serve: Callable[[Receiver], Awaitable[Receiver]],
        metrics: Metrics,
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        secret = destination["signing_secret"]
        events = [
            app_event(
                n,
                traits={"email": "Jane.Doe@Example.com", "phone": "+1 415 555 0142"},
                properties={"ip": "203.0.113.77", "note": "call +1 415 555 0142"},
            )
            for n in range(250)
        ]
        for start in range(0, len(events), 50):
            await send(client, write_key, events[start : start + 50])
        # Device ids are in the outbox (and only there) until the delivery.
        await eventually(lambda: _done(conn))
        delivered = receiver.events()
        assert sorted(e["message_id"] for e in delivered) == sorted(e["message_id"] for e in events)
        first = delivered[0]
        assert first["devices"] == {"advertising_id": AD_ID, "device_id": IDFV}
        assert first["email_sha256"] == hashlib.sha256(b"jane.doe@example.com").hexdigest()
        assert "device" not in first["context"] or "id" not in first["context"]["device"]
        for _, headers, body in receiver.requests:
            stamp, mac = (
                part.split("=", 1)[1] for part in headers["x-ingest-signature"].split(",")
            )
            expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
            assert hmac.compare_digest(mac, expected.hexdigest())
            assert headers["x-ingest-destination-id"] == destination["id"]
            # What a destination receives is what is stored: digests, never the raw values.
            for raw in (b"jane.doe@example.com", b"555 0142", b"4155550142", b"203.0.113.77"):
                assert raw not in body.lower()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == len(events)
        assert sample(
            metrics, "ingest_forward_delivered_total", destination=destination["id"]
        ) == len(events)
        dump = await pg_dump(db_dsn, "--data-only")
        for device_id in (AD_ID, IDFV):
            assert device_id.lower() not in dump.lower()

    async def test_a_rotated_secret_signs_beside_the_new_one_during_its_grace(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        old = destination["signing_secret"]
        r = await client.post(
            f"/v1/projects/{project['id']}/destinations/{destination['id']}/rotate-secret",
            json={"grace_seconds": 600},
            headers=bearer(secret_key),
        )
        new = r.json()["signing_secret"]
        await send(client, write_key, [app_event(1)])
        await eventually(lambda: _done(conn))
        [(_, headers, body)] = receiver.requests
        parts = headers["x-ingest-signature"].split(",")
        stamp = parts[0].removeprefix("t=")
        macs = [p.removeprefix("v1=") for p in parts[1:]]
        expected = [
            hmac.new(k.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            for k in (new, old)
        ]
        assert macs == expected

    async def test_a_receiver_that_fails_then_recovers_gets_everything_once(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
        metrics: Metrics,
    ) -> None:
        receiver = await serve(Receiver(answer=lambda n: (500, {}) if n <= 2 else (200, {})))
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        events = [app_event(n) for n in range(20)]
        await send(client, write_key, events)
        await eventually(lambda: _done(conn))
        assert sorted(e["message_id"] for e in receiver.events()) == sorted(
            e["message_id"] for e in events
        )
        did = destination["id"]
        assert sample(metrics, "ingest_forward_failed_total", destination=did, reason="http_500")
        assert sample(metrics, "ingest_forward_retried_total", destination=did)
        assert sample(metrics, "ingest_forward_delivered_total", destination=did) == 20
        assert len(receiver.requests) >= 3

    async def test_retry_after_is_honoured(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(
            Receiver(answer=lambda n: (429, {"Retry-After": "1"}) if n == 1 else (200, {}))
        )
        await create_destination(client, secret_key, project["id"], url=receiver.url)
        await send(client, write_key, [app_event(1)])
        await eventually(lambda: _done(conn))
        (first, _, _), (second, _, _) = receiver.requests[:2]
        # Our backoff alone would have tried again after at most 0.2 s (the test settings).
        assert second - first >= 0.95
        assert len(receiver.events()) == 1

    async def test_a_slow_receiver_times_out_and_the_batch_is_sent_again(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
        metrics: Metrics,
    ) -> None:
        # The first request takes longer than forward_timeout_s (1 s here), then is refused.
        receiver = await serve(
            Receiver(
                delay=lambda n: 2.0 if n == 1 else 0.0,
                answer=lambda n: (503, {}) if n == 1 else (200, {}),
            )
        )
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        await send(client, write_key, [app_event(n) for n in range(3)])
        await eventually(lambda: _done(conn))
        assert len(receiver.events()) == 3
        assert sample(
            metrics, "ingest_forward_failed_total", destination=destination["id"], reason="timeout"
        )


class TestDeadLetters:
    async def test_exhausted_attempts_go_dead_without_device_ids_and_can_be_retried(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
        metrics: Metrics,
    ) -> None:
        healthy = False
        receiver = await serve(Receiver(answer=lambda n: (200, {}) if healthy else (502, {})))
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        did = destination["id"]
        await send(client, write_key, [app_event(n) for n in range(5)])
        await eventually(lambda: _count_is(conn, "dead", 5))
        rows = await conn.fetch("SELECT attempts, devices, last_error FROM outbox")
        assert {(r["attempts"], r["devices"], r["last_error"]) for r in rows} == {
            (4, None, "http_502")  # forward_max_attempts
        }
        assert len(receiver.requests) == 4  # the five events went together, four times
        assert sample(metrics, "ingest_forward_dead_lettered_total", destination=did) == 5

        path = f"/v1/projects/{project['id']}/destinations/{did}/dead-letters"
        listed = (await client.get(path, headers=bearer(secret_key))).json()["dead_letters"]
        assert sorted(d["message_id"] for d in listed) == [f"m-u1-{n}" for n in range(5)]
        assert {d["last_error"] for d in listed} == {"http_502"}
        assert all("devices" not in d for d in listed)

        healthy = True
        r = await client.post(f"{path}/retry", headers=bearer(secret_key))
        assert r.status_code == 200, r.text
        assert r.json() == {"retried": 5}
        await eventually(lambda: _done(conn))
        delivered = receiver.events()
        assert len(delivered) == 5
        # The device ids were deleted when the rows died: a retried letter goes without them.
        assert all("devices" not in e for e in delivered)

    async def test_a_client_error_goes_dead_at_once(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver(answer=lambda n: (400, {})))
        await create_destination(client, secret_key, project["id"], url=receiver.url)
        await send(client, write_key, [app_event(1)])
        await eventually(lambda: _count_is(conn, "dead", 1))
        assert len(receiver.requests) == 1
        assert await conn.fetchval("SELECT last_error FROM outbox") == "http_400"

    async def test_a_redirect_is_not_followed(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        target = await serve(Receiver())
        redirect = await serve(Receiver(answer=lambda n: (307, {"Location": target.url})))
        await create_destination(client, secret_key, project["id"], url=redirect.url)
        await send(client, write_key, [app_event(1)])
        await eventually(lambda: _count_is(conn, "dead", 1))
        assert target.requests == []
        assert await conn.fetchval("SELECT last_error FROM outbox") == "http_307"

    async def test_rows_past_their_age_go_dead_even_while_paused(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        await set_status(client, secret_key, project["id"], destination["id"], "paused")
        await send(client, write_key, [app_event(1)])
        assert await conn.fetchval("SELECT devices FROM outbox") is not None
        # As if it had waited since yesterday: the sweep expires it (forward_queue_days is 1).
        await conn.execute("UPDATE outbox SET created_at = now() - interval '25 hours'")
        await eventually(lambda: _count_is(conn, "dead", 1))
        row = await conn.fetchrow("SELECT devices, last_error FROM outbox")
        assert row is not None
        assert row["devices"] is None
        assert row["last_error"] == "expired"
        assert receiver.requests == []


class TestConversionsApi:
    async def test_events_are_shaped_as_meta_takes_them(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(
            client,
            secret_key,
            project["id"],
            type="conversions_api",
            name="meta",
            url=receiver.url,
            access_token="EAAB-token",
            settings={"test_event_code": "TEST123"},
        )
        assert "access_token" not in destination
        android = app_event(1, traits={"phone": "+44 7700 900123", "email": "Jane.Doe@Example.com"})
        android["context"] = {"device": {"advertisingId": GAID}, "os": {"name": "Android"}}
        web = {
            "type": "page",
            "name": "Home",
            "anonymous_id": "anon-1",
            "message_id": "m-web",
            "context": {"page": {"url": "https://shop.example/"}, "userAgent": "Mozilla/5.0"},
        }
        identify = {"type": "identify", "user_id": "u1", "message_id": "m-id", "traits": {}}
        await send(client, write_key, [android, web, identify])
        await eventually(lambda: _done(conn))
        [body] = receiver.accepted
        assert body["access_token"] == "EAAB-token"
        assert body["test_event_code"] == "TEST123"
        by_id = {e["event_id"]: e for e in body["data"]}
        # identify is not a conversion: the default event types are track, page and screen.
        assert set(by_id) == {"m-u1-1", "m-web"}
        purchase = by_id["m-u1-1"]
        assert purchase["event_name"] == "Order Completed"
        assert purchase["action_source"] == "app"
        assert isinstance(purchase["event_time"], int)
        assert purchase["user_data"] == {
            "em": [hashlib.sha256(b"jane.doe@example.com").hexdigest()],
            "ph": [hashlib.sha256(b"447700900123").hexdigest()],
            "external_id": [hashlib.sha256(b"u1").hexdigest()],
            "madid": GAID,
        }
        assert purchase["custom_data"] == {"revenue": 9.5, "currency": "EUR", "value": 9.5}
        page = by_id["m-web"]
        assert page["event_name"] == "PageView"
        assert page["action_source"] == "website"
        assert page["event_source_url"] == "https://shop.example/"
        assert page["user_data"] == {"client_user_agent": "Mozilla/5.0"}
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


class TestErasure:
    async def test_erasure_waits_for_a_delivery_in_flight_and_lists_it(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        gate = asyncio.Event()
        receiver = await serve(Receiver(gate=gate))
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        await send(client, write_key, [app_event(n) for n in range(3)])
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        erasure = asyncio.ensure_future(
            client.delete(
                f"/v1/projects/{project['id']}/events/users/u1", headers=bearer(secret_key)
            )
        )
        await asyncio.sleep(0.3)
        # The delivery holds its rows: the erasure's delete of them waits for its answer.
        assert not erasure.done()
        gate.set()
        r = await asyncio.wait_for(erasure, 10)
        assert r.status_code == 200, r.text
        receipt = r.json()
        assert receipt["deleted"]["forward_queue"] == 0
        [forwarded] = receipt["forwarded"]
        assert forwarded["destination_id"] == destination["id"]
        assert forwarded["name"] == "hook"
        assert forwarded["events_delivered"] == 3
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0
        again = await client.get(
            f"/v1/projects/{project['id']}/erasures/{receipt['id']}", headers=bearer(secret_key)
        )
        assert again.json()["forwarded"] == receipt["forwarded"]

    async def test_erasure_removes_what_still_waits(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        pid, did = project["id"], destination["id"]
        await set_status(client, secret_key, pid, did, "paused")
        await send(client, write_key, [app_event(n) for n in range(4)] + [app_event(9, "u2")])
        assert await outbox_count(conn) == 5
        r = await client.delete(f"/v1/projects/{pid}/events/users/u1", headers=bearer(secret_key))
        receipt = r.json()
        assert receipt["deleted"]["forward_queue"] == 4
        assert receipt["forwarded"] == []
        assert await conn.fetchval("SELECT array_agg(user_id) FROM outbox") == ["u2"]
        # Resumed: only the other person's event goes out.
        await set_status(client, secret_key, pid, did, "active")
        await eventually(lambda: _done(conn))
        assert [e["user_id"] for e in receiver.events()] == ["u2"]


class TestPrivacy:
    async def test_the_outbox_holds_digests_and_device_ids_never_raw_pii(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        db_dsn: str,
    ) -> None:
        """What waits for a paused destination is the stored event plus its device ids: the
        dump finds the device ids (so the search works) and no raw email or phone."""
        destination = await create_destination(
            client, secret_key, project["id"], url="http://127.0.0.1:9/hook"
        )
        await set_status(client, secret_key, project["id"], destination["id"], "paused")
        email, phone = "Canary.Outbox@Example.org", "+1 415 555 0142"
        await send(
            client,
            write_key,
            [
                app_event(1, traits={"email": email}, properties={"phone": phone, "note": email}),
            ],
        )
        assert await outbox_count(conn) == 1
        dump = (await pg_dump(db_dsn, "--data-only")).lower()
        assert AD_ID.lower() in dump
        for raw in (email.lower(), "canary.outbox", "555 0142", "4155550142"):
            assert raw not in dump, raw
        digest = hashlib.sha256(email.lower().encode()).hexdigest()
        assert digest not in dump  # sealed: the project is protected
        raw_dump = await pg_dump(db_dsn, "--data-only")
        assert digest in await unseal(conn, raw_dump)


class TestAddressGuard:
    async def test_delivery_refuses_a_private_address(
        self,
        settings: Settings,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
        org: dict[str, Any],
    ) -> None:
        """A destination that points (or, after a DNS change, resolves) at our own network is
        refused at delivery too, not only when it is saved."""
        receiver = await serve(Receiver())
        guarded = dataclasses.replace(settings, destinations_allow_private=False)
        metrics = Metrics()
        app = create_app(guarded, metrics=metrics)
        async with LifespanManager(app) as manager, client_for(manager.app) as client:
            secret = org["secret_key"]["key"]
            r = await client.post("/v1/projects", json={"name": "p"}, headers=bearer(secret))
            project = r.json()
            destination_id = uuid.uuid4()
            # Saved as if it had passed the check (a name that resolved elsewhere then).
            await conn.execute(
                "INSERT INTO destinations (project_id, id, type, name, url, secret)"
                " VALUES ($1::uuid, $2, 'webhook', 'h', $3, 'whsec_x')",
                project["id"],
                destination_id,
                # https, so that the form passes and the address is what is refused.
                receiver.url.replace("http://", "https://"),
            )
            await send(client, project["write_key"]["key"], [app_event(1)])

            async def refused() -> bool:
                return bool(
                    sample(
                        metrics,
                        "ingest_forward_failed_total",
                        destination=str(destination_id),
                        reason="forbidden_address",
                    )
                )

            await eventually(refused)
        assert receiver.requests == []
        assert await outbox_count(conn, "pending") == 1


class TestMetrics:
    async def test_queue_depth_and_oldest_age_per_destination(
        self,
        client: httpx.AsyncClient,
        secret_key: str,
        project: dict[str, Any],
        write_key: str,
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        receiver = await serve(Receiver())
        destination = await create_destination(client, secret_key, project["id"], url=receiver.url)
        pid, did = project["id"], destination["id"]
        await set_status(client, secret_key, pid, did, "paused")
        await send(client, write_key, [app_event(n) for n in range(7)])
        await conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")

        async def scraped() -> bool:
            text = (await client.get("/metrics")).text
            return f'ingest_forward_queue_events{{destination="{did}"}} 7.0' in text

        await eventually(scraped)
        text = (await client.get("/metrics")).text
        [age] = [
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith(f'ingest_forward_oldest_age_seconds{{destination="{did}"}}')
        ]
        assert 90 <= float(age) < 300
        r = await client.get(f"/v1/projects/{pid}/destinations/{did}", headers=bearer(secret_key))
        assert r.json()["queue"]["pending"] == 7


async def _done(conn: asyncpg.Connection) -> bool:
    return await outbox_count(conn) == 0


async def _count_is(conn: asyncpg.Connection, status: str, n: int) -> bool:
    return await outbox_count(conn, status) == n


class TestRestart:
    async def test_a_batch_cut_off_by_a_stop_is_sent_again_by_the_next_server(
        self,
        settings: Settings,
        org: dict[str, Any],
        conn: asyncpg.Connection,
        serve: Callable[[Receiver], Awaitable[Receiver]],
    ) -> None:
        """The server stops while a delivery waits for its answer: the batch is rolled back
        (device ids still in the outbox, nothing recorded as delivered), and the next server
        sends it. At least once: the receiver saw it twice, the second time answered."""
        gate = asyncio.Event()
        receiver = await serve(Receiver(gate=gate))
        secret = org["secret_key"]["key"]
        # A request timeout past the stop's 2 s grace: the stop, not the timeout, ends it.
        settings = dataclasses.replace(settings, forward_timeout_s=30.0)
        first = create_app(settings, metrics=Metrics())
        async with LifespanManager(first) as manager, client_for(manager.app) as client:
            r = await client.post("/v1/projects", json={"name": "p"}, headers=bearer(secret))
            project = r.json()
            await create_destination(client, secret, project["id"], url=receiver.url)
            await send(client, project["write_key"]["key"], [app_event(1)])
            await asyncio.wait_for(receiver.arrived.wait(), 10)
        # Stopped with the request unanswered.
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0
        assert await conn.fetchval("SELECT devices FROM outbox WHERE status = 'pending'") == {
            "advertising_id": AD_ID,
            "device_id": IDFV,
        }
        gate.set()
        second = create_app(settings, metrics=Metrics())
        async with LifespanManager(second):
            await eventually(lambda: _done(conn))
        # The receiver answered the first request too, after the server had gone: it sees the
        # event twice and deduplicates on message_id; we recorded one delivery.
        assert len(receiver.requests) == 2
        assert {e["message_id"] for e in receiver.events()} == {"m-u1-1"}
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
