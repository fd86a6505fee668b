"""Acceptance of scaling out (issue 18): gunicorn, two ClickHouse shards, PostgreSQL.

tests/scaling_app.py runs under a real gunicorn master with 4 uvicorn workers,
configured only by ``LEZA_*`` variables: access and log events go to ClickHouse
through Distributed tables over two shards of their own (``?cluster=leza_shards``),
audit rows, sessions and availability checks to a fresh PostgreSQL schema.
Clients on 8 threads sign in, browse and sign out, each request with its own
``X-Request-ID``; every request logs one line.

Phase 1 (both shards up): every request served is stored exactly once in
ClickHouse (counted through the storage API, each request id once, spread over
BOTH shards' local tables), one log line each; PostgreSQL holds the audit rows
and the sessions and no access rows; ``leza verify`` (the CLI, same variables)
says the chains are intact; STATE (``leza.query.state()`` and the admin view's
``/api/state``) and the ACCESS tab's filtered count show the same numbers.

Phase 2 (a shard stops mid-load): the second shard's server is killed while
the clients keep sending; every request still answers 200, the workers spill
what ClickHouse refused (files in the spill directory); the shard restarts on
the same ports and data while the load goes on, the workers replay their
spills, and in the end every request of both phases is stored exactly once,
its log line too, and the PostgreSQL side is as complete as after phase 1.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import CLICKHOUSE_REQUIRED, postgres_schema

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")
pytest.importorskip("gunicorn", reason="gunicorn is in the test extra")
pytest.importorskip("uvicorn_worker", reason="uvicorn-worker is in the test extra")

HERE = Path(__file__).resolve().parent
WORKERS = 4
THREADS = 8
PAGES = 50  # phase 1: GET /items/… per client thread, between its login and logout
FLUSH = 0.2  # LEZA_FLUSH_INTERVAL of the workers
SECRET = "scaling-acceptance-secret-key-0123456789"
DOWN_FOR = 3.0  # phase 2: seconds the second shard stays down, under load


# ----------------------------------------------------------------------------- servers


@pytest.fixture
def shards() -> Iterator[list[Any]]:
    """Two ClickHouse servers of this test's own (one of them is killed)."""
    from clickhouse_server import find_server, start_servers

    command = find_server()
    if command is None:
        reason = "no ClickHouse server binary to start two shards with"
        if CLICKHOUSE_REQUIRED:
            pytest.fail(f"{reason}; required under LEZA_REQUIRE_CLICKHOUSE=1")
        pytest.skip(reason)
    servers = start_servers(command)
    yield servers
    for server in servers:
        server.stop()


@dataclass
class Deployment:
    env: dict[str, str]  # the LEZA_* variables the app (and the CLI) get
    pg_url: str
    ch_url: str
    spill: Path


@pytest.fixture
def deployment(shards: list[Any], postgres_url: str, tmp_path: Path) -> Iterator[Deployment]:
    database = f"leza_scale_{uuid.uuid4().hex[:10]}"
    ch_url = f"clickhouse://127.0.0.1:{shards[0].tcp_port}/{database}?cluster=leza_shards"
    with postgres_schema(postgres_url) as pg_url:
        spill = tmp_path / "spill"
        env = {
            "LEZA_STORAGE": pg_url,
            "LEZA_STORAGE_ACCESS": ch_url,
            "LEZA_STORAGE_LOG": ch_url,
            "LEZA_SECRET_KEY": SECRET,
            "LEZA_SPILL_DIR": str(spill),
            "LEZA_FLUSH_INTERVAL": str(FLUSH),
            "LEZA_GEOIP_DB": "off",
        }
        yield Deployment(env, pg_url, ch_url, spill)


class Gunicorn:
    """gunicorn with 4 uvicorn workers on a socket the test bound (``fd://``)."""

    def __init__(self, tmp_path: Path, deployment: Deployment) -> None:
        from gunicorn_cmd import gunicorn_command

        self.listener = socket_listener()
        self.port: int = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        env = dict(os.environ)
        env.update(deployment.env)
        env["SCALE_CHECK_PORT"] = str(sa.make_url(deployment.pg_url).port)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        cmd = gunicorn_command(
            "scaling_app:app", fd, workers=WORKERS, worker_class="uvicorn_worker.UvicornWorker"
        )
        self.log = tmp_path / "gunicorn.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                start_new_session=True,  # close() can kill the workers too, not only the master
            )  # fmt: skip

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        finally:
            self.close()

    def close(self) -> None:
        # A SIGKILLed master leaves its workers running (orphans writing to the
        # test's databases after it ended): stop it, then kill the whole group.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.listener.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def socket_listener() -> Any:
    import socket

    return socket.create_server(("127.0.0.1", 0), backlog=256)


# ----------------------------------------------------------------------------- load


@dataclass
class Load:
    """Every request sent: request id -> (path, HTTP status, worker pid)."""

    answered: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self, *, path: str | None = None) -> set[str]:
        return {r for r, (p, _, _) in self.answered.items() if path is None or p == path}

    def pids(self) -> set[int]:
        return {pid for _, _, pid in self.answered.values()}


class Client:
    """One person: their session cookie kept, a new connection per request."""

    def __init__(self, port: int, user: str, load: Load) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.user = user
        self.load = load
        self.cookie = ""

    def request(self, method: str, path: str) -> None:
        rid = uuid.uuid4().hex
        # A connection per request (as browsers behind a balancer): spread over the workers.
        headers = {"X-Request-ID": rid, "X-User": self.user, "Connection": "close"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        try:
            self.conn.request(method, path, headers=headers)
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            with self.load.lock:
                self.load.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("leza_sid="):
                self.cookie = value.split(";", 1)[0]
        with self.load.lock:
            self.load.answered[rid] = (path, response.status, int(body) if body.isdigit() else 0)
            if response.status != 200:
                self.load.errors.append(f"{method} {path}: HTTP {response.status}: {body[:200]!r}")

    def close(self) -> None:
        self.conn.close()


def tracebacks(lines: list[str]) -> list[list[str]]:
    """Each ``Traceback (most recent call last):`` block of a log: its frame lines."""
    out: list[list[str]] = []
    for i, line in enumerate(lines):
        if "Traceback (most recent call last):" in line:
            block = []
            for frame in lines[i + 1 :]:
                if not frame.startswith(" "):
                    break
                block.append(frame)
            out.append(block or [line])
    return out


def drive(port: int, load: Load, users: list[str], pages: Callable[[int], bool],
          pace: float = 0.0) -> None:  # fmt: skip
    """Each user on a thread of its own: login, pages while ``pages(i)`` (``pace``
    seconds apart), logout."""

    def one(user: str) -> None:
        client = Client(port, user, load)
        try:
            client.request("POST", "/login")
            i = 0
            while pages(i) and i < 10_000:
                client.request("GET", f"/items/{i}")
                i += 1
                if pace:
                    time.sleep(pace)
            client.request("POST", "/logout")
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "client threads hung"


def wait_workers(server: Gunicorn, timeout: float = 60) -> None:
    """Until all 4 workers answer (probes on fresh connections, not recorded by
    the load: they are counted separately as ``probes``)."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while len(seen) < WORKERS:
        if server.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.proc.returncode}:\n{server.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"only workers {sorted(seen)} answered:\n{server.output()[-4000:]}")
        # (a probe waits in the listen backlog until a worker has booted: slow when busy)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            conn.request("GET", "/items/probe", headers={"X-Request-ID": f"probe-{uuid.uuid4()}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, body
        seen.add(int(body))


# ----------------------------------------------------------------------------- reading


class Stores:
    """What the test reads: a Leza on the same variables (its own spill
    directory, so it never replays the workers' spills), ClickHouse's shards
    directly, PostgreSQL's schema directly."""

    def __init__(self, deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        from leza_middleware import Leza
        from leza_middleware.storage.clickhouse import ClickHouseStorage

        for name, value in deployment.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LEZA_SPILL_DIR", str(tmp / "reader-spill"))
        self.leza = Leza()
        self.ch = ClickHouseStorage(deployment.ch_url)
        self.pg = sa.create_engine(deployment.pg_url)
        self.admin_calls = 0  # requests to the admin view (recorded by this Leza)

    def close(self) -> None:
        self.leza.shutdown(5)
        self.ch.close()
        self.pg.dispose()

    def ch_count(self, kind: str) -> int:
        from leza_middleware.storage import QueryFilter

        return int(self.ch.count(kind, QueryFilter()) or 0)

    def ch_access(self) -> list[dict[str, Any]]:
        from leza_middleware.storage import QueryFilter

        return [e.to_dict() for e in self.ch.query("access", QueryFilter(limit=100_000)).events]

    def ch_request_ids(self) -> list[str]:
        return [e["request_id"] for e in self.ch_access()]

    def ch_logged_ids(self) -> list[str]:
        from leza_middleware.storage import QueryFilter

        events = self.ch.query("log", QueryFilter(limit=100_000)).events
        return [e.to_dict()["message"].removeprefix("served ") for e in events]

    def per_shard(self, table: str) -> list[int]:
        """Distinct ids in each shard's local table (a row lives on one shard only)."""
        sql = f"SELECT uniqExact(id) FROM {self.ch.local(table)}"
        return [int(self.ch.execute(sql, shard=shard)[0][0]) for shard in self.ch.shards()]

    def pg_scalar(self, sql: str) -> int:
        with self.pg.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar() or 0)

    def pg_rows(self, table: str) -> int:
        """Rows of ``table`` in the schema (0 when the table does not exist)."""
        if not self.pg_scalar(f"select count(*) from pg_tables where tablename = '{table}' "
                              "and schemaname = current_schema()"):  # fmt: skip
            return 0
        return self.pg_scalar(f"select count(*) from {table}")


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, detail: Callable[[], str]
               ) -> float:  # fmt: skip
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:  # a shard just restarted: ask again
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not reached after {timeout} s: {detail()}")
        time.sleep(0.2)


def check_stored(stores: Stores, load: Load, probes: int, sessions: int) -> None:
    """Every request exactly once, its log line once, PostgreSQL complete."""
    served = load.ids() | set(probe_ids(stores))
    assert len(served) == len(load.answered) + probes
    # ClickHouse, through the storage API: the count, then each request id once.
    access = stores.ch_access()
    stored = [e["request_id"] for e in access]
    assert len(stored) == len(set(stored)), "a request stored twice"
    # Besides the app's requests: the admin view's own (this process's Leza records them).
    admin = [e for e in access if e["request_id"] not in served]
    assert len(admin) == stores.admin_calls, [e["endpoint"] for e in admin]
    assert all("/api/" in e["endpoint"] for e in admin), [e["endpoint"] for e in admin]
    assert set(stored) - {e["request_id"] for e in admin} == served
    assert stores.ch_count("access") == len(served) + len(admin)
    logged = stores.ch_logged_ids()
    assert len(logged) == len(set(logged)) == stores.ch_count("log")
    assert set(logged) == served
    # Both shards hold events; together exactly the events stored.
    for table, n in (("leza_access", len(stored)), ("leza_log", len(served))):
        per_shard = stores.per_shard(table)
        assert len(per_shard) == 2, per_shard
        assert all(per_shard), (table, per_shard)
        assert sum(per_shard) == n, (table, per_shard)
    # PostgreSQL: the audit rows and the sessions, and no access or log rows.
    assert stores.pg_rows("leza_access") == 0
    assert stores.pg_rows("leza_log") == 0
    q = stores.leza.query
    assert q.count("audit") == 2 * sessions
    assert q.count("audit", action="login") == sessions
    assert q.count("audit", action="logout") == sessions
    assert q.count("session") == sessions
    assert q.count("session", active=True) == 0, "every session was logged out"
    assert q.count("check"), "the check's results are stored"


def probe_ids(stores: Stores) -> list[str]:
    """The readiness probes' request ids, as stored (they are requests served too)."""
    return [r for r in stores.ch_request_ids() if r.startswith("probe-")]


# ----------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_gunicorn_on_two_clickhouse_shards_and_postgres_loses_nothing(
    shards: list[Any],
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = [f"user-{n}" for n in range(THREADS)]
    load = Load()
    stores = Stores(deployment, monkeypatch, tmp_path)
    # The schema made before the workers start, as a deployment runs `leza migrate`
    # first: four workers creating a fresh one at once on a busy machine made
    # their first blocklist loads outlast revocation_load_timeout (see
    # tests/test_relogin.py), refusing the first signed-in requests as unknown.
    stores.leza.sessions.active()
    server = Gunicorn(tmp_path, deployment)
    try:
        wait_workers(server)
        # ---- phase 1: both shards up
        drive(server.port, load, users, lambda i: i < PAGES)
        assert not load.errors, (load.errors[:5], refusals(stores), server.output()[-3000:])
        assert len(load.answered) == THREADS * (PAGES + 2)
        assert len(load.pids()) > 1, "the load went to a single worker"

        def phase_stored() -> bool:
            return stores.ch_count("access") == len(load.answered) + len(probe_ids(stores))

        wait_until("phase 1 stored", phase_stored, 30,
                   lambda: f"{stores.ch_count('access')} of {len(load.answered)}")  # fmt: skip
        probes = len(probe_ids(stores))
        wait_until("sessions ended", lambda: stores.leza.query.count("session", active=True) == 0
                   and stores.leza.query.count("audit") == 2 * THREADS, 30,
                   lambda: "sessions/audit not all written")  # fmt: skip
        check_stored(stores, load, probes, THREADS)
        check_views(stores, deployment, load, probes, THREADS)

        # ---- phase 2: the second shard stops mid-load and comes back
        first_phase = len(load.answered)
        t0 = time.monotonic()
        down: dict[str, Any] = {}

        def outage() -> None:
            time.sleep(0.5)
            shards[1].kill()
            down["at"] = time.monotonic()
            time.sleep(DOWN_FOR)
            down["spill_files"] = sorted(deployment.spill.glob("spill-*.jsonl"))
            down["spilled_lines"] = sum(
                p.read_bytes().count(b"\n") for p in down["spill_files"] if p.exists()
            )
            down["ch_refused"] = ch_refuses(stores)
            shards[1].restart()
            down["back"] = time.monotonic()

        killer = threading.Thread(target=outage)
        killer.start()
        # The same people as in phase 1, signing in again seconds after they
        # signed out: their new sessions must be served like any other.
        drive(server.port, load, users,
              lambda i: time.monotonic() < t0 + DOWN_FOR + 2.5 or "back" not in down,
              pace=0.01)  # fmt: skip
        killer.join(90)
        assert "back" in down, "the shard did not come back"
        assert not load.errors, (load.errors[:5], refusals(stores), server.output()[-3000:])
        during = len(load.answered) - first_phase
        assert down["spill_files"], "nothing was spilled while a shard was down"
        assert down["spilled_lines"] > 0
        assert down["ch_refused"], "ClickHouse answered a read with a shard down"
        took = wait_until(
            "every event replayed",
            lambda: (
                stores.ch_count("access") == len(load.answered) + probes + stores.admin_calls
                and stores.ch_count("log") == len(load.answered) + probes
            ),
            45,
            lambda: (
                f"access {stores.ch_count('access')}, log {stores.ch_count('log')} "
                f"of {len(load.answered) + probes}; spill {list(deployment.spill.iterdir())}; "
                + diagnose(stores, load)
            ),
        )
        wait_until("sessions ended", lambda: stores.leza.query.count("session", active=True) == 0
                   and stores.leza.query.count("audit") == 4 * THREADS, 30,
                   lambda: "sessions/audit not all written")  # fmt: skip
        check_stored(stores, load, probes, 2 * THREADS)
        check_views(stores, deployment, load, probes, 2 * THREADS)
        assert not list(deployment.spill.glob("spill-*.jsonl")), "a spill file left unreplayed"
        assert server.stop() == 0
        output = server.output()
    finally:
        server.close()
        stores.close()
    # Only the outage's own warnings: no traceback of ours, no loop error, no drop.
    # (clickhouse-driver logs its own failed connects to the dead shard with their
    # traceback — from the recorder's periodic reads, e.g. retention — which is the
    # driver's logging, not a failure of the app or of leza.)
    lines = output.splitlines()
    bad = [
        line for line in lines
        if "loop error" in line or "dropped" in line.lower()
    ] + [
        block for block in tracebacks(lines)
        if not all("clickhouse_driver" in f for f in block if f.lstrip().startswith("File "))
    ]  # fmt: skip
    assert not bad, output[-4000:]
    print(
        f"\n[scaling] phase 1: {first_phase} requests + {probes} probes; phase 2: {during} "
        f"requests, shard down {down['back'] - down['at']:.1f} s, "
        f"{len(down['spill_files'])} spill files ({down['spilled_lines']} events); "
        f"all replayed {took:.1f} s after the shard was back"
    )


def diagnose(stores: Stores, load: Load) -> str:
    """What is wrong with the stored access events (for a failure message)."""
    from collections import Counter

    access = stores.ch_access()
    rids = Counter(e["request_id"] for e in access)
    ids = Counter(e["_id"] for e in access)
    served = load.ids()
    twice = [r for r, n in rids.items() if n > 1][:5]
    unknown = [(e["request_id"], e["endpoint"]) for e in access if e["request_id"] not in served]
    return (
        f"{len(access)} events read; request ids stored twice {twice}; "
        f"event ids twice {[i for i, n in ids.items() if n > 1][:5]}; "
        f"not sent by the clients {unknown[:8]}"
    )


def refusals(stores: Stores) -> list[tuple[str, str, str | None]]:
    """The refused requests as stored (endpoint, reason, performer), for a failure
    message: a revoked session and an unknown blocklist answer alike, the
    stored reason tells them apart."""
    time.sleep(1.0)  # the workers write their refusals within a flush interval or two
    try:
        return [
            (e["endpoint"], e["reason"], (e.get("performer") or {}).get("id"))
            for e in stores.ch_access()
            if e["action"] == "denied"
        ][:10]
    except Exception as exc:  # a shard still restarting
        return [("-", f"could not read: {exc}", None)]


def ch_refuses(stores: Stores) -> bool:
    """A read with a shard down fails rather than answering half."""
    try:
        stores.ch_count("access")
    except Exception:  # the driver's network error
        return True
    return False


def check_views(stores: Stores, deployment: Deployment, load: Load, probes: int,
                sessions: int) -> None:  # fmt: skip
    """STATE from the API and the admin view's ``/api/state``, the ACCESS tab
    filtered by endpoint, and ``leza verify`` from the command line."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from leza_middleware.dashboard import make_asgi_app

    leza = stores.leza
    requests = len(load.answered) + probes + stores.admin_calls
    pages = len(load.ids()) - 2 * sessions + probes  # GET /items/{n}
    state = leza.query.state()
    assert state["requests"] == requests
    assert state["sessions"]["logins"] == sessions
    assert state["sessions"]["active"] == 0
    assert state["sessions"]["performers"] == THREADS  # one person per client thread
    assert [(s["name"], s["state"]) for s in state["services"]] == [("postgres", "up")]
    by_endpoint = {e["endpoint"]: e["requests"] for e in state["endpoints"]}
    assert by_endpoint["GET /items/{n}"] == pages, by_endpoint
    assert by_endpoint["POST /login"] == by_endpoint["POST /logout"] == sessions, by_endpoint
    assert leza.query.count("access", endpoint="POST /login") == sessions
    assert leza.query.count("access", endpoint="GET /items/{n}") == pages
    app = Starlette(routes=[Mount("/leza", make_asgi_app(leza, lambda r: True))])
    with TestClient(app) as admin:
        r = admin.get("/leza/api/state")
        assert r.status_code == 200, r.text
        assert r.json()["requests"] == requests
        r = admin.get("/leza/api/access", params={"endpoint": "POST /logout", "limit": 100})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == sessions
        assert {i["performer"]["id"] for i in items} == {f"user-{n}" for n in range(THREADS)}
    stores.admin_calls += 2
    assert leza.flush(10)  # the admin view's own two requests, stored now
    assert leza.audit.verify()
    env = dict(os.environ)
    env.update(deployment.env)
    done = subprocess.run(
        [sys.executable, "-m", "leza_middleware", "verify"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
