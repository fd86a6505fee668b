"""Sessions, machine identity and revocation on a real Django project (tests/djangoproject).

Users sign in the Django way — ``authenticate()`` + ``login()`` in a view, the
test client's ``force_login()``, ``logout()`` — and the middleware turns the
auth signals into ``login`` / ``logout`` / ``login_failed`` events, keys each
session by a keyed hash of Django's session key, sets the signed machine cookie
and refuses revoked sessions before the view. Django is set up the way
tests/test_django.py does it (``settings.configure()`` once per test session).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from conftest import wait_for
from django.conf import settings
from django.test import AsyncClient, Client, override_settings
from mmdb_factory import FRANKFURT_IP, LONDON_IP

from leza_middleware import Leza
from leza_middleware.django import get_leza
from leza_middleware.django.middleware import forget_roles

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
PASSWORD = "correct horse battery staple"
LOGOUT_REASON = "User has the permission to logout"
# DESIGN.md's session record, plus what a session list needs besides.
SEED_KEYS = {
    "_id", "browser", "os", "device", "bot", "ip", "geoLocationInfoOfIp",
    "machine_identifier", "performer", "session_start",
}  # fmt: skip
EXTRA_KEYS = {"last_seen", "ended_at", "end_reason", "active", "app", "user_agent"}


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def _fresh_roles() -> None:
    forget_roles()


@pytest.fixture
def leza_conf(tmp_path: Path, city_db: Path) -> dict[str, Any]:
    return {
        "storage": f"sqlite:///{tmp_path / 'leza.db'}",
        "geoip_db": str(city_db),
        "trusted_proxies": ["127.0.0.1"],  # the test client's REMOTE_ADDR
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "app_name": "djangoproject",
    }


@pytest.fixture
def configure(leza_conf: dict[str, Any]) -> Iterator[Callable[..., Leza]]:
    """settings.LEZA = leza_conf + overrides; the Leza the middleware builds from it.

    Clients must be created after the call (the middleware reads settings.LEZA
    at its first request, and each client loads the middleware anew).
    """
    made: list[Leza] = []
    with override_settings(LEZA=leza_conf):
        overrides: list[Any] = []

        def make(**options: Any) -> Leza:
            if overrides:
                overrides.pop().disable()
            override = override_settings(LEZA={**leza_conf, **options})
            override.enable()
            overrides.append(override)
            leza = get_leza()
            made.append(leza)
            return leza

        try:
            yield make
        finally:
            for override in overrides:
                override.disable()
    for leza in made:
        leza.shutdown(timeout=2)


@pytest.fixture
def leza(configure: Callable[..., Leza]) -> Leza:
    return configure()


@pytest.fixture
def bob() -> Any:
    from django.contrib.auth.models import Group, User

    user, created = User.objects.get_or_create(
        username="bob", defaults={"first_name": "Bob", "last_name": "Dylan", "email": "bob@x.org"}
    )
    if created:
        user.set_password(PASSWORD)
        user.save()
        user.groups.add(Group.objects.get_or_create(name="editors")[0])
    return user


def browser(ip: str = FRANKFURT_IP, ua: str = CHROME, **kwargs: Any) -> Client:
    """A browser behind the trusted proxy: its own cookie jar, client IP and UA."""
    return Client(headers={"user-agent": ua, "x-forwarded-for": ip}, **kwargs)


# Django's AsyncClient ignores headers given to its constructor: pass them per request.
AHEADERS = {"user-agent": CHROME, "x-forwarded-for": FRANKFURT_IP}


def events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access(limit=1000)))  # oldest first


def sign_in(client: Client, password: str = PASSWORD) -> Any:
    return client.post("/login/", {"username": "bob", "password": password})


# --------------------------------------------------------------------------- sessions


def test_login_requests_logout_cycle(leza: Leza, bob: Any, tmp_path: Path) -> None:
    client = browser()
    assert client.get("/").status_code == 200  # anonymous: no session
    assert sign_in(client).content == b"hello bob"
    raw_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert client.get("/me/").json() == {"user": "bob"}
    assert client.get("/items/1/").status_code == 200
    assert client.get("/logout/").content == b"bye"

    evs = events(leza)
    assert [e["action"] for e in evs] == ["access", "login", "access", "access", "logout"]
    anonymous, login, *_, logout = evs
    assert anonymous["session_id_hash"] is None
    assert anonymous["performer"] is None
    sid = login["session_id_hash"]
    assert sid
    assert all(e["session_id_hash"] == sid for e in evs[1:])
    assert login["reason"] == "User logged in"
    assert login["performer"]["id"] == str(bob.pk)
    assert login["performer"]["role_name"] == "editors"
    assert logout["reason"] == LOGOUT_REASON
    # logout() made request.user anonymous; the event still says who logged out
    assert logout["performer"]["id"] == str(bob.pk)
    assert logout["performer"]["role_name"] == "editors"
    mids = {e["machine_identifier"] for e in evs}
    assert len(mids) == 1
    assert None not in mids

    session = leza.sessions.get(sid)
    assert session is not None
    assert session["active"] is False
    assert session["end_reason"] == "logout"
    assert session["performer"]["id"] == str(bob.pk)
    assert session["machine_identifier"] == login["machine_identifier"]
    assert session["ip"] == FRANKFURT_IP
    assert session["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert session["browser"]["name"] == "Chrome"
    assert session["os"]["name"] == "Windows"
    assert session["device"]["type"] == "desktop"
    assert leza.sessions.active() == []

    # The session is Django's: its id is a keyed hash of the session key, and
    # the raw key is stored nowhere.
    assert sid == leza.keyring.session_id(raw_key.encode())
    assert leza.flush(5)
    for path in tmp_path.glob("leza.db*"):
        assert raw_key.encode() not in path.read_bytes()

    # logged out: the next sign-in is a new session
    sign_in(client)
    assert leza.flush(5)
    assert len(leza.sessions.find(performer_id=str(bob.pk))) == 2


def test_session_key_rotated_at_login_is_the_one_recorded(leza: Leza, bob: Any) -> None:
    client = browser()
    client.get("/")
    client.session.save()  # an anonymous session exists before signing in
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    sign_in(client)
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert before != after  # login() cycled the key
    client.get("/me/")
    login, access = events(leza)[1:]
    assert login["session_id_hash"] == access["session_id_hash"]
    assert login["session_id_hash"] == leza.keyring.session_id(after.encode())


def test_active_session_json_matches_the_seed_record(leza: Leza, bob: Any) -> None:
    client = browser()
    sign_in(client)
    client.get("/me/")
    assert leza.flush(5)
    [session] = leza.sessions.active()
    assert set(session) == SEED_KEYS | EXTRA_KEYS
    assert set(session["browser"]) == {"type", "name", "version", "engine", "engineVersion"}
    assert set(session["os"]) == {"name", "version", "platform"}
    assert {"type", "brand", "model"} <= set(session["device"])
    assert {
        "ip", "country_code", "country_name", "region_code", "region_name", "city",
        "zip_code", "time_zone", "latitude", "longitude", "metro_code",
    } <= set(session["geoLocationInfoOfIp"])  # fmt: skip
    assert set(session["performer"]) >= {"id", "name", "email", "role_name", "organizations"}
    assert session["performer"]["name"] == "Bob Dylan"
    assert session["performer"]["email"] == "bob@x.org"
    assert len(session["session_start"]) == 24
    assert session["session_start"].endswith("Z")
    assert session["bot"] is None
    assert session["active"] is True
    assert session["app"] == "djangoproject"
    assert session["user_agent"] == CHROME


def test_failed_login_is_recorded_without_a_session(leza: Leza, bob: Any) -> None:
    client = browser()
    assert sign_in(client, password="wrong").content == b"wrong username or password"
    [event] = events(leza)
    assert event["action"] == "login_failed"
    assert event["reason"] == "Login failed for 'bob'"
    assert event["performer"] is None
    assert event["session_id_hash"] is None
    assert "wrong" not in str(event)  # the password is nowhere
    assert leza.sessions.find() == []


def test_login_failed_signal_without_a_request_still_marks_the_running_request(
    leza: Leza, bob: Any
) -> None:
    from django.contrib.auth import authenticate

    assert browser().post("/login-norequest/", {"username": "bob"}).status_code == 200
    # outside any request there is nothing to mark, and nothing breaks
    assert authenticate(username="bob", password="wrong") is None
    [event] = events(leza)
    assert event["action"] == "login_failed"
    assert event["reason"] == "Login failed for 'bob'"


def test_force_login_starts_a_session_at_the_first_request(leza: Leza, bob: Any) -> None:
    client = browser()
    client.force_login(bob)  # no HTTP request: no login event
    client.get("/me/")
    client.get("/me/")
    first, second = events(leza)
    assert first["action"] == second["action"] == "access"
    assert first["session_id_hash"] == second["session_id_hash"] is not None
    assert leza.flush(5)
    [session] = leza.sessions.active()
    assert session["_id"] == first["session_id_hash"]


def test_two_browsers_of_one_user_are_two_sessions(leza: Leza, bob: Any) -> None:
    laptop = browser(ip=FRANKFURT_IP, ua=CHROME)
    phone = browser(ip=LONDON_IP, ua=FIREFOX)
    sign_in(laptop)
    phone.force_login(bob)
    laptop.get("/me/")
    phone.get("/me/")
    assert leza.flush(5)
    sessions = leza.sessions.active(performer_id=str(bob.pk))
    assert len(sessions) == 2
    assert len({s["_id"] for s in sessions}) == 2
    assert len({s["machine_identifier"] for s in sessions}) == 2
    assert None not in {s["machine_identifier"] for s in sessions}
    assert {s["geoLocationInfoOfIp"]["city"] for s in sessions} == {"Frankfurt am Main", "London"}
    assert {s["browser"]["name"] for s in sessions} == {"Chrome", "Firefox"}


def test_logout_route_without_django_logout(configure: Callable[..., Leza], bob: Any) -> None:
    leza = configure(logout_routes=["GET /signout/"])
    client = browser()
    sign_in(client)
    assert client.post("/signout/").status_code == 200  # not the listed method
    assert client.get("/signout/").content == b"signed out"
    evs = events(leza)
    assert [e["action"] for e in evs] == ["login", "access", "logout"]
    assert evs[2]["reason"] == LOGOUT_REASON
    assert evs[2]["performer"]["id"] == str(bob.pk)  # the view left the user signed in
    assert leza.sessions.get(evs[0]["session_id_hash"])["end_reason"] == "logout"  # type: ignore[index]
    # The app kept Django's session, but it has ended: refused, and cleared.
    refused = client.get("/me/")
    assert refused.status_code == 401
    assert client.get("/me/").json() == {"user": ""}  # signed out for Django too


def test_signals_are_connected_by_the_middleware_without_the_app(
    configure: Callable[..., Leza], bob: Any
) -> None:
    from django.contrib.auth.signals import user_logged_in

    from leza_middleware.django.signals import connect_signals

    # as in a project that lists only the middleware (LezaConfig.ready() never ran)
    assert user_logged_in.disconnect(dispatch_uid="leza_middleware.django.signals.login")
    try:
        leza = configure()
        sign_in(browser())
        [event] = events(leza)
        assert event["action"] == "login"
    finally:
        connect_signals()


def test_a_failing_receiver_never_breaks_the_login(
    leza: Leza, bob: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from leza_middleware.django import conf

    def broken() -> Leza:
        raise RuntimeError("boom")

    client = browser()
    client.get("/")  # the middleware has its Leza already
    monkeypatch.setattr(conf, "get_leza", broken)
    assert sign_in(client).content == b"hello bob"
    assert client.get("/logout/").content == b"bye"
    assert sign_in(client, password="wrong").status_code == 200
    # recorded as plain requests, and the app never noticed
    assert [e["action"] for e in events(leza)] == ["access"] * 4
    assert "leza: recording a login failed" in caplog.text


@pytest.mark.anyio
async def test_sync_login_view_under_asgi(leza: Leza, bob: Any) -> None:
    from asgiref.sync import sync_to_async

    client = AsyncClient()
    r = await client.post("/login/", {"username": "bob", "password": PASSWORD}, headers=AHEADERS)
    assert r.content == b"hello bob"
    await client.get("/logout/", headers=AHEADERS)
    login, logout = await sync_to_async(events)(leza)
    assert (login["action"], logout["action"]) == ("login", "logout")
    assert login["session_id_hash"] == logout["session_id_hash"] is not None
    assert logout["performer"]["id"] == str(bob.pk)


# --------------------------------------------------------------------------- machine id


def test_machine_cookie_issued_once_with_its_attributes(leza: Leza) -> None:
    client = browser()
    first = client.get("/")
    morsel = first.cookies["leza_mid"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["max-age"] == 2 * 365 * 86400
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain http
    second = client.get("/items/2/")
    assert "leza_mid" not in second.cookies
    a, b = events(leza)
    assert a["machine_identifier"]
    assert a["machine_identifier"] == b["machine_identifier"]
    # the cookie holds the id and its signature
    assert morsel.value.startswith(a["machine_identifier"] + ".")


def test_machine_cookie_secure_over_https(leza: Leza) -> None:
    response = browser().get("/", secure=True)
    assert response.cookies["leza_mid"]["secure"] is True


def test_forged_machine_cookie_is_replaced_and_counted(leza: Leza) -> None:
    client = browser()
    client.get("/")
    genuine = client.cookies["leza_mid"].value
    ident, _, sig = genuine.partition(".")
    forged = f"{ident[:-1]}{'A' if ident[-1] != 'A' else 'B'}.{sig}"
    client.cookies["leza_mid"] = forged
    rejected = leza.cookies.rejected
    response = client.get("/items/2/")
    assert "leza_mid" in response.cookies  # replaced
    assert response.cookies["leza_mid"].value not in (genuine, forged)
    assert leza.cookies.rejected == rejected + 1
    first, second = events(leza)
    assert second["machine_identifier"] not in (None, ident, forged.partition(".")[0])
    assert second["machine_identifier"] != first["machine_identifier"]


def test_machine_cookie_and_sessions_can_be_turned_off(
    configure: Callable[..., Leza], bob: Any
) -> None:
    leza = configure(machine_cookie=False, sessions=False)
    client = browser()
    response = sign_in(client)
    assert "leza_mid" not in response.cookies
    client.get("/me/")
    login, access = events(leza)
    assert login["action"] == "login"  # still an ACCESS action
    assert login["machine_identifier"] is None
    assert login["session_id_hash"] is access["session_id_hash"] is None
    assert leza.sessions.find() == []


# --------------------------------------------------------------------------- revocation


def test_revoked_session_gets_401_before_the_view_and_is_recorded_as_denied(
    leza: Leza, bob: Any
) -> None:
    from django.contrib.sessions.models import Session
    from djangoproject import views

    client = browser()
    sign_in(client)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert leza.flush(5)
    [session] = leza.sessions.active()
    assert leza.sessions.revoke(session["_id"]) is True
    views.seen.clear()
    refused = client.get("/async/")
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Session revoked: sign in again"}
    assert refused["content-type"] == "application/json"
    assert refused["X-Request-ID"]
    assert views.seen == {}  # the view did not run
    # the browser's session cookie is deleted, and so is the session itself
    assert refused.cookies[settings.SESSION_COOKIE_NAME].value == ""
    assert not Session.objects.filter(session_key=key).exists()
    denied = events(leza)[-1]
    assert denied["action"] == "denied"
    assert denied["reason"] == "session revoked"
    assert denied["status"] == 401
    assert denied["session_id_hash"] == session["_id"]
    assert denied["request_id"] == refused["X-Request-ID"]
    assert leza.sessions.get(session["_id"])["end_reason"] == "revoked"  # type: ignore[index]
    # signed out now: an anonymous request is served, and signing in works again
    assert client.get("/me/").json() == {"user": ""}
    sign_in(client)
    assert client.get("/me/").json() == {"user": "bob"}


def test_custom_revoked_response_by_dotted_path(configure: Callable[..., Leza], bob: Any) -> None:
    leza = configure(revoked_response="djangoproject.views.revoked_page")
    client = browser()
    sign_in(client)
    assert leza.flush(5)
    leza.sessions.revoke(leza.sessions.active()[0]["_id"])
    refused = client.get("/me/")
    assert refused.status_code == 401
    assert refused.content == b"please sign in again"
    assert refused["x-why"] == "revoked"
    assert refused["content-type"] == "text/plain"


def test_bad_revoked_response_path_is_a_system_check_error() -> None:
    from leza_middleware.django.checks import check_settings

    with override_settings(LEZA={"revoked_response": "djangoproject.views.nope"}):
        [error] = check_settings()
    assert error.id == "leza.E004"
    assert "revoked_response 'djangoproject.views.nope' cannot be imported" in error.msg


def test_revoke_all_but_the_current_session(leza: Leza, bob: Any) -> None:
    here, there, elsewhere = browser(), browser(ua=FIREFOX), browser(ip=LONDON_IP)
    for client in (here, there, elsewhere):
        sign_in(client)
    assert leza.flush(5)
    assert len(leza.sessions.active(performer_id=str(bob.pk))) == 3
    assert here.post("/signout-others/").json() == {"revoked": 2}
    assert here.get("/me/").status_code == 200
    assert there.get("/me/").status_code == 401
    assert elsewhere.get("/me/").status_code == 401
    assert leza.flush(5)
    assert len(leza.sessions.active(performer_id=str(bob.pk))) == 1


def test_revocation_by_another_process_is_seen_within_the_poll_interval(
    configure: Callable[..., Leza], bob: Any, tmp_path: Path
) -> None:
    leza = configure(session_poll_interval=0.2)
    client = browser()
    sign_in(client)
    client.get("/me/")
    assert leza.flush(5)
    [session] = leza.sessions.active()
    sid = session["_id"]
    # Another process (an admin shell, another worker) opens the same storage
    # and revokes the session.
    script = (
        "import sys; from leza_middleware import Leza; "
        "leza = Leza(storage=sys.argv[1], geoip_db=False, spill_dir=sys.argv[2], "
        "secret_key='another-process-secret'); "
        "print(leza.sessions.revoke(sys.argv[3])); leza.shutdown(5)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(leza.settings.storage), str(tmp_path / "s2"), sid],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "True", done.stderr
    revoked_at = time.monotonic()
    assert wait_for(lambda: sid in leza.sessions.blocked, 5)
    took = time.monotonic() - revoked_at
    # the documented bound: the recorder polls every session_poll_interval, and
    # looks every flush_interval (plus scheduling slack on a busy machine)
    assert took <= leza.sessions.poll_interval + leza.settings.flush_interval + 1.0
    assert client.get("/me/").status_code == 401


def test_no_storage_query_per_request(configure: Callable[..., Leza], bob: Any) -> None:
    from sqlalchemy import event

    leza = configure(session_poll_interval=0.2)
    client = browser()
    sign_in(client)
    client.get("/me/")
    assert leza.flush(5)
    request_thread = threading.get_ident()
    statements: list[tuple[int, str]] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append((threading.get_ident(), statement))

    engine = leza.storage.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        began = time.monotonic()
        for i in range(50):
            assert client.get(f"/items/{i}/").status_code == 200
        time.sleep(0.5)  # a few polls happen meanwhile
        elapsed = time.monotonic() - began
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [s for tid, s in statements if tid == request_thread] == []
    reads = [s for _, s in statements if s.lstrip().upper().startswith("SELECT")]
    reads = [s for s in reads if "leza_traffic" not in s]  # the once-a-minute rollup upkeep
    polls = 2 + int(elapsed / leza.sessions.poll_interval)
    assert 0 < len(reads) <= 3 * polls < 50
    assert len(events(leza)) == 52


# --------------------------------------------------------------------------- async


@pytest.mark.anyio
async def test_async_views_get_the_same_session_behaviour(leza: Leza, bob: Any) -> None:
    from asgiref.sync import sync_to_async

    client = AsyncClient()
    r = await client.post("/alogin/", {"username": "bob", "password": PASSWORD}, headers=AHEADERS)
    assert r.content == b"hello bob"
    assert (await client.get("/ame/", headers=AHEADERS)).json() == {"user": "bob"}
    await client.get("/async/", headers=AHEADERS)
    assert (await client.get("/alogout/", headers=AHEADERS)).content == b"bye"
    await client.post("/alogin/", {"username": "bob", "password": "wrong"}, headers=AHEADERS)
    evs = await sync_to_async(events)(leza)
    assert [e["action"] for e in evs] == ["login", "access", "access", "logout", "login_failed"]
    sid = evs[0]["session_id_hash"]
    assert sid
    assert all(e["session_id_hash"] == sid for e in evs[:4])
    assert evs[3]["reason"] == LOGOUT_REASON
    assert evs[3]["performer"]["id"] == str(bob.pk)
    assert evs[4]["reason"] == "Login failed for 'bob'"
    assert evs[4]["session_id_hash"] is None
    assert len({e["machine_identifier"] for e in evs}) == 1
    session = leza.sessions.get(sid)
    assert session is not None
    assert session["end_reason"] == "logout"
    assert session["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert leza.stats()["request_path_errors"] == 0


@pytest.mark.anyio
async def test_async_revoked_session_is_refused_and_deleted(leza: Leza, bob: Any) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.sessions.models import Session

    client = AsyncClient()
    await client.aforce_login(bob)
    await client.get("/ame/")
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert leza.flush(5)
    [session] = leza.sessions.active()
    leza.sessions.revoke(session["_id"])
    refused = await client.get("/ame/")
    assert refused.status_code == 401
    assert not await Session.objects.filter(session_key=key).aexists()
    denied = (await sync_to_async(events)(leza))[-1]
    assert (denied["action"], denied["reason"]) == ("denied", "session revoked")
    assert (await client.get("/ame/")).json() == {"user": ""}
