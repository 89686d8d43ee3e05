"""Per-key rate limits: a token bucket for each key, in this worker process.

Each of N workers enforces 1/N of the configured rate, so the whole server allows about the
configured rate per key (connections are spread evenly enough by the kernel for that).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from ingest.problems import TooManyRequests

_MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_second: float, burst: float) -> None:
        """``per_second`` <= 0 disables the limit."""
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._buckets: dict[uuid.UUID, _Bucket] = {}

    def check(self, key_id: uuid.UUID) -> None:
        """Take one request's token for ``key_id``, or raise TooManyRequests (429)."""
        if self.per_second <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= _MAX_KEYS:
                self._buckets.clear()  # bounded memory; a reset only ever lets requests through
            bucket = self._buckets[key_id] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.per_second
            )
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = (1.0 - bucket.tokens) / self.per_second
        raise TooManyRequests(
            f"this key may send {self.per_second:g} requests a second here; retry later",
            retry_after=max(1, math.ceil(wait)),
            limit=self.per_second,
        )
