"""Each project's keys: unwrapped from the database with the keyring, wrapped for legacy rows at
start, replaced by a crypto-shred."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from ingest.keyring import Keyring, MasterKeyError, ProjectKeys, Sealer
from ingest.store._db import Connection, StoreBase


@dataclass(frozen=True, slots=True)
class ProjectCrypto:
    """What a project's identifiers need: the pseudonym key (suppressions, receipts), the
    sealer (None while its key material is not wrapped yet), and whether new digests are
    stored sealed."""

    pseudonym: bytes
    sealer: Sealer | None
    protected: bool
    # The wrapped key material as stored (None while not wrapped yet): what a writer that
    # sealed with these keys shows the database to prove they are still the project's.
    wrapped: bytes | None = None

    @property
    def storage(self) -> str:
        """projects.digest_storage."""
        return "protected" if self.protected else "plain"

    @property
    def seals(self) -> Sealer | None:
        """The sealer new rows are sealed with, or None when they are stored plain."""
        return self.sealer if self.protected else None


_PROJECTS_KEYS: Final = """
    SELECT id, sealed_keys, pseudonym_key, digest_storage
    FROM projects
    WHERE id = ANY($1::uuid[])
"""

_PROJECT_KEYS_OF_ORG: Final = """
    SELECT id, sealed_keys, pseudonym_key, digest_storage
    FROM projects
    WHERE id = $1
      AND org_id = $2
"""

_UNWRAPPED: Final = """
    SELECT id, pseudonym_key
    FROM projects
    WHERE sealed_keys IS NULL
"""

_WRAP: Final = """
    UPDATE projects
    SET sealed_keys = $2, pseudonym_key = NULL
    WHERE id = $1
      AND sealed_keys IS NULL
"""

_ANY_WRAPPED: Final = """
    SELECT id, sealed_keys
    FROM projects
    WHERE sealed_keys IS NOT NULL
    LIMIT 1
"""

_WRAPPED: Final = """
    SELECT id, sealed_keys
    FROM projects
    WHERE sealed_keys IS NOT NULL
    ORDER BY id
"""

# Only if unchanged since read: a crypto-shred meanwhile wins.
_REWRAP: Final = """
    UPDATE projects
    SET sealed_keys = $3
    WHERE id = $1
      AND sealed_keys = $2
"""

_KEYS_FOR_UPDATE: Final = """
    SELECT sealed_keys, pseudonym_key
    FROM projects
    WHERE id = $1
      AND org_id = $2
    FOR UPDATE
"""

_SHRED: Final = """
    UPDATE projects
    SET sealed_keys = $3, pseudonym_key = NULL, shredded_at = now()
    WHERE id = $1
      AND org_id = $2
    RETURNING shredded_at
"""


def crypto_of(keyring: Keyring | None, row: asyncpg.Record) -> ProjectCrypto:
    protected = row["digest_storage"] == "protected"
    if row["sealed_keys"] is None:
        return ProjectCrypto(bytes(row["pseudonym_key"]), None, protected)
    if keyring is None:
        raise MasterKeyError("this needs the master key (INGEST_MASTER_KEY)")
    wrapped = bytes(row["sealed_keys"])
    sealer = keyring.sealer(row["id"], wrapped)
    return ProjectCrypto(sealer.keys.pseudonym, sealer, protected, wrapped)


async def projects_crypto(
    conn: Connection, keyring: Keyring | None, project_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ProjectCrypto]:
    rows = await conn.fetch(_PROJECTS_KEYS, list(project_ids))
    return {r["id"]: crypto_of(keyring, r) for r in rows}


class SealingMixin(StoreBase):
    async def project_crypto(
        self, project_id: uuid.UUID, org_id: uuid.UUID | None = None
    ) -> ProjectCrypto | None:
        """The project's keys (of ``org_id``'s projects only, when given); None if missing."""
        async with self.pool.acquire() as conn:
            if org_id is None:
                found = await projects_crypto(conn, self.keyring, [project_id])
                return found.get(project_id)
            row = await conn.fetchrow(_PROJECT_KEYS_OF_ORG, project_id, org_id)
        return None if row is None else crypto_of(self.keyring, row)

    async def project_sealer(self, project_id: uuid.UUID) -> Sealer | None:
        """What opens the project's sealed digests; None when it has none (or is gone)."""
        crypto = await self.project_crypto(project_id)
        return crypto.sealer if crypto is not None else None

    async def project_key(self, org_id: uuid.UUID, project_id: uuid.UUID) -> bytes | None:
        """The project's pseudonym key (keyed digests of its subjects); None if missing."""
        crypto = await self.project_crypto(project_id, org_id)
        return None if crypto is None else crypto.pseudonym

    async def wrap_project_keys(self) -> int:
        """Check that the master key opens the projects' keys, then wrap every project key still
        stored plain (rows from before the keyring, or made outside the service). Returns how
        many were wrapped. Raises MasterKeyError when the master key is not the one that
        wrapped the others (hosts must share one)."""
        keyring = self.require_keyring()
        async with self.pool.acquire() as conn:
            sample = await conn.fetchrow(_ANY_WRAPPED)
            if sample is not None:
                try:
                    keyring.unwrap(sample["id"], bytes(sample["sealed_keys"]))
                except MasterKeyError:
                    raise MasterKeyError(
                        "this master key does not open the projects' keys: every host needs "
                        "the master key the projects were made with"
                    ) from None
            wrapped = 0
            for row in await conn.fetch(_UNWRAPPED):
                sealed = keyring.wrap(row["id"], ProjectKeys.generate(bytes(row["pseudonym_key"])))
                if await conn.execute(_WRAP, row["id"], sealed) == "UPDATE 1":
                    wrapped += 1
        return wrapped

    async def rewrap_project_keys(self) -> int:
        """Wrap every project's keys that an older master key wrapped under the current one
        (a master key rotation); how many. Each project is its own short statement."""
        keyring = self.require_keyring()
        done = 0
        async with self.pool.acquire() as conn:
            for row in await conn.fetch(_WRAPPED):
                old = bytes(row["sealed_keys"])
                if keyring.wrapped_by_current(old):
                    continue
                new = keyring.wrap(row["id"], keyring.unwrap(row["id"], old))
                if await conn.execute(_REWRAP, row["id"], old, new) == "UPDATE 1":
                    done += 1
        return done

    async def shred_keys(
        self, conn: Connection, org_id: uuid.UUID, project_id: uuid.UUID
    ) -> datetime | None:
        """Replace the project's data key inside the caller's transaction: every digest sealed
        so far can no longer be opened by anyone. The pseudonym key stays, so suppressions
        keep holding. When it happened; None when the project is missing."""
        keyring = self.require_keyring()
        row = await conn.fetchrow(_KEYS_FOR_UPDATE, project_id, org_id)
        if row is None:
            return None
        if row["sealed_keys"] is not None:
            pseudonym = keyring.unwrap(project_id, bytes(row["sealed_keys"])).pseudonym
        else:
            pseudonym = bytes(row["pseudonym_key"])
        sealed = keyring.wrap(project_id, ProjectKeys.generate(pseudonym))
        done: datetime = await conn.fetchval(_SHRED, project_id, org_id, sealed)
        return done
