"""A day of generated history for the STATE screenshot (bench/screenshots.py).

``leza demo`` sends its requests within a second or two, so over the 24 hours
STATE shows by default its traffic is one bar. For docs/screenshots/state.png
this writes, through the real storage (``SQLStorage.write``: raw rows and
rollups together, as the recorder writes them), what a small app of the
demo's routes does in a day: requests following a daily curve with their
outcomes and latencies (an error spike during an outage of ``payments``),
sessions from several countries and devices, the demo's three availability
checks probed every two minutes (``payments`` down for 35 minutes five hours
ago, ``search`` for a few minutes at night) and a few advisories. It ends
three minutes before now, so the demo's own minutes come after it.
"""

from __future__ import annotations

import math
import random
from typing import Any

from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    CheckEvent,
    Device,
    Geo,
    SessionEvent,
    ua_key,
)
from leza_middleware.performer import Performer
from leza_middleware.storage import SQLStorage

__all__ = ["shoot_state", "write_history"]

MIN = 60_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR

# (method, route, share, median ms, a path for the route)
ROUTES = (
    ("GET", "/", 0.34, 2.0, "/"),
    ("GET", "/items/{item_id}", 0.30, 3.0, "/items/{}"),
    ("POST", "/items", 0.06, 9.0, "/items"),
    ("POST", "/login", 0.05, 40.0, "/login"),
    ("POST", "/logout", 0.02, 3.0, "/logout"),
    ("GET", "/admin", 0.04, 4.0, "/admin"),
    ("GET", "/reports/{report_id}", 0.04, 320.0, "/reports/{}"),
    ("GET", "/boom", 0.005, 2.0, "/boom"),
    ("GET", None, 0.035, 1.5, "/wp-login.php"),
)
TOTAL = sum(r[2] for r in ROUTES)
PLACES = (
    ("NL", "Netherlands", "Amsterdam"), ("DE", "Germany", "Berlin"),
    ("GB", "United Kingdom", "London"), ("US", "United States", "New York"),
    ("SE", "Sweden", "Stockholm"), ("AU", "Australia", "Sydney"),
    ("SG", "Singapore", "Singapore"), ("ZA", "South Africa", "Cape Town"),
)  # fmt: skip
KINDS = ("desktop", "desktop", "smartphone", "smartphone", "tablet")


def _load(ts: int) -> float:
    """Requests a minute at ``ts``: a daily curve peaking in the European afternoon."""
    hour = (ts // HOUR) % 24 + (ts % HOUR) / HOUR
    return 9.0 + 16.0 * max(0.0, math.sin((hour - 7.0) / 16.0 * math.pi))


def write_history(url: str, end: int, seed: int = 14) -> int:
    """Write the day before ``end - 3 min`` (µs) into ``url``; return the requests."""
    rng = random.Random(seed)
    storage = SQLStorage(url)
    storage.setup()
    stop = end - 3 * MIN
    start = end - DAY
    outage = (end - 5 * HOUR, end - 5 * HOUR + 35 * MIN)
    devices = [Device(key=ua_key(f"history-ua-{i}"), user_agent=f"history-ua-{i}",
                      browser_name="Chrome", device_type=KINDS[i % len(KINDS)])
               for i in range(10)]  # fmt: skip
    geos = [Geo(key=f"198.51.{i}.0/24", country_code=c, country_name=n, city=city)
            for i, (c, n, city) in enumerate(PLACES)]  # fmt: skip
    people = [Performer(id=f"user{i}", name=f"User {i}") for i in range(40)]
    events: list[Any] = []
    n = 0
    for minute in range(start, stop, MIN):
        for _ in range(int(_load(minute) * rng.uniform(0.7, 1.3))):
            ts = minute + rng.randrange(MIN)
            u, acc = rng.random() * TOTAL, 0.0
            method, route, median, path = ROUTES[0][0], ROUTES[0][1], ROUTES[0][3], "/"
            for m, r, share, med, p in ROUTES:
                acc += share
                if u < acc:
                    method, route, median, path = m, r, med, p
                    break
            status, outcome, action = (201 if method == "POST" else 200), "success", "access"
            v = rng.random()
            if route is None:
                status, outcome = 404, "failure"
            elif route == "/boom" or (route == "/items" and outage[0] <= ts < outage[1]):
                status, outcome = 500, "error"
            elif route == "/admin" and v < 0.4:
                status, outcome, action = 403, "denied", "denied"
            elif route == "/items/{item_id}" and v < 0.04:
                status, outcome = 404, "failure"
            elif route == "/login":
                action = "login_failed" if v < 0.12 else "login"
                status, outcome = (401, "failure") if v < 0.12 else (200, "success")
            ms = rng.lognormvariate(math.log(median), 0.5)
            n += 1
            who = people[rng.randrange(len(people))] if rng.random() < 0.6 else None
            events.append(AccessEvent.build(
                id=f"{ts:013x}hist{n:011d}", ts=ts, action=action, method=method,
                endpoint=path.format(rng.randrange(1, 99)), route=route, status=status,
                duration_us=max(50, int(ms * 1000)), outcome=outcome, reason="history",
                request_id=f"history-{n}", client_ip="198.51.100.7", ip_valid=True,
                peer_ip="127.0.0.1", app="leza-demo", device=devices[n % 10],
                geo=geos[n % len(geos)], performer=who,
            ))  # fmt: skip
    for i in range(60):
        on = i % 3 == 0  # still on: seen in the last 25 minutes (an idle one would end)
        begin = start + rng.randrange(DAY - HOUR)
        seen = stop - rng.randrange(25 * MIN) if on else min(stop, begin + rng.randrange(3 * HOUR))
        begin = min(begin, seen)
        sid = f"history-session-{i:04d}"
        events.append(SessionEvent(
            id=f"{begin:013x}hses{i:011d}", ts=begin, action="session_start", session_id=sid,
            app="leza-demo", performer=people[i % 40], device=devices[i % 10],
            geo=geos[rng.randrange(len(geos))], ip="198.51.100.7",
        ))  # fmt: skip
        events.append(SessionEvent(id=f"{seen:013x}hsee{i:011d}", ts=seen, action="session_seen",
                                   session_id=sid, app="leza-demo"))  # fmt: skip
        if not on:
            events.append(SessionEvent(id=f"{seen + 1:013x}hend{i:011d}", ts=seen + 1,
                                       action="session_end", session_id=sid, app="leza-demo",
                                       end_reason="logout"))  # fmt: skip
    blip = (end - 9 * HOUR, end - 9 * HOUR + 6 * MIN)
    for name, base in (("demo-api", 0.4), ("payments", 1.8), ("search", 3.5)):
        state = "unknown"
        for k, ts in enumerate(range(start, stop, 2 * MIN)):
            down = (name == "payments" and outage[0] <= ts < outage[1]) or (
                name == "search" and blip[0] <= ts < blip[1]
            )
            wave = 1.0 + 0.6 * math.sin(ts / (3 * HOUR))
            new = "down" if down else "up"
            events.append(CheckEvent(
                id=f"{ts:013x}hchk{name[:2]}{k:09d}", ts=ts, check=name, ok=not down, state=new,
                previous=state, latency_ms=round(base * wave * rng.uniform(0.8, 1.25), 3),
                error="ConnectionRefusedError: [Errno 111] Connection refused" if down else None,
                app="leza-demo",
            ))  # fmt: skip
            state = new
    events += [
        AdvisoryEvent(id=f"{outage[0]:013x}hadv00000000001", ts=outage[0], rule="service_down",
                      severity="high", message="Service payments is DOWN (was up): "
                      "ConnectionRefusedError: [Errno 111] Connection refused", app="leza-demo"),
        AdvisoryEvent(id=f"{outage[1]:013x}hadv00000000002", ts=outage[1],
                      rule="service_recovered", severity="info",
                      message="Service payments recovered after 35 min down", app="leza-demo"),
        AdvisoryEvent(id=f"{end - 2 * HOUR:013x}hadv00000000003", ts=end - 2 * HOUR, rule="burst",
                      severity="medium", message="12 denied requests from 198.51.100.7 in "
                      "5 minutes", ip="198.51.100.7", app="leza-demo"),
    ]  # fmt: skip
    events.sort(key=lambda e: e.ts)
    for i in range(0, len(events), 5000):
        storage.write(events[i : i + 5000])
    storage.settle_traffic(end)
    storage.close()
    return n


def shoot_state(page: Any, url: str, out: Any) -> None:
    """Save the STATE page (the landing page) as ``state.png`` (full page)."""
    page.goto(f"{url}/leza/state")
    page.wait_for_selector("svg.chart")
    path = out / "state.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")
