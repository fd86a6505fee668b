"""Traffic through a real app that the traceability views are checked against.

Shared by tests/test_trace.py, tests/test_trace_browser.py and
bench/screenshots.py. The app is tests/dashboard_app.py under uvicorn (real
HTTP, on loopback, a trusted proxy so that each client says where it is),
with ``leza.logging_handler()`` on its logger. What happens, in order:

1. bob signs in on a desktop Chrome in Frankfurt, opens item 42 and renames
   it (an audit record and a log record in that request); then he is seen
   from London in the same session, a report is refused to him (403, denied)
   and he posts the sign-in form empty (a failed login, his, since he is
   signed in);
2. carol signs in on an iPhone in London and renames item 42 again;
3. bob signs in a second time, on a phone in Linköping: a new machine and a
   new country (advisories), then signs out of the Frankfurt session;
4. someone anonymous opens item 5 with a token in the query string.

:class:`Played` keeps every id the assertions need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from dashboard_app import Served, build_app
from mmdb_factory import FRANKFURT_IP, LINKOPING_IP, LONDON_IP

from leza_middleware import Leza

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
SECRET_TOKEN = "tok-9f8e7d6c5b4a-super-secret"
APP_LOGGER = "shop"


@dataclass
class Played:
    """The ids of what the scenario did (each a response's ``x-request-id``)."""

    bob_login: str = ""
    bob_rename: str = ""
    bob_london: str = ""
    bob_denied: str = ""
    bob_failed: str = ""
    carol_rename: str = ""
    bob_phone_login: str = ""
    anonymous: str = ""
    bob_desktop_session: str = ""
    bob_phone_session: str = ""
    carol_session: str = ""
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def make_site_leza(storage: str, city_db: Path, tmp: Path, **options: Any) -> Leza:
    options.setdefault("secret_key", "trace-tests-secret-0123456789")
    return Leza(
        storage=storage,
        geoip_db=str(city_db),
        trusted_proxies=("127.0.0.1",),  # the test's clients say where they are
        spill_dir=str(tmp / "spill"),
        flush_interval=0.05,
        app_name="shop",
        **options,
    )


def serve(leza: Leza) -> Served:
    """The app under uvicorn, its log records going to ``leza`` (until :func:`stop`)."""
    app_log = logging.getLogger(APP_LOGGER)
    app_log.setLevel(logging.INFO)
    handler = leza.logging_handler()
    app_log.addHandler(handler)
    served = Served(build_app(leza))
    served.log_handler = handler  # type: ignore[attr-defined]
    return served


def stop(served: Served) -> None:
    served.stop()
    logging.getLogger(APP_LOGGER).removeHandler(served.log_handler)  # type: ignore[attr-defined]


def _client(played: Played, url: str, name: str, ua: str, ip: str) -> httpx.Client:
    client = httpx.Client(base_url=url, headers={"User-Agent": ua, "X-Forwarded-For": ip})
    played.clients[name] = client
    return client


def _rid(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:200])
    return response.headers["x-request-id"]


def play(leza: Leza, url: str) -> Played:
    """The scenario of the module docstring; returns once everything is stored."""
    p = Played()
    bob = _client(p, url, "bob", CHROME, FRANKFURT_IP)
    p.bob_login = _rid(bob.post("/login", data={"username": "bob"}, follow_redirects=False), 303)
    assert bob.get("/items/42").status_code == 200
    p.bob_rename = _rid(bob.post("/items/42/rename", data={"name": "Blue chair"}), 200)
    bob.headers["X-Forwarded-For"] = LONDON_IP
    p.bob_london = _rid(bob.get("/items/42"), 200)
    p.bob_denied = _rid(bob.get("/reports/7"), 403)
    p.bob_failed = _rid(bob.post("/login", data={"username": ""}), 400)
    carol = _client(p, url, "carol", IPHONE, LONDON_IP)
    _rid(carol.post("/login", data={"username": "carol"}, follow_redirects=False), 303)
    p.carol_rename = _rid(carol.post("/items/42/rename", data={"name": "Red chair"}), 200)
    phone = _client(p, url, "bob-phone", ANDROID, LINKOPING_IP)
    p.bob_phone_login = _rid(
        phone.post("/login", data={"username": "bob"}, follow_redirects=False), 303
    )
    assert phone.get("/me").status_code == 200
    anonymous = _client(p, url, "anonymous", CHROME, "9.9.9.9")
    p.anonymous = _rid(anonymous.get(f"/items/5?token={SECRET_TOKEN}&page=2"), 200)
    assert leza.flush(10)
    for name, attr in (("bob", "bob_desktop_session"), ("bob-phone", "bob_phone_session"),
                       ("carol", "carol_session")):  # fmt: skip
        rid = {"bob": p.bob_rename, "bob-phone": p.bob_phone_login, "carol": p.carol_rename}[name]
        view = leza.trace.request(rid)
        assert view is not None
        setattr(p, attr, view["session_id"])
    # bob signs out of the desktop session: it ends, the phone's stays active.
    assert bob.post("/logout").status_code == 200
    assert leza.flush(10)
    return p
