"""``ingest serve | migrate | admin | purge``: the command line, and the only place that reads
the environment and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from ingest import embedded, migrate
from ingest.config import ConfigError, Secret, Settings
from ingest.logs import configure_logging
from ingest.metrics import MULTIPROC_ENV
from ingest.store import Store, create_pool

log = structlog.get_logger("ingest.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (applies migrations first)")
    serve.add_argument("--host", help="interface to listen on (INGEST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (INGEST_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (INGEST_WORKERS)")
    sub.add_parser("migrate", help="apply the SQL migrations that are not applied yet")
    admin = sub.add_parser("admin", help="bootstrap commands")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create_org = admin_sub.add_parser(
        "create-org", help="create an organization and print its first secret key as JSON"
    )
    create_org.add_argument("name")
    sub.add_parser("purge", help="delete expired data (message ids past the dedup window)")
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
    # Commands that print a result keep stdout for it; their log goes to stderr.
    configure_logging(
        settings.log_level,
        settings.log_format,
        None if args.command == "serve" else sys.stderr.buffer,
    )
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
        if args.command == "purge":
            print(orjson.dumps(asyncio.run(_purge(settings))).decode())  # noqa: T201
            return 0
    finally:
        if server is not None:
            server.cleanup()
    return 2


def _database(settings: Settings) -> tuple[Settings, Any]:
    if settings.database_url is not None:
        return settings, None
    server, dsn = embedded.start(settings.data_dir)
    # Worker processes read their settings from the environment; give them the same database.
    os.environ["INGEST_DATABASE_URL"] = dsn
    return dataclasses.replace(settings, database_url=Secret(dsn)), server


def _dsn(settings: Settings) -> str:
    assert settings.database_url is not None  # noqa: S101  # set by _database
    return settings.database_url.reveal()


async def _migrate(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(_dsn(settings))
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


async def _create_org(settings: Settings, name: str) -> dict[str, Any]:
    await _migrate(settings)
    pool = await create_pool(_dsn(settings), min_size=1, max_size=1, connect_timeout=10)
    try:
        org_id, key = await Store(pool).create_org(name)
    finally:
        await pool.close()
    return {"org_id": str(org_id), "name": name, "secret_key": key.as_dict()}


async def _purge(settings: Settings) -> dict[str, int]:
    pool = await create_pool(_dsn(settings), min_size=1, max_size=1, connect_timeout=10)
    try:
        cutoff = datetime.now(UTC) - timedelta(days=settings.dedup_window_days)
        return {"dedup_purged": await Store(pool).purge_dedup(cutoff)}
    finally:
        await pool.close()


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

    from ingest.app import create_app

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
    }
    log.info("serving", host=settings.host, port=settings.port, workers=settings.workers)
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was installed before it. Make that one a normal exit, so main()'s finally
    # still stops the embedded Postgres.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    if settings.workers > 1:
        os.environ["INGEST_HOST"] = settings.host
        os.environ["INGEST_PORT"] = str(settings.port)
        with tempfile.TemporaryDirectory(prefix="ingest-metrics-") as metrics_dir:
            os.environ[MULTIPROC_ENV] = metrics_dir
            uvicorn.run("ingest.app:app_from_env", factory=True, workers=settings.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
