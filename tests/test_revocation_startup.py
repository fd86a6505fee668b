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


@pytest.fixture
def app_for(make_leza: Any) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def build(kind: str, **settings: Any) -> App:
        settings.setdefault("performer", performer_for(kind))
        settings.setdefault("secret_key", SECRET)
        settings.setdefault("geoip_db", False)
        app = App(kind, make_leza(**settings))
        made.append(app)
        return app

    yield build
    for app in made:
        app.close()


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
    writer.query._ensure_ready()
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
