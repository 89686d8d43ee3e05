"""Idempotency-Key entries: a retried partner call is answered from its first answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from ingest.store._db import Connection, StoreBase


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A claimable Idempotency-Key: scoped to the organization and the calling key."""

    org_id: uuid.UUID
    key_id: uuid.UUID
    key_digest: bytes
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyState:
    """The stored entry of a key that could not be claimed."""

    fingerprint: bytes
    status: int | None
    content_type: str | None
    body: bytes | None
    holds_secret: bool


# A new key, an expired entry (the key is new again), or the entry of a request that died
# holding it (its lock lapsed) with the same request: claimed. Anything else is answered from
# the row (replay, 409 or 422).
_CLAIM_IDEMPOTENCY: Final = """
    INSERT INTO idempotency_keys AS i (
        org_id, key_id, key_digest, fingerprint, locked_until, expires_at
    )
    VALUES ($1, $2, $3, $4, now() + $5::float8 * interval '1 second',
            now() + $6::float8 * interval '1 second')
    ON CONFLICT (org_id, key_id, key_digest) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint,
        locked_until = EXCLUDED.locked_until,
        expires_at = EXCLUDED.expires_at,
        created_at = now(),
        status = NULL,
        content_type = NULL,
        body = NULL,
        holds_secret = false
    WHERE i.expires_at <= now()
       OR (i.status IS NULL AND i.locked_until <= now() AND i.fingerprint = EXCLUDED.fingerprint)
    RETURNING true
"""

_GET_IDEMPOTENCY: Final = """
    SELECT fingerprint, status, content_type, body, holds_secret, locked_until
    FROM idempotency_keys
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
"""

_COMPLETE_IDEMPOTENCY: Final = """
    UPDATE idempotency_keys
    SET status = $5, content_type = $6, body = $7, holds_secret = $8, locked_until = NULL
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
      AND fingerprint = $4
"""

_RELEASE_IDEMPOTENCY: Final = """
    DELETE FROM idempotency_keys
    WHERE org_id = $1
      AND key_id = $2
      AND key_digest = $3
      AND fingerprint = $4
      AND status IS NULL
"""

_DELETE_EXPIRED_IDEMPOTENCY: Final = """
    DELETE FROM idempotency_keys
    WHERE expires_at < $1
      AND ctid = ANY(ARRAY(
          SELECT ctid
          FROM idempotency_keys
          WHERE expires_at < $1
          LIMIT $2
      ))
"""


class IdempotencyMixin(StoreBase):
    async def claim_idempotency(
        self, key: IdempotencyKey, lock_s: float, ttl_s: float
    ) -> IdempotencyState | None:
        """Claim ``key`` for this request (None), or return the entry that holds it."""
        async with self.pool.acquire() as conn:
            claimed = await conn.fetchval(
                _CLAIM_IDEMPOTENCY,
                key.org_id,
                key.key_id,
                key.key_digest,
                key.fingerprint,
                lock_s,
                ttl_s,
            )
            if claimed:
                return None
            row = await conn.fetchrow(_GET_IDEMPOTENCY, key.org_id, key.key_id, key.key_digest)
        if row is None:  # expired and purged between the two statements: a new key
            return await self.claim_idempotency(key, lock_s, ttl_s)
        return IdempotencyState(
            row["fingerprint"], row["status"], row["content_type"], row["body"], row["holds_secret"]
        )

    @staticmethod
    async def complete_idempotency(
        conn: Connection,
        key: IdempotencyKey,
        status: int,
        content_type: str | None,
        body: bytes,
        *,
        holds_secret: bool,
    ) -> None:
        await conn.execute(
            _COMPLETE_IDEMPOTENCY,
            key.org_id,
            key.key_id,
            key.key_digest,
            key.fingerprint,
            status,
            content_type,
            body,
            holds_secret,
        )

    async def release_idempotency(self, key: IdempotencyKey) -> None:
        """Forget a claim whose request failed: the same key may be retried at once."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                _RELEASE_IDEMPOTENCY, key.org_id, key.key_id, key.key_digest, key.fingerprint
            )
