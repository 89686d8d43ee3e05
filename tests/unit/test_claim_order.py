"""ingest.store.writes.claim_order: the order in which a batch's claims lock, which every writer
connection must share (or two could deadlock), whatever shortcut computes it."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, strategies as st

from ingest.store.writes import claim_order

A = uuid.UUID(int=2)
A_AGAIN = uuid.UUID(int=2)  # equal to A, another object (as from another request)
B = uuid.UUID(int=1)


def row(project: uuid.UUID, message_id: str) -> tuple[Any, ...]:
    return (project, None, message_id, "track")


def by_project_and_message_id(rows: list[tuple[Any, ...]]) -> list[int]:
    return sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2]))


@given(
    st.lists(
        st.tuples(st.sampled_from([A, A_AGAIN, B]), st.text(alphabet="ab1é", max_size=3)),
        max_size=30,
    ),
    st.booleans(),
)
def test_the_order_is_by_project_then_message_id_with_ties_in_arrival_order(
    picks: list[tuple[uuid.UUID, str]], one_object: bool
) -> None:
    rows = [row(A if one_object else project, message_id) for project, message_id in picks]
    assert claim_order(rows) == by_project_and_message_id(rows)


def test_one_projects_rows_sort_by_message_id_in_code_points() -> None:
    rows = [row(A, m) for m in ["b", "é", "a", "B", "a"]]
    assert claim_order(rows) == [3, 2, 4, 0, 1]
    assert claim_order([]) == []
