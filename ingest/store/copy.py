"""The writer's binary COPY, with timestamps and JSON sent in their wire form.

asyncpg's ``copy_records_to_table`` encodes each value with the codec of its column's type. Two
of those cost most of the encoding of an event row: timestamptz (datetime arithmetic on Python
objects for each value) and jsonb (a call into our Python codec for each value). Their binary
forms are those of two cheap types: a timestamptz is an int8 of microseconds since 2000-01-01
UTC, and a jsonb is a version byte then the JSON text, as a bytea is its bytes. So the COPY here
declares those columns as int8 and bytea to asyncpg (the statement that tells asyncpg the types,
its "intro", is ours), converts the values once per batch, and Postgres receives the same bytes
into the same columns. An event row encodes in about 2.2 us instead of 3.6 (loadtests/RESULTS.md).

A table's plan is read from the catalog once per process (EventWrites keeps it): migrations run
before the service serves, and none changes these columns' types under a running one.

This uses two asyncpg internals (``Connection._prepare`` and ``_protocol.copy_in``, what
``copy_records_to_table`` itself calls, the same from asyncpg 0.30, the floor in pyproject.toml,
to 0.32); tests/db/test_writer.py writes every column through it and reads them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ingest.store._db import Connection

# A column type (as format_type names it) whose binary form asyncpg writes with a cheaper type's
# encoder.
_TIMESTAMPTZ: Final = "timestamp with time zone"
_JSONB: Final = "jsonb"
_WIRE_TYPES: Final = {_TIMESTAMPTZ: "bigint", _JSONB: "bytea"}
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_JSONB_VERSION: Final = b"\x01"

_COLUMN_TYPES: Final = """
    SELECT a.attname::text AS name, format_type(a.atttypid, NULL) AS type
    FROM pg_attribute AS a
    WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """How one table's columns go over a binary COPY: the statements and the positions whose
    values are converted."""

    intro: str
    statement: str
    width: int  # the number of columns
    timestamps: tuple[int, ...]
    jsons: tuple[int, ...]
    # The records to their wire tuples (see _converter); built from the positions above.
    _convert: Callable[[Iterable[Sequence[Any]], dict[datetime, int]], list[tuple[Any, ...]]] = (
        field(init=False, repr=False, compare=False)
    )

    def __post_init__(self) -> None:
        convert = _converter(self.width, self.timestamps, self.jsons)
        object.__setattr__(self, "_convert", convert)

    def wire(self, records: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The records with their timestamps as microseconds and their JSON as jsonb's bytes.
        The same time is usually shared by many rows of a batch (received_at, sent_at): each
        distinct one is converted once. A record may hold more values after the plan's
        columns (the writer's rows end with their device ids): they are left out."""
        return self._convert(records, {})


def _converter(
    width: int, timestamps: Sequence[int], jsons: Sequence[int]
) -> Callable[[Iterable[Sequence[Any]], dict[datetime, int]], list[tuple[Any, ...]]]:
    """A function of (records, micros) that returns, for each record, its first ``width``
    values as one tuple: those at ``timestamps`` as microseconds since 2000 (each distinct one
    computed once, kept in ``micros``), those at ``jsons`` prefixed with jsonb's version byte,
    None as None. Generated once per plan, as namedtuple builds its methods: one loop with
    every step written out, where a generic loop over each row copied to a list cost half again
    as much per row, and a call per time a third again (loadtests/RESULTS.md)."""
    lines = ["def convert(records, micros):", "    out = []", "    for r in records:"]
    values = []
    for i in range(width):
        if i in timestamps:
            lines += [
                f"        t{i} = r[{i}]",
                f"        if t{i} is not None:",
                f"            m = micros.get(t{i})",
                "            if m is None:",
                f"                m = micros[t{i}] = (t{i} - EPOCH) // MICROSECOND",
                f"            t{i} = m",
            ]
            values.append(f"t{i}")
        elif i in jsons:
            values.append(f"None if r[{i}] is None else VERSION + r[{i}]")
        else:
            values.append(f"r[{i}]")
    lines += [f"        out.append(({', '.join(values)},))", "    return out", ""]
    namespace: dict[str, Any] = {
        "EPOCH": _PG_EPOCH,
        "MICROSECOND": _MICROSECOND,
        "VERSION": _JSONB_VERSION,
    }
    exec("\n".join(lines), namespace)  # noqa: S102 (the source is built above from integers only)
    convert: Callable[[Iterable[Sequence[Any]], dict[datetime, int]], list[tuple[Any, ...]]]
    convert = namespace["convert"]
    return convert


def pg_micros(at: datetime) -> int:
    """``at`` as timestamptz's binary form: microseconds since 2000-01-01 UTC (the claim's
    received_at goes as an int8 array; see writes.py)."""
    return (at - _PG_EPOCH) // _MICROSECOND


async def plan_copy(conn: Connection, table: str, columns: Sequence[str]) -> CopyPlan:
    """The plan for COPY of ``columns`` into ``table``, from the table's column types."""
    types = {r["name"]: r["type"] for r in await conn.fetch(_COLUMN_TYPES, table)}
    missing = [c for c in columns if c not in types]
    if missing:
        raise LookupError(f"{table} has no column {', '.join(missing)}")
    wire = [_WIRE_TYPES.get(types[c], types[c]) for c in columns]
    names = ", ".join(_quote(c) for c in columns)
    return CopyPlan(
        intro="SELECT " + ", ".join(f"NULL::{t}" for t in wire),
        statement=f"COPY {_quote(table)} ({names}) FROM STDIN (FORMAT binary)",
        width=len(columns),
        timestamps=tuple(i for i, c in enumerate(columns) if types[c] == _TIMESTAMPTZ),
        jsons=tuple(i for i, c in enumerate(columns) if types[c] == _JSONB),
    )


async def copy_rows(conn: Connection, plan: CopyPlan, records: Iterable[Sequence[Any]]) -> None:
    """COPY ``records`` (columns in the plan's order, values as for copy_records_to_table)."""
    internals: Any = conn  # the two internals are not in asyncpg's typed API (module docstring)
    intro = await internals._prepare(plan.intro, use_cache=True)
    await internals._protocol.copy_in(
        plan.statement, None, None, plan.wire(records), intro._state, None
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
