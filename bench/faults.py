"""Fault injection with figures: break storage on purpose under steady load, then count.

Each scenario starts a real server (uvicorn, one worker, a Starlette hello-world
with LezaMiddleware, configured like bench/bench_throughput.py: rotating real
User-Agents and client IPs, GeoIP on), drives it with a steady load from
keep-alive HTTP connections (``--rate`` requests/s over ``--threads`` threads),
injects a fault mid-run, removes it, waits until the recorder has replayed what
it spilled, stops the server gracefully (SIGTERM) and compares:

* requests answered (2xx, with the ``X-Request-ID`` each response carries) with
  the access events stored (by request id: lost = answered and not stored,
  duplicates = stored more than once);
* the recorder's own counters, read from ``/_stats`` during the run and written
  by the app when the server stops (``enqueued``, ``written``, ``dropped`` by
  reason, ``spilled``, ``replayed``, ``retried``, ``storage_errors``);
* the load held: the share of requests sent while the fault was active that were
  answered 2xx, and the 99th percentile latency during the fault vs before it.

Faults (all for real, nothing mocked):

``sqlite-down``
    SQLite's database on a filesystem (tmpfs) that is filled up with a ballast
    file for ``--down`` seconds (default 60), then freed: every write fails with
    ``database or disk is full``. (Moving the database's directory away or
    ``chmod 000`` are no faults: an open SQLite connection keeps writing to the
    moved file, and root ignores modes.)
``pg-down``
    PostgreSQL stopped (``pg_ctl stop -m fast``) for ``--down`` seconds, then
    started again.
``pg-slow``
    PostgreSQL behind a TCP proxy (asyncio, in this process) that delays every
    chunk of data, each way, by 200 ms for 20 s.
``pg-hung``
    The same proxy holding all traffic for 30 s (storage that hangs rather than
    fails: the design's "slow (30 s)").
``spill-full``
    SQLite down as in ``sqlite-down`` while the spill directory is a 1 MiB
    tmpfs: once it is full, spilling fails with ENOSPC. Drops are allowed here,
    but each must be counted (``spill_failed``) and the app unaffected.
``spill-readonly``
    SQLite down while the spill directory's filesystem is remounted read-only
    (``mount -o remount,ro``; EROFS). Drops allowed, counted, app unaffected.
``sqlite-locked``
    A second process holds ``BEGIN EXCLUSIVE`` on the SQLite database for 10 s.
``pg-restart``
    PostgreSQL restarted (``pg_ctl restart -m fast``) mid-run.

The contract (docs/reliability.md): 0 events lost for storage down then back,
slow or hung storage, SQLite locked and a PostgreSQL restart; with a full or
read-only spill directory while storage is down, events may be dropped but
every one is counted, and the app is unaffected.

    python bench/faults.py [--short] [--only sqlite-down,pg-restart] [--rate 300]

``--short`` makes every fault last 10 s (quick runs). Needs root for the tmpfs
mounts (the ``sqlite-down`` and ``spill-*`` scenarios are skipped otherwise) and
PostgreSQL server binaries (``/usr/lib/postgresql/*/bin`` or ``pg_ctl`` on
PATH) for the ``pg-*`` ones; a throwaway cluster is started in a temporary
directory (as the ``postgres`` user when run as root) and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import free_port, geoip_db, real_ips, real_uas  # noqa: E402

APP = textwrap.dedent(
    """
    import json, os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from leza_middleware import Leza, LezaMiddleware

    leza = Leza(trusted_proxies=["127.0.0.1"])   # storage, spill dir, geo: LEZA_* env

    async def hello(request):
        return PlainTextResponse("Hello, world!")

    inner = Starlette(routes=[Route("/r/{n:int}", hello)])
    inner.add_middleware(LezaMiddleware, leza=leza)

    async def app(scope, receive, send):
        # Outside the middleware (so not recorded): the counters, during the run
        # and, once the middleware has flushed at shutdown, into a file.
        if scope["type"] == "http" and scope["path"] == "/_stats":
            body = json.dumps(leza.stats()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "lifespan":
            async def send_wrapper(message):
                if message["type"] == "lifespan.shutdown.complete":
                    ok = leza.shutdown()
                    stats = dict(leza.stats(), shutdown_ok=ok)
                    with open(os.environ["FAULTS_STATS_FILE"], "w") as f:
                        json.dump(stats, f)
                await send(message)
            return await inner(scope, receive, send_wrapper)
        await inner(scope, receive, send)
    """
)

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.execute("COMMIT")
    con.close()
    """
)


# ----------------------------------------------------------------------------- tools


def run(cmd: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def can_mount(work: Path) -> bool:
    probe = work / "mount-probe"
    probe.mkdir()
    try:
        run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)])
    except (OSError, RuntimeError):
        return False
    run(["umount", str(probe)])
    return True


class Tmpfs:
    """A small tmpfs mounted on ``path``: filled up, freed, made read-only."""

    def __init__(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)])
        self.path = path
        self.ballast = path / "ballast"

    def fill(self) -> None:
        """Fill every last byte with a ballast file (writes then fail with ENOSPC)."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 512, 1):
                block = b"\0" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)])

    def unmount(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.read_only(False)
        self.free()
        try:
            run(["umount", str(self.path)])
        except RuntimeError:
            run(["umount", "-l", str(self.path)])


# ----------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """As tests/conftest.py: Debian's layout (newest first), else PATH."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class Postgres:
    """A throwaway cluster on 127.0.0.1 (as the ``postgres`` user when run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_owner: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="leza-faults-pg-"))
        if os.geteuid() == 0:
            import pwd

            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.databases = 0

    def ctl(self, *args: str) -> None:
        run([*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args])

    def init(self) -> None:
        run([
            *self.as_owner, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
        ])  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                "unix_socket_directories = ''\nmax_connections = 50\n"
            )
        self.start()

    def start(self) -> None:
        self.ctl("-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.ctl("-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")

    def version(self) -> str:
        out = run([str(self.bindir / "postgres"), "--version"]).stdout.strip()
        return out.replace("postgres (PostgreSQL) ", "PostgreSQL ")

    def new_database(self) -> str:
        import psycopg

        self.databases += 1
        name = f"leza_faults_{self.databases}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class LatencyProxy:
    """A TCP proxy that delays every chunk of data, each way, or holds it all.

    Runs its own asyncio loop on a thread. ``delay`` (seconds) and ``hold()``
    may be changed at any time; data keeps its order.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self._open = asyncio.Event()  # cleared while all traffic is held
        self._open.set()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def hold(self, on: bool) -> None:
        self.loop.call_soon_threadsafe(self._open.clear if on else self._open.set)

    def close(self) -> None:
        self.hold(False)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop = self.loop
        try:
            loop.run_until_complete(serve())
            loop.run_forever()
            if self._server is not None:
                self._server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            while True:
                arrived, data = await queue.get()
                while True:  # no polling: this process also runs the load
                    await self._open.wait()
                    wait = arrived + self.delay - time.monotonic()
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(pump())
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((time.monotonic(), data))
                if not data:
                    break
            await task
        finally:
            task.cancel()


# ----------------------------------------------------------------------------- server + load


class Server:
    def __init__(self, work: Path, name: str, storage: str, spill: Path) -> None:
        self.port = free_port()
        self.stats_file = work / f"stats-{name}.json"
        self.log_file = work / f"server-{name}.log"
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("LEZA_")]:
            del env[key]
        env.update(
            LEZA_STORAGE=storage,
            LEZA_SPILL_DIR=str(spill),
            LEZA_GEOIP_DB=geoip_db(),
            LEZA_SECRET_KEY="bench-secret-key-0123456789",
            FAULTS_STATS_FILE=str(self.stats_file),
            PYTHONPATH=str(work),
        )
        cmd = [
            sys.executable, "-m", "uvicorn", "faultsapp:app", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log", "--no-proxy-headers",
            "--lifespan", "on",
        ]  # fmt: skip
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.stats()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not start:\n{self.log_file.read_text()[-2000:]}")

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/_stats")
            out: dict[str, Any] = json.loads(conn.getresponse().read())
            return out
        finally:
            conn.close()

    def stop(self) -> dict[str, Any]:
        """SIGTERM (graceful); the counters as the app wrote them after shutdown."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        finally:
            self.kill()
        final: dict[str, Any] = json.loads(self.stats_file.read_text())
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def leza_log_lines(self) -> int:
        text = self.log_file.read_text(errors="replace")
        return sum("leza" in line for line in text.splitlines())


@dataclass
class Sample:
    sent: float  # seconds since the load started
    latency: float
    status: int  # 0: no answer (error or timeout)
    request_id: str | None


class Load:
    """``rate`` requests/s over ``threads`` keep-alive connections, paced, until stopped."""

    def __init__(self, port: int, rate: float, threads: int) -> None:
        self.port = port
        self.interval = threads / rate
        self.threads = threads
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()
        self.samples: list[list[Sample]] = [[] for _ in range(threads)]
        self._uas = real_uas(300)
        self._ips = real_ips(500)
        self._workers = [
            threading.Thread(target=self._drive, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self._workers:
            t.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> list[Sample]:
        self.stop_event.set()
        for t in self._workers:
            t.join(30)
        return sorted((s for lst in self.samples for s in lst), key=lambda s: s.sent)

    def _drive(self, k: int) -> None:
        out = self.samples[k]
        conn: http.client.HTTPConnection | None = None
        n = 0
        next_at = self.t0 + k * self.interval / self.threads
        try:
            while not self.stop_event.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                next_at += self.interval
                i = n * self.threads + k
                n += 1
                headers = {
                    "User-Agent": self._uas[i % len(self._uas)],
                    "X-Forwarded-For": self._ips[i % len(self._ips)],
                }
                start = time.monotonic()
                status, rid = 0, None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    conn.request("GET", f"/r/{i}", headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status, rid = resp.status, resp.getheader("x-request-id")
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                out.append(Sample(start - self.t0, time.monotonic() - start, status, rid))
        finally:
            if conn is not None:
                conn.close()


class Poller:
    """The server's counters every 0.5 s, kept for the report."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.series: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                self.series.append(self.server.stats())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def stored_request_ids(url: str) -> dict[str, int]:
    """request id -> how many access rows carry it (the load's requests only)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT request_id, count(*) FROM leza_access "
                    "WHERE endpoint LIKE '/r/%' GROUP BY request_id"
                )
            ).all()
    finally:
        engine.dispose()
    return {str(r[0]): int(r[1]) for r in rows}


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    down: float
    slow: float
    hung: float
    lock: float
    spill: float
    before: float
    after: float
    rate: float
    threads: int
    pg: Postgres | None = None

    def postgres(self) -> Postgres:
        if self.pg is None:
            raise RuntimeError("no PostgreSQL cluster")
        return self.pg


@dataclass
class Fault:
    """What one scenario sets up, injects and removes."""

    storage: str  # the storage URL the server is given
    spill: Path
    inject: Callable[[], None]
    remove: Callable[[], None]
    duration: float  # seconds between the end of inject() and the start of remove()
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    db_url: str = ""  # where to count stored events (default: storage)


@dataclass
class Scenario:
    name: str
    fault: str
    how: str
    storage_kind: str  # "SQLite" | "PostgreSQL"
    zero_loss: bool
    needs: str  # "mount" | "postgres" | ""
    build: Callable[[Path, Context], Fault]


@dataclass
class Result:
    scenario: Scenario
    sent: int = 0
    ok: int = 0
    fault_sent: int = 0
    fault_ok: int = 0
    p99_before: float = 0.0
    p99_fault: float = 0.0
    max_latency_fault: float = 0.0
    answered: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    max_pending: int = 0
    storage_down_seen: bool = False
    drained: bool = True
    log_lines: int = 0
    seconds: float = 0.0
    skipped: str = ""
    error: str = ""  # the scenario could not run to the end

    @property
    def balanced(self) -> bool:
        s = self.final
        if not s:
            return False
        return bool(s["enqueued"] == s["written"] + s["dropped"] + s["pending"] + s["spilled"])

    @property
    def held(self) -> bool:
        return self.ok == self.sent and self.fault_sent > 0

    @property
    def met(self) -> bool:
        s = self.final
        if self.error or not s or not self.held or self.duplicates or not self.balanced:
            return False
        dropped = int(s["dropped"])
        if self.scenario.zero_loss:
            return self.lost == 0 and dropped == 0
        # Drops allowed, each one counted, for the fault's own reason: what is
        # missing is exactly what was dropped because the spill file failed.
        spill_failed = int(s["dropped_by_reason"].get("spill_failed", 0))
        return self.lost == dropped == spill_failed


def _sqlite_on_tmpfs(work: Path, name: str) -> tuple[Tmpfs, str]:
    fs = Tmpfs(work / f"db-{name}", "64m")
    return fs, f"sqlite:///{fs.path / 'leza.db'}"


def build_sqlite_down(work: Path, ctx: Context) -> Fault:
    fs, url = _sqlite_on_tmpfs(work, "down")
    return Fault(url, work / "spill-sqlite-down", fs.fill, fs.free, ctx.down, [fs.unmount])


def build_spill_full(work: Path, ctx: Context) -> Fault:
    fs, url = _sqlite_on_tmpfs(work, "spill-full")
    spill = Tmpfs(work / "spill-full", "1m")
    return Fault(url, spill.path, fs.fill, fs.free, ctx.spill, [fs.unmount, spill.unmount])


def build_spill_readonly(work: Path, ctx: Context) -> Fault:
    fs, url = _sqlite_on_tmpfs(work, "spill-ro")
    spill = Tmpfs(work / "spill-ro", "16m")

    def inject() -> None:
        spill.read_only(True)
        fs.fill()

    def remove() -> None:
        spill.read_only(False)
        fs.free()

    return Fault(url, spill.path, inject, remove, ctx.spill, [fs.unmount, spill.unmount])


def build_sqlite_locked(work: Path, ctx: Context) -> Fault:
    db = work / "db-locked" / "leza.db"
    db.parent.mkdir()
    holder: list[subprocess.Popen[str]] = []

    def inject() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db), str(ctx.lock)],
            stdout=subprocess.PIPE,
            text=True,
        )
        holder.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "locked":
            raise RuntimeError("the lock holder did not get its lock")

    def remove() -> None:
        for proc in holder:
            proc.wait(60)  # it releases the lock itself, ctx.lock seconds after taking it

    def cleanup() -> None:
        for proc in holder:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    return Fault(
        f"sqlite:///{db}", work / "spill-locked", inject, remove, ctx.lock - 0.5, [cleanup]
    )


def build_pg_down(work: Path, ctx: Context) -> Fault:
    pg = ctx.postgres()
    return Fault(pg.new_database(), work / "spill-pg-down", pg.stop, pg.start, ctx.down)


def build_pg_restart(work: Path, ctx: Context) -> Fault:
    pg = ctx.postgres()
    return Fault(pg.new_database(), work / "spill-pg-restart", pg.restart, lambda: None, 5.0)


def _proxied(ctx: Context) -> tuple[LatencyProxy, str, str, list[Callable[[], None]]]:
    pg = ctx.postgres()
    proxy = LatencyProxy(pg.port)
    port = proxy.start()
    direct = pg.new_database()
    proxied = direct.replace(f":{pg.port}/", f":{port}/")
    return proxy, proxied, direct, [proxy.close]


def build_pg_slow(work: Path, ctx: Context) -> Fault:
    proxy, url, direct, cleanup = _proxied(ctx)

    def inject() -> None:
        proxy.delay = 0.2

    def remove() -> None:
        proxy.delay = 0.0

    return Fault(url, work / "spill-pg-slow", inject, remove, ctx.slow, cleanup, db_url=direct)


def build_pg_hung(work: Path, ctx: Context) -> Fault:
    proxy, url, direct, cleanup = _proxied(ctx)

    def inject() -> None:
        proxy.hold(True)

    def remove() -> None:
        proxy.hold(False)

    return Fault(url, work / "spill-pg-hung", inject, remove, ctx.hung, cleanup, db_url=direct)


SCENARIOS = [
    Scenario(
        "sqlite-down", "storage down {down:g} s, then back",
        "SQLite's disk full (tmpfs + ballast)", "SQLite", True, "mount", build_sqlite_down,
    ),
    Scenario(
        "pg-down", "storage down {down:g} s, then back",
        "`pg_ctl stop -m fast`, later `start`", "PostgreSQL", True, "postgres", build_pg_down,
    ),
    Scenario(
        "pg-slow", "slow storage {slow:g} s", "TCP proxy: +200 ms per chunk each way",
        "PostgreSQL", True, "postgres", build_pg_slow,
    ),
    Scenario(
        "pg-hung", "storage hangs {hung:g} s", "TCP proxy holds all traffic",
        "PostgreSQL", True, "postgres", build_pg_hung,
    ),
    Scenario(
        "sqlite-locked", "SQLite locked by another process {lock:g} s",
        "second process holds `BEGIN EXCLUSIVE`", "SQLite", True, "", build_sqlite_locked,
    ),
    Scenario(
        "pg-restart", "PostgreSQL restarted mid-run", "`pg_ctl restart -m fast`",
        "PostgreSQL", True, "postgres", build_pg_restart,
    ),
    Scenario(
        "spill-full", "spill disk full while storage down {spill:g} s",
        "spill dir on a 1 MiB tmpfs (ENOSPC); SQLite's disk full", "SQLite", False, "mount",
        build_spill_full,
    ),
    Scenario(
        "spill-readonly", "spill dir read-only while storage down {spill:g} s",
        "spill tmpfs `remount,ro` (EROFS); SQLite's disk full", "SQLite", False, "mount",
        build_spill_readonly,
    ),
]  # fmt: skip


def run_scenario(work: Path, sc: Scenario, ctx: Context) -> Result:
    res = Result(sc)
    t_start = time.monotonic()
    fault = sc.build(work, ctx)
    server: Server | None = None
    try:
        server = Server(work, sc.name, fault.storage, fault.spill)
        poller = Poller(server)
        load = Load(server.port, ctx.rate, ctx.threads)
        load.start()
        time.sleep(ctx.before)
        f0 = load.now()
        fault.inject()
        time.sleep(max(0.0, fault.duration))
        fault.remove()
        f1 = load.now()
        time.sleep(ctx.after)
        samples = load.stop()
        # Wait for the recorder to catch up: storage up, nothing pending, spill replayed.
        deadline = time.monotonic() + 90
        while True:
            s = server.stats()
            spill_files = list(fault.spill.glob("spill-*.jsonl")) if fault.spill.exists() else []
            if not s["storage_down"] and s["pending"] == 0 and not spill_files:
                break
            if time.monotonic() > deadline:
                res.drained = False
                break
            time.sleep(0.5)
        poller.stop()
        res.final = server.stop()
        res.log_lines = server.leza_log_lines()
        series = poller.series
        res.max_pending = max((x["pending"] for x in series), default=0)
        res.storage_down_seen = any(x["storage_down"] for x in series)
        stored = stored_request_ids(fault.db_url or fault.storage)
    finally:
        if server is not None:
            server.kill()
        for fn in fault.cleanup:
            with contextlib.suppress(Exception):
                fn()
    res.sent = len(samples)
    ok = [s for s in samples if 200 <= s.status < 300]
    res.ok = len(ok)
    during = [s for s in samples if f0 <= s.sent <= f1]
    res.fault_sent = len(during)
    res.fault_ok = sum(200 <= s.status < 300 for s in during)
    # the last 5 s before the fault (not the start: connections opening, caches cold)
    res.p99_before = p99([s.latency for s in samples if f0 - 5.0 <= s.sent < f0])
    res.p99_fault = p99([s.latency for s in during])
    # the fault and the catch-up after it (replay, a backlog written at once)
    res.max_latency_fault = max((s.latency for s in samples if s.sent >= f0), default=0.0)
    answered = {s.request_id for s in ok if s.request_id}
    res.answered = len(answered)
    res.stored = sum(1 for rid in answered if rid in stored)
    res.lost = res.answered - res.stored
    res.duplicates = sum(n - 1 for n in stored.values() if n > 1)
    res.seconds = time.monotonic() - t_start
    return res


# ----------------------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def drops(s: dict[str, Any]) -> str:
    by = s.get("dropped_by_reason") or {}
    if not by:
        return "0"
    return ", ".join(f"{n} `{reason}`" for reason, n in sorted(by.items()))


def table(results: list[Result], ctx: Context) -> str:
    head = (
        "| fault | storage | injected by | requests | load held (2xx while faulty) "
        "| p99 before → during | events stored | lost | dropped (counted) "
        "| spilled / replayed | contract | met |\n"
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|:-:|\n"
    )
    rows = []
    for r in results:
        sc = r.scenario
        name = sc.fault.format(**vars(ctx))
        if r.skipped or r.error:
            dashes = " | ".join(["-"] * 8)
            why = r.skipped or f"**NO**: {r.error}"
            rows.append(f"| {name} | {sc.storage_kind} | {sc.how} | {dashes} | {why} |")
            continue
        s = r.final
        contract = "0 lost" if sc.zero_loss else "drops allowed, all counted; app unaffected"
        held = f"{r.fault_ok}/{r.fault_sent} ({100 * r.fault_ok / max(r.fault_sent, 1):.1f} %)"
        rows.append(
            f"| {name} | {sc.storage_kind} | {sc.how} | {r.sent} | {held} "
            f"| {ms(r.p99_before)} → {ms(r.p99_fault)} | {r.stored}/{r.answered} | {r.lost} "
            f"| {drops(s)} | {s.get('spilled', 0)} / {s.get('replayed', 0)} | {contract} "
            f"| {'yes' if r.met else '**NO**'} |"
        )
    return head + "\n".join(rows) + "\n"


def details(results: list[Result]) -> str:
    head = (
        "| scenario | enqueued | written | retried | storage errors | storage down seen "
        "| max pending | books balance | duplicates | drained | max latency from the fault on "
        "| leza log lines | seconds |\n|---|--:|--:|--:|--:|:-:|--:|:-:|--:|:-:|--:|--:|--:|\n"
    )
    rows = []
    for r in results:
        if r.skipped or r.error:
            continue
        s = r.final
        rows.append(
            f"| {r.scenario.name} | {s['enqueued']} | {s['written']} | {s['retried']} "
            f"| {s['storage_errors']} | {'yes' if r.storage_down_seen else 'no'} | {r.max_pending} "
            f"| {'yes' if r.balanced else 'NO'} | {r.duplicates} | {'yes' if r.drained else 'NO'} "
            f"| {ms(r.max_latency_fault)} | {r.log_lines} | {r.seconds:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def machine(pg: Postgres | None) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [
        datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        f"{os.cpu_count()} x {cpu}",
        f"Linux {platform.release()}",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if pg is not None:
        parts.append(pg.version())
    return ", ".join(parts)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="leza-faults-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        if keep:
            print(f"# kept {work} (server logs, final counters)")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--short", action="store_true", help="every fault lasts 10 s")
    ap.add_argument("--down", type=float, default=60.0, help="storage down for (s)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--rate", type=float, default=300.0, help="requests/s offered")
    ap.add_argument("--threads", type=int, default=8, help="client connections")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = ap.parse_args()
    short = 10.0 if args.short else None
    ctx = Context(
        down=short or args.down, slow=short or 20.0, hung=short or 30.0, lock=10.0,
        spill=short or 30.0, before=8.0, after=5.0, rate=args.rate, threads=args.threads,
    )  # fmt: skip
    wanted = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    if not wanted:
        print(f"no such scenario; known: {', '.join(s.name for s in SCENARIOS)}", file=sys.stderr)
        return 2
    results: list[Result] = []
    with workdir(args.keep) as work:
        (work / "faultsapp.py").write_text(APP)
        mount_ok = can_mount(work)
        bindir = postgres_bindir() if any(s.needs == "postgres" for s in wanted) else None
        if bindir is not None:
            ctx.pg = Postgres(bindir)
            ctx.pg.init()
        try:
            print(f"# {machine(ctx.pg)}")
            print(
                f"# load: {ctx.rate:g} req/s over {ctx.threads} keep-alive connections; "
                f"{ctx.before:g} s before each fault, {ctx.after:g} s after",
                flush=True,
            )
            for sc in wanted:
                if sc.needs == "mount" and not mount_ok:
                    results.append(Result(sc, skipped="needs root to mount a tmpfs"))
                elif sc.needs == "postgres" and ctx.pg is None:
                    results.append(Result(sc, skipped="no PostgreSQL server binaries"))
                else:
                    print(f"## {sc.name} ...", flush=True)
                    try:
                        r = run_scenario(work, sc, ctx)
                    except Exception as exc:  # report it, run the other scenarios
                        print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
                        results.append(Result(sc, error=f"{type(exc).__name__}: {exc}"))
                        continue
                    results.append(r)
                    keys = ("enqueued", "written", "dropped_by_reason", "spilled", "replayed",
                            "retried", "storage_errors")  # fmt: skip
                    print(
                        f"   sent {r.sent}, 2xx {r.ok}, stored {r.stored}/{r.answered}, "
                        f"lost {r.lost}, {json.dumps({k: r.final[k] for k in keys})}"
                        f" -> {'met' if r.met else 'NOT MET'} ({r.seconds:.0f} s)",
                        flush=True,
                    )
        finally:
            if ctx.pg is not None:
                ctx.pg.destroy()
    print()
    print(table(results, ctx))
    print(details(results))
    failed = [r.scenario.name for r in results if not r.skipped and not r.met]
    if failed:
        print(f"contract NOT met: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
