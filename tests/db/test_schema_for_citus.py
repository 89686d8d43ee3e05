"""The schema can be distributed with Citus without changing a query (see docs/scaling.md):
project data on project_id, organization data on org_id. Checked on the migrated catalog and on
the SQL in every module of the ingest/store package."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import asyncpg

from ingest import store

# A project's data: every unique key must include the project id. projects is keyed by its own
# id, which is the project id (a reference table on the cluster; see docs/scaling.md).
PROJECT_TABLES = {
    "events": "project_id",
    "event_dedup": "project_id",
    "projects": "id",
    "user_profiles": "project_id",
    "suppressions": "project_id",
    "erasures": "project_id",
    "destinations": "project_id",
    "outbox": "project_id",
    "deliveries": "project_id",
    "rejections": "project_id",
}
# An organization's data that grows with use (the audit log is kept forever): distributed on
# org_id, co-located with each other, not with the project tables.
ORG_TABLES = {"audit_log": "org_id", "idempotency_keys": "org_id"}
# Tenant tables and their distribution column: every unique key must include it.
DISTRIBUTED = PROJECT_TABLES | ORG_TABLES
# Not tenant data, or not always a project's: organizations, api_keys (an org's secret keys
# have no project), and project_deletions (a handful of rows, written with the projects row it
# outlives). Copied to every node by create_reference_table.
# console_sessions: a few rows per signed-in person, looked up by cookie before the
# organization is known.
REFERENCE = {"organizations", "api_keys", "project_deletions", "console_sessions"}
# Stays on the coordinator: the migrations' own bookkeeping.
LOCAL = {"schema_migrations"}

_UNIQUE_KEYS = """
    SELECT t.relname AS table_name, i.relname AS index_name,
           array_agg(a.attname::text ORDER BY a.attnum) AS columns
    FROM pg_index AS x
    JOIN pg_class AS i ON i.oid = x.indexrelid
    JOIN pg_class AS t ON t.oid = x.indrelid
    JOIN pg_namespace AS n ON n.oid = t.relnamespace
    JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)
    WHERE n.nspname = 'public'
      AND x.indisunique
      AND NOT t.relispartition
    GROUP BY 1, 2
"""

_FOREIGN_KEYS = """
    SELECT c.conname, src.relname AS source, dst.relname AS target,
           (SELECT array_agg(attname::text) FROM pg_attribute
            WHERE attrelid = c.conrelid AND attnum = ANY(c.conkey)) AS source_columns,
           (SELECT array_agg(attname::text) FROM pg_attribute
            WHERE attrelid = c.confrelid AND attnum = ANY(c.confkey)) AS target_columns
    FROM pg_constraint AS c
    JOIN pg_class AS src ON src.oid = c.conrelid
    JOIN pg_class AS dst ON dst.oid = c.confrelid
    WHERE c.contype = 'f'
      AND NOT src.relispartition
"""


async def test_every_table_is_classified(conn: asyncpg.Connection) -> None:
    """A table added by a migration must be placed here (and in docs/scaling.md) first."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    top_level = {
        t["table_name"]
        for t in tables
        if not await conn.fetchval(
            "SELECT relispartition FROM pg_class WHERE oid = $1::regclass", t["table_name"]
        )
    }
    assert top_level == set(DISTRIBUTED) | REFERENCE | LOCAL


async def test_every_unique_key_of_a_distributed_table_holds_its_distribution_column(
    conn: asyncpg.Connection,
) -> None:
    keys = await conn.fetch(_UNIQUE_KEYS)
    checked = set()
    for key in keys:
        column = DISTRIBUTED.get(key["table_name"])
        if column is None:
            continue
        checked.add(key["table_name"])
        assert column in key["columns"], (key["index_name"], key["columns"])
    # events has none (partitioned; dedup lives in event_dedup): the others must be seen.
    assert checked == set(DISTRIBUTED) - {"events"}
    # The partitioned table's b-tree indexes are project-first too, so each is shard-local. The
    # one BRIN (received_at, for the console's live view) is not unique and summarises the
    # pages of its own shard: placement does not matter to it.
    for index in await conn.fetch(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'events'"
    ):
        if "USING brin (received_at)" in index["indexdef"]:
            continue
        assert re.search(r"\(project_id\b", index["indexdef"]), index["indexdef"]


async def test_no_foreign_key_joins_two_distributed_tables_off_project_id(
    conn: asyncpg.Connection,
) -> None:
    links = await conn.fetch(_FOREIGN_KEYS)
    for link in links:
        if link["source"] in DISTRIBUTED and link["target"] in DISTRIBUTED:
            assert DISTRIBUTED[link["source"]] in link["source_columns"], link["conname"]
            assert DISTRIBUTED[link["target"]] in link["target_columns"], link["conname"]
    # Citus refuses a foreign key from a reference table to a distributed one: this is the
    # only one, and docs/scaling.md says what the cluster does about it.
    into_distributed = {
        (link["source"], link["target"])
        for link in links
        if link["source"] in REFERENCE and link["target"] in DISTRIBUTED
    }
    assert into_distributed == {("api_keys", "projects")}


def _constants() -> Iterator[tuple[str, Any]]:
    """Every constant (upper-case or private name) of every module of the store package. A
    name that one module imports from another is yielded once; no two modules define one name."""
    seen: dict[str, Any] = {}
    modules = [store] + [
        importlib.import_module(f"{store.__name__}.{module.name}")
        for module in pkgutil.iter_modules(store.__path__)
    ]
    for module in modules:
        for name, value in vars(module).items():
            if name.startswith("__"):  # the module's own attributes: __doc__, __file__, ...
                continue
            if not name.startswith("_") and not name.isupper():
                continue
            if name in seen:
                assert value is seen[name], f"{name} is defined twice in {store.__name__}"
                continue
            seen[name] = value
            yield name, value


def _statements() -> dict[str, str]:
    """Every SQL string of the store, by constant name (strings in tuples and dicts too)."""
    found: dict[str, str] = {}
    for name, value in _constants():
        if isinstance(value, str):
            found[name] = value
        elif isinstance(value, tuple | dict):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                for i, text in enumerate(item if isinstance(item, tuple) else (item,)):
                    if isinstance(text, str):
                        found[f"{name}[{key}][{i}]"] = text
    return found


def test_statements_reading_two_tables_are_reviewed() -> None:
    """A statement reading a reference and a distributed table (a join, or a subquery such as
    EXISTS) is planned differently by Citus: each is listed here and in docs/scaling.md."""
    tables = {}
    for name, query in _statements().items():
        named = set(re.findall(r"\b(?:INTO|UPDATE)\s+(\w+)", query, re.IGNORECASE))
        # Not a function called in FROM (unnest, jsonb_array_elements, ingest_claim_events).
        named |= set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)\b(?!\s*\()", query, re.IGNORECASE))
        # Nor a CTE's name.
        named -= set(re.findall(r"(?:\bWITH|,)\s+(\w+)\s+AS\s+(?:MATERIALIZED\s+)?\(", query))
        named -= {"SET", "SKIP"}  # FOR UPDATE SKIP LOCKED
        if len(named) > 1:
            tables[name] = named
    assert tables == {
        "_FIND_KEY": {"api_keys", "projects"},
        "_EVENT_PARTITIONS": {"pg_inherits", "pg_class"},
        # Forwarding: the delivery worker's scan of due destinations (projects is a reference
        # table; outbox is co-located with destinations on project_id), its delete-and-record
        # of a delivered batch (one project), and the expiry sweep.
        "_DUE_DESTINATIONS": {"destinations", "projects", "outbox"},
        "_DELIVERED": {"outbox", "deliveries"},
        "_EXPIRE_PENDING": {"outbox", "projects"},
    }


# "FROM a AS x [LEFT] JOIN b AS y ON <condition>" in a query constant of the store.
_JOIN = re.compile(
    r"FROM\s+(\w+)\s+AS\s+(\w+)\s+(?:LEFT\s+)?JOIN\s+(\w+)\s+AS\s+(\w+)\s+ON\s+([^\n]+)",
    re.IGNORECASE,
)


def test_store_joins_distributed_tables_only_on_the_project() -> None:
    queries = {
        name: value
        for name, value in _constants()
        if isinstance(value, str) and re.search(r"\bJOIN\b", value, re.IGNORECASE)
    }
    joins = {}
    for name, query in queries.items():
        found = _JOIN.findall(query)
        assert len(found) == len(re.findall(r"\bJOIN\b", query, re.IGNORECASE)), name
        joins[name] = found
    # Every join the service runs, listed: a new one is reviewed here before it lands.
    assert {n: [(a, b) for a, _, b, _, _ in j] for n, j in joins.items()} == {
        "_FIND_KEY": [("api_keys", "projects")],
        "_EVENT_PARTITIONS": [("pg_inherits", "pg_class")],
        # Each outbox row with its own project's forward_queue_days.
        "_EXPIRE_PENDING": [("outbox", "projects")],
    }
    for found in joins.values():
        for left, left_alias, right, right_alias, condition in found:
            if left in DISTRIBUTED and right in DISTRIBUTED:
                sides = {s.strip() for s in condition.split("=")}
                assert sides == {
                    f"{left_alias}.{DISTRIBUTED[left]}",
                    f"{right_alias}.{DISTRIBUTED[right]}",
                }, condition
    # Every change to a distributed table names its tenant: each runs on one shard. The
    # exceptions are the hourly purge of expired Idempotency-Keys, across every organization,
    # the forwarder's sweep of outbox rows past their age, across every project, and the hourly
    # purge of the console's day-old refused events (multi-shard statements; docs/scaling.md).
    multi_shard = {"_DELETE_EXPIRED_IDEMPOTENCY", "_EXPIRE_PENDING", "_DELETE_OLD_REJECTIONS"}
    seen = set()
    for name, value in _statements().items():
        change = re.search(r"\b(?:DELETE FROM|UPDATE)\s+(\w+)", value)
        if change is None or change.group(1) not in DISTRIBUTED:
            continue
        table = change.group(1)
        if name in multi_shard:
            seen.add(name)
            continue
        assert re.search(rf"\b{DISTRIBUTED[table]} = \$1\b", value), name
    assert seen == multi_shard
