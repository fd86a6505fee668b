"""Traceability end to end (issue 15), on traffic made through a real app.

tests/trace_scenario.py plays sign-ins, changes, a refused report, a failed
login, a move from Frankfurt to London, a second device in Linköping and a
sign-out through tests/dashboard_app.py under uvicorn, once per database
(SQLite file and PostgreSQL schema). Then an admin reads it back through the
dashboard over HTTP, and each view is checked against what was recorded:

* the request view holds the access event and the request's audit and log
  records, in time order; an advisory is on the view of the request that
  raised it;
* the session view: its card, every request (newest first, paged with a
  strict cursor), the change made in it, where it was seen from (first
  Frankfurt, then London);
* the performer view: sessions active first, devices, machine ids, countries
  with first and last time, the denied request and the failed login, the
  changes, the advisories;
* the entity history: every change, oldest first, each intact, actors and
  requests linked, paged;
* permalinks, and links on every tab that lead to 200s;
* the JSON API, ``leza.trace`` and ``leza trace --json`` are the same dicts;
* unknown or malformed ids are 404 pages (HTML and JSON) with the security
  headers; revoking from the views (one session, or all of a performer's) is
  confirmed, CSRF-checked and audited.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from conftest import postgres_schema
from dashboard_mounts import SECURITY
from mmdb_factory import FRANKFURT_IP, LONDON_IP
from trace_scenario import SECRET_TOKEN, Played, make_site_leza, play, serve, stop

from leza_middleware import Leza
from leza_middleware.cli import build_parser, execute
from leza_middleware.cli.common import Context

DASH = "/leza"


class Site:
    def __init__(self, leza: Leza, url: str, played: Played, admin: httpx.Client) -> None:
        self.leza = leza
        self.url = url
        self.played = played
        self.admin = admin

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.admin.get(DASH + path, params=params or None)

    def api(self, path: str, **params: str) -> Any:
        r = self.get("/api" + path, **params)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, city_db: Path
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"trace-{request.param}")
    if request.param == "sqlite":
        yield from _site(f"sqlite:///{tmp / 'leza.db'}", city_db, tmp)
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield from _site(url, city_db, tmp)


def _site(storage: str, city_db: Path, tmp: Path) -> Iterator[Site]:
    leza = make_site_leza(storage, city_db, tmp)
    served = serve(leza)
    played = Played()
    admin = httpx.Client(base_url=served.url, headers={"X-Forwarded-For": LONDON_IP})
    try:
        played = play(leza, served.url)
        r = admin.post("/login", data={"username": "admin"}, follow_redirects=False)
        assert r.status_code == 303
        yield Site(leza, served.url, played, admin)
    finally:
        admin.close()
        played.close()
        stop(served)
        leza.shutdown(timeout=5)


def hrefs(page: str, cls: str | None = None) -> list[str]:
    """The link targets of ``page`` (of ``<a class=cls>`` only), unescaped."""
    pattern = rf'<a class="{cls}" href="([^"]+)"' if cls else r'<a [^>]*href="([^"]+)"'
    return [html.unescape(h) for h in re.findall(pattern, page)]


def text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def cli_json(leza: Leza, *args: str) -> Any:
    """``leza trace … --json`` run in process against the site's storage."""
    out, err = io.StringIO(), io.StringIO()
    parsed = build_parser().parse_args(["trace", *args, "--json"])
    ctx = Context(prog="leza", make_leza=lambda: leza, options={}, owns_leza=False,
                  stdout=out, stderr=err)  # fmt: skip
    assert execute("trace", ctx, parsed) == 0, err.getvalue()
    return json.loads(out.getvalue())


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [str(i["_id"]) for i in items]


# ----------------------------------------------------------------------------- request


def test_request_view_holds_the_request_and_what_it_wrote_in_time_order(site: Site) -> None:
    p = site.played
    view = site.api(f"/requests/{p.bob_rename}")
    assert [i["kind"] for i in view["items"]] == ["access", "audit", "log"]
    access, audit, log = view["items"]
    assert access["endpoint"] == "/items/42/rename"
    assert access["route"] == "/items/{item_id}/rename"
    assert access["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert audit["entity_type"] == "item"
    assert audit["entity_id"] == "42"
    assert audit["diff"]["name"] == {"before": "item 42", "after": "Blue chair"}
    assert audit["session_id"] == p.bob_desktop_session  # the session it was made in
    assert log["message"] == "item 42 renamed to 'Blue chair'"
    assert {i["request_id"] for i in view["items"]} == {p.bob_rename}
    stamps = [i["timestamp"] for i in view["items"]]
    assert stamps == sorted(stamps)
    assert view["counts"] == {"access": 1, "log": 1, "audit": 1, "advisory": 0}
    assert view["session_id"] == p.bob_desktop_session
    assert view["performer"]["id"] == "bob"
    assert (
        view
        == site.leza.trace.request(p.bob_rename)
        == cli_json(site.leza, "request", p.bob_rename)
    )

    page = site.get(f"/requests/{p.bob_rename}").text
    assert page.count('<li class="kind-') == 3
    links = hrefs(page)
    assert f"{DASH}/sessions/{p.bob_desktop_session}" in links
    assert f"{DASH}/performers/bob" in links
    assert f"{DASH}/audit/item/42" in links
    for record in view["items"]:
        assert f"{DASH}/records/{record['_id']}" in links  # every record's permalink


def test_an_advisory_is_on_the_view_of_the_request_that_raised_it(site: Site) -> None:
    p = site.played
    view = site.api(f"/requests/{p.bob_phone_login}")
    advisories = [i for i in view["items"] if i["kind"] == "advisory"]
    assert {a["rule"] for a in advisories} >= {"new_country", "impossible_travel"}
    assert all(a["request_id"] == p.bob_phone_login for a in advisories)
    assert all(a["session_id"] == p.bob_phone_session for a in advisories)
    assert view["items"][0]["kind"] == "access"  # raised by it, so after it
    # The advisory's permalink shows its evidence: the access event, linked.
    advisory = next(a for a in advisories if a["rule"] == "new_country")
    record = site.api(f"/records/{advisory['_id']}")
    assert record["kind"] == "advisory"
    assert ids(record["evidence"]) == [view["items"][0]["_id"]]
    page = site.get(f"/records/{advisory['_id']}").text
    assert f"{DASH}/records/{view['items'][0]['_id']}" in hrefs(page)
    assert "EVIDENCE" in page
    assert "Linköping" in text(page)


# ----------------------------------------------------------------------------- session


def test_session_view_holds_its_requests_changes_and_places(site: Site) -> None:
    p = site.played
    sid = p.bob_desktop_session
    view = site.api(f"/sessions/{sid}")
    assert view == site.leza.trace.session(sid) == cli_json(site.leza, "session", sid)
    session = view["session"]
    assert session["_id"] == sid
    assert session["performer"]["id"] == "bob"
    assert session["active"] is False
    assert session["end_reason"] == "logout"
    assert session["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    requests = view["requests"]["items"]
    # login, item 42, rename, item 42 from London, report (denied), failed login, logout
    assert [r["endpoint"] for r in requests] == [
        "/logout", "/login", "/reports/7", "/items/42", "/items/42/rename", "/items/42", "/login",
    ]  # fmt: skip
    assert [r["action"] for r in requests][:3] == ["logout", "login_failed", "denied"]
    assert {r["session_id_hash"] for r in requests} == {sid}
    assert view["request_count"] == 7
    assert [c["request_id"] for c in view["changes"]] == [p.bob_rename]
    places = view["places"]
    assert [(pl["ip"], pl["city"]) for pl in places] == [
        (FRANKFURT_IP, "Frankfurt am Main"), (LONDON_IP, "London"),
    ]  # fmt: skip
    assert [pl["requests"] for pl in places] == [3, 4]
    assert places[0]["last_seen"] < places[1]["first_seen"]

    page = site.get(f"/sessions/{sid}").text
    assert "WHERE IT WAS SEEN FROM" in page
    assert "Frankfurt am Main" in page
    for r in requests:
        assert f"{DASH}/requests/{r['request_id']}" in hrefs(page, "trace")
    assert f"{DASH}/audit/item/42" in hrefs(page, "trace")
    assert "REVOKE" not in re.sub(r"<(script|style)>.*?</\1>", "", page, flags=re.S)  # ended


def test_session_requests_are_paged_with_a_strict_cursor(site: Site) -> None:
    sid = site.played.bob_desktop_session
    everything = ids(site.api(f"/sessions/{sid}")["requests"]["items"])
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = site.api(f"/sessions/{sid}", **params)["requests"]
        seen += ids(page["items"])
        cursor = page["next_cursor"] or ""
        if not cursor:
            break
    assert seen == everything  # no gap, no repeat
    html_page = site.get(f"/sessions/{sid}", limit="2").text
    assert 'rel="next"' in html_page
    for bad in ("²_x", "1_" + "a" * 200, "99999999999999999999_x", "-1_x"):
        r = site.get(f"/api/sessions/{sid}", cursor=bad)
        assert r.status_code == 400, bad
        assert r.json()["field"] == "cursor"
    r = site.get(f"/sessions/{sid}", limit="0")
    assert r.status_code == 400
    assert "Bad request: limit" in r.text


# ----------------------------------------------------------------------------- performer


def test_performer_view_holds_sessions_devices_places_refusals_and_changes(site: Site) -> None:
    p = site.played
    view = site.api("/performers/bob")
    assert view == site.leza.trace.performer("bob") == cli_json(site.leza, "performer", "bob")
    assert view["performer"]["name"] == "Bob Builder"
    sessions = view["sessions"]
    assert [s["_id"] for s in sessions] == [p.bob_phone_session, p.bob_desktop_session]
    assert [s["active"] for s in sessions] == [True, False]  # active first
    assert {d["browser"]["name"] for d in view["devices"]} == {"Chrome", "Chrome Mobile"}
    assert len(view["machines"]) == 2
    countries = view["countries"]
    assert [c["country_code"] for c in countries] == ["DE", "GB", "SE"]  # first seen order
    assert countries[0]["first_seen"] <= countries[1]["first_seen"] <= countries[2]["first_seen"]
    assert [r["request_id"] for r in view["refused"]] == [p.bob_failed, p.bob_denied]
    assert [r["action"] for r in view["refused"]] == ["login_failed", "denied"]
    assert [c["request_id"] for c in view["changes"]] == [p.bob_rename]
    assert {a["rule"] for a in view["advisories"]} >= {"new_country", "impossible_travel"}
    assert view["request_count"] == 9  # 7 on the desktop, 2 on the phone

    page = site.get("/performers/bob").text
    sections = (
        "SESSIONS", "DEVICES", "MACHINE IDS", "COUNTRIES", "DENIED REQUESTS AND FAILED LOGINS",
        "CHANGES MADE BY THEM", "ADVISORIES",
    )  # fmt: skip
    for label in sections:
        assert f"<h2>{label}</h2>" in page
    links = hrefs(page, "trace")
    assert f"{DASH}/sessions/{p.bob_phone_session}" in links
    assert f"{DASH}/requests/{p.bob_denied}" in links
    assert "Linköping, Östergötland County, Sweden" in text(page) or "Linköping" in text(page)
    assert page.count("REVOKE ALL SESSIONS") == 1  # one active session: the form is there


# ----------------------------------------------------------------------------- entity


def test_entity_history_oldest_first_with_diffs_actors_and_requests(site: Site) -> None:
    p = site.played
    view = site.api("/audit/item/42")
    assert [i["request_id"] for i in view["items"]] == [p.bob_rename, p.carol_rename]
    assert [i["actor"]["id"] for i in view["items"]] == ["bob", "carol"]
    assert [i["diff"]["name"]["after"] for i in view["items"]] == ["Blue chair", "Red chair"]
    assert all(i["intact"] is True for i in view["items"])
    assert view["chain"]["state"] in ("ok", "unknown")  # verified in the background
    assert view["next_cursor"] is None
    same = site.leza.trace.entity("item", "42")
    assert {**view, "chain": None} == {**same, "chain": None}
    assert {**cli_json(site.leza, "entity", "item", "42"), "chain": None} == {**same, "chain": None}
    first = site.api("/audit/item/42", limit="1")
    assert [i["request_id"] for i in first["items"]] == [p.bob_rename]
    second = site.api("/audit/item/42", limit="1", cursor=first["next_cursor"])
    assert [i["request_id"] for i in second["items"]] == [p.carol_rename]

    page = site.get("/audit/item/42").text
    links = hrefs(page)
    for rid in (p.bob_rename, p.carol_rename):
        assert f"{DASH}/requests/{rid}" in links
    assert f"{DASH}/performers/bob" in links
    assert f"{DASH}/performers/carol" in links
    assert page.count(">OK</span>") == 2
    assert "CHAIN" in page


def test_every_id_on_every_tab_links_to_its_view_and_every_link_works(site: Site) -> None:
    p = site.played
    followed: set[str] = set()
    expected = {
        "access": [f"{DASH}/requests/{p.bob_rename}", f"{DASH}/performers/bob",
                   f"{DASH}/sessions/{p.bob_desktop_session}"],
        "sessions": [f"{DASH}/sessions/{p.carol_session}", f"{DASH}/performers/carol"],
        "audit": [f"{DASH}/audit/item/42", f"{DASH}/performers/carol",
                  f"{DASH}/requests/{p.carol_rename}"],
        "logs": [f"{DASH}/requests/{p.bob_rename}", f"{DASH}/performers/bob"],
        "advisories": [f"{DASH}/performers/bob", f"{DASH}/requests/{p.bob_phone_login}",
                       f"{DASH}/sessions/{p.bob_phone_session}"],
    }  # fmt: skip
    for tab, wanted in expected.items():
        page = site.get(f"/{tab}").text
        links = set(hrefs(page, "trace")) | set(hrefs(page, "permalink"))
        for url in wanted:
            assert url in links, (tab, url)
        followed |= {u for u in links if urlsplit(u).path.startswith(DASH + "/")}
    assert len(followed) > 30
    for url in sorted(followed):
        r = site.admin.get(url)
        assert r.status_code == 200, (url, r.status_code)


# ----------------------------------------------------------------------------- 404s


def test_unknown_and_malformed_ids_are_404_pages_with_the_security_headers(site: Site) -> None:
    paths = [
        "/requests/no-such-request", "/requests/" + "a" * 129, "/requests/%3Cscript%3E",
        "/requests/%00", "/requests/%C3%A9t%C3%A9", "/sessions/" + "0" * 32, "/sessions/short",
        "/sessions/" + "x" * 200, "/performers/nobody", "/performers/%7F",
        "/performers/" + "p" * 600, "/audit/item", "/audit/item/424242", "/audit/%01/1",
        "/records/no-such-record", "/records/%3C%3E", "/requests/", "/audit//1",
    ]  # fmt: skip
    for path in paths:
        for prefix in ("", "/api"):
            r = site.admin.get(DASH + prefix + path)
            assert r.status_code == 404, (prefix + path, r.status_code, r.text[:200])
            for name, value in SECURITY.items():
                assert r.headers.get(name) == value, (path, name)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            if prefix:
                assert set(r.json()) == {"error", "detail"}
            else:
                assert "<title>Not found</title>" in r.text


# ----------------------------------------------------------------------------- privacy


def test_no_secret_in_any_view(site: Site) -> None:
    p = site.played
    assert SECRET_TOKEN not in site.get(f"/requests/{p.anonymous}").text
    assert SECRET_TOKEN not in json.dumps(site.api(f"/requests/{p.anonymous}"))
    [access] = site.api(f"/requests/{p.anonymous}")["items"]
    assert "token=[Filtered]" in unquote(access["endpoint"])
    for path in (f"/sessions/{p.bob_desktop_session}", "/performers/bob", "/audit/item/42"):
        page = site.get(path).text
        assert "leza_sid" not in page
        assert "session=" not in page
