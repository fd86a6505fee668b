"""Screenshots of the dashboard's tabs over the demo's data, for docs/dashboard.md.

    python bench/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

1. ``leza demo`` fills a fresh SQLite file (browsers, bots, client IPs, a
   denial, a 404, a 500 and an invalid IP: the ACCESS tab's rows).
2. The demo records no sign-ins, so the same file is then used the way an app
   with accounts uses it: tests/dashboard_app.py (sign-in form, sessions, an
   audited change, its logger on ``leza.logging_handler()``, the dashboard at
   /leza) under uvicorn, where four people sign in from the demo's browsers
   and places, one renames an item (AUDIT, LOG), one signs out (an ended
   session), and a sign-in without a name fails (LOG).
3. Headless Chromium (driven by Playwright, by path: no download) signs in as
   the admin through the form, revokes carol's session from the SESSION tab
   (her phone's next request is refused: an ADVISORY), and saves a full-page
   PNG of each tab: access.png, session.png, audit.png, advisory.png, log.png,
   plus access-details.png with one event's MORE DETAILS card open.
4. From bob's rename on ACCESS the browser follows the links, as an admin
   tracing it would: the request (trace-request.png), its session, seen from
   Sydney and then from a second address (trace-session.png), bob
   (trace-performer.png), and item 42's history (trace-entity.png).

STATE (state.png, the landing page the admin signs in to) shows the demo's
requests and checks over a day of generated history written through the
storage first (bench/state_history.py), so its chart has a day's shape.

Needs the ``test`` extra (Playwright, uvicorn, httpx, the GeoLite2 database)
and a Chromium binary ($LEZA_TEST_CHROMIUM or Debian's /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from dashboard_app import CHROMIUM, CHROMIUM_ARGS, Served, build_app
from state_history import shoot_state, write_history

from leza_middleware import Leza
from leza_middleware.demo import CHROME_WIN, FIREFOX_LINUX, SAFARI_IPHONE, SAMSUNG_ANDROID, run_demo

ROOT = Path(__file__).resolve().parent.parent
#: (username, User-Agent, client IP): the demo's own browsers and places.
PEOPLE = (
    ("alice", CHROME_WIN, "193.0.6.139"),  # Amsterdam
    ("bob", SAFARI_IPHONE, "203.2.218.214"),  # Sydney
    ("carol", FIREFOX_LINUX, "89.160.20.112"),  # Sweden
    ("dave", SAMSUNG_ANDROID, "41.0.0.1"),  # South Africa
)
ADMIN_IP = "2a00:1450:4001:81b::200e"  # Frankfurt: where the admin's browser is
TABS = (("ACCESS", "access"), ("SESSION", "session"), ("AUDIT", "audit"),
        ("ADVISORY", "advisory"), ("LOG", "log"))  # fmt: skip


def use_the_app(url: str) -> dict[str, httpx.Client]:
    """Sign-ins, an audited change, a sign-out and a failed sign-in, over real HTTP."""
    clients = {}
    for name, ua, ip in PEOPLE:
        client = httpx.Client(base_url=url, headers={"User-Agent": ua, "X-Forwarded-For": ip})
        r = client.post("/login", data={"username": name})
        assert r.status_code == 303, r.text
        client.get("/me")
        clients[name] = client
    clients["bob"].get("/items/42")
    r = clients["bob"].post("/items/42/rename", data={"name": "Blue chair"})
    assert r.status_code == 200, r.text
    clients["bob"].headers["X-Forwarded-For"] = "161.35.214.167"  # bob, later, elsewhere
    clients["bob"].get("/items/42")
    assert clients["bob"].get("/reports/7").status_code == 403  # refused: denied
    r = clients["alice"].post("/items/42/rename", data={"name": "Red chair"})
    assert r.status_code == 200, r.text
    clients["dave"].post("/logout")
    clients["carol"].post("/login", data={"username": ""})  # a failed sign-in
    return clients


def revoke(page: Any, url: str, leza: Leza, name: str) -> None:
    """Revoke ``name``'s session from the SESSION tab, as an admin does."""
    [session] = leza.sessions.active(performer_id=name)
    page.goto(f"{url}/leza/sessions?action=active")
    page.once("dialog", lambda dialog: dialog.accept())
    form = page.locator(f'form.revoke:has(input[name=session_id][value="{session["_id"]}"])')
    form.locator("button").click()
    page.wait_for_url("**revoked=*")


def trace(page: Any, url: str, out: Path) -> None:
    """ACCESS row -> its request -> the session -> the performer -> an entity's history."""
    page.goto(f"{url}/leza/access")
    row = page.locator("table.rows tbody tr", has_text="/items/42/rename").filter(has_text="Sydney")
    steps = (
        ("trace-request", row.locator("td.endpoint a.trace")),
        ("trace-session", page.locator("p.summary a.trace").nth(1)),
        ("trace-performer", page.locator("header.view-head a.trace")),
        ("trace-entity", page.locator("section.trace-part a.trace", has_text="item #42").first),
    )
    for name, link in steps:
        link.click()
        page.wait_for_load_state("domcontentloaded")
        path = out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    if not os.path.exists(args.chromium):
        print(f"no Chromium at {args.chromium}: apt-get install chromium, or --chromium PATH")
        return 2
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leza-screenshots-") as tmp:
        storage = f"sqlite:///{Path(tmp) / 'demo.db'}"
        # The demo's own Leza: a fixed key keeps it from warning about a per-process one.
        os.environ.setdefault("LEZA_SECRET_KEY", "leza-screenshots-not-a-secret-0123456789")
        demo_out = io.StringIO()
        if run_demo(storage=storage, out=demo_out) != 0:
            print(demo_out.getvalue())
            return 1
        write_history(storage, time.time_ns() // 1000)  # STATE's day (see above)
        leza = Leza(
            storage=storage,
            trusted_proxies=("127.0.0.1",),  # the clients below say where they are
            secret_key="leza-screenshots-not-a-secret-0123456789",
            app_name="leza-demo",
            spill_dir=str(Path(tmp) / "spill"),
        )
        # The app's own log records: the LOG tab.
        shop_log = logging.getLogger("shop")
        shop_log.setLevel(logging.INFO)
        shop_log.addHandler(leza.logging_handler())
        served = Served(build_app(leza))
        try:
            clients = use_the_app(served.url)
            assert leza.flush(10)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                context = browser.new_context(
                    viewport={"width": args.width, "height": 800},
                    extra_http_headers={"X-Forwarded-For": ADMIN_IP},
                )
                page = context.new_page()
                page.goto(f"{served.url}/login")
                page.fill("input[name=username]", "admin")
                page.click("button[type=submit]")
                page.wait_for_url(f"{served.url}/leza/state")  # STATE: the landing page
                shoot_state(page, served.url, out)
                # carol's session is revoked from the dashboard; her phone tries again.
                revoke(page, served.url, leza, "carol")
                assert clients["carol"].get("/me").status_code == 401
                for client in clients.values():
                    client.close()
                assert leza.flush(10)
                time.sleep(0.3)  # derived records (advisories) follow their batch
                assert leza.flush(10)
                page.goto(f"{served.url}/leza/audit")  # starts the chain's verification
                time.sleep(0.5)
                for label, name in TABS:
                    page.click(f"nav.tabs >> text={label}")
                    page.wait_for_selector(f'nav.tabs a[aria-current="page"]:text-is("{label}")')
                    path = out / f"{name}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(f"wrote {path}")
                page.set_viewport_size({"width": args.width + 200, "height": 900})
                page.click("nav.tabs >> text=ACCESS")
                row = page.locator("table.rows tbody tr", has_text="Amsterdam").first
                row.locator("summary", has_text="MORE DETAILS").click()
                row.scroll_into_view_if_needed()
                path = out / "access-details.png"
                page.screenshot(path=str(path))
                print(f"wrote {path}")
                page.set_viewport_size({"width": args.width, "height": 900})
                trace(page, served.url, out)
                browser.close()
        finally:
            served.stop()
            leza.shutdown(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
