"""Operations at a glance, read from the very text Prometheus scrapes (every worker's, when
several run): the console shows nothing that /metrics does not."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

# Routes whose latency is the service's: not the console's own pages or the scrapes.
_NOT_SERVICE: Final = ("/console", "/metrics", "/healthz", "/readyz")


def snapshot(exposition: bytes) -> dict[str, Any]:
    """Totals since the workers started, the request latency histogram (buckets summed over
    the service's routes), and the gauges. The page turns two snapshots into per-minute rates
    and the p99 of the interval."""
    totals = {
        "accepted": 0.0,
        "rejected": 0.0,
        "unavailable": 0.0,
        "rate_limited": 0.0,
        "queue_events": 0.0,
        "forward_queue": 0.0,
    }
    buckets: dict[float, float] = {}
    geoip_build: str | None = None
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "ingest_events_accepted_total":
                totals["accepted"] += value
            elif name == "ingest_events_rejected_total":
                totals["rejected"] += value
            elif name == "ingest_unavailable_total":
                totals["unavailable"] += value
            elif name == "ingest_rate_limited_total":
                totals["rate_limited"] += value
            elif name == "ingest_writer_queue_events":
                totals["queue_events"] += value
            elif name == "ingest_forward_queue_events":
                totals["forward_queue"] += value
            elif name == "ingest_geoip_database_build_timestamp_seconds" and value > 0:
                geoip_build = datetime.fromtimestamp(value, UTC).date().isoformat()
            elif name == "ingest_request_duration_seconds_bucket":
                if labels.get("route", "").startswith(_NOT_SERVICE):
                    continue
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
    ordered = sorted(buckets.items())
    return {
        "taken_at": time.time(),
        **{name: int(value) for name, value in totals.items()},
        "latency_buckets": [[_le(le), int(count)] for le, count in ordered],
        "p99_seconds": p99(ordered),
        "geoip_build": geoip_build,
    }


def _le(le: float) -> float | str:
    return "+Inf" if math.isinf(le) else le


def p99(buckets: list[tuple[float, float]]) -> float | None:
    """The upper bound of the bucket that holds the 99th percentile (what Prometheus's
    histogram_quantile interpolates within); None without requests, +Inf is reported as the
    largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = 0.99 * buckets[-1][1]
    finite = [le for le, _ in buckets if not math.isinf(le)]
    for le, count in buckets:
        if count >= target:
            return le if not math.isinf(le) else (finite[-1] if finite else None)
    return None
