"""Revoking from the traceability views (issue 15, items 3 and 4), on a real FastAPI app.

* REVOKE on a session's view goes through the existing revoke action (CSRF,
  confirmation) and comes back to that view, saying so; from the performer's
  view it comes back to the performer;
* REVOKE ALL SESSIONS on a performer's view is a dashboard action: refused
  without the form's token or from another site (403, recorded ``denied``),
  405 on GET, a confirmation page without JavaScript, then every active
  session of the performer ends (their next requests get 401), one AUDIT row
  ``revoke_all`` for the performer and an ACCESS event ``revoke``;
* a form field the action cannot use is a 400 naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for
from dashboard_app import build_app
from starlette.testclient import TestClient

from leza_middleware import Leza

pytestmark = pytest.mark.both_databases

LONDON_IP = "81.2.69.142"
FRANKFURT_IP = "161.35.214.167"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: TestClient, name: str) -> None:
    r = client.post("/login", data={"username": name}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.fixture
def leza(make_leza: Any) -> Leza:
    leza: Leza = make_leza(app_name="shop")
    return leza


@pytest.fixture
def clients(leza: Leza) -> Iterator[dict[str, TestClient]]:
    app = build_app(leza)
    made = {
        "admin": TestClient(app, client=(LONDON_IP, 50000)),
        "bob": TestClient(app, client=(FRANKFURT_IP, 50001)),
        "bob2": TestClient(app, client=(LONDON_IP, 50002)),
        "carol": TestClient(app, client=(LONDON_IP, 50003)),
    }
    for name, client in made.items():
        client.__enter__()
        sign_in(client, "bob" if name == "bob2" else name)
        assert client.get("/me").status_code == 200
    assert leza.flush(5)
    yield made
    for client in made.values():
        client.__exit__(None, None, None)


def test_revoke_from_the_session_view_returns_to_it(
    leza: Leza, clients: dict[str, TestClient]
) -> None:
    admin = clients["admin"]
    [sid] = [s["_id"] for s in leza.sessions.active(performer_id="carol")]
    page = admin.get(f"/leza/sessions/{sid}").text
    assert '<input type="hidden" name="view" value="session">' in page
    form = {"csrf_token": csrf_of(page), "session_id": sid, "back": "", "view": "session"}

    asked = admin.post("/leza/sessions/revoke", data={**form, "confirm": ""})
    assert asked.status_code == 200
    assert "<h1>Revoke this session?</h1>" in asked.text
    assert f'<a href="/leza/sessions/{sid}">Cancel</a>' in asked.text
    assert '<input type="hidden" name="view" value="session">' in asked.text

    done = admin.post("/leza/sessions/revoke", data={**form, "confirm": "1"},
                      follow_redirects=False)  # fmt: skip
    assert done.status_code == 303
    assert done.headers["location"] == f"/leza/sessions/{sid}?revoked={sid}"
    shown = admin.get(done.headers["location"]).text
    assert f"Session <code>{sid}</code> was revoked." in shown
    assert wait_for(lambda: clients["carol"].get("/me").status_code == 401)
    assert leza.flush(5)
    [audit] = leza.query.audit(action="revoke")
    assert (audit["entity_type"], audit["entity_id"]) == ("session", sid)
    # The session view shows the revocation and the refused request after it.
    view = admin.get(f"/leza/api/sessions/{sid}").json()
    assert view["session"]["end_reason"] == "revoked"
    assert view["requests"]["items"][0]["action"] == "denied"  # the 401 of its next request
    assert {a["rule"] for a in view["advisories"]} == {"revoked_session_reuse"}
    # Again: it had already ended, and the view says so.
    again = admin.post("/leza/sessions/revoke", data={**form, "confirm": "1"},
                       follow_redirects=False)  # fmt: skip
    assert again.headers["location"] == f"/leza/sessions/{sid}?gone={sid}"
    assert "had already ended" in admin.get(again.headers["location"]).text


def test_revoke_from_the_performer_view_returns_to_the_performer(
    leza: Leza, clients: dict[str, TestClient]
) -> None:
    admin = clients["admin"]
    sid = leza.sessions.active(performer_id="bob")[0]["_id"]
    page = admin.get("/leza/performers/bob").text
    assert '<input type="hidden" name="view" value="performer">' in page
    form = {"csrf_token": csrf_of(page), "session_id": sid, "back": "", "view": "performer",
            "confirm": "1"}  # fmt: skip
    done = admin.post("/leza/sessions/revoke", data=form, follow_redirects=False)
    assert done.headers["location"] == f"/leza/performers/bob?revoked={sid}"
    assert len(leza.sessions.active(performer_id="bob")) == 1
    bad = admin.post("/leza/sessions/revoke", data={**form, "view": "//evil.example"})
    assert bad.status_code == 400
    assert "<title>Bad request: view</title>" in bad.text


def test_revoke_all_sessions_of_a_performer(leza: Leza, clients: dict[str, TestClient]) -> None:
    admin = clients["admin"]
    assert len(leza.sessions.active(performer_id="bob")) == 2
    page = admin.get("/leza/performers/bob").text
    assert page.count("REVOKE ALL SESSIONS") == 1
    assert 'data-confirm="Revoke all 2 active sessions of Bob Builder?' in page
    token = csrf_of(page)
    form = {"csrf_token": token, "performer_id": "bob", "confirm": "1"}
    url = "/leza/sessions/revoke-all"

    # Not a GET; not without the token; not from another site.
    assert admin.get(url).status_code == 405
    assert admin.post(url, data={**form, "csrf_token": ""}).status_code == 403
    cross = admin.post(url, data=form, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert "another site" in cross.text
    for field, value in (("performer_id", "bob\x00"), ("performer_id", ""),
                         ("performer_id", "b" * 513), ("confirm", "yes")):  # fmt: skip
        bad = admin.post(url, data={**form, field: value})
        assert bad.status_code == 400, (field, value)
        assert f"<title>Bad request: {field}</title>" in bad.text
    assert len(leza.sessions.active(performer_id="bob")) == 2

    # Without confirm=1 the server asks first (no JavaScript).
    asked = admin.post(url, data={**form, "confirm": ""})
    assert asked.status_code == 200
    assert "<h1>Revoke every session of Bob Builder?</h1>" in asked.text
    assert "2 active sessions of <b>Bob Builder</b>" in asked.text
    assert '<a href="/leza/performers/bob">Cancel</a>' in asked.text
    assert len(leza.sessions.active(performer_id="bob")) == 2

    done = admin.post(url, data=form, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"] == "/leza/performers/bob?revoked_all=2"
    assert "2 sessions revoked." in admin.get(done.headers["location"]).text
    assert leza.sessions.active(performer_id="bob") == []
    for name in ("bob", "bob2"):
        assert wait_for(lambda name=name: clients[name].get("/me").status_code == 401)
    assert clients["carol"].get("/me").status_code == 200  # someone else's: untouched
    assert leza.flush(5)
    [audit] = leza.query.audit(action="revoke_all")
    assert (audit["entity_type"], audit["entity_id"]) == ("performer", "bob")
    assert audit["actor"]["id"] == "admin"
    assert audit["diff"]["active_sessions"] == {"before": 2, "after": 0}
    [access] = [a for a in leza.query.access(action="revoke") if a["endpoint"] == url]
    assert access["request_id"] == audit["request_id"]
    assert "Revoked 2 session(s) of bob" in access["reason"]
    prefix = "Dashboard: POST /sessions/revoke-all refused"
    refused = [e for e in leza.query.access(action="denied") if e["reason"].startswith(prefix)]
    assert len(refused) == 2
    # The entity history of the performer shows it, linked to the request that did it.
    history = admin.get(f"/leza/api/audit/performer/{quote('bob')}").json()
    assert [i["action"] for i in history["items"]] == ["revoke_all"]

    # Nothing left to revoke: back to the view, which says so.
    again = admin.post(url, data=form, follow_redirects=False)
    assert again.headers["location"] == "/leza/performers/bob?revoked_all=0"
    assert "No session was active" in admin.get(again.headers["location"]).text
    assert leza.flush(5)
    assert len(leza.query.audit(action="revoke_all")) == 1
