"""``leza dashboard``: the admin view served standalone by uvicorn.

The server runs as a real subprocess (``python -m leza_middleware dashboard``)
on a port it picks, against a SQLite file; pages are fetched over HTTP. Who
may get in (loopback clients, a loopback Host, the token) is also checked
in-process through Starlette's TestClient, which can pretend to be a remote
client.
"""

from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from test_cli import Lines
from test_storage import ALICE, ev

from leza_middleware import Leza
from leza_middleware.cli import main
from leza_middleware.cli.dashboard import TOKEN_COOKIE, Gate, is_loopback_host
from leza_middleware.dashboard import make_asgi_app
from leza_middleware.events import SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.storage import QueryFilter, SQLStorage

SECRET = "dashboard-cli-secret-0123456789"
TOKEN = "tok-" + "x" * 28
MINUTE = 60_000_000


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'leza.db'}"


@pytest.fixture
def recorded(url: str) -> list[str]:
    """Access events of the last hour with distinct endpoints and reasons, and two
    sessions started now (the dashboard's default FROM/TO is the last 30 days)."""
    now = time.time_ns() // 1000
    storage = SQLStorage(url)
    events = [
        ev(n, ts=now - n * MINUTE, performer=ALICE, reason=f"Reason number {n} <b>bold</b>",
           endpoint=f"/orders/{n}/lines", action="denied" if n == 3 else "access")
        for n in range(1, 6)
    ]  # fmt: skip
    storage.write(events)
    storage.write([
        SessionEvent(id=new_event_id(now), ts=now, action="session_start",
                     session_id=f"sess{n:08d}", performer=ALICE, ip="161.35.214.167")
        for n in (1, 2)
    ])  # fmt: skip
    storage.close()
    return [e.id for e in events]


class Server:
    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc
        self.lines = Lines(proc)
        first = self.lines.next()
        m = re.fullmatch(r"Leza dashboard of SQLStorage\(sqlite:///.*\) at (http://\S+)/", first)
        assert m, first
        self.base = m.group(1)
        self.banner = [first]
        while True:
            line = self.lines.next()
            self.banner.append(line)
            if line == "  Ctrl-C to stop":
                break

    def client(self, **kwargs: Any) -> httpx.Client:
        # trust_env=False: no proxy from the environment for a loopback address.
        return httpx.Client(base_url=self.base, trust_env=False, timeout=20, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err.decode()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[Any]] = []

    def start(url: str, *args: str, secret: str | None = SECRET) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEZA_")}
        env["PYTHONUNBUFFERED"] = "1"
        if secret is not None:
            env["LEZA_SECRET_KEY"] = secret
        proc = subprocess.Popen(
            [sys.executable, "-m", "leza_middleware", "dashboard", "--storage", url,
             "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip
        started.append(proc)
        return Server(proc)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_serves_the_access_tab_with_the_stored_rows_then_stops_cleanly(
    recorded: list[str], url: str, serve: Any
) -> None:
    server = serve(url)
    assert server.base.startswith("http://127.0.0.1:")
    with server.client() as client:
        page = client.get("/access")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        text = html.unescape(page.text)
        for n in range(1, 6):
            assert f"/orders/{n}/lines" in text
            assert f"Reason number {n} <b>bold</b>" in text
        assert "<b>bold</b>" not in page.text  # escaped in the HTML itself
        assert "Alice" in text
        denied = client.get("/api/access", params={"action": "denied"}).json()["items"]
        assert [(e["_id"], e["endpoint"]) for e in denied] == [(recorded[2], "/orders/3/lines")]
        assert client.get("/", follow_redirects=False).headers["location"] == "/state"
    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert err == "leza dashboard: stopped\n"
    # The dashboard's own views were recorded (and flushed on the way out).
    storage = SQLStorage(url)
    try:
        views = storage.query("access", QueryFilter(limit=100)).events
    finally:
        storage.close()
    endpoints = {e.endpoint for e in views}
    assert {"/access", "/api/access?action=denied", "/"} <= endpoints


@pytest.mark.slow
def test_revokes_a_session_with_the_secret_key_and_the_chain_verifies(
    recorded: list[str], url: str, serve: Any, make_leza: Any
) -> None:
    server = serve(url)
    with server.client() as client:
        page = client.get("/sessions")
        assert page.status_code == 200
        assert "sess00000001" in page.text
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert token, page.text
        form = {"csrf_token": token.group(1), "session_id": "sess00000001", "confirm": "1"}
        done = client.post("/sessions/revoke", data=form, follow_redirects=False)
        assert done.status_code == 303, done.text
    code, err = server.stop(signal.SIGINT)
    assert code == 0, err
    leza: Leza = make_leza(storage=url, secret_key=SECRET)
    assert [s["_id"] for s in leza.sessions.active()] == ["sess00000002"]
    assert [(a["action"], a["entity_id"]) for a in leza.query.audit()] == [
        ("revoke", "sess00000001")
    ]
    assert leza.audit.verify()


@pytest.mark.slow
def test_without_the_secret_key_it_is_read_only(recorded: list[str], url: str, serve: Any) -> None:
    server = serve(url, secret=None)
    with server.client() as client:
        assert client.get("/sessions").status_code == 200
        refused = client.post("/sessions/revoke", data={"session_id": "sess00000001"})
        assert refused.status_code == 403
        assert "started without LEZA_SECRET_KEY" in refused.text
    code, err = server.stop()
    assert code == 0
    assert err.startswith("leza dashboard: no LEZA_SECRET_KEY: read-only")
    storage = SQLStorage(url)
    try:
        active = storage.query("session", QueryFilter(limit=10, active=True)).events
    finally:
        storage.close()
    assert len(active) == 2


@pytest.mark.slow
def test_remote_mode_requires_the_token(recorded: list[str], url: str, serve: Any) -> None:
    server = serve(url, "--host", "0.0.0.0", "--allow-remote", "--token", TOKEN)
    base = server.base.replace("0.0.0.0", "127.0.0.1")
    assert "the token is required" in server.banner[1]
    assert TOKEN not in "\n".join(server.banner)
    with httpx.Client(base_url=base, trust_env=False, timeout=20) as client:
        assert client.get("/access").status_code == 403
        assert client.get("/access", params={"token": "wrong" * 8}).status_code == 403
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/access", headers=bearer).status_code == 200
        assert client.get("/api/access", headers={"Authorization": "Bearer nope"}).status_code \
            == 403  # fmt: skip
        hop = client.get("/access", params={"token": TOKEN, "action": "denied"})
        assert hop.status_code == 303
        assert hop.headers["location"] == "/access?action=denied"
        assert TOKEN not in hop.headers["set-cookie"]
        assert "HttpOnly" in hop.headers["set-cookie"]
        page = client.get("/access?action=denied")  # the cookie now
        assert page.status_code == 200
        assert "/orders/3/lines" in page.text
        assert "/orders/4/lines" not in page.text
    assert server.stop()[0] == 0


# --------------------------------------------------------------------------- refusals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0, which other machines can reach"),
        (["--host", "0.0.0.0", "--allow-remote"], "refusing to listen on 0.0.0.0"),
        (["--host", "db.example.org", "--token", TOKEN], "refusing to listen on db.example.org"),
        (["--allow-remote"], "--allow-remote needs a --token (or $LEZA_DASHBOARD_TOKEN)"),
        (["--token", "short"], "the token is too short (5 characters, at least 16)"),
        (["--storage", "sqlite:///MISSING"], "no database at "),
    ],
)
def test_refuses_unsafe_or_broken_setups_with_one_line(
    argv: list[str], message: str, recorded: list[str], url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    argv = [a.replace("MISSING", str(tmp_path / "nope.db")) for a in argv]
    code = main(["dashboard", "--storage", url, *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(f"leza dashboard: {message}"), err
    assert err.count("\n") == 1


def test_the_token_may_come_from_the_environment(
    recorded: list[str], url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("LEZA_DASHBOARD_TOKEN", "short")
    assert main(["dashboard", "--storage", url, "--host", "0.0.0.0", "--allow-remote"]) == 2
    assert "the token is too short" in capsys.readouterr().err


def test_a_busy_port_is_a_one_line_error(
    recorded: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["dashboard", "--storage", url, "--port", str(port)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"leza dashboard: cannot listen on 127.0.0.1:{port}: "), err
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- the gate


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST",
                 "app.localhost", "::ffff:127.0.0.1"):  # fmt: skip
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "example.org", "", "127.0.0.1.nip.io"):
        assert not is_loopback_host(host), host


@pytest.fixture
def gated(make_leza: Any) -> Iterator[Any]:
    leza: Leza = make_leza(storage="memory://", secret_key=SECRET)
    leza.storage.write([ev(1, ts=time.time_ns() // 1000, endpoint="/visible/row")])

    def client(gate: Gate, peer: str, host: str = "127.0.0.1:8765") -> TestClient:
        app = gate.wrap(make_asgi_app(leza, authorize=gate.authorize))
        c = TestClient(app, base_url=f"http://{host}", client=(peer, 40000))
        clients.append(c)
        return c

    clients: list[TestClient] = []
    yield client
    for c in clients:
        c.close()


def test_local_mode_admits_loopback_clients_with_a_loopback_host_only(gated: Any) -> None:
    gate = Gate(allow_remote=False, token=None, can_revoke=True)
    ok = gated(gate, "127.0.0.1").get("/access")
    assert ok.status_code == 200
    assert "/visible/row" in ok.text
    assert gated(gate, "::1", host="localhost:8765").get("/access").status_code == 200
    # Another machine (a proxy on this host names it: uvicorn's proxy_headers).
    remote = gated(gate, "203.0.113.7").get("/access")
    assert remote.status_code == 403
    assert "/visible/row" not in remote.text
    # A web page on another site whose name was re-pointed at 127.0.0.1.
    assert gated(gate, "127.0.0.1", host="evil.example:8765").get("/access").status_code == 403


def test_token_mode_cookie_and_bearer(gated: Any) -> None:
    gate = Gate(allow_remote=True, token=TOKEN, can_revoke=True)
    client = gated(gate, "198.51.100.4", host="dash.example.org")
    assert client.get("/api/access").status_code == 403
    hop = client.get("/access", params={"token": TOKEN, "from": "2026-01-01"})
    assert hop.history[0].status_code == 303
    assert hop.history[0].headers["location"] == "/access?from=2026-01-01"
    assert client.cookies.get(TOKEN_COOKIE)
    # A path that reads as another site is redirected on this one.
    scope = {"type": "http", "method": "GET", "path": "//evil.example/x",
             "query_string": f"token={TOKEN}".encode()}  # fmt: skip
    status, headers, _ = gate._intercept(scope) or (0, [], b"")
    assert (status, dict(headers)["location"]) == (303, "/evil.example/x")
    assert client.get("/api/access").status_code == 200
    client.cookies.clear()
    assert client.get("/api/access").status_code == 403
    client.cookies.set(TOKEN_COOKIE, "0" * 64)
    assert client.get("/api/access").status_code == 403
    auth = {"authorization": f"bearer {TOKEN}"}
    assert client.get("/api/access", headers=auth).status_code == 200
