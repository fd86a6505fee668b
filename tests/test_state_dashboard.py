"""The STATE tab and ``/api/state`` on the ASGI, WSGI and Django mounts, SQLite and
PostgreSQL, over the known history of tests/test_state.py written with times
relative to now: the page shows those numbers, the JSON is ``leza.query.state()``,
each endpoint row leads to ACCESS filtered to that endpoint, bad input is a 400
naming the field (HTML and JSON), recorded text is escaped, and an empty store
says "No traffic recorded yet".
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from dashboard_mounts import AsgiMount, DjangoMount, WsgiMount, django_leza, django_setup
from test_state import HOUR, MIN, access, check, history

from leza_middleware import Leza
from leza_middleware.dashboard import state_view
from leza_middleware.query import time_us
from leza_middleware.storage import JSONLStorage

pytestmark = pytest.mark.both_databases

STATE_KEYS = {
    "from", "to", "bucket", "generated_at", "traffic", "requests", "server_errors",
    "client_errors", "denied", "latency_ms", "series", "endpoints", "sessions", "services",
    "recorder", "advisories",
}  # fmt: skip
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def _django() -> None:
    django_setup()


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> int:
    """One "now" for the page, the API and leza.query.state() alike."""
    fixed = time_us()
    monkeypatch.setattr("leza_middleware.query.time_us", lambda: fixed)
    monkeypatch.setattr(state_view, "time_us", lambda: fixed)
    return fixed


def _keep_sessions(leza: Leza) -> None:
    """The history's sessions are hours old: a live Leza would end them as idle at
    its next poll (the product working); here they stay as written."""
    leza.sessions.idle_timeout = leza.sessions.absolute_timeout = 30 * 86400.0


@pytest.fixture(params=["asgi", "wsgi", "django"])
def site(
    request: pytest.FixtureRequest, make_leza: Any, storage_url: str, tmp_path: Path, now: int
) -> Iterator[tuple[Any, Leza]]:
    if request.param == "django":
        request.getfixturevalue("_django")
        with django_leza(storage_url, tmp_path) as leza:
            _keep_sessions(leza)
            leza.query.ensure_ready()
            leza.storage.write(history(now))
            yield DjangoMount(), leza
        return
    leza = make_leza(app_name="shop")
    _keep_sessions(leza)
    leza.query.ensure_ready()
    leza.storage.write(history(now))
    mount = AsgiMount(leza) if request.param == "asgi" else WsgiMount(leza)
    yield mount, leza
    mount.close()


def get(mount: Any, path: str, **query: str) -> Any:
    answer = mount.request("GET", path, urlencode(query).encode())
    assert answer.missing_security_headers() == [], (path, query)
    return answer


def get_raw(data: Any) -> str:
    """What the JSON API sent for ``data``: ``<`` and ``>`` as escapes, never raw."""
    from leza_middleware.dashboard.responses import json_response

    return json_response(data).body.decode()


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_state_is_the_landing_page(site: tuple[Any, Leza]) -> None:
    mount, _leza = site
    answer = get(mount, "/")
    assert answer.status in (301, 302, 303)
    assert (answer.header("location") or "").endswith("/leza/state")
    page = get(mount, "/state").text
    tabs = re.findall(r'<nav class="tabs">(.*?)</nav>', page, re.S)[0]
    assert re.findall(r">([A-Z]+)</a>", tabs) == ["STATE", "AUDIT", "ACCESS", "ADVISORY",
                                                  "SESSION", "LOG"]  # fmt: skip
    assert re.search(r'href="/leza/state" aria-current="page">STATE<', tabs)
    assert '<a class="brand" href="/leza/state">' in page


def test_page_shows_the_state(site: tuple[Any, Leza], now: int) -> None:
    mount, leza = site
    state = leza.query.state()  # before the page: the view is itself recorded
    assert state["requests"] == 40
    answer = get(mount, "/state")
    assert answer.status == 200
    page = answer.text
    text = text_of(page)
    tiles = dict(re.findall(r"<dt>([A-Z0-9 ]+)</dt><dd>([^<]+)", page))
    assert tiles["REQUESTS"] == "40"
    assert tiles["SERVER ERRORS"].strip() == "1"
    assert (tiles["CLIENT ERRORS"], tiles["DENIED"]) == ("4", "2")
    assert "2.50 %" in text  # 1 server error of 40
    # Endpoints: one row each, linking to ACCESS filtered to it over the same period.
    rows = re.findall(r'<a class="endpoint" href="([^"]+)"', page)
    assert len(rows) == 5
    period = {"from": state["from"], "to": state["to"]}
    items = html.unescape(rows[1])
    assert items == "/leza/access?" + urlencode({**period, "endpoint": "GET /items/{item_id}"})
    assert "GET /slow" in text
    assert "(unmatched)" in text
    # Services: db recovered (its incident listed), queue still DOWN.
    assert re.search(r'class="state down">DOWN<', page)
    assert "still down" in text
    assert "(1 h)" in text
    assert "1 down" in text
    # Who is on, advisories, recorder.
    assert "3 active sessions" in text
    assert "Germany" in text
    assert "Phone" in text
    assert "3 performers seen, 3 logins, 1 failed login" in text
    assert (
        text.index("a burst of denials") < text.index("a new country") < text.index("a new machine")
    )
    assert "NEWEST STORED" in text
    # Each advisory links to whom, which session and which request it is about.
    news = re.search(r"a new country</span>(.*?)</li>", page, re.S)
    assert news is not None
    assert 'href="/leza/performers/carol"' in news[1]
    assert 'href="/leza/sessions/sess-carol-0001"' in news[1]
    assert 'href="/leza/requests/req-carol-0001"' in news[1]
    assert re.search(r'href="/leza/records/[^"]+">DETAILS<', news[1])
    # The chart: inline SVG with its numbers as text for screen readers.
    assert re.search(r'<svg class="chart"[^>]* role="img" aria-labelledby="traffic-chart-t', page)
    assert '<title id="traffic-chart-t">Requests per hour, by outcome</title>' in page
    assert "40 requests in 25 hours" in page
    assert '<table class="sr-only">' in page
    # Nothing the Content-Security-Policy would block: no style attribute, no script
    # but the page's own, nothing from another origin.
    assert " style=" not in page
    assert "<script src" not in page
    assert "http" not in re.sub(r'(href|action)="[^"]*"', "", page.split("<main>")[1])


def test_api_state_is_query_state(site: tuple[Any, Leza], now: int) -> None:
    mount, leza = site
    # Each view is itself recorded (once the answer is sent): one view, written,
    # then the state read, then the view compared with it (the same "now").
    get(mount, "/api/state")
    assert leza.flush(5)
    expected = json.loads(json.dumps(leza.query.state()))
    answer = get(mount, "/api/state")
    assert answer.status == 200
    assert answer.header("content-type") == "application/json"
    data = json.loads(answer.body)
    assert set(data) == STATE_KEYS
    assert data == expected
    assert leza.flush(5)
    expected = json.loads(json.dumps(leza.query.state(since="2025-01-01", until="2025-01-02")))
    period = {"from": "2025-01-01", "to": "2025-01-02"}
    bounded = json.loads(get(mount, "/api/state", **period).body)
    assert bounded == expected
    assert (bounded["from"], bounded["to"], bounded["requests"]) == (
        "2025-01-01T00:00:00.000000Z", "2025-01-02T23:59:59.999999Z", 0,
    )  # fmt: skip
    by_p95 = json.loads(get(mount, "/api/state", sort="p95").body)["endpoints"]
    # The views above are recorded too, as "GET (unmatched)" (Django: under the
    # mount's own route, "leza/(?P<subpath>…)"): on a loaded machine they can be
    # slower than /slow's 300 ms, so their rows' places are not fixed.
    mine = [
        e["endpoint"]
        for e in by_p95
        if e["endpoint"] != "GET (unmatched)" and not e["endpoint"].startswith("GET leza/")
    ]
    assert mine[0] == "GET /slow"
    assert [e["latency_ms"]["p95"] for e in by_p95] == sorted(
        (e["latency_ms"]["p95"] for e in by_p95), reverse=True
    )


def test_inputs(site: tuple[Any, Leza]) -> None:
    mount, _leza = site
    page = get(mount, "/state", sort="p95", refresh="60", last="6h").text
    assert '<meta http-equiv="refresh" content="60">' in page
    order = re.findall(r'<a class="endpoint" href="[^"]+"[^>]*><span class="method">[A-Z]+</span>'
                       r" <code>([^<]+)</code>", page)  # fmt: skip
    assert order[0] == "/slow"
    assert re.search(r'href="[^"]*last=6h[^"]*" aria-current="true">6H<', page)
    assert 'value="60" selected' in page
    assert "Last 6h" in text_of(page)
    # An explicit period wins over the quick one.
    page = get(mount, "/state", last="1h", **{"from": "2025-01-01", "to": "2025-01-31"}).text
    assert "Period: 2025-01-01 00:00 to 2025-01-31 23:59 UTC" in text_of(page)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2025-02-01", "to": "2025-01-01"}, "from"),
        ({"from": "2020-01-01", "to": "2025-01-01"}, "from"),
        ({"from": "2020-01-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-13-45"}, "to"),
        ({"to": "2025-01-01T25:00"}, "to"),
        ({"from": "²⁰²⁵-01-01"}, "from"),
        ({"from": "0000-01-01"}, "from"),
        ({"sort": "slowest"}, "sort"),
        ({"refresh": "5"}, "refresh"),
        ({"last": "2h"}, "last"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    site: tuple[Any, Leza], query: dict[str, str], field: str
) -> None:
    mount, _leza = site
    api = get(mount, "/api/state", **query)
    assert api.status == 400
    body = json.loads(api.body)
    assert body["field"] == field
    assert body["error"].startswith(f"{field}")
    page = get(mount, "/state", **query)
    assert page.status == 400
    assert f"Bad request: {field}" in page.text


def test_access_filtered_by_endpoint(site: tuple[Any, Leza]) -> None:
    mount, _leza = site
    endpoint = "GET /items/{item_id}"
    api = json.loads(get(mount, "/api/access", endpoint=endpoint, limit="1000").body)
    assert len(api["items"]) == 13
    assert {(e["endpoint_type"], e["route"]) for e in api["items"]} == {("GET", "/items/{item_id}")}
    page = get(mount, "/access", endpoint=endpoint, limit="1000").text
    assert len(re.findall(r'<td class="endpoint">', page)) == 13
    assert f'name="endpoint" value="{html.escape(endpoint)}"' in page
    assert "13 requests of GET /items/{item_id} from" in text_of(page)
    unmatched = json.loads(get(mount, "/api/access", endpoint="(unmatched)").body)
    assert [e["route"] for e in unmatched["items"]] == [None]
    any_method = json.loads(get(mount, "/api/access", endpoint="/login").body)
    assert len(any_method["items"]) == 4
    for bad in ("GET", "GET   ", "x" * 4097, "GET /a\x00b", "GET /a\nb"):
        answer = get(mount, "/api/access", endpoint=bad)
        assert answer.status == 400, bad
        assert json.loads(answer.body)["field"] == "endpoint"
        assert get(mount, "/access", endpoint=bad).status == 400


def test_recorded_text_is_escaped(make_leza: Any, now: int) -> None:
    leza: Leza = make_leza()
    leza.query.ensure_ready()
    route = f"/x/{XSS}/{{id}}"
    leza.storage.write([
        access(now - HOUR, "GET", route, 500),
        check(now - 2 * MIN, XSS, "down", "unknown", error=f"refused {XSS}"),
        check(now - MIN, XSS, "down", "down", error=f"refused {XSS}"),
    ])  # fmt: skip
    mount = AsgiMount(leza)
    try:
        page = get(mount, "/state").text
        data = json.loads(get(mount, "/api/state").body)
    finally:
        mount.close()
    assert XSS not in page
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    link = re.search(r'<a class="endpoint" href="([^"]+)"', page)
    assert link is not None
    assert html.unescape(link.group(1)).endswith("&" + urlencode({"endpoint": f"GET {route}"}))
    assert route in {e["route"] for e in data["endpoints"]}
    assert data["services"][0]["name"] == XSS  # JSON as stored (escaped for HTML: <)
    assert "<" not in get_raw(data)


def test_an_empty_store(make_leza: Any, tmp_path: Path) -> None:
    # One fresh store per view: each view is itself recorded.
    pages = []
    for i, path in enumerate(("/state", "/api/state")):
        leza: Leza = make_leza(storage=f"sqlite:///{tmp_path / f'empty-{i}.db'}")
        mount = AsgiMount(leza)
        try:
            pages.append(mount.request("GET", path).text)
        finally:
            mount.close()
    page, data = pages[0], json.loads(pages[1])
    text = text_of(page)
    assert "No traffic recorded yet." in text
    assert re.search(r"<dt>REQUESTS</dt><dd>0<", page)
    assert "0 active sessions" in text
    assert "No availability checks recorded" in text
    assert (data["requests"], data["endpoints"], data["services"]) == (0, [], [])


def test_a_backend_without_rollups(make_leza: Any, tmp_path: Path, now: int) -> None:
    storage = JSONLStorage(str(tmp_path / "jsonl"))
    leza: Leza = make_leza(storage=storage)
    _keep_sessions(leza)
    leza.query.ensure_ready()
    storage.write(history(now))
    mount = AsgiMount(leza)
    try:
        page = mount.request("GET", "/state").text
        data = json.loads(mount.request("GET", "/api/state").body)
    finally:
        mount.close()
    assert data["traffic"]["kept"] is False
    assert data["requests"] is None
    text = text_of(page)
    assert "Traffic needs a storage backend that keeps rollups" in text
    assert "3 active sessions" in text
    assert "DOWN" in text
    assert re.search(r"<dt>REQUESTS</dt><dd>—<", page)
