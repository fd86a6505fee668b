"""CSRF in depth for the dashboard's actions (issue 13, item 4).

Each rule is tested on its own (the signed cookie and token, the origin
check), then through the real mounts: the ASGI and WSGI apps (raw requests,
see tests/dashboard_mounts.py), the FastAPI test app whose admins sign in
(Starlette ``request.user``), and Django's mount with Django's CSRF check
enforced. A refused request is a 403 with the security headers, revokes
nothing, and is recorded in ACCESS as ``denied`` with its reason.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import wait_for
from dashboard_app import build_app
from dashboard_mounts import (
    HOST,
    ORIGIN,
    AsgiMount,
    DjangoMount,
    WsgiMount,
    cookie_pair,
    django_leza,
    django_setup,
    form_token,
)
from starlette.requests import Request
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaConfigError, Performer
from leza_middleware.dashboard import make_asgi_app, make_wsgi_app
from leza_middleware.dashboard.csrf import (
    COOKIE,
    MISSING_COOKIE,
    TOKEN_TTL,
    SignedCsrf,
    foreign_origin,
    origin_rules,
)
from leza_middleware.events import SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.sessions.cookies import Keyring

SESSION = "sess0000000000000001"
EVIL = "https://evil.example"

# ----------------------------------------------------------------------------- the token


@pytest.fixture
def csrf() -> SignedCsrf:
    return SignedCsrf(Keyring("tests-secret-key-0123456789"))


def issued_cookie(csrf: SignedCsrf) -> tuple[str, str]:
    """(Cookie header, nonce) of the cookie the server issues to a new browser."""
    first = csrf.token("", None, "ada", path="/leza", secure=False)
    assert first.problem == MISSING_COOKIE
    assert first.set_cookie is not None
    pair = first.set_cookie.split(";", 1)[0]
    [nonce] = csrf.nonces(pair)
    return pair, nonce


def test_the_cookie_is_issued_signed_and_a_chosen_one_is_replaced(csrf: SignedCsrf) -> None:
    first = csrf.token("", None, "ada", path="/leza", secure=True)
    assert first.set_cookie is not None
    assert re.fullmatch(
        rf"{COOKIE}=[0-9a-f]{{64}}; Path=/leza; HttpOnly; SameSite=Strict; Secure",
        first.set_cookie,
    )
    pair, nonce = issued_cookie(csrf)
    again = csrf.token(pair, None, "ada", path="/leza", secure=False)
    assert again.set_cookie is None  # kept: it is ours
    # A value the client chose (well-formed, unsigned) is not ours: replaced.
    chosen = f"{COOKIE}={'ab' * 32}"
    assert csrf.nonces(chosen) == []
    replaced = csrf.token(chosen, csrf.issue("ab" * 16, "ada"), "ada", path="/", secure=False)
    assert replaced.set_cookie is not None
    assert "ab" * 32 not in replaced.set_cookie
    assert replaced.problem == MISSING_COOKIE
    # The old format (any 16-128 characters) and junk are replaced too.
    for junk in ("x" * 40, "é" * 20, "", '"' * 70, "0" * 64):
        assert csrf.nonces(f"{COOKIE}={junk}") == []
    # A planted copy before ours does not hide ours.
    planted = f"{COOKIE}={'cd' * 32}; {pair}"
    assert csrf.nonces(planted) == [nonce]


def test_a_token_is_bound_to_browser_admin_key_and_time(csrf: SignedCsrf) -> None:
    pair, nonce = issued_cookie(csrf)
    now = time.time()
    token = csrf.issue(nonce, "ada", now)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert csrf.check([nonce], token, "ada", now) is None
    assert csrf.token(pair, token, "ada", path="/", secure=False).valid
    # Another admin, another browser, another key.
    assert csrf.check([nonce], token, "bob", now) == (
        "the CSRF token was not issued to this browser and admin"
    )
    _, other_nonce = issued_cookie(csrf)
    assert csrf.check([other_nonce], token, "ada", now) is not None
    other_key = SignedCsrf(Keyring("another-secret-key-0123456789"))
    assert other_key.check([nonce], token, "ada", now) is not None
    # Its age: accepted until TOKEN_TTL (2 h), then refused; not from the future.
    assert csrf.check([nonce], token, "ada", now + TOKEN_TTL - 1) is None
    expired = csrf.check([nonce], token, "ada", now + TOKEN_TTL + 1)
    assert expired == "the CSRF token expired (older than 2 h)"
    ahead = csrf.issue(nonce, "ada", now + 3600)
    assert csrf.check([nonce], ahead, "ada", now) == "the CSRF token was issued in the future"
    # Changing its time invalidates its MAC: the age cannot be edited.
    older = f"{int(now) - 10:012x}" + token[12:]
    assert csrf.check([nonce], older, "ada", now) is not None
    for bad in ("", "0" * 63, "g" * 64, "٣" * 64, token.upper(), token + "0"):
        assert csrf.check([nonce], bad, "ada", now) is not None, bad
    # An identity past 256 characters is bound by its first 256.
    long_name = "a" * 300
    assert csrf.check([nonce], csrf.issue(nonce, long_name, now), "a" * 256, now) is None


# ----------------------------------------------------------------------------- the origin


def origin_check(**headers: str) -> str | None:
    scheme = headers.pop("scheme", "http")
    host = headers.pop("host", HOST)
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    return foreign_origin(sent, host, scheme, origin_rules(["https://*.trusted.example"], "t"))


def test_origin_rules() -> None:
    # A script, curl: no Origin, no Referer, no Sec-Fetch-Site: the token decides.
    assert origin_check() is None
    assert origin_check(sec_fetch_site="same-origin", origin=ORIGIN) is None
    assert origin_check(sec_fetch_site="none") is None  # typed in the address bar
    assert origin_check(origin=ORIGIN.upper()) is None
    assert origin_check(origin=f"{ORIGIN}:80") is None
    assert origin_check(origin=f"https://{HOST}") is None  # HTTPS at a proxy, HTTP behind it
    assert origin_check(origin=f"http://{HOST}:8080", host=f"{HOST}:8080") is None
    assert origin_check(referer=f"{ORIGIN}/leza/sessions?x=1") is None
    assert origin_check(origin="https://a.trusted.example") is None
    for site in ("cross-site", "same-site", "Cross-Site"):
        found = origin_check(sec_fetch_site=site, origin=ORIGIN)
        assert found is not None
        assert "Sec-Fetch-Site" in found
    refused = {
        "another host": {"origin": EVIL},
        "a sibling": {"origin": f"http://sub.{HOST}"},
        "another port": {"origin": f"{ORIGIN}:8080"},
        "HTTP to HTTPS": {"origin": ORIGIN, "scheme": "https"},
        "null": {"origin": "null"},
        "junk": {"origin": "http://[::1"},
        "not http": {"origin": f"ftp://{HOST}"},
        "a foreign referer": {"referer": f"{EVIL}/page"},
        "Origin first": {"origin": EVIL, "referer": f"{ORIGIN}/leza"},
        "no Host": {"origin": ORIGIN, "host": ""},
        "a bad Host": {"origin": ORIGIN, "host": f"{HOST}:port"},
        "the trusted apex": {"origin": "https://trusted.example"},
        "a trusted look-alike": {"origin": "https://eviltrusted.example"},
    }
    for name, headers in refused.items():
        assert origin_check(**headers) is not None, name


def test_trusted_origins_are_checked_at_configuration(make_leza: Any) -> None:
    leza = make_leza()
    assert make_wsgi_app(leza, lambda r: True, trusted_origins=["https://a.example:8443"]).trusted
    for bad in ("admin.example", "ftp://a.example", "https://a.example/leza", "https://u@a.example",
                "https://a.example?x", "null", 5):  # fmt: skip
        with pytest.raises(LezaConfigError, match="trusted_origins"):
            make_asgi_app(leza, lambda r: True, trusted_origins=[bad])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- ASGI and WSGI


def admin_by_header(request: Any) -> str | None:
    """``authorize`` naming the admin: the identity a form's token is bound to."""
    headers = getattr(request, "headers", None)
    name = None if headers is None else headers.get("x-admin")
    return name if name in ("ada", "bob") else None


@pytest.fixture
def leza(make_leza: Any) -> Leza:
    leza: Leza = make_leza(app_name="shop")
    now = time.time_ns() // 1000
    leza.storage.write(
        [SessionEvent(id=new_event_id(now), ts=now, action="session_start", session_id=SESSION,
                      performer=Performer(id="carol", name="Carol"), ip="10.0.0.1")]
    )  # fmt: skip
    return leza


@pytest.fixture(params=["asgi", "wsgi"])
def mount(request: pytest.FixtureRequest, leza: Leza) -> Iterator[Any]:
    made = (
        AsgiMount(leza, admin_by_header)
        if request.param == "asgi"
        else WsgiMount(leza, admin_by_header)
    )
    yield made
    made.close()


def _form(token: str, **fields: str) -> bytes:
    return urlencode({"csrf_token": token, "session_id": SESSION, "confirm": "", **fields}).encode()


def test_every_rule_on_the_asgi_and_wsgi_mounts(leza: Leza, mount: Any) -> None:
    page = mount.request("GET", "/sessions", headers=[("X-Admin", "ada")])
    assert page.status == 200
    cookie = cookie_pair(page, COOKIE)
    assert cookie is not None
    set_cookie = page.header("set-cookie") or ""
    assert "HttpOnly" in set_cookie
    assert "SameSite=Strict" in set_cookie
    assert "Path=/leza" in set_cookie
    found = form_token(page.text)
    assert found is not None
    token = found[1]
    ada = [("X-Admin", "ada"), ("Cookie", cookie)]

    def post(body: bytes, headers: list[tuple[str, str]]) -> Any:
        return mount.request("POST", "/sessions/revoke", body=body, headers=headers)

    def refused(body: bytes, headers: list[tuple[str, str]], why: str) -> None:
        r = post(body, headers)
        assert r.status == 403, (why, r.status, r.text[:200])
        assert r.missing_security_headers() == [], why
        assert "Revoke this session?" not in r.text, why

    # Passes: same origin (Origin, or Referer without it, or neither for a script).
    for extra in ([("Origin", ORIGIN), ("Sec-Fetch-Site", "same-origin")],
                  [("Referer", f"{ORIGIN}/leza/sessions")], []):  # fmt: skip
        ok = post(_form(token), ada + extra)
        assert ok.status == 200, (extra, ok.text[:300])
        assert "Revoke this session?" in ok.text
        assert ok.missing_security_headers() == []
    # Refused, each for its own reason.
    refused(_form(token), [("X-Admin", "bob"), ("Cookie", cookie)], "another admin's token")
    nonce = cookie.split("=", 1)[1][:32]
    old = mount.app.csrf.issue(nonce, "ada", time.time() - TOKEN_TTL - 5)
    refused(_form(old), ada, "a token older than 2 h")
    refused(_form(""), ada, "no token")
    refused(_form(token), [("X-Admin", "ada")], "no cookie")
    chosen = f"{COOKIE}={'ab' * 32}"  # a value the client chose, token to match
    forged = mount.app.csrf.issue("ab" * 16, "ada")
    r = post(_form(forged), [("X-Admin", "ada"), ("Cookie", chosen)])
    assert r.status == 403
    assert cookie_pair(r, COOKIE) not in (None, chosen)  # replaced by one of ours
    refused(_form(token), [*ada, ("Origin", EVIL)], "a foreign Origin")
    refused(_form(token), [*ada, ("Origin", "null")], "Origin: null")
    refused(_form(token), [*ada, ("Referer", f"{EVIL}/x")], "a foreign Referer")
    refused(_form(token), [*ada, ("Origin", ORIGIN), ("Sec-Fetch-Site", "cross-site")], "xsite")
    refused(_form(token), [*ada, ("Origin", ORIGIN), ("Sec-Fetch-Site", "same-site")], "same-site")

    # The expired form asks for a reload; nothing was revoked by any of them.
    expired = post(_form(old), ada)
    assert "reload the page" in expired.text
    assert leza.sessions.get(SESSION)["active"]  # type: ignore[index]
    done = post(_form(token, confirm="1"), [*ada, ("Origin", ORIGIN)])
    assert done.status == 303
    assert done.header("location") == f"/leza/sessions?revoked={SESSION}"
    assert wait_for(lambda: not leza.sessions.get(SESSION)["active"])  # type: ignore[index]

    # Each refusal is an access event: denied, with what was wrong.
    assert leza.flush(5)
    reasons = sorted(
        e["reason"].removeprefix("Dashboard: POST /sessions/revoke refused: ")
        for e in leza.query.access(action="denied", limit=100)
        if e["reason"].startswith("Dashboard: POST")
    )
    assert reasons == sorted(
        [
            "the CSRF token was not issued to this browser and admin",
            "the CSRF token expired (older than 2 h)",
            "the CSRF token expired (older than 2 h)",
            "the CSRF token is missing",
            MISSING_COOKIE,
            MISSING_COOKIE,
            "the Origin header names another origin",
            "the Origin header is not an origin of this site",
            "the Referer header names another origin",
            "the browser says the request is cross-site (Sec-Fetch-Site)",
            "the browser says the request is same-site (Sec-Fetch-Site)",
        ]
    )


def test_trusted_origins_let_a_rewritten_host_through(leza: Leza) -> None:
    """Behind a proxy that rewrites ``Host``, the public origin is configured."""
    app = make_wsgi_app(leza, admin_by_header, trusted_origins=["https://admin.example"])
    mount = WsgiMount(leza)
    mount.app = app
    page = mount.request("GET", "/sessions", headers=[("X-Admin", "ada")])
    cookie = cookie_pair(page, COOKIE)
    found = form_token(page.text)
    assert cookie is not None
    assert found is not None
    headers = [("X-Admin", "ada"), ("Cookie", cookie)]
    body = _form(found[1])
    public = [*headers, ("Origin", "https://admin.example")]
    assert mount.request("POST", "/sessions/revoke", body=body, headers=public).status == 200
    other = [*headers, ("Origin", "https://other.example")]
    assert mount.request("POST", "/sessions/revoke", body=body, headers=other).status == 403


# ----------------------------------------------------------------------------- signed-in admins


def test_the_token_follows_the_signed_in_starlette_user(leza: Leza) -> None:
    """``authorize`` returns a bool; the identity is ``request.user.identity``."""

    def two_admins(request: Request) -> bool:
        return bool(request.user.is_authenticated and request.user.identity in ("admin", "root"))

    with TestClient(build_app(leza, authorize=two_admins)) as browser:
        browser.post("/login", data={"username": "admin"}, follow_redirects=False)
        found = form_token(browser.get("/leza/sessions").text)
        assert found is not None
        form = {"csrf_token": found[1], "session_id": SESSION, "confirm": ""}
        same = {"Origin": "http://testserver"}
        assert browser.post("/leza/sessions/revoke", data=form, headers=same).status_code == 200
        # Another admin signs in in the same browser: the first one's form is refused.
        browser.post("/login", data={"username": "root"}, follow_redirects=False)
        refused = browser.post("/leza/sessions/revoke", data=form, headers=same)
        assert refused.status_code == 403
        assert refused.headers["x-frame-options"] == "DENY"
        found = form_token(browser.get("/leza/sessions").text)
        assert found is not None
        form["csrf_token"] = found[1]
        assert browser.post("/leza/sessions/revoke", data=form, headers=same).status_code == 200


# ----------------------------------------------------------------------------- Django


@pytest.fixture(scope="module")
def _django() -> None:
    django_setup()


@pytest.fixture
def django_mount(leza: Leza, storage_url: str, tmp_path: Path, _django: None) -> Iterator[Any]:
    with django_leza(storage_url, tmp_path) as dleza:
        yield DjangoMount(enforce_csrf_checks=True), dleza


def test_django_keeps_its_csrf_check_and_adds_the_origin_check(django_mount: Any) -> None:
    from django.test import override_settings

    mount, dleza = django_mount
    page = mount.request("GET", "/sessions")
    found = form_token(page.text)
    assert found is not None
    assert found[0] == "csrfmiddlewaretoken"
    cookie = cookie_pair(page, "csrftoken")
    assert cookie is not None
    body = urlencode({found[0]: found[1], "session_id": SESSION, "confirm": ""}).encode()

    def post(data: bytes, *headers: tuple[str, str]) -> Any:
        return mount.request("POST", "/sessions/revoke", body=data, headers=headers)

    ok = post(body, ("Origin", ORIGIN), ("Sec-Fetch-Site", "same-origin"))
    assert ok.status == 200, ok.text[:300]
    assert "Revoke this session?" in ok.text
    assert post(body).status == 200  # no Origin, no Referer: Django's token decides
    refusals = {
        "no token (Django's check)": post(
            urlencode({"session_id": SESSION, "confirm": ""}).encode(), ("Origin", ORIGIN)
        ),
        "a foreign Origin": post(body, ("Origin", EVIL)),
        # Django alone checks Referer over HTTPS only, and never Sec-Fetch-Site.
        "a foreign Referer over HTTP": post(body, ("Referer", f"{EVIL}/x")),
        "Sec-Fetch-Site: cross-site": post(body, ("Sec-Fetch-Site", "cross-site")),
        "Sec-Fetch-Site: same-site": post(body, ("Sec-Fetch-Site", "same-site")),
    }
    for why, r in refusals.items():
        assert r.status == 403, (why, r.status)
        assert r.missing_security_headers() == [], why  # the dashboard's 403, not Django's
        assert "Forbidden" in r.text, why
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://admin.example"]):
        assert post(body, ("Origin", "https://admin.example")).status == 200
    assert dleza.flush(5)
    reasons = [
        e["reason"]
        for e in dleza.query.access(action="denied", limit=100)
        if e["reason"].startswith("Dashboard: POST /sessions/revoke refused")
    ]
    assert len(reasons) == len(refusals)
    assert sum("Django's CSRF check failed: CSRF token missing" in r for r in reasons) == 1
