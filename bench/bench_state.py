"""STATE's traffic numbers at volume, and what keeping rollups costs the recorder.

    python bench/bench_state.py [-n 10000000] [--days 31] [--db PATH] [--runs 7]
                                [--postgres URL] [--pg-n 1000000] [--skip-fill]

1. **Fill**: ``-n`` access events spread evenly (with jitter) over ``--days``
   days, ending now, written to a SQLite file through ``SQLStorage.write`` in
   batches of 10,000: the real write path, so the raw rows and the rollups are
   written together exactly as the recorder writes them (and the script checks
   that the rollups count every row). The traffic is a realistic mix: 24
   endpoints with skewed popularity, 2 % unmatched 404 scans, a few odd
   methods, logins and failed logins, ~93 % success / 4 % client errors / 2 %
   denied / 1 % server errors, log-normal durations per endpoint from ~1 ms to
   seconds. Rows are built as tuples (no enrichment), sharing a small pool of
   devices, networks and performers. The hours are then summed into hour rows
   (``settle_traffic()``, which the recorder runs every minute). ``--db PATH``
   keeps the file; run again with ``--skip-fill`` to time the reads only.
2. **Reads**: ``storage.traffic()`` (totals, series and the endpoint list) for
   windows ending now: 3 hours (minute buckets), 24 hours (hour buckets), 4 and
   7 days, 30 days (day buckets) and everything. ``--runs`` runs each, the
   first on a cold connection pool; wall and CPU time (medians), and each
   run's wall time.
   Budgets (DESIGN.md): 24 h <= 150 ms, 30 days <= 500 ms on SQLite.
3. **Recorder cost**: ``SQLStorage.write`` of 100,000 events in batches of 512
   (the recorder's), with rollups, with rollups switched off (the storage's
   aggregation and upsert replaced by no-ops), and without the ``endpoint``
   filter's index either (as before both), alternated over 5 rounds, for
   one endpoint (a hello-world) and for the mix above, in CPU time of the
   writing thread (what the recorder takes from the app; wall time on a
   shared machine mostly measures the neighbours). Budget: rollups <= 1 µs
   per event.

With ``--postgres URL`` the fill (``--pg-n`` events) and reads also run on
PostgreSQL in a throw-away schema. ``--backfill`` then times migration 0004 on
the SQLite file (its rollups dropped and rebuilt from the stored events).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from leza_middleware.events import AccessEvent, Device, Geo, ua_key
from leza_middleware.performer import Performer
from leza_middleware.state import bucket_seconds_for
from leza_middleware.storage import SQLStorage

MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# (method, route, weight, median duration ms, sigma)
ENDPOINTS = [
    ("GET", "/api/items", 300, 4.0, 0.6),
    ("GET", "/api/items/{item_id}", 260, 2.5, 0.5),
    ("GET", "/health", 200, 0.3, 0.3),
    ("POST", "/api/items", 60, 12.0, 0.7),
    ("PUT", "/api/items/{item_id}", 40, 10.0, 0.7),
    ("DELETE", "/api/items/{item_id}", 10, 8.0, 0.6),
    ("GET", "/api/users/{user_id}", 80, 3.0, 0.5),
    ("PATCH", "/api/users/{user_id}", 12, 9.0, 0.6),
    ("GET", "/api/orders", 70, 25.0, 0.8),
    ("GET", "/api/orders/{order_id}", 60, 6.0, 0.6),
    ("POST", "/api/orders", 25, 60.0, 0.8),
    ("GET", "/api/reports/{report_id}", 8, 900.0, 0.9),
    ("POST", "/api/reports", 3, 2500.0, 0.7),
    ("GET", "/tracking/live", 50, 15.0, 0.5),
    ("GET", "/api/search", 40, 45.0, 0.9),
    ("POST", "/login", 12, 120.0, 0.3),
    ("POST", "/logout", 5, 3.0, 0.3),
    ("GET", "/static/{path:path}", 90, 0.8, 0.4),
    ("OPTIONS", "/api/items", 15, 0.2, 0.3),
    ("HEAD", "/health", 20, 0.2, 0.3),
    ("GET", "/api/invoices/{invoice_id}", 20, 7.0, 0.6),
    ("POST", "/api/payments", 10, 350.0, 0.6),
    ("GET", "/admin/leza", 2, 20.0, 0.5),
    ("WS", "/ws/updates", 4, 30_000.0, 1.2),
]
UNMATCHED = 0.02  # share of 404 scans of random paths
ODD_METHOD = 0.001


class Mix:
    """A deterministic stream of realistic access rows."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        weights = [e[2] for e in ENDPOINTS]
        total = sum(weights)
        self.cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.devices = [
            Device(key=ua_key(f"bench-ua-{i}"), user_agent=f"bench-ua-{i}", browser_name="Chrome")
            for i in range(40)
        ]
        self.geos = [Geo(key=f"10.{i}.0.0/16", country_code="DE", city="Berlin") for i in range(30)]
        self.performers: list[Performer | None] = [None] * 10 + [
            Performer(id=f"user-{i}", name=f"User {i}") for i in range(20)
        ]
        self.prefix = uuid.uuid4().hex[:6]
        self.n = 0

    def event(self, ts: int) -> AccessEvent:
        rng = self.rng
        self.n += 1
        u = rng.random()
        action = "access"
        if u < UNMATCHED:
            method, route, status, ms = "GET", None, 404, rng.lognormvariate(math.log(1.5), 0.4)
            outcome = "failure"
        else:
            i = min(bisect_left(self.cum, rng.random()), len(ENDPOINTS) - 1)
            method, route, _, median, sigma = ENDPOINTS[i]
            ms = rng.lognormvariate(math.log(median), sigma)
            if rng.random() < ODD_METHOD:
                method = "PROPFIND"
            v = rng.random()
            if v < 0.93:
                status, outcome = (201 if method == "POST" else 200), "success"
            elif v < 0.97:
                status, outcome = rng.choice((400, 404, 409, 422)), "failure"
            elif v < 0.99:
                status, outcome, action = 403, "denied", "denied"
            else:
                status, outcome = 500, "error"
            if route == "/login":
                action = "login" if outcome == "success" else "login_failed"
                if action == "login_failed":
                    status, outcome = 401, "failure"
        device = self.devices[self.n % 40]
        geo = self.geos[self.n % 30]
        performer = self.performers[self.n % 30]
        row = (
            f"{ts:013x}{self.prefix}{self.n:013x}", ts, action, method, "/x", route, status,
            max(1, int(ms * 1000)), outcome, "bench", f"r{self.n}", "10.1.2.3", True,
            "10.0.0.1", "", "https", "app.example.com", "bench", device.key, geo.key,
            None if performer is None else performer.id,
            None if performer is None else _performer_key(performer), None, None, None,
        )  # fmt: skip
        return AccessEvent(row, device, geo, performer)


_PKEYS: dict[str, str] = {}


def _performer_key(p: Performer) -> str:
    from leza_middleware.events import performer_key

    key = _PKEYS.get(p.id)
    if key is None:
        key = _PKEYS[p.id] = performer_key(p)
    return key


def stream(n: int, days: float, end: int, seed: int = 7) -> Iterator[AccessEvent]:
    """``n`` events evenly over ``days`` days up to ``end``, jittered, in time order."""
    mix = Mix(seed)
    span = int(days * DAY)
    step = span / n
    start = end - span
    jitter = random.Random(seed + 1)
    for i in range(n):
        yield mix.event(start + int(i * step + jitter.random() * step))


def fill(storage: SQLStorage, n: int, days: float, end: int) -> float:
    storage.setup()
    batch: list[AccessEvent] = []
    t0 = time.perf_counter()
    done = 0
    for e in stream(n, days, end):
        batch.append(e)
        if len(batch) == 10_000:
            storage.write(batch)
            done += len(batch)
            batch = []
            if done % 1_000_000 == 0:
                rate = done / (time.perf_counter() - t0)
                print(f"  {done:>11,} events written ({rate:,.0f}/s)", flush=True)
    if batch:
        storage.write(batch)
    return time.perf_counter() - t0


def check(storage: SQLStorage, end: int, days: float) -> None:
    with storage.engine.connect() as conn:
        raw = conn.execute(text("SELECT COUNT(*) FROM leza_access")).scalar()
        minutes = conn.execute(text("SELECT COUNT(*) FROM leza_traffic_minute")).scalar()
        hours = conn.execute(text("SELECT COUNT(*) FROM leza_traffic_hour")).scalar()
    t = storage.traffic(end - int(days * DAY) - DAY, end, 86400)
    ok = "EXACT" if t.totals.requests == raw else "MISMATCH"
    print(f"raw rows {raw:,}; rollups count {t.totals.requests:,}: {ok}")
    print(f"rollup rows: {minutes:,} per minute, {hours:,} per hour; {len(t.endpoints)} endpoints")


def time_reads(storage: SQLStorage, end: int, runs: int) -> None:
    windows = [
        ("3 hours", 3 * HOUR),
        ("24 hours", DAY),
        ("4 days", 4 * DAY),
        ("7 days", 7 * DAY),
        ("30 days", 30 * DAY),
        ("all (31 days)", 31 * DAY),
    ]
    until = end - 17 * MINUTE - 23_456_789  # not on a bucket edge
    budgets = {"24 hours": 150.0, "30 days": 500.0}
    for name, span in windows:
        since = until - span
        bucket = bucket_seconds_for(since, until)
        storage.engine.dispose()  # the first run opens a connection, as a fresh process would
        times, cpu = [], []
        t = None
        for _ in range(runs):
            gc.collect()
            t0, c0 = time.perf_counter(), time.thread_time()
            t = storage.traffic(since, until, bucket)
            cpu.append((time.thread_time() - c0) * 1000)
            times.append((time.perf_counter() - t0) * 1000)
        assert t is not None
        budget = budgets.get(name)
        note = f"  (budget <= {budget:.0f} ms)" if budget else ""
        print(
            f"traffic() {name:>13}, {bucket:>5} s buckets ({len(t.series):>3} points, "
            f"{len(t.endpoints)} endpoints, {t.totals.requests:>10,} requests): "
            f"median {statistics.median(times):6.1f} ms wall, "
            f"{statistics.median(cpu):6.1f} ms CPU{note}; wall runs "
            f"{' '.join(f'{x:.1f}' for x in times)}"
        )


# --------------------------------------------------------------------------- recorder cost


def _rollups_off(storage: SQLStorage) -> None:
    """The storage's rollup work replaced by no-ops (this benchmark only)."""
    storage._aggregator.increments = lambda rows: {}  # type: ignore[method-assign]
    storage._rollups.write = lambda cur, minutes: None  # type: ignore[method-assign]


def _timed(spent: list[int], fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        t0 = time.thread_time_ns()
        try:
            return fn(*args)
        finally:
            spent[0] += time.thread_time_ns() - t0

    return timed


def write_cost(
    events: list[AccessEvent], rollups: bool, tmp: Path, k: int, *, index: bool = True
) -> tuple[float, float]:
    """CPU µs per event of the whole write, and of its rollup parts alone (the
    aggregation and the upserts, timed inside the write). ``index=False``: without
    ``ix_leza_access_route_ts`` (the ``endpoint`` filter's index) either."""
    path = Path(tempfile.mkdtemp(dir=tmp)) / f"cost-{k}-{int(rollups)}-{int(index)}.db"
    storage = SQLStorage(f"sqlite:///{path}")
    storage.setup()
    if not index:
        with storage.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_leza_access_route_ts"))
    spent = [0]
    if rollups:
        storage._aggregator.increments = _timed(spent, storage._aggregator.increments)  # type: ignore[method-assign]
        storage._rollups.write = _timed(spent, storage._rollups.write)  # type: ignore[method-assign]
    else:
        _rollups_off(storage)
    batches = [events[i : i + 512] for i in range(0, len(events), 512)]
    storage.write(batches[0])  # connection and statement caches warm
    spent[0] = 0
    n = len(events) - len(batches[0])
    gc.collect()
    gc.disable()
    t0 = time.thread_time_ns()  # CPU time: what the recorder thread takes from the app
    for b in batches[1:]:
        storage.write(b)
    elapsed = time.thread_time_ns() - t0
    gc.enable()
    storage.close()
    return elapsed / n / 1000, spent[0] / n / 1000


def recorder_cost(tmp: Path, n: int = 100_000, rounds: int = 5) -> None:
    now = time.time_ns() // 1000
    one = Mix(3)
    hello = []
    for i in range(n):  # a hello-world: one endpoint, 0.1 ms, 5,000 requests/s
        e = one.event(now - n * 200 + i * 200)
        row = (*e.row[:3], "GET", "/", "/", 200, 100, "success", *e.row[9:])
        hello.append(AccessEvent(row, e.device, e.geo, e.performer))
    mix = list(stream(n, n * 200 / DAY, now, seed=11))  # the mix at 5,000 requests/s
    for name, events in (("one endpoint", hello), ("24-endpoint mix", mix)):
        with_r: list[float] = []
        without: list[float] = []
        bare: list[float] = []
        inside: list[float] = []
        for k in range(rounds):
            bare.append(write_cost(events, False, tmp, k, index=False)[0])
            without.append(write_cost(events, False, tmp, k)[0])
            whole, part = write_cost(events, True, tmp, k)
            with_r.append(whole)
            inside.append(part)
        w, wo, b = statistics.median(with_r), statistics.median(without), statistics.median(bare)
        print(
            f"recorder write, {name}: neither route index nor rollups {b:.2f} µs/event; "
            f"index, no rollups {wo:.2f}; both {w:.2f}: index {wo - b:+.2f}, rollups "
            f"{w - wo:+.2f} µs/event; rollup work timed inside the write "
            f"{statistics.median(inside):.2f} µs/event (budget <= 1 µs)\n"
            f"  rounds neither {' '.join(f'{x:.2f}' for x in bare)}; "
            f"index {' '.join(f'{x:.2f}' for x in without)}; "
            f"both {' '.join(f'{x:.2f}' for x in with_r)}; "
            f"inside {' '.join(f'{x:.2f}' for x in inside)}"
        )
    from leza_middleware.storage.rollups import Aggregator

    agg = Aggregator()
    for name, events in (("one endpoint", hello), ("24-endpoint mix", mix)):
        rows = [e.row for e in events]
        best = math.inf
        for _ in range(rounds):
            t0 = time.thread_time_ns()
            for i in range(0, len(rows), 512):
                agg.increments(rows[i : i + 512])
            best = min(best, (time.thread_time_ns() - t0) / len(rows) / 1000)
        print(f"  of which the per-batch aggregation in Python, {name}: {best:.2f} µs/event (best)")


# --------------------------------------------------------------------------- PostgreSQL


def postgres_schema(url: str) -> tuple[str, Callable[[], None]]:
    admin = make_url(url)
    schema = f"leza_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()

    scoped = admin.update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False), drop


def run_on(url: str, n: int, days: float, runs: int, *, skip_fill: bool) -> int:
    storage = SQLStorage(url)
    try:
        end = time.time_ns() // 1000
        if skip_fill:
            with storage.engine.connect() as conn:
                end = int(conn.execute(text("SELECT MAX(ts) FROM leza_access")).scalar() or end)
        else:
            print(f"filling {storage.describe()} with {n:,} events over {days:g} days …")
            seconds = fill(storage, n, days, end)
            print(f"filled in {seconds:.0f} s ({n / seconds:,.0f} events/s)")
        # The recorder sums each past hour's minutes a minute after it ends; a
        # fill this fast leaves them all to sum at once.
        t0 = time.perf_counter()
        hours = storage.settle_traffic(end)
        print(f"settle_traffic(): {hours} hours summed in {time.perf_counter() - t0:.1f} s")
        check(storage, end, days)
        if url.startswith("sqlite"):
            path = make_url(url).database or ""
            size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
            print(f"database size {size / 1e9:.2f} GB")
        time_reads(storage, end, runs)
    finally:
        storage.close()
    return end


def time_backfill(url: str, end: int, days: float) -> None:
    """Migration 0004 on a database of this size: the rollups dropped, the schema
    set back to 0003, then ``migrate()`` (the fill from the stored events)."""
    from leza_middleware.storage.migrate import migrate

    storage = SQLStorage(url)
    try:
        with storage.engine.begin() as conn:
            for table in ("leza_traffic_minute", "leza_traffic_hour", "leza_traffic_mark"):
                conn.execute(text(f"DROP TABLE {table}"))
            conn.execute(text("DROP INDEX ix_leza_access_route_ts"))
            conn.execute(text("UPDATE leza_alembic_version SET version_num = '0003'"))
    finally:
        storage.close()
    t0 = time.perf_counter()
    migrate(url)
    seconds = time.perf_counter() - t0
    print(f"migration 0003 -> 0004 (rollups filled from the stored events, route index): "
          f"{seconds:.0f} s")  # fmt: skip
    storage = SQLStorage(url)
    try:
        check(storage, end, days)
    finally:
        storage.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=10_000_000, help="access events to store (10M)")
    p.add_argument("--days", type=float, default=31, help="days they span (31)")
    p.add_argument("--db", help="SQLite file to fill (kept); default: a temporary one")
    p.add_argument("--skip-fill", action="store_true", help="--db is filled already")
    p.add_argument("--runs", type=int, default=7, help="runs of each read (7)")
    p.add_argument("--postgres", default=os.environ.get("LEZA_TEST_POSTGRES_URL"),
                   help="also run on this PostgreSQL (a throw-away schema)")  # fmt: skip
    p.add_argument("--pg-n", type=int, default=1_000_000, help="events on PostgreSQL (1M)")
    p.add_argument("--no-cost", action="store_true", help="skip the recorder cost part")
    p.add_argument(
        "--backfill", action="store_true",
        help="then time migration 0004 on the SQLite file (rebuilds its rollups)",
    )  # fmt: skip
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if not args.no_cost:
            recorder_cost(tmp)
        db = args.db or str(tmp / "state.db")
        if args.skip_fill and not os.path.exists(db):
            p.error(f"--skip-fill: {db} does not exist")
        if not args.skip_fill and os.path.exists(db):
            p.error(f"{db} exists: remove it, or pass --skip-fill to time the reads only")
        end = run_on(f"sqlite:///{db}", args.n, args.days, args.runs, skip_fill=args.skip_fill)
        if args.backfill:
            time_backfill(f"sqlite:///{db}", end, args.days)
        if args.postgres:
            url, drop = postgres_schema(args.postgres)
            try:
                run_on(url, args.pg_n, args.days, args.runs, skip_fill=False)
            finally:
                drop()


if __name__ == "__main__":
    main()
