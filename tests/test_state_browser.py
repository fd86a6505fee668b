"""STATE in a real browser: headless Chromium (Playwright) against tests/dashboard_app.py
under uvicorn, over a SQLite file.

The admin signs in and lands on STATE; the endpoint table's row of
``GET /items/{item_id}`` leads to ACCESS filtered to that endpoint, which
shows exactly that endpoint's requests; the endpoints sort by p95; the page
raises no Content-Security-Policy violation (the charts are inline SVG, styled
by the page's own stylesheet). Chromium as for tests/test_dashboard_browser.py
(``LEZA_TEST_CHROMIUM``, ``LEZA_REQUIRE_BROWSER=1``); ``LEZA_SCREENSHOTS=<dir>``
saves the pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_app import Served, build_app
from test_dashboard_browser import CHROME, IPHONE, browser, shoot

from leza_middleware import Leza

__all__ = ["browser"]  # the module's Chromium fixture, shared

ITEMS = 6  # GET /items/{n} that answer 200, plus one that answers 422


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, city_db: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("state-browser")
    leza = Leza(
        storage=f"sqlite:///{tmp / 'leza.db'}",
        geoip_db=str(city_db),
        trusted_proxies=("127.0.0.1",),
        secret_key="state-browser-secret-0123456789",
        spill_dir=str(tmp / "spill"),
        flush_interval=0.05,
        app_name="shop",
    )
    served = Served(build_app(leza))
    bob = httpx.Client(
        base_url=served.url, headers={"User-Agent": CHROME, "X-Forwarded-For": "161.35.214.167"}
    )
    anon = httpx.Client(base_url=served.url, headers={"User-Agent": IPHONE})
    try:
        assert bob.post("/login", data={"username": "bob"}).status_code == 303
        for n in range(1, ITEMS + 1):
            assert bob.get(f"/items/{n}").status_code == 200
        assert bob.get("/items/not-a-number").status_code == 422
        assert anon.get("/me").status_code == 401
        assert anon.get("/nowhere").status_code == 404
        assert leza.flush(5)
        yield served.url
    finally:
        bob.close()
        anon.close()
        served.stop()
        leza.shutdown(timeout=5)


@pytest.fixture
def page(browser: Any, site: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.csp = []  # type: ignore[attr-defined]
    page.on(
        "console",
        lambda m: page.csp.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    context.close()


def test_state_row_leads_to_access_filtered_to_that_endpoint(page: Any, site: str) -> None:
    page.goto(f"{site}/login")
    page.fill("input[name=username]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{site}/leza/state")  # STATE is the landing page
    assert page.title() == "STATE · leza"
    assert page.locator('nav.tabs a[aria-current="page"]').inner_text() == "STATE"
    assert page.locator("svg.chart").count() == 1
    shoot(page, "state")

    row = page.locator("table.endpoints tbody tr", has_text="/items/{item_id}")
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert cells[0].split() == ["GET", "/items/{item_id}"]
    assert cells[1] == str(ITEMS + 1)  # six 200s and one 422
    row.locator("a.endpoint").click()

    page.wait_for_url(re.compile(r".*/leza/access\?.*endpoint=GET.*"))
    assert page.locator('nav.tabs a[aria-current="page"]').inner_text() == "ACCESS"
    assert page.input_value("input[name=endpoint]") == "GET /items/{item_id}"
    shown = page.locator("table.rows tbody tr")
    assert shown.count() == ITEMS + 1
    endpoints = page.locator("table.rows tbody td.endpoint").all_inner_texts()
    assert sorted(endpoints) == sorted(
        [f"/items/{n}" for n in range(1, ITEMS + 1)] + ["/items/not-a-number"]
    )
    types = page.locator("table.rows tbody tr td:nth-child(4)").all_inner_texts()
    assert set(types) == {"GET"}
    assert "7 requests of GET /items/{item_id}" in page.inner_text("p.summary")
    shoot(page, "state-to-access")

    page.go_back()
    page.wait_for_url(f"{site}/leza/state")
    page.click("table.endpoints thead >> text=P95")
    page.wait_for_url(re.compile(r".*/leza/state\?sort=p95"))
    assert page.locator("table.endpoints th a[aria-current]").inner_text().startswith("P95")
    assert page.csp == []  # type: ignore[attr-defined]
