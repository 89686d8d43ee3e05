"""The ingest benchmark, in one command::

    .venv/bin/python -m loadtests.bench [--database-url URL] [--duration 15] [--connections 64]
                                        [--workers N] [--rounds N] [--profile DIR] [--json FILE]

It uses the Postgres given (``--database-url`` or ``INGEST_DATABASE_URL``) or starts an embedded
one (pgserver) in a temporary directory, creates a fresh database for the run, starts
``ingest serve`` on a free loopback port, creates an organization and a project, then:

A. drives single-event ``POST /v1/events`` with wrk (``loadtests/events.lua``);
B. drives 100-event batches the same way;
C. measures the raw binary COPY rate of equivalent rows (built by ``ingest.events.EventParser``
   from the same events the Lua script sends) into the same ``events`` table of the same
   database, from as many concurrent asyncpg connections, one transaction per COPY, with
   ``synchronous_commit`` on: 1 row per transaction and 100 rows per transaction; and, for the
   diagnosis, ``EventWrites.insert_events`` (the service's own write; claim + COPY at 100 rows).

After every phase the rows in ``events`` must equal the events acknowledged; otherwise it prints
MISMATCH and exits 1. It prints a table with events/s, latency percentiles, errors, rows, and
the service's rate as a fraction of the raw COPY rate of the same batch shape. Every process it
starts listens on 127.0.0.1 only and is stopped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import ingest
from ingest import keyring
from ingest.config import Settings
from ingest.events import COLUMNS, DEVICES, EventParser, Limits, Row, Source
from ingest.store import EventWrites, init_connection
from ingest.store.copy import copy_rows, plan_copy

HERE: Final = Path(__file__).resolve().parent
LUA_SCRIPT: Final = HERE / "events.lua"
BATCH_SIZE: Final = 100

# Issue 5, item 7: the targets on the 2-core reference machine.
TARGET_BATCH_FRACTION: Final = 0.60
TARGET_SINGLE_EVENTS_S: Final = 15_000.0
TARGET_SINGLE_P99_MS: Final = 15.0

# What makes "a 200 means committed" true; the benchmark refuses to run without them.
DURABILITY: Final = ("fsync", "synchronous_commit", "full_page_writes")
SHOWN_SETTINGS: Final = (
    "server_version",
    *DURABILITY,
    "wal_sync_method",
    "commit_delay",
    "shared_buffers",
    "max_wal_size",
    "max_connections",
)

WRK_MISSING: Final = """\
wrk is not installed; the benchmark drives load with it (a C load generator, so the client is
not the bottleneck). Install it, then run this command again:

    Debian/Ubuntu:  sudo apt-get install -y wrk
    macOS:          brew install wrk
"""


class BenchError(Exception):
    """Setup failed (the message says what); nothing was measured."""


class Mismatch(Exception):
    """A warm-up stored other than the events it acknowledged: the run stops, exit code 1."""


def say(message: str) -> None:
    print(message, flush=True)


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_total = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (probe.stdout + probe.stderr).strip().splitlines()[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "loadavg_start": list(os.getloadavg()),
        # The service the bench starts imports the same modules (same interpreter, same path).
        "native": ingest.native(),
    }


# -- Postgres ---------------------------------------------------------------------------------


def dsn_for(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            list(SHOWN_SETTINGS),
        )
    finally:
        await conn.close()
    out = {}
    for r in rows:
        unit = r["unit"]
        setting = r["setting"]
        if unit == "8kB":
            setting = f"{int(setting) * 8 // 1024}MB"
        elif unit:
            setting = f"{setting}{unit}"
        out[r["name"]] = setting
    return {name: out[name] for name in SHOWN_SETTINGS if name in out}


def start_postgres(url: str | None, tmp: Path, stack: contextlib.ExitStack) -> tuple[str, str]:
    """The admin DSN of the Postgres to use, and a description of it."""
    if url:
        return url, "given (--database-url / INGEST_DATABASE_URL)"
    from ingest import embedded

    say("starting an embedded Postgres (pgserver) in a temporary directory...")
    server, dsn = embedded.start(tmp / "data")
    stack.callback(_quietly, "stop the embedded Postgres", server.cleanup)
    return dsn, "embedded (pgserver, temporary data directory)"


def create_database(admin_dsn: str, stack: contextlib.ExitStack) -> str:
    name = f"ingest_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(admin_dsn, f"CREATE DATABASE {name}"))
    stack.callback(
        _quietly,
        f"drop the database {name}",
        lambda: asyncio.run(_admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
    )
    say(f"created the database {name} for this run")
    return dsn_for(admin_dsn, name)


async def _reset(dsn: str) -> None:
    """Empty the event tables and checkpoint, so every phase starts from the same state."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute("TRUNCATE events, event_dedup")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    return count


def _quietly(what: str, action: Callable[[], object]) -> None:
    """Run one cleanup step; a failure is reported and the next steps still run."""
    try:
        action()
    except BaseException as exc:  # Ctrl-C during cleanup must not skip the remaining steps
        say(f"cleanup: could not {what}: {type(exc).__name__}: {exc}")


# -- where the machine's CPU goes during a phase ----------------------------------------------

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _process_tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every descendant."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _proc_stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], cpu[int(entry.name)] = found
    tree = {root} if root in cpu else set()
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: cpu[pid] for pid in tree}


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


async def postmaster_pid(dsn: str) -> int | None:
    """The local Postgres server process, when the database runs on this machine."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        found = _proc_stat(backend)  # while the backend lives
    finally:
        await conn.close()
    if found is None:
        return None
    with contextlib.suppress(OSError):
        if Path(f"/proc/{found[0]}/comm").read_text().strip().startswith("postgres"):
            return found[0]
    return None


class CpuMeter:
    """CPU used during one phase, in cores: the server's processes, Postgres's, wrk (a child
    that has exited), the benchmark itself, everything else on the machine, and idle."""

    def __init__(self, server_pid: int | None, postgres_pid: int | None) -> None:
        self.roots = {"server": server_pid, "postgres": postgres_pid}
        self.before: dict[str, dict[int, float]] = {}
        self.started = 0.0
        self.machine = (0.0, 0.0)
        self.self_cpu = 0.0
        self.children_cpu = 0.0

    @staticmethod
    def _rusage(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self.before = {k: _process_tree(p) if p else {} for k, p in self.roots.items()}
        self.machine = _machine_cpu()
        self.self_cpu = self._rusage(resource.RUSAGE_SELF)
        self.children_cpu = self._rusage(resource.RUSAGE_CHILDREN)
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        busy0, total0 = self.machine
        busy1, total1 = _machine_cpu()
        cpus = os.cpu_count() or 1
        machine_busy = (busy1 - busy0) / max(total1 - total0, 1) * cpus
        out: dict[str, float] = {}
        for name, root in self.roots.items():
            if not root:
                continue
            now = _process_tree(root)
            used = sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in now.items())
            out[name] = used / elapsed
        out["wrk"] = (self._rusage(resource.RUSAGE_CHILDREN) - self.children_cpu) / elapsed
        out["bench"] = (self._rusage(resource.RUSAGE_SELF) - self.self_cpu) / elapsed
        out["other"] = max(0.0, machine_busy - sum(out.values()))
        out["idle"] = max(0.0, cpus - machine_busy)
        return out


def describe_per_event(per_event: dict[str, float]) -> str:
    names = {"postgres": "Postgres"}
    parts = [f"{names.get(k, k)} {v:,.0f}" for k, v in per_event.items()]
    total = sum(per_event.values())
    return f"CPU an event in us: {', '.join(parts)}; {total:,.0f} in all"


def describe_bound(bound: CpuBound, measured: dict[str, float], healthz: dict[str, float]) -> str:
    return (
        f"the CPU: {TARGET_SINGLE_EVENTS_S:,.0f} events/s on {os.cpu_count() or 1} cores leaves "
        f"{bound.allowed_us:,.0f} us an event to the server, Postgres and wrk together; the "
        f"median round used {sum(measured.values()):,.0f}.\n"
        "    A server that spent on a write no more than on GET /healthz "
        f"({healthz['server_us']:,.0f} us, wrk {healthz['wrk_us']:,.0f}), with Postgres's "
        f"{measured['postgres']:,.0f} an event, would reach at most "
        f"{bound.ceiling_per_s:,.0f} events/s here"
    )


def describe_cpu(cpu: dict[str, float]) -> str:
    cpus = os.cpu_count() or 1
    names = {"postgres": "Postgres", "other": "other processes"}
    parts = [f"{names.get(k, k)} {v:.2f}" for k, v in cpu.items()]
    return f"CPU in cores (of {cpus}): " + ", ".join(parts)


# -- the service ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# Set by the benchmark itself; any other INGEST_* variable (INGEST_WRITER_CONNECTIONS, ...) in
# the environment reaches the server, so that tuning can be tried without editing code.
_CONTROLLED: Final = frozenset(
    {"INGEST_DATABASE_URL", "INGEST_LOG_LEVEL", "INGEST_LOG_FORMAT", "INGEST_HOST", "INGEST_PORT"}
)


def server_overrides() -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("INGEST_") and k not in _CONTROLLED
    }


@functools.cache
def master_key() -> str:
    """The master key of this run: the environment's, or a new one (the run's database is new)."""
    return os.environ.get("INGEST_MASTER_KEY") or keyring.new_master_key()


def service_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED}
    env.update(
        INGEST_DATABASE_URL=dsn,
        INGEST_MASTER_KEY=master_key(),
        INGEST_LOG_LEVEL="warning",  # one line per request would make logging the bottleneck
        INGEST_LOG_FORMAT="json",
        INGEST_HOST="127.0.0.1",
    )
    # One key sends everything here, far past a real app's per-key rate: measure the write
    # path, not the limiter (an INGEST_RATE_LIMIT_PER_KEY in the environment still wins).
    env.setdefault("INGEST_RATE_LIMIT_PER_KEY", "0")
    return env


def ingest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ingest.cli", *args]


def create_org(dsn: str) -> str:
    """``ingest admin create-org`` (which also applies the migrations); the secret key."""
    done = subprocess.run(
        ingest_command("admin", "create-org", "bench"),
        env=service_env(dsn),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"ingest admin create-org failed:\n{done.stderr[-3000:]}")
    key: str = json.loads(done.stdout)["secret_key"]["key"]
    return key


class Server:
    """``ingest serve`` in its own process group, on 127.0.0.1."""

    def __init__(
        self, dsn: str, workers: int | None, log_path: Path, port: int | None = None
    ) -> None:
        self.port = port or free_port()  # a restart (loadtests.faults) reuses its port
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if workers is not None:
            args += ["--workers", str(workers)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            ingest_command(*args),
            env=service_env(dsn),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
        )

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"ingest serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            status, _ = http_json("GET", f"{self.base}/readyz", timeout=2)
            if status == 200:
                return
            time.sleep(0.2)
        raise BenchError(f"ingest serve was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The server process and its worker processes (``--workers N``)."""
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn drains, the writer commits its queue
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say("cleanup: ingest serve did not stop within 20 s; killing it")
        # Its process group holds its workers; nothing of it may outlive the benchmark.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310  # our own loopback URL
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310  # loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


_WRITER_SERIES: Final = (
    "ingest_write_batch_size_sum",
    "ingest_write_batch_size_count",
    "ingest_write_duration_seconds_sum",
    "ingest_write_wait_seconds_sum",
    "ingest_write_wait_seconds_count",
)


def writer_metrics(base: str) -> dict[str, float]:
    """The writer's counters from /metrics (all workers' when there are several)."""
    req = urllib.request.Request(f"{base}/metrics")  # noqa: S310  # our own loopback URL
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  # loopback
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _WRITER_SERIES:
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(value)
    return out


def describe_writer(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    commits = delta("ingest_write_batch_size_count")
    if commits <= 0:
        return "writer: no metrics"
    waited = delta("ingest_write_wait_seconds_count")
    return (
        f"writer: {commits:,.0f} commits ({commits / seconds:,.0f}/s), "
        f"{delta('ingest_write_batch_size_sum') / commits:,.1f} events per commit, "
        f"{1000 * delta('ingest_write_duration_seconds_sum') / commits:.1f} ms per commit, "
        f"{1000 * delta('ingest_write_wait_seconds_sum') / max(waited, 1):.1f} ms from "
        "queue to commit per request"
    )


def create_project(
    base: str, secret_key: str, digest_storage: str = "protected"
) -> tuple[str, uuid.UUID]:
    status, body = http_json(
        "POST",
        f"{base}/v1/projects",
        {"name": "bench", "digest_storage": digest_storage},
        {"Authorization": f"Bearer {secret_key}"},
    )
    if status != 201:
        raise BenchError(f"POST /v1/projects answered {status}: {body}")
    return body["write_key"]["key"], uuid.UUID(body["id"])


# -- wrk scenarios ----------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    batch: int
    events_per_s: float
    requests_per_s: float
    window_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    ok: int
    non200: int
    s5xx: int
    socket_errors: int
    statuses: dict[str, int]
    acknowledged: int
    duplicates: int
    rows: int
    copy_shape: str = ""
    copy_rate: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    writer: str = ""
    wrk_output: str = field(default="", repr=False)

    @property
    def fraction(self) -> float:
        return self.events_per_s / self.copy_rate if self.copy_rate else 0.0

    @property
    def per_event_us(self) -> dict[str, float]:
        return cpu_per_event(self.cpu, self.events_per_s)

    @property
    def rows_match(self) -> bool:
        return self.rows == self.acknowledged


class Profiler:
    """py-spy recording the server (and its worker processes) for the length of one phase."""

    def __init__(self, pid: int, out: Path, seconds: int, native: bool) -> None:
        self.out = out
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        cmd = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--duration", str(seconds)]
        cmd += ["--rate", "100", "--format", "raw", "--output", str(out)]
        # --native reads C stacks (uvloop, asyncpg, libc): it has to pause the process to do so.
        cmd.append("--native" if native else "--nonblocking")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def finish(self) -> Path | None:
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            say(f"py-spy recorded nothing: {err.decode(errors='replace')[-500:]}")
            return None
        return self.out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_wrk(
    url: str,
    write_key: str,
    *,
    batch: int,
    seconds: int,
    connections: int,
    threads: int,
    grace: int,
    timeout: int,
    run_id: str,
) -> dict[str, Any]:
    """One wrk run; the counts its Lua script reports. Nothing is in flight when it returns.

    wrk runs with ``-d seconds + grace``; its threads stop sending at ``seconds`` and each stops
    once its last answer is in, then wrk gets SIGINT (which ends it early and still reports).
    """
    with tempfile.TemporaryDirectory(prefix="ingest-wrk-") as work:
        done_dir = Path(work)
        env = {
            **os.environ,
            "BENCH_WRITE_KEY": write_key,
            "BENCH_BATCH": str(batch),
            "BENCH_RUN_ID": run_id,
            "BENCH_SECONDS": str(seconds),
            "BENCH_DONE_DIR": str(done_dir),
        }
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds + grace}s"]
        cmd += [f"--timeout={timeout}s", "-s", str(LUA_SCRIPT), f"{url}/v1/events"]
        out_path, err_path = done_dir / "stdout", done_dir / "stderr"
        with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + seconds + grace + 60
                interrupted = False
                while proc.poll() is None and time.monotonic() < deadline:
                    stopped = len(list(done_dir.glob("thread-*")))
                    if stopped >= threads and not interrupted:
                        proc.send_signal(signal.SIGINT)
                        interrupted = True
                    time.sleep(0.05)
                if proc.poll() is None:
                    raise BenchError("wrk did not finish in time")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        out = out_path.read_text(errors="replace")
        err = err_path.read_text(errors="replace")
    found = re.search(r"^BENCH_RESULT (\{.*\})$", out, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    result["output"] = out[: found.start()].rstrip()
    return result


def calibrate(
    url: str, *, seconds: int, connections: int, threads: int, meter: CpuMeter | None = None
) -> dict[str, float]:
    """Plain wrk on GET /healthz: what this server answers with no body, no event and no
    database, on this machine right now (the HTTP stack's ceiling). With a meter, also the
    CPU that the server and wrk spent a request."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if meter is not None:
        meter.start()
    done = subprocess.run(
        [*cmd, f"{url}/healthz"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        start_new_session=True,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or rate is None:
        raise BenchError(f"wrk on /healthz failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    result = {
        "requests_per_s": float(rate.group(1)),
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
    }
    if meter is not None:
        used = cpu_per_event(meter.stop(), result["requests_per_s"])
        result |= {f"{name}_us": us for name, us in used.items() if name in ("server", "wrk")}
    return result


def cpu_per_event(cpu: dict[str, float], events_per_s: float) -> dict[str, float]:
    """Cores used (CpuMeter) as microseconds of CPU an event, for the server, Postgres and wrk."""
    if events_per_s <= 0:
        return {}
    return {k: cpu[k] * 1e6 / events_per_s for k in ("server", "postgres", "wrk") if k in cpu}


@dataclass(frozen=True)
class CpuBound:
    """What the CPU allows single events on this machine (service, Postgres and wrk share it).

    ``allowed_us``: the CPU an event that the target rate leaves the three together.
    ``floor_us``: the least an event could cost: the server and wrk as for GET /healthz (the
    HTTP stack and middleware, no body, no work) plus Postgres as measured for the events.
    ``ceiling_per_s``: the most events a second at that floor, with every core busy.
    """

    allowed_us: float
    floor_us: float
    ceiling_per_s: float


def cpu_bound(
    cpus: int, target_per_s: float, healthz: dict[str, float], measured: dict[str, float]
) -> CpuBound | None:
    """None without the /healthz figures or Postgres's."""
    if "server_us" not in healthz or "wrk_us" not in healthz or "postgres" not in measured:
        return None
    floor = healthz["server_us"] + healthz["wrk_us"] + measured["postgres"]
    return CpuBound(
        allowed_us=cpus * 1e6 / target_per_s,
        floor_us=floor,
        ceiling_per_s=cpus * 1e6 / floor if floor > 0 else 0.0,
    )


def scenario(
    name: str, result: dict[str, Any], rows: int, *, copy_shape: str, copy_rate: float
) -> Scenario:
    window = result["window_s"] or 1e-9
    lat = result["latency_us"]
    errors = result["errors"]
    return Scenario(
        name=name,
        batch=result["batch"],
        events_per_s=result["accepted"] / window,
        requests_per_s=result["answered"] / window,
        window_s=window,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000,
        max_ms=lat["max"] / 1000,
        requests=result["answered"],
        ok=result["ok"],
        non200=result["non200"],
        s5xx=result["s5xx"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        statuses=result["statuses"],
        acknowledged=result["accepted"],
        duplicates=result["duplicates"],
        rows=rows,
        copy_shape=copy_shape,
        copy_rate=copy_rate,
        wrk_output=result["output"],
    )


# -- the raw COPY -----------------------------------------------------------------------------

TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.000Z"
CONTEXT: Final = {
    "library": {"name": "analytics.js", "version": "5.2.0"},
    "locale": "en-US",
    "timezone": "Europe/Paris",
    "userAgent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
    "page": {
        "path": "/products/sku-1",
        "referrer": "https://www.example.com/",
        "title": "Shoes",
        "url": "https://shop.example.com/products/sku-1",
    },
}


def sdk_event(thread_no: int, n: int, timestamp: str, sent_at: bool) -> dict[str, Any]:
    """The event events.lua sends as number ``n`` of a thread (keep the two in step)."""
    k = n % 10000
    event: dict[str, Any] = {
        "message_id": f"copy-{thread_no}-{n}",
        "user_id": f"user-{thread_no}-{k}",
        "anonymous_id": f"anon-{thread_no}-{k}",
        "timestamp": timestamp,
        "app_id": "shop-web",
        "context": json.loads(json.dumps(CONTEXT)),
    }
    if sent_at:
        event["sent_at"] = timestamp
    if n % 10 == 9:
        event["type"] = "identify"
        event["traits"] = {
            "email": f"User.{k}@Example.com",
            "phone": f"+1 415 555 {k:04d}",
            "plan": "pro",
            "name": "Bench User",
        }
    else:
        event["type"] = "track"
        event["event"] = "Product Viewed"
        event["properties"] = {
            "product_id": f"sku-{k % 500}",
            "price": 19.99,
            "currency": "USD",
            "category": "shoes",
            "position": n % 20,
        }
    return event


def template_rows(project_id: uuid.UUID, count: int = 2000) -> list[Row]:
    """Rows exactly as the service builds them from the events the Lua script sends."""
    parser = EventParser(Limits.from_settings(Settings()), lambda ip: None)
    timestamp = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
    events = [sdk_event(0, n, timestamp, sent_at=True) for n in range(1, count + 1)]
    source = Source(
        project_id=project_id, default_country=None, received_at=datetime.now(UTC), peer_geo=None
    )
    parsed = parser.parse(events, source)
    if parsed.rejected or len(parsed.rows) != count:
        raise BenchError(f"the template events do not parse: {parsed.rejected[:3]}")
    return parsed.rows


@dataclass
class CopyRun:
    name: str
    shape: str
    batch: int
    mode: str
    connections: int
    rows_per_s: float
    transactions_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    rows_written: int
    rows: int
    client_cpu: float  # CPU time of this (Python) client over the phase, as a share of one core
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rows_match(self) -> bool:
        return self.rows == self.rows_written


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def copy_rate(
    dsn: str,
    templates: Sequence[Row],
    *,
    name: str,
    shape: str,
    batch: int,
    mode: str,
    connections: int,
    seconds: float,
    meter: CpuMeter | None = None,
) -> CopyRun:
    """``connections`` connections, each writing ``batch`` rows per transaction for ``seconds``.

    mode "copy": one binary COPY per transaction (autocommit: the COPY is the transaction), with
    the service's own COPY encoding (ingest/store/copy.py), the cheapest client it has.
    mode "store": ``EventWrites.insert_events``, the service's write (at more than 64 rows a
    transaction: claim, then COPY; at fewer, one statement).
    """
    conns = await asyncio.gather(
        *(asyncpg.connect(dsn, timeout=30) for _ in range(connections)), return_exceptions=True
    )
    opened = [c for c in conns if isinstance(c, asyncpg.Connection)]
    try:
        failed = [c for c in conns if not isinstance(c, asyncpg.Connection)]
        if failed:
            raise BenchError(f"could not open {connections} connections: {failed[0]!r}")
        for conn in opened:
            await init_connection(conn)  # the same jsonb codec as the service
        go = asyncio.Event()
        end = 0.0
        latencies: list[list[float]] = [[] for _ in opened]
        written = [0] * len(opened)
        writes = EventWrites(keyring.Keyring(keyring.parse_master_key(master_key())))
        plan = await plan_copy(opened[0], "events", COLUMNS)

        async def loop(i: int, conn: asyncpg.Connection) -> None:
            seq = 0
            lat = latencies[i]
            ntpl = len(templates)
            # A raw COPY writes the columns of events; the service's rows end with device ids.
            width = len(COLUMNS) if mode == "copy" else DEVICES + 1
            await go.wait()
            while time.perf_counter() < end:
                received_at = datetime.now(UTC)
                rows = []
                for _ in range(batch):
                    seq += 1
                    t = templates[(i * 7919 + seq) % ntpl]
                    rows.append((t[0], received_at, f"{name}-{i}-{seq}", *t[3:width]))
                started = time.perf_counter()
                if mode == "copy":
                    await copy_rows(conn, plan, rows)
                else:
                    await writes.insert_events(conn, rows)
                lat.append(time.perf_counter() - started)
                written[i] += batch

        tasks = [asyncio.create_task(loop(i, c)) for i, c in enumerate(opened)]
        if meter is not None:
            meter.start()  # with every connection open: their backends are counted
        began = time.perf_counter()
        cpu_began = time.process_time()
        end = began + seconds
        go.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        client_cpu = (time.process_time() - cpu_began) / elapsed
        cpu = meter.stop() if meter is not None else {}
    finally:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
    rows_in_db = await _count_rows(dsn)
    all_lat = sorted(x for lat in latencies for x in lat)
    total = sum(written)
    return CopyRun(
        name=name,
        shape=shape,
        batch=batch,
        mode=mode,
        connections=connections,
        rows_per_s=total / elapsed,
        transactions_per_s=len(all_lat) / elapsed,
        p50_ms=_percentile(all_lat, 50) * 1000,
        p99_ms=_percentile(all_lat, 99) * 1000,
        p999_ms=_percentile(all_lat, 99.9) * 1000,
        rows_written=total,
        rows=rows_in_db,
        client_cpu=client_cpu,
        cpu=cpu,
    )


# -- the profile ------------------------------------------------------------------------------

_FRAME_LINE: Final = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``, shortened to the package path."""
    found = _FRAME_LINE.match(frame)
    if not found:
        return frame
    name, path = found.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _package(function: str) -> str:
    found = re.search(r"\((.*)\)$", function)
    path = found.group(1) if found else function
    if path.startswith("ingest/"):
        return path.removesuffix(".py")
    if "/" in path:
        return path.split("/", 1)[0]
    return path.removesuffix(".py") + " (stdlib/native)"


# Where a sample's time goes: the first entry whose substrings occur in the sample's stack (or,
# for leaf-only entries, in its innermost frame) takes it.
PHASES: Final = (
    ("garbage collector (native frames only)", ("gc_collect",), False),
    (
        "writer: EventWrites.insert_events (one statement; or BEGIN, claim, COPY, COMMIT)",
        ("EventWrites.insert_events",),
        False,
    ),
    ("writer: pool acquire/release (asyncpg reset query)", ("Writer._insert", "pool.py)"), False),
    ("writer: queue, futures, metrics", ("Writer.",), False),
    ("event parsing, PII hashing (EventParser.parse)", ("EventParser.parse",), False),
    ("request body JSON decode (_loads)", ("_loads (",), False),
    (
        "key lookup (Authenticator.lookup, event_target)",
        ("Authenticator.", "event_target ("),
        False,
    ),
    ("body read (read_body)", ("read_body (",), False),
    ("client IP and GeoIP lookup", ("client_ip (", "_geo (", "locate ("), False),
    ("answer: tally and JSON response", ("_answer (", "store_events (", "JSONResponse"), False),
    ("response write (uvicorn send: socket write)", ("RequestResponseCycle.send",), False),
    ("metrics (prometheus_client)", ("prometheus_client/",), False),
    ("handler, rest (post_events)", ("post_events (", "parse_events (", "read_json ("), False),
    ("request id, log line (RequestContext)", ("RequestContext.", "structlog/", "uuid"), True),
    (
        "HTTP parsing, ASGI and middleware (uvicorn, starlette)",
        ("uvicorn/", "starlette/", "FastWrites."),
        False,
    ),
)


def _phase(frames: Sequence[str]) -> str:
    for label, needles, leaf_only in PHASES:
        searched = frames[-1:] if leaf_only else frames
        if any(needle in frame for frame in searched for needle in needles):
            return label
    return "event loop, other"


def summarize_profile(
    paths: Sequence[Path], top: int = 25, rate: int = 0, seconds: float = 0
) -> str:
    """Self and inclusive shares per function, self share per package, and samples per
    process, from py-spy's raw (collapsed-stack) output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            raw = stack.split(";")
            procs = [f.split(":", 1)[0] for f in raw if f.startswith("process ")]
            frames = [_function(f) for f in raw if " (" in f and not f.startswith("process ")]
            if not frames:
                continue
            samples += count
            processes[procs[-1] if procs else "process"] += count
            self_counts[frames[-1]] += count
            packages[_package(frames[-1])] += count
            phases[_phase(frames)] += count
            for function in set(frames):
                total_counts[function] += count
    if not samples:
        return "no samples\n"
    lines = [f"{samples} samples (threads running or in a syscall; idle waits are not sampled)"]
    if rate and seconds:
        possible = rate * seconds
        lines.append(
            f"busy share per process ({rate} Hz over {seconds:g} s = {possible:g} samples each): "
            + ", ".join(f"{p} {100 * n / possible:.0f}%" for p, n in sorted(processes.items()))
        )
    lines += ["", "where the time goes (each sample counted once, first match in PHASES):"]
    for name, count in phases.most_common():
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    lines += ["", "self time by package/module:"]
    for name, count in packages.most_common(15):
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    lines += ["", f"top {top} functions by self time:"]
    for name, count in self_counts.most_common(top):
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    lines += ["", f"top {top} functions by inclusive time:"]
    for name, count in total_counts.most_common(top):
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


# -- the report -------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def report(
    scenarios: Sequence[Scenario],
    copies: Sequence[CopyRun],
    healthz: dict[str, float] | None = None,
) -> list[str]:
    """Print the table; return the problems (row mismatches), empty when all is well."""
    problems: list[str] = []
    header = (
        f"{'scenario':<38} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'non-200':>8} {'5xx':>6} {'rows in DB / acked':>24}  vs raw COPY"
    )
    say("")
    say(header)
    say("-" * len(header))
    for s in scenarios:
        check = "ok" if s.rows_match else "MISMATCH"
        rows = f"{s.rows:,} / {s.acknowledged:,} {check}"
        versus = f"{s.fraction:.2f} of {s.copy_shape} ({s.copy_rate:,.0f}/s)" if s.copy_rate else ""
        say(
            f"{s.name:<38} {s.events_per_s:>10,.0f} {_ms(s.p50_ms):>8} {_ms(s.p99_ms):>8} "
            f"{_ms(s.p999_ms):>9} {s.non200:>8} {s.s5xx:>6} {rows:>24}  {versus}"
        )
        if not s.rows_match:
            lost = s.acknowledged - s.rows
            what = (
                f"{lost} acknowledged events are NOT in the database"
                if lost > 0
                else f"{-lost} rows more than acknowledged"
            )
            problems.append(f"MISMATCH in {s.name}: {what}")
        if s.duplicates:
            problems.append(f"MISMATCH in {s.name}: {s.duplicates} events answered as duplicates")
    raw_batch: CopyRun | None = None  # the round's (each round's phases come in order)
    for c in copies:
        if c.mode == "copy" and c.batch == BATCH_SIZE:
            raw_batch = c
        check = "ok" if c.rows_match else "MISMATCH"
        rows = f"{c.rows:,} / {c.rows_written:,} {check}"
        versus = ""
        if c.mode == "store" and raw_batch is not None and raw_batch.rows_per_s:
            versus = f"{c.rows_per_s / raw_batch.rows_per_s:.2f} of 100-row COPY; "
        say(
            f"{c.name:<38} {c.rows_per_s:>10,.0f} {_ms(c.p50_ms):>8} {_ms(c.p99_ms):>8} "
            f"{_ms(c.p999_ms):>9} {'-':>8} {'-':>6} {rows:>24}  {versus}"
            f"{c.transactions_per_s:,.0f} tx/s, client CPU {c.client_cpu:.0%}"
        )
        if not c.rows_match:
            problems.append(f"MISMATCH in {c.name}: {c.rows} rows for {c.rows_written} written")
    say("")
    say(
        "latency: per HTTP request for the scenarios (wrk, including time queued behind other "
        "connections), per transaction for the COPY rows"
    )
    for s in scenarios:
        if s.cpu:
            say(f"{s.name}: {describe_cpu(s.cpu)}; {describe_per_event(s.per_event_us)}")
    for c in copies:
        if c.cpu:
            say(f"{c.name}: {describe_cpu(c.cpu)}")
    for s in scenarios:
        if s.writer:
            say(f"{s.name}: {s.writer}")
    for s in scenarios:
        if s.non200 or s.socket_errors:
            say(f"{s.name}: statuses {s.statuses}, socket errors/timeouts {s.socket_errors}")
    singles = [s for s in scenarios if s.batch == 1]
    batches = [s for s in scenarios if s.batch > 1]
    rounds = max(len(singles), len(batches))
    say("")
    say(
        "targets (issue 5, item 7)"
        + (f", on the median of {rounds} rounds:" if rounds > 1 else ":")
    )
    if batches and all(s.copy_rate for s in batches):
        fraction = statistics.median(s.fraction for s in batches)
        say(
            f"  100-event batches >= {TARGET_BATCH_FRACTION:.0%} of raw COPY: "
            f"{fraction:.1%}  {_verdict(fraction >= TARGET_BATCH_FRACTION)}"
        )
    if singles:
        rate = statistics.median(s.events_per_s for s in singles)
        p99 = statistics.median(s.p99_ms for s in singles)
        say(
            f"  single events >= {TARGET_SINGLE_EVENTS_S:,.0f}/s: {rate:,.0f}/s  "
            f"{_verdict(rate >= TARGET_SINGLE_EVENTS_S)}"
        )
        say(
            f"  single events p99 <= {TARGET_SINGLE_P99_MS:.0f} ms: {p99:.1f} ms  "
            f"{_verdict(p99 <= TARGET_SINGLE_P99_MS)}"
        )
        median = sorted(singles, key=lambda s: s.events_per_s)[(len(singles) - 1) // 2]
        bound = cpu_bound(
            os.cpu_count() or 1, TARGET_SINGLE_EVENTS_S, healthz or {}, median.per_event_us
        )
        if bound is not None:
            say(f"  {describe_bound(bound, median.per_event_us, healthz or {})}")
    fives = sum(s.s5xx for s in scenarios)
    say(f"  no 5xx: {fives}  {_verdict(fives == 0)}")
    return problems


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# -- the run ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="Benchmark ingest: single-event POSTs and 100-event batches with wrk, rows "
        "checked against acknowledged events, and the raw COPY rate of the same rows in the same "
        "database. Needs wrk (apt-get install -y wrk).",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("INGEST_DATABASE_URL") or None,
        help="an existing Postgres (a fresh database is created in it and dropped after); "
        "default INGEST_DATABASE_URL, else an embedded Postgres in a temporary directory",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase (15)")
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--workers", type=int, default=None, help="ingest serve --workers (default: its own)"
    )
    parser.add_argument(
        "--copy-connections",
        type=int,
        default=None,
        help="connections for the raw COPY (default: --connections, at most 64)",
    )
    parser.add_argument(
        "--scenarios",
        default="single,batch",
        help="comma-separated: single, batch (default both)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each (2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the scenarios and the raw COPY this many times, alternating, and judge the "
        "targets on the median round (1)",
    )
    parser.add_argument(
        "--grace",
        type=int,
        default=30,
        help="at most this many seconds for the last answers after --duration (30)",
    )
    parser.add_argument("--timeout", type=int, default=10, help="wrk's per-request timeout (10)")
    parser.add_argument(
        "--no-copy", action="store_true", help="skip the raw COPY measurement (no ratios)"
    )
    parser.add_argument(
        "--no-calibrate", action="store_true", help="skip the GET /healthz ceiling measurement"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the server with py-spy during each scenario into this directory",
    )
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native")
    parser.add_argument(
        "--digest-storage",
        choices=("protected", "plain"),
        default="protected",
        help="the bench project's digest_storage (default protected, the service's default)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output too")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not wanted or not wanted <= {"single", "batch"}:
        print("--scenarios takes single, batch or both", file=sys.stderr)
        return 2
    if args.connections < args.threads:
        print("--connections must be at least --threads", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("--rounds must be 1 or more", file=sys.stderr)
        return 2
    return run_guarded("benchmark", lambda: _run(args, wanted))


def run_guarded(what: str, run: Callable[[], int]) -> int:
    """Run a load tool's body so that Ctrl-C and SIGTERM unwind through its cleanup, and a
    BenchError is one line and exit code 2."""
    # SIGINT explicitly: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    from ingest.logs import configure_logging

    configure_logging("warning", "console", sys.stderr.buffer)
    try:
        return run()
    except BenchError as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


def run_scenarios(
    args: argparse.Namespace,
    wanted: set[str],
    server: Server,
    write_key: str,
    dsn: str,
    pg_pid: int | None,
    *,
    run_id: str,
    suffix: str,
    profile: Path | None,
    stack: contextlib.ExitStack,
) -> list[Scenario]:
    """One round of the wrk scenarios against ``server``."""
    scenarios: list[Scenario] = []
    shapes = [("single", 1), ("batch", BATCH_SIZE)]
    for kind, batch in shapes:
        if kind not in wanted:
            continue
        label = (
            f"A single-event POST, {args.connections} conn{suffix}"
            if batch == 1
            else f"B {batch}-event batches, {args.connections} conn{suffix}"
        )
        common = {
            "batch": batch,
            "connections": args.connections,
            "threads": args.threads,
            "grace": args.grace,
            "timeout": args.timeout,
        }
        if args.warmup > 0:
            asyncio.run(_reset(dsn))
            warm = run_wrk(
                server.base,
                write_key,
                seconds=args.warmup,
                run_id=f"{run_id}w{batch}",
                **common,
            )
            rows = asyncio.run(_count_rows(dsn))
            check = "ok" if rows == warm["accepted"] else "MISMATCH"
            say(f"warm-up {kind}: {warm['accepted']:,} events acknowledged, {rows:,} rows {check}")
            if rows != warm["accepted"]:
                raise Mismatch(
                    f"MISMATCH during the warm-up of {kind}: {rows} rows, {warm['accepted']}"
                )
        asyncio.run(_reset(dsn))
        say(f"running {label} for {args.duration} s...")
        profiler = None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            profiler = Profiler(
                server.proc.pid,
                profile / f"{kind}.txt",
                args.duration,
                args.profile_native,
            )
            stack.callback(profiler.kill)
        metrics_before = writer_metrics(server.base)
        meter = CpuMeter(server.proc.pid, pg_pid)
        meter.start()
        result = run_wrk(
            server.base,
            write_key,
            seconds=args.duration,
            run_id=f"{run_id}m{batch}",
            **common,
        )
        cpu_used = meter.stop()
        if profiler is not None and profile is not None:
            recorded = profiler.finish()
            if recorded is not None:
                summary = summarize_profile([recorded], rate=100, seconds=args.duration)
                (profile / f"{kind}-summary.txt").write_text(summary)
                say(f"py-spy profile of the server during {kind}: {recorded} (collapsed stacks)")
                say("\n".join(summary.splitlines()[:24]))
        rows = asyncio.run(_count_rows(dsn))
        scenarios.append(scenario(label, result, rows, copy_shape="", copy_rate=0.0))
        scenarios[-1].cpu = cpu_used
        scenarios[-1].writer = describe_writer(
            metrics_before, writer_metrics(server.base), scenarios[-1].window_s
        )
        if args.verbose:
            say(result["output"])
        s = scenarios[-1]
        say(
            f"  {s.events_per_s:,.0f} events/s, p99 {s.p99_ms:.1f} ms, "
            f"{s.acknowledged:,} acknowledged, {s.rows:,} rows"
        )
        say(f"  {describe_cpu(cpu_used)}")
        say(f"  {s.writer}")
        if server.proc.poll() is not None:
            raise BenchError(f"ingest serve died during {kind}:\n{server.log_tail()}")
    return scenarios


def run_copies(
    args: argparse.Namespace,
    dsn: str,
    templates: Sequence[Row],
    pg_pid: int | None,
    *,
    suffix: str,
) -> list[CopyRun]:
    """One round of the raw COPY phases (and insert_events), with no server running. The
    100-row COPY comes first, right after the batch scenario it is the yardstick of: the
    machine's speed drifts, and the target's ratio should measure the service, not the drift."""
    copies: list[CopyRun] = []
    conns = args.copy_connections or min(args.connections, 64)
    for name, shape, batch, mode in (
        (
            f"raw COPY {BATCH_SIZE} rows/tx, {conns} conn{suffix}",
            "100-row COPY",
            BATCH_SIZE,
            "copy",
        ),
        (f"raw COPY 1 row/tx, {conns} conn{suffix}", "1-row COPY", 1, "copy"),
        (
            f"insert_events {BATCH_SIZE} rows/tx, {conns} conn{suffix}",
            "insert_events",
            BATCH_SIZE,
            "store",
        ),
    ):
        asyncio.run(_reset(dsn))
        say(f"measuring {name} for {args.duration} s...")
        run = asyncio.run(
            copy_rate(
                dsn,
                templates,
                name=name,
                shape=shape,
                batch=batch,
                mode=mode,
                connections=conns,
                seconds=args.duration,
                meter=CpuMeter(None, pg_pid),
            )
        )
        copies.append(run)
        say(f"  {run.rows_per_s:,.0f} rows/s; {describe_cpu(run.cpu)}")
    return copies


def _run(args: argparse.Namespace, wanted: set[str]) -> int:
    info = machine()
    say(
        f"{info['date']}  {info['cpus']} CPUs ({info['cpu_model']}), {info['memory']} RAM, "
        f"load {info['loadavg_start'][0]:.2f}; {info['wrk']}"
    )
    say(
        "ingest: "
        + (
            "the parser compiled (native)"
            if info["native"]
            else "pure Python (`python hatch_build.py build` compiles the parser as a wheel has it)"
        )
    )
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
        stack.callback(_quietly, "remove the temporary directory", lambda: shutil.rmtree(tmp))
        admin_dsn, pg_kind = start_postgres(args.database_url, tmp, stack)
        dsn = create_database(admin_dsn, stack)
        settings = asyncio.run(_settings(dsn))
        off = [name for name in DURABILITY if settings.get(name) != "on"]
        if off:
            raise BenchError(f"Postgres runs with {', '.join(off)} off; the figures would lie")
        say(f"Postgres: {pg_kind}; " + ", ".join(f"{k}={v}" for k, v in settings.items()))

        overrides = server_overrides()
        if overrides:
            say(
                "server settings from the environment: "
                + " ".join(f"{k}={v}" for k, v in overrides.items())
            )
        secret_key = create_org(dsn)
        server = Server(dsn, args.workers, tmp / "server.log")
        stack.callback(_quietly, "stop ingest serve", server.stop)
        server.wait_ready()
        write_key, project_id = create_project(server.base, secret_key, args.digest_storage)
        pids = server.pids()
        pg_pid = asyncio.run(postmaster_pid(dsn))
        say(f"ingest serve ready at {server.base} (pids {', '.join(map(str, pids))})")

        calibration: dict[str, float] = {}
        if not args.no_calibrate:
            calibration = calibrate(
                server.base,
                seconds=min(5, args.duration),
                connections=args.connections,
                threads=args.threads,
                meter=CpuMeter(server.proc.pid, pg_pid),
            )
            say(
                f"HTTP ceiling: GET /healthz (no body, no database) "
                f"{calibration['requests_per_s']:,.0f} requests/s, "
                f"p99 {calibration['p99_ms']:.1f} ms; CPU a request in us: server "
                f"{calibration.get('server_us', 0):,.0f}, wrk {calibration.get('wrk_us', 0):,.0f}"
            )

        run_id = uuid.uuid4().hex[:10]
        scenarios: list[Scenario] = []
        copies: list[CopyRun] = []
        templates = template_rows(project_id) if not args.no_copy else []
        for round_no in range(1, args.rounds + 1):
            # Rounds alternate the service and the raw COPY: the machine's speed drifts between
            # phases, and a ratio of two phases far apart in time measures the drift too.
            suffix = f" #{round_no}" if args.rounds > 1 else ""
            if round_no > 1:
                server = Server(dsn, args.workers, tmp / f"server-{round_no}.log")
                stack.callback(_quietly, "stop ingest serve", server.stop)
                server.wait_ready()
            try:
                this_round = run_scenarios(
                    args,
                    wanted,
                    server,
                    write_key,
                    dsn,
                    pg_pid,
                    run_id=f"{run_id}r{round_no}",
                    suffix=suffix,
                    profile=args.profile if round_no == 1 else None,
                    stack=stack,
                )
            except Mismatch as exc:
                say(str(exc))
                return 1
            scenarios += this_round
            server.stop()  # idle from here on; its pool must not disturb the COPY
            if args.no_copy:
                continue
            round_copies = run_copies(args, dsn, templates, pg_pid, suffix=suffix)
            copies += round_copies
            by_shape = {c.shape: c.rows_per_s for c in round_copies}
            for s in this_round:
                s.copy_shape = "1-row COPY" if s.batch == 1 else "100-row COPY"
                s.copy_rate = by_shape.get(s.copy_shape, 0.0)

        info["loadavg_end"] = list(os.getloadavg())
        problems = report(scenarios, copies, calibration)
        say("")
        say(
            f"load average before the run {info['loadavg_start'][0]:.2f}; work that is not the "
            "benchmark's shows as 'other processes' in the CPU lines and skews the figures"
        )
        if args.json is not None:
            payload = {
                "command": " ".join([Path(sys.executable).name, "-m", "loadtests.bench"])
                + " "
                + " ".join(sys.argv[1:]),
                "machine": info,
                "postgres": {"kind": pg_kind, **settings},
                "workers": args.workers,
                "server_environment": overrides,
                "server_pids": pids,
                "healthz_calibration": calibration,
                "scenarios": [
                    {
                        **{k: v for k, v in asdict(s).items() if k != "wrk_output"},
                        "fraction_of_copy": s.fraction,
                    }
                    for s in scenarios
                ],
                "copy": [asdict(c) for c in copies],
                "problems": problems,
            }
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
            say(f"figures written to {args.json}")
        if problems:
            say("")
            for problem in problems:
                say(f"!!! {problem} !!!")
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
