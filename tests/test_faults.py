"""Faults injected for real while a real server takes steady load.

The quick counterpart of ``bench/faults.py`` for the faults no other test
covers (storage that raises, hangs or is locked in-process is in
``tests/test_recorder.py`` and ``tests/test_storage.py``; a graceful stop in
``tests/test_server.py``):

* SQLite locked by another process, then released: nothing lost;
* PostgreSQL restarted mid-run (a cluster of this module's own, so the shared
  session server is left alone): nothing lost;
* the spill directory read-only or full while storage is down: the app is
  unaffected, and every event that could not be kept is counted as dropped
  for that reason, no more and no fewer.

Each test runs uvicorn in a subprocess with a Starlette app behind
LezaMiddleware, sends requests from keep-alive connections and compares the
request ids answered with the rows stored and with the recorder's counters,
which the app serves at ``/_stats`` (outside the middleware) and writes to a
file once it has shut down.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ThrowawayPostgres, _free_port, _postgres_bindir, balanced
from test_recorder import raw

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import json, os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from leza_middleware import Leza, LezaMiddleware
    from leza_middleware.storage import SQLStorage

    storage = SQLStorage(os.environ["FAULTS_STORAGE"],
                         busy_timeout_ms=int(os.environ["FAULTS_BUSY_MS"]))
    leza = Leza(storage=storage)   # spill dir, flush interval, ...: LEZA_* env

    async def hello(request):
        return PlainTextResponse("hi")

    inner = Starlette(routes=[Route("/r/{n:int}", hello)])
    inner.add_middleware(LezaMiddleware, leza=leza)

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/_stats":
            body = json.dumps(leza.stats()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "lifespan":
            async def send_wrapper(message):
                if message["type"] == "lifespan.shutdown.complete":
                    leza.shutdown(timeout=5)
                    with open(os.environ["FAULTS_STATS_FILE"], "w") as f:
                        json.dump(leza.stats(), f)
                await send(message)
            return await inner(scope, receive, send_wrapper)
        await inner(scope, receive, send)
    """
)

# Run a command under a file size limit (RLIMIT_FSIZE): writes past it fail
# with EFBIG (Python ignores SIGXFSZ, so the process is not killed).
FSIZE_WRAPPER = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
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


class Server:
    """uvicorn serving APP in a subprocess; ``stop()`` is a graceful SIGTERM."""

    def __init__(
        self,
        tmp_path: Path,
        storage: str,
        spill: Path,
        *,
        busy_ms: int = 5000,
        fsize_limit: int | None = None,
    ) -> None:
        (tmp_path / "faultsapp.py").write_text(APP)
        self.port = _free_port()
        self.stats_file = tmp_path / "final-stats.json"
        self.log_file = tmp_path / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEZA_")}
        env.update(
            FAULTS_STORAGE=storage,
            FAULTS_BUSY_MS=str(busy_ms),
            FAULTS_STATS_FILE=str(self.stats_file),
            LEZA_SPILL_DIR=str(spill),
            LEZA_GEOIP_DB="off",
            LEZA_FLUSH_INTERVAL="0.1",
            LEZA_SECRET_KEY="tests-secret-key-0123456789",
            PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        )
        cmd = [
            "-m", "uvicorn", "faultsapp:app", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log", "--lifespan", "on",
        ]  # fmt: skip
        if fsize_limit is None:
            cmd = [sys.executable, *cmd]
        else:
            cmd = [sys.executable, "-c", FSIZE_WRAPPER, str(fsize_limit), *cmd]
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except (OSError, ValueError, http.client.HTTPException):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"server did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/_stats")
            out: dict[str, Any] = json.loads(conn.getresponse().read())
            return out
        finally:
            conn.close()

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the counters the app wrote after its shutdown."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30) in (0, -signal.SIGTERM), self.log()
        finally:
            self.kill()
        final: dict[str, Any] = json.loads(self.stats_file.read_text())
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Answer:
    status: int  # 0: no answer
    request_id: str | None
    latency: float


class Load:
    """Paced requests from keep-alive connections on threads, until stopped."""

    def __init__(self, port: int, rate: float, threads: int = 3) -> None:
        self.port = port
        self.rate = rate
        self.threads = threads
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._drive, args=(k,), daemon=True) for k in range(threads)
        ]
        for t in self._workers:
            t.start()

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._workers:
            t.join(30)
        return self.answers

    def _drive(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = 0
        try:
            while not self._stop.wait(self.threads / self.rate):
                n += 1
                t0 = time.monotonic()
                status, rid = 0, None
                try:
                    conn.request("GET", f"/r/{n * self.threads + k}")
                    resp = conn.getresponse()
                    resp.read()
                    status, rid = resp.status, resp.getheader("x-request-id")
                except (OSError, http.client.HTTPException):
                    conn.close()  # reconnects on the next request
                with self._lock:
                    self.answers.append(Answer(status, rid, time.monotonic() - t0))
        finally:
            conn.close()


def answered_ids(answers: list[Answer]) -> set[str]:
    assert answers, "no requests were sent"
    bad = [a for a in answers if a.status != 200 or not a.request_id]
    assert not bad, f"{len(bad)} of {len(answers)} requests not answered 200: {bad[:3]}"
    ids = {a.request_id for a in answers if a.request_id}
    assert len(ids) == len(answers)
    return ids


def stored_ids(url: str) -> list[str]:
    """The request id of every access row (with repeats, if any)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT request_id FROM leza_access")).all()
    finally:
        engine.dispose()
    return [str(r[0]) for r in rows]


def wait_drained(server: Server, spill: Path, timeout: float = 20.0) -> dict[str, Any]:
    """Until storage is up, nothing is pending and every spill file is replayed."""
    deadline = time.monotonic() + timeout
    while True:
        s = server.stats()
        if not s["storage_down"] and s["pending"] == 0 and not list(spill.glob("*.jsonl")):
            return s
        assert time.monotonic() < deadline, f"not drained in {timeout} s: {s}"
        time.sleep(0.1)


def assert_nothing_lost(answers: list[Answer], url: str, final: dict[str, Any]) -> None:
    ids = answered_ids(answers)
    stored = stored_ids(url)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = ids - set(stored)
    assert not missing, f"{len(missing)} of {len(ids)} answered requests not stored"
    assert final["enqueued"] == len(ids)
    assert final["dropped"] == 0, final["dropped_by_reason"]
    assert final["pending"] == 0
    assert final["written"] + final["spilled"] == len(ids)
    assert final["replayed"] == final["spilled"]  # every spilled event came back, once
    assert balanced(final)


def test_sqlite_locked_by_another_process_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db" / "leza.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    spill = tmp_path / "spill"
    # A short busy timeout, so the 4 s lock outlasts the retries (~2 s) and the
    # batch goes to the spill file, to be replayed once the lock is released.
    with running(Server(tmp_path, url, spill, busy_ms=300)) as server:
        load = Load(server.port, rate=150)
        time.sleep(0.8)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db), "4"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            assert locker.wait(30) == 0  # held the lock 4 s, then committed
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
            if locker.stdout is not None:
                locker.stdout.close()
        time.sleep(0.5)
        answers = load.stop()
        during = wait_drained(server, spill)
        final = server.stop()
    assert during["storage_errors"] >= 1  # the lock was felt...
    assert final["spilled"] > 0  # ...long enough to spill
    assert_nothing_lost(answers, url, final)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster for this module alone: the test restarts it."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) found")
    server = ThrowawayPostgres(bindir)
    try:
        try:
            server.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            pytest.fail(f"could not start a throwaway PostgreSQL from {bindir}: {exc}")
        yield server
    finally:
        server.stop()


def test_postgres_restarted_mid_run_loses_nothing(
    tmp_path: Path, own_postgres: ThrowawayPostgres
) -> None:
    pg = own_postgres
    url = f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/leza_test"
    spill = tmp_path / "spill"
    with running(Server(tmp_path, url, spill)) as server:
        load = Load(server.port, rate=150)
        time.sleep(0.8)
        assert server.stats()["written"] > 0
        pg._run(
            "pg_ctl", "-D", str(pg.data), "-l", str(pg.log), "-m", "fast", "-w", "-t", "60",
            "restart",
        )  # fmt: skip
        time.sleep(1.5)
        answers = load.stop()
        wait_drained(server, spill)
        final = server.stop()
    assert final["storage_errors"] >= 1  # the recorder's connection was cut
    assert_nothing_lost(answers, url, final)


def test_postgres_stopped_while_the_app_is_idle_logs_a_line_not_a_traceback_per_poll(
    own_postgres: ThrowawayPostgres, make_leza: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # No batch fails while the app is idle, so storage is not known to be down:
    # only the periodic session poll finds out, at every poll.
    pg = own_postgres
    url = f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/leza_test"
    leza = make_leza(storage=url, session_poll_interval=0.1)
    leza.recorder.offer(raw(1))
    assert leza.flush(5)
    pg._run("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "stop")
    try:
        with caplog.at_level(logging.WARNING, logger="leza_middleware"):
            time.sleep(2.0)  # ~20 polls against a stopped server
    finally:
        pg._run(
            "pg_ctl", "-D", str(pg.data), "-l", str(pg.log), "-o", f"-p {pg.port}", "-w",
            "-t", "60", "start",
        )  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "leza_middleware"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("leza: storage read failed: OperationalError")
    assert not any(r.exc_info for r in caplog.records)
    leza.recorder.offer(raw(2))  # storage is back: written as usual
    assert leza.flush(5)
    s = leza.stats()
    assert s["written"] == 2
    assert balanced(s)


def _unwritable(spill: Path, mode: str) -> tuple[dict[str, Any], Callable[[], None]]:
    """How to make ``spill`` read-only or full for real on this machine.

    Returns keyword arguments for ``Server`` and what to call once it runs.
    As root: a tmpfs (full: 64 KiB, ENOSPC; read-only: remounted ``ro``,
    EROFS), else ``chattr +i``; otherwise ``chmod 555`` and a file size
    limit on the server (EFBIG).
    """
    spill.mkdir()
    root = os.geteuid() == 0
    mounted = False
    if root and shutil.which("mount"):
        size = "64k" if mode == "full" else "1m"
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(spill)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
    if mode == "full":
        if mounted:
            return {}, lambda: None
        return {"fsize_limit": 64 * 1024}, lambda: None
    if mounted:
        return {}, lambda: _run(["mount", "-o", "remount,ro", str(spill)])
    if not root:
        return {}, lambda: spill.chmod(0o555)
    if shutil.which("chattr"):
        return {}, lambda: _run(["chattr", "+i", str(spill)])
    pytest.skip("running as root without mount or chattr: cannot make a directory read-only")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _restore(spill: Path) -> None:
    with contextlib.suppress(OSError):
        spill.chmod(0o755)
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(spill)], capture_output=True, check=False)
    if os.path.ismount(spill):
        subprocess.run(["umount", str(spill)], capture_output=True, check=False)


@pytest.mark.parametrize("mode", ["read-only", "full"])
def test_spill_unwritable_while_storage_down_every_drop_counted(tmp_path: Path, mode: str) -> None:
    # Storage down for real: nothing listens on this port.
    url = f"postgresql+psycopg://leza@127.0.0.1:{_free_port()}/leza"
    spill = tmp_path / "spill"
    try:
        server_kwargs, break_spill = _unwritable(spill, mode)
        with running(Server(tmp_path, url, spill, **server_kwargs)) as server:
            break_spill()
            load = Load(server.port, rate=150)
            time.sleep(1.5)
            # Then a trickle: the recorder often wakes with nothing to write,
            # and must not take "no spill file to replay" for storage being back.
            load.set_rate(3)
            time.sleep(3.0)
            answers = load.stop()
            final = server.stop()  # storage still down: the rest is spilled or dropped
            log = server.log()
            lines = [
                line for f in sorted(spill.glob("*.jsonl")) for line in f.read_text().splitlines()
            ]
    finally:
        _restore(spill)

    ids = answered_ids(answers)  # the app was unaffected: every request answered 200...
    assert max(a.latency for a in answers) < 1.0  # ...without waiting on storage
    assert final["enqueued"] == len(ids)
    assert final["written"] == 0
    assert final["pending"] == 0
    assert balanced(final)
    # Every event not kept is dropped for the cause, counted once.
    assert final["dropped_by_reason"] == {"spill_failed": final["dropped"]}
    assert final["dropped"] > 0
    assert final["spilled"] + final["dropped"] == len(ids)
    # What is counted as spilled is exactly what the spill files hold: a batch
    # the disk took only part of was taken back, not left to be replayed.
    torn = [line for line in lines if not line.endswith("}")]
    assert not torn, f"{len(torn)} torn lines in the spill files"
    spilled_ids = [json.loads(line)["request_id"] for line in lines]
    assert len(spilled_ids) == final["spilled"]
    assert len(set(spilled_ids)) == len(spilled_ids)
    assert set(spilled_ids) <= ids
    if mode == "read-only":
        assert final["spilled"] == 0
    else:
        assert final["spilled"] > 0  # it filled up, it was not unwritable from the start
    # Storage was probed, not retried: the retries of the first batch only.
    assert final["retried"] == 3
    assert log.count("spill file not writable") == 1, log  # not a line per batch
    assert log.count("unavailable; spilling events") == 1, log


REPLAYER = textwrap.dedent(
    """
    import json, os, sys
    from leza_middleware.spill import Spill

    spill, seen, replayed = Spill(sys.argv[1]), set(), 0
    def write(batch):
        global replayed
        replayed += len(batch)
        seen.update(e.request_id for e in batch)
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        spill.replay(write, 100)
    spill.replay(write, 100)
    print(json.dumps({"seen": sorted(seen), "replayed": replayed}), flush=True)
    """
)


def test_replays_by_other_processes_lose_no_spilled_event_and_count_each_once(
    tmp_path: Path,
) -> None:
    # Workers of one app share a spill directory: while one spills into a new
    # file, the others replay every file nobody holds a lock on. A file caught
    # between its creation and its lock was taken for an orphan and deleted
    # (its events lost); a file two replayers opened at once was replayed twice.
    from leza_middleware.events import AccessEvent
    from leza_middleware.spill import Spill

    spill_dir, stop = tmp_path / "spill", tmp_path / "stop"
    replayers = [
        subprocess.Popen(
            [sys.executable, "-c", REPLAYER, str(spill_dir), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in replayers:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        spill, n = Spill(str(spill_dir)), 1500
        for i in range(n):
            event = AccessEvent.build(
                id=f"{i:031x}", ts=1, action="access", method="GET", endpoint="/", route=None,
                status=200, duration_us=5, outcome="success", reason="", request_id=f"rid{i}",
                client_ip="192.0.2.1", ip_valid=True, peer_ip="192.0.2.1",
            )  # fmt: skip
            spill.append([event])
            spill.rotate()  # a new file each time, as each probe of a down storage does
        stop.touch()
        reports = [json.loads(proc.communicate(timeout=60)[0]) for proc in replayers]
    finally:
        for proc in replayers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    seen = set().union(*(r["seen"] for r in reports))
    assert not list(spill_dir.glob("spill-*.jsonl"))
    assert len(seen) == n, f"{n - len(seen)} spilled events lost"
    assert sum(r["replayed"] for r in reports) == n  # each file replayed once
