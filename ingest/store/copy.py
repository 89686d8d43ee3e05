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
    # One record to its wire tuple (see _converter); built from the positions above.
    _convert: Callable[[Sequence[Any], Callable[[datetime], int]], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        convert = _converter(self.width, self.timestamps, self.jsons)
        object.__setattr__(self, "_convert", convert)

    def wire(self, records: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The records with their timestamps as microseconds and their JSON as jsonb's bytes.
        The same time is usually shared by many rows of a batch (received_at, sent_at): each
        distinct one is converted once. A record may hold more values after the plan's
        columns (the writer's rows end with their device ids): they are left out."""
        micros: dict[datetime, int] = {}

        def micro(value: datetime) -> int:
            found = micros.get(value)
            if found is None:
                found = micros[value] = (value - _PG_EPOCH) // _MICROSECOND
            return found

        convert = self._convert
        return [convert(record, micro) for record in records]


def _converter(
    width: int, timestamps: Sequence[int], jsons: Sequence[int]
) -> Callable[[Sequence[Any], Callable[[datetime], int]], tuple[Any, ...]]:
    """A function of (record, micro) that returns the record's first ``width`` values as one
    tuple, converting the values at ``timestamps`` with micro and prefixing those at ``jsons``
    with jsonb's version byte (None stays None). Generated as one expression, as namedtuple
    builds its methods: a loop over a copied list cost half again as much per row and two more
    tuples (loadtests/RESULTS.md)."""
    parts = []
    for i in range(width):
        if i in timestamps:
            parts.append(f"None if r[{i}] is None else micro(r[{i}])")
        elif i in jsons:
            parts.append(f"None if r[{i}] is None else VERSION + r[{i}]")
        else:
            parts.append(f"r[{i}]")
    source = f"def convert(r, micro):\n    return ({', '.join(parts)},)\n"
    namespace: dict[str, Any] = {"VERSION": _JSONB_VERSION}
    exec(source, namespace)  # noqa: S102 (the source is built above from integers only)
    convert: Callable[[Sequence[Any], Callable[[datetime], int]], tuple[Any, ...]]
    convert = namespace["convert"]
    return convert


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
