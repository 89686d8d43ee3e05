"""Every SQL statement the service runs, and the pool they run on.

Methods return dataclasses or scalars, never asyncpg records. Errors that carry row data
(asyncpg puts Postgres's DETAIL in the exception text) are never logged from here.

One module per kind of data; Store is their mixins on one pool, and this package exports
every name that callers import from ``ingest.store``.
"""

from __future__ import annotations

import asyncpg

from ingest.keyring import Keyring
from ingest.store._db import (
    DURABILITY_SETTINGS,
    TRANSIENT_ERRORS,
    Connection,
    create_pool,
    init_connection,
    open_event,
)
from ingest.store.audit import AuditEntry, AuditMixin, AuditRecord
from ingest.store.console import ConsoleMixin, ConsoleSession, Rejection
from ingest.store.forwarding import (
    DeadLetter,
    Destination,
    DestinationChanges,
    Failure,
    ForwardingMixin,
    OutboxRow,
    QueueStats,
)
from ingest.store.idempotency import IdempotencyKey, IdempotencyMixin, IdempotencyState
from ingest.store.reencode import ReencodeMixin, ReencodeResult
from ingest.store.retention import (
    PURGE_BATCH_ROWS,
    PURGE_LOCK,
    PurgeResult,
    RetentionMixin,
    partition_day,
    partition_name,
)
from ingest.store.sealing import ProjectCrypto, SealingMixin
from ingest.store.subjects import Identifiers, Profile, Receipt, SubjectsMixin
from ingest.store.tenancy import (
    DEFAULT_DEAD_LETTER_DAYS,
    DEFAULT_DEDUP_WINDOW_DAYS,
    DEFAULT_EVENTS_RETENTION_DAYS,
    DEFAULT_FORWARD_QUEUE_DAYS,
    IssuedKey,
    KeyInfo,
    KeyRecord,
    LastSecretKey,
    Project,
    ProjectChanges,
    TenancyMixin,
)
from ingest.store.writes import _CLAIM_EVENTS, SUBJECT_LOCK, EventWrites, Fate

__all__ = [
    "DEFAULT_DEAD_LETTER_DAYS",
    "DEFAULT_DEDUP_WINDOW_DAYS",
    "DEFAULT_EVENTS_RETENTION_DAYS",
    "DEFAULT_FORWARD_QUEUE_DAYS",
    "DURABILITY_SETTINGS",
    "PURGE_BATCH_ROWS",
    "PURGE_LOCK",
    "SUBJECT_LOCK",
    "TRANSIENT_ERRORS",
    "_CLAIM_EVENTS",
    "AuditEntry",
    "AuditRecord",
    "Connection",
    "ConsoleSession",
    "DeadLetter",
    "Destination",
    "DestinationChanges",
    "EventWrites",
    "Failure",
    "Fate",
    "IdempotencyKey",
    "IdempotencyState",
    "Identifiers",
    "IssuedKey",
    "KeyInfo",
    "KeyRecord",
    "LastSecretKey",
    "OutboxRow",
    "Profile",
    "Project",
    "ProjectChanges",
    "ProjectCrypto",
    "PurgeResult",
    "QueueStats",
    "Receipt",
    "ReencodeResult",
    "Rejection",
    "Store",
    "create_pool",
    "init_connection",
    "open_event",
    "partition_day",
    "partition_name",
]


class Store(
    TenancyMixin,
    RetentionMixin,
    AuditMixin,
    IdempotencyMixin,
    SubjectsMixin,
    ForwardingMixin,
    ConsoleMixin,
    ReencodeMixin,
    SealingMixin,
):
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring | None = None,
        *,
        one_statement_max: int | None = None,
    ) -> None:
        self.pool = pool
        self.keyring = keyring
        self.writes = EventWrites(keyring, one_statement_max=one_statement_max)
