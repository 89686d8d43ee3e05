"""Who is calling: API keys from the Authorization header, checked against their digests.

Lookups are cached per process for ``key_cache_ttl_s`` so the hot path does not query Postgres
for every request; a revoked key is refused everywhere once the TTL passes. When a key's entry
expires, the requests that present it meanwhile share one lookup: without that, every request
arriving before the first lookup returned made its own (about 40 queries a second per worker
under 64 concurrent connections with one key, instead of one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from starlette.requests import Request

from ingest import keys
from ingest.problems import Forbidden, InvalidKey
from ingest.store import KeyRecord, Store

_CACHE_MAX = 10_000


class Authenticator:
    def __init__(self, store: Store, ttl_s: float) -> None:
        self._store = store
        self._ttl = ttl_s
        self._cache: dict[bytes, tuple[float, KeyRecord | None]] = {}
        # Lookups in flight, per digest: later requests for the same key wait for this one.
        self._pending: dict[bytes, asyncio.Task[KeyRecord | None]] = {}

    async def lookup(self, plaintext: str | None) -> KeyRecord:
        """The live key for ``plaintext``; InvalidKey (401) for anything else, always alike."""
        if not plaintext or keys.kind_of(plaintext) is None:
            raise InvalidKey()
        presented = keys.digest(plaintext)
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and cached[0] > now:
            record = cached[1]
        else:
            record = await self._find(presented, now)
        # The index lookup compared digests already; compare_digest makes the check itself
        # constant-time whatever the database did.
        if record is None or not keys.matches(record.digest, presented):
            raise InvalidKey()
        return record

    async def _find(self, presented: bytes, now: float) -> KeyRecord | None:
        task = self._pending.get(presented)
        if task is None:
            # A task of its own, not the request's: a request that goes away (its client
            # disconnected) does not cancel the lookup the others wait for.
            task = asyncio.ensure_future(self._lookup(presented, now))
            self._pending[presented] = task
            task.add_done_callback(lambda done: self._settled(presented, done))
        # A lookup that fails (the database is away) fails every request that waited for it,
        # as each one's own lookup would have.
        return await asyncio.shield(task)

    async def _lookup(self, presented: bytes, now: float) -> KeyRecord | None:
        record = await self._store.find_key(presented)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[presented] = (now + self._ttl, record)
        return record

    def _settled(self, presented: bytes, task: asyncio.Task[KeyRecord | None]) -> None:
        if self._pending.get(presented) is task:
            del self._pending[presented]
        # Every waiter may have gone (cancelled): retrieve a failure so that asyncio does not
        # log "exception was never retrieved" for it.
        if not task.cancelled():
            task.exception()

    async def secret_key(self, request: Request) -> KeyRecord:
        """A partner's server: an organization secret key, never from a browser (T11)."""
        record = await self.lookup(presented_key(request))
        if record.kind is not keys.KeyKind.SECRET:
            raise Forbidden("this route needs an organization secret key")
        if "origin" in request.headers or request.headers.get("sec-fetch-site") in (
            "cross-site",
            "same-site",
        ):
            raise Forbidden("secret keys are refused from a browser; call from your server")
        return record


def presented_key(request: Request) -> str | None:
    """``Authorization: Bearer <key>``, or HTTP Basic with the key as user name (Segment SDKs)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "bearer":
        return credentials
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0]
    return None
