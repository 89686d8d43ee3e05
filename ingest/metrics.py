"""Every Prometheus metric of the service, on a registry of its own per app.

Label values come from fixed sets (route templates, reason codes): never a user id, an event name
or anything a client chose, so a flood of distinct values cannot explode the series count.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

# Set by `ingest serve --workers N` before the workers start: each worker then writes its values
# to files there, and a scrape (answered by any one worker) adds them all up.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Marks the value class use_cached_pid installed, so that a second call keeps it.
_CACHED_PID_MARK = "_ingest_cached_pid"


def use_cached_pid(getpid: Callable[[], int] = os.getpid) -> None:
    """In multiprocess mode prometheus_client checks os.getpid() on every inc, set and observe,
    to notice a fork. glibc no longer caches the pid, so each check is a system call, ten or so
    a request: py-spy --native put 9% of a worker's samples under single events in getpid, and
    the server's CPU a request fell from 144-170 us to 136-142 in alternating pairs without it
    (loadtests/RESULTS.md). Here the pid is read once, and again in the child of a fork
    (os.register_at_fork), which keeps the check's purpose: a forked child still writes files
    of its own. The hook is prometheus_client's own (MultiProcessValue's process_identifier).
    Call it before the process's first metric: values made earlier keep the old class, and two
    classes would keep two maps of one file."""
    if MULTIPROC_ENV not in os.environ or getattr(values.ValueClass, _CACHED_PID_MARK, False):
        return
    pid = [getpid()]

    def forked() -> None:
        pid[0] = getpid()

    os.register_at_fork(after_in_child=forked)
    cls = values.MultiProcessValue(process_identifier=lambda: pid[0])  # type: ignore[no-untyped-call]  # untyped upstream
    setattr(cls, _CACHED_PID_MARK, True)
    values.ValueClass = cls


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ingest_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "ingest_request_duration_seconds",
            "Time from the request's first byte to its answer.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events_accepted = Counter(
            "ingest_events_accepted",
            "Events acknowledged (stored, a stored duplicate, or suppressed).",
            registry=r,
        )
        self.events_duplicate = Counter(
            "ingest_events_duplicate",
            "Events whose (project, message_id) was already stored.",
            registry=r,
        )
        self.events_suppressed = Counter(
            "ingest_events_suppressed",
            "Events acknowledged but not stored: they name an erased (suppressed) person, or "
            "their project was deleted.",
            registry=r,
        )
        self.subject_requests = Counter(
            "ingest_subject_requests",
            "Data-subject requests answered, by kind (export, erase): alert on a burst, a leaked "
            "secret key exporting user after user looks like this.",
            ["kind"],
            registry=r,
        )
        self.events_rejected = Counter(
            "ingest_events_rejected", "Events refused, by reason code.", ["reason"], registry=r
        )
        self.events_warnings = Counter(
            "ingest_event_warnings",
            "Accepted events that were changed, by code.",
            ["code"],
            registry=r,
        )
        self.geoip_lookups = Counter(
            "ingest_geoip_lookups", "Client IPs looked up in the GeoIP database.", registry=r
        )
        self.geoip_misses = Counter(
            "ingest_geoip_misses", "Client IPs the GeoIP database does not know.", registry=r
        )
        self.geoip_build = Gauge(
            "ingest_geoip_database_build_timestamp_seconds",
            "Build time of the GeoIP database in use (Unix time).",
            multiprocess_mode="max",
            registry=r,
        )
        self.write_batch_events = Histogram(
            "ingest_write_batch_size",
            "Events per group commit.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.write_seconds = Histogram(
            "ingest_write_duration_seconds",
            "Time to COPY and commit one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_wait_seconds = Histogram(
            "ingest_write_wait_seconds",
            "Time a request's events waited for their commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_errors = Counter(
            "ingest_write_errors",
            "Failed group commits, by kind (transient or data).",
            ["kind"],
            registry=r,
        )
        self.writer_queue_events = Gauge(
            "ingest_writer_queue_events",
            "Events waiting for the writer.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rate_limited = Counter(
            "ingest_rate_limited", "Requests answered 429 (a key over its rate).", registry=r
        )
        self.unavailable = Counter(
            "ingest_unavailable", "Requests answered 503, by reason.", ["reason"], registry=r
        )
        self.pool_connections = Gauge(
            "ingest_pool_connections",
            "Database pool connections, by state.",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.database_durable = Gauge(
            "ingest_database_durable",
            "1 when fsync, synchronous_commit and full_page_writes are all on, else 0.",
            multiprocess_mode="min",
            registry=r,
        )

        self.purged_partitions = Counter(
            "ingest_purged_partitions",
            "Daily event partitions dropped by the retention purge.",
            registry=r,
        )
        self.purged_rows = Counter(
            "ingest_purged_rows",
            "Rows deleted by the retention purge, by data class (events, dedup).",
            ["data"],
            registry=r,
        )
        self.purge_failures = Counter(
            "ingest_purge_failures",
            "Maintenance runs (partitions, purge) that failed; retried an hour later.",
            registry=r,
        )

        # Forwarding, per destination (its id: chosen by us, bounded by the destinations that
        # exist). The gauges are read from the outbox every few seconds by each worker, so
        # every worker reports the same figure: the most recent one is shown.
        self.forward_delivered = Counter(
            "ingest_forward_delivered",
            "Events delivered to a destination (its answer was 2xx).",
            ["destination"],
            registry=r,
        )
        self.forward_failed = Counter(
            "ingest_forward_failed",
            "Events in failed delivery attempts, by reason (http_500, http_429, timeout, "
            "network, forbidden_address...).",
            ["destination", "reason"],
            registry=r,
        )
        self.forward_retried = Counter(
            "ingest_forward_retried",
            "Events scheduled for another delivery attempt after a failure.",
            ["destination"],
            registry=r,
        )
        self.forward_dead = Counter(
            "ingest_forward_dead_lettered",
            "Events moved to the dead letters (attempts or age exhausted, or refused for good).",
            ["destination"],
            registry=r,
        )
        self.forward_seconds = Histogram(
            "ingest_forward_request_duration_seconds",
            "Time of one delivery request to a destination.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_queue_events = Gauge(
            "ingest_forward_queue_events",
            "Events waiting in the outbox for a destination.",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.forward_oldest_seconds = Gauge(
            "ingest_forward_oldest_age_seconds",
            "Age of the oldest event waiting for a destination (0 when none waits).",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.forward_dead_letters = Gauge(
            "ingest_forward_dead_letters",
            "Dead letters a destination holds (retry them through the API).",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

    def render(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's when several run."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)
