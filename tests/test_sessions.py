"""Sessions, machine identity and revocation on a real FastAPI app (ASGI).

The app signs users in its own way (a ``user`` cookie read by Starlette's
AuthenticationMiddleware); the middleware sees the performer, starts a session
per browser, ends it at logout, and refuses revoked sessions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from fastapi import FastAPI, Request, Response, WebSocket
from mmdb_factory import FRANKFURT_IP, LONDON_IP
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from leza_middleware import Leza, LezaMiddleware, Performer

# The same behaviour on both SQL backends (tests/conftest.py: storage_url).
pytestmark = pytest.mark.both_databases

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
# What a browser asks for when it opens a page (API clients ask for JSON or */*).
PAGE = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# DESIGN.md's session record, plus what a session list needs besides.
SEED_KEYS = {
    "_id", "browser", "os", "device", "bot", "ip", "geoLocationInfoOfIp",
    "machine_identifier", "performer", "session_start",
}  # fmt: skip
EXTRA_KEYS = {"last_seen", "ended_at", "end_reason", "active", "app", "user_agent"}


class CookieUser(AuthenticationBackend):
    """The app's own sign-in: a ``user`` cookie (stands in for any real scheme)."""

    async def authenticate(self, conn: Any) -> Any:
        name = conn.cookies.get("user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def make_app(leza: Leza) -> FastAPI:
    app = FastAPI()

    @app.post("/login/{name}")
    async def login(name: str, response: Response) -> dict[str, str]:
        response.set_cookie("user", name)
        leza.sessions.login(Performer(id=name, name=name.title()))
        return {"hello": name}

    @app.post("/bad-login")
    async def bad_login() -> Response:
        leza.sessions.login_failed("Wrong password", username="mallory")
        return Response(status_code=401)

    @app.get("/logout")
    async def logout(response: Response) -> dict[str, str]:
        response.delete_cookie("user")
        return {"bye": "now"}

    @app.post("/signout-others")
    async def signout_others(request: Request) -> dict[str, int]:
        return {"revoked": leza.sessions.revoke_all(request.user.identity, except_current=True)}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("live")
        await websocket.close()

    app.add_middleware(AuthenticationMiddleware, backend=CookieUser())
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


@pytest.fixture
def leza(make_leza: Any) -> Leza:
    return make_leza(trusted_proxies=["127.0.0.1"], logout_routes=["GET /logout"])  # type: ignore[no-any-return]


@pytest.fixture
def browser(leza: Leza) -> Iterator[Callable[..., TestClient]]:
    """A new browser (its own cookie jar) on the app, from a given IP and UA."""
    app = make_app(leza)
    clients: list[TestClient] = []

    def open_browser(ip: str = FRANKFURT_IP, ua: str = CHROME, **kwargs: Any) -> TestClient:
        client = TestClient(app, client=("127.0.0.1", 50000), **kwargs)
        client.headers.update({"user-agent": ua, "x-forwarded-for": ip, "accept": PAGE})
        clients.append(client)
        return client

    yield open_browser
    for client in clients:
        client.close()


def access_events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access(limit=1000)))  # oldest first


def set_cookies(response: httpx.Response) -> dict[str, str]:
    out = {}
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        out[name] = rest
    return out


# --------------------------------------------------------------------------- machine id


def test_machine_cookie_issued_on_first_visit_then_reused(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    client = browser()
    first = client.get("/items/1")
    cookie = set_cookies(first)["leza_mid"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Max-Age=63072000" in cookie
    assert "Secure" not in cookie  # plain http
    second = client.get("/items/2")
    assert "leza_mid" not in set_cookies(second)
    events = access_events(leza)
    assert events[0]["machine_identifier"]
    assert events[0]["machine_identifier"] == events[1]["machine_identifier"]
    assert events[0]["machine_identifier"] not in cookie.split(";")[0].split(".")[1]


def test_api_clients_get_no_machine_cookie(leza: Leza, browser: Callable[..., TestClient]) -> None:
    # No cookies kept, no page asked for: a new machine id per call would be noise.
    api = browser()
    api.headers["accept"] = "application/json"
    assert "leza_mid" not in set_cookies(api.get("/items/1"))
    assert access_events(leza)[0]["machine_identifier"] is None


def test_forged_machine_cookie_is_ignored_replaced_and_counted(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    client = browser()
    client.get("/items/1")
    genuine = client.cookies["leza_mid"]
    ident, _, sig = genuine.partition(".")
    forged = f"{ident[:-1]}{'A' if ident[-1] != 'A' else 'B'}.{sig}"
    client.cookies.clear()
    client.cookies.set("leza_mid", forged)
    response = client.get("/items/2")
    assert "leza_mid" in set_cookies(response)  # replaced
    events = access_events(leza)
    assert events[1]["machine_identifier"] not in (None, forged.partition(".")[0])
    assert leza.cookies.rejected == 1


def test_machine_cookie_secure_over_https_and_can_be_disabled(
    make_leza: Any, tmp_path: Path
) -> None:
    with TestClient(make_app(make_leza()), base_url="https://testserver") as client:
        assert "Secure" in set_cookies(client.get("/items/1", headers={"accept": PAGE}))["leza_mid"]
    off = make_leza(machine_cookie=False, storage=f"sqlite:///{tmp_path / 'off.db'}")
    with TestClient(make_app(off)) as client:
        assert "leza_mid" not in set_cookies(client.get("/items/1", headers={"accept": PAGE}))
    assert access_events(off)[0]["machine_identifier"] is None


# --------------------------------------------------------------------------- sessions


def test_login_requests_logout_cycle(leza: Leza, browser: Callable[..., TestClient]) -> None:
    client = browser(ip=FRANKFURT_IP, ua=CHROME)
    client.get("/items/0")  # anonymous: no session
    assert client.post("/login/alice").status_code == 200
    client.get("/items/1")
    client.get("/items/2")
    assert client.get("/logout").status_code == 200
    events = access_events(leza)
    assert [e["action"] for e in events] == ["access", "login", "access", "access", "logout"]
    login, *_, logout = events[1:]
    assert login["reason"] == "User logged in"
    assert login["performer"]["id"] == "alice"
    assert logout["reason"] == "User has the permission to logout"
    assert events[0]["session_id_hash"] is None
    assert len({e["session_id_hash"] for e in events[1:]}) == 1
    leza.flush(5)
    [session] = leza.sessions.find(performer_id="alice")
    assert session["_id"] == login["session_id_hash"]
    assert session["active"] is False
    assert session["end_reason"] == "logout"
    assert session["browser"]["name"] == "Chrome"
    assert session["os"]["name"] == "Windows"
    assert session["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert session["ip"] == FRANKFURT_IP
    assert session["machine_identifier"] == login["machine_identifier"]
    assert leza.sessions.active(performer_id="alice") == []
    # the session cookie was cleared at logout; a new login is a new session
    client.post("/login/alice")
    leza.flush(5)
    assert len(leza.sessions.find(performer_id="alice")) == 2


def test_active_session_json_matches_the_seed_record(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    client = browser()
    client.post("/login/alice")
    client.get("/items/1")
    leza.flush(5)
    [session] = leza.sessions.active()
    assert set(session) == SEED_KEYS | EXTRA_KEYS
    assert set(session["browser"]) == {"type", "name", "version", "engine", "engineVersion"}
    assert set(session["os"]) == {"name", "version", "platform"}
    assert {"type", "brand", "model"} <= set(session["device"])
    assert {
        "ip", "country_code", "country_name", "region_code", "region_name", "city",
        "zip_code", "time_zone", "latitude", "longitude", "metro_code",
    } <= set(session["geoLocationInfoOfIp"])  # fmt: skip
    assert {
        "id", "name", "email", "picture_url", "organization_id", "organization_name",
        "role_name", "clientid", "organization_unit_id", "organization_unit_name",
        "organization_unit_labels", "organizations",
    } == set(session["performer"])  # fmt: skip
    # "2025-07-06T15:49:24.062Z": milliseconds and Z, as in the seed
    assert len(session["session_start"]) == 24
    assert session["session_start"].endswith("Z")
    assert session["bot"] is None


def test_two_browsers_of_one_user_are_two_sessions(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    laptop = browser(ip=FRANKFURT_IP, ua=CHROME)
    phone = browser(ip=LONDON_IP, ua=FIREFOX)
    laptop.post("/login/alice")
    phone.post("/login/alice")
    laptop.get("/items/1")
    phone.get("/items/2")
    leza.flush(5)
    sessions = leza.sessions.active(performer_id="alice")
    assert len(sessions) == 2
    assert len({s["machine_identifier"] for s in sessions}) == 2
    assert {s["geoLocationInfoOfIp"]["city"] for s in sessions} == {
        "Frankfurt am Main",
        "London",
    }
    assert {s["browser"]["name"] for s in sessions} == {"Chrome", "Firefox"}


def test_revoked_session_gets_401_and_is_recorded_as_denied(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    client = browser()
    client.post("/login/alice")
    leza.flush(5)
    [session] = leza.sessions.active()
    assert leza.sessions.revoke(session["_id"]) is True
    assert leza.sessions.revoke(session["_id"]) is False  # already ended
    refused = client.get("/items/1")
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Session revoked: sign in again"}
    assert "leza_sid=;" in refused.headers["set-cookie"] or any(
        c.startswith("leza_sid=;") for c in refused.headers.get_list("set-cookie")
    )
    denied = access_events(leza)[-1]
    assert denied["action"] == "denied"
    assert denied["reason"] == "session revoked"
    assert denied["status"] == 401
    assert denied["session_id_hash"] == session["_id"]
    assert leza.sessions.get(session["_id"])["end_reason"] == "revoked"  # type: ignore[index]


def test_revoke_all_but_the_current_session(leza: Leza, browser: Callable[..., TestClient]) -> None:
    here, there, elsewhere = browser(), browser(ua=FIREFOX), browser(ip=LONDON_IP)
    for client in (here, there, elsewhere):
        client.post("/login/alice")
        client.get("/items/1")
    leza.flush(5)
    assert len(leza.sessions.active(performer_id="alice")) == 3
    assert here.post("/signout-others").json() == {"revoked": 2}
    assert here.get("/items/2").status_code == 200
    assert there.get("/items/2").status_code == 401
    assert elsewhere.get("/items/2").status_code == 401
    leza.flush(5)
    assert len(leza.sessions.active(performer_id="alice")) == 1


def test_failed_login_is_recorded(leza: Leza, browser: Callable[..., TestClient]) -> None:
    browser().post("/bad-login")
    [event] = access_events(leza)
    assert event["action"] == "login_failed"
    assert event["reason"] == "Wrong password for 'mallory'"
    assert event["status"] == 401
    assert event["outcome"] == "failure"


def test_custom_revoked_response(make_leza: Any) -> None:
    def goodbye(request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        return 401, [("content-type", "text/plain")], b"please sign in again"

    leza = make_leza(revoked_response=goodbye)
    with TestClient(make_app(leza)) as client:
        client.post("/login/bob")
        leza.flush(5)
        leza.sessions.revoke(leza.sessions.active()[0]["_id"])
        refused = client.get("/items/1")
    assert refused.status_code == 401
    assert refused.text == "please sign in again"


def test_long_user_agent_stored_up_to_its_cap(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    ua = CHROME + " " + "x" * (2000 - len(CHROME) - 1)
    assert len(ua) == 2000
    client = browser(ua=ua)
    client.post("/login/alice")
    event = access_events(leza)[0]
    assert event["user_agent"] == ua[:512]
    assert event["browser"]["name"] == "Chrome"
    [session] = leza.sessions.active()
    assert session["user_agent"] == ua[:512]


# --------------------------------------------------------------------------- timeouts


def test_idle_and_absolute_timeouts_with_a_controllable_clock(
    make_leza: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leza_middleware.sessions.registry as registry

    # The test polls itself (the recorder thread must not poll with the shifted clock).
    leza = make_leza(
        idle_timeout=60,
        absolute_timeout=3600,
        enforce_session_timeouts=True,
        session_poll_interval=3600,
    )
    with TestClient(make_app(leza)) as idle, TestClient(make_app(leza)) as busy:
        idle.post("/login/ida")
        busy.post("/login/bea")
        leza.flush(5)
        leza.sessions.poll(force=True)  # now: the recorder thread won't poll for an hour
        real_now = registry._now_us
        offset = [0]
        monkeypatch.setattr(registry, "_now_us", lambda: real_now() + offset[0])
        offset[0] = 61 * 1_000_000  # a minute later: ida idle, bea still fine…
        sessions = {s["performer"]["id"]: s["_id"] for s in leza.sessions.active()}
        leza.storage.write([])  # (no-op)
        # bea was seen a moment ago as far as storage knows: make her "seen" now
        from leza_middleware.events import SessionEvent
        from leza_middleware.ids import new_event_id

        now = real_now() + offset[0]
        leza.storage.write(
            [SessionEvent(id=new_event_id(now), ts=now, action="session_seen",
                          session_id=sessions["bea"], app="app")]
        )  # fmt: skip
        leza.sessions.poll(force=True)
        assert leza.sessions.get(sessions["ida"])["end_reason"] == "idle_timeout"  # type: ignore[index]
        assert leza.sessions.get(sessions["bea"])["active"] is True  # type: ignore[index]
        assert idle.get("/items/1").status_code == 401  # enforced
        offset[0] = 3601 * 1_000_000  # past the absolute timeout, however busy
        leza.sessions.poll(force=True)
        assert leza.sessions.get(sessions["bea"])["end_reason"] == "absolute_timeout"  # type: ignore[index]
        assert busy.get("/items/1").status_code == 401


def test_only_sessions_that_are_due_are_read_and_timed_out(
    make_leza: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many signed-in users: a poll reads the sessions that are due, not every
    # active one; what does not fit in one poll goes at the next.
    import leza_middleware.sessions.registry as registry
    from leza_middleware.events import SessionEvent
    from leza_middleware.ids import new_event_id

    leza = make_leza(idle_timeout=60, absolute_timeout=3600, session_poll_interval=3600)
    monkeypatch.setattr(registry, "_EXPIRE_PAGE", 4)
    now = registry._now_us()
    minute = 60 * 1_000_000

    def start(sid: str, at: int) -> SessionEvent:
        return SessionEvent(id=new_event_id(at), ts=at, action="session_start", session_id=sid)

    # 6 idle for 2 minutes, 2 started over an hour ago but busy, then 12 busy
    # ones started later (the newest first: what a page of "all active" holds).
    changes = [start(f"idle-{i}", now - 2 * minute - i) for i in range(6)]
    changes += [start(f"old-{i}", now - 70 * minute - i) for i in range(2)]
    changes += [
        SessionEvent(id=new_event_id(now), ts=now, action="session_seen", session_id=f"old-{i}")
        for i in range(2)
    ]
    changes += [start(f"busy-{i}", now - i) for i in range(12)]
    leza.storage.write(changes)
    leza.sessions.poll(force=True)
    first = {s["_id"] for s in leza.query.sessions(active=False, limit=100).items}
    assert first == {"old-0", "old-1", "idle-0", "idle-1", "idle-2", "idle-3"}  # 4 per kind
    leza.sessions.poll(force=True)
    ended = leza.query.sessions(active=False, limit=100).items
    assert {s["_id"] for s in ended} == first | {"idle-4", "idle-5"}
    reasons = {s["_id"]: s["end_reason"] for s in ended}
    assert reasons["old-0"] == "absolute_timeout"
    assert reasons["idle-5"] == "idle_timeout"
    assert {s["_id"] for s in leza.query.sessions(active=True, limit=100).items} == {
        f"busy-{i}" for i in range(12)
    }


def test_timeouts_not_enforced_by_default(make_leza: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import leza_middleware.sessions.registry as registry

    leza = make_leza(idle_timeout=60, session_poll_interval=3600)
    with TestClient(make_app(leza)) as client:
        client.post("/login/ida")
        leza.flush(5)
        leza.sessions.poll(force=True)  # now: the recorder thread won't poll for an hour
        [first] = leza.sessions.active()
        real_now = registry._now_us
        monkeypatch.setattr(registry, "_now_us", lambda: real_now() + 61_000_000)
        leza.sessions.poll(force=True)
        assert leza.sessions.active() == []
        assert client.get("/items/1").status_code == 200  # recorded as ended, not refused
        monkeypatch.setattr(registry, "_now_us", real_now)
        leza.flush(5)
        # the user kept working: a new session, not the ended one revived
        [second] = leza.sessions.active()
        assert second["_id"] != first["_id"]
        assert leza.sessions.get(first["_id"])["end_reason"] == "idle_timeout"  # type: ignore[index]


# --------------------------------------------------------------------------- other processes


def test_no_storage_query_per_request(leza: Leza, browser: Callable[..., TestClient]) -> None:
    from sqlalchemy import event

    client = browser()
    client.post("/login/alice")
    client.get("/items/0")
    leza.flush(5)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = leza.storage.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        began = time.monotonic()
        for i in range(200):
            assert client.get(f"/items/{i}").status_code == 200
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # Reads come only from the periodic poll (a couple of queries each), never
    # one per request: 200 requests, a handful of SELECTs at most. (The
    # recorder's once-a-minute rollup upkeep is not a session poll.)
    reads = [s for s in reads if "leza_traffic" not in s]
    polls = 2 + int((time.monotonic() - began) / leza.sessions.poll_interval)
    assert len(reads) <= 3 * polls < 200


SERVER = textwrap.dedent(
    """
    from fastapi import FastAPI, Response
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware.authentication import AuthenticationMiddleware
    from leza_middleware import Leza, LezaMiddleware, Performer

    class CookieUser(AuthenticationBackend):
        async def authenticate(self, conn):
            name = conn.cookies.get("user")
            return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

    leza = Leza()  # LEZA_* from the test
    app = FastAPI()

    @app.post("/login/{name}")
    async def login(name: str, response: Response):
        response.set_cookie("user", name)
        leza.sessions.login(Performer(id=name))
        return {}

    @app.get("/ping")
    async def ping():
        return {}

    app.add_middleware(AuthenticationMiddleware, backend=CookieUser())
    app.add_middleware(LezaMiddleware, leza=leza)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_revocation_reaches_another_process_within_the_bound(tmp_path: Path) -> None:
    (tmp_path / "sessapp.py").write_text(SERVER)
    db = tmp_path / "sessions.db"
    env = {
        **os.environ,
        "LEZA_STORAGE": f"sqlite:///{db}",
        "LEZA_GEOIP_DB": "off",
        "LEZA_SECRET_KEY": "shared-secret-of-the-deployment",
        "LEZA_FLUSH_INTERVAL": "0.2",
        "LEZA_SPILL_DIR": str(tmp_path / "spill"),
        "PYTHONPATH": str(tmp_path),
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "sessapp:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, cwd=tmp_path,
    )  # fmt: skip
    admin = Leza(storage=f"sqlite:///{db}", geoip_db=False, secret_key=env["LEZA_SECRET_KEY"],
                 spill_dir=str(tmp_path / "admin-spill"))  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(base), 20)
        with httpx.Client(base_url=base) as client:
            assert client.post("/login/alice").status_code == 200
            assert client.get("/ping").status_code == 200
            assert wait_for(lambda: bool(admin.sessions.active(performer_id="alice")), 10)
            [session] = admin.sessions.active(performer_id="alice")
            # this process revokes; the server process must refuse within the bound
            revoked_at = time.monotonic()
            assert admin.sessions.revoke(session["_id"])
            while client.get("/ping").status_code != 401:
                assert time.monotonic() - revoked_at < 5.0, "not refused within 5 s"
                time.sleep(0.05)
            took = time.monotonic() - revoked_at
        assert took <= 5.0
    finally:
        admin.shutdown(2)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _up(base: str) -> bool:
    try:
        httpx.get(f"{base}/ping", timeout=0.5)
    except httpx.TransportError:
        return False
    return True


def test_machine_ids_from_the_pool_and_minted_inline_all_verify() -> None:
    from leza_middleware.sessions import CookieJar, Keyring

    jar = CookieJar(Keyring("a-secret-of-some-length"))
    jar.refill()
    pooled = [jar.new_machine(False) for _ in range(300)]  # more than the first pool
    ids = {ident for ident, _ in pooled}
    assert len(ids) == 300
    for ident, cookie in pooled:
        value = cookie.split(b";")[0]
        assert jar.read(value)[0] == ident
    # another key does not accept them (a forged MAC)
    other = CookieJar(Keyring("another-secret-entirely"))
    assert other.read(pooled[0][1].split(b";")[0]) == (None, None, True)
    # a forked child starts from a fresh prefix and an empty pool: no shared ids
    jar.after_fork()
    assert jar.new_machine(False)[0] not in ids


def test_the_last_of_repeated_cookies_wins_and_costs_one_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hostile Cookie header of thousands of session cookies: only the last
    # counts (as browsers and frameworks read it), and only it is hashed.
    from leza_middleware.sessions import CookieJar, Keyring

    keyring = Keyring("a-secret-of-some-length")
    jar = CookieJar(keyring)
    sid_a, cookie_a = jar.new_session(False)
    sid_b, cookie_b = jar.new_session(False)
    a, b = cookie_a.split(b";")[0], cookie_b.split(b";")[0]
    hashed: list[bytes] = []
    real = keyring.session_id

    def counting(value: bytes) -> str:
        hashed.append(value)
        return real(value)

    monkeypatch.setattr(keyring, "session_id", counting)
    header = b"; ".join([a, b"x=y"] * 2000 + [b])
    assert jar.read(header)[1] == sid_b
    assert len(hashed) == 1
    assert jar.read(b"; ".join([b, a]))[1] == sid_a  # later duplicate wins
    # a last copy too short or long to be ours means no session, not an older copy
    assert jar.read(b"; ".join([a, b"leza_sid=short"]))[1] is None


def test_a_revoked_sessions_websocket_is_refused_at_the_handshake(
    leza: Leza, browser: Callable[..., TestClient]
) -> None:
    """A handshake is a request: HTTP and websocket refuse a revoked session alike."""
    client = browser()
    client.post("/login/alice")
    with client.websocket_connect("/live") as ws:  # the session is valid: accepted
        assert ws.receive_text() == "live"
    leza.flush(5)
    [session] = leza.sessions.active()
    assert leza.sessions.revoke(session["_id"])
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/live"):
        pass
    assert refused.value.code == 1008
    *_, accepted, denied = access_events(leza)
    assert (accepted["endpoint_type"], accepted["status"]) == ("WS", 101)
    assert accepted["session_id_hash"] == session["_id"]
    assert (denied["endpoint_type"], denied["status"], denied["action"]) == ("WS", 403, "denied")
    assert (denied["reason"], denied["session_id_hash"]) == ("session revoked", session["_id"])
