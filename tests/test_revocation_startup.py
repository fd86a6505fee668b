"""A revocation holds from a process's first request (issue 13, item 1).

A process loads the blocklist of ended sessions before it decides its first
request carrying a session cookie, and fails closed when it cannot know it
(docs/sessions.md, "Revocation from the first request").

In-process, on real SQLite files and the suite's PostgreSQL: a "restarted"
process (a new ``Leza`` on the same storage) refuses a revoked cookie on its
first request; concurrent first requests share one bounded load; an async
adapter awaits it without blocking the event loop; a forked child loads
again; more than one page of ended sessions is read whole; storage down at
start-up, storage that hangs and polls that fail refuse cookie-bearing
requests (counted, logged once) and recover without a restart.

Real servers (``slow``), serving tests/revocation_apps.py: uvicorn with and
without lifespan, gunicorn with Flask and with Django, restarted between the
revocation and the replay; gunicorn ``--preload`` with 4 workers; storage
down at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from flask import Flask
from gunicorn_cmd import gunicorn_command
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware
from leza_middleware.events import SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.sessions import REVOKED_REASON, UNKNOWN_REASON

SECRET = "revocation-tests-secret-0123456789"
ALICE = {"id": "alice", "name": "Alice"}


# ----------------------------------------------------------------------------- in-process apps


def _performer(request: Any) -> dict[str, str] | None:
    return ALICE if request.path == "/login" else None


def _asgi_performer(request: HTTPConnection) -> dict[str, str] | None:
    return ALICE if request.url.path == "/login" else None


class App:
    """One real app (Starlette under TestClient, or Flask's test client) on one Leza."""

    def __init__(self, kind: str, leza: Leza) -> None:
        self.kind = kind
        self.leza = leza
        if kind == "asgi":

            async def home(request: Request) -> PlainTextResponse:
                return PlainTextResponse("ok")

            routes = [Route("/", home), Route("/login", home)]
            self.asgi = LezaMiddleware(Starlette(routes=routes), leza=leza)
            self._client: Any = TestClient(self.asgi)
        else:
            app = Flask("revocation")
            app.add_url_rule("/", "home", lambda: "ok")
            app.add_url_rule("/login", "login", lambda: "ok")
            leza.init_app(app)
            self._client = app.test_client(use_cookies=False)  # the Cookie header as given

    def get(self, path: str = "/", cookie: str | None = None) -> Any:
        headers = {} if cookie is None else {"Cookie": f"leza_sid={cookie}"}
        return self._client.get(path, headers=headers)

    def close(self) -> None:
        if self.kind == "asgi":
            self._client.close()


def performer_for(kind: str) -> Callable[[Any], dict[str, str] | None]:
    return _asgi_performer if kind == "asgi" else _performer


def sign_in(app: App) -> tuple[str, str]:
    """Sign alice in: (the session cookie's value, the session's public id)."""
    response = app.get("/login")
    assert response.status_code == 200
    header = next(h for h in set_cookie_headers(response) if h.startswith("leza_sid="))
    cookie = header.partition("=")[2].split(";", 1)[0]
    assert app.leza.flush(5)
    [session] = app.leza.sessions.active()
    return cookie, session["_id"]


def set_cookie_headers(response: Any) -> list[str]:
    headers = response.headers  # httpx's or Werkzeug's
    found: list[str] = (
        headers.get_list("set-cookie")
        if hasattr(headers, "get_list")
        else headers.getlist("Set-Cookie")
    )
    return found


def access_events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access(limit=1000)))


def clears_cookie(response: Any) -> bool:
    return any(
        h.startswith("leza_sid=;") and "Max-Age=0" in h for h in set_cookie_headers(response)
    )


# ----------------------------------------------------------------------------- PostgreSQL faults


def pg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def session_table_locked(url: str) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on the session table (reads of it hang) until
    released (the yielded callable) or the block ends."""
    import psycopg

    conn = psycopg.connect(pg_dsn(url))
    conn.execute("LOCK TABLE leza_session IN ACCESS EXCLUSIVE MODE")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            conn.rollback()

    try:
        yield release
    finally:
        release()
        conn.close()


#: For tests that need PostgreSQL's locks or schemas: ``storage_url`` on PostgreSQL only.
on_postgres = pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)


# ----------------------------------------------------------------------------- restart


@pytest.mark.both_databases
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_restarted_process_refuses_a_revoked_cookie_on_its_first_request(
    app_for: Callable[..., App], make_leza: Any, kind: str
) -> None:
    before = app_for(kind)
    cookie, session_id = sign_in(before)
    assert before.get("/", cookie).status_code == 200
    # Revoked elsewhere (another process, the CLI): this one is about to be restarted.
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)

    after = app_for(kind)  # the restarted process: nothing loaded, no recorder yet
    assert after.leza.stats()["revocations"]["state"] == "not loaded"
    assert after.leza.stats()["enqueued"] == 0
    first = after.get("/", cookie)
    assert first.status_code == 401
    assert clears_cookie(first)  # revoked: the browser signs in afresh
    revocations = after.leza.stats()["revocations"]
    assert revocations["state"] == "loaded"
    assert revocations["loads"] == 1
    assert revocations["refused_unknown"] == 0
    [event] = [
        e for e in access_events(after.leza) if e["request_id"] == first.headers["x-request-id"]
    ]
    assert (event["action"], event["reason"], event["status"]) == ("denied", REVOKED_REASON, 401)
    # Requests without the cookie, and other sessions, are served.
    assert after.get("/").status_code == 200
    assert after.get("/", "another-browser-session-key").status_code == 200


@on_postgres
def test_concurrent_first_requests_wait_for_one_load(
    app_for: Callable[..., App], make_leza: Any, storage_url: str
) -> None:
    cookie, session_id = sign_in(app_for("wsgi"))
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)
    app = app_for("wsgi", revocation_load_timeout=10)
    statuses: list[int] = []
    with session_table_locked(storage_url) as release:
        # Eight first requests at once while the load is held up in storage.
        threads = [
            threading.Thread(target=lambda: statuses.append(app.get("/", cookie).status_code))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        assert wait_for(lambda: app.leza.stats()["revocations"]["state"] == "loading", 5)
        time.sleep(0.3)
        assert statuses == [], "a request was decided before the blocklist was loaded"
        release()
        for t in threads:
            t.join(10)
    assert statuses == [401] * 8
    revocations = app.leza.stats()["revocations"]
    assert revocations["loads"] == 1, "concurrent first requests each started a load"
    assert revocations["refused_unknown"] == 0
    denied = [e for e in access_events(app.leza) if e["action"] == "denied"]
    assert [e["reason"] for e in denied] == [REVOKED_REASON] * 8


@on_postgres
def test_an_async_adapter_awaits_the_load_without_blocking_the_event_loop(
    app_for: Callable[..., App], make_leza: Any, storage_url: str
) -> None:
    cookie, session_id = sign_in(app_for("asgi"))
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)
    app = app_for("asgi", revocation_load_timeout=10)
    ticks = 0

    async def main() -> tuple[int, float]:
        nonlocal ticks
        transport = httpx.ASGITransport(app=app.asgi)
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            t0 = time.monotonic()
            response = await client.get("/", headers={"Cookie": f"leza_sid={cookie}"})
            took = time.monotonic() - t0
        stop.set()
        await task
        return response.status_code, took

    with session_table_locked(storage_url) as release:
        threading.Timer(0.6, release).start()
        status, took = asyncio.run(main())
    assert status == 401
    assert took >= 0.5  # it did wait for the load...
    assert ticks >= 20, f"the event loop was blocked while the load ran ({ticks} ticks)"
    assert app.leza.stats()["revocations"]["refused_unknown"] == 0


def test_lifespan_startup_loads_the_blocklist_before_any_request(
    app_for: Callable[..., App], make_leza: Any
) -> None:
    cookie, session_id = sign_in(app_for("asgi"))
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)
    app = app_for("asgi")
    with TestClient(app.asgi):  # runs lifespan startup
        assert wait_for(lambda: app.leza.stats()["revocations"]["state"] == "loaded", 5)
        assert app.leza.stats()["enqueued"] == 0
        assert app.get("/", cookie).status_code == 401
    assert app.leza.stats()["revocations"]["loads"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_loads_again_before_deciding(
    app_for: Callable[..., App], make_leza: Any
) -> None:
    """gunicorn --preload: a child must not trust the blocklist its parent loaded."""
    cookie, session_id = sign_in(app_for("wsgi"))
    app = app_for("wsgi")
    assert app.get("/", cookie).status_code == 200  # the parent has loaded: nothing revoked
    assert app.leza.stats()["revocations"]["state"] == "loaded"
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # child: must never return into pytest
        code = 1
        try:
            os.close(r)
            state = app.leza.stats()["revocations"]["state"]
            status = app.get("/", cookie).status_code
            os.write(w, f"{state} {status}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report == "not loaded 401"


@on_postgres
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_for_a_load_in_flight(
    app_for: Callable[..., App], make_leza: Any, storage_url: str
) -> None:
    """The load's thread may hold an import lock or the driver's: a fork waits
    (at most 2 s) for it to finish; the child then loads on its own."""
    cookie, session_id = sign_in(app_for("wsgi"))
    assert make_leza(secret_key=SECRET, geoip_db=False).sessions.revoke(session_id)
    app = app_for("wsgi")
    with session_table_locked(storage_url) as release:
        app.leza.sessions.prefetch()
        assert app.leza.stats()["revocations"]["state"] == "loading"
        threading.Timer(0.5, release).start()
        r, w = os.pipe()
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: must never return into pytest
            code = 1
            try:
                os.close(r)
                os.write(w, str(app.get("/", cookie).status_code).encode())
                code = 0
            finally:
                os._exit(code)
        forked_after = time.monotonic() - t0
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child_status = f.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert 0.4 <= forked_after < 2.5  # waited for the parent's load to finish
    assert app.leza.stats()["revocations"]["state"] == "loaded"
    assert child_status == "401"  # the child's own load, after the fork


# ----------------------------------------------------------------------------- many ended sessions


def _ended_sessions(n: int, *, start_us: int, end_us: int, reason: str) -> list[SessionEvent]:
    out: list[SessionEvent] = []
    for i in range(n):
        sid = f"{start_us:016x}{i:016x}"
        ts = start_us + i
        out.append(SessionEvent(id=new_event_id(ts), ts=ts, action="session_start",
                                session_id=sid, app="app", performer=None))  # fmt: skip
        out.append(SessionEvent(id=new_event_id(end_us), ts=end_us + i, action="session_end",
                                session_id=sid, app="app", end_reason=reason))  # fmt: skip
    return out


@pytest.mark.both_databases
def test_more_ended_sessions_than_one_page_are_all_loaded_and_polled(make_leza: Any) -> None:
    """The poll read ended sessions newest *start* first, 10,000 at most, and moved
    on: a session revoked among more than 10,000 ended ones, but started before
    them, was lost from the blocklist for good."""
    now = time.time_ns() // 1000
    hour = 3_600_000_000
    writer = make_leza(geoip_db=False)
    writer.query.ensure_ready()
    # The revoked session started first (two hours ago), then 10,050 sessions
    # started and timed out; all ended in the last minutes.
    old = _ended_sessions(1, start_us=now - 2 * hour, end_us=now - 60_000_000, reason="revoked")
    many = _ended_sessions(10_050, start_us=now - hour, end_us=now - 50_000_000,
                           reason="idle_timeout")  # fmt: skip
    writer.storage.write(old + many)
    revoked = old[0].session_id

    leza = make_leza(geoip_db=False, session_poll_interval=3600)
    assert leza.sessions.refusal(revoked) == REVOKED_REASON
    assert len(leza.sessions.blocked) == 1
    assert len(leza.sessions.timed_out) == 10_050

    # The same through the recorder's incremental poll.
    later = time.time_ns() // 1000
    old2 = _ended_sessions(1, start_us=later - 3 * hour, end_us=later, reason="logout")
    many2 = _ended_sessions(10_050, start_us=later - hour // 2, end_us=later,
                            reason="absolute_timeout")  # fmt: skip
    writer.storage.write(old2 + many2)
    leza.sessions.poll(force=True)
    assert leza.sessions.refusal(old2[0].session_id) == REVOKED_REASON
    assert len(leza.sessions.timed_out) == 20_100


def test_sessions_off_loads_nothing(app_for: Callable[..., App]) -> None:
    app = app_for("asgi", sessions=False)
    assert app.get("/", "a-session-key-of-some-kind").status_code == 200
    assert app.leza.stats()["revocations"]["state"] == "off"
    assert app.leza.stats()["revocations"]["loads"] == 0


# ----------------------------------------------------------------------------- storage down


def corrupt(db: Path) -> None:
    db.write_bytes(b"this is not a SQLite database " * 200)


def repair(db: Path) -> None:
    """An empty file is an empty SQLite database (same inode: open handles see it)."""
    with db.open("r+b") as f:
        f.truncate(0)


def warnings_logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_storage_down_at_start_up_refuses_cookie_requests_until_it_is_back(
    app_for: Callable[..., App], tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    db = tmp_path / "down.db"
    corrupt(db)
    app = app_for(kind, storage=f"sqlite:///{db}", session_poll_interval=0.2)
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        refused = [app.get("/", f"session-key-{i:04d}-of-a-browser") for i in range(5)]
        assert [r.status_code for r in refused] == [401] * 5
        # Not signed out: the session is probably fine, only unknown right now.
        assert not any(clears_cookie(r) for r in refused)
        assert app.get("/").status_code == 200  # no session cookie: never affected
        revocations = app.leza.stats()["revocations"]
        assert revocations["state"] in ("unknown", "loading")
        assert revocations["refused_unknown"] == 5
        assert revocations["load_failures"] >= 1
        assert len(warnings_logged(caplog, "revoked sessions could not be loaded")) == 1
        # The first load waited for storage; later requests are decided at once.
        t0 = time.monotonic()
        assert app.get("/", "session-key-9999-of-a-browser").status_code == 401
        assert time.monotonic() - t0 < 0.5

        repair(db)  # storage is back: recovered without a restart
        assert wait_for(
            lambda: app.get("/", "session-key-0000-of-a-browser").status_code == 200, 10
        )
        assert app.leza.stats()["revocations"]["state"] == "loaded"
        assert len(warnings_logged(caplog, "revoked sessions loaded from storage again")) == 1
        assert len(warnings_logged(caplog, "revoked sessions could not be loaded")) == 1
    refused_now = app.leza.stats()["revocations"]["refused_unknown"]
    assert refused_now >= 6
    # Every refusal is recorded (spilled while storage was down, then replayed).
    assert wait_for(lambda: app.leza.flush(5) and len(access_events(app.leza)) >= refused_now + 2)
    reasons = [e["reason"] for e in access_events(app.leza) if e["action"] == "denied"]
    assert reasons == [UNKNOWN_REASON] * refused_now


def test_fail_open_setting_serves_cookie_requests_while_unknown(
    app_for: Callable[..., App], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "down.db"
    corrupt(db)
    app = app_for("wsgi", storage=f"sqlite:///{db}", revocation_unknown="allow")
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        assert [app.get("/", "session-key-of-a-browser").status_code for _ in range(3)] == [200] * 3
    revocations = app.leza.stats()["revocations"]
    assert (revocations["allowed_unknown"], revocations["refused_unknown"]) == (3, 0)
    [line] = warnings_logged(caplog, "revoked sessions could not be loaded")
    assert "served without the check" in line
    assert "revocation_unknown='allow'" in line


@on_postgres
def test_storage_that_hangs_is_waited_for_at_most_the_load_timeout(
    app_for: Callable[..., App], make_leza: Any, storage_url: str
) -> None:
    cookie, _ = sign_in(app_for("wsgi"))  # a valid session: served once the state is known
    app = app_for("wsgi", revocation_load_timeout=0.4)
    with session_table_locked(storage_url) as release:
        t0 = time.monotonic()
        assert app.get("/", cookie).status_code == 401
        took = time.monotonic() - t0
        assert 0.35 <= took < 2.0
        t0 = time.monotonic()
        assert app.get("/", cookie).status_code == 401  # no second wait on the same load
        assert time.monotonic() - t0 < 0.3
        assert app.get("/").status_code == 200
        assert app.leza.stats()["revocations"]["loads"] == 1  # only one load in flight
        release()
        assert wait_for(lambda: app.get("/", cookie).status_code == 200, 10)
    assert app.leza.stats()["revocations"]["refused_unknown"] >= 2


@on_postgres
def test_a_blocklist_not_refreshed_within_the_staleness_bound_is_unknown(
    app_for: Callable[..., App], storage_url: str
) -> None:
    """Storage goes away after start-up: polls fail; once the last refresh is
    older than revocation_max_staleness, cookie requests are refused; when
    storage is back, the next poll (or a retry) makes it known again."""
    import psycopg
    from sqlalchemy.engine import make_url

    cookie, _ = sign_in(app_for("asgi"))
    app = app_for("asgi", session_poll_interval=0.2, revocation_max_staleness=0.8)
    assert app.get("/", cookie).status_code == 200
    schema = make_url(storage_url).query["options"].partition("=")[2]
    admin = pg_dsn(storage_url.split("?", 1)[0])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER SCHEMA {schema} RENAME TO {schema}_away")
        try:
            # Served while the last refresh is recent enough; refused after.
            assert wait_for(lambda: app.get("/", cookie).status_code == 401, 10)
            assert app.leza.stats()["revocations"]["load_failures"] >= 1
            assert app.get("/").status_code == 200
        finally:
            conn.execute(f"ALTER SCHEMA {schema}_away RENAME TO {schema}")
    assert wait_for(lambda: app.get("/", cookie).status_code == 200, 10)
    assert app.leza.stats()["revocations"]["state"] == "loaded"


# ============================================================================= real servers

HERE = Path(__file__).resolve().parent
SERVER_SECRET = "revocation-server-secret-0123456789"

# kind: (command after ``python -m``, the session cookie's name)
GUNICORN_APPS = {
    "gunicorn-flask": ("sync", "revocation_apps:flask_app"),
    "gunicorn-django": ("sync", "revocation_apps:django_app"),
    "gunicorn-starlette": ("uvicorn_worker.UvicornWorker", "revocation_apps:starlette_app"),
}


class Server:
    """A server process on a socket the test bound: the first request waits in
    its backlog until the server accepts it, so nothing (no readiness probe)
    reaches the server before the request a test sends first."""

    def __init__(
        self, tmp_path: Path, kind: str, storage: str, name: str, *, workers: int = 1,
        preload: bool = False, env: dict[str, str] | None = None, log_level: str = "warning",
    ) -> None:  # fmt: skip
        import socket
        import subprocess
        import sys

        self.kind = kind
        self.cookie_name = "sessionid" if kind == "gunicorn-django" else "leza_sid"
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port: int = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        if kind.startswith("uvicorn"):
            cmd = [sys.executable, "-m", "uvicorn", "revocation_apps:starlette_app",
                   "--fd", str(fd), "--log-level", log_level]  # fmt: skip
            if kind == "uvicorn-no-lifespan":
                cmd += ["--lifespan", "off"]
        else:
            pytest.importorskip("gunicorn", reason="gunicorn is in the test extra")
            worker_class, app = GUNICORN_APPS[kind]
            if worker_class.startswith("uvicorn_worker"):
                pytest.importorskip("uvicorn_worker", reason="uvicorn-worker is in the test extra")
            cmd = gunicorn_command(
                app,
                fd,
                workers=workers,
                worker_class=worker_class,
                graceful_timeout=10,
                log_level=log_level,
                preload=preload,
            )
        full_env = dict(os.environ)
        full_env.update(
            LEZA_STORAGE=storage,
            LEZA_SPILL_DIR=str(tmp_path / f"spill-{name}"),
            LEZA_SECRET_KEY=SERVER_SECRET,
            LEZA_GEOIP_DB="off",
            LEZA_FLUSH_INTERVAL="0.2",
            DJANGO_SETTINGS_MODULE="revocation_apps",
            PYTHONPATH=os.pathsep.join([str(HERE), full_env.get("PYTHONPATH", "")]),
            **(env or {}),
        )
        self.log = tmp_path / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=full_env, cwd=tmp_path, stdout=out,
                stderr=subprocess.STDOUT, pass_fds=(fd,),
            )  # fmt: skip

    def get(self, path: str = "/", cookie: str | None = None) -> httpx.Response:
        """One request on a connection of its own (so gunicorn spreads them over workers)."""
        headers = {"Connection": "close"}
        if cookie is not None:
            headers["Cookie"] = f"{self.cookie_name}={cookie}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=30)
        except httpx.TransportError:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.kind} exited with {self.proc.returncode}:\n{self.output()}")
            raise

    def stop(self) -> None:
        """Graceful stop (SIGTERM): the recorder writes its queue."""
        import signal

        self.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the SIGTERM it handled once it has shut down
        assert self.proc.wait(30) in (0, -signal.SIGTERM), self.output()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.listener.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(tmp_path: Path, kind: str, storage: str, name: str, **kwargs: Any) -> Iterator[Server]:
    server = Server(tmp_path, kind, storage, name, **kwargs)
    try:
        yield server
    finally:
        server.close()


def cli(storage: str, *args: str) -> str:
    """``leza …`` in a process of its own (as an operator runs it)."""
    import subprocess
    import sys

    env = {**os.environ, "LEZA_SECRET_KEY": SERVER_SECRET, "LEZA_GEOIP_DB": "off"}
    done = subprocess.run(
        [sys.executable, "-m", "leza_middleware", *args, "--storage", storage],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sign_in_and_stop(tmp_path: Path, kind: str, storage: str) -> str:
    """Sign alice in on a server, then stop it (its events are written): the cookie."""
    with serving(tmp_path, kind, storage, "sign-in") as server:
        login = server.get("/login")
        assert login.status_code == 200, server.output()
        cookie = login.cookies[server.cookie_name]
        assert server.get("/", cookie).status_code == 200
        # Written by the recorder's periodic flush (without lifespan, uvicorn's
        # SIGTERM ends the process before any other flush).
        reader = Leza(storage=storage, geoip_db=False, secret_key=SERVER_SECRET)
        try:
            assert wait_for(lambda: len(reader.sessions.active()) == 1, 10), server.output()
        finally:
            reader.shutdown(timeout=2)
        server.stop()
    return cookie


def revoke_with_the_cli(storage: str) -> str:
    """``leza sessions --active`` then ``leza revoke ID``: the session revoked."""
    import json

    [line] = cli(storage, "sessions", "--active", "--format", "jsonl").splitlines()
    session_id: str = json.loads(line)["_id"]
    assert f"revoked session {session_id}" in cli(storage, "revoke", session_id)
    return session_id


def stored_reason(storage: str, request_id: str) -> str | None:
    """The reason stored with a request's access event (waiting for the server's
    periodic flush to write it)."""
    reader = Leza(storage=storage, geoip_db=False, secret_key=SERVER_SECRET)
    found: list[dict[str, Any]] = []

    def stored() -> bool:
        found[:] = [e for e in reader.query.access(limit=1000) if e["request_id"] == request_id]
        return bool(found)

    try:
        return found[0]["reason"] if wait_for(stored, 10) else None
    finally:
        reader.shutdown(timeout=2)


def leza_lines(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "storage_url"),
    [
        *((kind, db) for kind in ("uvicorn", "gunicorn-flask", "gunicorn-django")
          for db in ("sqlite", "postgres")),
        ("uvicorn-no-lifespan", "sqlite"),  # no lifespan: the first request loads
    ],
    indirect=["storage_url"],
)  # fmt: skip
def test_a_restarted_server_refuses_a_revoked_cookie_on_its_very_first_request(
    tmp_path: Path, storage_url: str, kind: str
) -> None:
    """The probe of issue 13: sign in, copy the cookie, revoke, restart, replay."""
    cookie = sign_in_and_stop(tmp_path, kind, storage_url)
    revoke_with_the_cli(storage_url)
    with serving(tmp_path, kind, storage_url, "restarted") as server:
        first = server.get("/", cookie)  # the very first request the new process serves
        assert first.status_code == 401, server.output()
        assert first.headers["x-leza-pid"]  # answered by the app's revoked_response hook
        stats = server.get("/stats").json()
        assert (stats["state"], stats["loads"], stats["refused_unknown"]) == ("loaded", 1, 0)
        assert server.get("/").status_code == 200  # no cookie: served
        assert stored_reason(storage_url, first.headers["x-request-id"]) == REVOKED_REASON
        server.stop()
        output = server.output()
    assert not leza_lines(output, "leza:"), output


def _send_until_every_worker_answered(server: Server, cookie: str, workers: int) -> list[Any]:
    """Replays of ``cookie`` over fresh connections, 8 at a time, until ``workers``
    distinct pids have refused one; every response."""
    from concurrent.futures import ThreadPoolExecutor

    responses: list[Any] = []
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(8) as pool:
        while len({r.headers.get("x-leza-pid") for r in responses}) < workers:
            assert time.monotonic() < deadline, f"not every worker answered:\n{server.output()}"
            responses += pool.map(lambda _: server.get("/", cookie), range(16))
    return responses


@pytest.mark.slow
@pytest.mark.both_databases
@pytest.mark.parametrize("kind", ["gunicorn-flask", "gunicorn-starlette"])
def test_every_preloaded_worker_refuses_the_revoked_cookie_on_its_first_request(
    tmp_path: Path, storage_url: str, kind: str
) -> None:
    """gunicorn --preload, 4 workers forked from a master that has loaded the
    blocklist itself (the app decided a session when it was built)."""
    import re

    workers = 4
    cookie = sign_in_and_stop(tmp_path, "gunicorn-flask" if kind == "gunicorn-flask" else "uvicorn",
                              storage_url)  # fmt: skip
    async_workers = kind == "gunicorn-starlette"
    if async_workers:
        # Their lifespan startup loads the blocklist at boot: revoked before they start.
        revoke_with_the_cli(storage_url)
    env = {"REVOCATION_TEST_WARM_MASTER": "1"}
    with serving(tmp_path, kind, storage_url, "preload", workers=workers, preload=True, env=env,
                 log_level="info") as server:  # fmt: skip
        booted = lambda: len(re.findall(r"Booting worker with pid", server.output()))  # noqa: E731
        assert wait_for(lambda: booted() == workers, 60), server.output()
        if not async_workers:
            # Revoked after the master loaded its blocklist and forked: a worker
            # trusting what it inherited would serve the cookie.
            revoke_with_the_cli(storage_url)
        responses = _send_until_every_worker_answered(server, cookie, workers)
        server.stop()
        output = server.output()
    assert {r.status_code for r in responses} == {401}, output
    pids = {int(r.headers["x-leza-pid"]) for r in responses}
    assert len(pids) == workers
    assert server.proc.pid not in pids  # the master serves nothing
    assert not leza_lines(output, "leza:"), output


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["refuse", "allow"])
def test_a_server_started_while_storage_is_down(tmp_path: Path, policy: str) -> None:
    """PostgreSQL on a closed port: requests carrying a session cookie are refused
    (or served, with revocation_unknown=allow), counted, and logged once."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = f"postgresql+psycopg://leza@127.0.0.1:{port}/leza"
    env = {"LEZA_REVOCATION_UNKNOWN": policy}
    with serving(tmp_path, "uvicorn", storage, "down", env=env) as server:
        statuses = [server.get("/", f"browser-{i}-session-key-0123").status_code for i in range(5)]
        assert server.get("/").status_code == 200  # no session cookie: never affected
        stats = server.get("/stats").json()
        server.stop()
        output = server.output()
    if policy == "refuse":
        assert statuses == [401] * 5
        assert (stats["refused_unknown"], stats["allowed_unknown"]) == (5, 0)
    else:
        assert statuses == [200] * 5
        assert (stats["refused_unknown"], stats["allowed_unknown"]) == (0, 5)
    assert stats["state"] in ("unknown", "loading")
    assert stats["load_failures"] >= 1
    [warning] = leza_lines(output, "revoked sessions could not be loaded")
    assert f"revocation_unknown='{policy}'" in warning


@pytest.mark.slow
def test_a_server_recovers_without_a_restart_when_storage_comes_back(
    tmp_path: Path, postgres_url: str
) -> None:
    """The database does not exist yet when the server starts; once it is
    created, cookie-bearing requests are served again, without a restart."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"leza_rev_{uuid.uuid4().hex[:10]}"
    storage = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    admin = pg_dsn(postgres_url)
    cookie = "a-browser-session-key-0123456789"
    env = {"LEZA_SESSION_POLL_INTERVAL": "0.3"}
    try:
        with serving(tmp_path, "gunicorn-flask", storage, "comes-back", env=env) as server:
            assert server.get("/", cookie).status_code == 401
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            assert wait_for(lambda: server.get("/", cookie).status_code == 200, 30), server.output()
            stats = server.get("/stats").json()
            server.stop()
            output = server.output()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert stats["state"] == "loaded"
    assert stats["refused_unknown"] >= 1
    assert len(leza_lines(output, "revoked sessions could not be loaded")) == 1
    assert len(leza_lines(output, "revoked sessions loaded from storage again")) == 1
