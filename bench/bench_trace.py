"""The traceability views over 10,000,000 access events, on SQLite and PostgreSQL.

    python bench/bench_trace.py [-n 10000000] [--repeat 15] [--db PATH] [--rebuild]
                                [--postgres URL|auto] [--pg-n N] [--sqlite-only]

1. **Build** (once; the SQLite file is cached under the temp dir, keyed by the
   schema): ``-n`` access events over 60 days, written with big ``executemany``
   batches straight into the tables ``SQLStorage.setup()`` made (the access
   indexes dropped during the load and built after it, each one timed: what
   ``leza migrate`` costs on a table this size). The traffic: 30 % anonymous,
   the rest in ~300,000 sessions of 20,000 performers (a handful of sessions
   from a new IP halfway), 85 % ``access``, 8 % ``denied``, 2 % ``login``,
   2 % ``logout``, 1 % ``login_failed``…; one API client (``svc-export``)
   makes 3 % of all requests, a third of them in a single session. Then
   ~140,000 audit rows (real chains), 500,000 log records and 20,000
   advisories, each with the request, session and performer of an access
   event; one entity (``role #admin``) has 5,000 changes, and 300 bulk
   statements of its type name it now and then.
2. **Time** each view through the dashboard's ASGI app in process (as a
   server calls it), HTML and JSON: a request, a session (typical, and the
   100,000-request one, first page and a page deep in it), a performer
   (typical, and the API client), an entity's history (typical, and the hot
   one, first page and the next), a record's permalink, and an unknown id.
   ``--repeat`` runs each after one warm-up; median, 90th percentile and
   maximum. Budget (issue 15): each view <= 50 ms.

With ``--postgres URL`` (a database the script may fill; it makes its own
schema, kept for the next run unless ``--rebuild``) or ``--postgres auto`` (a
throw-away cluster from the local server binaries, as the tests start), the
same data (``--pg-n`` events, default ``-n``) is loaded with ``COPY`` and
timed too. Prints PASS/FAIL; exits 1 on a
FAIL.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard import InProcess, schema_key
from sqlalchemy import text

from leza_middleware import Leza
from leza_middleware.audit.chain import Chain
from leza_middleware.dashboard import core as dashboard_core
from leza_middleware.dashboard import make_asgi_app
from leza_middleware.dashboard.core import Dashboard, DashRequest
from leza_middleware.dashboard.csrf import CsrfToken
from leza_middleware.dashboard.inputs import Params
from leza_middleware.events import (
    ACCESS_FIELDS,
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    Device,
    Geo,
    performer_key,
    ua_key,
)
from leza_middleware.performer import Performer
from leza_middleware.sessions.cookies import Keyring
from leza_middleware.storage import SQLStorage
from leza_middleware.storage.models import access_table, log_table

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
SPAN_DAYS = 60
BUDGET_MS = 50.0
SECRET = "bench-trace-secret-0123456789abcdef"
GENERATOR = "trace-2"
HEAVY = "svc-export"
HOT = ("role", "admin")
COUNTRIES = [
    ("DE", "Germany", "Frankfurt am Main"),
    ("GB", "United Kingdom", "London"),
    ("SG", "Singapore", "Singapore"),
    ("US", "United States", "Ashburn"),
    ("FR", "France", "Paris"),
    ("BR", "Brazil", "São Paulo"),
    ("IN", "India", "Mumbai"),
    ("JP", "Japan", "Tokyo"),
]
BROWSERS = [
    ("Chrome", "124.0", "Windows", "10", "desktop"),
    ("Firefox", "125.0", "Ubuntu", "", "desktop"),
    ("Safari", "17.4", "iOS", "17.4", "smartphone"),
    ("Edge", "123.0", "Windows", "11", "desktop"),
    ("Chrome Mobile", "124.0", "Android", "14", "smartphone"),
]
ACTIONS = [
    ("access", 200, "success", "Request completed: 200 OK", 85),
    ("denied", 403, "denied", "User lacks the permission Reports", 8),
    ("login", 303, "success", "User logged in", 2),
    ("logout", 200, "success", "User has the permission to logout", 2),
    ("login_failed", 401, "failure", "Login failed for 'someone'", 1),
    ("access", 404, "failure", "Request failed: 404 Not Found", 1),
    ("access", 500, "error", "Request failed: 500 Internal Server Error", 1),
]
ROUTES = [
    ("GET", "/api/items/{item_id}"),
    ("GET", "/api/items"),
    ("POST", "/api/items"),
    ("PUT", "/api/items/{item_id}"),
    ("GET", "/reports/{report_id}"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/me"),
]


# --------------------------------------------------------------------------- the data


class World:
    """Devices, networks, performers and sessions the access events are drawn from."""

    def __init__(self, rng: random.Random, start: int, end: int) -> None:
        self.devices = []
        for i in range(200):
            b, bv, os_, ov, kind = BROWSERS[i % len(BROWSERS)]
            ua = f"Mozilla/5.0 ({os_} {ov}) {b}/{bv} bench/{i}"
            self.devices.append(
                Device(
                    key=ua_key(ua),
                    user_agent=ua,
                    browser_type="browser",
                    browser_name=b,
                    browser_version=bv,
                    os_name=os_,
                    os_version=ov,
                    device_type=kind,
                )
            )
        self.geos = []
        for i in range(512):
            code, name, city = COUNTRIES[i % len(COUNTRIES)]
            self.geos.append(
                Geo(
                    key=f"10.{i // 256}.{i % 256}.0/24",
                    country_code=code,
                    country_name=name,
                    city=city,
                )
            )
        self.performers = [
            Performer(id=f"user-{i}", name=f"User {i}", email=f"user{i}@example.com")
            for i in range(20_000)
        ]
        self.performers.append(Performer(id=HEAVY, name="Export service"))
        self.pkeys = [performer_key(p) for p in self.performers]
        n_sessions = 300_000
        starts = sorted(rng.randrange(start, end) for _ in range(n_sessions))
        self.sessions: list[tuple[Any, ...]] = []
        for k, s in enumerate(starts):
            # A few performers are busy: a long tail, as in real traffic.
            p = (
                min(int(rng.paretovariate(1.2)) - 1, 19_999)
                if rng.random() < 0.5
                else rng.randrange(20_000)
            )
            g = rng.randrange(len(self.geos))
            moved = rng.randrange(len(self.geos)) if rng.random() < 0.05 else None
            self.sessions.append(
                (
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    s,
                    p,
                    rng.randrange(len(self.devices)),
                    g,
                    moved,
                    f"mid{k:025x}",
                )
            )
        self.starts = [s[1] for s in self.sessions]
        # The API client: 100 sessions of its own, one of them lasting the whole span.
        self.heavy_sessions = [
            (
                uuid.UUID(int=rng.getrandbits(128)).hex,
                start + j * DAY_US // 2,
                len(self.performers) - 1,
                0,
                7,
                None,
                f"midheavy{j:020x}",
            )
            for j in range(100)
        ]
        self.heavy_session = self.heavy_sessions[0]


def ip_of(geo_index: int, salt: int) -> str:
    return f"10.{geo_index // 256}.{geo_index % 256}.{salt % 250 + 1}"


def access_rows(
    n: int, seed: int, end: int, side: dict[str, list[Any]]
) -> Iterator[tuple[Any, ...]]:
    """``n`` access rows in time order (the columns of ``leza_access``), and in
    ``side`` samples of the signed-in ones for the audit, log and advisory rows."""
    rng = random.Random(seed)
    start = end - SPAN_DAYS * DAY_US
    world = side["world"][0]
    step = (end - start) / n
    prefixes = [os.urandom(10).hex() for _ in range(8)]
    weights = [a[4] for a in ACTIONS]
    cum = [sum(weights[: i + 1]) for i in range(len(weights))]
    total = cum[-1]
    sessions, starts = world.sessions, world.starts
    for i in range(n):
        ts = start + int(i * step)
        u = rng.random()
        if u < 0.03:  # the API client
            s = (
                world.heavy_session
                if rng.random() < 0.34
                else world.heavy_sessions[rng.randrange(100)]
            )
        elif u < 0.73:
            lo = bisect.bisect_left(starts, ts - 8 * HOUR_US)
            hi = bisect.bisect_right(starts, ts)
            s = sessions[rng.randrange(lo, hi)] if hi > lo else None
        else:
            s = None
        a = bisect.bisect_left(cum, rng.random() * total)
        action, status, outcome, reason, _ = ACTIONS[a]
        method, route = ROUTES[i % len(ROUTES)]
        rid = prefixes[i & 7] + f"{i:012x}" if rng.random() < 0.98 else uuid.uuid4().hex
        if s is None:
            g = rng.randrange(len(world.geos))
            ip = ip_of(g, i)
            device = world.devices[i % len(world.devices)]
            row = (
                f"{ts:013x}{prefixes[0][:12]}{i & 0xFFFFFF:06x}",
                ts,
                action,
                method,
                route.replace("{item_id}", str(i % 5000)).replace("{report_id}", "7"),
                route,
                status,
                500 + i % 20_000,
                outcome,
                reason,
                rid,
                ip,
                True,
                "10.255.0.1",
                "",
                "https",
                "app.example.com",
                "bench",
                device.key,
                world.geos[g].key,
                None,
                None,
                None,
                None,
                None,
            )
        else:
            sid, _, p, d, g, moved, mid = s
            if moved is not None and ts > s[1] + 2 * HOUR_US:
                g = moved
            ip = ip_of(g, int(sid[:2], 16))
            performer = world.performers[p]
            row = (
                f"{ts:013x}{prefixes[0][:12]}{i & 0xFFFFFF:06x}",
                ts,
                action,
                method,
                route.replace("{item_id}", str(i % 5000)).replace("{report_id}", "7"),
                route,
                status,
                500 + i % 20_000,
                outcome,
                reason,
                rid,
                ip,
                True,
                "10.255.0.1",
                "",
                "https",
                "app.example.com",
                "bench",
                world.devices[d].key,
                world.geos[g].key,
                performer.id,
                world.pkeys[p],
                mid,
                sid,
                None,
            )
            if i % 50 == 0:
                side["audit"].append((ts, rid, sid, p, ip))
            if i % 14 == 0:
                side["log"].append((ts, rid, performer.id, route))
            if i % 350 == 0:
                side["advisory"].append((ts, rid, sid, performer.id, ip, row[0]))
        yield row


def audit_events(side: dict[str, list[Any]], seed: int) -> list[AuditEvent]:
    rng = random.Random(seed)
    world = side["world"][0]
    events = []
    sampled = side["audit"]
    hot_every = max(4, len(sampled) // 5000)  # 5,000 changes at 10M events
    for j, (ts, rid, sid, p, ip) in enumerate(sampled):
        if j % hot_every == 0:
            etype, eid = HOT
        elif j % 461 == 0:
            etype, eid = HOT[0], "*"
        else:
            etype, eid = rng.choice(("item", "item", "user")), str(rng.randrange(50_000))
        diff: dict[str, Any] = {"name": {"before": f"n{j}", "after": f"n{j + 1}"}}
        if eid == "*":
            ids = [str(rng.randrange(1000)) for _ in range(5)] + (["admin"] if j % 2 else [])
            diff = {"statement": {"rows": len(ids), "values": {"active": False}, "ids": ids}}
        events.append(
            AuditEvent(
                id=f"{ts:013x}a{j:017x}",
                ts=ts + 1,
                action="update",
                entity_type=etype,
                entity_id=eid,
                actor=world.performers[p],
                before={"name": f"n{j}"},
                after={"name": f"n{j + 1}"},
                diff=diff,
                request_id=rid,
                client_ip=ip,
                app="bench",
                session_id=sid,
            )
        )
    Chain(Keyring(SECRET).subkey(b"audit")).link(events)  # the key Leza's audit uses
    return events


def build_rows(n: int, end: int) -> tuple[dict[str, list[Any]], Iterator[tuple[Any, ...]]]:
    rng = random.Random(11)
    side: dict[str, list[Any]] = {"audit": [], "log": [], "advisory": []}
    side["world"] = [World(rng, end - SPAN_DAYS * DAY_US, end)]
    return side, access_rows(n, 13, end, side)


def other_rows(
    side: dict[str, list[Any]],
) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """The shared rows (device, geo, performer), sessions and logs: each table's
    columns and rows."""
    world = side["world"][0]
    from leza_middleware.storage.sql_codecs import DEVICE_FIELDS, GEO_FIELDS, SESSION_COLS

    out: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {}
    out["leza_device"] = (
        DEVICE_FIELDS,
        [tuple(getattr(d, f) for f in DEVICE_FIELDS) for d in world.devices],
    )
    out["leza_geo"] = (GEO_FIELDS, [tuple(getattr(g, f) for f in GEO_FIELDS) for g in world.geos])
    out["leza_performer"] = (
        ("key", "performer_id", "name", "email", "json"),
        [
            (k, p.id, p.name, p.email, p.to_json())
            for k, p in zip(world.pkeys, world.performers, strict=True)
        ],
    )
    end = max(s[1] for s in world.sessions) + HOUR_US
    sessions = []
    for j, (sid, s, p, d, g, _moved, mid) in enumerate([*world.sessions, *world.heavy_sessions]):
        ended = None if j % 3 == 0 or s > end - 8 * HOUR_US else s + 8 * HOUR_US
        row = {
            "id": sid,
            "app": "bench",
            "session_start": s,
            "last_seen": min(s + 8 * HOUR_US, end),
            "ended_at": ended,
            "end_reason": None if ended is None else "logout",
            "ip": ip_of(g, int(sid[:2], 16)),
            "machine_id": mid,
            "performer_id": world.performers[p].id,
            "performer_key": world.pkeys[p],
            "device_key": world.devices[d].key,
            "geo_key": world.geos[g].key,
        }
        sessions.append(tuple(row[c] for c in SESSION_COLS))
    out["leza_session"] = (SESSION_COLS, sessions)
    cols = tuple(log_table.c.keys())
    logs = []
    for j, (ts, rid, pid, route) in enumerate(side["log"]):
        row = {
            "id": f"{ts:013x}l{j:017x}",
            "ts": ts + 2,
            "action": "info",
            "level": 20,
            "logger": "app.items",
            "message": f"item {j} renamed",
            "exception": None,
            "request_id": rid,
            "performer_id": pid,
            "route": route,
            "origin": "items.py:42 in rename",
            "app": "bench",
        }
        logs.append(tuple(row[c] for c in cols))
    out["leza_log"] = (cols, logs)
    return out


def advisory_events(side: dict[str, list[Any]]) -> list[AdvisoryEvent]:
    return [
        AdvisoryEvent(
            id=f"{ts:013x}v{j:017x}",
            ts=ts + 3,
            rule="new_country",
            severity="medium",
            message=f"{pid} signed in from a new country",
            evidence=(eid,),
            performer_id=pid,
            ip=ip,
            details={"country": "SG"},
            app="bench",
            request_id=rid,
            session_id=sid,
        )
        for j, (ts, rid, sid, pid, ip, eid) in enumerate(side["advisory"])
    ]


# --------------------------------------------------------------------------- loading


def access_indexes() -> list[Any]:
    return sorted(access_table.indexes, key=lambda ix: str(ix.name))


def load_sqlite(path: str, n: int, end: int) -> dict[str, Any]:
    import sqlite3

    from sqlalchemy.schema import CreateIndex

    t0 = time.perf_counter()
    storage = SQLStorage(f"sqlite:///{path}")
    storage.setup()
    dialect = storage.engine.dialect
    side, rows = build_rows(n, end)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    for ix in access_indexes():
        conn.execute(f"DROP INDEX {ix.name}")
    marks = ", ".join("?" * len(ACCESS_FIELDS))
    insert = f"INSERT INTO leza_access ({', '.join(ACCESS_FIELDS)}) VALUES ({marks})"
    batch: list[tuple[Any, ...]] = []
    done = 0
    for row in rows:
        batch.append(row)
        if len(batch) == 100_000:
            conn.executemany(insert, batch)
            conn.commit()
            done += len(batch)
            batch = []
            if done % 1_000_000 == 0:
                rate = done / (time.perf_counter() - t0)
                print(f"  {done:>11,} access events ({rate:,.0f}/s)", flush=True)
    conn.executemany(insert, batch)
    conn.commit()
    access_s = time.perf_counter() - t0
    index_s = {}
    for ix in access_indexes():
        t1 = time.perf_counter()
        conn.execute(str(CreateIndex(ix).compile(dialect=dialect)))
        conn.commit()
        index_s[str(ix.name)] = round(time.perf_counter() - t1, 1)
        print(f"  index {ix.name}: {index_s[str(ix.name)]} s", flush=True)
    for table, (cols, values) in other_rows(side).items():
        marks = ", ".join("?" * len(cols))
        conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", values)
    conn.commit()
    conn.close()
    audits = audit_events(side, 17)
    storage.write(audits)
    storage.write(advisory_events(side))
    storage.close()
    meta = pick_targets(side, end, audits)
    meta.update(
        n=n,
        end_us=end,
        access_s=round(access_s, 1),
        index_s=index_s,
        build_s=round(time.perf_counter() - t0, 1),
    )
    return meta


def pick_targets(side: dict[str, list[Any]], end: int, audits: list[AuditEvent]) -> dict[str, Any]:
    """The ids the views are timed with."""
    world = side["world"][0]
    rng = random.Random(5)
    typical_session = world.sessions[len(world.sessions) // 2][0]
    audit = side["audit"]
    return {
        "requests": [audit[rng.randrange(len(audit))][1] for _ in range(5)],
        "session": typical_session,
        "heavy_session": world.heavy_session[0],
        "performer": world.performers[world.sessions[len(world.sessions) // 3][2]].id,
        "heavy_performer": HEAVY,
        "entity": next([e.entity_type, e.entity_id] for e in audits if e.entity_type == "item"),
        "hot_entity": list(HOT),
        "record": side["advisory"][3][5],
    }


def load_postgres(url: str, n: int, end: int) -> dict[str, Any]:
    import psycopg
    from sqlalchemy.schema import CreateIndex

    t0 = time.perf_counter()
    storage = SQLStorage(url)
    storage.setup()
    dialect = storage.engine.dialect
    side, rows = build_rows(n, end)
    dsn = storage.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        for ix in access_indexes():
            conn.execute(f"DROP INDEX {ix.name}")
        sql = f"COPY leza_access ({', '.join(ACCESS_FIELDS)}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(sql) as copy:
            for i, row in enumerate(rows):
                copy.write_row(row)
                if (i + 1) % 1_000_000 == 0:
                    rate = (i + 1) / (time.perf_counter() - t0)
                    print(f"  {i + 1:>11,} access events ({rate:,.0f}/s)", flush=True)
        conn.commit()
        access_s = time.perf_counter() - t0
        index_s = {}
        for ix in access_indexes():
            t1 = time.perf_counter()
            conn.execute(str(CreateIndex(ix).compile(dialect=dialect)))
            conn.commit()
            index_s[str(ix.name)] = round(time.perf_counter() - t1, 1)
            print(f"  index {ix.name}: {index_s[str(ix.name)]} s", flush=True)
        with conn.cursor() as cur:
            for table, (cols, values) in other_rows(side).items():
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in values:
                        copy.write_row(row)
        conn.commit()
    audits = audit_events(side, 17)
    storage.write(audits)
    storage.write(advisory_events(side))
    with storage.engine.begin() as c:
        c.execute(text("ANALYZE"))  # what autovacuum does after a load this size
    storage.close()
    meta = pick_targets(side, end, audits)
    meta.update(
        n=n,
        end_us=end,
        access_s=round(access_s, 1),
        index_s=index_s,
        build_s=round(time.perf_counter() - t0, 1),
    )
    return meta


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, float]:
    """(first, median, p90, max) wall time in ms, the first run on a cold connection
    pool and not among the others."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1000
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    runs.sort()
    p90 = runs[min(len(runs) - 1, int(len(runs) * 0.9))]
    return first, statistics.median(runs), p90, runs[-1]


def cpu_ms(
    fn: Callable[[], Any], repeat: int, server: Callable[[], float] | None = None
) -> tuple[float, float | None]:
    """Median CPU time (ms) of ``fn`` in the calling thread: what the view itself
    costs, which other processes' load on a shared machine does not inflate as it
    does wall time; and with ``server``, the mean CPU time (ms) the database
    server's processes spent meanwhile (PostgreSQL's work, not in the first)."""
    fn()
    runs = []
    s0 = server() if server else 0.0
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        runs.append((time.thread_time() - t0) * 1000)
    spent = (server() - s0) * 1000 / repeat if server else None
    return statistics.median(runs), spent


def server_cpu(storage: SQLStorage) -> Callable[[], float] | None:
    """``() -> seconds``: the CPU time used so far by a local PostgreSQL server's
    processes (the postmaster's children, read from /proc: clock ticks, so only a
    mean over many runs is meaningful); None for SQLite or a server elsewhere."""
    if storage.engine.dialect.name != "postgresql":
        return None
    with storage.engine.connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def stat(pid: str | int) -> list[str] | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    try:
        with open(f"/proc/{backend}/comm") as f:
            local = f.read().strip() == "postgres"
    except OSError:
        local = False
    fields = stat(backend) if local else None
    if fields is None:
        return None
    postmaster = int(fields[1])
    tick = os.sysconf("SC_CLK_TCK")

    def total() -> float:
        ticks = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                f = stat(pid)
                if f is not None and (int(f[1]) == postmaster or int(pid) == postmaster):
                    ticks += int(f[11]) + int(f[12])  # utime + stime
        return ticks / tick

    return total


def run_views(url: str, meta: dict[str, Any], repeat: int, label: str) -> list[str]:
    # The dashboard re-verifies the audit chain in the background at most once a
    # minute (~30 µs a row: seconds of CPU at this size, in this process): keep
    # its first result, so that its work is not timed as part of the views.
    dashboard_core.CHAIN_TTL = 1e9
    # No session tracking nor advisories on the dashboard's own Leza: its recorder
    # would expire the data's idle sessions mid-run (writing, and changing them).
    leza = Leza(storage=url, secret_key=SECRET, geoip_db=False, app_name="bench-trace",
                sessions=False, advisories=False)  # fmt: skip
    server = InProcess(make_asgi_app(leza, authorize=lambda request: True))
    direct = Dashboard(leza)  # the same renderer, called in this thread (CPU time)
    assert isinstance(leza.storage, SQLStorage)
    server_spent = server_cpu(leza.storage)
    t = meta

    def handled(path: str, query: dict[str, str]) -> Callable[[], Any]:
        req = DashRequest(method="GET", path=path, base="/leza", query=Params.of(query),
                          csrf=CsrfToken("csrf_token", "0" * 64, None))  # fmt: skip
        return lambda: direct.handle(req)

    def get(path: str, query: dict[str, str] | None = None, status: int = 200) -> Callable[[], Any]:
        def run() -> bytes:
            got, body = server.get(path, query or {})
            assert got == status, (path, got, body[:300])
            return body

        return run

    # The entity history shows the audit chain's last verification, which runs in
    # the background (reading every audit row): let the first one finish, as the
    # AUDIT tab's benchmark does, so it is not timed as part of a view.
    server.get("/audit/" + "/".join(t["entity"]), {})
    handled("/audit/" + "/".join(t["entity"]), {})()  # the direct renderer's check too
    for thread in threading.enumerate():
        if thread.name == "leza-dashboard-verify":
            thread.join()
    _, body = server.get(f"/api/sessions/{t['heavy_session']}", {})
    deep = json.loads(body)["requests"]["next_cursor"]
    for _ in range(20):  # 20 pages into the 100,000-request session
        _, body = server.get(f"/api/sessions/{t['heavy_session']}", {"cursor": deep})
        following = json.loads(body)["requests"]["next_cursor"]
        if following is None:  # a small build: the last page
            break
        deep = following
    hot = "/audit/" + "/".join(t["hot_entity"])
    _, body = server.get("/api" + hot, {})
    hot_next = json.loads(body)["next_cursor"]
    views = [
        ("request", f"/requests/{t['requests'][0]}", {}, 200),
        ("request (another)", f"/requests/{t['requests'][1]}", {}, 200),
        ("session", f"/sessions/{t['session']}", {}, 200),
        ("session, 100k requests", f"/sessions/{t['heavy_session']}", {}, 200),
        ("  ... 21 pages in", f"/sessions/{t['heavy_session']}", {"cursor": deep}, 200),
        ("performer", f"/performers/{t['performer']}", {}, 200),
        ("performer, 3 % of traffic", f"/performers/{t['heavy_performer']}", {}, 200),
        ("entity history", "/audit/" + "/".join(t["entity"]), {}, 200),
        ("entity, 5,000 changes", hot, {}, 200),
        ("  ... next page", hot, {"cursor": hot_next}, 200),
        ("record (permalink)", f"/records/{t['record']}", {}, 200),
        ("unknown request id (404)", "/requests/no-such-request", {}, 404),
        ("unknown performer (404)", "/performers/nobody-at-all", {}, 404),
    ]
    failed = []
    load = os.getloadavg()[0]
    print(f"\n{label}: median of {repeat} (first run on a cold pool); budget {BUDGET_MS:.0f} ms; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    srv = server_spent is not None
    print(f"{'':<26} {'------------------ wall time, ms ------------------':>47}  "
          f"{'view CPU, ms':>13}" + (f"  {'server CPU':>13}" if srv else ""))  # fmt: skip
    print(f"{'view':<26} {'HTML':>7} {'p90':>6} {'max':>6} {'JSON':>7} {'p90':>6} {'max':>6} "
          f"{'first':>6}  {'HTML':>6} {'JSON':>6}"
          + (f"  {'HTML':>6} {'JSON':>6}" if srv else ""))  # fmt: skip
    for name, path, query, status in views:
        h = timed(get(path, query, status), repeat)
        j = timed(get("/api" + path, query, status), repeat)
        hc, hs = cpu_ms(handled(path, query), repeat, server_spent)
        jc, js = cpu_ms(handled("/api" + path, query), repeat, server_spent)
        ok = max(h[1], j[1]) <= BUDGET_MS
        if not ok:
            failed.append(f"{label}: {name}")
        verdict = "PASS" if ok else "FAIL"
        print(f"{name:<26} {h[1]:>7.1f} {h[2]:>6.1f} {h[3]:>6.1f} {j[1]:>7.1f} {j[2]:>6.1f} "
              f"{j[3]:>6.1f} {min(h[0], j[0]):>6.1f}  {hc:>6.1f} {jc:>6.1f}"
              + (f"  {hs:>6.1f} {js:>6.1f}" if hs is not None and js is not None else "")
              + f"  {verdict}")  # fmt: skip
    server.close()
    leza.shutdown(10)
    return failed


TRACE_INDEXES = ("ix_leza_access_request", "ix_leza_access_session_anonymous",
                 "ix_leza_access_performer_refused")  # fmt: skip


def write_cost(make_url: Callable[[int], str], n: int, rounds: int, label: str) -> None:
    """What the traceability indexes cost the writes: ``SQLStorage.write`` of ``n``
    events in the recorder's batches (512) into a fresh database, with this
    version's indexes and with those before it (the three traceability indexes
    of ``leza_access`` dropped, the performer index without the session),
    alternated over ``rounds``; events/s (wall) and CPU µs per event of the
    writing thread. Twice: with request ids as the middleware makes them (a
    per-process prefix and a counter) and with random ones, as a proxy that
    sends ``X-Request-ID`` or ``traceparent`` gives them (reused as they come)."""
    end = (time.time_ns() // 1000 // DAY_US) * DAY_US
    side, rows = build_rows(n, end)
    world = side["world"][0]
    devices = {d.key: d for d in world.devices}
    geos = {g.key: g for g in world.geos}
    performers = dict(zip(world.pkeys, world.performers, strict=True))
    plain = list(rows)
    streams = {
        "own ids": plain,
        "random ids": [(*r[:10], uuid.uuid4().hex, *r[11:]) for r in plain],
    }
    variants = ("this version", "main's indexes")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    k = 0
    for _ in range(rounds):
        for ids, stream in streams.items():
            events = [AccessEvent(r, devices.get(r[18]), geos.get(r[19]), performers.get(r[21]))
                      for r in stream]  # fmt: skip
            for variant in variants:
                storage = SQLStorage(make_url(k))
                k += 1
                storage.setup()
                if variant != "this version":  # the indexes before traceability
                    with storage.engine.begin() as conn:
                        for name in (*TRACE_INDEXES, "ix_leza_access_performer_ts"):
                            conn.execute(text(f"DROP INDEX {name}"))
                        conn.execute(text(
                            "CREATE INDEX ix_leza_access_performer_ts ON leza_access "
                            "(performer_id, ts) WHERE performer_id IS NOT NULL"
                        ))  # fmt: skip
                gc.collect()
                w0, c0 = time.perf_counter(), time.thread_time()
                for j in range(0, len(events), 512):
                    storage.write(events[j : j + 512])
                wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
                storage.close()
                results.setdefault((ids, variant), []).append(
                    (len(events) / wall, cpu / len(events) * 1e6)
                )
    print(f"\n{label}: SQLStorage.write of {n:,} events in batches of 512, {rounds} rounds each; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for (ids, variant), runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"  {ids:<11} {variant:<14} {rate:>9,.0f} events/s  {cpu:5.1f} µs CPU per event  "
              f"(runs: {', '.join(f'{r[0]:,.0f}' for r in runs)})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--db", help="the SQLite file (default: under the temp dir, cached)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL URL, or auto")
    parser.add_argument("--pg-n", type=int, help="events loaded into PostgreSQL (default -n)")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument(
        "--write-cost",
        type=int,
        metavar="N",
        help="only measure what the traceability indexes cost the writes, over N events",
    )
    args = parser.parse_args()
    if args.write_cost:
        with tempfile.TemporaryDirectory(prefix="leza-bench-trace-writes-") as tmp:
            write_cost(lambda i: f"sqlite:///{tmp}/w{i}.db", args.write_cost, 3, "SQLite")
        if args.postgres and args.postgres != "auto":
            admin = SQLStorage(args.postgres).engine
            made: list[str] = []

            def schema_url(i: int) -> str:
                schema = f"bench_trace_writes_{os.getpid()}_{i}"
                with admin.begin() as c:
                    c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    c.execute(text(f"CREATE SCHEMA {schema}"))
                made.append(schema)
                sep = "&" if "?" in args.postgres else "?"
                return f"{args.postgres}{sep}options=-csearch_path%3D{schema}"

            try:
                write_cost(schema_url, args.write_cost, 3, "PostgreSQL")
            finally:
                with admin.begin() as c:
                    for schema in made:
                        c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        return 0
    end = (time.time_ns() // 1000 // DAY_US) * DAY_US  # today, 00:00 UTC: a stable span
    failed: list[str] = []

    key = hashlib.sha256((schema_key() + GENERATOR).encode()).hexdigest()[:10]
    path = args.db or os.path.join(tempfile.gettempdir(), f"leza-bench-trace-{key}-{args.n}.db")
    if args.rebuild or not os.path.exists(path + ".json"):
        for suffix in ("", "-wal", "-shm", ".json"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        print(f"building {path} ({args.n:,} access events)", flush=True)
        meta = load_sqlite(path, args.n, end)
        with open(path + ".json", "w") as f:
            json.dump(meta, f)
    else:
        with open(path + ".json") as f:
            meta = json.load(f)
    print(
        f"SQLite: {meta['n']:,} access events loaded in {meta['access_s']} s "
        f"({meta['n'] / meta['access_s']:,.0f}/s); built in {meta['build_s']} s; "
        f"access indexes built in: {meta['index_s']}"
    )
    failed += run_views(f"sqlite:///{path}", meta, args.repeat, "SQLite")

    if args.postgres and not args.sqlite_only:
        server = None
        url = args.postgres
        if url == "auto":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from conftest import ThrowawayPostgres, _postgres_bindir

            bindir = _postgres_bindir()
            if bindir is None:
                print("no PostgreSQL server binaries found: PostgreSQL skipped")
                return 1 if failed else 0
            server = ThrowawayPostgres(bindir)
            url = server.start()
        try:
            n = args.pg_n or args.n
            schema = f"bench_trace_{key}_{n}"
            sep = "&" if "?" in url else "?"
            scoped = f"{url}{sep}options=-csearch_path%3D{schema}"
            admin = SQLStorage(url).engine
            with admin.begin() as c:
                kept = c.execute(
                    text("SELECT to_regclass(:t)"), {"t": f"{schema}.bench_trace_meta"}
                ).scalar()
                pg = None
                if kept is not None and not args.rebuild:  # built by an earlier run: reuse
                    pg = json.loads(
                        c.execute(text(f"SELECT meta FROM {schema}.bench_trace_meta")).scalar()
                    )
                else:
                    c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    c.execute(text(f"CREATE SCHEMA {schema}"))
            if pg is None:
                print(f"\nbuilding PostgreSQL schema {schema} ({n:,} access events)", flush=True)
                pg = load_postgres(scoped, n, end)
                with admin.begin() as c:
                    c.execute(text(f"CREATE TABLE {schema}.bench_trace_meta (meta text)"))
                    c.execute(text(f"INSERT INTO {schema}.bench_trace_meta VALUES (:m)"),
                              {"m": json.dumps(pg)})  # fmt: skip
            admin.dispose()
            print(
                f"PostgreSQL: {n:,} access events loaded in {pg['access_s']} s; built in "
                f"{pg['build_s']} s; access indexes built in: {pg['index_s']}"
            )
            failed += run_views(scoped, pg, args.repeat, "PostgreSQL")
        finally:
            if server is not None:
                server.stop()
    print(
        f"\n{'FAIL: ' + '; '.join(failed) if failed else 'PASS'}: every view "
        f"{'within' if not failed else 'against'} the {BUDGET_MS:.0f} ms budget"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
