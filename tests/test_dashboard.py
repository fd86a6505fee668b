"""The admin view on real apps: FastAPI (ASGI mount), Flask (WSGI mount) and Django.

Events are recorded through the real middleware into a SQLite file (tmp_path),
or, where a test needs times it controls (FROM/TO, pagination), written with
those times through the same storage. Each framework gets: every tab rendered
from recorded data, the filters, the JSON API, 403 without data, the revoke
flow (POST + CSRF + confirmation, then the session is refused and the
revocation is in AUDIT), and the dashboard's own views in ACCESS.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from dashboard_app import build_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaConfigError, Performer
from leza_middleware.dashboard import make_asgi_app, make_wsgi_app, pages, tabs
from leza_middleware.dashboard.guard import DENIED_REASON
from leza_middleware.events import AccessEvent, us_from_iso
from leza_middleware.ids import new_event_id

# The same behaviour on both SQL backends (tests/conftest.py: storage_url).
pytestmark = pytest.mark.both_databases

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
FRANKFURT_IP = "161.35.214.167"  # in tests/mmdb_factory.py's city database
LONDON_IP = "81.2.69.142"
TABS = ("access", "sessions", "audit", "advisories", "logs")
API = ("access", "sessions", "audit", "advisories", "logs")


# ----------------------------------------------------------------------------- helpers


def flush(leza: Leza) -> None:
    assert leza.flush(5)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def ids_in(page: str) -> list[str]:
    """The ``_id`` of each row, from its MORE DETAILS JSON (escaped in the page)."""
    return re.findall(r"&quot;_id&quot;: &quot;([^&]+)&quot;", page)


def older_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', page)
    return None if found is None else html.unescape(found.group(1))


def summary(page: str) -> str:
    found = re.search(r'<p class="summary">(.*?)</p>', page, re.S)
    assert found, "no summary line"
    return re.sub(r"<[^>]+>", "", found.group(1))


def access_at(
    iso: str,
    *,
    action: str = "access",
    path: str = "/items/1",
    performer: str | None = None,
    status: int = 200,
    n: int = 0,
) -> AccessEvent:
    """An access event at a time the test chooses (written through the storage)."""
    ts = us_from_iso(iso)
    return AccessEvent.build(
        id=f"{new_event_id(ts)[:-6]}{n:06d}",
        ts=ts,
        action=action,
        method="GET",
        endpoint=path,
        route=path,
        status=status,
        duration_us=1500,
        outcome="success" if status < 400 else "denied",
        reason=f"reason {n}",
        request_id=f"req-{n}",
        client_ip="10.0.0.1",
        ip_valid=True,
        peer_ip="10.0.0.1",
        performer=None if performer is None else Performer(id=performer, name=performer.title()),
    )


def sign_in(client: Any, name: str) -> None:
    r = client.post("/login", data={"username": name}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.fixture
def leza(make_leza: Any) -> Leza:
    leza: Leza = make_leza(app_name="shop")
    return leza


@pytest.fixture
def app(leza: Leza) -> Any:
    return build_app(leza)


@pytest.fixture
def admin(app: Any) -> Iterator[TestClient]:
    with TestClient(app, client=(LONDON_IP, 50000)) as client:
        sign_in(client, "admin")
        yield client


@pytest.fixture
def bob(app: Any) -> Iterator[TestClient]:
    with TestClient(app, client=(FRANKFURT_IP, 50001), headers={"user-agent": CHROME}) as client:
        sign_in(client, "bob")
        yield client


# ----------------------------------------------------------------------------- FastAPI


def test_every_tab_renders_recorded_events(leza: Leza, admin: TestClient, bob: Any) -> None:
    assert bob.get("/items/42?token=s3cr3t").status_code == 200
    assert bob.post("/items/42/rename", data={"name": "Blue chair"}).status_code == 200
    flush(leza)

    access = admin.get("/leza/access")
    assert access.status_code == 200
    assert access.headers["content-type"] == "text/html; charset=utf-8"
    page = access.text
    for column in (
        "TIME",
        "ACTION",
        "ENDPOINT",
        "TYPE",
        "REASON",
        "STATUS",
        "PERFORMER",
        "LOCATION",
        "DEVICE",
    ):
        assert f"<th>{column}</th>" in page
    assert "/items/42?token=[Filtered]" in page
    assert "s3cr3t" not in page
    assert "Bob Builder" in page
    assert "Frankfurt am Main, Germany" in page  # geo of bob's address
    assert "Chrome 124.0 · Windows 10 · desktop" in page
    assert "User logged in" in page  # the login's reason
    assert '<span class="badge a-login">login</span>' in page
    assert re.search(
        r'<time class="rel" datetime="[^"]+" title="\d{4}-\d\d-\d\d [\d:]+ UTC">'
        r"(JUST NOW|1 MINUTE AGO)</time>",
        page,
    )
    assert "<summary>MORE DETAILS</summary>" in page
    assert "&quot;geoLocationInfoOfIp&quot;" in page  # the full event JSON

    sessions = admin.get("/leza/sessions").text
    for column in (
        "STATE",
        "PERFORMER",
        "DEVICE",
        "LOCATION",
        "IP",
        "MACHINE ID",
        "STARTED",
        "LAST SEEN",
    ):
        assert f"<th>{column}</th>" in sessions
    assert "Bob Builder" in sessions
    assert "Ada Admin" in sessions
    assert FRANKFURT_IP in sessions
    assert sessions.count('<span class="badge a-active">active</span>') == 2
    assert sessions.count("REVOKE</button>") == 2

    audit = admin.get("/leza/audit").text
    for column in ("TIME", "ACTOR", "ACTION", "ENTITY", "CHANGES", "REASON"):
        assert f"<th>{column}</th>" in audit
    assert "<code>item</code> #<code>42</code>" in audit
    assert "<b>name</b>: <code>item 42</code> &rarr; <code>Blue chair</code>" in audit
    assert "<b>price</b>: <code>10</code> &rarr; <code>12</code>" in audit
    assert "Bob Builder" in audit  # the actor: the request's signed-in user
    # The chain is verified off the request path; a later view shows the result.
    assert wait_for(lambda: "CHAIN INTACT" in admin.get("/leza/audit").text)

    for slug in ("advisories", "logs"):
        r = admin.get(f"/leza/{slug}")
        assert r.status_code == 200
        if tabs.recorded(leza, tabs.TABS_BY_SLUG[slug]):  # kinds a later version records
            assert '<table class="rows' in r.text
        else:
            assert "recorded yet" in r.text

    assert admin.get("/leza/", follow_redirects=False).headers["location"] == "/leza/state"
    assert admin.get("/leza/nope").status_code == 404


def test_counts_and_capped_counts(
    leza: Leza, admin: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    leza.storage.write([access_at(f"2025-01-10T10:00:{i:02d}Z", n=i) for i in range(30)])
    page = admin.get("/leza/access?from=2025-01-01&to=2025-01-31").text
    assert summary(page) == "30 requests from 2025-01-01 to 2025-01-31"
    monkeypatch.setattr(tabs, "COUNT_CAP", 20)
    monkeypatch.setattr(pages, "COUNT_CAP", 20)
    page = admin.get("/leza/access?from=2025-01-01&to=2025-01-31").text
    assert summary(page) == "20+ requests from 2025-01-01 to 2025-01-31"


def test_from_to_action_and_performer_filters(leza: Leza, admin: TestClient) -> None:
    leza.storage.write(
        [
            access_at("2025-01-10T12:00:00Z", path="/a", performer="bob", n=1),
            access_at("2025-01-15T00:00:00Z", path="/b", performer="bob", n=2),
            access_at(
                "2025-01-15T23:59:59.999Z",
                path="/c",
                performer="carol",
                action="denied",
                status=403,
                n=3,
            ),
            access_at(
                "2025-01-20T08:00:00Z",
                path="/d",
                performer="carol",
                action="denied",
                status=403,
                n=4,
            ),
        ]
    )

    def paths(query: str) -> list[str]:
        r = admin.get(f"/leza/api/access?{query}")
        assert r.status_code == 200, r.text
        return [e["endpoint"] for e in r.json()["items"]]

    # TO as a date includes that whole day; FROM/TO are inclusive; newest first.
    assert paths("from=2025-01-15&to=2025-01-15") == ["/c", "/b"]
    assert paths("from=2025-01-15T12:00:00Z&to=2025-01-20") == ["/d", "/c"]
    assert paths("from=2025-01-01&to=2025-01-31&action=denied") == ["/d", "/c"]
    assert paths("from=2025-01-01&to=2025-01-31&performer=bob") == ["/b", "/a"]
    assert paths("from=2025-01-01&to=2025-01-31&performer=bob&action=denied") == []
    # The default period is the last 30 days: January 2025 is not in it.
    assert not any(p in ("/a", "/b", "/c", "/d") for p in paths(""))

    # The HTML view filters the same way and shows its filters back in the form.
    page = admin.get("/leza/access?from=2025-01-15&to=2025-01-20&action=denied").text
    assert [html.unescape(p) for p in re.findall(r'<code title="[^"]*">([^<]*)</code>', page)] == [
        "/d",
        "/c",
    ]
    assert '<input type="date" name="from" value="2025-01-15">' in page
    assert '<input type="date" name="to" value="2025-01-20">' in page
    assert 'name="action" value="denied"' in page
    assert summary(page) == "2 requests from 2025-01-15 to 2025-01-20"
    # Switching tabs keeps the period (a shareable URL), not the tab's action.
    assert 'href="/leza/sessions?from=2025-01-15&amp;to=2025-01-20"' in page

    bad = admin.get("/leza/access?from=yesterday")
    assert bad.status_code == 400
    assert "from: not an ISO 8601 date" in bad.text
    api = admin.get("/leza/api/access?limit=0")
    assert api.status_code == 400
    message = "limit must be a whole number from 1 to 1000"
    assert api.json() == {"error": message, "field": "limit", "detail": message}
    assert admin.get("/leza/api/access?cursor=nonsense").status_code == 400


def test_keyset_pagination_has_no_duplicates_or_gaps(leza: Leza, admin: TestClient) -> None:
    events = []
    for i in range(130):
        # Pairs of events share a timestamp: the (ts, id) keyset must split them right.
        iso = f"2025-02-{1 + i // 20:02d}T10:{(i % 20) // 2:02d}:00Z"
        events.append(access_at(iso, action="denied" if i % 3 == 0 else "access", n=i))
    leza.storage.write(events)
    expected = [e.id for e in sorted(events, key=lambda e: (e.ts, e.id), reverse=True)]

    # The HTML pager: follow "OLDER" from the first page to the last.
    seen: list[str] = []
    url: str | None = "/leza/access?from=2025-02-01&to=2025-02-28&limit=25"
    pages_read = 0
    while url is not None:
        page = admin.get(url).text
        assert summary(page).startswith("130 requests")
        seen += ids_in(page)
        url = older_link(page)
        pages_read += 1
    assert pages_read == 6
    assert seen == expected  # every event once, newest first

    # The JSON API's cursor, with an action filter on top.
    seen = []
    cursor = ""
    while True:
        body = admin.get(
            "/leza/api/access",
            params={
                "from": "2025-02-01",
                "to": "2025-02-28",
                "action": "denied",
                "limit": "7",
                "cursor": cursor,
            },
        ).json()
        assert len(body["items"]) <= 7
        seen += [e["_id"] for e in body["items"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    denied = [
        e.id
        for e in sorted(events, key=lambda e: (e.ts, e.id), reverse=True)
        if e.action == "denied"
    ]
    assert seen == denied
    assert len(denied) == 44


def test_json_api_of_every_kind_with_filters(leza: Leza, admin: TestClient, bob: Any) -> None:
    bob.post("/items/7/rename", data={"name": "Lamp"})
    bob.get("/me")
    carol = TestClient(admin.app)
    sign_in(carol, "carol")
    carol.post("/logout")
    flush(leza)
    now = "from=2020-01-01&to=2100-01-01"

    def api(kind: str, query: str = "") -> dict[str, Any]:
        r = admin.get(f"/leza/api/{kind}?{now}&{query}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body: dict[str, Any] = r.json()
        assert set(body) == {"items", "next_cursor", "recorded"}
        return body

    access = api("access", "performer=bob")["items"]
    assert {e["performer"]["id"] for e in access} == {"bob"}
    assert [e["endpoint"] for e in access] == ["/me", "/items/7/rename", "/login"]
    assert access[-1]["action"] == "login"
    assert access[0]["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert [e["action"] for e in api("access", "action=logout")["items"]] == ["logout"]

    sessions = api("sessions")["items"]
    assert {s["performer"]["id"] for s in sessions} == {"admin", "bob", "carol"}
    assert sessions[0].keys() >= {
        "_id",
        "browser",
        "os",
        "device",
        "bot",
        "ip",
        "geoLocationInfoOfIp",
        "machine_identifier",
        "performer",
        "session_start",
    }
    active = api("sessions", "action=active")["items"]
    assert {s["performer"]["id"] for s in active} == {"admin", "bob"}
    ended = api("sessions", "action=ended")["items"]
    assert [(s["performer"]["id"], s["end_reason"]) for s in ended] == [("carol", "logout")]
    assert [s["performer"]["id"] for s in api("sessions", "performer=bob")["items"]] == ["bob"]
    assert admin.get("/leza/api/sessions?action=banana").status_code == 400

    audit = api("audit", "action=update&performer=bob")["items"]
    assert [(a["entity_type"], a["entity_id"], a["actor"]["id"]) for a in audit] == [
        ("item", "7", "bob")
    ]
    assert audit[0]["diff"]["name"] == {"before": "item 7", "after": "Lamp"}
    assert api("audit", "action=delete")["items"] == []
    assert api("audit", "performer=carol")["items"] == []

    for kind in ("advisories", "logs"):
        assert api(kind)["recorded"] is tabs.recorded(leza, tabs.TABS_BY_SLUG[kind])
    assert api("access")["recorded"] is True


def test_kinds_not_recorded_say_so(
    leza: Leza, admin: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage without a place for advisories or logs: an honest empty state, no error."""
    stores = leza.storage.stores
    monkeypatch.setattr(
        leza.storage, "stores", lambda kind: kind not in ("advisory", "log") and stores(kind)
    )
    for slug, noun in (("advisories", "advisories"), ("logs", "log records")):
        r = admin.get(f"/leza/{slug}?action=x&performer=y")
        assert r.status_code == 200
        assert f"No {noun} recorded yet." in r.text
        assert "<table" not in r.text  # no empty table that reads as "nothing happened"
        assert 'rel="next"' not in r.text
        api = admin.get(f"/leza/api/{slug}")
        assert api.json() == {"items": [], "next_cursor": None, "recorded": False}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_advisory_and_log_rows(make_leza: Any, backend: str) -> None:
    """ADVISORY and LOG over stored records (on SQL once it has their tables)."""
    from leza_middleware import events
    from leza_middleware.storage import MemoryStorage

    advisory_type = getattr(events, "AdvisoryEvent", None)
    log_type = getattr(events, "LogEvent", None)
    if advisory_type is None or log_type is None:
        pytest.skip("this version has no advisory or log records")
    leza = make_leza(**({"storage": MemoryStorage()} if backend == "memory" else {}))
    if not (leza.storage.stores("advisory") and leza.storage.stores("log")):
        pytest.skip(f"{backend} storage keeps no advisories or log records in this version")
    admin = TestClient(Starlette(routes=[Mount("/leza", make_asgi_app(leza, lambda r: True))]))
    ts = us_from_iso("2025-04-04T04:04:04Z")
    leza.storage.write(
        [
            advisory_type(
                id=new_event_id(ts),
                ts=ts,
                rule="impossible_travel",
                severity="high",
                message=f"bob signed in from Frankfurt then Sydney {XSS}",
                evidence=["a", "b"],
                performer_id="bob",
                ip=FRANKFURT_IP,
            ),
            log_type(
                id=new_event_id(ts + 1),
                ts=ts + 1,
                level=40,
                logger="shop.orders",
                message="payment failed",
                request_id="req-77",
                performer_id="bob",
                route="/pay",
            ),
        ]
    )
    period = "from=2025-04-01&to=2025-04-30"
    page = admin.get(f"/leza/advisories?{period}&action=impossible_travel").text
    assert "<code>impossible_travel</code>" in page
    assert '<span class="badge a-error">high</span>' in page
    assert f"bob signed in from Frankfurt then Sydney {XSS_ESCAPED}" in page
    assert XSS not in page
    assert "2 events" in page
    page = admin.get(f"/leza/logs?{period}&action=error&performer=bob").text
    assert "payment failed" in page
    assert "<code>shop.orders</code>" in page
    assert "<code>req-77</code>" in page
    assert admin.get(f"/leza/api/logs?{period}&action=info").json()["items"] == []
    [item] = admin.get(f"/leza/api/advisories?{period}&performer=bob").json()["items"]
    assert item["severity"] == "high"


def test_unauthorised_viewers_get_403_without_data(leza: Leza, app: Any, bob: Any) -> None:
    bob.get("/items/42")
    flush(leza)
    anonymous = TestClient(app)
    for client in (anonymous, bob):
        for slug in TABS:
            r = client.get(f"/leza/{slug}")
            assert r.status_code == 403
            assert "You are not allowed to see this page." in r.text
            for secret in (
                "/items/42",
                "Bob Builder",
                "bob@example.com",
                FRANKFURT_IP,
                "<table",
                "csrf_token",
                "leza_dash_csrf",
            ):
                assert secret not in r.text
            assert "set-cookie" not in r.headers
        for kind in API:
            r = client.get(f"/leza/api/{kind}?from=2020-01-01")
            assert r.status_code == 403
            text = "You are not allowed to see this page."
            assert r.json() == {"error": text, "detail": text}
        assert (
            client.post("/leza/sessions/revoke", data={"session_id": "x" * 32}).status_code == 403
        )
    flush(leza)
    assert leza.sessions.active(performer_id="bob")  # nothing was revoked
    denied = leza.query.access(action="denied")
    assert {e["endpoint"].split("?")[0] for e in denied} >= {f"/leza/{s}" for s in TABS}
    assert {e["reason"] for e in denied} == {DENIED_REASON}


def test_authorize_hooks(make_leza: Any, caplog: pytest.LogCaptureFixture) -> None:
    leza = make_leza()
    seen: list[Any] = []

    async def async_hook(request: Request) -> bool:
        seen.append(request)
        return request.headers.get("x-admin") == "yes"

    def raising(request: Request) -> bool:
        raise RuntimeError("the user service is down")

    def app(authorize: Any) -> Starlette:
        return Starlette(routes=[Mount("/leza", make_asgi_app(leza, authorize=authorize))])

    with TestClient(app(async_hook)) as client:
        assert client.get("/leza/access", headers={"x-admin": "yes"}).status_code == 200
        assert client.get("/leza/access").status_code == 403
    assert all(isinstance(r, Request) for r in seen)
    assert len(seen) == 2
    with TestClient(app(raising)) as client:
        r = client.get("/leza/access")
        assert r.status_code == 403
        assert "user service" not in r.text  # logged, never shown
    assert "the authorize hook raised" in caplog.text
    with TestClient(app(None)) as client:  # no hook: nobody gets in
        assert client.get("/leza/access").status_code == 403
    assert "every request is refused" in caplog.text
    with pytest.raises(LezaConfigError, match="authorize must be a callable"):
        make_asgi_app(leza, authorize="yes")  # type: ignore[arg-type]


def test_revoke_needs_post_csrf_and_confirmation(leza: Leza, admin: TestClient, bob: Any) -> None:
    assert bob.get("/me").status_code == 200
    flush(leza)
    [session] = leza.sessions.active(performer_id="bob")
    sid = session["_id"]

    page = admin.get("/leza/sessions").text
    token = csrf_of(page)
    assert f'name="session_id" value="{sid}"' in page
    form = {"csrf_token": token, "session_id": sid, "back": "action=active", "confirm": "1"}

    # Not a GET; not without the token; not with another; not from another site.
    assert admin.get(f"/leza/sessions/revoke?session_id={sid}").status_code == 405
    assert admin.post("/leza/sessions/revoke", data={**form, "csrf_token": ""}).status_code == 403
    assert (
        admin.post("/leza/sessions/revoke", data={**form, "csrf_token": "0" * 64}).status_code
        == 403
    )
    cross = admin.post("/leza/sessions/revoke", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    # A token without its cookie (another browser's form) is refused too.
    with TestClient(admin.app, client=(LONDON_IP, 50002)) as other:
        sign_in(other, "admin")
        assert other.post("/leza/sessions/revoke", data=form).status_code == 403
    assert bob.get("/me").status_code == 200

    # Without confirm=1 the server asks first (the no-JavaScript path).
    asked = admin.post("/leza/sessions/revoke", data={**form, "confirm": ""})
    assert asked.status_code == 200
    assert "<h1>Revoke this session?</h1>" in asked.text
    assert "Bob Builder, Chrome on Windows, from Frankfurt am Main, Germany" in asked.text
    assert '<input type="hidden" name="confirm" value="1">' in asked.text
    assert f'name="session_id" value="{sid}"' in asked.text
    assert bob.get("/me").status_code == 200
    flush(leza)
    assert leza.sessions.get(sid)["active"] is True  # type: ignore[index]

    done = admin.post("/leza/sessions/revoke", data=form, follow_redirects=False)
    assert done.status_code == 303
    # Back to the SESSION tab with the filters it had (re-validated: the default period).
    location = done.headers["location"]
    assert re.fullmatch(
        rf"/leza/sessions\?from=[\d-]+&to=[\d-]+&action=active&revoked={sid}", location
    ), location
    shown = admin.get(location).text
    assert f"Session <code>{sid}</code> was revoked." in shown
    assert f'value="{sid}"' not in shown  # gone from the active list

    # The revoked session's next request is refused.
    assert wait_for(lambda: bob.get("/me").status_code == 401)
    flush(leza)
    record = leza.sessions.get(sid)
    assert record is not None
    assert record["end_reason"] == "revoked"
    assert not record["active"]
    [audit] = leza.query.audit(action="revoke")
    assert (audit["entity_type"], audit["entity_id"]) == ("session", sid)
    assert audit["actor"]["id"] == "admin"
    assert audit["diff"]["end_reason"] == {"before": None, "after": "revoked"}
    assert audit["reason"] == "Revoked from the Leza dashboard"
    [access] = leza.query.access(action="revoke")
    assert access["endpoint"] == "/leza/sessions/revoke"
    assert access["performer"]["id"] == "admin"
    assert sid in access["reason"]
    assert audit["request_id"] == access["request_id"]
    refused = [
        e["reason"]
        for e in leza.query.access(action="denied")
        if e["reason"].startswith("Dashboard: POST /sessions/revoke refused: ")
    ]
    assert len(refused) == 4
    assert sum("CSRF" in r for r in refused) == 3
    assert sum("Sec-Fetch-Site" in r for r in refused) == 1

    # Revoking it again changes nothing and says so.
    again = admin.post("/leza/sessions/revoke", data=form, follow_redirects=False)
    assert again.headers["location"] == location.replace("revoked=", "gone=")
    flush(leza)
    assert len(leza.query.audit(action="revoke")) == 1


def test_dashboard_views_are_recorded_as_access_events(leza: Leza, admin: TestClient) -> None:
    for slug in TABS:
        assert admin.get(f"/leza/{slug}?performer=bob").status_code == 200
    assert admin.get("/leza/api/access?action=login").status_code == 200
    flush(leza)
    views = [e for e in leza.query.access() if e["endpoint"].startswith("/leza/")]
    endpoints = sorted(e["endpoint"] for e in views)
    # One event per view: the host's middleware records it, the mount does not again.
    assert endpoints == sorted(
        [f"/leza/{s}?performer=bob" for s in TABS] + ["/leza/api/access?action=login"]
    )
    assert {e["performer"]["id"] for e in views} == {"admin"}
    assert {e["action"] for e in views} == {"access"}


def test_a_mount_without_the_host_middleware_records_its_views(make_leza: Any) -> None:
    leza = make_leza()
    app = Starlette(routes=[Mount("/ops/leza", make_asgi_app(leza, authorize=lambda r: True))])
    with TestClient(app) as client:
        page = client.get("/ops/leza/access").text
        assert 'href="/ops/leza/sessions?' in page  # links under the mount
        assert client.get("/ops/leza/api/audit").status_code == 200
    flush(leza)
    assert sorted(e["endpoint"] for e in leza.query.access()) == [
        "/ops/leza/access",
        "/ops/leza/api/audit",
    ]


def test_recorded_script_tags_render_inert(leza: Leza, app: Any, admin: TestClient) -> None:
    with TestClient(app, headers={"user-agent": XSS}) as attacker:
        attacker.get("/items/1")
        attacker.get(f"/{XSS}")
        sign_in(attacker, XSS)  # a performer name and a session
    flush(leza)
    for url in ("/leza/access", "/leza/sessions", f"/leza/access?performer={XSS}"):
        r = admin.get(url)
        assert r.status_code == 200
        assert XSS not in r.text, url
        assert XSS_ESCAPED in r.text, url
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert (
        f'name="performer" value="{XSS_ESCAPED}"' in admin.get(f"/leza/access?performer={XSS}").text
    )
    api = admin.get("/leza/api/access").text
    assert "<script>" not in api
    assert "\\u003cscript\\u003e" in api
    assert any(e["user_agent"] == XSS for e in json.loads(api)["items"])


# ----------------------------------------------------------------------------- Flask


@pytest.fixture
def flask_app(make_leza: Any) -> Any:
    from flask import Flask, session
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.wrappers import Request as WerkzeugRequest

    leza = make_leza(app_name="flask-shop")
    app = Flask(__name__)
    app.secret_key = "flask-dashboard-tests"
    leza.init_app(app)
    app.config["requests_seen"] = []

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        leza.sessions.login(Performer(id=name, name=name.title()))
        return "in"

    @app.get("/page")
    def page() -> str:
        return f"hello {session.get('user')}"

    def authorize(request: WerkzeugRequest) -> bool:
        app.config["requests_seen"].append(request)
        return request.headers.get("X-Admin") == "yes"

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/leza": make_wsgi_app(leza, authorize=authorize)}
    )
    app.config["leza"] = leza
    return app


def test_flask_mount(flask_app: Any) -> None:
    from werkzeug.wrappers import Request as WerkzeugRequest

    leza: Leza = flask_app.config["leza"]
    bob = flask_app.test_client()
    bob.environ_base["HTTP_USER_AGENT"] = FIREFOX
    assert bob.post("/login/bob").status_code == 200
    assert bob.get("/page").text == "hello bob"
    leza.storage.write([access_at("2025-03-03T03:03:03Z", path="/old", action="denied", n=9)])
    flush(leza)
    admin = flask_app.test_client()
    headers = {"X-Admin": "yes"}

    for slug in TABS:
        r = admin.get(f"/leza/{slug}", headers=headers)
        assert r.status_code == 200, (slug, r.text[:300])
    page = admin.get("/leza/access", headers=headers).text
    assert "/page" in page, page
    assert "Firefox 125.0 · GNU/Linux · desktop" in page
    assert "Bob" in page
    assert 'href="/leza/sessions?' in page  # links under SCRIPT_NAME
    assert isinstance(flask_app.config["requests_seen"][0], WerkzeugRequest)

    old = admin.get(
        "/leza/api/access?from=2025-03-01&to=2025-03-31&action=denied", headers=headers
    ).get_json()
    assert [e["endpoint"] for e in old["items"]] == ["/old"]
    body = admin.get("/leza/api/sessions?action=active&performer=bob", headers=headers).get_json()
    [session] = body["items"]
    sid = session["_id"]

    for slug in TABS:
        r = flask_app.test_client().get(f"/leza/{slug}")
        assert r.status_code == 403
        assert "/page" not in r.text
        assert "Bob" not in r.text
    text = "You are not allowed to see this page."
    assert flask_app.test_client().get("/leza/api/access").get_json() == {
        "error": text,
        "detail": text,
    }

    token = csrf_of(admin.get("/leza/sessions", headers=headers).text)
    form = {"csrf_token": token, "session_id": sid, "confirm": "1"}
    assert (
        admin.post(
            "/leza/sessions/revoke", data={**form, "csrf_token": "f" * 64}, headers=headers
        ).status_code
        == 403
    )
    asked = admin.post("/leza/sessions/revoke", data={**form, "confirm": ""}, headers=headers)
    assert asked.status_code == 200
    assert "Revoke this session?" in asked.text
    done = admin.post("/leza/sessions/revoke", data=form, headers=headers)
    assert done.status_code == 303
    assert done.headers["Location"] == f"/leza/sessions?revoked={sid}"
    assert wait_for(lambda: bob.get("/page").status_code == 401)
    flush(leza)
    [audit] = leza.query.audit(action="revoke")
    assert audit["entity_id"] == sid
    views = [e for e in leza.query.access() if e["endpoint"].startswith("/leza/")]
    assert {"access", "denied", "revoke"} <= {e["action"] for e in views}


# ----------------------------------------------------------------------------- Django


@pytest.fixture(scope="module")
def _django() -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture
def django_leza(_django: None, tmp_path: Path) -> Iterator[Leza]:
    from django.test import override_settings

    from leza_middleware.django import get_leza

    conf = {
        "storage": f"sqlite:///{tmp_path / 'django.db'}",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "app_name": "djangoproject",
    }
    with override_settings(LEZA=conf):
        instance = get_leza()
        yield instance
    instance.shutdown(timeout=2)


def _user(name: str, *, staff: bool) -> Any:
    from django.contrib.auth.models import User

    user, _ = User.objects.get_or_create(username=name)
    user.is_staff = staff
    user.set_password("pw-" + name)
    user.save()
    return user


def test_django_mount_staff_only(django_leza: Leza) -> None:
    from django.test import Client

    _user("dash-staff", staff=True)
    _user("dash-plain", staff=False)
    visitor = Client(headers={"user-agent": CHROME})
    assert (
        visitor.post("/login/", {"username": "dash-plain", "password": "pw-dash-plain"}).status_code
        == 200
    )
    visitor.get("/items/5/")
    flush(django_leza)

    staff = Client()
    staff.force_login(_user("dash-staff", staff=True))
    for slug in TABS:
        r = staff.get(f"/leza/{slug}")
        assert r.status_code == 200, (slug, r.content[:300])
    page = staff.get("/leza/access").content.decode()
    assert "/items/5/" in page
    assert "dash-plain" in page
    assert "Chrome 124.0" in page
    assert 'href="/leza/sessions?' in page
    body = staff.get("/leza/api/access?action=login").json()
    assert [e["performer"]["name"] for e in body["items"]] == ["dash-plain"]
    sessions = staff.get("/leza/api/sessions?action=active").json()["items"]
    assert "dash-plain" in {s["performer"]["name"] for s in sessions}

    for client in (Client(), visitor):  # anonymous, and signed in but not staff
        for slug in TABS:
            r = client.get(f"/leza/{slug}")
            assert r.status_code == 403
            assert b"/items/5/" not in r.content
            assert b"dash-plain" not in r.content
        assert client.get("/leza/api/sessions").status_code == 403
    flush(django_leza)
    views = [e for e in django_leza.query.access() if e["endpoint"].startswith("/leza/")]
    assert {e["action"] for e in views} == {"access", "denied"}
    assert len([e for e in views if e["action"] == "access"]) == len(TABS) + 3


def test_django_revoke_uses_django_csrf(django_leza: Leza) -> None:
    from django.test import Client

    _user("dash-bob", staff=False)
    bob = Client(headers={"user-agent": FIREFOX})
    bob.post("/login/", {"username": "dash-bob", "password": "pw-dash-bob"})
    assert bob.get("/me/").status_code == 200
    flush(django_leza)
    sid = next(
        s["_id"] for s in django_leza.sessions.active() if s["performer"]["name"] == "dash-bob"
    )

    staff = Client(enforce_csrf_checks=True)
    staff.force_login(_user("dash-staff", staff=True))
    page = staff.get("/leza/sessions").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "no Django CSRF token in the revoke form"
    form = {"session_id": sid, "confirm": "1"}
    assert staff.post("/leza/sessions/revoke", form).status_code == 403  # Django's CSRF check
    assert bob.get("/me/").status_code == 200
    asked = staff.post(
        "/leza/sessions/revoke", {**form, "confirm": "", "csrfmiddlewaretoken": token.group(1)}
    )
    assert asked.status_code == 200
    assert b"Revoke this session?" in asked.content
    done = staff.post("/leza/sessions/revoke", {**form, "csrfmiddlewaretoken": token.group(1)})
    assert done.status_code == 303
    assert done["Location"] == f"/leza/sessions?revoked={sid}"
    assert wait_for(lambda: bob.get("/me/").status_code == 401)
    flush(django_leza)
    [audit] = django_leza.query.audit(action="revoke")
    assert audit["entity_id"] == sid
    assert audit["actor"]["name"] == "dash-staff"


def test_django_authorize_setting(django_leza: Leza, tmp_path: Path) -> None:
    from django.test import Client, override_settings

    from leza_middleware.django import get_leza

    conf = {
        "storage": f"sqlite:///{tmp_path / 'hook.db'}",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill-hook"),
        "dashboard_authorize": "djangoproject.identity.dashboard_by_header",
    }
    with override_settings(LEZA=conf):
        leza = get_leza()
        try:
            assert Client().get("/leza/access").status_code == 403
            assert (
                Client().get("/leza/access", headers={"X-Dashboard": "let-me-in"}).status_code
                == 200
            )
        finally:
            leza.shutdown(timeout=2)


# ----------------------------------------------------------------------------- availability


def test_health_is_open_and_availability_is_authorized(make_leza: Any) -> None:
    leza: Leza = make_leza(app_name="shop", advisories=False)
    healthy = {"queue": True}
    leza.availability.check("queue", lambda: healthy["queue"], interval=0.05, timeout=0.05,
                            retries=2)  # fmt: skip
    app = Starlette(routes=[Mount("/leza", make_asgi_app(leza, authorize=_header_admin))])
    with TestClient(app) as client:
        live = client.get("/leza/health/live")
        assert live.status_code == 200
        assert live.json()["status"] == "ok"
        ready_checks = lambda: client.get("/leza/health/ready").json()["checks"]  # noqa: E731
        assert wait_for(lambda: ready_checks() == {"queue": "up"})
        assert client.get("/leza/health/ready").status_code == 200

        healthy["queue"] = False
        assert wait_for(lambda: client.get("/leza/health/ready").status_code == 503)
        ready = client.get("/leza/health/ready").json()
        assert ready["status"] == "not_ready"
        assert ready["down"] == ["queue"]

        assert client.get("/leza/api/availability").status_code == 403
        flush(leza)
        body = client.get("/leza/api/availability", headers={"x-admin": "yes"}).json()
        assert body["status"]["queue"]["state"] == "down"
        assert body["items"]
        assert {p["check"] for p in body["items"]} == {"queue"}
        changes = client.get(
            "/leza/api/availability?action=state_change&performer=queue",
            headers={"x-admin": "yes"},
        ).json()["items"]
        assert [(c["previous"], c["state"]) for c in changes] == [
            ("up", "down"),
            ("unknown", "up"),
        ]
        none = client.get(
            "/leza/api/availability?performer=elsewhere", headers={"x-admin": "yes"}
        ).json()
        assert none["items"] == []


def _header_admin(request: Request) -> bool:
    return request.headers.get("x-admin") == "yes"


def test_health_on_the_wsgi_and_django_mounts(make_leza: Any, django_leza: Leza) -> None:
    from django.test import Client
    from werkzeug.test import Client as WerkzeugClient

    leza: Leza = make_leza(app_name="flask-shop")
    wsgi = WerkzeugClient(make_wsgi_app(leza, authorize=lambda request: False))
    r = wsgi.get("/health/live")
    assert r.status_code == 200
    assert r.json is not None
    assert r.json["status"] == "ok"
    assert wsgi.get("/health/ready").status_code == 200
    assert wsgi.get("/access").status_code == 403  # the rest stays closed

    anonymous = Client()
    r = anonymous.get("/leza/health/ready")
    assert r.status_code == 200
    assert json.loads(r.content)["status"] == "ready"
    assert anonymous.get("/leza/api/availability").status_code == 403
