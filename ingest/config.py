"""Settings, read once from ``INGEST_*`` environment variables and passed down explicitly.

There is no module-level settings object: ``cli`` builds one with ``Settings.from_env()`` and tests
construct ``Settings(...)`` directly.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")


class ConfigError(Exception):
    """One or more environment variables are invalid; the message lists every one of them."""


class Secret:
    """A string that never prints itself (database URLs carry passwords)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def reveal(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_data_dir() -> Path:
    """Where the embedded Postgres keeps its files when none is configured."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ingest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    # None: start the embedded Postgres (pgserver) under data_dir.
    database_url: Secret | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    # None: the GeoLite2 City database bundled by maxminddb-geolite2 (2018), announced at start.
    geoip_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # One worker per CPU: the server's own CPU is the bottleneck (loadtests/RESULTS.md).
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Peers allowed to set X-Forwarded-For (load balancers); empty trusts no header.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # The URL browsers and SDKs reach this server at (https://ingest.example.com), announced
    # by the Segment settings endpoint. None: taken from each request's Host header.
    public_url: str | None = None
    log_level: str = "info"
    log_format: str = "auto"  # "json", "console", or "auto" (console on a tty)

    # Limits (documented in the README): Segment's are 32 KB per event and 500 KB per batch.
    max_body_bytes: int = 512 * 1024
    max_event_bytes: int = 32 * 1024
    max_batch_events: int = 1000
    max_depth: int = 32
    max_properties: int = 1000
    max_message_id_chars: int = 100
    max_name_chars: int = 200
    max_id_chars: int = 256

    # Clock skew: corrected only past this many seconds so transit time never reorders events.
    skew_threshold_s: float = 60.0
    # A timestamp further in the future than this (after correction) is clamped to received_at.
    max_future_s: float = 3600.0

    # Group-commit writer (see writer.py).
    pool_min_size: int = 2
    pool_max_size: int = 10
    writer_connections: int = 2
    writer_max_batch_events: int = 5000
    writer_queue_events: int = 50_000
    # Batches of at most this many events are written in one statement (sql/0009), larger
    # ones by COPY; 0 sends every batch through COPY. None: the built-in default
    # (store/writes.py ONE_STATEMENT_MAX).
    writer_one_statement_events: int | None = None
    commit_timeout_s: float = 5.0
    retry_after_s: int = 2

    # Requests per second per key, for the whole server (each worker enforces its share);
    # 0 turns the limit off. Well above what one app's SDKs send, well below an abuser's flood.
    rate_limit_per_key: float = 5000.0
    rate_limit_burst: float = 10000.0
    # Open connections per worker before uvicorn answers 503 (its --limit-concurrency).
    max_connections: int = 2048
    # A request body that has not fully arrived after this long is refused (slow clients).
    body_timeout_s: float = 30.0

    # Key lookups are cached this long: a revoked key is refused by every worker within it.
    key_cache_ttl_s: float = 1.0
    # An Idempotency-Key's answer is replayed this long (then the key is new again), and a
    # request that died holding one frees it after idempotency_lock_s.
    idempotency_ttl_s: float = 86400.0
    idempotency_lock_s: float = 60.0

    # Forwarding (forwarder.py). Destinations on loopback, private or link-local addresses are
    # refused unless this is true (tests, local development): a partner must not reach our
    # own network through a webhook URL.
    destinations_allow_private: bool = False
    # Events per delivery request, and delivery requests in flight per worker process (each
    # holds a database connection while its request runs).
    forward_batch_events: int = 100
    forward_concurrency: int = 2
    forward_timeout_s: float = 10.0
    # Retries back off exponentially from base to max (with jitter); a row goes dead after
    # max_attempts, or once older than its project's forward_queue_days.
    forward_backoff_base_s: float = 1.0
    forward_backoff_max_s: float = 900.0
    forward_max_attempts: int = 20
    # How often an idle forwarder looks for due rows that another process wrote, and how often
    # it expires rows past their age and refreshes the queue gauges.
    forward_poll_s: float = 1.0
    forward_sweep_s: float = 5.0
    # The key that wraps every project's key material (keyring.py): 32 bytes as hex or base64,
    # given directly or in a file. Never stored in the database. With neither set, the embedded
    # Postgres's default is a file beside its data (data_dir / "master.key"), made on first start.
    master_key: Secret | None = None
    master_key_file: Path | None = None
    # During a master key rotation: the key(s) being replaced, comma-separated (README).
    master_key_previous: Secret | None = None
    # The console's sign-in sessions: they end after this long without a request, and in any
    # case this long after sign-in.
    console_idle_s: float = 1800.0
    console_max_s: float = 43200.0
    # Failed console sign-ins a client address may make per minute, in each worker process.
    console_signin_per_minute: int = 10

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every ``INGEST_*`` variable; raise one ConfigError that lists all bad ones."""
        env = os.environ if environ is None else environ
        errors: list[str] = []
        kwargs: dict[str, object] = {}

        def take(name: str, attr: str, cast: Callable[[str], object]) -> None:
            raw = env.get(f"INGEST_{name}")
            if raw is None or raw == "":
                return
            try:
                kwargs[attr] = cast(raw)
            except (ValueError, TypeError) as exc:
                errors.append(f"INGEST_{name}: {exc}")

        take("DATABASE_URL", "database_url", Secret)
        take("DATA_DIR", "data_dir", Path)
        take("MASTER_KEY", "master_key", Secret)
        take("MASTER_KEY_FILE", "master_key_file", Path)
        take("MASTER_KEY_PREVIOUS", "master_key_previous", Secret)
        take("GEOIP_DB", "geoip_path", Path)
        take("HOST", "host", str)
        take("PORT", "port", _port)
        take("WORKERS", "workers", _positive_int)
        take("TRUSTED_PROXIES", "trusted_proxies", _networks)
        take("PUBLIC_URL", "public_url", _public_url)
        take("LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"))
        take("LOG_FORMAT", "log_format", _choice("auto", "json", "console"))
        take("MAX_BODY_BYTES", "max_body_bytes", _positive_int)
        take("MAX_EVENT_BYTES", "max_event_bytes", _positive_int)
        take("MAX_BATCH_EVENTS", "max_batch_events", _positive_int)
        take("MAX_DEPTH", "max_depth", _positive_int)
        take("MAX_PROPERTIES", "max_properties", _positive_int)
        take("SKEW_THRESHOLD_SECONDS", "skew_threshold_s", _non_negative_float)
        take("MAX_FUTURE_SECONDS", "max_future_s", _non_negative_float)
        take("POOL_MAX_SIZE", "pool_max_size", _positive_int)
        take("WRITER_CONNECTIONS", "writer_connections", _positive_int)
        take("WRITER_MAX_BATCH_EVENTS", "writer_max_batch_events", _positive_int)
        take("WRITER_QUEUE_EVENTS", "writer_queue_events", _positive_int)
        take("WRITER_ONE_STATEMENT_EVENTS", "writer_one_statement_events", _non_negative_int)
        take("COMMIT_TIMEOUT_SECONDS", "commit_timeout_s", _positive_float)
        take("KEY_CACHE_TTL_SECONDS", "key_cache_ttl_s", _non_negative_float)
        take("RATE_LIMIT_PER_KEY", "rate_limit_per_key", _non_negative_float)
        take("RATE_LIMIT_BURST", "rate_limit_burst", _positive_float)
        take("BODY_TIMEOUT_SECONDS", "body_timeout_s", _positive_float)
        take("MAX_CONNECTIONS", "max_connections", _positive_int)
        take("IDEMPOTENCY_TTL_SECONDS", "idempotency_ttl_s", _positive_float)
        take("IDEMPOTENCY_LOCK_SECONDS", "idempotency_lock_s", _positive_float)
        take("DESTINATIONS_ALLOW_PRIVATE", "destinations_allow_private", _bool)
        take("FORWARD_BATCH_EVENTS", "forward_batch_events", _positive_int)
        take("FORWARD_CONCURRENCY", "forward_concurrency", _positive_int)
        take("FORWARD_TIMEOUT_SECONDS", "forward_timeout_s", _positive_float)
        take("FORWARD_BACKOFF_BASE_SECONDS", "forward_backoff_base_s", _positive_float)
        take("FORWARD_BACKOFF_MAX_SECONDS", "forward_backoff_max_s", _positive_float)
        take("FORWARD_MAX_ATTEMPTS", "forward_max_attempts", _positive_int)
        take("FORWARD_POLL_SECONDS", "forward_poll_s", _positive_float)
        take("FORWARD_SWEEP_SECONDS", "forward_sweep_s", _positive_float)
        take("CONSOLE_IDLE_SECONDS", "console_idle_s", _positive_float)
        take("CONSOLE_MAX_SECONDS", "console_max_s", _positive_float)
        take("CONSOLE_SIGNIN_PER_MINUTE", "console_signin_per_minute", _positive_int)
        for name, moved_to in _MOVED.items():
            if env.get(f"INGEST_{name}"):
                errors.append(f"INGEST_{name}: {moved_to}")
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
        return cls(**kwargs)  # type: ignore[arg-type]  # values were cast per field above


# Variables that no longer configure the service, and where their setting lives now: refused,
# because ignoring one would silently change what a deployment keeps.
_MOVED: Final = {
    "DEDUP_WINDOW_DAYS": "the dedup window is set per project now: "
    "PATCH /v1/projects/{id} with dedup_window_days",
}


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number (0-65535), got {value}")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"must be a positive number, got {value}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError(f"must be zero or more, got {value}")
    return value


def _public_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"must be an http(s) URL such as https://ingest.example.com, got {raw!r}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts)


def _choice(*options: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return cast
