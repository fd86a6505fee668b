"""Dashboard first-page times over 1,000,000 access events in SQLite.

    python bench/dashboard.py [-n 1000000] [--repeat 15] [--db PATH] [--rebuild]

Fills a SQLite file once -- N access events spread over the 60 days before it
was built (the action mix of real traffic: 85 % access, 8 % denied, ...),
20,000 sessions and 5,000 audit rows (a real chain) -- through
``SQLStorage.write`` (Core ``executemany``, 5,000 rows a batch), and keeps it
under the temp dir keyed by the schema, so later runs start at once. Then
calls the dashboard's ASGI app (``make_asgi_app``) in process, as a server
would, and times each tab's first page with a FROM/TO (30 days) + action
filter: HTML (query, capped count, rendering) and the JSON API, median of
``--repeat``. Budget (DESIGN.md): <= 100 ms; prints PASS/FAIL per page and
exits 1 on any FAIL. Also prints the next page and what counting costs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_storage import make_events
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from leza_middleware import Leza
from leza_middleware.dashboard import make_asgi_app
from leza_middleware.dashboard.tabs import COUNT_CAP
from leza_middleware.events import AccessEvent, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.storage import QueryFilter, SQLStorage
from leza_middleware.storage.models import metadata

DAY_US = 86_400 * 1_000_000
SPAN_DAYS = 60
GENERATOR_VERSION = "1"
BUDGET_MS = 100.0
SECRET = "bench-dashboard-secret-0123456789"


def schema_key() -> str:
    """Changes whenever a table or index changes (or the generator does)."""
    dialect = sqlite.dialect()
    ddl = [str(CreateTable(t).compile(dialect=dialect)) for t in metadata.sorted_tables]
    ddl += [
        str(CreateIndex(ix).compile(dialect=dialect))
        for t in metadata.sorted_tables
        for ix in sorted(t.indexes, key=lambda ix: str(ix.name))
    ]
    return hashlib.sha256(("\n".join(ddl) + GENERATOR_VERSION).encode()).hexdigest()[:12]


def build(path: str, n: int) -> dict[str, Any]:
    """Fill ``path``; return what the timings need (the data's time span, build times)."""
    t0 = time.perf_counter()
    storage = SQLStorage(f"sqlite:///{path}")
    storage.setup()
    pool = make_events(50_000, seed=7)  # realistic rows; re-timed below
    end = time.time_ns() // 1000
    start = end - SPAN_DAYS * DAY_US
    step = (end - start) // n
    prefix = os.urandom(6).hex()
    batch: list[AccessEvent] = []
    for i in range(n):
        e = pool[i % len(pool)]
        ts = start + i * step
        batch.append(AccessEvent((f"{ts:013x}{prefix}{i & 0xFFFFFF:06x}", ts, *e.row[2:]),
                                 e.device, e.geo, e.performer))  # fmt: skip
        if len(batch) == 5000:
            storage.write(batch)
            batch = []
            if (i + 1) % 200_000 == 0:
                print(f"  {i + 1:,} access events ({time.perf_counter() - t0:.0f} s)")
    storage.write(batch)
    access_s = time.perf_counter() - t0
    rng = random.Random(3)
    sessions = []
    for i in range(20_000):
        e = pool[rng.randrange(len(pool))]
        ts = start + rng.randrange(end - start)
        sid = f"s{i:08d}{prefix}"
        start_event = SessionEvent(
            id=new_event_id(ts), ts=ts, action="session_start", session_id=sid,
            performer=e.performer, device=e.device, geo=e.geo, ip=e.client_ip,
            machine_id=e.machine_id,
        )  # fmt: skip
        sessions.append(start_event)
        if rng.random() < 0.7:
            te = min(ts + rng.randrange(3600 * 1_000_000), end)
            sessions.append(SessionEvent(id=new_event_id(te), ts=te, action="session_end",
                                         session_id=sid, end_reason="logout"))  # fmt: skip
    for i in range(0, len(sessions), 5000):
        storage.write(sessions[i : i + 5000])
    storage.close()
    # Audit rows through the real API: each is a link of a chain verify() checks.
    leza = Leza(storage=f"sqlite:///{path}", secret_key=SECRET, geoip_db=False)
    for i in range(5000):
        leza.audit.record(
            action=rng.choice(["create", "update", "update", "delete"]),
            entity_type=rng.choice(["role", "user", "invoice"]),
            entity_id=str(rng.randrange(500)),
            actor={"id": f"user-{rng.randrange(48)}", "name": f"User {i % 48}"},
            before={"name": f"old {i}", "active": True},
            after={"name": f"new {i}", "active": bool(i % 2)},
        )
    leza.shutdown(timeout=60)
    meta = {"n": n, "end_us": end, "access_s": round(access_s, 1),
            "build_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    print(f"built {path} in {meta['build_s']:.0f} s ({n:,} access events in "
          f"{access_s:.1f} s: {n / access_s:,.0f} rows/s)")  # fmt: skip
    return meta


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm: pool, page cache, templates
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


class InProcess:
    """The dashboard's ASGI app called as a server calls it, on one event loop."""

    def __init__(self, app: Callable[..., Awaitable[None]], mount: str = "/leza") -> None:
        self.app = app
        self.mount = mount
        self.loop = asyncio.new_event_loop()

    def get(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        return self.loop.run_until_complete(self._get(path, query))

    async def _get(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": self.mount + path,
            "raw_path": (self.mount + path).encode(), "root_path": self.mount,
            "query_string": urlencode(query).encode(),
            "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench/dashboard")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], body

    def close(self) -> None:
        self.loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--db", help="the SQLite file (default: under the temp dir, cached)")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    path = args.db or os.path.join(
        tempfile.gettempdir(), f"leza-bench-dashboard-{schema_key()}-{args.n}.db"
    )
    if args.rebuild or not os.path.exists(path) or not os.path.exists(path + ".json"):
        for suffix in ("", "-wal", "-shm", ".json"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        print(f"building {path} ({args.n:,} access events)")
        meta = build(path, args.n)
    else:
        with open(path + ".json") as f:
            meta = json.load(f)
        print(f"using {path} (built in {meta['build_s']:.0f} s; {meta['n']:,} access events "
              f"in {meta['access_s']:.1f} s)")  # fmt: skip

    # The dashboard's own views are recorded too (as in production): they land in
    # this file, a few hundred rows next to a million.
    leza = Leza(storage=f"sqlite:///{path}", secret_key=SECRET, geoip_db=False)
    storage = leza.storage
    assert isinstance(storage, SQLStorage)
    newest = int(meta["end_us"])
    to_day = time.strftime("%Y-%m-%d", time.gmtime(newest / 1e6))
    from_day = time.strftime("%Y-%m-%d", time.gmtime(newest / 1e6 - 30 * 86400))
    period = {"from": from_day, "to": to_day}
    total = storage.count("access", QueryFilter())
    print(f"{total:,} access events; FROM {from_day} TO {to_day}; median of {args.repeat}; "
          f"budget {BUDGET_MS:.0f} ms")  # fmt: skip

    server = InProcess(make_asgi_app(leza, authorize=lambda request: True))

    def page(path: str, **query: str) -> Callable[[], Any]:
        params = {**period, **query}

        def run() -> Any:
            status, body = server.get(path, params)
            assert status == 200, (status, body[:300])
            return body

        return run

    rows = [
        ("ACCESS, action=denied (8 %)", "/access", {"action": "denied"}),
        ("ACCESS, action=access (85 %)", "/access", {"action": "access"}),
        ("ACCESS, action=logout (2 %)", "/access", {"action": "logout"}),
        ("ACCESS, action=login + performer", "/access", {"action": "login", "performer": "user-7"}),
        ("SESSION, state=active", "/sessions", {"action": "active"}),
        ("SESSION, state=ended", "/sessions", {"action": "ended"}),
        ("AUDIT, action=update", "/audit", {"action": "update"}),
        ("ADVISORY, action=new_country", "/advisories", {"action": "new_country"}),
        ("LOG, action=error", "/logs", {"action": "error"}),
        ("ACCESS, no action (reference)", "/access", {}),
    ]
    # The AUDIT tab shows the chain's last verification, run in the background;
    # time it alone, and let it finish before timing the tab.
    t0 = time.perf_counter()
    chain = server.get("/audit", period)  # starts it
    for thread in threading.enumerate():
        if thread.name == "leza-dashboard-verify":
            thread.join()
    verify = (time.perf_counter() - t0) * 1000
    del chain

    failed = []
    print(f"\n{'first page, 50 rows, FROM/TO 30 days':<38} {'HTML':>9} {'JSON API':>9}")
    for label, tab, query in rows:
        html = median_ms(page(tab, **query), args.repeat)
        api = median_ms(page("/api" + tab, **query), args.repeat)
        ok = max(html, api) <= BUDGET_MS
        if not ok:
            failed.append(label)
        print(f"{label:<38} {html:>6.1f} ms {api:>6.1f} ms  {'PASS' if ok else 'FAIL'}")

    # The next page, through the cursor the first one returned.
    _, body = server.get("/api/access", {**period, "action": "denied"})
    cursor = json.loads(body)["next_cursor"]
    nxt = median_ms(page("/access", action="denied", cursor=cursor), args.repeat)
    ok = nxt <= BUDGET_MS
    if not ok:
        failed.append("next page")
    print(f"{'ACCESS denied, next page (cursor)':<38} {nxt:>6.1f} ms {'':>9}  "
          f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    print(f"{'AUDIT chain verify (background)':<38} {verify:>6.1f} ms  (not on the page's path)")

    since = newest - 30 * DAY_US
    print(f"\ncounting: the summary line counts up to {COUNT_CAP:,} (then shows "
          f"'{COUNT_CAP:,}+'); an exact count for comparison")  # fmt: skip
    for label, flt in (
        ("all 60 days", QueryFilter()),
        ("action=access, 30 days", QueryFilter(since=since, until=newest, action="access")),
        ("no action, 30 days", QueryFilter(since=since, until=newest)),
        ("action=denied, 30 days", QueryFilter(since=since, until=newest, action="denied")),
    ):
        capped = median_ms(lambda f=flt: storage.count("access", f, COUNT_CAP), args.repeat)
        exact_n = storage.count("access", flt)
        exact = median_ms(lambda f=flt: storage.count("access", f), max(3, args.repeat // 4))
        print(f"  {label:<26} capped: {capped:6.1f} ms; exact ({exact_n:,}): {exact:6.1f} ms")
    server.close()
    leza.shutdown()
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else 'PASS'}: every first page "
          f"{'within' if not failed else 'against'} the {BUDGET_MS:.0f} ms budget")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
