"""``ingest serve | migrate | admin | purge``: the command line, and the only place that reads
the environment and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
import structlog

import ingest
from ingest import embedded, keyring, migrate
from ingest.coalesce import CoalescingHttpToolsProtocol
from ingest.config import ConfigError, Secret, Settings
from ingest.drain import DrainingSupervisor
from ingest.geo import GeoDatabaseError, GeoLookup
from ingest.logs import configure_logging
from ingest.metrics import MULTIPROC_ENV
from ingest.store import Store, create_pool

log = structlog.get_logger("ingest.cli")


# Seconds to wait for Postgres to accept a connection before telling the person it cannot.
CONNECT_TIMEOUT_S: Final = 10.0

_DATABASE_ENV: Final = """environment:
  INGEST_DATABASE_URL  postgresql://USER:PASSWORD@HOST:PORT/DATABASE; unset: an embedded
                       Postgres under INGEST_DATA_DIR
  INGEST_DATA_DIR      where the embedded Postgres keeps its files (~/.local/share/ingest)
  INGEST_LOG_LEVEL     debug, info, warning or error (info)
  INGEST_LOG_FORMAT    json, console or auto (console on a terminal)"""

_SERVE_ENV: Final = f"""{_DATABASE_ENV}
  INGEST_HOST          interface to listen on (127.0.0.1)
  INGEST_PORT          port to listen on (8000)
  INGEST_WORKERS       worker processes (one per CPU)
  INGEST_GEOIP_DB      GeoLite2/GeoIP2 City .mmdb file; unset: the bundled 2018 database
  INGEST_TRUSTED_PROXIES  load balancers allowed to set X-Forwarded-For (CIDRs, comma-separated)

The limits and writer settings are in the README's Configuration section."""


class CommandError(Exception):
    """Something the person running the command can fix; printed as one line, no traceback."""


def _parser() -> argparse.ArgumentParser:
    def command(
        parent: Any, name: str, summary: str, env: str = _DATABASE_ENV
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=env,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    parser = argparse.ArgumentParser(
        prog="ingest",
        description="Privacy-first event ingestion: events in, PII hashed, IPs resolved and "
        "dropped, rows in Postgres.",
        epilog="Settings come from INGEST_* environment variables; `ingest COMMAND --help` lists "
        "the ones each command reads.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = command(sub, "serve", "run the HTTP API (applies migrations first)", _SERVE_ENV)
    serve.add_argument("--host", help="interface to listen on (INGEST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (INGEST_PORT, default 8000)")
    serve.add_argument(
        "--workers", type=int, help="worker processes (INGEST_WORKERS, default: one per CPU)"
    )
    command(sub, "migrate", "apply the SQL migrations that are not applied yet")
    admin = command(sub, "admin", "bootstrap commands (create-org)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="SUBCOMMAND")
    create_org = command(
        admin_sub, "create-org", "create an organization and print its first secret key as JSON"
    )
    create_org.add_argument("name", help="the organization's display name")
    command(
        admin_sub,
        "new-master-key",
        "print a new random master key (for INGEST_MASTER_KEY or INGEST_MASTER_KEY_FILE)",
    )
    command(
        sub,
        "purge",
        "delete expired data: events and message ids past each project's retention",
        _DATABASE_ENV + "\n\nRetention is set per project (events_retention_days, "
        "dedup_window_days):\nsee the README's Retention section.",
    )
    command(
        sub,
        "rotate-master-key",
        "re-wrap every project's keys under INGEST_MASTER_KEY (the new key), from "
        "INGEST_MASTER_KEY_PREVIOUS (the old one); then the old one can be destroyed",
    )
    command(
        sub,
        "reencode",
        "seal the email and phone digests that protected projects still store plain, "
        "online, in batches, printing progress",
        _DATABASE_ENV + "\n  INGEST_MASTER_KEY    the master key (or INGEST_MASTER_KEY_FILE)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # noqa: T201  # before logging exists
        return 2
    overrides = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("workers", getattr(args, "workers", None)),
        )
        if v is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    _configure_logging(settings, args.command)
    try:
        return _run(args, settings)
    except CommandError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)  # noqa: T201  # for a person, not a log
        return 1


def _configure_logging(settings: Settings, command: str) -> None:
    # Commands that print a result keep stdout for it; their log (progress included) goes to
    # stderr, readable when a person watches it and JSON when a program collects it.
    configure_logging(
        settings.log_level,
        settings.log_format,
        None if command == "serve" else sys.stderr.buffer,
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url is not None:
        _check_database_url(settings.database_url)
    if args.command == "admin" and args.admin_command == "new-master-key":
        print(keyring.new_master_key())  # noqa: T201
        return 0
    if args.command == "serve":
        # Before the database, so a typo costs a second and not an embedded Postgres start.
        _check_geoip(settings)
        _check_port(settings)
    if args.command in ("serve", "reencode", "rotate-master-key"):
        settings = _master_key(settings)
    settings, server = _database(settings)
    try:
        if args.command == "serve":
            return _serve(settings)
        if args.command == "migrate":
            applied = asyncio.run(_migrate(settings))
            print(orjson.dumps({"applied": applied}).decode())  # noqa: T201
            return 0
        if args.command == "admin":
            result = asyncio.run(_create_org(settings, args.name))
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())  # noqa: T201
            return 0
        if args.command == "rotate-master-key":
            print(orjson.dumps(asyncio.run(_rotate(settings))).decode())  # noqa: T201
            return 0
        if args.command == "reencode":
            print(orjson.dumps(asyncio.run(_reencode(settings))).decode())  # noqa: T201
            return 0
        if args.command == "purge":
            print(orjson.dumps(asyncio.run(_purge(settings))).decode())  # noqa: T201
            return 0
    finally:
        if server is not None:
            server.cleanup()
    return 2


def _master_key(settings: Settings) -> Settings:
    """Check the master key now (a bad one costs a second, not a server start). With none
    configured, the embedded Postgres's default: a key file beside its data, made once."""
    if settings.master_key is None and settings.master_key_file is None:
        if settings.database_url is not None:
            raise CommandError(f"{keyring.NO_MASTER_KEY} (INGEST_DATABASE_URL is set)")
        path = settings.data_dir / "master.key"
        if keyring.create_key_file(path):
            log.warning(
                "master_key_created",
                path=str(path),
                note="it wraps every project's keys: back it up apart from the database; "
                "without it no stored email or phone digest can be read back",
            )
        # Worker processes read their settings from the environment.
        os.environ["INGEST_MASTER_KEY_FILE"] = str(path)
        settings = dataclasses.replace(settings, master_key_file=path)
    try:
        keyring.from_settings(settings)
    except keyring.MasterKeyError as exc:
        raise CommandError(str(exc)) from None
    return settings


def _check_database_url(url: Secret) -> None:
    """Refuse a URL asyncpg cannot use, naming what is wrong but never echoing the URL (it
    holds the password)."""
    parts = urlsplit(url.reveal())
    if parts.scheme not in ("postgresql", "postgres"):
        got = f" (it starts with {parts.scheme}://)" if parts.scheme and parts.netloc else ""
        raise CommandError(
            "INGEST_DATABASE_URL is not a Postgres URL"
            f"{got}; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    for endpoint in _endpoints(url):
        port = endpoint.rpartition(":")[2]
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise CommandError(
                f"INGEST_DATABASE_URL has an invalid port {port!r}; "
                "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            )


def _endpoints(url: Secret) -> list[str]:
    """The HOST:PORT pairs a URL names (asyncpg accepts several, comma-separated)."""
    parts = urlsplit(url.reveal())
    query = parse_qs(parts.query)
    hostlist = parts.netloc.rpartition("@")[2]
    if not hostlist:
        # postgresql:///db?host=/run/postgresql (a socket directory), or libpq's default.
        host = query.get("host", ["localhost"])[0]
        return [f"{host}:{query.get('port', ['5432'])[0]}"]
    endpoints = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [::1]:5432, kept bracketed so the port stays readable
            host, _, rest = item.partition("]")
            host += "]"
            port = rest.removeprefix(":") or "5432"
        else:
            host, _, port = item.partition(":")
            port = port or "5432"
        endpoints.append(f"{host or 'localhost'}:{port}")
    return endpoints


@contextlib.contextmanager
def _connecting(settings: Settings) -> Iterator[None]:
    """Turn a failure to reach Postgres into one line that says where and why, without the
    password."""
    assert settings.database_url is not None  # noqa: S101  # set by _database
    url = settings.database_url
    try:
        yield
    except (ValueError, asyncpg.ClientConfigurationError) as exc:  # asyncpg's URL parser
        raise CommandError(
            f"INGEST_DATABASE_URL is not a usable Postgres URL ({_scrub(str(exc), url)})"
        ) from None
    except (
        OSError,
        TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidCatalogNameError,
    ) as exc:
        where = ", ".join(_endpoints(url))
        raise CommandError(
            f"cannot connect to Postgres at {where} ({_reason(exc, url)}); "
            "check INGEST_DATABASE_URL"
        ) from None


def _reason(exc: BaseException, url: Secret) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)


def _scrub(text: str, url: Secret) -> str:
    """Remove the URL and its password from text that a driver built from them."""
    password = urlsplit(url.reveal()).password
    text = text.replace(url.reveal(), "INGEST_DATABASE_URL")
    return text.replace(password, "********") if password else text


def _check_geoip(settings: Settings) -> None:
    if settings.geoip_path is None:
        return
    try:
        GeoLookup.open(settings.geoip_path).close()
    except GeoDatabaseError as exc:
        raise CommandError(
            f"{exc}; set INGEST_GEOIP_DB to a GeoLite2/GeoIP2 City .mmdb file, or unset it to "
            "use the bundled 2018 database"
        ) from None


def _check_port(settings: Settings) -> None:
    """Bind the address uvicorn will bind, so a taken port is one clear line, not a traceback
    from inside uvicorn after the migrations have run."""
    host, port = settings.host, settings.port
    if port == 0:  # any free port: nothing to check
        return
    hint = "choose another with --port or INGEST_PORT"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise CommandError(
            f"cannot listen on {host}: not an address or a known host name; "
            "set --host or INGEST_HOST"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # uvicorn sets SO_REUSEADDR too: sockets of a previous run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"port {port} on {host} is in use; {hint}") from None
            if exc.errno == errno.EACCES:
                raise CommandError(
                    f"port {port} on {host} needs privileges this user lacks; {hint}"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CommandError(
                    f"{host} is not an address of this machine; set --host or INGEST_HOST"
                ) from None
            raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _database(settings: Settings) -> tuple[Settings, Any]:
    if settings.database_url is not None:
        return settings, None
    try:
        server, dsn = embedded.start(settings.data_dir)
    except Exception as exc:  # pgserver raises anything from OSError to CalledProcessError
        raise CommandError(
            f"the embedded Postgres did not start under {settings.data_dir / 'pg'} "
            f"({_startup_reason(exc)}); fix INGEST_DATA_DIR, or set INGEST_DATABASE_URL to "
            "use another Postgres"
        ) from None
    # Worker processes read their settings from the environment; give them the same database.
    os.environ["INGEST_DATABASE_URL"] = dsn
    return dataclasses.replace(settings, database_url=Secret(dsn)), server


def _startup_reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror.lower()}{where}"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _dsn(settings: Settings) -> str:
    assert settings.database_url is not None  # noqa: S101  # set by _database
    return settings.database_url.reveal()


async def _migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; migrate.migrate logs each file as it is applied."""
    with _connecting(settings):
        conn = await asyncpg.connect(_dsn(settings), timeout=CONNECT_TIMEOUT_S)
    try:
        applied = await migrate.migrate(conn)
    except migrate.MigrationError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await conn.close()
    log.info("migrations_done", applied=len(applied))
    return applied


async def _pool(settings: Settings) -> asyncpg.Pool:
    with _connecting(settings):
        return await create_pool(
            _dsn(settings), min_size=1, max_size=1, connect_timeout=CONNECT_TIMEOUT_S
        )


async def _create_org(settings: Settings, name: str) -> dict[str, Any]:
    await _migrate(settings)
    pool = await _pool(settings)
    try:
        org_id, key = await Store(pool).create_org(name)
    finally:
        await pool.close()
    return {"org_id": str(org_id), "name": name, "secret_key": key.as_dict()}


async def _purge(settings: Settings) -> dict[str, int | bool]:
    from ingest.app import report_purge

    pool = await _pool(settings)
    try:
        result = await Store(pool).purge()
    finally:
        await pool.close()
    report_purge(result)
    return result.as_dict()


async def _rotate(settings: Settings) -> dict[str, Any]:
    """Re-wrap every project's keys under the current master key."""
    await _migrate(settings)
    if settings.master_key_previous is None:
        raise CommandError(
            "set INGEST_MASTER_KEY to the new master key and INGEST_MASTER_KEY_PREVIOUS to the "
            "one it replaces"
        )
    pool = await _pool(settings)
    try:
        store = Store(pool, keyring.from_settings(settings))
        try:
            rewrapped = await store.rewrap_project_keys()
        except keyring.MasterKeyError as exc:
            raise CommandError(str(exc)) from None
    finally:
        await pool.close()
    log.info("master_key_rotated", projects=rewrapped)
    return {"projects_rewrapped": rewrapped}


async def _reencode(settings: Settings) -> dict[str, Any]:
    """Seal the plain digests of protected projects; a JSON line per batch on stdout."""
    await _migrate(settings)
    ring = keyring.from_settings(settings)
    pool = await _pool(settings)
    try:
        store = Store(pool, ring)
        try:
            await store.wrap_project_keys()
        except keyring.MasterKeyError as exc:
            raise CommandError(str(exc)) from None

        def progress(line: dict[str, Any]) -> None:
            print(orjson.dumps(line).decode(), flush=True)  # noqa: T201

        result = await store.reencode(progress)
    finally:
        await pool.close()
    log.info("reencode_done", **result.as_dict())
    return result.as_dict()


def _announce_geoip(settings: Settings) -> None:
    if settings.geoip_path is None:
        log.warning(
            "geoip_database_bundled",
            message=(
                "using the GeoLite2 City database bundled by maxminddb-geolite2, dated 2018: "
                "regions of recently reassigned IPs will be wrong. Download a current "
                "GeoLite2-City.mmdb from MaxMind and set INGEST_GEOIP_DB=/path/to/it."
            ),
        )
    else:
        log.info("geoip_database", path=str(settings.geoip_path))


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(settings: Settings) -> int:
    import uvicorn

    from ingest.app import create_app, tune_gc

    asyncio.run(_migrate(settings))
    _announce_geoip(settings)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,  # it would print client IPs; RequestContext writes our own line
        "log_config": None,  # structlog owns logging
        "proxy_headers": False,  # X-Forwarded-For is read only from INGEST_TRUSTED_PROXIES
        "server_header": False,
        "timeout_graceful_shutdown": 10,
        # On SIGTERM, an idle keep-alive connection gets a moment to deliver a request already
        # sent, instead of a reset (ingest/drain.py); each response goes out in one write
        # (ingest/coalesce.py).
        "http": CoalescingHttpToolsProtocol,
        # Past this many open connections and tasks per worker uvicorn answers 503 itself,
        # before any of our work: memory stays bounded under a connection flood.
        "limit_concurrency": settings.max_connections,
    }
    log.info(
        "serving",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        native=ingest.native(),
    )
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was installed before it. Make that one a normal exit, so main()'s finally
    # still stops the embedded Postgres.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    if settings.workers > 1:
        # The workers build their settings from the environment: hand them the command line's.
        # INGEST_WORKERS matters beyond uvicorn: each worker enforces 1/N of the rate limit.
        os.environ["INGEST_HOST"] = settings.host
        os.environ["INGEST_PORT"] = str(settings.port)
        os.environ["INGEST_WORKERS"] = str(settings.workers)
        with tempfile.TemporaryDirectory(prefix="ingest-metrics-") as metrics_dir:
            os.environ[MULTIPROC_ENV] = metrics_dir
            # uvicorn.run(..., workers=N) with our supervisor (drain.DrainingSupervisor).
            config = uvicorn.Config(
                "ingest.app:app_from_env", factory=True, workers=settings.workers, **common
            )
            DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
    else:
        tune_gc()
        uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
