"""The partner API's audit log: who did what, kept per organization."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ingest.store._db import Connection, StoreBase


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One audit row: who (key, request) did what to which target."""

    org_id: uuid.UUID
    key_id: uuid.UUID | None
    request_id: str | None
    action: str
    target_type: str
    target_id: str
    project_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    entry_id: uuid.UUID
    occurred_at: datetime
    key_id: uuid.UUID | None
    request_id: str | None
    action: str
    target_type: str
    target_id: str
    project_id: uuid.UUID | None
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.entry_id),
            "occurred_at": self.occurred_at.isoformat(),
            "key_id": str(self.key_id) if self.key_id else None,
            "request_id": self.request_id,
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id},
            "project_id": str(self.project_id) if self.project_id else None,
            "details": self.details,
        }


_INSERT_AUDIT: Final = """
    INSERT INTO audit_log (
        org_id, id, key_id, request_id, action, target_type, target_id, project_id, details
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

_LIST_AUDIT: Final = """
    SELECT seq, id, occurred_at, key_id, request_id, action, target_type, target_id, project_id,
           details
    FROM audit_log
    WHERE org_id = $1
      AND seq < $2
      AND ($3::text IS NULL OR action = $3)
      AND ($4::uuid IS NULL OR key_id = $4)
    ORDER BY seq DESC
    LIMIT $5
"""


class AuditMixin(StoreBase):
    @staticmethod
    async def audit(conn: Connection, entry: AuditEntry) -> None:
        await conn.execute(
            _INSERT_AUDIT,
            entry.org_id,
            uuid.uuid4(),
            entry.key_id,
            entry.request_id,
            entry.action,
            entry.target_type,
            entry.target_id,
            entry.project_id,
            entry.details,
        )

    async def list_audit(
        self,
        org_id: uuid.UUID,
        *,
        before_seq: int | None,
        limit: int,
        action: str | None = None,
        key_id: uuid.UUID | None = None,
    ) -> list[AuditRecord]:
        """The organization's audit rows, newest first, older than ``before_seq``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                _LIST_AUDIT,
                org_id,
                before_seq if before_seq is not None else 2**63 - 1,
                action,
                key_id,
                limit,
            )
        return [
            AuditRecord(
                r["seq"],
                r["id"],
                r["occurred_at"],
                r["key_id"],
                r["request_id"],
                r["action"],
                r["target_type"],
                r["target_id"],
                r["project_id"],
                dict(r["details"]),
            )
            for r in rows
        ]
