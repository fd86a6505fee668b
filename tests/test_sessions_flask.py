"""Sessions, machine identity and revocation on real Flask apps (``leza.init_app``).

Two ways of signing in: Flask-Login (its signals mark login and logout), and
the Flask tutorial's own ``session["user_id"]`` with a configured logout route.
Flask's session is a signed cookie that cannot be invalidated, so the Leza
session is bound into it: a copy of the cookie replayed after a logout or a
revocation is refused even without the ``leza_sid`` cookie.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flask_login
import pytest
from flask import Flask, g, redirect, request, session
from flask.testing import FlaskClient
from mmdb_factory import FRANKFURT_IP, LONDON_IP
from werkzeug.test import TestResponse

from leza_middleware import Leza, Performer
from leza_middleware.integrations.flask import SESSION_BINDING_KEY

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
# DESIGN.md's session record, plus what a session list needs besides.
SEED_KEYS = {
    "_id", "browser", "os", "device", "bot", "ip", "geoLocationInfoOfIp",
    "machine_identifier", "performer", "session_start",
}  # fmt: skip
EXTRA_KEYS = {"last_seen", "ended_at", "end_reason", "active", "app", "user_agent"}
SECRET = "flask-secret-key-0123456789"


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, uid: str) -> None:
        self.id = uid
        self.name = uid.title()
        self.email = f"{uid}@ex.com"


def login_app(leza: Leza) -> Flask:
    """An app signing users in with Flask-Login."""
    app = Flask(__name__)
    app.secret_key = SECRET
    manager = flask_login.LoginManager(app)
    manager.user_loader(User)

    @app.post("/login/<uid>")
    def login(uid: str) -> str:
        flask_login.login_user(User(uid), remember=request.args.get("remember") == "1")
        return "in"

    @app.post("/bad-login")
    def bad_login() -> tuple[str, int]:
        # Flask-Login has no signal for this: the view says so itself.
        leza.sessions.login_failed("Wrong password", username="mallory")
        return "no", 401

    @app.get("/logout")
    def logout() -> str:
        flask_login.logout_user()
        return "out"

    @app.get("/private")
    @flask_login.login_required
    def private() -> str:
        return f"hello {flask_login.current_user.name}"

    @app.post("/signout-others")
    @flask_login.login_required
    def signout_others() -> dict[str, int]:
        revoked = leza.sessions.revoke_all(flask_login.current_user.id, except_current=True)
        return {"revoked": revoked}

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    leza.init_app(app)
    return app


def tutorial_app(leza: Leza) -> Flask:
    """An app without Flask-Login: ``session["user_id"]`` and ``g.user``, as the tutorial."""
    app = Flask(__name__)
    app.secret_key = SECRET
    leza.init_app(app)

    @app.before_request
    def load_user() -> None:
        uid = session.get("user_id")
        g.user = None if uid is None else {"id": uid, "name": uid.title()}

    @app.post("/signin/<uid>")
    def signin(uid: str) -> Any:
        session.clear()
        session["user_id"] = uid
        return redirect("/items/0")  # nobody visibly signed in on this response

    @app.get("/logout")
    def logout() -> Any:
        session.clear()
        return redirect("/items/0")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "user": g.user and g.user["id"]}

    return app


@pytest.fixture
def leza(make_leza: Any) -> Leza:
    return make_leza(trusted_proxies=["127.0.0.1"])  # type: ignore[no-any-return]


@pytest.fixture
def browser(leza: Leza) -> Callable[..., FlaskClient]:
    """A new browser (its own cookie jar) on the Flask-Login app, from an IP with a UA."""
    app = login_app(leza)

    def open_browser(ip: str = FRANKFURT_IP, ua: str = CHROME) -> FlaskClient:
        return client_for(app, ip, ua)

    return open_browser


PAGE = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def client_for(app: Flask, ip: str = FRANKFURT_IP, ua: str = CHROME) -> FlaskClient:
    client = app.test_client()
    # a browser opening pages: it gets a machine id (API clients don't)
    client.environ_base.update(HTTP_USER_AGENT=ua, HTTP_X_FORWARDED_FOR=ip, HTTP_ACCEPT=PAGE)
    return client


def access_events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access(limit=1000)))  # oldest first


def set_cookies(response: TestResponse) -> dict[str, str]:
    out = {}
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        out[name] = rest
    return out


def cookie(client: FlaskClient, name: str) -> str | None:
    found = client.get_cookie(name)
    return None if found is None else found.value


def flask_session(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as data:
        return dict(data)


# --------------------------------------------------------------------------- machine id


def test_machine_cookie_issued_on_first_visit_then_reused(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    client = browser()
    first = client.get("/items/1")
    issued = set_cookies(first)["leza_mid"]
    assert "HttpOnly" in issued
    assert "SameSite=Lax" in issued
    assert "Max-Age=63072000" in issued
    assert "Secure" not in issued  # plain http
    second = client.get("/items/2")
    assert "leza_mid" not in set_cookies(second)
    # over https it is Secure
    secure = browser().get("/items/3", base_url="https://localhost")
    assert "Secure" in set_cookies(secure)["leza_mid"]
    events = access_events(leza)
    assert events[0]["machine_identifier"]
    assert events[0]["machine_identifier"] == events[1]["machine_identifier"]
    assert events[2]["machine_identifier"] not in (None, events[0]["machine_identifier"])


def test_forged_machine_cookie_is_ignored_replaced_and_counted(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    client = browser()
    client.get("/items/1")
    genuine = cookie(client, "leza_mid")
    assert genuine is not None
    ident, _, sig = genuine.partition(".")
    forged = f"{ident[:-1]}{'A' if ident[-1] != 'A' else 'B'}.{sig}"
    client.set_cookie("leza_mid", forged)
    response = client.get("/items/2")
    assert response.status_code == 200
    assert "leza_mid" in set_cookies(response)  # replaced
    assert cookie(client, "leza_mid") not in (None, forged, genuine)
    events = access_events(leza)
    assert events[1]["machine_identifier"] not in (None, ident, forged.partition(".")[0])
    assert leza.cookies.rejected == 1


def test_machine_cookie_can_be_disabled(make_leza: Any) -> None:
    leza = make_leza(machine_cookie=False)
    client = login_app(leza).test_client()
    assert "leza_mid" not in set_cookies(client.get("/items/1"))
    assert access_events(leza)[0]["machine_identifier"] is None


# --------------------------------------------------------------------------- Flask-Login


def test_login_requests_logout_cycle(leza: Leza, browser: Callable[..., FlaskClient]) -> None:
    client = browser(ip=LONDON_IP, ua=CHROME)
    client.get("/items/0")  # anonymous: no session
    login = client.post("/login/alice")
    assert "leza_sid" in set_cookies(login)
    bound = flask_session(client)[SESSION_BINDING_KEY]
    assert client.get("/private").text == "hello Alice"
    client.get("/items/2")
    logout = client.get("/logout")
    assert set_cookies(logout)["leza_sid"].startswith(";")  # cleared
    assert SESSION_BINDING_KEY not in flask_session(client)
    events = access_events(leza)
    assert [e["action"] for e in events] == ["access", "login", "access", "access", "logout"]
    first, login_event, *_, logout_event = events
    assert first["session_id_hash"] is None
    assert login_event["reason"] == "User logged in"
    assert (login_event["performer"]["id"], login_event["performer"]["name"]) == ("alice", "Alice")
    assert logout_event["reason"] == "User has the permission to logout"
    assert logout_event["performer"]["id"] == "alice"  # who left
    assert {e["session_id_hash"] for e in events[1:]} == {bound}
    leza.sessions.poll(force=True)
    [record] = leza.sessions.find(performer_id="alice")
    assert record["_id"] == bound
    assert record["active"] is False
    assert record["end_reason"] == "logout"
    assert record["ended_at"] is not None
    assert record["browser"]["name"] == "Chrome"
    assert record["os"]["name"] == "Windows"
    assert record["device"]["type"] == "desktop"
    assert record["ip"] == LONDON_IP
    assert record["geoLocationInfoOfIp"]["city"] == "London"
    assert record["geoLocationInfoOfIp"]["country_code"] == "GB"
    assert record["machine_identifier"] == login_event["machine_identifier"] is not None
    assert record["performer"]["email"] == "alice@ex.com"
    assert leza.sessions.active(performer_id="alice") == []
    # signed out for good: the same browser's next request is anonymous, not refused
    after = client.get("/items/3")
    assert after.status_code == 200
    assert access_events(leza)[-1]["session_id_hash"] is None
    # a new sign-in is a new session
    client.post("/login/alice")
    assert flask_session(client)[SESSION_BINDING_KEY] != bound
    assert leza.flush(5)
    assert len(leza.sessions.find(performer_id="alice")) == 2


def test_active_session_json_matches_the_seed_record(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    client = browser()
    client.post("/login/alice")
    client.get("/private")
    assert leza.flush(5)
    [record] = leza.sessions.active()
    assert set(record) == SEED_KEYS | EXTRA_KEYS
    assert set(record["browser"]) == {"type", "name", "version", "engine", "engineVersion"}
    assert set(record["os"]) == {"name", "version", "platform"}
    assert {"type", "brand", "model"} <= set(record["device"])
    assert {
        "ip", "country_code", "country_name", "region_code", "region_name", "city",
        "zip_code", "time_zone", "latitude", "longitude", "metro_code",
    } <= set(record["geoLocationInfoOfIp"])  # fmt: skip
    assert {
        "id", "name", "email", "picture_url", "organization_id", "organization_name",
        "role_name", "clientid", "organization_unit_id", "organization_unit_name",
        "organization_unit_labels", "organizations",
    } == set(record["performer"])  # fmt: skip
    assert record["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert len(record["session_start"]) == 24  # "2025-07-06T15:49:24.062Z"
    assert record["session_start"].endswith("Z")
    assert record["bot"] is None
    assert record["active"] is True
    assert record["end_reason"] is None


def test_two_browsers_of_one_user_are_two_sessions(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    laptop = browser(ip=FRANKFURT_IP, ua=CHROME)
    phone = browser(ip=LONDON_IP, ua=FIREFOX)
    laptop.post("/login/alice")
    phone.post("/login/alice")
    laptop.get("/private")
    phone.get("/private")
    assert leza.flush(5)
    records = leza.sessions.active(performer_id="alice")
    assert len(records) == 2
    assert len({r["machine_identifier"] for r in records}) == 2
    assert None not in {r["machine_identifier"] for r in records}
    assert {r["geoLocationInfoOfIp"]["city"] for r in records} == {"Frankfurt am Main", "London"}
    assert {r["browser"]["name"] for r in records} == {"Chrome", "Firefox"}
    assert flask_session(laptop)[SESSION_BINDING_KEY] != flask_session(phone)[SESSION_BINDING_KEY]


def test_failed_login_is_recorded(leza: Leza, browser: Callable[..., FlaskClient]) -> None:
    assert browser().post("/bad-login").status_code == 401
    [event] = access_events(leza)
    assert event["action"] == "login_failed"
    assert event["reason"] == "Wrong password for 'mallory'"
    assert event["session_id_hash"] is None


def test_long_user_agent_stored_up_to_its_cap(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    ua = CHROME + " " + "x" * (2000 - len(CHROME) - 1)
    assert len(ua) == 2000
    client = browser(ua=ua)
    assert client.post("/login/alice").status_code == 200
    event = access_events(leza)[0]
    assert event["user_agent"] == ua[:512]
    assert event["browser"]["name"] == "Chrome"
    [record] = leza.sessions.active()
    assert record["user_agent"] == ua[:512]
    assert record["browser"]["name"] == "Chrome"


# --------------------------------------------------------------------------- revocation


def test_revoked_session_gets_401_and_is_recorded_as_denied(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    client = browser()
    client.post("/login/alice?remember=1")
    assert cookie(client, "remember_token")
    assert leza.flush(5)
    [record] = leza.sessions.active()
    assert leza.sessions.revoke(record["_id"]) is True
    refused = client.get("/private")
    assert refused.status_code == 401
    assert refused.json == {"detail": "Session revoked: sign in again"}
    assert refused.headers["X-Request-ID"]
    # signed out: the session cookie, Flask's session and the remember-me cookie go
    gone = set_cookies(refused)
    assert gone["leza_sid"].startswith(";")
    assert gone["session"].startswith(";")
    assert gone["remember_token"].startswith(";")
    assert cookie(client, "session") is None
    assert cookie(client, "remember_token") is None
    denied = access_events(leza)[-1]
    assert (denied["action"], denied["reason"], denied["status"]) == (
        "denied",
        "session revoked",
        401,
    )
    assert denied["session_id_hash"] == record["_id"]
    assert denied["endpoint"] == "/private"
    assert leza.sessions.get(record["_id"])["end_reason"] == "revoked"  # type: ignore[index]
    # the browser can go on anonymously, and sign in afresh
    assert client.get("/private").status_code == 401  # Flask-Login's own 401: not signed in
    assert access_events(leza)[-1]["action"] == "denied"
    assert access_events(leza)[-1]["reason"] != "session revoked"
    assert client.post("/login/alice").status_code == 200
    assert client.get("/private").status_code == 200


def test_replayed_flask_cookie_is_refused_after_revocation(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    victim = browser()
    victim.post("/login/alice?remember=1")
    stolen = cookie(victim, "session")
    assert stolen is not None
    # Before the revocation the copy works, and is recorded under the victim's
    # session (not as a new one per request).
    attacker = browser(ip=LONDON_IP, ua=FIREFOX)
    attacker.set_cookie("session", stolen)
    assert attacker.get("/private").text == "hello Alice"
    assert leza.flush(5)
    [record] = leza.sessions.active()
    assert access_events(leza)[-1]["session_id_hash"] == record["_id"]
    leza.sessions.revoke(record["_id"])
    # The copy alone (no leza_sid cookie, no remember-me cookie) is refused by
    # its binding; so is the victim's browser, which has both.
    for client in (attacker, victim):
        client.set_cookie("session", stolen)
        refused = client.get("/private")
        assert refused.status_code == 401
        assert refused.json == {"detail": "Session revoked: sign in again"}
    events = access_events(leza)[-2:]
    assert [(e["action"], e["reason"]) for e in events] == [("denied", "session revoked")] * 2
    assert {e["session_id_hash"] for e in events} == {record["_id"]}
    assert events[0]["ip"] == LONDON_IP
    # again and again: the cookie cannot be made valid, nor with the remember-me
    # cookie next to it (refused by the binding first; the answer deletes both)
    remember = browser()
    remember.set_cookie("session", stolen)
    remember.set_cookie("remember_token", "copied-remember-token")
    refused = remember.get("/items/1")
    assert refused.status_code == 401
    assert set_cookies(refused)["session"].startswith(";")
    assert set_cookies(refused)["remember_token"].startswith(";")
    assert "leza_sid" not in set_cookies(refused)  # it had none
    attacker.set_cookie("session", stolen)
    assert attacker.get("/items/1").status_code == 401
    assert leza.flush(5)
    assert len(leza.sessions.find(performer_id="alice")) == 1


def test_replayed_flask_cookie_is_refused_after_logout(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    client = browser()
    client.post("/login/alice")
    stolen = cookie(client, "session")
    assert stolen is not None
    client.get("/logout")
    assert leza.flush(5)  # the logout is seen by the recorder: the session is blocked
    replay = browser(ip=LONDON_IP)
    replay.set_cookie("session", stolen)
    assert replay.get("/private").status_code == 401
    denied = access_events(leza)[-1]
    assert (denied["action"], denied["reason"]) == ("denied", "session revoked")
    # the browser that logged out is not affected
    assert client.get("/items/1").status_code == 200


def test_revoke_all_but_the_current_session(
    leza: Leza, browser: Callable[..., FlaskClient]
) -> None:
    here, there, elsewhere = browser(), browser(ua=FIREFOX), browser(ip=LONDON_IP)
    for client in (here, there, elsewhere):
        client.post("/login/alice")
        client.get("/private")
    assert leza.flush(5)
    assert len(leza.sessions.active(performer_id="alice")) == 3
    assert here.post("/signout-others").json == {"revoked": 2}
    assert here.get("/private").status_code == 200
    assert there.get("/private").status_code == 401
    assert elsewhere.get("/private").status_code == 401
    assert leza.flush(5)
    assert len(leza.sessions.active(performer_id="alice")) == 1


def test_custom_revoked_response_in_both_paths(make_leza: Any) -> None:
    def goodbye(req: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        return 401, [("Content-Type", "text/plain")], f"bye {req.path}".encode()

    leza = make_leza(revoked_response=goodbye)
    app = login_app(leza)
    client = app.test_client()
    client.post("/login/bob")
    stolen = cookie(client, "session")
    assert stolen is not None
    assert leza.flush(5)
    leza.sessions.revoke(leza.sessions.active()[0]["_id"])
    refused = client.get("/items/1")  # the leza_sid cookie: refused before Flask runs
    assert (refused.status_code, refused.text) == (401, "bye /items/1")
    assert refused.headers["Content-Type"] == "text/plain"
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    refused = replay.get("/items/2")  # only the Flask cookie: refused by its binding
    assert (refused.status_code, refused.text) == (401, "bye /items/2")
    assert refused.headers["Content-Type"] == "text/plain"


def test_a_timed_out_session_is_not_revived(
    make_leza: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timeouts not enforced: the request goes through, under a new session (rebound)."""
    import leza_middleware.sessions.registry as registry

    leza = make_leza(idle_timeout=60)
    client = login_app(leza).test_client()
    client.post("/login/ida")
    assert leza.flush(5)
    leza.sessions.poll(force=True)  # the recorder thread's next poll is now seconds away
    [old] = leza.sessions.active()
    real_now = registry._now_us
    monkeypatch.setattr(registry, "_now_us", lambda: real_now() + 61_000_000)
    leza.sessions.poll(force=True)
    monkeypatch.undo()
    assert leza.sessions.get(old["_id"])["end_reason"] == "idle_timeout"  # type: ignore[index]
    response = client.get("/private")
    assert response.status_code == 200
    assert "leza_sid" in set_cookies(response)  # a new session cookie
    assert leza.flush(5)
    [new] = leza.sessions.active()
    assert new["_id"] != old["_id"]
    assert flask_session(client)[SESSION_BINDING_KEY] == new["_id"]
    assert access_events(leza)[-1]["session_id_hash"] == new["_id"]


def test_no_storage_query_per_request(leza: Leza, browser: Callable[..., FlaskClient]) -> None:
    from sqlalchemy import event

    client = browser()
    client.post("/login/alice")
    client.get("/items/0")
    assert leza.flush(5)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = leza.storage.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        began = time.monotonic()
        for i in range(100):
            assert client.get(f"/items/{i}").status_code == 200
        elapsed = time.monotonic() - began
        # the recorder thread writes (and polls every session_poll_interval
        # seconds); requests themselves read nothing
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    reads = [s for s in reads if "leza_traffic" not in s]  # the once-a-minute rollup upkeep
    polls = elapsed / leza.settings.session_poll_interval + 2
    assert len(reads) <= 2 * polls  # per poll: timed-out sessions, ended sessions


def test_responses_not_touching_the_session_are_not_changed(leza: Leza) -> None:
    """Reading Flask's session for the log adds no ``Vary: Cookie``, writes no cookie.

    (Flask-Login's own after_request hook reads the session on every request,
    so an app without it shows this.)
    """
    app = Flask(__name__)
    app.secret_key = SECRET
    leza.init_app(app)

    @app.get("/")
    def home() -> str:
        return "home"

    @app.post("/cart")
    def cart() -> str:
        session["cart"] = ["apple"]
        return "added"

    client = app.test_client()
    client.environ_base["HTTP_ACCEPT"] = PAGE
    client.get("/")  # a browser's first visit: it gets its machine id
    response = client.get("/")
    assert "Vary" not in response.headers
    assert set_cookies(response) == {}
    # an anonymous visitor with a session (a cart): read, never rewritten for the log
    client.post("/cart")
    again = client.get("/")
    assert "Vary" not in again.headers
    assert set_cookies(again) == {}


# --------------------------------------------------------------------------- without Flask-Login


@pytest.fixture
def tutorial(make_leza: Any) -> tuple[Leza, Flask]:
    leza = make_leza(trusted_proxies=["127.0.0.1"], logout_routes=["GET /logout"])
    return leza, tutorial_app(leza)


def test_logout_route_without_flask_login(tutorial: tuple[Leza, Flask]) -> None:
    leza, app = tutorial
    client = client_for(app, ip=LONDON_IP)
    signin = client.post("/signin/alice")
    assert signin.status_code == 302
    # the sign-in response names nobody yet, but its cookie is already bound
    bound = flask_session(client)[SESSION_BINDING_KEY]
    assert client.get("/items/1").json == {"id": 1, "user": "alice"}
    stolen = cookie(client, "session")
    assert client.get("/logout").status_code == 302
    assert client.get("/items/2").json == {"id": 2, "user": None}
    events = access_events(leza)
    assert [e["action"] for e in events] == ["access", "access", "logout", "access"]
    assert [e["performer"] and e["performer"]["id"] for e in events] == [
        None,
        "alice",
        "alice",
        None,
    ]
    logout = events[2]
    assert logout["reason"] == "User has the permission to logout"
    assert logout["session_id_hash"] == bound
    assert events[1]["session_id_hash"] == bound
    assert events[3]["session_id_hash"] is None
    [record] = leza.sessions.find(performer_id="alice")
    assert record["_id"] == bound
    assert (record["active"], record["end_reason"]) == (False, "logout")
    assert record["geoLocationInfoOfIp"]["city"] == "London"
    assert record["machine_identifier"] == logout["machine_identifier"] is not None
    # a copy of the signed-in cookie is refused now
    assert stolen is not None
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    assert replay.get("/items/3").status_code == 401
    assert access_events(leza)[-1]["reason"] == "session revoked"


def test_copy_of_the_sign_in_response_cookie_is_refused_after_revocation(
    tutorial: tuple[Leza, Flask],
) -> None:
    """The login response's own cookie (before any request named the user) is bound too."""
    leza, app = tutorial
    client = client_for(app)
    client.post("/signin/bob")
    stolen = cookie(client, "session")
    client.get("/items/1")
    assert leza.flush(5)
    [record] = leza.sessions.active()
    leza.sessions.revoke(record["_id"])
    replay = app.test_client()
    assert stolen is not None
    replay.set_cookie("session", stolen)
    assert replay.get("/items/2").status_code == 401
    assert client.get("/items/2").status_code == 401
    assert client.get("/items/3").json == {"id": 3, "user": None}  # signed out


def test_explicit_login_and_logout_calls(make_leza: Any) -> None:
    """``leza.sessions.login()`` / ``logout()`` from the app's own views."""
    leza = make_leza()
    app = Flask(__name__)
    app.secret_key = SECRET
    leza.init_app(app)

    @app.before_request
    def load_user() -> None:
        uid = session.get("uid")
        g.user = None if uid is None else Performer(id=uid)

    @app.post("/in/<uid>")
    def sign_in(uid: str) -> str:
        session["uid"] = uid
        leza.sessions.login(Performer(id=uid, name=uid.upper()))
        return "in"

    @app.post("/out")
    def sign_out() -> str:
        session.pop("uid", None)
        leza.sessions.logout()
        return "out"

    @app.get("/")
    def home() -> str:
        return "home"

    client = app.test_client()
    assert "leza_sid" in set_cookies(client.post("/in/zed"))
    client.get("/")
    assert set_cookies(client.post("/out"))["leza_sid"].startswith(";")
    events = access_events(leza)
    assert [e["action"] for e in events] == ["login", "access", "logout"]
    assert events[0]["performer"]["name"] == "ZED"
    assert len({e["session_id_hash"] for e in events}) == 1
    [record] = leza.sessions.find(performer_id="zed")
    assert record["end_reason"] == "logout"


def test_sessions_disabled(make_leza: Any) -> None:
    leza = make_leza(sessions=False)
    client = login_app(leza).test_client()
    login = client.post("/login/alice", headers={"Accept": PAGE})
    assert "leza_sid" not in set_cookies(login)
    assert "leza_mid" in set_cookies(login)
    assert SESSION_BINDING_KEY not in flask_session(client)
    client.get("/private")
    assert leza.flush(5)
    assert leza.sessions.find() == []
    assert [e["action"] for e in access_events(leza)] == ["login", "access"]


@pytest.fixture
def two_apps(make_leza: Any) -> tuple[Leza, Flask, Flask]:
    leza = make_leza()
    return leza, login_app(leza), login_app(leza)


def test_one_leza_two_apps_one_login_each(two_apps: tuple[Leza, Flask, Flask]) -> None:
    """The Flask-Login signals are connected per app: one login is recorded once."""
    leza, first, second = two_apps
    first.test_client().post("/login/ann")
    second.test_client().post("/login/ben")
    assert leza.flush(5)
    assert sorted(r["performer"]["id"] for r in leza.sessions.active()) == ["ann", "ben"]
    assert [e["action"] for e in access_events(leza)] == ["login", "login"]


def test_a_restarted_process_refuses_a_replayed_flask_cookie_from_its_first_request(
    leza: Leza, browser: Callable[..., FlaskClient], make_leza: Any, tmp_path: Any
) -> None:
    """Only the Flask cookie (its binding names the session), against a new
    process: refused when revoked; refused but left signed in when the
    blocklist cannot be loaded (storage unreachable at start-up)."""
    victim = browser()
    victim.post("/login/alice")
    stolen = cookie(victim, "session")
    assert stolen is not None
    assert leza.flush(5)
    [record] = leza.sessions.active()
    leza.sessions.revoke(record["_id"])

    restarted = make_leza(trusted_proxies=["127.0.0.1"])  # same storage, nothing loaded
    replay = login_app(restarted).test_client()
    replay.set_cookie("session", stolen)
    refused = replay.get("/items/1")  # its very first request
    assert refused.status_code == 401
    assert set_cookies(refused)["session"].startswith(";")  # signed out for Flask too
    assert access_events(restarted)[-1]["reason"] == "session revoked"

    down = tmp_path / "down.db"
    down.write_bytes(b"not a SQLite database " * 100)
    unknown = make_leza(storage=f"sqlite:///{down}")
    client = login_app(unknown).test_client()
    client.set_cookie("session", stolen)
    refused = client.get("/items/1")
    assert refused.status_code == 401
    assert "session" not in set_cookies(refused)  # the session is kept: state unknown only
    assert unknown.stats()["revocations"]["refused_unknown"] == 1
