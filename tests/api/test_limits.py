"""Resource limits a deployment relies on: per-key rate limits and slow request bodies."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager

from ingest.app import create_app
from ingest.config import Settings
from ingest.metrics import Metrics
from tests.conftest import bearer, client_for


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Any]:
    """One worker allowed 2 requests a second per key, with a burst of 3."""
    tight = dataclasses.replace(
        settings, workers=1, rate_limit_per_key=2, rate_limit_burst=3, body_timeout_s=0.5
    )
    async with LifespanManager(create_app(tight, metrics=Metrics())) as m:
        yield m.app


async def test_a_key_over_its_rate_gets_429_with_retry_after(
    limited: Any, write_key: str, secret_key: str, conn: asyncpg.Connection
) -> None:
    async with client_for(limited) as c:
        answers = [
            await c.post(
                "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
            )
            for _ in range(5)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        refused = answers[3]
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/rate-limited")
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-ratelimit-reset"] == "1"
        assert refused.headers["access-control-allow-origin"] == "*"  # browsers can read it
        assert await conn.fetchval("SELECT count(*) FROM events") == 3

        # Limits are per key: another project's key is unaffected.
        other = await c.post("/v1/projects", json={"name": "b"}, headers=bearer(secret_key))
        other_key = other.json()["write_key"]["key"]
        ok = await c.post(
            "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(other_key)
        )
        assert ok.status_code == 200

        metrics = (await c.get("/metrics")).text
        assert "ingest_rate_limited_total 2.0" in metrics


async def test_the_bucket_refills(limited: Any, write_key: str) -> None:
    async with client_for(limited) as c:
        for _ in range(3):
            await c.post(
                "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
            )
        assert (
            await c.post(
                "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
            )
        ).status_code == 429
        await asyncio.sleep(0.6)  # 2 per second: one token back after 0.5 s
        assert (
            await c.post(
                "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
            )
        ).status_code == 200


async def test_a_body_that_trickles_in_is_refused_with_408(
    limited: Any, write_key: str, conn: asyncpg.Connection
) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"event": "x", '
        await asyncio.sleep(2)
        yield b'"user_id": "u"}'

    async with client_for(limited) as c:
        r = await c.post(
            "/v1/events",
            content=trickle(),
            headers={**bearer(write_key), "Content-Type": "application/json"},
        )
    assert r.status_code == 408
    assert r.headers["content-type"] == "application/problem+json"
    assert "0.5 seconds" in r.json()["detail"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_limits_default_on_and_configurable() -> None:
    defaults = Settings()
    assert defaults.rate_limit_per_key == 5000
    env = Settings.from_env({"INGEST_RATE_LIMIT_PER_KEY": "0", "INGEST_BODY_TIMEOUT_SECONDS": "5"})
    assert env.rate_limit_per_key == 0
    assert env.body_timeout_s == 5


async def test_rate_limit_zero_turns_it_off(settings: Settings, write_key: str) -> None:
    off = dataclasses.replace(settings, rate_limit_per_key=0, rate_limit_burst=1)
    async with LifespanManager(create_app(off, metrics=Metrics())) as m, client_for(m.app) as c:
        answers = await asyncio.gather(
            *(
                c.post("/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key))
                for _ in range(20)
            )
        )
    assert {a.status_code for a in answers} == {200}


async def test_partner_routes_are_rate_limited_per_secret_key(
    limited: Any, secret_key: str, project: dict[str, Any]
) -> None:
    """A leaked secret key cannot export user after user, or probe erasures, at full speed
    (RELIABILITY T20, T21): partner routes share the per-key limit."""
    path = f"/v1/projects/{project['id']}/events/users/u-1"
    async with client_for(limited) as c:
        answers = [await c.get(path, headers=bearer(secret_key)) for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        assert answers[3].json()["type"].endswith("/rate-limited")
        assert answers[3].headers["retry-after"] == "1"
        metrics = (await c.get("/metrics")).text
        assert "ingest_rate_limited_total 2.0" in metrics
        assert 'ingest_subject_requests_total{kind="export"} 3.0' in metrics
