"""Signed-in users are not refused because a worker's blocklist load started early.

The report: under gunicorn (4 uvicorn workers, tests/test_scaling_acceptance.py),
now and then users got ``401 {"detail": "Session revoked: sign in again"}`` on
the request right after signing in. Their sessions were new and valid; the
stored reason of those refusals was ``session state unknown: revocations could
not be loaded`` (each worker logged "so far N request(s) were refused … while
they were unknown").

The cause: a worker starts loading its blocklist at ASGI lifespan startup
(``prefetch``), before any request. The wait a request may spend on that load
(``revocation_load_timeout``) was counted from the prefetch's start, so when a
cold start (imports, the storage's first connection and schema check, on a
busy machine) took longer than the timeout, the worker's first signed-in
requests found the load "overdue" and were refused at once, without waiting
at all. Now a request waits up to the timeout from when *it* starts waiting.

The load is held up for real here: a PostgreSQL connection holds an exclusive
lock on the session table, so the read of ended sessions blocks until the
test releases it.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import postgres_schema, wait_for
from starlette.testclient import TestClient
from test_revocation_startup import (
    App,
    access_events,
    clears_cookie,
    on_postgres,
    session_table_locked,
    set_cookie_headers,
)

from leza_middleware import Leza
from leza_middleware.sessions import UNKNOWN_REASON

HERE = Path(__file__).resolve().parent
SECRET = "relogin-tests-secret-0123456789"

# ----------------------------------------------------------------------------- in-process


def sign_in(app: App) -> str:
    """Sign alice in; her session cookie's value (a valid session, stored)."""
    response = app.get("/login")
    assert response.status_code == 200
    header = next(h for h in set_cookie_headers(response) if h.startswith("leza_sid="))
    assert app.leza.flush(30)  # its first write sets the schema up: slow on a busy machine
    return header.partition("=")[2].split(";", 1)[0]


@on_postgres
def test_a_prefetch_that_ran_past_the_timeout_is_still_waited_for(
    app_for: Callable[..., App], storage_url: str
) -> None:
    """The first signed-in request after a slow start-up load waits for it (up to
    the timeout from its own arrival) and is served, not refused as unknown."""
    cookie = sign_in(app_for("asgi"))
    app = app_for("asgi", revocation_load_timeout=2.0)
    with session_table_locked(storage_url) as release, TestClient(app.asgi):
        # Lifespan startup began the load; the lock holds it up.
        assert app.leza.stats()["revocations"]["loads"] == 1
        time.sleep(2.3)  # longer than the timeout, and no request waited meanwhile
        assert app.leza.stats()["revocations"]["state"] == "unknown"  # overdue
        threading.Timer(0.4, release).start()
        t0 = time.monotonic()
        response = app.get("/", cookie)
        took = time.monotonic() - t0
    assert response.status_code == 200, response.text
    assert 0.3 <= took < 2.5, took  # it waited for the load, not more than the timeout
    revocations = app.leza.stats()["revocations"]
    assert revocations["state"] == "loaded"
    assert revocations["loads"] == 1
    assert revocations["refused_unknown"] == 0


@on_postgres
def test_a_prefetch_that_hangs_is_waited_for_once_at_most_the_timeout(
    app_for: Callable[..., App], storage_url: str
) -> None:
    """Storage that never answers: the first request waits the timeout, then it
    and the next ones are refused as unknown (cookie kept), decided at once;
    served again once storage answers."""
    cookie = sign_in(app_for("asgi"))
    app = app_for("asgi", revocation_load_timeout=1.5)
    with session_table_locked(storage_url) as release, TestClient(app.asgi):
        time.sleep(1.8)  # the prefetch is past its own start + timeout
        t0 = time.monotonic()
        first = app.get("/", cookie)
        waited = time.monotonic() - t0
        t0 = time.monotonic()
        second = app.get("/", cookie)
        again = time.monotonic() - t0
        assert app.get("/").status_code == 200  # no cookie: never waits, never refused
        release()
        assert wait_for(lambda: app.get("/", cookie).status_code == 200, 10)
    assert (first.status_code, second.status_code) == (401, 401)
    assert 1.4 <= waited < 3.0, waited
    assert again < 1.0, again  # no second wait on the same load
    assert not clears_cookie(first)  # the session is probably valid: kept
    revocations = app.leza.stats()["revocations"]
    assert revocations["refused_unknown"] >= 2
    assert revocations["loads"] == 1  # the prefetch; no load per request
    denied = [e for e in access_events(app.leza) if e["action"] == "denied"]
    assert {e["reason"] for e in denied} == {UNKNOWN_REASON}


# ----------------------------------------------------------------------------- real workers


class Gunicorn:
    """tests/scaling_app.py under gunicorn, 4 uvicorn workers, all kinds on PostgreSQL."""

    def __init__(self, tmp_path: Path, pg_url: str, **env: str) -> None:
        import socket

        from gunicorn_cmd import gunicorn_command

        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port: int = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        environ = dict(os.environ)
        environ.update(
            LEZA_STORAGE=pg_url,
            LEZA_SECRET_KEY=SECRET,
            LEZA_SPILL_DIR=str(tmp_path / "spill"),
            LEZA_FLUSH_INTERVAL="0.2",
            LEZA_GEOIP_DB="off",
            SCALE_CHECK_PORT=str(sa.make_url(pg_url).port),
            PYTHONPATH=os.pathsep.join([str(HERE), environ.get("PYTHONPATH", "")]),
            **env,
        )
        cmd = gunicorn_command(
            "scaling_app:app", fd, workers=4, worker_class="uvicorn_worker.UvicornWorker"
        )
        self.log = tmp_path / "gunicorn.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=environ, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(fd,), start_new_session=True,
            )  # fmt: skip

    def request(
        self, method: str, path: str, user: str, cookie: str = "", timeout: float = 30
    ) -> tuple[int, str, str]:
        """(status, body, the leza_sid cookie to keep) on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"X-User": user, "Connection": "close", "X-Request-ID": uuid.uuid4().hex}
        if cookie:
            headers["Cookie"] = cookie
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
        finally:
            conn.close()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("leza_sid="):
                cookie = value.split(";", 1)[0]
        return response.status, body, cookie

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the workers too, not only the master
                self.proc.wait(10)
        self.listener.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url) as url:
        leza = Leza(storage=url, secret_key=SECRET, geoip_db=False)
        leza.sessions.active()  # the schema set up before the session table is locked
        leza.shutdown(5)
        yield url


@pytest.mark.slow
def test_users_signing_out_and_in_again_are_served_while_workers_load_slowly(
    pg_url: str, tmp_path: Path
) -> None:
    """4 real workers whose start-up loads are held up past the load timeout:
    8 people sign in, browse, sign out and sign in again at once; every
    request is served, none refused."""
    pytest.importorskip("uvicorn_worker", reason="uvicorn-worker is in the test extra")
    timeout = 3.0
    with session_table_locked(pg_url) as release:
        server = Gunicorn(tmp_path, pg_url, LEZA_REVOCATION_LOAD_TIMEOUT=str(timeout))
        try:
            seen: set[str] = set()
            deadline = time.monotonic() + 120
            while len(seen) < 4:  # every worker serves: its lifespan prefetch has begun
                assert server.proc.poll() is None, server.output()
                assert time.monotonic() < deadline, (seen, server.output()[-3000:])
                # (waits in the listen backlog until a worker has booted: slow when busy)
                status, body, _ = server.request("GET", "/items/probe", "", timeout=120)
                assert status == 200, body
                seen.add(body)
            time.sleep(timeout + 0.5)  # every prefetch is past its own start + timeout
            threading.Timer(1.0, release).start()

            errors: list[str] = []

            def person(user: str) -> None:
                for _ in range(2):  # sign in, browse, sign out; then again at once
                    status, body, cookie = server.request("POST", "/login", user)
                    assert status == 200, body
                    assert cookie.startswith("leza_sid="), cookie
                    for i in range(3):
                        status, body, _ = server.request("GET", f"/items/{i}", user, cookie)
                        if status != 200:
                            errors.append(f"{user} GET /items/{i}: {status} {body}")
                    status, body, _ = server.request("POST", "/logout", user, cookie)
                    if status != 200:
                        errors.append(f"{user} POST /logout: {status} {body}")

            threads = [threading.Thread(target=person, args=(f"user-{n}",)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            assert not errors, errors[:5]
        finally:
            release()
            server.close()
    reader = Leza(storage=pg_url, secret_key=SECRET, geoip_db=False)
    try:
        # 8 people x 2 rounds x (login + 3 pages + logout), besides the probes.
        def stored() -> int:
            return len(reader.query.access(limit=10_000, action=None))

        assert wait_for(lambda: stored() >= 4 + 8 * 2 * 5, 60), stored()
        assert reader.query.access(action="denied", limit=100) == []
        assert len(reader.sessions.find(limit=100)) == 16
        assert reader.sessions.active() == []  # every session signed out
    finally:
        reader.shutdown(5)
    assert "could not be loaded" not in server.output(), server.output()[-3000:]
