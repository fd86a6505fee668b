"""Traffic rollups (storage/rollups.py, storage/sql_rollups.py) and the numbers
``storage.traffic()`` reads from them (state/), on a SQLite file and on PostgreSQL.

The contract is exactness: what ``traffic()`` says equals a count over the raw
access rows that were written, each event id once however often written.

* real traffic through a real Starlette app (404 scans, 500s, 403s, a refused
  revoked session, logins, failed logins, a method outside the usual ones, a
  deliberately slow endpoint): totals, outcomes, logins and per-endpoint counts
  equal a count over the raw rows (and a SQL ``COUNT(*)``), the per-minute series
  equals the raw rows per minute, the slow endpoint's p95 is within one
  histogram bucket of the true p95;
* a batch written twice, a batch half stored already, a spill file replayed
  (the recorder's real spill and replay, storage locked by another connection
  and released) and the same file replayed again: each event counted once;
* purging raw access events keeps the rollups; rollup retention removes old
  hours only; four gunicorn workers: see tests/test_multiworker.py;
* the 0004 migration backfills rollups from events already stored: the same
  numbers as the write path gives for the same events (labels, outcomes and
  histogram buckets at their edges), across days with gaps;
* labels bound the rollups' size whatever clients send; the ``endpoint`` filter
  on every backend; the window and bucket rules; a backend without rollups
  says so before it is asked.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sqlite3
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware
from leza_middleware.cli import main as cli
from leza_middleware.errors import LezaError
from leza_middleware.events import AccessEvent
from leza_middleware.ids import new_event_id
from leza_middleware.privacy import effective_retention
from leza_middleware.state import (
    LATENCY_BOUNDS_MS,
    MAX_BUCKETS,
    EndpointFilter,
    Traffic,
    TrafficCounts,
    TrafficUnsupported,
    bucket_seconds_for,
    parse_endpoint,
)
from leza_middleware.state.labels import ROUTE_LABEL_MAX, route_label
from leza_middleware.storage import (
    JSONLStorage,
    MemoryStorage,
    Page,
    QueryFilter,
    SQLStorage,
    Storage,
)
from leza_middleware.storage.migrate import HEAD, migrate
from leza_middleware.storage.models import access_table
from leza_middleware.storage.sql_rollups import SETTLE_GRACE

MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
KNOWN = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "WS"}
OUTCOMES = ("success", "client_errors", "server_errors", "denied")


# --------------------------------------------------------------------------- ground truth
# Written from the documented rules, independently of state/labels.py.


def truth_outcome(outcome: str, status: int) -> str:
    if outcome == "denied":
        return "denied"
    if outcome == "error" or status < 100 or status >= 500:
        return "server_errors"
    if outcome == "failure" or status >= 400:
        return "client_errors"
    return "success"


def truth_label(method: str, route: str | None) -> tuple[str, str]:
    m = method if method in KNOWN else "OTHER"
    if route is None:
        return m, "(unmatched)"
    return m, route if len(route) <= 256 else route[:255] + "…"


def truth(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], Counter[str]]:
    """Per (method, route) label: requests, each outcome, logins, failures, µs."""
    out: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in rows:
        c = out[truth_label(r[3], r[5])]
        c["requests"] += 1
        c[truth_outcome(r[8], r[6])] += 1
        c["logins"] += r[2] == "login"
        c["login_failures"] += r[2] == "login_failed"
        c["duration_us"] += r[7]
    return out


def counts_dict(c: TrafficCounts) -> Counter[str]:
    d: Counter[str] = Counter(
        requests=c.requests, success=c.success, client_errors=c.client_errors,
        server_errors=c.server_errors, denied=c.denied, logins=c.logins,
        login_failures=c.login_failures, duration_us=round(c.duration_ms_sum * 1000),
    )  # fmt: skip
    return +d  # zeros dropped, as in the truth


def by_endpoint(t: Traffic) -> dict[tuple[str, str], Counter[str]]:
    return {(e.method, e.route): counts_dict(e.counts) for e in t.endpoints}


def all_rows(storage: Storage) -> list[tuple[Any, ...]]:
    page = storage.query("access", QueryFilter(limit=1_000_000))
    return [e.row for e in page.events]


def assert_exact(storage: Storage, t: Traffic) -> list[tuple[Any, ...]]:
    """``t`` (a window holding every stored event) against the raw rows."""
    rows = all_rows(storage)
    expected = {k: +v for k, v in truth(rows).items()}
    assert by_endpoint(t) == expected
    assert counts_dict(t.totals) == +sum(expected.values(), Counter())
    assert t.totals.requests == len(rows) == sum(c.requests for _, c in t.series)
    assert sum(t.totals.histogram) == len(rows)
    assert [sum(e.counts.histogram) for e in t.endpoints] == [
        e.counts.requests for e in t.endpoints
    ]
    for e in t.endpoints:  # the newest request of each endpoint
        assert e.last_seen_us == max(
            r[1] for r in rows if truth_label(r[3], r[5]) == (e.method, e.route)
        )
    return rows


def now_us() -> int:
    return time.time_ns() // 1000


def event(ts: int, *, method: str = "GET", route: str | None = "/items/{item_id}",
          status: int = 200, outcome: str = "success", duration_us: int = 1_000,
          action: str = "access") -> AccessEvent:  # fmt: skip
    return AccessEvent.build(
        id=new_event_id(ts), ts=ts, action=action, method=method, endpoint="/x",
        route=route, status=status, duration_us=duration_us, outcome=outcome,
        reason="r", request_id=f"r{ts}", client_ip="81.2.69.142", ip_valid=True,
        peer_ip="81.2.69.142",
    )  # fmt: skip


def sql_count(url: str, where: Any = None) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stmt = select(func.count()).select_from(access_table)
            if where is not None:
                stmt = stmt.where(where)
            return int(conn.execute(stmt).scalar_one())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- a real app


def make_app(leza: Leza) -> Starlette:
    async def item(request: Request) -> Response:
        return PlainTextResponse("item")

    async def create(request: Request) -> Response:
        return PlainTextResponse("made", status_code=201)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(int(request.path_params["ms"]) / 1000)
        return PlainTextResponse("slow")

    async def boom(request: Request) -> Response:
        raise RuntimeError("the app broke")

    async def forbidden(request: Request) -> Response:
        return PlainTextResponse("no", status_code=403)

    async def login(request: Request) -> Response:
        if request.query_params.get("password") == "right":
            leza.sessions.login({"id": "u-1", "name": "Alice"})
            return PlainTextResponse("welcome")
        leza.sessions.login_failed(username="alice")
        return PlainTextResponse("wrong password")  # a login form answers 200

    routes = [
        Route("/items/{item_id:int}", item),
        Route("/items", create, methods=["POST"]),
        Route("/slow/{ms:int}", slow),
        Route("/boom", boom),
        Route("/forbidden", forbidden),
        Route("/login", login, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


SLOW_MS = [10 * k for k in range(1, 21)]  # 10 … 200 ms


def drive(client: TestClient, leza: Leza) -> None:
    """Known traffic; every kind of outcome."""
    for i in range(30):
        assert client.get(f"/items/{i}").status_code == 200
    for _ in range(7):
        assert client.post("/items").status_code == 201
    for ms in SLOW_MS:
        assert client.get(f"/slow/{ms}").status_code == 200
    for i in range(25):  # a scan: every path different, none routed
        assert client.get(f"/wp-admin/{i}/x.php?id={i}").status_code == 404
    for _ in range(4):
        assert client.get("/boom").status_code == 500
    for _ in range(3):
        assert client.get("/forbidden").status_code == 403
    assert client.request("PROPFIND", "/items/3").status_code in (404, 405)
    for _ in range(2):
        assert client.post("/login?password=wrong").status_code == 200
    assert client.post("/login?password=right").status_code == 200
    assert leza.flush(5)
    session = leza.sessions.active(performer_id="u-1")[0]["_id"]
    assert leza.sessions.revoke(session)
    assert client.get("/items/1").status_code == 401  # the revoked session, refused
    assert leza.flush(5)


@pytest.mark.both_databases
def test_traffic_through_a_real_app_equals_the_raw_rows(make_leza: Any, storage_url: str) -> None:
    leza = make_leza()
    start = now_us()
    with TestClient(make_app(leza), raise_server_exceptions=False) as client:
        drive(client, leza)
    end = now_us()
    storage = leza.storage

    t = storage.traffic(start, end, 60)
    rows = assert_exact(storage, t)
    assert sql_count(storage_url) == t.totals.requests == len(rows)
    endpoints = by_endpoint(t)
    assert endpoints["GET", "/items/{item_id}"]["requests"] == 30
    # 25 scanned paths, one row; and the refused request (refused before routing).
    assert endpoints["GET", "(unmatched)"]["client_errors"] == 25
    assert endpoints["GET", "(unmatched)"]["denied"] == 1
    assert endpoints["GET", "/boom"]["server_errors"] == 4
    assert endpoints["POST", "/login"]["login_failures"] == 2
    assert endpoints["POST", "/login"]["logins"] == 1
    assert endpoints["POST", "/login"]["client_errors"] == 2  # failed logins, answered 200
    assert t.totals.denied == 4  # 3 answered 403, 1 refused session
    assert ("OTHER", "/items/{item_id}") in endpoints or ("OTHER", "(unmatched)") in endpoints

    # The per-minute series is the raw rows per minute, zeros included.
    per_minute = Counter(r[1] - r[1] % MINUTE for r in rows)
    assert [(b, c.requests) for b, c in t.series] == [
        (b, per_minute.get(b, 0)) for b in range(start - start % MINUTE, end, MINUTE)
    ]
    # Hours and days (the hour table's part of the window) say the same.
    for bucket in (3600, 86400):
        wide = storage.traffic(start - 2 * DAY, end + DAY, bucket)
        assert wide.totals == t.totals
        assert by_endpoint(wide) == endpoints
        since, until, step = start - 2 * DAY, end + DAY, bucket * 10**6
        assert (wide.since_us, wide.until_us) == (
            since - since % MINUTE,
            until - until % MINUTE + MINUTE,
        )
        assert [b for b, _ in wide.series] == list(range(since - since % step, wide.until_us, step))

    # The slow endpoint's p95 is within one histogram bucket of the true p95.
    slow = next(e for e in t.endpoints if e.route == "/slow/{ms}")
    durations = sorted(r[7] / 1000 for r in rows if r[5] == "/slow/{ms}")
    true_p95 = durations[math.ceil(0.95 * len(durations)) - 1]
    read_p95 = slow.counts.percentile(0.95)
    assert read_p95 is not None
    assert (
        abs(bisect_left(LATENCY_BOUNDS_MS, read_p95) - bisect_left(LATENCY_BOUNDS_MS, true_p95))
        <= 1
    )
    assert 190 <= true_p95 < 400  # the sleeps are what the durations show
    assert slow.counts.latency_ms()["p50"] is not None
    assert slow.counts.mean_ms == pytest.approx(sum(durations) / len(durations))

    # The endpoint filter lists exactly the requests of an endpoint row.
    for e in t.endpoints:
        listed = leza.query.access(endpoint=e.endpoint, limit=1000)
        assert len(listed) == e.counts.requests, e.endpoint
        assert leza.query.count("access", endpoint=e.endpoint) == e.counts.requests


# --------------------------------------------------------------------------- written twice


@pytest.mark.both_databases
def test_a_batch_written_twice_or_half_stored_counts_once(storage_url: str) -> None:
    storage = SQLStorage(storage_url)
    try:
        base = now_us() - 10 * MINUTE
        batch = [event(base + i * 1000, status=200 if i % 3 else 500,
                       outcome="success" if i % 3 else "error") for i in range(300)]  # fmt: skip
        storage.write(batch)
        storage.write(batch)  # a retried batch
        more = [event(base + MINUTE + i, route="/other") for i in range(100)]
        storage.write(batch[:150] + more)  # half stored already
        storage.write(more[:10] + more[:10])  # an id repeated inside one batch
        t = storage.traffic(base, base + 2 * MINUTE, 60)
        assert t.totals.requests == 400 == sql_count(storage_url)
        assert_exact(storage, t)
        assert by_endpoint(t)["GET", "/other"]["requests"] == 100
    finally:
        storage.close()


def _sums_by_hour(url: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """Every column of the minute table summed by hour and endpoint, and the hour table."""
    from leza_middleware.storage.models import TRAFFIC_COLUMNS

    values = TRAFFIC_COLUMNS[3:]
    sums = ", ".join(f"MAX({c})" if c == "last_seen" else f"SUM({c})" for c in values)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            minutes = conn.exec_driver_sql(
                f"SELECT (ts / {HOUR}) * {HOUR}, method, route, {sums} FROM leza_traffic_minute "
                "GROUP BY 1, 2, 3"
            ).all()
            hours = conn.exec_driver_sql(
                f"SELECT ts, method, route, {', '.join(values)} FROM leza_traffic_hour"
            ).all()
    finally:
        engine.dispose()

    def keyed(rows: Any) -> dict[Any, Any]:
        return {tuple(r[:3]): tuple(int(x) for x in r[3:]) for r in rows}

    return keyed(minutes), keyed(hours)


@pytest.mark.both_databases
def test_hours_summed_while_late_batches_land_lose_nothing(storage_url: str) -> None:
    """Writers add to minutes of past hours while the hours are being summed and
    the mark moves hour by hour: every minute reaches its hour row exactly once."""
    import random
    import threading

    now = now_us()
    base = now - now % HOUR - 48 * HOUR
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        storage = SQLStorage(storage_url)
        try:
            for _ in range(30):
                batch = [
                    event(
                        base + rng.randrange(48 * HOUR),
                        route=f"/r{rng.randrange(3)}",
                        duration_us=rng.randrange(1, 3_000_000),
                    )
                    for _ in range(40)
                ]
                storage.write(batch)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            storage.close()

    def settler() -> None:
        storage = SQLStorage(storage_url)
        try:
            for h in range(1, 49):
                storage.settle_traffic(base + h * HOUR + SETTLE_GRACE)
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            storage.close()

    made = SQLStorage(storage_url)
    made.setup()
    made.close()
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=settler))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    storage = SQLStorage(storage_url)
    try:
        storage.settle_traffic(now + HOUR)  # the hours the settler had not reached
        minutes, hours = _sums_by_hour(storage_url)
        assert hours == minutes
        assert sum(v[0] for v in hours.values()) == 3 * 30 * 40 == sql_count(storage_url)
        assert storage.settle_traffic(now + HOUR) == 0  # done: nothing moves
        t = storage.traffic(base, now, 3600)
        assert_exact(storage, t)
    finally:
        storage.close()


def _locked_url(storage_url: str) -> str:
    """PostgreSQL: the writer gives up waiting for a table lock after 200 ms."""
    url = make_url(storage_url)
    options = url.query.get("options", "")
    assert isinstance(options, str)
    return url.update_query_dict({"options": f"{options} -c lock_timeout=200"}).render_as_string(
        hide_password=False
    )


@contextmanager
def storage_locked(storage_url: str) -> Iterator[None]:
    """Another connection holds the access table (SQLite: the database) locked."""
    if storage_url.startswith("sqlite"):
        con = sqlite3.connect(make_url(storage_url).database or "", isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            con.execute("ROLLBACK")
            con.close()
        return
    engine = create_engine(storage_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE leza_access IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()
    finally:
        engine.dispose()


@pytest.mark.both_databases
def test_spilled_and_replayed_batches_count_once(
    make_leza: Any, storage_url: str, tmp_path: Path
) -> None:
    """The recorder's real path: storage refuses writes (locked by another
    connection), batches go to the spill file; once it is released they are
    replayed. A copy of that file replayed as well adds nothing."""
    spill = tmp_path / "spill"
    if storage_url.startswith("sqlite"):
        target: Any = SQLStorage(storage_url, busy_timeout_ms=100)
    else:
        target = _locked_url(storage_url)
    leza = make_leza(storage=target, spill_dir=str(spill), max_retries=1, sessions=False,
                     advisories=False)  # fmt: skip
    start = now_us()
    with TestClient(make_app(leza), raise_server_exceptions=False) as client:
        for i in range(5):
            client.get(f"/items/{i}")
        assert leza.flush(5)
        with storage_locked(storage_url):
            for i in range(40):
                client.get(f"/items/{i}" if i % 4 else "/boom")
            assert wait_for(lambda: leza.stats()["spilled"] == 40, timeout=20), leza.stats()
            files = sorted(spill.glob("spill-*.jsonl"))
            assert files
            for n, f in enumerate(files):  # the same events, to be replayed again
                shutil.copy(f, spill / f"spill-9{n:018d}-copy.jsonl")
        assert wait_for(
            lambda: not list(spill.glob("spill-*.jsonl")) and leza.stats()["pending"] == 0,
            timeout=30,
        ), leza.stats()
    stats = leza.stats()
    assert stats["replayed"] == 80  # both files went through storage.write
    storage = leza.storage
    t = storage.traffic(start, now_us(), 60)
    assert t.totals.requests == 45 == sql_count(storage_url)
    assert t.totals.server_errors == 10
    assert_exact(storage, t)


# --------------------------------------------------------------------------- purges


@pytest.mark.both_databases
def test_purging_raw_events_keeps_the_rollups_and_rollup_retention_purges_old_hours(
    make_leza: Any, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = now_us()
    old, older = now - 30 * DAY, now - 500 * DAY
    leza = make_leza(retention={"access": "7d"}, sessions=False, advisories=False)
    storage = leza.storage
    storage.setup()
    storage.write(
        [event(old + i * 1000, duration_us=5_000 + i) for i in range(500)]
        + [event(older + i, route="/ancient") for i in range(20)]
        + [event(now - i, route="/new", status=404, outcome="failure") for i in range(7)]
    )
    assert storage.settle_traffic() > 0  # their hours summed (the recorder does it each minute)
    before = storage.traffic(old - HOUR, old + HOUR, 60)
    assert before.totals.requests == 500
    ancient = storage.traffic(older - HOUR, older + HOUR, 3600)
    assert ancient.totals.requests == 20

    # Retention of raw access events (7 days here): the rollups stay.
    assert leza.privacy.retention == {"access": 7 * 86400, "traffic": 400 * 86400}
    purged = leza.privacy.run_retention()
    assert purged["access"] == 520
    assert sql_count(storage_url) == 7
    assert storage.traffic(old - HOUR, old + HOUR, 60) == before
    # Rollup retention (400 days by default): only the hours older than that.
    assert purged["traffic"] == 2  # /ancient's minute and hour rows
    assert storage.traffic(older - HOUR, older + HOUR, 3600).totals.requests == 0
    assert storage.traffic(now - HOUR, now, 60).totals.client_errors == 7

    # `leza purge` does the same from the command line.
    storage.write([event(old + i * 1000 + 1, route="/cli") for i in range(50)])
    assert storage.traffic(old - HOUR, old + HOUR, 60).totals.requests == 550
    common = ["--storage", storage_url, "--yes"]
    assert cli(["purge", "--kind", "access", "--older-than", "1d", *common]) == 0
    assert sql_count(storage_url) == 7
    assert storage.traffic(old - HOUR, old + HOUR, 60).totals.requests == 550
    assert cli(["purge", "--kind", "traffic", "--older-than", "20d", *common]) == 0
    assert "traffic rollup rows" in capsys.readouterr().out
    assert storage.traffic(old - HOUR, old + HOUR, 60).totals.requests == 0
    assert storage.traffic(now - HOUR, now, 60).totals.requests == 7


def test_traffic_retention_settings() -> None:
    assert effective_retention((), True) == {"traffic": 400 * 86400}
    assert effective_retention((("traffic", 0),), True) == {}  # "off": kept forever
    assert effective_retention((("access", 60),), False) == {"access": 60}
    leza = Leza(storage="memory://", geoip_db=False, retention={"traffic": "off"})
    try:
        assert "traffic" not in leza.privacy.retention
    finally:
        leza.shutdown(2)
    with pytest.raises(LezaError, match=r"retention\['traffic'\]: invalid duration"):
        Leza(storage="memory://", geoip_db=False, retention={"traffic": "forever"})


# --------------------------------------------------------------------------- migration


def tricky_events(base: int) -> list[AccessEvent]:
    """Events at the edges of every label, outcome and bucket rule, over 5 days
    with a day of nothing in between (the backfill works a day at a time)."""
    long_route = "/é" * 200  # 400 characters, 2 bytes each in UTF-8
    out: list[AccessEvent] = []
    edges = [0, 250, 251, 400, 999, 1_000, 1_001, 59_999_999, 60_000_000, 60_000_001, 10**9]
    for day in (0, 1, 3, 4):
        ts = base + day * DAY
        for i, d in enumerate(edges):
            out.append(event(ts + i * 7 * MINUTE + i, duration_us=d))
        out += [
            event(ts + 1, route=None, status=404, outcome="failure"),
            event(ts + 2, route=long_route),
            event(ts + 3, route=long_route + "x"),  # the same label
            event(ts + 4, method="get"),  # not a method of the set: OTHER
            event(ts + 5, method="PROPFIND", route=None, status=405, outcome="failure"),
            event(ts + 6, status=0, outcome="success"),  # crashed: a server error
            event(ts + 7, status=503, outcome="error"),
            event(ts + 8, status=200, outcome="error"),  # broken off after its 200
            event(ts + 9, status=401, outcome="denied", action="denied"),
            event(ts + 10, status=403, outcome="denied"),
            event(ts + 11, status=404, outcome="success"),  # not from the enricher
            event(ts + 12, method="POST", route="/login", action="login"),
            event(ts + 13, method="POST", route="/login", outcome="failure", action="login_failed"),
            event(ts + HOUR + 59 * MINUTE + 59_999_999, route="/edge"),  # an hour's last µs
            event(ts + 2 * HOUR, route="/edge"),
        ]
    return out


@pytest.mark.both_databases
def test_migration_0004_backfills_the_rollups_of_stored_events(storage_url: str) -> None:
    base = (now_us() // DAY - 10) * DAY + 5 * HOUR + 17 * MINUTE + 3
    events = tricky_events(base)
    assert migrate(storage_url, revision="0003").after == "0003"
    engine = create_engine(storage_url)
    try:
        with engine.begin() as conn:  # as the previous version stored them: no rollups
            conn.execute(insert(access_table), [dict(zip(access_table.c.keys(), e.row, strict=True))
                                                for e in events])  # fmt: skip
    finally:
        engine.dispose()
    assert migrate(storage_url).after == HEAD  # through 0004 (and the revisions after it)

    storage = SQLStorage(storage_url)
    written = MemoryStorage()  # the write path's numbers for the same events
    written.write(events)
    try:
        windows = [(base - HOUR, base + 5 * DAY, bucket) for bucket in (3600, 86400)]
        windows += [(base, base + 3 * HOUR, 60), (base + 7 * MINUTE, base + 2 * DAY + 3, 3600)]
        for since, until, bucket in windows:
            assert storage.traffic(since, until, bucket) == written.traffic(since, until, bucket)
        t = storage.traffic(base - HOUR, base + 5 * DAY, 86400)
        assert_exact(storage, t)
        assert t.totals.requests == len(events)
        assert [c.requests for _, c in t.series if c.requests] == [len(events) // 4] * 4
        long_label = route_label("/é" * 200)
        assert len(long_label) == ROUTE_LABEL_MAX
        assert by_endpoint(t)["GET", long_label]["requests"] == 8
        # Each bucket holds the durations over the previous bound up to its own.
        histogram = dict(zip(LATENCY_BOUNDS_MS, t.totals.histogram, strict=True))
        lower = 0.0
        for bound, n in histogram.items():
            in_bucket = [e for e in events if (lower < e.duration_us / 1000 or lower == 0)
                         and e.duration_us / 1000 <= bound]  # fmt: skip
            assert n == len(in_bucket), bound
            lower = bound
        assert histogram[0.25] == 8  # 0 and 250 µs, each day
        assert histogram[0.4] == 8  # 251 and 400 µs
        assert histogram[float("inf")] == 8  # over 60 s: 60,000,001 µs and 1,000 s
        # New writes add to the backfilled numbers.
        storage.write([event(base + 3, route="/after")])
        assert (
            storage.traffic(base, base, 60).totals.requests
            == written.traffic(base, base, 60).totals.requests + 1
        )
    finally:
        storage.close()


def test_traffic_on_a_database_not_migrated_yet_says_what_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, revision="0003")
    storage = SQLStorage(url)
    try:
        with pytest.raises(LezaError, match=r"at revision 0003; .*run `leza migrate"):
            storage.traffic(0, MINUTE, 60)
    finally:
        storage.close()


# --------------------------------------------------------------------------- labels, filter


def test_clients_cannot_grow_the_rollups(tmp_path: Path) -> None:
    """A scan of random paths with made-up methods: one rollup row per minute
    for all of it, not one per path or method."""
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    leza = Leza(storage=url, geoip_db=False, spill_dir=str(tmp_path / "spill"),
                sessions=False, advisories=False)  # fmt: skip
    try:
        start = now_us()
        with TestClient(make_app(leza), raise_server_exceptions=False) as client:
            for i in range(300):
                method = ["GET", "POST", f"X{i}", "PROPFIND", "M" * 300][i % 5]
                client.request(method, f"/{i}/" + "%F0%9F%92%A9" * (i % 7) + "?a=" + str(i))
        assert leza.flush(5)
        t = leza.storage.traffic(start, now_us(), 60)
        assert {(e.method, e.route) for e in t.endpoints} == {
            ("GET", "(unmatched)"),
            ("POST", "(unmatched)"),
            ("OTHER", "(unmatched)"),
        }
        assert t.totals.requests == 300 == t.totals.client_errors
        engine = create_engine(url)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT COUNT(*) FROM leza_traffic_minute").scalar()
        engine.dispose()
        assert rows is not None
        assert rows <= 3 * len([c for _, c in t.series if c.requests])
        assert len(leza.query.access(endpoint="OTHER (unmatched)", limit=1000)) == 180
        assert len(leza.query.access(endpoint="PROPFIND (unmatched)", limit=1000)) == 60
    finally:
        leza.shutdown(2)


def test_parse_endpoint() -> None:
    assert parse_endpoint("GET /items/{item_id}") == EndpointFilter("GET", "/items/{item_id}")
    assert parse_endpoint("  /items/{item_id} ") == EndpointFilter(None, "/items/{item_id}")
    assert parse_endpoint("(unmatched)") == EndpointFilter(None, "(unmatched)")
    assert parse_endpoint("OTHER (unmatched)").matches("PROPFIND", None)
    assert not parse_endpoint("OTHER (unmatched)").matches("GET", None)
    assert parse_endpoint("PROPFIND /x").matches("PROPFIND", "/x")
    assert parse_endpoint("^api/(?P<pk>[0-9]+)$") == EndpointFilter(None, "^api/(?P<pk>[0-9]+)$")
    assert not parse_endpoint("/x").matches("GET", None)
    long = "/a" * 300
    label = route_label(long)
    assert parse_endpoint(f"GET {label}").matches("GET", long)
    assert parse_endpoint(f"GET {label}").matches("GET", long + "/more")
    assert not parse_endpoint(f"GET {label}").matches("GET", long[:100])
    for bad in ("", "   ", "GET", "GET   ", "x" * 5000):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoint(bad)
    with pytest.raises(ValueError, match="endpoint"):
        QueryFilter(endpoint="")


@pytest.fixture(params=["sqlite", "memory", "jsonl"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    storage: Storage
    if request.param == "sqlite":
        storage = SQLStorage(f"sqlite:///{tmp_path / 'f.db'}")
    elif request.param == "memory":
        storage = MemoryStorage()
    else:
        storage = JSONLStorage(tmp_path / "jsonl")
    storage.setup()
    yield storage
    storage.close()


def test_the_endpoint_filter_on_every_backend(any_storage: Storage) -> None:
    base = now_us() - HOUR
    long = "/a" * 300
    events = (
        [event(base + i, route="/items/{item_id}") for i in range(5)]
        + [event(base + 10 + i, method="POST", route="/items/{item_id}") for i in range(3)]
        + [event(base + 20 + i, route=None, status=404, outcome="failure") for i in range(4)]
        + [event(base + 30 + i, method="PROPFIND", route="/items/{item_id}") for i in range(2)]
        + [
            event(base + 40, route=long),
            event(base + 41, route=long + "/b"),
            event(base + 42, route=long[: ROUTE_LABEL_MAX - 1] + "…"),
        ]
        + [event(base + 50, route="/ITEMS/{item_id}")]  # case matters
    )
    any_storage.write(events)

    def ids(endpoint: str, **kw: Any) -> int:
        flt = QueryFilter(endpoint=endpoint, **{"limit": 1000, **kw})
        page: Page = any_storage.query("access", flt)
        assert all(isinstance(e, AccessEvent) for e in page.events)
        count = any_storage.count("access", flt)
        if flt.limit == 1000:
            assert count in (None, len(page.events))
        return len(page.events)

    assert ids("GET /items/{item_id}") == 5
    assert ids("/items/{item_id}") == 10
    assert ids("POST /items/{item_id}") == 3
    assert ids("OTHER /items/{item_id}") == 2
    assert ids("(unmatched)") == 4
    assert ids("GET (unmatched)") == 4
    assert ids("POST (unmatched)") == 0
    assert ids(f"GET {route_label(long)}") == 3  # the label stands for all three
    assert ids(f"GET {long}") == 1  # the whole template: itself
    assert ids("/nothing") == 0
    assert ids("/items/{item_id}", since=base + 10, until=base + 30) == 4  # inclusive
    assert ids("/items/{item_id}", action="access", limit=1) == 1  # newest first, one page
    assert any_storage.count("access", QueryFilter(endpoint="GET (unmatched)")) in (None, 4)
    with pytest.raises(ValueError, match="access events only"):
        any_storage.query("log", QueryFilter(endpoint="/x"))


# --------------------------------------------------------------------------- the read API


def test_windows_buckets_and_percentiles() -> None:
    storage = MemoryStorage()
    t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % DAY + 10 * HOUR  # 10:00 UTC
    storage.write([event(t0 + 30 * MINUTE + 5, duration_us=d) for d in (1_000, 2_000, 3_000)]
                  + [event(t0 + 2 * HOUR, duration_us=100_000)])  # fmt: skip
    # The window is the minutes [since, until] touches; the series every bucket.
    t = storage.traffic(t0 + 30 * MINUTE + 59_000_000, t0 + 30 * MINUTE + 59_000_000, 60)
    assert (t.since_us, t.until_us, t.bucket_seconds) == (t0 + 30 * MINUTE, t0 + 31 * MINUTE, 60)
    assert [(b, c.requests) for b, c in t.series] == [(t0 + 30 * MINUTE, 3)]
    t = storage.traffic(t0 + 29 * MINUTE, t0 + 2 * HOUR - 1, 3600)
    assert [(b - t0, c.requests) for b, c in t.series] == [(0, 3), (HOUR, 0)]
    assert t.totals.requests == 3
    t = storage.traffic(t0, t0 + 2 * HOUR, 3600)
    assert [c.requests for _, c in t.series] == [3, 0, 1]
    assert storage.traffic(t0 - 5 * DAY, t0 + 5 * DAY, 86400).totals.requests == 4
    empty = storage.traffic(t0 - 2 * DAY, t0 - DAY, 3600)
    assert empty.totals == TrafficCounts.ZERO
    assert not empty.endpoints
    assert all(c == TrafficCounts.ZERO for _, c in empty.series)
    assert len(empty.series) == 25
    assert empty.totals.percentile(0.95) is None
    assert empty.totals.mean_ms is None

    c = storage.traffic(t0, t0 + HOUR, 60).totals
    assert c.histogram[bisect_left(LATENCY_BOUNDS_MS, 1.0)] == 1  # 1 ms: the "<= 1 ms" bucket
    assert c.percentile(0) == 0.6
    assert c.percentile(1) == 4.0
    assert 1.5 < (c.percentile(0.5) or 0) <= 2.5
    assert c.duration_ms_sum == 6.0
    assert c.mean_ms == 2.0
    assert (c + c).requests == 6
    assert TrafficCounts.total([c, c, c]).histogram[5] == 3
    with pytest.raises(ValueError, match="fraction"):
        c.percentile(95)
    assert TrafficCounts(histogram=(0,) * 28 + (5,), requests=5).percentile(0.99) == 60_000.0

    assert bucket_seconds_for(0, 3 * HOUR) == 60
    assert bucket_seconds_for(0, 3 * HOUR + 1) == 3600
    assert bucket_seconds_for(0, 4 * DAY) == 3600
    assert bucket_seconds_for(0, 30 * DAY) == 86400
    for bad, match in (((t0 + 1, t0, 60), "before"), ((t0, t0, 90), "multiple of 60"),
                       ((t0, t0, 0), "multiple of 60"), ((t0, t0 + 30 * DAY, 60), "buckets"),
                       ((float(t0), t0, 60), "int")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            storage.traffic(*bad)  # type: ignore[arg-type]
    assert len(storage.traffic(t0, t0 + (MAX_BUCKETS - 1) * MINUTE, 60).series) == MAX_BUCKETS


def test_a_backend_without_rollups_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Custom(Storage):
        def write(self, events: Any) -> None:
            pass

        def query(self, kind: str, flt: QueryFilter) -> Page:
            return Page([], None)

    for storage in (Custom(), JSONLStorage(tmp_path / "j")):
        assert storage.keeps_rollups is False
        with pytest.raises(TrafficUnsupported, match="keeps no traffic rollups"):
            storage.traffic(0, 1, 60)
        assert isinstance(TrafficUnsupported("x"), NotImplementedError)
        leza = Leza(storage=storage, geoip_db=False, spill_dir=str(tmp_path / "s"))
        try:
            assert "traffic" not in leza.privacy.retention  # nothing to purge there
            with pytest.raises(TrafficUnsupported):
                leza.query.traffic()
        finally:
            leza.shutdown(2)
    assert SQLStorage(f"sqlite:///{tmp_path / 'x.db'}").keeps_rollups
    assert MemoryStorage().keeps_rollups
    # `leza purge --kind traffic` says so too, rather than deleting nothing quietly.
    jsonl = f"jsonl://{tmp_path / 'j'}"
    assert cli(["purge", "--kind", "traffic", "--older-than", "1d", "--storage", jsonl,
                "--yes"]) == 2  # fmt: skip
    assert "keeps no traffic rollups" in capsys.readouterr().err


def test_query_traffic_defaults_to_the_last_24_hours() -> None:
    leza = Leza(storage="memory://", geoip_db=False)
    try:
        now = now_us()
        leza.storage.write([event(now - 3 * HOUR), event(now - 30 * HOUR)])
        t = leza.query.traffic()
        assert t.bucket_seconds == 3600
        assert t.totals.requests == 1
        assert len(t.series) == 25  # 24 hours and the current one, partly
        two_days = leza.query.traffic(since=(now - 2 * DAY) / 1e6, bucket_seconds=86400)
        assert two_days.totals.requests == 2
        assert two_days.bucket_seconds == 86400
        with pytest.raises(ValueError, match="buckets"):
            leza.query.traffic(since="1970-01-01")
        with pytest.raises(ValueError, match="after"):
            leza.query.traffic(since="2030-01-02", until="2030-01-01")
    finally:
        leza.shutdown(2)
