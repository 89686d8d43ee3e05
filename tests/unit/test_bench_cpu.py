"""The benchmark's CPU accounting: what each event cost, and the bound it puts on single events."""

from __future__ import annotations

import pytest

from loadtests.bench import cpu_bound, cpu_per_event, describe_bound, describe_per_event


def test_cores_become_microseconds_an_event() -> None:
    cpu = {"server": 1.2, "postgres": 0.5, "wrk": 0.15, "bench": 0.0, "idle": 0.1}
    per_event = cpu_per_event(cpu, 6_000)
    assert per_event == pytest.approx({"server": 200.0, "postgres": 500 / 6, "wrk": 25.0})
    assert describe_per_event(per_event) == (
        "CPU an event in us: server 200, Postgres 83, wrk 25; 308 in all"
    )
    # No events, no figures (never a division by zero).
    assert cpu_per_event(cpu, 0) == {}


def test_the_bound_adds_a_health_checks_cost_to_postgres() -> None:
    healthz = {"requests_per_s": 36_000.0, "server_us": 40.0, "wrk_us": 10.0}
    measured = {"server": 170.0, "postgres": 80.0, "wrk": 25.0}
    bound = cpu_bound(2, 15_000, healthz, measured)
    assert bound is not None
    assert bound.allowed_us == pytest.approx(133.333, rel=1e-4)
    assert bound.floor_us == pytest.approx(130.0)
    assert bound.ceiling_per_s == pytest.approx(2e6 / 130)
    text = describe_bound(bound, measured, healthz)
    assert "leaves 133 us an event" in text
    assert "the median round used 275" in text
    assert "(40 us, wrk 10), with Postgres's 80 an event" in text
    assert "at most 15,385 events/s" in text


def test_no_bound_without_the_health_checks_cpu_or_postgres() -> None:
    measured = {"server": 170.0, "postgres": 80.0, "wrk": 25.0}
    assert cpu_bound(2, 15_000, {"requests_per_s": 36_000.0}, measured) is None
    healthz = {"server_us": 40.0, "wrk_us": 10.0}
    assert cpu_bound(2, 15_000, healthz, {"server": 170.0}) is None
