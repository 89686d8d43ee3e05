"""Organizations, projects and their API keys: who may write where, and with which key."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from ingest import keys
from ingest.keyring import ProjectKeys
from ingest.store._db import Connection, StoreBase, _iso, _one

# The column defaults of sql/0003_project_retention.sql: 13 months of events, 7 days of dedup.
DEFAULT_EVENTS_RETENTION_DAYS: Final = 395
DEFAULT_DEDUP_WINDOW_DAYS: Final = 7
# The forward queue (sql/0006): a day for a row to be delivered, a week for a dead letter.
DEFAULT_FORWARD_QUEUE_DAYS: Final = 1
DEFAULT_DEAD_LETTER_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: uuid.UUID
    kind: keys.KeyKind
    org_id: uuid.UUID
    project_id: uuid.UUID | None
    default_country: str | None
    is_server_side: bool
    digest: bytes
    # The project's browser origin allow-list; None accepts any Origin.
    allowed_origins: tuple[str, ...] | None = None
    # The project stores the SHA-256 of an email- or phone-shaped id instead of refusing it.
    hash_identifiers: bool = False


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: uuid.UUID
    kind: keys.KeyKind
    plaintext: str
    display_prefix: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.key_id),
            "kind": str(self.kind),
            "key": self.plaintext,
            "prefix": self.display_prefix,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Project:
    project_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    default_country: str | None
    created_at: datetime
    allowed_origins: tuple[str, ...] | None = None
    events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS
    dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS
    identifier_pii: str = "reject"
    forward_queue_days: int = DEFAULT_FORWARD_QUEUE_DAYS
    dead_letter_days: int = DEFAULT_DEAD_LETTER_DAYS
    digest_storage: str = "protected"
    shredded_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.project_id),
            "name": self.name,
            "default_country": self.default_country,
            "allowed_origins": (
                list(self.allowed_origins) if self.allowed_origins is not None else None
            ),
            "events_retention_days": self.events_retention_days,
            "dedup_window_days": self.dedup_window_days,
            "forward_queue_days": self.forward_queue_days,
            "dead_letter_days": self.dead_letter_days,
            "identifier_pii": self.identifier_pii,
            "digest_storage": self.digest_storage,
            "shredded_at": _iso(self.shredded_at),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ProjectChanges:
    """A PATCH of a project: each ``set_*`` flag says whether its field was given."""

    set_name: bool = False
    name: str | None = None
    set_default_country: bool = False
    default_country: str | None = None
    set_allowed_origins: bool = False
    allowed_origins: tuple[str, ...] | None = None
    # None leaves the retention as it is (on create: the column default).
    events_retention_days: int | None = None
    dedup_window_days: int | None = None
    forward_queue_days: int | None = None
    dead_letter_days: int | None = None
    # None leaves it as it is (on create: "reject").
    identifier_pii: str | None = None
    # None leaves it as it is (on create: "protected").
    digest_storage: str | None = None

    def given(self) -> list[str]:
        """The names of the fields this change sets (what the audit log records)."""
        named = {
            "name": self.set_name,
            "default_country": self.set_default_country,
            "allowed_origins": self.set_allowed_origins,
            "events_retention_days": self.events_retention_days is not None,
            "dedup_window_days": self.dedup_window_days is not None,
            "forward_queue_days": self.forward_queue_days is not None,
            "dead_letter_days": self.dead_letter_days is not None,
            "identifier_pii": self.identifier_pii is not None,
            "digest_storage": self.digest_storage is not None,
        }
        return [name for name, is_set in named.items() if is_set]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as lists show it: never the key itself, which only its creation answer holds."""

    key_id: uuid.UUID
    kind: keys.KeyKind
    project_id: uuid.UUID | None
    display_prefix: str
    is_server_side: bool
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    replaced_by: uuid.UUID | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None or (self.expires_at is not None and self.expires_at <= now):
            return "revoked"
        return "active" if self.expires_at is None else "expiring"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.key_id),
            "kind": str(self.kind),
            "prefix": self.display_prefix,
            "status": self.status(now),
            "created_at": self.created_at.isoformat(),
            "revoked_at": _iso(self.revoked_at),
            "expires_at": _iso(self.expires_at),
            "replaced_by": str(self.replaced_by) if self.replaced_by else None,
        }
        if self.kind is keys.KeyKind.WRITE:
            out["project_id"] = str(self.project_id)
            out["server_side"] = self.is_server_side
        return out


def _key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        row["id"],
        keys.KeyKind(row["kind"]),
        row["project_id"],
        row["display_prefix"],
        row["is_server_side"],
        row["created_at"],
        row["revoked_at"],
        row["expires_at"],
        row["replaced_by"],
    )


class LastSecretKey(Exception):
    """Revoking this key would leave its organization without a working secret key."""


def _origins(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _project(row: asyncpg.Record) -> Project:
    return Project(
        row["id"],
        row["org_id"],
        row["name"],
        row["default_country"],
        row["created_at"],
        _origins(row["allowed_origins"]),
        row["events_retention_days"],
        row["dedup_window_days"],
        row["identifier_pii"],
        row["forward_queue_days"],
        row["dead_letter_days"],
        row["digest_storage"],
        row["shredded_at"],
    )


_INSERT_ORG: Final = """
    INSERT INTO organizations (id, name)
    VALUES ($1, $2)
"""

_INSERT_KEY: Final = """
    INSERT INTO api_keys (id, org_id, project_id, kind, digest, display_prefix, is_server_side)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING created_at
"""

_INSERT_PROJECT: Final = """
    INSERT INTO projects (
        id, org_id, name, default_country, allowed_origins, events_retention_days,
        dedup_window_days, identifier_pii, forward_queue_days, dead_letter_days, digest_storage,
        sealed_keys, pseudonym_key
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)
    RETURNING created_at
"""

_FIND_KEY: Final = """
    SELECT k.id, k.kind, k.org_id, k.project_id, k.is_server_side, k.digest, p.default_country,
           p.allowed_origins, p.identifier_pii
    FROM api_keys AS k
    LEFT JOIN projects AS p ON p.id = k.project_id
    WHERE k.digest = $1
      AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
"""

_GET_PROJECT: Final = """
    SELECT id, org_id, name, default_country, created_at, allowed_origins, events_retention_days,
           dedup_window_days, identifier_pii, forward_queue_days, dead_letter_days, digest_storage,
           shredded_at
    FROM projects
    WHERE id = $1
      AND org_id = $2
"""

# Each field is replaced only when its flag is set, so a PATCH can set a column to NULL.
# A NULL retention leaves the column as it is (the columns are NOT NULL, so NULL never means
# "clear" for them).
_UPDATE_PROJECT: Final = """
    UPDATE projects
    SET name = CASE WHEN $3::boolean THEN $4::text ELSE name END,
        default_country = CASE WHEN $5::boolean THEN $6::text ELSE default_country END,
        allowed_origins = CASE WHEN $7::boolean THEN $8::text[] ELSE allowed_origins END,
        events_retention_days = coalesce($9::integer, events_retention_days),
        dedup_window_days = coalesce($10::integer, dedup_window_days),
        identifier_pii = coalesce($11::text, identifier_pii),
        forward_queue_days = coalesce($12::integer, forward_queue_days),
        dead_letter_days = coalesce($13::integer, dead_letter_days),
        digest_storage = coalesce($14::text, digest_storage)
    WHERE id = $1
      AND org_id = $2
    RETURNING id, org_id, name, default_country, created_at, allowed_origins,
              events_retention_days, dedup_window_days, identifier_pii, forward_queue_days,
              dead_letter_days, digest_storage, shredded_at
"""


_LIST_PROJECTS: Final = """
    SELECT id, org_id, name, default_country, created_at, allowed_origins, events_retention_days,
           dedup_window_days, identifier_pii, forward_queue_days, dead_letter_days, digest_storage,
           shredded_at
    FROM projects
    WHERE org_id = $1
    ORDER BY created_at, id
"""


_KEY_COLUMNS: Final = """
    id, kind, project_id, display_prefix, is_server_side, created_at, revoked_at, expires_at,
    replaced_by
"""

_LIST_PROJECT_KEYS: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE org_id = $1
      AND project_id = $2
    ORDER BY created_at, id
"""

_LIST_SECRET_KEYS: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE org_id = $1
      AND kind = 'secret'
    ORDER BY created_at, id
"""

# $3 is the project (NULL for an organization's secret keys); the kind must match too, so the
# project route never reaches a secret key and the other way round.
_GET_KEY_FOR_UPDATE: Final = f"""
    SELECT {_KEY_COLUMNS}
    FROM api_keys
    WHERE id = $1
      AND org_id = $2
      AND project_id IS NOT DISTINCT FROM $3
      AND kind = $4
    FOR UPDATE
"""

# Locks every secret key of the organization (in one order), then counts the ones that will
# keep working: not revoked and not expiring. Two revocations at once serialize here, so they
# can never both see "another one is left" and leave the organization locked out.
_LOCK_ORG_PARTNER_KEYS: Final = """
    SELECT id, revoked_at IS NULL AND expires_at IS NULL AS is_lasting
    FROM api_keys
    WHERE org_id = $1
      AND kind = 'secret'
    ORDER BY id
    FOR UPDATE
"""

_REVOKE_KEY: Final = f"""
    UPDATE api_keys
    SET revoked_at = coalesce(revoked_at, now())
    WHERE id = $1
    RETURNING {_KEY_COLUMNS}
"""

# A grace period of 0 revokes at once; otherwise the key expires when it ends.
_RETIRE_KEY: Final = f"""
    UPDATE api_keys
    SET expires_at = CASE WHEN $2::float8 > 0
                          THEN least(coalesce(expires_at, 'infinity'),
                                     now() + $2::float8 * interval '1 second')
                          ELSE expires_at END,
        revoked_at = CASE WHEN $2::float8 > 0 THEN revoked_at ELSE coalesce(revoked_at, now()) END,
        replaced_by = $3
    WHERE id = $1
    RETURNING {_KEY_COLUMNS}
"""


_ORG_KEY: Final = "SELECT pseudonym_key FROM organizations WHERE id = $1"


class TenancyMixin(StoreBase):
    async def create_org(self, name: str) -> tuple[uuid.UUID, IssuedKey]:
        org_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT_ORG, org_id, name)
            key = await self._insert_key(conn, org_id, None, keys.KeyKind.SECRET)
        return org_id, key

    async def create_project(
        self,
        org_id: uuid.UUID,
        name: str,
        default_country: str | None,
        allowed_origins: Sequence[str] | None = None,
        *,
        events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS,
        dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
        identifier_pii: str = "reject",
        forward_queue_days: int = DEFAULT_FORWARD_QUEUE_DAYS,
        dead_letter_days: int = DEFAULT_DEAD_LETTER_DAYS,
        digest_storage: str = "protected",
        conn: Connection | None = None,
    ) -> tuple[Project, IssuedKey]:
        """A project and its first write key; on ``conn`` (inside the caller's transaction)
        when given."""
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self.create_project(
                    org_id,
                    name,
                    default_country,
                    allowed_origins,
                    events_retention_days=events_retention_days,
                    dedup_window_days=dedup_window_days,
                    identifier_pii=identifier_pii,
                    forward_queue_days=forward_queue_days,
                    dead_letter_days=dead_letter_days,
                    digest_storage=digest_storage,
                    conn=own,
                )
        project_id = uuid.uuid4()
        sealed_keys = self.require_keyring().wrap(project_id, ProjectKeys.generate())
        origins = tuple(allowed_origins) if allowed_origins is not None else None
        created_at = await conn.fetchval(
            _INSERT_PROJECT,
            project_id,
            org_id,
            name,
            default_country,
            list(origins) if origins is not None else None,
            events_retention_days,
            dedup_window_days,
            identifier_pii,
            forward_queue_days,
            dead_letter_days,
            digest_storage,
            sealed_keys,
        )
        key = await self._insert_key(conn, org_id, project_id, keys.KeyKind.WRITE)
        project = Project(
            project_id,
            org_id,
            name,
            default_country,
            created_at,
            origins,
            events_retention_days,
            dedup_window_days,
            identifier_pii,
            forward_queue_days,
            dead_letter_days,
            digest_storage,
        )
        return project, key

    async def get_project(self, org_id: uuid.UUID, project_id: uuid.UUID) -> Project | None:
        """The project if it belongs to ``org_id``; another tenant's is as missing as none."""
        row = await self._fetchrow(_GET_PROJECT, project_id, org_id)
        return None if row is None else _project(row)

    async def update_project(
        self,
        org_id: uuid.UUID,
        project_id: uuid.UUID,
        changes: ProjectChanges,
        *,
        conn: Connection | None = None,
    ) -> Project | None:
        """Apply ``changes``; None when the project is missing or another tenant's."""
        if conn is None:
            async with self.pool.acquire() as own:
                return await self.update_project(org_id, project_id, changes, conn=own)
        origins = changes.allowed_origins
        row = await conn.fetchrow(
            _UPDATE_PROJECT,
            project_id,
            org_id,
            changes.set_name,
            changes.name,
            changes.set_default_country,
            changes.default_country,
            changes.set_allowed_origins,
            list(origins) if origins is not None else None,
            changes.events_retention_days,
            changes.dedup_window_days,
            changes.identifier_pii,
            changes.forward_queue_days,
            changes.dead_letter_days,
            changes.digest_storage,
        )
        return None if row is None else _project(row)

    async def _insert_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        kind: keys.KeyKind,
        *,
        is_server_side: bool = False,
    ) -> IssuedKey:
        new = keys.generate(kind)
        key_id = uuid.uuid4()
        created_at = await conn.fetchval(
            _INSERT_KEY,
            key_id,
            org_id,
            project_id,
            str(kind),
            new.digest,
            new.display_prefix,
            is_server_side,
        )
        return IssuedKey(key_id, kind, new.plaintext, new.display_prefix, created_at)

    async def find_key(self, digest: bytes) -> KeyRecord | None:
        row = await self._fetchrow(_FIND_KEY, digest)
        if row is None:
            return None
        return KeyRecord(
            key_id=row["id"],
            kind=keys.KeyKind(row["kind"]),
            org_id=row["org_id"],
            project_id=row["project_id"],
            default_country=row["default_country"],
            is_server_side=row["is_server_side"],
            digest=row["digest"],
            allowed_origins=_origins(row["allowed_origins"]),
            hash_identifiers=row["identifier_pii"] == "hash",
        )

    # -- projects and keys (the partner API) -----------------------------------------------

    async def list_projects(self, org_id: uuid.UUID) -> list[Project]:
        async with self.pool.acquire() as conn:
            return [_project(row) for row in await conn.fetch(_LIST_PROJECTS, org_id)]

    async def list_keys(self, org_id: uuid.UUID, project_id: uuid.UUID | None) -> list[KeyInfo]:
        """A project's write keys, or (``project_id`` None) the organization's secret keys."""
        async with self.pool.acquire() as conn:
            if project_id is None:
                rows = await conn.fetch(_LIST_SECRET_KEYS, org_id)
            else:
                rows = await conn.fetch(_LIST_PROJECT_KEYS, org_id, project_id)
        return [_key_info(row) for row in rows]

    async def create_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        *,
        is_server_side: bool = False,
    ) -> IssuedKey:
        """A new write key for ``project_id``, or a secret key when it is None."""
        kind = keys.KeyKind.SECRET if project_id is None else keys.KeyKind.WRITE
        return await self._insert_key(conn, org_id, project_id, kind, is_server_side=is_server_side)

    @staticmethod
    async def _key_for_update(
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
    ) -> KeyInfo | None:
        kind = keys.KeyKind.SECRET if project_id is None else keys.KeyKind.WRITE
        row = await conn.fetchrow(_GET_KEY_FOR_UPDATE, key_id, org_id, project_id, str(kind))
        return None if row is None else _key_info(row)

    async def revoke_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
    ) -> KeyInfo | None:
        """Revoke now (again is a no-op); None when missing. Raises LastSecretKey rather than
        lock an organization out: a secret key is revoked only while another one is neither
        revoked nor expiring."""
        if project_id is None:
            org_keys = await conn.fetch(_LOCK_ORG_PARTNER_KEYS, org_id)
            others = [k for k in org_keys if k["is_lasting"] and k["id"] != key_id]
        found = await self._key_for_update(conn, org_id, project_id, key_id)
        if found is None:
            return None
        if project_id is None and found.revoked_at is None and not others:
            raise LastSecretKey()
        return _key_info(_one(await conn.fetchrow(_REVOKE_KEY, key_id)))

    async def rotate_key(
        self,
        conn: Connection,
        org_id: uuid.UUID,
        project_id: uuid.UUID | None,
        key_id: uuid.UUID,
        grace_s: float,
    ) -> tuple[IssuedKey, KeyInfo] | None:
        """Issue the key's successor (same kind, project and server-side flag); the old key
        works for ``grace_s`` more seconds. None when the key is missing or no longer works."""
        found = await self._key_for_update(conn, org_id, project_id, key_id)
        if found is None or found.status(datetime.now(UTC)) == "revoked":
            return None
        issued = await self.create_key(
            conn, org_id, project_id, is_server_side=found.is_server_side
        )
        old = _key_info(_one(await conn.fetchrow(_RETIRE_KEY, key_id, grace_s, issued.key_id)))
        return issued, old

    async def org_key(self, org_id: uuid.UUID) -> bytes:
        row = await self._fetchrow(_ORG_KEY, org_id)
        if row is None:  # the caller's key was just authenticated: its organization exists
            raise LookupError("organization not found")
        key: bytes = row["pseudonym_key"]
        return key
