"""Acceptance of STATE (issue 14): a real app under uvicorn, real HTTP, known traffic.

tests/state_app.py runs in a uvicorn subprocess on SQLite and on PostgreSQL.
Its availability checks probe two real local HTTP servers: ``billing`` always
answers 200; ``payments`` answers 503 until the test turns it back to 200. A
real local receiver takes the webhook notifications. Two people sign in
(alice, bob) and, with an anonymous client, send a known mix: successes, the
app's own 404s and 403s, unmatched paths, requests an endpoint permission
refuses (403 signed in, 401 anonymous; refused before routing, so they count
under ``(unmatched)``), 500s, a failed login and a deliberately slow endpoint.

Then STATE as HTML (``/leza/state``), as JSON (``/leza/api/state``) and from
``leza status --json`` (a subprocess on the same storage) must each show exactly
that traffic per endpoint, the slow endpoint's p95 within one histogram bucket
of the true value (from the stored durations), both sessions, and the outage of
``payments`` as an incident that recovered; the webhook must have received
exactly one DOWN and one RECOVERED.
"""

from __future__ import annotations

import html
import http.server
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import postgres_schema

from leza_middleware import Leza
from leza_middleware.state import LATENCY_BOUNDS_MS
from leza_middleware.state.labels import method_label, outcome_index, route_label

HERE = Path(__file__).resolve().parent
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
#: endpoint -> (requests, server errors, denied): the traffic sent (see drive()).
KNOWN = {
    "GET /items/{item_id}": (13, 0, 0),
    "POST /login": (3, 0, 0),
    "GET /admin/panel": (2, 0, 0),
    "GET (unmatched)": (8, 0, 4),
    "GET /forbidden": (2, 0, 2),
    "GET /boom": (2, 2, 0),
    "GET /slow": (10, 0, 0),
}
SLOW = 10


class Target:
    """A real local HTTP server a check probes; ``status`` is what it answers."""

    def __init__(self, status: int) -> None:
        self.status = status
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(target.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(Target):
    """The webhook's real receiver: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def events(self, check: str) -> list[str]:
        return [b["event"] for b in self.bodies if b.get("check") == check]


@dataclass
class Scenario:
    base: str
    storage: str
    env: dict[str, str]
    webhook: Receiver
    reader: Leza
    raw: list[dict[str, Any]] = field(default_factory=list)  # stored access events, ours


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def drive(base: str) -> None:
    """The known traffic (KNOWN), over real HTTP, with two signed-in browsers."""
    alice = httpx.Client(base_url=base, headers={"X-User": "alice", "User-Agent": CHROME})
    bob = httpx.Client(base_url=base, headers={"X-User": "bob", "User-Agent": IPHONE})
    anon = httpx.Client(base_url=base, headers={"User-Agent": "curl/8.5.0"})
    with alice, bob, anon:
        assert alice.post("/login").status_code == 200
        assert bob.post("/login").status_code == 200
        for i in range(1, 11):
            assert alice.get(f"/items/{i}").status_code == 200
        for _ in range(3):
            assert alice.get("/items/999").status_code == 404
        for _ in range(2):
            assert alice.get("/admin/panel").status_code == 200
        for _ in range(3):
            assert bob.get("/admin/panel").status_code == 403  # lacks the permission
        for _ in range(2):
            assert bob.get("/forbidden").status_code == 403  # the app refuses
        for _ in range(2):
            assert bob.get("/boom").status_code == 500
        for _ in range(SLOW):
            assert bob.get("/slow").status_code == 200
        for i in range(4):
            assert anon.get(f"/missing/{i}").status_code == 404
        assert anon.get("/admin/panel").status_code == 401  # not signed in
        assert anon.post("/login").status_code == 401  # a failed login


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours(endpoints: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Each endpoint's (requests, server errors, denied), the admin view's own left out."""
    return {
        e["endpoint"]: (e["requests"], e["server_errors"], e["denied"])
        for e in endpoints
        if not e["route"].startswith("/leza")
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp(f"state-{request.param}")
    if request.param == "sqlite":
        yield from _run(f"sqlite:///{tmp / 'leza.db'}", tmp)
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield from _run(url, tmp)


def _run(storage: str, tmp: Path) -> Iterator[Scenario]:
    up, flaky, webhook = Target(200), Target(503), Receiver()
    env = dict(os.environ)
    env.update(
        LEZA_STORAGE=storage, LEZA_GEOIP_DB="off", LEZA_FLUSH_INTERVAL="0.1",
        LEZA_SECRET_KEY="state-acceptance-secret-0123456789", LEZA_SPILL_DIR=str(tmp / "spill"),
        STATE_UP_URL=up.url, STATE_FLAKY_URL=flaky.url, STATE_WEBHOOK=webhook.url,
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    port = _free_port()
    log = open(tmp / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "state_app:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    reader = Leza(storage=storage, geoip_db=False, sessions=False, spill_dir=str(tmp / "r"))
    try:

        def started() -> bool:
            try:
                httpx.get(f"{base}/leza/health/live", timeout=1)
            except httpx.TransportError:
                assert proc.poll() is None, (tmp / "uvicorn.log").read_text()
                return False
            return True

        wait(started, 30, "the app to start")
        wait(lambda: "down" in webhook.events("payments"), 20, "payments to go DOWN")
        drive(base)
        flaky.status = 200
        wait(lambda: "recovered" in webhook.events("payments"), 20, "payments to recover")
        time.sleep(1.0)  # long enough for a second alarm, were one to come

        def stored() -> bool:
            state = reader.query.state()
            return ours(state["endpoints"]) == KNOWN and state["sessions"]["active"] == 2

        wait(stored, 20, "the traffic to be written")
        scenario = Scenario(base, storage, env, webhook, reader)
        scenario.raw = [
            e for e in reader.query.access(limit=10_000) if not e["endpoint"].startswith("/leza")
        ]
        yield scenario
    finally:
        reader.shutdown(timeout=2)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for server in (up, flaky, webhook):
            server.close()


def admin(s: Scenario, path: str) -> httpx.Response:
    r = httpx.get(f"{s.base}/leza{path}", headers={"X-Admin": "yes"}, timeout=10)
    assert r.status_code == 200, r.text[:400]
    return r


def true_p95_bucket(s: Scenario) -> int:
    durations = sorted(e["duration_ms"] for e in s.raw if e["route"] == "/slow")
    assert len(durations) == SLOW
    p95 = durations[math.ceil(0.95 * len(durations)) - 1]
    return bisect_left(LATENCY_BOUNDS_MS, p95)


def check_state(s: Scenario, state: dict[str, Any]) -> None:
    """What every view of STATE must show of the scenario."""
    # The raw stored events, counted, are the known traffic, and so is STATE.
    counted: Counter[tuple[str, int]] = Counter()
    for e in s.raw:
        endpoint = f"{method_label(e['endpoint_type'])} {route_label(e['route'])}"
        counted[(endpoint, 0)] += 1
        counted[(endpoint, outcome_index(e["outcome"], e["status"]))] += 1
    assert {k: (counted[(k, 0)], counted[(k, 3)], counted[(k, 4)]) for k in KNOWN} == KNOWN
    assert ours(state["endpoints"]) == KNOWN
    slow = next(e for e in state["endpoints"] if e["endpoint"] == "GET /slow")
    assert abs(bisect_left(LATENCY_BOUNDS_MS, slow["latency_ms"]["p95"]) - true_p95_bucket(s)) <= 1
    assert slow["latency_ms"]["p50"] >= 150.0  # 0.2 s each
    who = state["sessions"]
    assert (who["active"], who["performers"]) == (2, 2)
    assert (who["logins"], who["login_failures"]) == (2, 1)
    assert {(d["device_type"], d["active"]) for d in who["by_device"]} == {
        ("desktop", 1), ("smartphone", 1),
    }  # fmt: skip
    services = {x["name"]: x for x in state["services"]}
    billing, payments = services["billing"], services["payments"]
    assert billing["state"] == "up"
    assert billing["incidents"] == []
    assert billing["uptime"]["24h"] == 1.0
    assert payments["state"] == "up"
    [outage] = payments["incidents"]
    assert outage["ongoing"] is False
    assert outage["recovered_to"] == "up"
    assert outage["recovered_at"] > outage["down_at"]
    assert outage["duration_s"] > 0
    assert "503" in (outage["error"] or "")
    assert 0.0 < payments["uptime"]["24h"] < 1.0
    assert payments["since"] == outage["recovered_at"]
    assert any(a["rule"] == "service_down" for a in state["advisories"])


def test_api_state(scenario: Scenario) -> None:
    state = admin(scenario, "/api/state").json()
    check_state(scenario, state)
    assert state["recorder"]["live"] is True  # the app's own recorder, in its process
    assert state["recorder"]["dropped"] == 0


def test_leza_status_json(scenario: Scenario) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "leza_middleware", "status", "--json"],
        env=scenario.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    state = json.loads(out.stdout)
    check_state(scenario, state)
    assert state["recorder"]["live"] is False  # the command line records nothing
    text = subprocess.run(
        [sys.executable, "-m", "leza_middleware", "status", "--since", "1h"],
        env=scenario.env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert text.index("SERVICES") < text.index("TRAFFIC") < text.index("ENDPOINTS")
    assert re.search(r"payments\s+UP\s+.*1, last recovered after", text)
    assert re.search(r"GET\s+/slow\s+10\s+0\s+0\s", text)
    assert "2 active sessions" in text


_ROW = re.compile(
    r'<tr><td class="ep"><a class="endpoint" href="([^"]+)"[^>]*><span class="method">(\w+)'
    r'</span> <code>([^<]*)</code></a></td><td class="num">([\d,]+)</td>'
    r'<td class="num[^"]*">([\d,]+)(?: <small>[^<]*</small>)?</td>'
    r'<td class="num[^"]*">([\d,]+)</td>'
)


def test_state_html(scenario: Scenario) -> None:
    page = admin(scenario, "/state").text
    rows = {
        f"{m} {html.unescape(route)}": (int(n), int(e), int(d))
        for _href, m, route, n, e, d in _ROW.findall(page)
        if not route.startswith("/leza")
    }
    assert rows == KNOWN
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert re.search(r"2\s+active sessions", text)
    board = re.search(r'<table class="rows board">(.*?)</table>', page, re.S)
    assert board is not None
    payments = re.search(r"<strong>payments</strong>(.*?)</tr>", board.group(1), re.S)
    assert payments is not None
    assert 'class="state up">UP<' in payments.group(1)
    assert re.search(r'class="bad">down</span> .+ &rarr; up ', payments.group(1))
    assert '<svg class="spark"' in payments.group(1)
    assert '<svg class="chart"' in page


def test_one_alarm_per_outage(scenario: Scenario) -> None:
    assert scenario.webhook.events("payments") == ["down", "recovered"]
    assert scenario.webhook.events("billing") == []  # unknown -> up is silent
    down = next(b for b in scenario.webhook.bodies if b["event"] == "down")
    assert down["check"] == "payments"
    assert down["state"] == "down"
