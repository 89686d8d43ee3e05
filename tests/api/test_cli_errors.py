"""What a person sees when `ingest` cannot do its job: one line naming the problem and the setting
to change, a non-zero exit and no traceback; plus `--help` and progress on long commands."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ingest import migrate
from tests.conftest import dsn_for

INGEST = [sys.executable, "-m", "ingest.cli"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INGEST, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and said why on a single stderr line, without a
    traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ingest: error: ")
    return lines[0]


@pytest.fixture(name="listening_port")
def _listening_port() -> Iterator[int]:
    """A port another program already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port: int = s.getsockname()[1]
        yield port


@pytest.fixture(name="empty_db")
def _empty_db(pg_admin_dsn: str) -> Iterator[str]:
    """A database with no migrations applied yet."""
    name = f"ingest_empty_{os.getpid()}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    asyncio.run(admin(f"CREATE DATABASE {name}"))
    yield dsn_for(pg_admin_dsn, name)
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class TestDatabaseErrors:
    def test_unreachable_database_names_host_and_port_but_not_the_password(self) -> None:
        """Connection refused: where, why, which setting; the password never appears."""
        result = _run(
            ["migrate"], _env(INGEST_DATABASE_URL="postgresql://u:secretpw@127.0.0.1:1/x")
        )
        line = _one_error_line(result)
        assert line == (
            "ingest: error: cannot connect to Postgres at 127.0.0.1:1 (connection refused); "
            "check INGEST_DATABASE_URL"
        )
        assert "secretpw" not in result.stderr + result.stdout

    @pytest.mark.parametrize("command", [["purge"], ["admin", "create-org", "Acme"]])
    def test_every_database_command_says_the_same(self, command: list[str]) -> None:
        """purge and admin create-org fail the same way as migrate, with stdout left empty."""
        result = _run(command, _env(INGEST_DATABASE_URL="postgresql://u:secretpw@127.0.0.1:1/x"))
        assert "cannot connect to Postgres at 127.0.0.1:1" in _one_error_line(result)
        assert result.stdout == ""
        assert "secretpw" not in result.stderr

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("not a url", "INGEST_DATABASE_URL is not a Postgres URL; expected postgresql://"),
            ("mysql://u:secretpw@db/x", "is not a Postgres URL (it starts with mysql://)"),
            ("postgresql://u:secretpw@db:port/x", "INGEST_DATABASE_URL has an invalid port 'port'"),
            ("postgresql://u:secretpw@db/x?sslmode=nope", "is not a usable Postgres URL"),
        ],
    )
    def test_unusable_url_is_refused_without_echoing_it(self, url: str, expected: str) -> None:
        """A malformed URL is named by its variable, never printed (it may hold a password)."""
        result = _run(["migrate"], _env(INGEST_DATABASE_URL=url))
        assert expected in _one_error_line(result)
        assert "secretpw" not in result.stderr

    def test_embedded_postgres_that_cannot_start(self, tmp_path: Path) -> None:
        """INGEST_DATA_DIR is a file: the error names the directory and both ways out."""
        not_a_dir = tmp_path / "data"
        not_a_dir.write_text("")
        line = _one_error_line(_run(["migrate"], _env(INGEST_DATA_DIR=str(not_a_dir))))
        assert f"the embedded Postgres did not start under {not_a_dir}/pg" in line
        assert "INGEST_DATA_DIR" in line
        assert "INGEST_DATABASE_URL" in line


class TestServeErrors:
    def test_missing_geoip_file(self, tmp_path: Path) -> None:
        """Checked before any database work, naming the file and INGEST_GEOIP_DB."""
        missing = tmp_path / "GeoLite2-City.mmdb"
        result = _run(
            ["serve"],
            _env(
                INGEST_GEOIP_DB=str(missing),
                # Unreachable on purpose: the GeoIP error must come first.
                INGEST_DATABASE_URL="postgresql://u:p@127.0.0.1:1/x",
            ),
        )
        line = _one_error_line(result)
        assert f"GeoIP database {missing}: no such file" in line
        assert "set INGEST_GEOIP_DB" in line

    def test_geoip_file_that_is_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not a MaxMind DB is refused the same way."""
        bogus = tmp_path / "city.mmdb"
        bogus.write_bytes(b"not a database")
        line = _one_error_line(_run(["serve"], _env(INGEST_GEOIP_DB=str(bogus))))
        assert "not a valid MaxMind DB (.mmdb) file" in line
        assert "INGEST_GEOIP_DB" in line

    def test_port_in_use(self, listening_port: int, geoip_db: Path) -> None:
        """Another program holds the port: the exact port, host, and both ways to change it."""
        result = _run(
            ["serve", "--port", str(listening_port)],
            _env(
                INGEST_GEOIP_DB=str(geoip_db), INGEST_DATABASE_URL="postgresql://u:p@127.0.0.1:1/x"
            ),
        )
        assert _one_error_line(result) == (
            f"ingest: error: port {listening_port} on 127.0.0.1 is in use; "
            "choose another with --port or INGEST_PORT"
        )

    def test_port_in_use_from_the_environment(self, listening_port: int, geoip_db: Path) -> None:
        """INGEST_PORT is checked the same way as --port."""
        result = _run(
            ["serve"], _env(INGEST_GEOIP_DB=str(geoip_db), INGEST_PORT=str(listening_port))
        )
        assert f"port {listening_port} on 127.0.0.1 is in use" in _one_error_line(result)


class TestHelp:
    @pytest.mark.parametrize(
        ("command", "description", "variables"),
        [
            ([], "Privacy-first event ingestion", ["INGEST_"]),
            (
                ["serve"],
                "Run the HTTP API (applies migrations first).",
                ["INGEST_DATABASE_URL", "INGEST_PORT", "INGEST_HOST", "INGEST_GEOIP_DB"],
            ),
            (
                ["migrate"],
                "Apply the SQL migrations that are not applied yet.",
                ["INGEST_DATABASE_URL"],
            ),
            (["admin"], "Bootstrap commands (create-org).", ["INGEST_DATABASE_URL"]),
            (
                ["admin", "create-org"],
                "Create an organization and print its first secret key as JSON.",
                ["INGEST_DATABASE_URL", "INGEST_DATA_DIR"],
            ),
            (
                ["purge"],
                "Delete expired data: events and message ids past each project's retention.",
                ["INGEST_DATABASE_URL", "events_retention_days", "dedup_window_days"],
            ),
        ],
    )
    def test_every_command_describes_itself_and_its_settings(
        self, command: list[str], description: str, variables: list[str]
    ) -> None:
        """`--help` prints what the command does and the variables it reads, and exits 0."""
        result = _run([*command, "--help"], _env())
        assert result.returncode == 0, result.stderr
        assert description in result.stdout
        for variable in variables:
            assert variable in result.stdout

    def test_top_level_help_lists_every_command(self) -> None:
        """`ingest --help` names each command with its one-line summary."""
        out = _run(["--help"], _env()).stdout
        for command, summary in (
            ("serve", "run the HTTP API"),
            ("migrate", "apply the SQL migrations"),
            ("admin", "bootstrap commands"),
            ("purge", "delete expired data"),
            ("reencode", "seal the email and phone digests"),
            ("rotate-master-key", "re-wrap every project's keys"),
        ):
            assert re.search(rf"^\s+{re.escape(command)}\s+{re.escape(summary)}", out, re.M), (
                command
            )


class TestProgress:
    def test_migrate_reports_each_file_on_stderr_and_the_result_on_stdout(
        self, empty_db: str
    ) -> None:
        """One log line per applied file (JSON when stderr is not a terminal); stdout is JSON."""
        result = _run(["migrate"], _env(INGEST_DATABASE_URL=empty_db))
        assert result.returncode == 0, result.stderr
        names = [f"{m.version:04d}_{m.name}" for m in migrate.load()]
        assert json.loads(result.stdout) == {"applied": names}
        lines = [json.loads(line) for line in result.stderr.splitlines()]
        applied = [line for line in lines if line["event"] == "migration_applied"]
        assert [f"{line['version']:04d}_{line['name']}" for line in applied] == names
        assert lines[-1]["event"] == "migrations_done"
        assert lines[-1]["applied"] == len(names)

    def test_migrate_progress_is_readable_on_a_terminal(self, empty_db: str) -> None:
        """With stderr on a terminal the progress is plain text, and stdout stays JSON."""
        primary, secondary = pty.openpty()
        with subprocess.Popen(
            [*INGEST, "migrate"],
            env=_env(INGEST_DATABASE_URL=empty_db),
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        ) as proc:
            os.close(secondary)
            chunks = []
            while True:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            stdout, _ = proc.communicate(timeout=120)
        os.close(primary)
        stderr = _ANSI.sub("", b"".join(chunks).decode())
        assert proc.returncode == 0, stderr
        first = migrate.load()[0]
        progress = [line for line in stderr.splitlines() if "migration_applied" in line]
        assert len(progress) == len(migrate.load())
        assert f"name={first.name}" in progress[0]
        assert not any(line.lstrip().startswith("{") for line in stderr.splitlines())
        assert json.loads(stdout)["applied"][0] == f"{first.version:04d}_{first.name}"

    def test_purge_says_what_it_deleted(self, db_dsn: str) -> None:
        """stdout: the counts as JSON; stderr: a ``purge_done`` log line with the same counts."""

        async def seed() -> None:
            conn = await asyncpg.connect(db_dsn)
            try:
                org_id = await conn.fetchval(
                    "INSERT INTO organizations (id, name) VALUES (gen_random_uuid(), 'o') "
                    "RETURNING id"
                )
                project_id = await conn.fetchval(
                    "INSERT INTO projects (id, org_id, name, events_retention_days, "
                    "dedup_window_days, dead_letter_days) "
                    "VALUES (gen_random_uuid(), $1, 'p', 3, 1, 2) RETURNING id",
                    org_id,
                )
                # Three partitions past 3 days, one event in the default partition past it,
                # and two message ids past one day.
                await conn.execute(
                    "SELECT ingest_ensure_event_partitions(current_date - 6, current_date - 4)"
                )
                await conn.execute(
                    "INSERT INTO events (project_id, received_at, message_id, type, timestamp) "
                    "VALUES ($1, now() - interval '30 days', 'm', 'track', now())",
                    project_id,
                )
                await conn.execute(
                    "INSERT INTO event_dedup (project_id, message_id, received_at) "
                    "SELECT $1, 'm' || g, now() - interval '2 days' FROM generate_series(1, 2) g",
                    project_id,
                )
                # Forwarding: a dead letter past the project's dead_letter_days (2 here) and
                # one within it; a delivery record of an event past the retention, one within.
                destination = await conn.fetchval(
                    "INSERT INTO destinations (project_id, id, type, name, url) "
                    "VALUES ($1, gen_random_uuid(), 'webhook', 'h', 'https://h.example/') "
                    "RETURNING id",
                    project_id,
                )
                await conn.execute(
                    "INSERT INTO outbox (project_id, destination_id, received_at, message_id, "
                    "type, timestamp, status, dead_at) "
                    "SELECT $1, $2, now(), 'd' || g, 'track', now(), 'dead', "
                    "now() - g * interval '1 day' - interval '1 hour' "
                    "FROM generate_series(1, 2) g",
                    project_id,
                    destination,
                )
                await conn.execute(
                    "INSERT INTO deliveries (project_id, destination_id, message_id, received_at) "
                    "SELECT $1, $2, 'm' || g, now() - g * interval '4 days' "
                    "FROM generate_series(0, 1) g",
                    project_id,
                    destination,
                )
            finally:
                await conn.close()

        asyncio.run(seed())
        result = _run(["purge"], _env(INGEST_DATABASE_URL=db_dsn))
        assert result.returncode == 0, result.stderr
        counts = {
            "partitions_dropped": 3,
            "partitions_deferred": 0,
            "events_deleted": 1,
            "dedup_deleted": 2,
            "idempotency_deleted": 0,
            "dead_letters_deleted": 1,
            "deliveries_deleted": 1,
            "projects_finished": 0,
            "skipped": False,
        }
        assert json.loads(result.stdout) == counts
        done = [json.loads(line) for line in result.stderr.splitlines()][-1]
        assert done["event"] == "purge_done"
        assert {k: done[k] for k in counts} == counts

    def test_the_retired_dedup_window_variable_is_refused(self, db_dsn: str) -> None:
        """INGEST_DEDUP_WINDOW_DAYS moved to the project: setting it says where it went."""
        result = _run(["purge"], _env(INGEST_DATABASE_URL=db_dsn, INGEST_DEDUP_WINDOW_DAYS="3"))
        assert result.returncode == 2
        assert "INGEST_DEDUP_WINDOW_DAYS" in result.stderr
        assert "dedup_window_days" in result.stderr

    def test_admin_create_org_keeps_stdout_pure_json(self, db_dsn: str) -> None:
        """The logs (migrations included) go to stderr so the key can be piped into jq."""
        result = _run(["admin", "create-org", "Acme"], _env(INGEST_DATABASE_URL=db_dsn))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["name"] == "Acme"
        assert "migrations_done" in result.stderr

    def test_build_test_mmdb_says_what_it_wrote(self, tmp_path: Path) -> None:
        """The GeoIP test-database builder names the file and every network in it."""
        out = tmp_path / "test.mmdb"
        result = subprocess.run(
            [sys.executable, "-m", "geoip.build_test_mmdb", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"wrote {out}" in result.stdout
        assert "192.0.2.0/24" in result.stdout
        assert out.stat().st_size > 0
