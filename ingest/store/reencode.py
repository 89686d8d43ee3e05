"""``ingest reencode``: seal the digests that protected projects still hold plain (rows written
before the keyring, or while a project stored them plain), online, in short batches."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ingest.keyring import Sealer
from ingest.store._db import DIGEST_FIELDS, JSON_FIELDS, Connection
from ingest.store.retention import _EVENT_PARTITIONS
from ingest.store.sealing import SealingMixin, crypto_of

# Blocks of one partition read per batch (8 KiB each): a few thousand rows.
REENCODE_BLOCKS: Final = 128
REENCODE_ROWS: Final = 1000
_PARTITION_TABLE: Final = re.compile(r"events_[a-z0-9_]+")

_PROTECTED_PROJECTS: Final = """
    SELECT id, sealed_keys, pseudonym_key, digest_storage
    FROM projects
    WHERE digest_storage = 'protected'
      AND sealed_keys IS NOT NULL
    ORDER BY id
"""

# A row that still holds a plain digest somewhere.
_PLAIN: Final = " OR ".join(
    [f"{c} ~ '^[0-9a-f]{{64}}$'" for c in DIGEST_FIELDS]
    + [f"{c}::text ~ '[0-9a-f]{{64}}'" for c in JSON_FIELDS]
)
_DIGEST_LIST: Final = ", ".join(DIGEST_FIELDS)
_JSON_LIST: Final = ", ".join(JSON_FIELDS)

_PARTITION_BLOCKS: Final = """
    SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint
"""

# {table} is a partition name read from the catalog and checked against _PARTITION_TABLE.
_EVENTS_BATCH: Final = f"""
    SELECT ctid, message_id, {_DIGEST_LIST}, {_JSON_LIST}
    FROM {{table}}
    WHERE project_id = $1
      AND ctid >= format('(%s,0)', $2::bigint)::tid
      AND ctid < format('(%s,0)', $3::bigint)::tid
      AND ({_PLAIN})
"""

_SET_SEALED: Final = ", ".join(f"{c} = u.{c}" for c in (*DIGEST_FIELDS, *JSON_FIELDS))
_UNNEST_SEALED: Final = (
    "$4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[]"
)
_UNNEST_NAMES: Final = f"{_DIGEST_LIST}, {_JSON_LIST}"

# Matched on ctid and message id: a row deleted meanwhile (an erasure) leaves a ctid that a
# later insert may reuse, and that row is not the one read.
_EVENTS_UPDATE: Final = f"""
    UPDATE {{table}} AS e
    SET {_SET_SEALED}
    FROM unnest($2::tid[], $3::text[], {_UNNEST_SEALED})
        AS u(ctid, message_id, {_UNNEST_NAMES})
    WHERE e.project_id = $1
      AND e.ctid = u.ctid
      AND e.message_id = u.message_id
"""

_OUTBOX_BATCH: Final = f"""
    SELECT id, {_DIGEST_LIST}, {_JSON_LIST}
    FROM outbox
    WHERE project_id = $1
      AND id > $2
      AND ({_PLAIN})
    ORDER BY id
    LIMIT $3
"""

_OUTBOX_UPDATE: Final = f"""
    UPDATE outbox AS o
    SET {_SET_SEALED}
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                $8::jsonb[], $9::jsonb[])
        AS u(id, {_UNNEST_NAMES})
    WHERE o.project_id = $1
      AND o.id = u.id
"""

_PROFILES_BATCH: Final = """
    SELECT user_id, traits
    FROM user_profiles
    WHERE project_id = $1
      AND user_id > $2
      AND traits::text ~ '[0-9a-f]{64}'
    ORDER BY user_id
    LIMIT $3
"""

_PROFILES_UPDATE: Final = """
    UPDATE user_profiles AS p
    SET traits = u.traits
    FROM unnest($2::text[], $3::jsonb[]) AS u(user_id, traits)
    WHERE p.project_id = $1
      AND p.user_id = u.user_id
"""


@dataclass(slots=True)
class ReencodeResult:
    projects: int = 0
    rows: dict[str, int] = field(
        default_factory=lambda: {"events": 0, "outbox": 0, "user_profiles": 0}
    )

    def as_dict(self) -> dict[str, Any]:
        return {"projects": self.projects, "rows_reencoded": self.rows}


Progress = Callable[[dict[str, Any]], None]


def _sealed_columns(sealer: Sealer, row: Any) -> list[Any]:
    """The digest and JSON columns of ``row``, sealed (JSON as encoded bytes)."""
    out: list[Any] = [sealer.seal_optional(row[c]) for c in DIGEST_FIELDS]
    for c in JSON_FIELDS:
        value = row[c]
        out.append(None if value is None else sealer.seal_json(orjson.dumps(value)))
    return out


def _columns(rows: list[list[Any]], width: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(width)]


class ReencodeMixin(SealingMixin):
    async def reencode(
        self,
        progress: Progress,
        *,
        blocks: int = REENCODE_BLOCKS,
        batch_rows: int = REENCODE_ROWS,
    ) -> ReencodeResult:
        """Seal every plain digest of every protected project: events (a partition at a time,
        ``blocks`` pages a statement), waiting forwards and current states. Each batch commits
        on its own, so writers go on; a second run finds nothing left to do."""
        result = ReencodeResult()
        async with self.pool.acquire() as conn:
            projects = await conn.fetch(_PROTECTED_PROJECTS)
            partitions = [
                r["relname"]
                for r in await conn.fetch(_EVENT_PARTITIONS)
                if _PARTITION_TABLE.fullmatch(r["relname"])
            ]
            for project in projects:
                sealer = crypto_of(self.keyring, project).sealer
                assert sealer is not None  # noqa: S101  # sealed_keys IS NOT NULL
                pid: uuid.UUID = project["id"]
                result.projects += 1
                for table in partitions:
                    done = await self._reencode_partition(
                        conn, pid, sealer, table, blocks, progress
                    )
                    result.rows["events"] += done
                result.rows["outbox"] += await self._reencode_outbox(conn, pid, sealer, batch_rows)
                result.rows["user_profiles"] += await self._reencode_profiles(
                    conn, pid, sealer, batch_rows
                )
                progress({"project": str(pid), "done": True, **result.as_dict()})
        return result

    @staticmethod
    async def _reencode_partition(
        conn: Connection,
        project_id: uuid.UUID,
        sealer: Sealer,
        table: str,
        blocks: int,
        progress: Progress,
    ) -> int:
        total = int(await conn.fetchval(_PARTITION_BLOCKS, table))
        select = _EVENTS_BATCH.replace("{table}", f'"{table}"')
        update = _EVENTS_UPDATE.replace("{table}", f'"{table}"')
        done = 0
        # One block past the size read: rows appended meanwhile are sealed already.
        for start in range(0, total + 1, blocks):
            rows = await conn.fetch(select, project_id, start, start + blocks)
            if rows:
                sealed = [[r["ctid"], r["message_id"], *_sealed_columns(sealer, r)] for r in rows]
                status = await conn.execute(update, project_id, *_columns(sealed, 9))
                done += int(status.split()[-1])
                progress(
                    {
                        "project": str(project_id),
                        "table": table,
                        "blocks": min(start + blocks, total),
                        "of": total,
                        "rows": done,
                    }
                )
        return done

    @staticmethod
    async def _reencode_outbox(
        conn: Connection, project_id: uuid.UUID, sealer: Sealer, batch_rows: int
    ) -> int:
        done, after = 0, 0
        while rows := await conn.fetch(_OUTBOX_BATCH, project_id, after, batch_rows):
            sealed = [[r["id"], *_sealed_columns(sealer, r)] for r in rows]
            status = await conn.execute(_OUTBOX_UPDATE, project_id, *_columns(sealed, 8))
            done += int(status.split()[-1])
            after = rows[-1]["id"]
        return done

    @staticmethod
    async def _reencode_profiles(
        conn: Connection, project_id: uuid.UUID, sealer: Sealer, batch_rows: int
    ) -> int:
        done, after = 0, ""
        while rows := await conn.fetch(_PROFILES_BATCH, project_id, after, batch_rows):
            ids = [r["user_id"] for r in rows]
            traits = [sealer.seal_json(orjson.dumps(r["traits"])) for r in rows]
            status = await conn.execute(_PROFILES_UPDATE, project_id, ids, traits)
            done += int(status.split()[-1])
            after = ids[-1]
        return done
