"""``leza demo``: a FastAPI app with the middleware, driven by real-looking traffic.

It starts the app under uvicorn on a free loopback port, sends requests as
varied browsers, bots and client IPs (through ``X-Forwarded-For``, believed
because the demo trusts its own loopback proxy), then reads the events back
through ``leza.query.access()`` and prints them — followed by what the rest
of the product made of the same traffic: sessions, the audit log, the app's
own log records, advisories and three availability checks (one up, one down,
one that goes down and recovers) — and ends with STATE, as ``leza status``
prints it.
"""

import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .leza import Leza

__all__ = ["TRAFFIC", "run_demo"]

#: The demo's signing key when LEZA_SECRET_KEY is not set. Public by design:
#: it signs the demo's own synthetic rows, never an app's.
DEMO_KEY = "leza-demo-key-not-a-secret"

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAMSUNG_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
)
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Safari/605.1.15"
)
EDGE_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67"
)
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
CURL = "curl/8.5.0"


@dataclass(frozen=True)
class Visit:
    method: str
    path: str
    user_agent: str
    ip: str
    user: str | None = None  # signs in as this demo user (Authorization: Bearer demo-<user>)


# Cities per the GeoLite2 database bundled with maxminddb-geolite2.
TRAFFIC: tuple[Visit, ...] = (
    Visit("GET", "/", CHROME_WIN, "193.0.6.139", "alice"),  # Amsterdam
    Visit("GET", "/items/42", SAFARI_IPHONE, "203.2.218.214", "bob"),  # Sydney
    Visit("GET", "/", GOOGLEBOT, "2001:4860:4860::8888"),  # Mountain View
    Visit("GET", "/items/7?color=red&token=s3cr3t", FIREFOX_LINUX, "89.160.20.112", "carol"),
    Visit("POST", "/items", SAMSUNG_ANDROID, "41.0.0.1", "dave"),  # South Africa
    Visit("GET", "/admin", SAFARI_IPAD, "122.248.230.1", "bob"),  # Singapore, denied
    Visit("GET", "/admin", EDGE_WIN, "2a00:1450:4001:81b::200e", "root"),  # Frankfurt
    Visit("GET", "/missing", SAFARI_MAC, "81.2.69.142"),  # London
    Visit("GET", "/boom", CHROME_WIN, "193.0.6.139", "alice"),  # app error -> 500
    Visit("GET", "/", BINGBOT, "1.1.1.1"),
    Visit("GET", "/items/1", CURL, "161.35.614.165"),  # invalid IP: stored as received
    Visit("GET", "/", CHROME_WIN, "10.1.2.3", "alice"),  # private: no geo
    Visit("POST", "/login", CHROME_WIN, "193.0.6.139", "alice"),  # a session from Amsterdam
    Visit("POST", "/login", SAFARI_IPAD, "122.248.230.1", "alice"),  # Singapore, seconds later
    Visit("POST", "/logout", CHROME_WIN, "193.0.6.139", "alice"),
    Visit("GET", "/reports/7", FIREFOX_LINUX, "89.160.20.128"),  # the slow one
)

#: The demo app's own logger: its records go to the LOG tab.
app_log = logging.getLogger("leza_demo.app")


def build_app(leza: Leza) -> Any:
    """The demo FastAPI app: one line adds the middleware."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from starlette.authentication import (
            AuthCredentials,
            AuthenticationBackend,
            SimpleUser,
        )
        from starlette.middleware.authentication import AuthenticationMiddleware
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "leza demo needs FastAPI and uvicorn: pip install 'leza-middleware[demo]'"
        ) from exc

    from .integrations.asgi import LezaMiddleware

    class BearerDemoUsers(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            auth = conn.headers.get("authorization", "")
            if not auth.startswith("Bearer demo-"):
                return None
            return AuthCredentials(["authenticated"]), SimpleUser(auth.removeprefix("Bearer demo-"))

    app = FastAPI(title="leza demo")

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/items", status_code=201)
    async def create_item() -> dict[str, str]:
        item = {"name": "Deluxe widget", "price": "19.90"}
        leza.audit.record(action="create", entity_type="item", entity_id="43", after=item)
        app_log.info("item 43 created")
        return {"created": "ok"}

    @app.post("/login")
    async def login(request: Request) -> dict[str, str]:
        user = request.user.display_name if request.user.is_authenticated else "anonymous"
        leza.sessions.login({"id": user, "name": user})
        return {"signed_in": user}

    @app.post("/logout")
    async def logout() -> dict[str, str]:
        leza.sessions.logout()
        return {"signed_out": "ok"}

    @app.get("/admin")
    async def admin(request: Request) -> dict[str, str]:
        if request.user.is_authenticated and request.user.display_name == "root":
            return {"admin": "welcome"}
        raise HTTPException(status_code=403, detail="admins only")

    @app.get("/reports/{report_id}")
    async def report(report_id: int) -> dict[str, int]:
        await asyncio.sleep(0.3)  # a slow endpoint: STATE's p95 shows it
        return {"report": report_id}

    @app.get("/boom")
    async def boom() -> None:
        app_log.error("about to fail on purpose")
        raise RuntimeError("simulated failure")

    app.add_middleware(AuthenticationMiddleware, backend=BearerDemoUsers())
    app.add_middleware(LezaMiddleware, leza=leza)  # <- the one line
    return app


def _serve(app: Any) -> tuple[Any, threading.Thread, int]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # proxy_headers=False: uvicorn would otherwise rewrite the peer address from
    # X-Forwarded-For itself; the demo shows the middleware's own proxy walk.
    # log_level="critical": /boom's traceback is expected, not news.
    config = uvicorn.Config(
        app, log_level="critical", lifespan="on", access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo server did not start")
        time.sleep(0.02)
    return server, thread, port


def drive(port: int, visits: Sequence[Visit]) -> list[str]:
    """Send the visits over real HTTP; return their request ids.

    The demo sends its own ``X-Request-ID`` (the middleware reuses valid
    incoming ids), so even the request that crashes the app, whose 500 is
    written by Starlette outside the middleware, can be found afterwards.
    """
    import httpx

    run = os.urandom(4).hex()
    ids = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i, v in enumerate(visits):
            rid = f"demo-{run}-{i:02d}"
            headers = {"User-Agent": v.user_agent, "X-Forwarded-For": v.ip, "X-Request-ID": rid}
            if v.user:
                headers["Authorization"] = f"Bearer demo-{v.user}"
            for attempt in (1, 2):  # a busy machine may reset one connection
                try:
                    client.request(v.method, v.path, headers=headers)
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise
            ids.append(rid)
    return ids


def _location(event: dict[str, Any]) -> str:
    geo = event.get("geoLocationInfoOfIp")
    if not geo:
        return "-"
    return ", ".join(x for x in (geo.get("city"), geo.get("country_code")) if x) or "-"


def _device(event: dict[str, Any]) -> str:
    if event.get("bot"):
        return f"bot: {event['bot']['name']}"
    b, o, d = event.get("browser") or {}, event.get("os") or {}, event.get("device") or {}
    parts = [b.get("name", ""), o.get("name", ""), d.get("type", "")]
    return " / ".join(p for p in parts if p) or "-"


def format_table(events: Sequence[dict[str, Any]]) -> str:
    cols = ("TIME", "ACTION", "TYPE", "ENDPOINT", "STATUS", "PERFORMER", "DEVICE", "LOCATION", "IP")
    rows = [
        (
            e["timestamp"][11:23],
            e["action"],
            e["endpoint_type"],
            e["endpoint"][:38],
            str(e["status"]),
            (e.get("performer") or {}).get("name", "") or "-",
            _device(e)[:40],
            _location(e)[:26],
            e["ip"] + ("" if e["ip_valid"] else " (invalid)"),
        )
        for e in events
    ]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _closed_port() -> int:
    """A loopback port nothing listens on: the demo's DOWN service."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Flaky:
    """The demo's ``search`` check: fails for its first ``seconds``, then passes
    (an outage and its recovery: one DOWN and one RECOVERED alarm)."""

    def __init__(self, seconds: float) -> None:
        self.healthy_at = time.monotonic() + seconds

    def __call__(self) -> None:
        if time.monotonic() < self.healthy_at:
            raise ConnectionError("search index rebuilding")


def _settled(leza: Leza, timeout: float = 5.0) -> None:
    """Wait until the demo checks have left ``unknown`` and ``search`` is back up."""
    deadline = time.monotonic() + timeout
    monitor = leza.availability.monitor
    while time.monotonic() < deadline:
        states = {c.name: monitor.local_state(c.name) for c in leza.availability.checks}
        search = states.get("search")
        if all(s is not None and s[0] != "unknown" for s in states.values()) and (
            search is not None
            and search[0] == "up"
            and search[1] is not None
            and search[1].previous == "up"
        ):
            return
        time.sleep(0.05)


def summarize(leza: Leza, since: float, storage: str) -> str:
    """What the same traffic gave the other tabs: sessions, audit, logs, advisories, checks."""
    lines = []
    sessions = leza.query.sessions(since=since, limit=100).items
    ended = [s for s in sessions if not s["active"]]
    who = sorted({(s["performer"] or {}).get("name", "?") for s in sessions})
    lines.append(
        f"SESSION   {len(sessions)} started by {', '.join(who) or '-'}; "
        f"{len(ended)} ended ({', '.join(s['end_reason'] or '?' for s in ended) or '-'})"
    )
    for record in reversed(leza.query.audit(since=since, limit=10)):
        actor = (record["actor"] or {}).get("name") or "-"
        after = json.dumps(record["after"], ensure_ascii=False)
        lines.append(
            f"AUDIT     {record['action']} {record['entity_type']}:{record['entity_id']} "
            f"by {actor} {after}"
        )
    verified = leza.audit.verify()
    lines.append(f"AUDIT     chain {'intact' if verified else 'BROKEN: ' + str(verified.reason)}")
    for record in reversed(leza.query.logs(since=since, limit=10)):
        lines.append(
            f"LOG       {record['action'].upper():<8} {record['logger']}: {record['message']} "
            f"(request {record['request_id']}, {record['performer_id'] or '-'})"
        )
    for advisory in reversed(leza.query.advisories(since=since, limit=10)):
        lines.append(f"ADVISORY  {advisory['severity'].upper():<8} {advisory['message']}")
    for name, st in leza.availability.status().items():
        detail = st["last_error"] or f"{st['last_latency_ms']} ms"
        lines.append(
            f"CHECK     {name}: {st['state'].upper()} ({detail}), uptime 24 h {st['uptime_24h']}%"
        )
    key = "" if os.environ.get("LEZA_SECRET_KEY") else f"LEZA_SECRET_KEY={DEMO_KEY} "
    lines.append(f"\nSee it all in the admin view: {key}leza dashboard --storage {storage}")
    lines.append(f"Check the audit chain:         {key}leza verify --storage {storage}")
    if key:
        lines.append(
            "(the demo's own key, printed here and so not a secret: "
            "give your app a secret one, LEZA_SECRET_KEY)"
        )
    return "\n".join(lines)


def run_demo(storage: str | None = None, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out  # looked up per call: capsys, redirect_stdout
    started = time.time()
    leza = Leza(
        storage=storage,
        # A fixed key (unless one is set) so the dashboard can revoke and
        # `leza verify` can vouch for the demo's audit rows afterwards, run after run.
        secret_key=os.environ.get("LEZA_SECRET_KEY") or DEMO_KEY,
        trusted_proxies=("127.0.0.1", "::1"),
        app_name="leza-demo",
        logout_routes=["POST /logout"],
    )
    if not leza.geo.enabled:
        print("note: no GeoIP database; install leza-middleware[geolite2] for locations", file=out)
    handler = leza.logging_handler()
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    app_log.propagate = False  # the demo prints its own summary, not log lines
    server, thread, port = _serve(build_app(leza))
    try:
        leza.availability.tcp("demo-api", "127.0.0.1", port, interval=0.1, timeout=0.1,
                              retries=1)  # fmt: skip
        leza.availability.tcp("payments", "127.0.0.1", _closed_port(), interval=0.1,
                              timeout=0.1, retries=2)  # fmt: skip
        leza.availability.check("search", Flaky(0.8), interval=0.1, timeout=0.1, retries=1)
        request_ids = drive(port, TRAFFIC)
        _settled(leza)
    finally:
        leza.availability.stop()
        app_log.removeHandler(handler)
        server.should_exit = True
        thread.join(10)
    leza.flush(10)
    leza.flush(10)  # what the last batch derived (session ends, advisories)
    mine = set(request_ids)
    events = [
        e for e in leza.query.access(since=started - 1, limit=1000) if e["request_id"] in mine
    ]
    events.reverse()  # oldest first reads like a story
    print(
        f"leza demo: {len(request_ids)} requests sent, {len(events)} access events "
        f"stored in {leza.storage.describe()}\n",
        file=out,
    )
    print(format_table(events), file=out)
    sample = next((e for e in events if e.get("geoLocationInfoOfIp") and e.get("performer")), None)
    if sample is not None:
        print("\nOne event in full:", file=out)
        print(json.dumps(sample, indent=2, ensure_ascii=False), file=out)
    print("\nThe other tabs, from the same traffic:", file=out)
    where = storage or str(leza.settings.storage)
    print(summarize(leza, started - 1, where), file=out)
    stats = leza.stats()
    print(
        f"\nrecorder: enqueued={stats['enqueued']} written={stats['written']} "
        f"dropped={stats['dropped']} spilled={stats['spilled']} pending={stats['pending']}",
        file=out,
    )
    from .cli.status import render

    state = leza.query.state(since=started - 1)
    print("\nSTATE of the demo's minutes (`leza status` prints the same):\n", file=out)
    print(render(state, storage=leza.storage.describe()), end="", file=out)
    leza.shutdown()
    return 0 if len(events) == len(request_ids) else 1
