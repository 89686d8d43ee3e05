"""The key cache (ingest/auth.py) against a real database: requests that present a key whose
entry is missing or expired share one lookup, and what that lookup finds (a revocation, a
failure) is what each of them gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ingest.auth import Authenticator
from ingest.keys import digest
from ingest.problems import InvalidKey
from ingest.store import KeyRecord, Store, create_pool
from tests.conftest import keyring_for_tests


class CountingStore(Store):
    """The real store, counting its key lookups; ``gate`` (when set) holds each lookup until it
    is opened, ``fail`` makes the next lookups raise before querying."""

    lookups = 0
    gate: asyncio.Event | None = None
    fail = 0

    async def find_key(self, digest: bytes) -> KeyRecord | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ConnectionRefusedError("the database is away")
        return await super().find_key(digest)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[CountingStore]:
    pool = await create_pool(db_dsn, min_size=1, max_size=4, connect_timeout=5)
    yield CountingStore(pool, keyring_for_tests())
    await pool.close()


@pytest.fixture
async def write_key(store: CountingStore) -> str:
    org_id, _ = await store.create_org("o")
    _, key = await store.create_project(org_id, "p", None)
    return key.plaintext


async def test_concurrent_requests_share_one_lookup_per_expiry(
    store: CountingStore, write_key: str
) -> None:
    auth = Authenticator(store, ttl_s=0.2)
    records = await asyncio.gather(*(auth.lookup(write_key) for _ in range(20)))
    assert {r.key_id for r in records} == {records[0].key_id}
    assert store.lookups == 1
    # Within the TTL, from the cache.
    await auth.lookup(write_key)
    assert store.lookups == 1

    # Expired, then revoked: the next requests together make one lookup, and all see it.
    await asyncio.sleep(0.25)
    async with store.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE digest = $1", digest(write_key)
        )
    answers = await asyncio.gather(
        *(auth.lookup(write_key) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(a, InvalidKey) for a in answers), answers
    assert store.lookups == 2


async def test_a_waiter_going_away_does_not_cancel_the_lookup_of_the_others(
    store: CountingStore, write_key: str
) -> None:
    auth = Authenticator(store, ttl_s=60)
    store.gate = asyncio.Event()
    first = asyncio.create_task(auth.lookup(write_key))
    second = asyncio.create_task(auth.lookup(write_key))
    await asyncio.sleep(0.05)
    first.cancel()  # the client of the request that started the lookup disconnected
    await asyncio.sleep(0)
    store.gate.set()
    record = await second
    assert record.digest == digest(write_key)
    assert first.cancelled()
    assert store.lookups == 1


async def test_a_failed_lookup_fails_its_waiters_and_is_not_kept(
    store: CountingStore, write_key: str
) -> None:
    auth = Authenticator(store, ttl_s=60)
    store.fail = 1
    answers = await asyncio.gather(
        *(auth.lookup(write_key) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(a, ConnectionRefusedError) for a in answers), answers
    assert store.lookups == 1
    # The database is back: the next request looks again instead of meeting the old failure.
    record = await auth.lookup(write_key)
    assert record.digest == digest(write_key)
    assert store.lookups == 2
