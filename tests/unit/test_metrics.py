"""Metrics across worker processes: the values prometheus_client keeps in files per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import values

from ingest.metrics import MULTIPROC_ENV, Metrics, use_cached_pid


@pytest.fixture
def multiprocess(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Multiprocess mode in this process, as `ingest serve --workers N` sets it up in a worker
    (the test then calls use_cached_pid); the library's value class comes back afterwards."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    return tmp_path


def _sample(metrics: Metrics, name: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_updates_reach_the_files_without_asking_the_pid(multiprocess: Path) -> None:
    asked: list[int] = []

    def getpid() -> int:
        asked.append(1)
        return os.getpid()

    use_cached_pid(getpid)
    metrics = Metrics()
    for _ in range(100):
        metrics.events_accepted.inc()
        metrics.write_seconds.observe(0.003)
        metrics.writer_queue_events.set(7)
    assert len(asked) == 1  # once, when the class was made
    # The scrape adds up the files: the updates were written there, not kept in memory.
    assert _sample(metrics, "ingest_events_accepted_total") == 100
    assert _sample(metrics, "ingest_write_duration_seconds_count") == 100
    assert f"counter_{os.getpid()}.db" in {p.name for p in multiprocess.iterdir()}


def test_a_forked_child_writes_files_of_its_own(multiprocess: Path) -> None:
    use_cached_pid()
    metrics = Metrics()
    metrics.events_accepted.inc()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            metrics.events_accepted.inc(5)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    files = {p.name for p in multiprocess.iterdir()}
    assert {f"counter_{os.getpid()}.db", f"counter_{child}.db"} <= files
    # Each process's count in its own file, and the scrape adds them up.
    assert _sample(metrics, "ingest_events_accepted_total") == 6


def test_a_second_call_keeps_the_class(multiprocess: Path) -> None:
    """A second class would open a second map of the same file (use_cached_pid)."""
    library = values.ValueClass
    use_cached_pid()
    installed = values.ValueClass
    assert installed is not library
    use_cached_pid()
    assert values.ValueClass is installed


def test_single_process_mode_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    use_cached_pid()
    assert values.ValueClass is values.MutexValue
