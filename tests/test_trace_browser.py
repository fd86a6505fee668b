"""Traceability in a real browser (issue 15 acceptance): headless Chromium follows
an ACCESS row to its request, the request to its session, the session to its
performer, the performer to an entity they changed, the entity to its
history — and back — on data made by real traffic through a real app:

* FastAPI (tests/dashboard_app.py under uvicorn, the traffic of
  tests/trace_scenario.py: sign-ins, an audited change with a log record, a
  refused report, a failed login, a move from Frankfurt to London);
* Django (tests/djangoproject's ASGI application under uvicorn: a sign-in
  with a password, a role renamed — an audited model change —, a refused
  page, a move).

Each page is checked against what was recorded; MORE DETAILS cards open
without JavaScript; REVOKE ALL SESSIONS runs through the browser's confirm.
Chromium as in tests/test_dashboard_browser.py (``LEZA_TEST_CHROMIUM``,
``LEZA_REQUIRE_BROWSER=1``); ``LEZA_SCREENSHOTS=<dir>`` saves each view.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from dashboard_app import CHROMIUM, CHROMIUM_ARGS, Served
from mmdb_factory import FRANKFURT_IP, LONDON_IP
from trace_scenario import CHROME, Played, make_site_leza, play, serve, stop

from leza_middleware import Leza

REQUIRED = os.environ.get("LEZA_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
SCREENSHOTS = os.environ.get("LEZA_SCREENSHOTS")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (required: CI or LEZA_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (install chromium or set LEZA_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def follow(page: Any, link: Any, url: str) -> None:
    """Click ``link`` and wait for the page at ``url`` (a path under the site)."""
    link.click()
    page.wait_for_url(f"**{url}")
    page.wait_for_load_state("domcontentloaded")


def section(page: Any, title: str) -> Any:
    """The view's part under the heading ``title`` (exactly)."""
    return page.locator("section.trace-part").filter(has=page.locator(f'h2:text-is("{title}")'))


def heading(page: Any) -> str:
    return re.sub(r"\s+", " ", str(page.inner_text("header.view-head"))).strip()


# ----------------------------------------------------------------------------- FastAPI


@pytest.fixture(scope="module")
def fastapi_site(
    tmp_path_factory: pytest.TempPathFactory, city_db: Path
) -> Iterator[tuple[Leza, str, Played]]:
    tmp = tmp_path_factory.mktemp("trace-browser")
    leza = make_site_leza(f"sqlite:///{tmp / 'leza.db'}", city_db, tmp)
    served = serve(leza)
    played = Played()
    try:
        played = play(leza, served.url)
        yield leza, served.url, played
    finally:
        played.close()
        stop(served)
        leza.shutdown(timeout=5)


def test_fastapi_access_row_to_request_session_performer_entity_history_and_back(
    browser: Any, fastapi_site: tuple[Leza, str, Played]
) -> None:
    leza, url, p = fastapi_site
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{url}/login")
    page.fill("input[name=username]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/leza/state")  # STATE is the landing page
    page.locator("nav.tabs a", has_text="ACCESS").click()
    page.wait_for_url(f"**{url}/leza/access*")

    # ACCESS: bob's rename (Frankfurt, Chrome); its endpoint links to the request.
    row = page.locator("table.rows tbody tr", has_text="/items/42/rename").filter(
        has_text="Bob Builder"
    )
    assert row.count() == 1
    row.locator("summary", has_text="MORE DETAILS").click()  # the card, without JavaScript
    card = row.locator("details.more .card")
    assert "Frankfurt am Main" in card.inner_text()
    follow(page, row.locator("td.endpoint a.trace"), f"/leza/requests/{p.bob_rename}")
    shoot(page, "trace-request")
    assert heading(page) == f"REQUEST {p.bob_rename}"
    items = page.locator("ol.timeline > li")
    assert [items.nth(i).get_attribute("class") for i in range(items.count())] == [
        "kind-access", "kind-audit", "kind-log",
    ]  # fmt: skip
    assert "item 42 renamed to 'Blue chair'" in items.nth(2).inner_text()
    assert "Blue chair" in items.nth(1).locator("ul.diff").first.inner_text()

    # The request's session: its requests, and where it was seen from.
    follow(
        page, page.locator("p.summary a.trace").nth(1), f"/leza/sessions/{p.bob_desktop_session}"
    )
    shoot(page, "trace-session")
    assert heading(page).startswith("SESSION Bob Builder")
    places = page.locator("table.places tbody tr")
    assert [places.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == [
        "Frankfurt am Main, Germany", "London, United Kingdom",
    ]  # fmt: skip
    requests = section(page, "REQUESTS").locator("table tbody tr")
    assert requests.count() == 7
    assert "ended" in page.inner_text("header.view-head")

    # The session's performer: sessions (active first), countries, refusals, changes.
    follow(page, page.locator("header.view-head a.trace"), "/leza/performers/bob")
    shoot(page, "trace-performer")
    assert heading(page).startswith("PERFORMER Bob Builder")
    sessions = section(page, "SESSIONS").locator("table tbody tr")
    assert sessions.first.locator(".badge").first.inner_text() == "active"
    countries = page.locator("table.countries tbody tr")
    assert [countries.nth(i).locator("td").first.inner_text() for i in range(3)] == [
        "Germany DE", "United Kingdom GB", "Sweden SE",
    ]  # fmt: skip
    refused = section(page, "DENIED REQUESTS AND FAILED LOGINS").locator("tbody tr")
    assert refused.count() == 2

    # An entity they changed, and its whole history, oldest first.
    changes = section(page, "CHANGES MADE BY THEM")
    follow(page, changes.locator("a.trace", has_text="item #42").first, "/leza/audit/item/42")
    shoot(page, "trace-entity")
    assert heading(page) == "ENTITY item #42"
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 2
    assert "Bob Builder" in rows.nth(0).inner_text()
    assert "Carol Danvers" in rows.nth(1).inner_text()
    assert "Red chair" in rows.nth(1).locator("td ul.diff").first.inner_text()
    assert page.locator("span.chain.ok", has_text="OK").count() == 2

    # ... and back, step by step, to the ACCESS tab.
    for back in (
        "/leza/performers/bob",
        f"/leza/sessions/{p.bob_desktop_session}",
        f"/leza/requests/{p.bob_rename}",
        "/leza/access",
    ):
        page.go_back()
        page.wait_for_url(f"**{back}")
    # Forward again from the history: carol's change leads to her request.
    page.goto(f"{url}/leza/audit/item/42")
    follow(page, page.locator("table.history tbody tr").nth(1).locator("a", has_text="request"),
           f"/leza/requests/{p.carol_rename}")  # fmt: skip
    assert "Carol Danvers" in page.inner_text("main")

    # A record's permalink, and an advisory's evidence.
    page.goto(f"{url}/leza/requests/{p.bob_phone_login}")
    advisory = page.locator("ol.timeline > li.kind-advisory").first
    follow(page, advisory.locator("a.permalink"), "/leza/records/*")
    shoot(page, "trace-record")
    assert section(page, "EVIDENCE").count() == 1

    # REVOKE ALL SESSIONS, through the browser's confirm.
    page.goto(f"{url}/leza/performers/carol")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.revoke-all button")
    page.wait_for_url("**/leza/performers/carol?revoked_all=1")
    assert "1 session revoked." in page.inner_text("p.notice")
    assert leza.sessions.active(performer_id="carol") == []
    assert wait_for(lambda: p.clients["carol"].get("/me").status_code == 401)
    context.close()


# ----------------------------------------------------------------------------- Django


def _off_the_loop(fn: Any) -> Any:
    """Run ``fn`` in a thread of its own: Playwright's sync API keeps an event loop
    running in this one, where Django refuses ORM calls."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture(scope="module")
def django_site(
    tmp_path_factory: pytest.TempPathFactory, city_db: Path
) -> Iterator[tuple[Leza, str, dict[str, Any]]]:
    from dashboard_mounts import django_setup
    from django.test import override_settings

    from leza_middleware.django import get_leza
    from leza_middleware.django.asgi import get_asgi_application

    _off_the_loop(django_setup)
    tmp = tmp_path_factory.mktemp("trace-browser-django")
    conf = {
        "storage": f"sqlite:///{tmp / 'leza.db'}", "geoip_db": str(city_db),
        "trusted_proxies": ["127.0.0.1"], "spill_dir": str(tmp / "spill"),
        "flush_interval": 0.05, "secret_key": "django-browser-secret-0123456789",
        "app_name": "djangoproject", "audit_models": {"auth.Group": {}},
    }  # fmt: skip
    with override_settings(LEZA=conf):
        leza = get_leza()
        handler = leza.logging_handler()
        logging.getLogger("django.request").addHandler(handler)
        served = Served(get_asgi_application())
        try:
            yield leza, served.url, _off_the_loop(lambda: _django_traffic(leza, served.url))
        finally:
            served.stop()
            logging.getLogger("django.request").removeHandler(handler)
            leza.shutdown(timeout=5)


def _django_traffic(leza: Leza, url: str) -> dict[str, Any]:
    """dora signs in, renames a role, is refused a page, moves; the staff user's session."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    dora, _ = User.objects.get_or_create(username="browser-dora")
    dora.first_name, dora.last_name = "Dora", "Browser"
    dora.set_password("pw-dora")
    dora.save()
    staff, _ = User.objects.get_or_create(username="browser-staff")
    staff.is_staff = True
    staff.save()
    role = Group.objects.create(name=f"browser-editors-{os.getpid()}")
    headers = {"User-Agent": CHROME, "X-Forwarded-For": FRANKFURT_IP}
    with httpx.Client(base_url=url, headers=headers) as c:
        signed_in = c.post("/login/", data={"username": "browser-dora", "password": "pw-dora"})
        assert signed_in.status_code == 200
        rename = c.post(f"/roles/{role.pk}/rename/", data={"name": role.name + "-desk"})
        assert rename.status_code == 200
        assert c.get("/forbidden/").status_code == 403
        c.headers["X-Forwarded-For"] = LONDON_IP
        assert c.get("/me/").status_code == 200
    assert leza.flush(10)
    admin = Client()
    admin.force_login(staff)
    return {"rename": rename.headers["x-request-id"], "dora": dora, "role": role,
            "cookie": admin.cookies["sessionid"].value}  # fmt: skip


def test_django_access_row_to_request_session_performer_entity_history_and_back(
    browser: Any, django_site: tuple[Leza, str, dict[str, Any]]
) -> None:
    leza, url, d = django_site
    dora, role, rid = d["dora"], d["role"], d["rename"]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies([{"name": "sessionid", "value": d["cookie"], "url": url}])
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{url}/leza/access")
    row = page.locator("table.rows tbody tr", has_text=f"/roles/{role.pk}/rename/")
    assert row.count() == 1
    follow(page, row.locator("td.endpoint a.trace"), f"/leza/requests/{rid}")
    assert [page.locator("ol.timeline > li").nth(i).get_attribute("class") for i in range(2)] == [
        "kind-access", "kind-audit",
    ]  # fmt: skip
    view = leza.trace.request(rid)
    assert view is not None
    sid = view["session_id"]
    follow(page, page.locator("p.summary a.trace").nth(1), f"/leza/sessions/{sid}")
    places = page.locator("table.places tbody tr")
    assert places.count() == 2
    assert "Frankfurt am Main" in places.nth(0).inner_text()
    follow(page, page.locator("header.view-head a.trace"), f"/leza/performers/{dora.pk}")
    assert heading(page).startswith("PERFORMER Dora Browser")
    refused = section(page, "DENIED REQUESTS AND FAILED LOGINS").locator("tbody tr")
    assert refused.count() == 1
    changes = section(page, "CHANGES MADE BY THEM")
    follow(page, changes.locator("a.trace", has_text=f"auth.group #{role.pk}").first,
           f"/leza/audit/auth.group/{role.pk}")  # fmt: skip
    rows = page.locator("table.history tbody tr")
    actions = [rows.nth(i).locator("td").nth(2).inner_text().strip() for i in range(2)]
    assert actions == ["create", "update"]
    assert "Dora Browser" in rows.nth(1).inner_text()
    for back in (f"/leza/performers/{dora.pk}", f"/leza/sessions/{sid}", f"/leza/requests/{rid}",
                 "/leza/access"):  # fmt: skip
        page.go_back()
        page.wait_for_url(f"**{back}")
    context.close()
