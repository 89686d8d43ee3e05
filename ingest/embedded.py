"""The zero-configuration database: an embedded Postgres (PyPI ``pgserver``) under a data
directory, so a restart keeps the events."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Final

import structlog

log = structlog.get_logger("ingest.embedded")

DATABASE: Final = "ingest"

# Postgres echoes row data in DETAIL/CONTEXT and in the failing statement; keep both out of its
# log so no raw value a client sent can land there (RELIABILITY T15).
_SERVER_SETTINGS: Final = {
    "log_error_verbosity": "terse",
    "log_min_error_statement": "panic",
}


def start(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) the embedded server; return it and the DSN of the ``ingest`` database.

    The server stops when the last process using it exits (pgserver's cleanup_mode="stop").
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]  # not re-exported

    # pgserver logs every command it runs at INFO, initdb's whole output included.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    pgdata = data_dir / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE};")
    for name, value in _SERVER_SETTINGS.items():
        server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
    server.psql("SELECT pg_reload_conf();")
    dsn = server.get_uri(DATABASE)
    log.info("embedded_postgres_started", data_dir=str(pgdata))
    return server, dsn
