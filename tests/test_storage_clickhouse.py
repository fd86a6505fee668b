"""The ClickHouse backend on real servers (``clickhouse_urls``: .ci/run's, else two
throwaway ones from the local binary, else skipped — failed under
``LEZA_REQUIRE_CLICKHOUSE=1``).

The shared access contract runs in test_storage.py; here: every field of the
three kinds it stores through hostile values, the same query set on SQLite and
ClickHouse page by page, replayed batches (duplicates physically in the table,
merges stopped) never shown or counted twice, purge across months, the URL's
configuration errors, the kinds it refuses, and the skip/require behaviour.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_storage import ALICE, BOB, BOT, CHROME, FRANKFURT, NOWHERE, ev

from leza_middleware.errors import LezaConfigError
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    CheckEvent,
    Device,
    Event,
    Geo,
    LogEvent,
    SessionEvent,
    ua_key,
)
from leza_middleware.performer import Organization, Performer
from leza_middleware.state.labels import ROUTE_LABEL_MAX
from leza_middleware.storage import Capability, QueryFilter, SQLStorage, Storage, open_storage
from leza_middleware.storage.base import REFUSED_ACTIONS
from leza_middleware.storage.clickhouse import ClickHouseStorage
from leza_middleware.storage.clickhouse_url import parse_clickhouse_url

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")


def merges(ch: ClickHouseStorage, table: str, on: bool) -> None:
    """Start or stop background merges of ``table`` on every server of ``ch``."""
    for shard in ch.shards():
        verb = "START" if on else "STOP"
        ch.execute(f"SYSTEM {verb} MERGES {ch.local(table)}", shard=shard)


MONTH_US = 31 * 86_400 * 1_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z

# ----------------------------------------------------------------------------- hostile values

WEIRD = (
    "Z̤͔ͅa͍̟l͖g͔o ‮evil‭ 👩🏽‍💻 "
    "\U0001d518\U0001d52b\U0001d526 \u200b\ufeff 中文 עברית \x00 NUL \x7f \u2028 end"
)
LONG = "x" * 70_000 + "😀" * 5_000 + "\x00"


def hostile_access() -> list[AccessEvent]:
    device = Device(key=ua_key(WEIRD), user_agent=WEIRD + LONG, browser_name="Br\x00wser 😀",
                    bot_name="", is_touch_capable=True, is_tablet=True)  # fmt: skip
    geo = Geo(key="2001:db8::/32", country_code="ZZ", city=WEIRD, latitude=-89.999999999,
              longitude=179.12345678901234, metro_code=2**31 - 1)  # fmt: skip
    performer = Performer(
        id="u-\x00-😀", name=WEIRD, email="a@b.c", organization_unit_labels=("", WEIRD),
        organizations=(Organization(id="o", name=LONG, labels=("\x00",)),),
    )  # fmt: skip
    return [
        ev(1, device=device, geo=geo, performer=performer, endpoint=f"/{LONG}?q={WEIRD}",
           route="/r/{x}\x00" + WEIRD, reason=LONG, request_id="req-\x00",
           client_ip="2001:db8:85a3::8a2e:370:7334", peer_ip="::1",
           chain=("[2001:db8::1]:4711", "unknown", "a,b", ""), scheme="wss", host=WEIRD,
           app="\x00app", machine_id=WEIRD, session_hash="s\x00", method="WS",
           headers={"x-weird": WEIRD, "x-long": LONG}, status=101, duration_us=2**62),
        ev(2, device=None, geo=None, performer=None, route=None, machine_id=None,
           session_hash=None, client_ip="not an ip \x00", ip_valid=False, ts=-1),
        ev(3, ts=0, endpoint="", reason="", request_id="", peer_ip="", host="", app=""),
    ]  # fmt: skip


def hostile_logs() -> list[Event]:
    return [
        LogEvent(id="L\x00", ts=T0, level=5, logger=WEIRD, message=LONG, exception=LONG,
                 request_id=WEIRD, performer_id="u-\x00", route="/\x00", origin=WEIRD,
                 app=WEIRD),
        LogEvent(id="L2", ts=T0 + 1, level=50, logger="", message=""),
        AdvisoryEvent(id="A\x00", ts=T0, rule="new_machine", severity="critical", message=LONG,
                      evidence=("e1", WEIRD, ""), performer_id=WEIRD, ip="::ffff:1.2.3.4",
                      details={"km": 16000.5, "nested": {"a": [1, None, WEIRD]}, WEIRD: LONG},
                      app=WEIRD, request_id="r\x00", session_id="s\x00"),
        AdvisoryEvent(id="A2", ts=T0 + 2, rule="burst", severity="info", message=""),
    ]  # fmt: skip


def test_every_field_of_every_kind_round_trips(ch_any: ClickHouseStorage) -> None:
    clickhouse_storage = ch_any
    access = hostile_access()
    others = hostile_logs()
    clickhouse_storage.write([*access, *others])
    got = clickhouse_storage.query("access", QueryFilter(limit=10))
    assert got.events == sorted(access, key=lambda e: (e.ts, e.id), reverse=True)
    assert [e.to_dict() for e in got.events] == [
        e.to_dict() for e in sorted(access, key=lambda e: (e.ts, e.id), reverse=True)
    ]
    for kind in ("log", "advisory"):
        mine = [e for e in others if e.kind == kind]
        page = clickhouse_storage.query(kind, QueryFilter(limit=10))
        assert page.events == sorted(mine, key=lambda e: (e.ts, e.id), reverse=True)
    # the filters find the hostile values exactly
    one = QueryFilter(request_id="req-\x00")
    assert [e.id for e in clickhouse_storage.query("access", one).events] == ["e000001"]
    by_perf = QueryFilter(performer_id="u-\x00-😀")
    assert [e.id for e in clickhouse_storage.query("access", by_perf).events] == ["e000001"]
    assert [e.id for e in clickhouse_storage.query("advisory", QueryFilter(
        session_id="s\x00")).events] == ["A\x00"]  # fmt: skip


# ------------------------------------------------------------------------- same answers as SQLite

CUT_ROUTE = "/v1/" + "😀" * 300  # longer than a route label: its label is cut
LONG_ROUTE_LABEL = CUT_ROUTE[: ROUTE_LABEL_MAX - 1] + "…"


def dataset(seed: int = 18) -> list[Event]:
    rng = random.Random(seed)
    routes = ["/api/items/{id}", "/login", None, CUT_ROUTE, CUT_ROUTE + "/more", "/v1/😀"]
    events: list[Event] = []
    for n in range(400):
        ts = T0 + rng.randrange(0, 3 * MONTH_US, 7_200_000_000)  # equal times are common
        events.append(ev(
            n, ts=ts, action=rng.choice(["access", "access", "denied", "login", "login_failed"]),
            performer=rng.choice([ALICE, BOB, None]), device=rng.choice([CHROME, BOT, None]),
            geo=rng.choice([FRANKFURT, NOWHERE, None]), route=rng.choice(routes),
            method=rng.choice(["GET", "POST", "WS", "PURGE"]),
            session_hash=rng.choice(["s-1", "s-2", None]), request_id=f"req-{n % 50}",
        ))  # fmt: skip
    for n in range(150):
        events.append(LogEvent(
            id=f"L{n:04d}", ts=T0 + rng.randrange(0, 3 * MONTH_US, 7_200_000_000),
            level=rng.choice([10, 20, 30, 40, 50]), logger="app", message=f"m{n}",
            request_id=rng.choice([f"req-{n % 50}", None]),
            performer_id=rng.choice(["u-1", "u-2", None]),
        ))  # fmt: skip
    for n in range(80):
        events.append(AdvisoryEvent(
            id=f"A{n:04d}", ts=T0 + rng.randrange(0, 3 * MONTH_US, 7_200_000_000),
            rule=rng.choice(["new_machine", "burst"]), severity="high", message=f"a{n}",
            performer_id=rng.choice(["u-1", None]), request_id=f"req-{n % 50}",
            session_id=rng.choice(["s-1", None]), details={"n": n},
        ))  # fmt: skip
    return events


FILTERS: list[dict[str, Any]] = [
    {},
    {"since": T0 + MONTH_US, "until": T0 + 2 * MONTH_US},
    {"since": T0 + MONTH_US, "ascending": True},
    {"action": "denied"},
    {"action": "error"},
    {"action": "burst"},
    {"actions": REFUSED_ACTIONS},
    {"actions": ()},
    {"performer_id": "u-1"},
    {"performer_id": "u-2", "until": T0 + MONTH_US},
    {"no_performer": True},
    {"request_id": "req-7"},
    {"session_id": "s-1"},
    {"ids": ("e000003", "L0004", "A0005", "e000399", "nope")},
    {"ids": ()},
    {"ascending": True},
]
ACCESS_ONLY: list[dict[str, Any]] = [
    {"endpoint": "GET /api/items/{id}"},
    {"endpoint": "/login"},
    {"endpoint": "(unmatched)"},
    {"endpoint": "POST (unmatched)"},
    {"endpoint": "OTHER /api/items/{id}"},
    {"endpoint": LONG_ROUTE_LABEL},
    {"endpoint": "WS " + LONG_ROUTE_LABEL, "since": T0 + MONTH_US},
    {"endpoint": "/v1/😀"},
]


def walk(
    storage: Storage, kind: str, flt: QueryFilter, most: int = 500
) -> list[tuple[list[str], Any]]:
    """The pages of ``flt`` (ids, next cursor) until the last, or ``most`` of them."""
    pages = []
    while True:
        page = storage.query(kind, flt)
        pages.append(([e.id for e in page.events], page.next_cursor))
        if page.next_cursor is None or len(pages) >= most:
            return pages
        flt = replace(flt, cursor=page.next_cursor)


def tail(storage: Storage, kind: str) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        got = storage.read_after(kind, after, limit=37)
        out += [e.id for e in got]
        if len(got) < 37:
            return out
        after = (got[-1].ts, got[-1].id)


@pytest.fixture
def sqlite_twin(tmp_path: Path) -> Iterator[SQLStorage]:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'twin.db'}")
    yield storage
    storage.close()


def raw_rows(storage: ClickHouseStorage, table: str) -> tuple[int, int]:
    """(rows in the table, distinct ids) over every server: duplicates not folded
    yet when they differ. Sharded, every server must hold some."""
    rows = ids = 0
    for shard in storage.shards():
        got = storage.execute(
            f"SELECT count(), uniqExact(id) FROM {storage.local(table)}", shard=shard
        )
        assert got[0][0] > 0, (table, shard)  # the events are spread over every shard
        rows, ids = rows + int(got[0][0]), ids + int(got[0][1])
    return rows, ids


def test_every_read_matches_sqlite_and_counts_a_replay_once(
    ch_any: ClickHouseStorage, sqlite_twin: SQLStorage
) -> None:
    ch = ch_any
    ch.setup()
    for table in ("leza_access", "leza_log", "leza_advisory"):  # keep the copies apart
        merges(ch, table, on=False)
    events = dataset()
    sqlite_twin.write(events)
    for start in range(0, len(events), 100):  # several batches, as the recorder writes them
        ch.write(events[start : start + 100])
    ch.write(events[::3])  # a replayed spill
    ch.write([*events[:40], *events[:40]])  # a batch holding its events twice
    for table in ("leza_access", "leza_log", "leza_advisory"):
        rows, distinct = raw_rows(ch, table)
        assert rows > distinct, table  # the copies are there: reads must fold them

    for kind in ("access", "log", "advisory"):
        for kw in FILTERS + (ACCESS_ONLY if kind == "access" else []):
            # pages of one (the first few), of 29 (to the end) and of all
            for limit, most in ((1, 4), (29, 500), (1000, 500)):
                flt = QueryFilter(limit=limit, **kw)
                got = walk(ch, kind, flt, most)
                assert got == walk(sqlite_twin, kind, flt, most), (kind, kw, limit)
            for cap in (None, 0, 5):
                flt = QueryFilter(**kw)
                assert ch.count(kind, flt, cap) == sqlite_twin.count(kind, flt, cap), (kind, kw)
        assert tail(ch, kind) == tail(sqlite_twin, kind)
    # a sanity check on the query set itself: it does select something
    assert ch.count("access", QueryFilter(endpoint=LONG_ROUTE_LABEL)) == sum(
        isinstance(e, AccessEvent) and (e.route or "").startswith(CUT_ROUTE) for e in events
    )
    assert ch.count("access", QueryFilter()) == 400

    # and the same once the server has merged the copies away
    for table in ("leza_access", "leza_log", "leza_advisory"):
        merges(ch, table, on=True)
        # OPTIMIZE returns without merging when a background merge holds the
        # parts (18.16 does not say so): ask again until the copies are gone.
        deadline = time.monotonic() + 60
        while True:
            for shard in ch.shards():
                ch.execute(f"OPTIMIZE TABLE {ch.local(table)} FINAL", shard=shard)
            rows, distinct = raw_rows(ch, table)
            if rows == distinct or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows == distinct, table
    flt = QueryFilter(limit=7, action="denied")
    assert walk(ch, "access", flt) == walk(sqlite_twin, "access", flt)
    assert ch.count("log", QueryFilter()) == 150


# ----------------------------------------------------------------------------- purge


def test_purge_drops_old_months_and_deletes_inside_one(ch_any: ClickHouseStorage) -> None:
    ch = ch_any
    jan, feb, mar = T0, T0 + MONTH_US, T0 + 2 * MONTH_US  # 2026-01-01, 02-01, 03-04
    batch = [ev(i, ts=(jan, feb, mar)[i % 3] + i) for i in range(30)]
    ch.write(batch)
    ch.write(batch[:12])  # replayed: still counted once
    logs = [LogEvent(id=f"L{i}", ts=jan + i, level=20, logger="a", message="m") for i in range(5)]
    ch.write(logs)
    months = lambda: sorted(  # noqa: E731
        m for (m,) in ch.execute(
            f"SELECT DISTINCT toYYYYMM(toDateTime(intDiv(ts, 1000000), 'UTC')) "
            f"FROM {ch.table('leza_access')}"
        )
    )  # fmt: skip
    assert months() == [202601, 202602, 202603]
    # Before the middle of February: January goes whole, February in part.
    cut = feb + 15
    assert ch.purge("access", cut) == 10 + 5  # January's ten, February's i < 15
    assert months() == [202602, 202603]
    left = ch.query("access", QueryFilter(limit=100)).events
    assert sorted(e.id for e in left) == sorted(e.id for e in batch if e.ts >= cut)
    assert ch.count("access", QueryFilter()) == 15
    assert ch.purge("access", cut) == 0
    assert ch.count("log", QueryFilter()) == 5  # another kind: untouched
    assert ch.purge("log", jan + 2) == 2
    assert [e.id for e in ch.query("log", QueryFilter()).events] == ["L4", "L3", "L2"]
    # a purged id can be written again
    ch.write([batch[0]])
    assert ch.count("access", QueryFilter(ids=(batch[0].id,))) == 1
    with pytest.raises(ValueError, match="no table for event kind 'session'"):
        ch.purge("session", cut)


# ------------------------------------------------------------------------- kinds and capabilities


def test_refuses_the_kinds_it_does_not_store(clickhouse_storage: ClickHouseStorage) -> None:
    ch = clickhouse_storage
    assert [k for k in ("access", "log", "advisory", "audit", "session", "check") if
            ch.stores(k)] == ["access", "log", "advisory"]  # fmt: skip
    audit = AuditEvent(id="X1", ts=T0, action="create", entity_type="order", entity_id="1")
    check = CheckEvent(id="C1", ts=T0, check="web", ok=True, state="up", previous="unknown")
    session = SessionEvent(id="S1", ts=T0, action="session_start", session_id="sid", app="a")
    for bad in (audit, check, session):
        with pytest.raises(ValueError, match=f"no table for event kind {bad.kind!r}"):
            ch.write([ev(1), bad])  # nothing of the batch is written
        with pytest.raises(ValueError, match="belong in a SQL storage"):
            ch.query(bad.kind, QueryFilter())
    assert ch.count("access", QueryFilter()) == 0
    for has in (Capability.COUNT, Capability.PURGE, Capability.ROLLUPS, Capability.ERASURE):
        assert ch.supports(has)
    for missing in (Capability.AUDIT_CHAIN, Capability.AUDIT_PURGE):
        assert not ch.supports(missing)
    with pytest.raises(ValueError, match="endpoint filter applies to access"):
        ch.query("log", QueryFilter(endpoint="/x"))


def test_a_fresh_instance_reads_what_another_wrote(clickhouse_storage: ClickHouseStorage) -> None:
    clickhouse_storage.write([ev(1), ev(2)])
    other = ClickHouseStorage(clickhouse_storage.url)
    try:
        other.write([ev(2), ev(3)])  # another process replaying a shared event
        assert [e.id for e in clickhouse_storage.query("access", QueryFilter()).events] == [
            "e000003", "e000002", "e000001"
        ]  # fmt: skip
    finally:
        other.close()


def test_a_dead_server_raises_and_the_storage_recovers(
    clickhouse_storage: ClickHouseStorage, clickhouse_urls: tuple[str, str]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dead = ClickHouseStorage(f"clickhouse://127.0.0.1:{port}/leza?connect_timeout=1")
    with pytest.raises(Exception, match=r"(?i)connection refused|network"):
        dead.write([ev(1)])
    dead.close()
    clickhouse_storage.write([ev(1)])
    assert clickhouse_storage.count("access", QueryFilter()) == 1


# ----------------------------------------------------------------------------- configuration


def test_open_storage_builds_it_without_connecting() -> None:
    storage = open_storage("clickhouse://leza:s3cr%40t@db.internal/leza?connect_timeout=2.5")
    assert isinstance(storage, ClickHouseStorage)
    url = storage.url
    assert (url.host, url.port, url.database, url.user, url.password) == (
        "db.internal", 9000, "leza", "leza", "s3cr@t"
    )  # fmt: skip
    assert url.connect_timeout == 2.5
    assert "s3cr" not in storage.describe()
    assert storage.describe() == "ClickHouseStorage(clickhouse://leza:***@db.internal:9000/leza)"
    v6 = parse_clickhouse_url("clickhouse://[::1]:9440/x_1")
    assert (v6.host, v6.port, v6.describe()) == ("::1", 9440, "clickhouse://[::1]:9440/x_1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("clickhouse://h:99999/leza", r"out of range"),
        ("clickhouse://h:port/leza", r"storage URL 'clickhouse://h:port/leza'.*port"),
        ("clickhouse://h:0/leza", r"port 0"),
        ("clickhouse://h:9000", r"names no database"),
        ("clickhouse://h:9000/", r"names no database"),
        ("clickhouse:///leza", r"names no host"),
        ("clickhouse://h/le-za", r"database 'le-za' must be letters"),
        ("clickhouse://h/leza;DROP", r"must be letters"),
        ("clickhouse://h/a/b", r"must be letters"),
        ("clickhouse://h/leza?shards=2", r"unknown query parameter 'shards'.*cluster"),
        ("clickhouse://h/leza?cluster=a-b", r"cluster 'a-b' must be letters"),
        ("clickhouse://h/leza?timeout=0", r"timeout must be a number of seconds"),
        ("clickhouse://h/leza?timeout=nan", r"timeout must be"),
        ("clickhouse://h/leza?timeout=1&timeout=2", r"given twice"),
        ("clickhouse://h/leza#x", r"fragment"),
        ("clickhouse://u:pw@h:bad/leza", r"'clickhouse://u:\*\*\*@h:bad/leza'"),
    ],
)
def test_url_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(LezaConfigError, match=message) as err:
        open_storage(spec)
    assert "clickhouse://host:9000/leza" in str(err.value)  # the expected form
    assert "pw@" not in str(err.value)


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Faked: the driver is installed in the test environment.
    monkeypatch.setitem(sys.modules, "clickhouse_driver", None)
    storage = open_storage("clickhouse://127.0.0.1/leza")  # configuring needs no driver
    with pytest.raises(LezaConfigError, match=r"leza-middleware\[clickhouse\]"):
        storage.write([ev(1)])


def test_importing_and_opening_it_loads_neither_driver_nor_sqlalchemy(tmp_path: Path) -> None:
    code = """
        import sys
        import leza_middleware
        from leza_middleware.storage import open_storage
        s = open_storage("clickhouse://127.0.0.1:9/leza")
        print(s.describe(), sorted(m for m in ("clickhouse_driver", "sqlalchemy")
                                   if m in sys.modules))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ClickHouseStorage(clickhouse://127.0.0.1:9/leza) []"


# ----------------------------------------------------------------------------- skip or require

_PROBE = """
def test_needs_clickhouse(clickhouse_urls):
    assert clickhouse_urls
"""


@pytest.mark.parametrize("required", [False, True])
def test_no_server_skips_with_a_reason_or_fails_when_required(
    tmp_path: Path, required: bool
) -> None:
    (tmp_path / "test_probe.py").write_text(_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEZA_")}
    env["LEZA_TEST_CLICKHOUSE_SERVER"] = str(tmp_path / "no-such-binary")
    env["PYTHONPATH"] = str(Path(__file__).parent)
    if required:
        env["LEZA_REQUIRE_CLICKHOUSE"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rsf",
         "-q", "test_probe.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert "no ClickHouse server binary was found" in text, text[-3000:]
    if required:
        assert out.returncode == 1, text[-3000:]
        assert "required under LEZA_REQUIRE_CLICKHOUSE=1" in text
        assert "1 error" in text or "1 failed" in text
    else:
        assert out.returncode == 0, text[-3000:]
        assert "1 skipped" in text
