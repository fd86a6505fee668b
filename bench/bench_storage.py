"""Storage write and query throughput.

    python bench/bench_storage.py [-n 200000] [--batch 500] [--postgres URL]

Writes N realistic access events (rotating ~300 User-Agents, ~200 networks, a
few dozen performers) in batches to a fresh SQLite file through
``SQLStorage.write``, and side by side the same rows through the SQLAlchemy ORM
(``session.add_all``, smaller N) and through raw ``sqlite3`` ``executemany`` of
pre-built tuples (the driver's floor). Then times the dashboard's first page:
FROM/TO + action, newest first. With ``--postgres URL`` or
``$LEZA_TEST_POSTGRES_URL`` the same write and query run against PostgreSQL in
a throw-away schema. Budgets (DESIGN.md): SQLite >= 50,000 events/s,
PostgreSQL >= 20,000 events/s, first page over 1M events <= 100 ms.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leza_middleware.events import AccessEvent, Device, Geo, ua_key
from leza_middleware.performer import Organization, Performer
from leza_middleware.storage import QueryFilter, SQLStorage
from leza_middleware.storage.models import AccessRow, metadata
from leza_middleware.storage.sql import KINDS

UA_FILE = Path(__file__).resolve().parent.parent.parent / "shared/testdata/ua/uas_1000.json"
ACTIONS = ["access"] * 85 + ["denied"] * 8 + ["login"] * 3 + ["logout"] * 2 + ["login_failed"] * 2
ROUTES = [
    ("GET", "/api/items", "/api/items"),
    ("GET", "/api/items/{id}", "/api/items/{n}"),
    ("POST", "/api/items", "/api/items"),
    ("GET", "/tracking/live", "/tracking/live?from=2025-07-01&token=[Filtered]"),
    ("PUT", "/api/users/{id}", "/api/users/{n}"),
    ("GET", "/health", "/health"),
    ("DELETE", "/api/items/{id}", "/api/items/{n}"),
]
REASONS = {
    "access": "User has the permission Live Tracking Page Permission to access this "
    "resource of this application Insight App",
    "denied": "User lacks the permission Live Tracking Page Permission for this resource",
    "login": "User logged in",
    "logout": "User has the permission to logout",
    "login_failed": "Invalid credentials",
}


def user_agents(n: int, rng: random.Random) -> list[str]:
    if UA_FILE.exists():
        uas: list[str] = json.loads(UA_FILE.read_text(encoding="utf-8"))
        return rng.sample(uas, min(n, len(uas)))
    return [
        f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{100 + i % 30}.0.{i}.0 Safari/537.36"
        for i in range(n)
    ]


def make_events(n: int, seed: int = 1) -> list[AccessEvent]:
    rng = random.Random(seed)
    devices = []
    for i, ua in enumerate(user_agents(300, rng)):
        bot = i % 25 == 0
        devices.append(
            Device(
                key=ua_key(ua),
                user_agent=ua,
                browser_type="bot" if bot else "browser",
                browser_name=rng.choice(["Chrome", "Firefox", "Safari", "Edge", "Opera"]),
                browser_version=f"{rng.randint(50, 130)}.0",
                engine=rng.choice(["Blink", "Gecko", "WebKit"]),
                engine_version=f"{rng.randint(500, 620)}.36",
                os_name=rng.choice(["GNU/Linux", "Windows", "Mac OS X", "Android", "iOS"]),
                os_version=str(rng.randint(5, 15)),
                os_platform=rng.choice(["x64", "arm64", ""]),
                device_type=rng.choice(["desktop", "smartphone", "tablet"]),
                device_brand=rng.choice(["", "Samsung", "Apple", "Motorola"]),
                device_model=rng.choice(["", "SM-G991B", "iPhone", "MB810"]),
                bot_name="Googlebot" if bot else None,
                bot_category="Search bot" if bot else "",
                bot_url="http://www.google.com/bot.html" if bot else "",
                is_mobile=i % 2 == 0,
                is_pc=i % 2 == 1,
                is_touch_capable=i % 2 == 0,
            )
        )
    nets = []
    for i in range(200):
        a, b = 10 + i // 50, (i * 7) % 256
        nets.append(
            (
                f"{a}.{b}.{i % 256}",
                Geo(
                    key=f"{a}.{b}.{i % 256}.0/24",
                    country_code=rng.choice(["DE", "GB", "US", "SE", "CN"]),
                    country_name=rng.choice(["Germany", "United Kingdom", "United States"]),
                    region_code="HE",
                    region_name="Hesse",
                    city=rng.choice(["Frankfurt am Main", "London", "Milton", "Linköping"]),
                    zip_code=str(rng.randint(10000, 99999)),
                    time_zone="Europe/Berlin",
                    latitude=round(rng.uniform(-80, 80), 4),
                    longitude=round(rng.uniform(-170, 170), 4),
                    metro_code=rng.choice([0, 819]),
                ),
            )
        )
    performers: list[Performer | None] = [None] * 12
    for i in range(48):
        org = Organization(id=f"org-{i % 5}", name=f"Org {i % 5}", type="customer", labels=("a",))
        performers.append(
            Performer(
                id=f"user-{i}",
                name=f"User {i}",
                email=f"user{i}@example.com",
                organization_id=org.id,
                organization_name=org.name,
                role_name=rng.choice(["admin", "viewer", "editor"]),
                clientid="insight-app",
                organizations=(org,),
            )
        )
    ts = 1_750_000_000_000_000
    prefix = os.urandom(6).hex()
    events = []
    for i in range(n):
        ts += rng.choice((0, 150, 400, 900, 2500))  # some equal timestamps
        action = rng.choice(ACTIONS)
        method, route, path = rng.choice(ROUTES)
        prefix_ip, geo = rng.choice(nets)
        perf = rng.choice(performers)
        chain = () if i % 3 else (f"{prefix_ip}.{rng.randint(1, 254)}", "10.0.0.2")
        events.append(
            AccessEvent.build(
                id=f"{ts:013x}{prefix}{i & 0xFFFFFF:06x}",
                ts=ts,
                action=action,
                method=method,
                endpoint=path.replace("{n}", str(rng.randint(1, 9999))),
                route=route,
                status=403 if action == "denied" else rng.choice((200, 200, 200, 201, 404)),
                duration_us=rng.randint(200, 90_000),
                outcome="denied" if action == "denied" else "success",
                reason=REASONS[action],
                request_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                client_ip=f"{prefix_ip}.{rng.randint(1, 254)}",
                ip_valid=True,
                peer_ip="10.0.0.2" if chain else f"{prefix_ip}.9",
                proxy_chain=chain,
                scheme="https",
                host="app.example.com",
                app="insight",
                device=rng.choice(devices),
                geo=geo,
                performer=perf,
                machine_id=f"m{rng.randint(1, 5000):08x}",
                session_hash=None if perf is None else f"s{rng.getrandbits(64):016x}",
            )
        )
    return events


def batches(events: list[AccessEvent], size: int) -> list[list[AccessEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_storage(storage: SQLStorage, events: list[AccessEvent], size: int) -> float:
    storage.setup()
    chunks = batches(events, size)

    def run() -> None:
        for chunk in chunks:
            storage.write(chunk)

    return len(events) / timed(run)


def bench_orm(path: str, events: list[AccessEvent], size: int) -> float:
    from sqlalchemy import create_engine, event
    from sqlmodel import Session

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _rec: Any) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    metadata.create_all(engine)
    spec = KINDS["access"]
    cols = spec.columns
    chunks = batches(events, size)

    def run() -> None:
        with Session(engine) as session:
            for chunk in chunks:
                session.add_all([AccessRow(**dict(zip(cols, e.row, strict=True))) for e in chunk])
                session.commit()

    rate = len(events) / timed(run)
    engine.dispose()
    return rate


def bench_raw(path: str, storage: SQLStorage, events: list[AccessEvent], size: int) -> float:
    storage.setup()  # same schema and indexes
    storage.close()
    rows = [e.row for e in events]
    sql = storage.insert_statement("access")  # the one-row form of SQLStorage's statement
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]

    def run() -> None:
        for chunk in chunks:
            conn.executemany(sql, chunk)
            conn.commit()

    rate = len(rows) / timed(run)
    conn.close()
    return rate


def bench_query(storage: SQLStorage, events: list[AccessEvent], repeat: int = 30) -> None:
    lo = events[len(events) // 4].ts
    hi = events[3 * len(events) // 4].ts
    cases = [
        ("FROM/TO + action=denied, first page", QueryFilter(since=lo, until=hi, action="denied")),
        ("FROM/TO, first page", QueryFilter(since=lo, until=hi)),
        ("performer=user-7, first page", QueryFilter(performer_id="user-7")),
    ]
    for label, flt in cases:
        storage.query("access", flt)  # warm the pool and the page cache
        times = []
        page = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            page = storage.query("access", flt)
            times.append(time.perf_counter() - t0)
        assert page is not None
        times2 = []
        if page.next_cursor is not None:
            flt2 = QueryFilter(
                since=flt.since,
                until=flt.until,
                action=flt.action,
                performer_id=flt.performer_id,
                cursor=page.next_cursor,
            )
            for _ in range(repeat):
                t0 = time.perf_counter()
                storage.query("access", flt2)
                times2.append(time.perf_counter() - t0)
        second = f", next page {statistics.median(times2) * 1000:.2f} ms" if times2 else ""
        print(
            f"  query {label} ({len(page.events)} rows): "
            f"median {statistics.median(times) * 1000:.2f} ms{second}"
        )


def bench_postgres(url: str, events: list[AccessEvent], size: int) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"leza_bench_{os.getpid()}"
    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    plain = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        scoped = sa_url.update_query_dict({"options": f"-csearch_path={schema}"})
        storage = SQLStorage(scoped)
        rate = bench_storage(storage, events, size)
        print(f"  PostgreSQL SQLStorage.write: {rate:,.0f} events/s (budget >= 20,000)")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"ANALYZE {schema}.leza_access")
        bench_query(storage, events)
        storage.close()
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="events for SQLStorage (SQLite)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--orm-n", type=int, default=20_000, help="events for the ORM reference")
    parser.add_argument("--pg-n", type=int, default=100_000, help="events for PostgreSQL")
    parser.add_argument("--postgres", default=os.environ.get("LEZA_TEST_POSTGRES_URL"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    events = make_events(args.n)
    print(
        f"generated {len(events):,} events in {time.perf_counter() - t0:.1f} s "
        f"({len({e.device.key for e in events if e.device})} UAs, "
        f"{len({e.geo.key for e in events if e.geo})} networks, "
        f"{len({e.performer for e in events if e.performer})} performers); batch {args.batch}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "leza.db")
        storage = SQLStorage(f"sqlite:///{path}")
        rate = bench_storage(storage, events, args.batch)
        print(f"  SQLite SQLStorage.write: {rate:,.0f} events/s (budget >= 50,000)")
        bench_query(storage, events)
        storage.close()

        n_orm = min(args.orm_n, len(events))
        orm = bench_orm(os.path.join(tmp, "orm.db"), events[:n_orm], args.batch)
        print(f"  SQLite ORM session.add_all ({n_orm:,} events, access rows only): {orm:,.0f}/s")
        raw_path = os.path.join(tmp, "raw.db")
        raw = bench_raw(raw_path, SQLStorage(f"sqlite:///{raw_path}"), events, args.batch)
        print(f"  SQLite raw sqlite3 executemany of pre-built rows: {raw:,.0f} rows/s")
        print(
            f"  ratio: SQLStorage / ORM = {rate / orm:.1f}x, "
            f"SQLStorage / raw executemany = {rate / raw:.2f}"
        )
    if args.postgres:
        pg_events = events[: args.pg_n]
        print(f"PostgreSQL ({len(pg_events):,} events)")
        bench_postgres(args.postgres, pg_events, args.batch)
    else:
        print("PostgreSQL: skipped (pass --postgres URL or set LEZA_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()
