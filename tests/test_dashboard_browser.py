"""The admin view in a real browser: headless Chromium driven by Playwright.

One app per module (tests/dashboard_app.py: sign-in, sessions, an audited
change, the dashboard at /leza) runs under uvicorn on a loopback port, over a
SQLite file. The browser signs in through the app's own form, opens every
tab, filters by FROM/TO with the form, opens MORE DETAILS, and revokes
sessions (through the JavaScript confirm and through the server's
confirmation page with JavaScript off); a User-Agent carrying a script
renders as text and never runs.

Chromium: ``$LEZA_TEST_CHROMIUM``, else Debian's ``/usr/bin/chromium``
(``.ci/run`` installs it). Without it the tests skip, unless ``CI`` is set or
``LEZA_REQUIRE_BROWSER=1``, where they fail. ``LEZA_SCREENSHOTS=<dir>``
saves a full-page PNG of each tab there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_app import CHROMIUM, CHROMIUM_ARGS, Served, build_app

from leza_middleware import Leza, Performer
from leza_middleware.events import AccessEvent, us_from_iso

# Read at import: the suite's autouse fixture clears LEZA_* for each test.
REQUIRED = os.environ.get("LEZA_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
SCREENSHOTS = os.environ.get("LEZA_SCREENSHOTS")

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
XSS_UA = "<script>window.__xss=1</script>"
TAB_LABELS = {
    "AUDIT": "audit",
    "ACCESS": "access",
    "ADVISORY": "advisory",
    "SESSION": "session",
    "LOG": "log",
}


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (required: CI or LEZA_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _unavailable(
            f"no Chromium at {CHROMIUM} (install Debian's chromium or set LEZA_TEST_CHROMIUM)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Site:
    """The running app, its Leza, and the people who used it before the admin looks."""

    def __init__(self, leza: Leza, served: Served) -> None:
        self.leza = leza
        self.served = served
        self.url = served.url
        self.clients: dict[str, httpx.Client] = {}

    def client(self, name: str, ua: str, ip: str) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers={"User-Agent": ua, "X-Forwarded-For": ip})
        self.clients[name] = client
        return client

    def sign_in(self, name: str, ua: str, ip: str) -> httpx.Client:
        client = self.client(name, ua, ip)
        assert client.post("/login", data={"username": name}).status_code == 303
        return client

    def session_of(self, name: str) -> str:
        [session] = self.leza.sessions.active(performer_id=name)
        return str(session["_id"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, city_db: Path) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("browser")
    leza = Leza(
        storage=f"sqlite:///{tmp / 'leza.db'}",
        geoip_db=str(city_db),
        trusted_proxies=("127.0.0.1",),  # the test's clients say where they are
        secret_key="browser-tests-secret-0123456789",
        spill_dir=str(tmp / "spill"),
        flush_interval=0.05,
        app_name="shop",
    )
    served = Served(build_app(leza))
    site = Site(leza, served)
    try:
        bob = site.sign_in("bob", CHROME, "161.35.214.167")  # Frankfurt
        assert bob.get("/items/42").status_code == 200
        assert bob.post("/items/42/rename", data={"name": "Blue chair"}).status_code == 200
        site.sign_in("carol", IPHONE, "81.2.69.142")  # London
        dave = site.sign_in("dave", IPHONE, "89.160.20.112")  # Linköping
        assert dave.post("/logout").status_code == 200
        # Requests from January 2025 for the FROM/TO filter (times the test controls).
        leza.storage.write([_old(day, n) for n, day in enumerate((10, 15, 15, 20))])
        assert leza.flush(5)
        yield site
    finally:
        for client in site.clients.values():
            client.close()
        served.stop()
        leza.shutdown(timeout=5)


def _old(day: int, n: int) -> AccessEvent:
    ts = us_from_iso(f"2025-01-{day:02d}T12:00:0{n}Z")
    return AccessEvent.build(
        id=f"{ts:013x}old{n:013d}",
        ts=ts,
        action="access",
        method="GET",
        endpoint=f"/archive/{day}-{n}",
        route="/archive/{day}",
        status=200,
        duration_us=900,
        outcome="success",
        reason="Public page",
        request_id=f"old-{n}",
        client_ip="10.0.0.9",
        ip_valid=True,
        peer_ip="10.0.0.9",
        performer=Performer(id="bob", name="Bob Builder"),
    )


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def sign_in_as_admin(page: Any, site: Site) -> None:
    page.goto(f"{site.url}/login")
    page.fill("input[name=username]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/leza/state")  # /login -> /leza/ -> /leza/state


def rows(page: Any) -> Any:
    return page.locator("table.rows tbody tr")


def open_tab(page: Any, label: str) -> None:
    """Click a tab and wait until its page is the one shown. A locator's count()
    does not wait: read right after the click, it may still see the old page."""
    page.click(f"nav.tabs >> text={label}")
    page.wait_for_selector(f'nav.tabs a[aria-current="page"]:text-is("{label}")')


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_sign_in_open_every_tab_filter_and_more_details(page: Any, site: Site) -> None:
    sign_in_as_admin(page, site)
    assert page.title() == "STATE · leza"

    for label, name in TAB_LABELS.items():
        open_tab(page, label)
        body = page.inner_text("main")
        if name == "access":
            assert "Bob Builder" in body
            assert "/items/42/rename" in body
            assert "Frankfurt am Main, Germany" in body
            assert re.search(r"\b(JUST NOW|\d+ MINUTES? AGO)\b", body)
        elif name == "session":
            assert page.locator("form.revoke").count() >= 3  # admin, bob, carol
            assert "London, United Kingdom" in body
            assert "ended" in body  # dave logged out
        elif name == "audit":
            assert "item #42" in body
            assert "name: item 42 → Blue chair" in body
        else:  # ADVISORY, LOG: a table, or the empty state of a kind not recorded yet
            assert page.locator("table.rows, div.unrecorded").count() == 1
        shoot(page, name)

    # FROM/TO through the form (date pickers), on the ACCESS tab.
    open_tab(page, "ACCESS")
    page.fill("input[name=from]", "2025-01-15")
    page.fill("input[name=to]", "2025-01-20")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/leza/access\?from=2025-01-15&to=2025-01-20.*"))
    assert rows(page).count() == 3
    assert [c.strip() for c in page.locator("td.endpoint").all_inner_texts()] == [
        "/archive/20-3",
        "/archive/15-2",
        "/archive/15-1",
    ]
    assert "3 requests from 2025-01-15 to 2025-01-20" in page.inner_text("p.summary")
    # The filter stays when switching tabs: a link to share.
    open_tab(page, "SESSION")
    assert "from=2025-01-15&to=2025-01-20" in page.url
    assert "No sessions started in this period." in page.inner_text("main")
    page.go_back()

    # MORE DETAILS shows the event's card; its raw JSON is one click further.
    first = rows(page).first
    card = first.locator("details.more .card")
    pre = first.locator("details.raw pre")
    assert not card.is_visible()
    first.locator("summary", has_text="MORE DETAILS").click()
    assert card.is_visible()
    fields = card.locator("dl.fields").inner_text()
    for shown in ("/archive/20-3", "Bob Builder", "Public page"):
        assert shown in fields
    assert not pre.is_visible()
    first.locator("summary", has_text="RAW JSON").click()
    assert pre.is_visible()
    event = json.loads(pre.inner_text())
    assert event["endpoint"] == "/archive/20-3"
    assert event["performer"]["name"] == "Bob Builder"
    assert {"_id", "timestamp", "reason", "geoLocationInfoOfIp", "request_id"} <= event.keys()


def test_revoke_a_session_through_the_confirmation(page: Any, site: Site) -> None:
    bob = site.clients["bob"]
    assert bob.get("/me").status_code == 200
    sid = site.session_of("bob")
    assert site.leza.flush(5)  # the tab reads storage: what /me changed is written first
    sign_in_as_admin(page, site)
    open_tab(page, "SESSION")
    row = rows(page).filter(has=page.locator(f'input[name=session_id][value="{sid}"]'))
    if row.count() == 0:  # say what the tab showed instead, should it ever miss it
        pytest.fail(f"session {sid} not listed; the tab shows:\n{page.inner_text('main')}")
    assert row.count() == 1
    assert "Bob Builder" in row.inner_text()

    # JavaScript asks first; dismissing it sends nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.locator("button", has_text="REVOKE").click()
    assert bob.get("/me").status_code == 200
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.locator("button", has_text="REVOKE").click()
    page.wait_for_url(re.compile(rf".*/leza/sessions\?.*revoked={sid}"))
    assert dialogs == ["Revoke the session of Bob Builder? Its next request will be refused."]
    assert f"Session {sid} was revoked." in page.inner_text("p.notice")
    assert page.locator(f'input[name=session_id][value="{sid}"]').count() == 0
    page.select_option("select[name=limit]", "25")
    page.fill("input[name=action]", "ended")
    page.click("form.filters button[type=submit]")
    ended = rows(page).filter(has_text="Bob Builder")
    assert "revoked" in ended.first.inner_text()

    assert bob.get("/me").status_code == 401  # the revoked session is refused
    assert site.leza.flush(5)
    [audit] = site.leza.query.audit(action="revoke")
    assert (audit["entity_id"], audit["actor"]["id"]) == (sid, "admin")


def test_revoke_without_javascript_uses_the_confirmation_page(browser: Any, site: Site) -> None:
    carol = site.clients["carol"]
    sid = site.session_of("carol")
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        sign_in_as_admin(page, site)
        page.goto(f"{site.url}/leza/sessions?action=active")
        form = page.locator(f'form.revoke:has(input[name=session_id][value="{sid}"])')
        form.locator("button").click()
        page.wait_for_selector("section.confirm")
        text = page.inner_text("section.confirm")
        assert "Revoke this session?" in text
        assert "Carol Danvers, Mobile Safari on iOS, from London, United Kingdom" in text
        assert carol.get("/me").status_code == 200  # asked, not yet done
        page.click("text=REVOKE SESSION")
        page.wait_for_url(re.compile(rf".*revoked={sid}"))
        assert page.locator(f'input[name=session_id][value="{sid}"]').count() == 0
        assert carol.get("/me").status_code == 401
    finally:
        context.close()


def test_a_script_in_a_user_agent_stays_text(page: Any, site: Site) -> None:
    with httpx.Client(base_url=site.url, headers={"User-Agent": XSS_UA}) as attacker:
        attacker.get("/items/7")
        attacker.get("/<script>window.__xss=1</script>")
    assert site.leza.flush(5)
    sign_in_as_admin(page, site)
    page.goto(f"{site.url}/leza/access")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert XSS_UA in page.inner_text("main")  # shown as text (the endpoint column)
    row = page.locator("tr", has_text="/items/7").first
    row.locator("summary", has_text="MORE DETAILS").click()
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert XSS_UA in row.locator("dl.fields").inner_text()  # the card's DEVICE
    row.locator("summary", has_text="RAW JSON").click()
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert XSS_UA in row.locator("pre").inner_text()
