"""The fault harness, in one command::

    .venv/bin/python -m loadtests.faults [--short] [--database-url URL] [--faults a,b,c,d,e]

It starts an embedded Postgres (pgserver) in a temporary directory of its own (so it may stop and
crash it), creates a fresh database, starts ``ingest serve --workers 2`` on a free loopback port
and creates an organization. Then, for each fault, with a fresh project (so each fault's events
are counted alone):

1. K asyncio clients in this process (httpx) send sustained load: single events and batches of
   1-50, each event with the client-chosen ``message_id`` ``f"{client}-{seq}"``. Every answer is
   recorded: ok (200), retry (503/429, honouring ``Retry-After``) or indeterminate (timeout,
   reset, connection refused). Retry and indeterminate requests are resent with the SAME body,
   so the same message ids, up to ``MAX_RETRIES`` times with backoff, as SDKs do.
2. The fault is injected, then healed:
   a. ``kill -9`` of one worker process (uvicorn's supervisor starts another);
   b. ``kill -9`` of the whole server process group; the harness starts it again on the same port;
   c. Postgres stopped with ``pg_ctl stop -m immediate`` (a crash) and started again after a few
      seconds; the service is NOT restarted;
   d. ``pg_terminate_backend`` of the service's connections (``application_name = 'ingest'``),
      a few times;
   e. SIGTERM of the server under load (graceful drain), then a restart.
3. The clients stop sending, finish their retries, and the harness reconciles against the
   database (Jepsen's set checker, ``shared/RELIABILITY.md`` 1.5 and B): lost = acknowledged
   but not stored, duplicates = count(*) - count(distinct message_id), unexpected = stored but
   never sent.

It prints those counts per fault, the answers seen during the fault window, and the time to the
first 200 after the heal. The exit status is 1 when any count is not 0, on any 5xx other than 503,
a 503/429 without an integer ``Retry-After``, a valid event refused, a request that hangs
(no answer within ``HANG_S``), or a first 200 later than ``FIRST_200_LIMIT_S`` after the heal;
2 when setup failed; 130 on Ctrl-C. ``--short`` runs each fault once with a few seconds of load
(under two minutes in all); the default runs longer and repeats each fault. Everything listens on
127.0.0.1 (the embedded Postgres on a Unix socket) and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx

from loadtests.bench import (
    BenchError,
    Server,
    _quietly,
    create_database,
    create_org,
    create_project,
    run_guarded,
    say,
)

WORKERS: Final = 2
MAX_RETRIES: Final = 8  # resends of one request after its first attempt, as SDKs do
HANG_S: Final = 10.0  # no answer within this is a hang (the commit timeout is 5 s)
FIRST_200_LIMIT_S: Final = 10.0  # the service must answer 200 again within this after a heal
RETRY_AFTER_CAP_S: Final = 5.0  # honour Retry-After, but keep the run bounded
MAX_BATCH: Final = 50


@dataclass(frozen=True)
class Profile:
    clients: int
    load_before_s: float  # load before the fault is injected
    load_after_s: float  # load after the heal, before the clients stop sending
    pg_down_s: float  # how long Postgres stays down in fault c
    terminations: int  # pg_terminate_backend rounds in fault d
    termination_every_s: float
    rounds: int  # how many times each fault runs


SHORT: Final = Profile(
    clients=8,
    load_before_s=2.0,
    load_after_s=2.0,
    pg_down_s=3.0,
    terminations=3,
    termination_every_s=1.0,
    rounds=1,
)
LONG: Final = Profile(
    clients=16,
    load_before_s=8.0,
    load_after_s=5.0,
    pg_down_s=8.0,
    terminations=15,
    termination_every_s=2.0,
    rounds=3,
)


# -- what the clients saw ---------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    sent: float
    done: float
    label: str  # "200", "503", ..., or "timeout", "refused", "reset"
    retry_after: str | None = None


@dataclass
class Ledger:
    """Every event sent and what became of it; every answer with its time."""

    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # a valid event the service rejected
    answers: list[Answer] = field(default_factory=list)
    requests: int = 0
    problems: Counter[str] = field(default_factory=Counter)


def _event(client: int, seq: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Fault Probe",
        "user_id": f"user-{client}",
        "message_id": f"{client}-{seq}",
        "properties": {"client": client, "seq": seq},
    }


def _label(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "closed"  # the server closed the connection without an answer
    return "reset"  # ReadError, WriteError: the connection died


def _retry_after_ok(value: str | None) -> bool:
    return value is not None and value.isdigit() and 1 <= int(value) <= 30


async def _send(
    http: httpx.AsyncClient, body: bytes, ids: list[str], ledger: Ledger, rng: random.Random
) -> None:
    """One request and its resends (same body, same message ids) until a final answer."""
    ledger.sent.update(ids)
    for attempt in range(MAX_RETRIES + 1):
        ledger.requests += 1
        started = time.monotonic()
        try:
            r = await http.post("/v1/events", content=body)
        except httpx.TransportError as exc:
            ledger.answers.append(Answer(started, time.monotonic(), _label(exc)))
            await asyncio.sleep(min(0.2 * 2**attempt, 3.0) * (0.5 + rng.random()))
            continue
        answer = Answer(started, time.monotonic(), str(r.status_code), r.headers.get("retry-after"))
        ledger.answers.append(answer)
        if r.status_code == 200:
            result = r.json()
            if result["rejected"]:
                ledger.refused.update(ids[item["index"]] for item in result["rejected"])
                ledger.problems["a valid event was rejected in a 200"] += 1
            # "accepted" counts every event not rejected, the duplicates among them included.
            n_rejected = len(result["rejected"])
            if result["accepted"] + n_rejected != len(ids) or result["duplicates"] > len(ids):
                ledger.problems["a 200 that does not account for every event"] += 1
            ledger.acked.update(set(ids) - ledger.refused)
            return
        if r.status_code in (503, 429):
            if not _retry_after_ok(answer.retry_after):
                ledger.problems[f"{r.status_code} without an integer Retry-After of 1-30"] += 1
            ra = answer.retry_after
            wait = float(ra) if ra is not None and _retry_after_ok(ra) else 1.0
            await asyncio.sleep(min(wait, RETRY_AFTER_CAP_S) * (0.75 + 0.5 * rng.random()))
            continue
        if r.status_code >= 500:
            ledger.problems[f"answer {r.status_code}"] += 1  # SDKs retry a 5xx too
            await asyncio.sleep(min(0.2 * 2**attempt, 3.0))
            continue
        ledger.problems[f"answer {r.status_code} to valid events"] += 1
        ledger.refused.update(ids)
        return
    ledger.gave_up.update(ids)


async def _client(
    no: int, base: str, write_key: str, ledger: Ledger, sending: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed * 1000 + no)
    seq = 0
    timeout = httpx.Timeout(HANG_S)
    headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=timeout, limits=limits
    ) as http:
        while sending.is_set():
            if rng.random() < 0.5:
                events = [_event(no, seq)]
                payload: Any = events[0]
            else:
                events = [_event(no, seq + k) for k in range(rng.randint(1, MAX_BATCH))]
                payload = {"batch": events}
            seq += len(events)
            ids = [e["message_id"] for e in events]
            await _send(http, json.dumps(payload).encode(), ids, ledger, rng)


# -- the system under test ----------------------------------------------------------------------


def _pg_ctl(pg: Any, *args: str) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # untyped internals

    pg_ctl(list(args), pgdata=pg.pgdata, user=pg.system_user, timeout=30)


@dataclass
class System:
    dsn: str
    pg: Any  # the embedded pgserver, or None when --database-url names another Postgres
    tmp: Path
    secret_key: str
    server: Server
    restarts: int = 0

    def start_server(self, port: int | None = None) -> None:
        self.restarts += 1
        log = self.tmp / f"server-{self.restarts}.log"
        self.server = Server(self.dsn, WORKERS, log, port=port)
        self.server.wait_ready()

    def restart_server(self) -> None:
        """After the old server is gone: the same command on the same port."""
        port = self.server.port
        self.server.stop()  # reaps it and closes its log; it is dead already
        self.start_server(port)

    def busiest_worker(self, workers: set[int]) -> int:
        """The worker holding the most of the clients' connections (the kernel does not spread
        connections evenly, and killing an idle worker would test nothing)."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    f = line.split()
                    if int(f[1].rpartition(":")[2], 16) == self.server.port and f[3] == "01":
                        inodes.add(f"socket:[{f[9]}]")

        def held(pid: int) -> int:
            n = 0
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        n += os.readlink(fd) in inodes
            return n

        return max(sorted(workers), key=held)

    def worker_pids(self) -> set[int]:
        """uvicorn's worker processes (children of the server started by multiprocessing)."""
        found = set()
        for pid in self.server.pids()[1:]:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    found.add(pid)
        return found


@dataclass
class Window:
    """When the fault began and when it was healed, and what the injection did."""

    injected: float
    healed: float = 0.0
    notes: list[str] = field(default_factory=list)
    outage: tuple[float, float] | None = None  # Postgres down (fault c); SIGTERM drain (fault e)
    problems: list[str] = field(default_factory=list)


async def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def kill_worker(sys_: System, profile: Profile) -> Window:
    before = sys_.worker_pids()
    if len(before) != WORKERS:
        raise BenchError(f"expected {WORKERS} worker processes, found {sorted(before)}")
    victim = sys_.busiest_worker(before)
    w = Window(time.monotonic())
    os.kill(victim, signal.SIGKILL)
    await _wait_for(
        lambda: len(sys_.worker_pids() - before) == 1 and len(sys_.worker_pids()) == WORKERS,
        30,
        "uvicorn restarting the killed worker",
    )
    w.healed = time.monotonic()
    w.notes.append(
        f"worker {victim} killed; replaced by {sorted(sys_.worker_pids() - before)[0]} "
        f"after {w.healed - w.injected:.2f} s"
    )
    return w


async def kill_server(sys_: System, profile: Profile) -> Window:
    pgid = sys_.server.proc.pid
    w = Window(time.monotonic())
    os.killpg(pgid, signal.SIGKILL)
    await asyncio.to_thread(sys_.server.proc.wait, 10)
    down = time.monotonic()
    await asyncio.to_thread(sys_.restart_server)
    w.healed = time.monotonic()
    w.notes.append(
        f"process group {pgid} killed; restarted on port {sys_.server.port} and ready after "
        f"{w.healed - down:.2f} s"
    )
    return w


async def stop_postgres(sys_: System, profile: Profile) -> Window:
    uri = sys_.pg.get_uri()
    w = Window(time.monotonic())
    await asyncio.to_thread(_pg_ctl, sys_.pg, "-w", "-m", "immediate", "stop")
    stopped = time.monotonic()
    await asyncio.sleep(profile.pg_down_s)
    # Postgres may accept connections (and the service commit) a moment before the restart
    # call returns, and this loop notices even later, after the clients have recorded their
    # answers: the outage that no 200 may fall in ends when the restart begins.
    restarting = time.monotonic()
    await asyncio.to_thread(sys_.pg.ensure_postgres_running)
    w.healed = time.monotonic()
    w.outage = (stopped, restarting)
    if sys_.pg.get_uri() != uri:
        raise BenchError("the restarted Postgres listens elsewhere; the service cannot reach it")
    if sys_.server.proc.poll() is not None:
        w.problems.append("the service exited while Postgres was down")
    w.notes.append(
        f"Postgres stopped (-m immediate) in {stopped - w.injected:.2f} s, down "
        f"{w.healed - stopped:.1f} s, accepting connections again; service not restarted"
    )
    return w


async def terminate_backends(sys_: System, profile: Profile) -> Window:
    w = Window(time.monotonic())
    killed = []
    for i in range(profile.terminations):
        if i:
            await asyncio.sleep(profile.termination_every_s)
        conn = await asyncpg.connect(
            sys_.dsn, timeout=10, server_settings={"application_name": "ingest-faults"}
        )
        try:
            n = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'ingest' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        killed.append(int(n))
    w.healed = time.monotonic()
    w.notes.append(
        f"pg_terminate_backend x{len(killed)}, every {profile.termination_every_s:g} s: "
        f"{', '.join(map(str, killed))} connections"
    )
    if sum(killed) == 0:
        w.problems.append("no connection with application_name 'ingest' was found to terminate")
    return w


async def sigterm_server(sys_: System, profile: Profile) -> Window:
    proc = sys_.server.proc
    w = Window(time.monotonic())
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        w.problems.append("the server did not exit within 30 s of SIGTERM")
    exited = time.monotonic()
    w.outage = (w.injected, exited)
    drain = exited - w.injected
    if drain > 12:
        w.problems.append(f"the drain took {drain:.1f} s (more than 10 s + 2 s)")
    w.notes.append(f"SIGTERM: the server exited with {proc.returncode} after {drain:.2f} s")
    await asyncio.to_thread(sys_.restart_server)
    w.healed = time.monotonic()
    w.notes.append(f"restarted and ready after {w.healed - exited:.2f} s")
    return w


@dataclass(frozen=True)
class Fault:
    key: str
    name: str
    inject: Callable[[System, Profile], Awaitable[Window]]
    needs_own_postgres: bool = False


FAULTS: Final = (
    Fault("a", "kill -9 of one worker", kill_worker),
    Fault("b", "kill -9 of the server's process group, restarted", kill_server),
    Fault("c", "Postgres stop -m immediate, restarted", stop_postgres, needs_own_postgres=True),
    Fault("d", "pg_terminate_backend of the service's connections", terminate_backends),
    Fault("e", "SIGTERM of the server (drain), restarted", sigterm_server),
)


# -- one fault, and its verdict -----------------------------------------------------------------


@dataclass
class Result:
    fault: Fault
    round: int
    ledger: Ledger
    window: Window
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    first_200_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.unexpected or self.problems)


async def _reconcile(dsn: str, project_id: uuid.UUID) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch("SELECT message_id FROM events WHERE project_id = $1", project_id)
    finally:
        await conn.close()
    return [r["message_id"] for r in rows]


def _counts(answers: Sequence[Answer]) -> str:
    c = Counter(a.label for a in answers)
    return ", ".join(f"{label} x{n}" for label, n in sorted(c.items())) or "none"


async def run_fault(
    sys_: System, fault: Fault, profile: Profile, round_no: int, seed: int
) -> Result:
    write_key, project_id = await asyncio.to_thread(
        create_project, sys_.server.base, sys_.secret_key
    )
    ledger = Ledger()
    sending = asyncio.Event()
    sending.set()
    clients = [
        asyncio.create_task(_client(i, sys_.server.base, write_key, ledger, sending, seed))
        for i in range(profile.clients)
    ]
    try:
        await asyncio.sleep(profile.load_before_s)
        window = await fault.inject(sys_, profile)
        await asyncio.sleep(profile.load_after_s)
        sending.clear()
        # Each client finishes its request's resends: at most MAX_RETRIES waits and timeouts.
        _, pending = await asyncio.wait(clients, timeout=MAX_RETRIES * (HANG_S + 5) + 30)
        if pending:
            window.problems.append(f"{len(pending)} clients were still retrying at the deadline")
    finally:
        sending.clear()
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    for task in clients:
        if not task.cancelled() and task.exception() is not None:
            raise BenchError(f"a client failed: {task.exception()!r}")

    stored = await _reconcile(sys_.dsn, project_id)
    distinct = set(stored)
    r = Result(fault, round_no, ledger, window, stored=len(stored))
    r.lost = len(ledger.acked - distinct)
    r.duplicates = len(stored) - len(distinct)
    r.unexpected = len(distinct - ledger.sent)
    r.problems += window.problems
    r.problems += [f"{what} (x{n})" for what, n in sorted(ledger.problems.items())]
    hangs = [a for a in ledger.answers if a.label == "timeout"]
    if hangs:
        r.problems.append(f"{len(hangs)} requests had no answer within {HANG_S:g} s")
    after = [a.done for a in ledger.answers if a.label == "200" and a.done >= window.healed]
    r.first_200_s = min(after) - window.healed if after else None
    if r.first_200_s is None or r.first_200_s > FIRST_200_LIMIT_S:
        r.problems.append(f"no 200 within {FIRST_200_LIMIT_S:g} s after the heal")
    if fault.key == "c" and window.outage is not None:
        start, end = window.outage
        # Sent after Postgres was gone, answered before it was back: a 200 would be a lie.
        during = [a for a in ledger.answers if a.sent >= start and a.done <= end]
        if any(a.label == "200" for a in during):
            r.problems.append("a 200 to a request sent and answered while Postgres was down")
    if fault.key == "e" and window.outage is not None:
        start, end = window.outage
        answered = [a for a in ledger.answers if start <= a.done <= end and a.label.isdigit()]
        bad = Counter(a.label for a in answered if a.label not in ("200", "503"))
        if bad:
            r.problems.append(f"answers other than 200/503 during the drain: {dict(bad)}")
    return r


def report(r: Result) -> None:
    w, led = r.window, r.ledger
    title = f"fault ({r.fault.key}) {r.fault.name}"
    say(f"\n{title}" + (f", round {r.round}" if r.round > 1 else ""))
    for note in w.notes:
        say(f"  {note}")
    say(
        f"  load: {len(led.sent):,} events in {led.requests:,} requests from the clients; "
        f"{len(led.acked):,} acknowledged, {len(led.gave_up):,} given up after "
        f"{MAX_RETRIES} resends, {r.stored:,} rows stored"
    )
    window = [a for a in led.answers if w.injected <= a.done <= w.healed]
    slowest = max((a.done - a.sent for a in window), default=0.0)
    say(
        f"  answers during the fault ({w.healed - w.injected:.1f} s): {_counts(window)}; "
        f"slowest {slowest:.2f} s"
    )
    if w.outage is not None:
        start, end = w.outage
        if r.fault.key == "c":  # requests that found Postgres gone from start to end
            inside = [a for a in led.answers if a.sent >= start and a.done <= end]
        else:
            inside = [a for a in led.answers if start <= a.done <= end]
        what = "Postgres was down" if r.fault.key == "c" else "the server drained"
        say(f"  answers while {what} ({end - start:.1f} s): {_counts(inside)}")
        cut = [a for a in inside if a.label in ("closed", "reset")]
        if cut:
            say(
                f"  connections cut while {what}: {len(cut)}, the oldest request on them sent "
                f"{max(a.done - a.sent for a in cut):.3f} s before"
            )
    first = "none" if r.first_200_s is None else f"{r.first_200_s:.2f} s"
    healed = "Postgres was back" if r.fault.key == "c" else "the heal"
    say(f"  first 200 after {healed}: {first}")
    say(f"  all answers: {_counts(led.answers)}")
    say(
        f"  lost {r.lost}  duplicates {r.duplicates}  unexpected {r.unexpected}  "
        + ("OK" if r.ok else "FAILED")
    )
    for problem in r.problems:
        say(f"  !!! {problem}")


# -- the command --------------------------------------------------------------------------------


def _start_postgres(url: str | None, tmp: Path, stack: contextlib.ExitStack) -> tuple[str, Any]:
    if url:
        return url, None
    from ingest import embedded

    say("starting an embedded Postgres (pgserver) in a temporary directory...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pg, dsn = embedded.start(tmp / "data")
    stack.callback(_quietly, "stop the embedded Postgres", pg.cleanup)
    return dsn, pg


async def _run_faults(
    sys_: System, faults: Sequence[Fault], profile: Profile, seed: int
) -> list[Result]:
    results = []
    for round_no in range(1, profile.rounds + 1):
        for fault in faults:
            result = await run_fault(sys_, fault, profile, round_no, seed + round_no)
            report(result)
            results.append(result)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.faults",
        description="Inject faults under load and check that nothing acknowledged is lost.",
    )
    p.add_argument("--short", action="store_true", help="each fault once, a few seconds of load")
    p.add_argument(
        "--database-url",
        default=os.environ.get("INGEST_DATABASE_URL"),
        help="a Postgres to use (fault c is then skipped: only the harness's own can be "
        "stopped); default: an embedded one in a temporary directory",
    )
    p.add_argument("--faults", default="a,b,c,d,e", help="which faults, e.g. a,c (default all)")
    p.add_argument("--clients", type=int, default=0, help="concurrent clients (8 short, 16 long)")
    p.add_argument("--rounds", type=int, default=0, help="repetitions (1 short, 3 long)")
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = {k.strip() for k in args.faults.split(",") if k.strip()}
    if not wanted or not wanted <= {f.key for f in FAULTS}:
        print("--faults takes letters among a,b,c,d,e", file=sys.stderr)
        return 2
    return run_guarded("fault harness", lambda: _run(args, wanted))


def _run(args: argparse.Namespace, wanted: set[str]) -> int:
    base = SHORT if args.short else LONG
    profile = Profile(
        **{
            **base.__dict__,
            "clients": args.clients or base.clients,
            "rounds": args.rounds or base.rounds,
        }
    )
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="ingest-faults-"))
        stack.callback(_quietly, "remove the temporary directory", lambda: shutil.rmtree(tmp))
        admin_dsn, pg = _start_postgres(args.database_url, tmp, stack)
        dsn = create_database(admin_dsn, stack)
        faults = [f for f in FAULTS if f.key in wanted]
        if pg is None and any(f.needs_own_postgres for f in faults):
            say("fault c skipped: only the harness's own embedded Postgres may be stopped")
            faults = [f for f in faults if not f.needs_own_postgres]
        secret_key = create_org(dsn)
        server = Server(dsn, WORKERS, tmp / "server-0.log")
        sys_ = System(dsn, pg, tmp, secret_key, server)
        stack.callback(_quietly, "stop ingest serve", lambda: sys_.server.stop())
        server.wait_ready()
        say(
            f"ingest serve --workers {WORKERS} ready at {server.base}; "
            f"{profile.clients} clients, batches of 1-{MAX_BATCH}, {MAX_RETRIES} resends at most, "
            f"{'short' if args.short else 'long'} form ({profile.rounds} round(s))"
        )
        results = asyncio.run(_run_faults(sys_, faults, profile, args.seed))

    say(
        "\nfault                                                  round   acked   lost  dup  unexp"
        "  first-200"
    )
    for r in results:
        first = "-" if r.first_200_s is None else f"{r.first_200_s:.2f}s"
        say(
            f"({r.fault.key}) {r.fault.name:<50} {r.round:>5} {len(r.ledger.acked):>7,} "
            f"{r.lost:>6} {r.duplicates:>4} {r.unexpected:>6}  {first:>9}"
            + ("" if r.ok else "  FAILED")
        )
    failed = [r for r in results if not r.ok]
    say(
        f"\n{len(results) - len(failed)}/{len(results)} faults passed "
        f"in {time.monotonic() - began:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
