"""Storage write and query throughput.

    python bench/bench_storage.py [-n 200000] [--batch 500] [--rounds 3] [--postgres URL]
                                  [--traffic recorder,mix]
    BENCH_SRC=/tmp/main python bench/bench_storage.py   # another tree's package

Two kinds of traffic, each written the two ways side by side, ``--rounds``
times alternating (a fresh file each time; medians printed, CPU time first: on
a shared machine other processes stretch the wall clock, not the CPU):

* ``recorder``: what the recorder really writes under bench_throughput.py's
  load: raw records made by the real ASGI middleware for ``GET /`` with ~300
  rotating real User-Agents and ~500 client IPs through a trusted proxy
  (bench_breakdown.make_raws), enriched by the real pipeline (GeoLite2 on) in
  the recorder's batches: anonymous, one endpoint, the library's own request
  ids, times of the moment;
* ``mix``: an application's mix, built directly (below).

Writes N realistic access events (rotating ~300 User-Agents, ~200 networks, a
few dozen performers; request ids made as the library makes its own: a
per-process prefix and a counter) in batches to a fresh SQLite file through
``SQLStorage.write`` (device, geo and performer rows and the STATE traffic
rollups included), and side by side: the same events with random request ids
(what a proxy's ``X-Request-ID`` or a ``traceparent`` brings: their index
inserts land on random pages), the same rows through the SQLAlchemy ORM
(``session.add_all``, smaller N), and the driver's floor: raw ``sqlite3``
``executemany`` of pre-built access tuples into the same table and indexes.
Then times the dashboard's first page: FROM/TO + action, newest first.

With ``--postgres URL`` or ``$LEZA_TEST_POSTGRES_URL`` the same writes and
queries run against PostgreSQL in a throw-away schema; the floor there is raw
psycopg ``COPY`` of the pre-built tuples (and, for reference, the pipelined
``executemany`` of the one-row INSERT). Besides wall-clock rates it prints CPU
per event: the writing thread's, and on a server on this machine the server
backend's (from /proc), which other processes on a shared machine do not
inflate.

Budgets (issue 17): SQLite >= 150,000 events/s, PostgreSQL >= 50,000 events/s
(DESIGN.md's earlier ones: 50,000 and 20,000); first page over 1M events <=
100 ms. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# BENCH_SRC: another tree's leza_middleware, measured with this bench (as bench_breakdown.py)
sys.path.insert(0, os.environ.get("BENCH_SRC") or str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _testdata import testdata

from leza_middleware.events import ACCESS_FIELDS, AccessEvent, Device, Geo, ua_key
from leza_middleware.ids import new_request_id
from leza_middleware.performer import Organization, Performer
from leza_middleware.storage import QueryFilter, SQLStorage
from leza_middleware.storage.models import AccessRow, metadata
from leza_middleware.storage.sql import KINDS

UA_FILE = testdata("ua", "uas_1000.json")
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
    if UA_FILE is not None:
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
                request_id=new_request_id(),
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


def recorder_events(n: int, batch: int) -> list[AccessEvent]:
    """``n`` access events as the recorder prepares them for bench_throughput.py's
    traffic: raw records from the real ASGI middleware, enriched by the real
    pipeline in batches of ``batch`` (see bench_breakdown.py)."""
    from bench_breakdown import make_raws
    from bench_throughput import geoip_db

    from leza_middleware import Leza

    with tempfile.TemporaryDirectory() as tmp:
        leza = Leza(storage="memory://", trusted_proxies=["127.0.0.1"], geoip_db=geoip_db(),
                    spill_dir=tmp, secret_key="bench-secret-key-0123456789abcdef",
                    flush_interval=3600)  # fmt: skip
        raws, _ = make_raws(leza, n)
        prepare = leza.pipeline.prepare_batch
        events: list[AccessEvent] = []
        for i in range(0, n, batch):
            events += prepare(list(raws[i : i + batch]))  # type: ignore[arg-type]
        leza.shutdown(2)
    return events


_REQUEST_ID = ACCESS_FIELDS.index("request_id")


def with_random_request_ids(events: list[AccessEvent], seed: int = 2) -> list[AccessEvent]:
    """``events`` with random request ids (incoming ``X-Request-ID``/``traceparent``)."""
    rng = random.Random(seed)
    out = []
    for e in events:
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        row = (*e.row[:_REQUEST_ID], rid, *e.row[_REQUEST_ID + 1 :])
        out.append(AccessEvent(row, e.device, e.geo, e.performer))
    return out


def batches(events: list[AccessEvent], size: int) -> list[list[AccessEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


class Rate:
    """Events per second (wall clock) and CPU µs per event (this thread; the
    PostgreSQL server backend's too, when it runs on this machine)."""

    def __init__(self, n: int, wall: float, cpu: float, server: float | None = None) -> None:
        self.per_s = n / wall
        self.cpu_us = cpu / n * 1e6
        self.server_us = None if server is None else server / n * 1e6

    def cpu(self) -> str:
        """CPU per event, and the rate it allows: what the wall-clock rate would
        be with a core to itself (client and server one after the other)."""
        server = "" if self.server_us is None else f" + server {self.server_us:.1f}"
        total = self.cpu_us + (self.server_us or 0.0)
        return f"CPU {self.cpu_us:.1f}{server} µs/event = {1e6 / total:,.0f}/s of CPU"


def no_server() -> float | None:
    return None


def timed(
    fn: Callable[[], Any], server: Callable[[], float | None] = no_server
) -> tuple[float, float, float | None]:
    """(wall s, thread CPU s, server backend CPU s or None) of ``fn()``."""
    gc.collect()
    s0 = server()
    c0 = time.thread_time()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    cpu = time.thread_time() - c0
    s1 = server()
    return wall, cpu, None if s0 is None or s1 is None else s1 - s0


def backend_cpu(conn: Any) -> Callable[[], float | None]:
    """The CPU seconds of ``conn``'s PostgreSQL backend so far, read from /proc
    when the server runs on this machine (else None)."""
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = int(cur.fetchone()[0])
    cur.close()
    stat = Path(f"/proc/{pid}/stat")
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float | None:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                return None
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / tick

    return read


def bench_storage(storage: SQLStorage, events: list[AccessEvent], size: int) -> Rate:
    storage.setup()
    chunks = batches(events, size)
    server = no_server
    if storage.engine.dialect.name == "postgresql":
        storage.write(chunks[0])  # connect: the backend whose CPU is read
        events, chunks = events[len(chunks[0]) :], chunks[1:]
        server = backend_cpu(storage._raw)

    def run() -> None:
        for chunk in chunks:
            storage.write(chunk)

    return Rate(len(events), *timed(run, server))


def bench_orm(path: str, events: list[AccessEvent], size: int) -> Rate:
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

    rate = Rate(len(events), *timed(run))
    engine.dispose()
    return rate


def bench_raw(path: str, storage: SQLStorage, events: list[AccessEvent], size: int) -> Rate:
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

    rate = Rate(len(rows), *timed(run))
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


#: Issue 17's write budgets, events/s.
BUDGET = {"SQLite": 150_000, "PostgreSQL": 50_000}


def line(label: str, rate: Rate, floor: Rate | None, budget: int | None = None) -> None:
    """One figure: events/s, against the floor, against the budget, CPU."""
    versus = f"{rate.per_s / floor.per_s:5.2f}" if floor is not None else "    -"
    judged = ""
    if budget is not None:
        judged = f"{budget:>9,}  {'met' if rate.per_s >= budget else 'NOT met'}"
    print(f"  {label:<52} {rate.per_s:>9,.0f} {versus:>9}  {judged:<17}  {rate.cpu()}")


def header(title: str) -> None:
    print(f"{title:<54} {'events/s':>9} {'/ floor':>9}  {'budget':>9}")


def pg_raw(storage: SQLStorage, events: list[AccessEvent], size: int, copy: bool) -> Rate:
    """The driver's floor: pre-built access tuples into the same table and indexes,
    by psycopg ``COPY`` (``copy``) or the pipelined ``executemany`` of the
    one-row INSERT; no device, geo or performer rows, no rollups."""
    storage.setup()
    raw = storage.engine.raw_connection()
    rows = [e.row for e in events]
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    table = storage.engine.dialect.identifier_preparer.format_table(AccessRow.__table__)  # type: ignore[attr-defined]
    cols = ", ".join(f'"{c}"' for c in ACCESS_FIELDS)
    sql = storage.insert_statement("access")

    def run() -> None:
        cur = raw.cursor()
        for chunk in chunks:
            if copy:
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as out:
                    for row in chunk:
                        out.write_row(row)
            else:
                cur.executemany(sql, chunk)
            raw.commit()
        cur.close()

    rate = Rate(len(rows), *timed(run, backend_cpu(raw)))
    raw.close()
    return rate


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[SQLStorage]:
    """A SQLStorage confined to a throw-away schema of ``url``."""
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"leza_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    plain = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    storage = SQLStorage(sa_url.update_query_dict({"options": f"-csearch_path={schema}"}))
    try:
        yield storage
    finally:
        storage.close()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def bench_postgres(
    url: str, events: list[AccessEvent], size: int, title: str = "", queries: bool = True
) -> None:
    with pg_schema(url) as storage:
        floor = pg_raw(storage, events, size, copy=True)
    with pg_schema(url) as storage:
        pipelined = pg_raw(storage, events, size, copy=False)
    with pg_schema(url) as storage:
        rate = bench_storage(storage, events, size)
        with storage.transaction() as conn:
            conn.exec_driver_sql("ANALYZE leza_access")
        random_ids = None
        with pg_schema(url) as other:
            random_ids = bench_storage(other, with_random_request_ids(events), size)
        budget = BUDGET["PostgreSQL"]
        header(f"PostgreSQL{title} ({len(events):,} events, batch {size})")
        line("raw psycopg COPY of pre-built rows (floor)", floor, floor)
        line("raw psycopg executemany (pipelined), pre-built rows", pipelined, floor)
        line("SQLStorage.write, own request ids", rate, floor, budget)
        line("SQLStorage.write, random incoming request ids", random_ids, floor, budget)
        if queries:
            bench_query(storage, events)


def median_rate(rates: list[Rate]) -> Rate:
    """The per-field median of several rounds' rates."""
    out = Rate(1, 1.0, 0.0)
    out.per_s = statistics.median(r.per_s for r in rates)
    out.cpu_us = statistics.median(r.cpu_us for r in rates)
    servers = [r.server_us for r in rates if r.server_us is not None]
    out.server_us = statistics.median(servers) if servers else None
    return out


def sqlite_rounds(
    title: str, events: list[AccessEvent], size: int, rounds: int, random_ids: bool
) -> SQLStorage | None:
    """``rounds`` alternating rounds of the raw floor and ``SQLStorage.write`` of
    ``events`` (and of them with random request ids), each on a fresh file;
    per round and median lines. Returns the last round's storage (open) for
    the queries, its file kept until the next call."""
    floor: list[Rate] = []
    write: list[Rate] = []
    randomised: list[Rate] = []
    other_ids = with_random_request_ids(events) if random_ids else []
    keep: SQLStorage | None = None
    tmp = tempfile.mkdtemp(prefix="leza-bench-")
    for rnd in range(rounds):
        raw_path = os.path.join(tmp, f"raw{rnd}.db")
        floor.append(bench_raw(raw_path, SQLStorage(f"sqlite:///{raw_path}"), events, size))
        if keep is not None:
            keep.close()
        keep = SQLStorage(f"sqlite:///{os.path.join(tmp, f'leza{rnd}.db')}")
        write.append(bench_storage(keep, events, size))
        if random_ids:
            other = SQLStorage(f"sqlite:///{os.path.join(tmp, f'random{rnd}.db')}")
            randomised.append(bench_storage(other, other_ids, size))
            other.close()
        for name in os.listdir(tmp):  # keep the last round's leza file only
            if not name.startswith(f"leza{rnd}"):
                os.unlink(os.path.join(tmp, name))
    budget = BUDGET["SQLite"]
    header(f"SQLite, {title} ({len(events):,} events, batch {size})")
    for rnd in range(rounds if rounds > 1 else 0):
        line(f"round {rnd + 1}: raw sqlite3 executemany (floor)", floor[rnd], floor[rnd])
        line(f"round {rnd + 1}: SQLStorage.write", write[rnd], floor[rnd], budget)
    f = median_rate(floor)
    line("raw sqlite3 executemany of pre-built rows (floor)", f, f)
    line("SQLStorage.write, own request ids", median_rate(write), f, budget)
    if random_ids:
        line("SQLStorage.write, random incoming request ids", median_rate(randomised), f, budget)
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="events for SQLStorage (SQLite)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (SQLite)")
    parser.add_argument("--traffic", default="recorder,mix", help="recorder, mix or both")
    parser.add_argument("--orm-n", type=int, default=20_000, help="events for the ORM reference")
    parser.add_argument("--pg-n", type=int, default=100_000, help="events for PostgreSQL")
    parser.add_argument("--postgres", default=os.environ.get("LEZA_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    traffic = set(args.traffic.split(","))
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    if "recorder" in traffic:
        t0 = time.perf_counter()
        events = recorder_events(args.n, 512)
        print(f"recorder traffic: {len(events):,} events made and enriched in "
              f"{time.perf_counter() - t0:.1f} s (anonymous GET /, "
              f"{len({e.device_key for e in events})} UAs, "
              f"{len({e.geo_key for e in events})} networks)")  # fmt: skip
        storage = sqlite_rounds("the recorder's traffic", events, args.batch, args.rounds,
                                random_ids=False)  # fmt: skip
        if storage is not None:
            storage.close()
        if args.postgres:
            bench_postgres(args.postgres, events[: args.pg_n], args.batch,
                           ", the recorder's traffic", queries=False)  # fmt: skip
    if "mix" not in traffic:
        return
    t0 = time.perf_counter()
    events = make_events(args.n)
    print(
        f"\napplication mix: generated {len(events):,} events in {time.perf_counter() - t0:.1f} s "
        f"({len({e.device.key for e in events if e.device})} UAs, "
        f"{len({e.geo.key for e in events if e.geo})} networks, "
        f"{len({e.performer for e in events if e.performer})} performers); batch {args.batch}"
    )
    storage = sqlite_rounds("an application's mix", events, args.batch, args.rounds,
                            random_ids=True)  # fmt: skip
    assert storage is not None
    with tempfile.TemporaryDirectory() as tmp:
        n_orm = min(args.orm_n, len(events))
        orm = bench_orm(os.path.join(tmp, "orm.db"), events[:n_orm], args.batch)
        line(f"ORM session.add_all ({n_orm:,} events, access rows only)", orm, None)
    bench_query(storage, events)
    storage.close()
    if args.postgres:
        bench_postgres(args.postgres, events[: args.pg_n], args.batch, ", an application's mix")
    else:
        print("PostgreSQL: skipped (pass --postgres URL or set LEZA_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()
