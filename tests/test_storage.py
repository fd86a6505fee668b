"""Storage backends: one contract suite over memory, JSONL, SQLite, PostgreSQL and
ClickHouse (the access kind: the one it shares with the others here).

PostgreSQL runs on the ``postgres_url`` fixture (``LEZA_TEST_POSTGRES_URL``, else a
throwaway local cluster; each test gets its own schema through ``search_path``);
without either those cases are skipped. ClickHouse likewise on ``clickhouse_urls``
(each test gets a database of its own).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

from leza_middleware.errors import LezaConfigError
from leza_middleware.events import AccessEvent, Device, Geo, ua_key
from leza_middleware.performer import Organization, Performer
from leza_middleware.storage import (
    JSONLStorage,
    MemoryStorage,
    Page,
    QueryFilter,
    SQLStorage,
    Storage,
    open_storage,
)
from leza_middleware.storage.clickhouse import ClickHouseStorage
from leza_middleware.storage.models import (
    access_table,
    device_table,
    geo_table,
    performer_table,
)
from leza_middleware.storage.sql import decode_chain, encode_chain

T0 = 1_751_816_964_062_000  # 2025-07-06T15:49:24.062Z

# ----------------------------------------------------------------------------- events

CHROME = Device(
    key=ua_key("Mozilla/5.0 (X11; Linux x86_64) Chrome/91.0"),
    user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/91.0",
    browser_type="browser",
    browser_name="Chrome",
    browser_version="91.0",
    engine="Blink",
    os_name="GNU/Linux",
    os_platform="x64",
    device_type="desktop",
    is_pc=True,
)
BOT = Device(
    key=ua_key("Googlebot/2.1 (+http://www.google.com/bot.html)"),
    user_agent="Googlebot/2.1 (+http://www.google.com/bot.html)",
    browser_type="bot",
    browser_name="Googlebot",
    browser_version="2.1",
    bot_name="Googlebot",
    bot_category="Search bot",
    bot_url="http://www.google.com/bot.html",
)
FRANKFURT = Geo(
    key="161.35.208.0/20",
    country_code="DE",
    country_name="Germany",
    region_code="HE",
    region_name="Hesse",
    city="Frankfurt am Main",
    zip_code="60313",
    time_zone="Europe/Berlin",
    latitude=50.1188,
    longitude=8.6843,
)
NOWHERE = Geo(key="2001:480::/32", country_code="US", latitude=None, longitude=None, metro_code=7)
ALICE = Performer(
    id="u-1",
    name="Alice",
    email="alice@example.com",
    picture_url="https://example.com/a.png",
    organization_id="o-1",
    organization_name="Insight",
    role_name="admin",
    clientid="insight-app",
    organization_unit_id="ou-9",
    organization_unit_name="Ops",
    organization_unit_labels=("eu", "24/7"),
    organizations=(
        Organization(id="o-1", name="Insight", type="customer", labels=("gold",)),
        Organization(id="o-2", name="Partner", type="partner"),
    ),
)
BOB = Performer(id="u-2", name="Bob")


def ev(
    n: int,
    *,
    ts: int | None = None,
    action: str = "access",
    device: Device | None = CHROME,
    geo: Geo | None = FRANKFURT,
    performer: Performer | None = None,
    chain: tuple[str, ...] = (),
    **fields: Any,
) -> AccessEvent:
    """Access event number ``n`` (its id sorts like ``n``), ``n`` ms after T0 by default."""
    values: dict[str, Any] = {
        "id": f"e{n:06d}",
        "ts": T0 + n * 1000 if ts is None else ts,
        "action": action,
        "method": "GET",
        "endpoint": f"/api/items/{n}?token=[Filtered]",
        "route": "/api/items/{id}",
        "status": 403 if action == "denied" else 200,
        "duration_us": 1234 + n,
        "outcome": "denied" if action == "denied" else "success",
        "reason": "User has the permission Live Tracking Page Permission to access this "
        "resource of this application Insight App",
        "request_id": f"req-{n}",
        "client_ip": "161.35.214.167",
        "ip_valid": True,
        "peer_ip": "10.0.0.1",
        "proxy_chain": chain,
        "scheme": "https",
        "host": "app.example.com",
        "app": "insight",
        "device": device,
        "geo": geo,
        "performer": performer,
        "machine_id": f"m-{n % 3}",
        "session_hash": f"s-{n % 5}",
    }
    values.update(fields)
    return AccessEvent.build(**values)


def rich_events() -> list[AccessEvent]:
    return [
        ev(1, performer=ALICE, chain=("203.0.113.9", "10.0.0.1")),
        ev(2, device=BOT, geo=NOWHERE, performer=BOB, action="login"),
        ev(  # nothing optional, invalid IP stored as received
            3,
            device=None,
            geo=None,
            route=None,
            machine_id=None,
            session_hash=None,
            client_ip="161.35.614.165",
            ip_valid=False,
            action="denied",
        ),
        ev(4, chain=("[2001:db8::1]:4711", "unknown"), reason="Zugriff verweigert: Größe ≠ ✓"),
        ev(5, chain=("a,b", "c"), performer=ALICE),
        ev(6, chain=("",), device=BOT, performer=Performer(id="u-3", organization_unit_labels=())),
    ]


def dicts(page: Page) -> list[dict[str, Any]]:
    return [e.to_dict() for e in page.events]


def all_events(storage: Storage, kind: str = "access", **kw: Any) -> list[dict[str, Any]]:
    return dicts(storage.query(kind, QueryFilter(limit=10_000, **kw)))


def access(page: Page) -> list[AccessEvent]:
    assert all(isinstance(e, AccessEvent) for e in page.events)
    return page.events  # type: ignore[return-value]


def ids(page: Page) -> list[str]:
    return [e.id for e in page.events]


# ----------------------------------------------------------------------------- backends


@pytest.fixture(scope="session")
def pg_admin_url(postgres_url: str) -> str:
    url = make_url(postgres_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_storage(postgres_url: str, pg_admin_url: str) -> Iterator[SQLStorage]:
    """A SQLStorage in a schema of its own (via search_path), dropped afterwards."""
    import psycopg

    schema = f"leza_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    storage = SQLStorage(url)
    try:
        yield storage
    finally:
        storage.close()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[SQLStorage]:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'leza.db'}")
    yield storage
    storage.close()


BACKENDS = ["memory", "jsonl", "sqlite", "postgres", "clickhouse"]
SQL_BACKENDS = ["sqlite", "postgres"]


def _make(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    name = request.param
    if name == "memory":
        return MemoryStorage()
    if name == "jsonl":
        return JSONLStorage(tmp_path / "events")
    storage: Storage = request.getfixturevalue(f"{name}_storage")
    return storage


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    s = _make(request, tmp_path)
    s.setup()
    return s


@pytest.fixture(params=SQL_BACKENDS)
def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> SQLStorage:
    s = _make(request, tmp_path)
    assert isinstance(s, SQLStorage)
    s.setup()
    return s


def count(storage: SQLStorage, table: Any) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# ----------------------------------------------------------------------------- contract


def test_round_trip_to_dict_is_identical(storage: Storage) -> None:
    events = rich_events()
    storage.write(events)
    expected = [e.to_dict() for e in sorted(events, key=lambda e: e.ts, reverse=True)]
    assert all_events(storage) == expected
    # and the rebuilt objects compare equal, device/geo/performer included
    assert storage.query("access", QueryFilter()).events == sorted(
        events, key=lambda e: e.ts, reverse=True
    )


def test_rewriting_a_batch_stores_each_event_once(storage: Storage) -> None:
    batch = [ev(i, performer=ALICE if i % 2 else None) for i in range(20)]
    storage.write(batch)
    storage.write(batch)  # a replay of the same batch
    storage.write([*batch[10:], ev(20), ev(20)])  # overlap, and a duplicate within a batch
    got = all_events(storage)
    assert [d["_id"] for d in got] == [f"e{i:06d}" for i in range(20, -1, -1)]
    if isinstance(storage, SQLStorage):
        assert count(storage, access_table) == 21


def test_newest_first_and_equal_timestamps_by_id(storage: Storage) -> None:
    storage.write([ev(3, ts=T0), ev(1, ts=T0), ev(7, ts=T0 + 1), ev(2, ts=T0), ev(0, ts=T0 - 1)])
    page = storage.query("access", QueryFilter())
    assert ids(page) == ["e000007", "e000003", "e000002", "e000001", "e000000"]
    assert page.next_cursor is None


def test_since_and_until_are_inclusive(storage: Storage) -> None:
    storage.write([ev(i) for i in range(10)])
    since, until = T0 + 2000, T0 + 5000
    got = ids(storage.query("access", QueryFilter(since=since, until=until)))
    assert got == ["e000005", "e000004", "e000003", "e000002"]
    assert ids(storage.query("access", QueryFilter(since=T0 + 9000))) == ["e000009"]
    assert ids(storage.query("access", QueryFilter(until=T0))) == ["e000000"]
    assert ids(storage.query("access", QueryFilter(since=T0 + 6000, until=T0 + 5999))) == []


def test_action_and_performer_filters(storage: Storage) -> None:
    storage.write(
        [
            ev(0, action="login", performer=ALICE),
            ev(1, performer=ALICE),
            ev(2, action="denied", performer=BOB),
            ev(3, action="denied", performer=ALICE),
            ev(4, action="denied"),
            ev(5, performer=Performer(id="u-1", name="Alice renamed")),  # same id, new value
        ]
    )

    def q(**kw: Any) -> list[str]:
        return ids(storage.query("access", QueryFilter(**kw)))

    assert q(action="denied") == ["e000004", "e000003", "e000002"]
    assert q(performer_id="u-1") == ["e000005", "e000003", "e000001", "e000000"]
    assert q(action="denied", performer_id="u-1") == ["e000003"]
    assert q(action="denied", performer_id="u-1", until=T0 + 2999) == []
    assert q(action="logout") == []
    assert q(performer_id="nobody") == []
    newest = access(storage.query("access", QueryFilter(performer_id="u-1")))[0]
    assert newest.performer == Performer(id="u-1", name="Alice renamed")


@pytest.mark.parametrize("flt_kw", [{}, {"action": "denied"}, {"since": T0 + 40_000}])
def test_keyset_pagination_yields_every_event_once(
    storage: Storage, flt_kw: dict[str, Any]
) -> None:
    # Many equal timestamps so that pages split inside a group of one ts.
    events = [
        ev(i, ts=T0 + (i // 7) * 1000, action="denied" if i % 3 == 0 else "access")
        for i in range(157)
    ]
    storage.write(events[::2])
    storage.write(events[1::2])
    expected = [
        e.id
        for e in sorted(events, key=lambda e: (e.ts, e.id), reverse=True)
        if ("action" not in flt_kw or e.action == flt_kw["action"])
        and e.ts >= flt_kw.get("since", 0)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = storage.query("access", QueryFilter(limit=10, cursor=cursor, **flt_kw))
        seen += ids(page)
        pages += 1
        assert len(page.events) <= 10
        if page.next_cursor is None:
            break
        assert page.next_cursor == (page.events[-1].ts, page.events[-1].id)
        cursor = page.next_cursor
    assert seen == expected
    assert pages == max(1, -(-len(expected) // 10))  # no empty trailing page


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        QueryFilter(limit=0)


def test_purge_counts_and_batches(storage: Storage) -> None:
    storage.write([ev(i, performer=ALICE) for i in range(25)])
    before = T0 + 17_000  # e0..e16 are older
    assert storage.purge("access", before, batch_size=4) == 17
    assert [d["_id"] for d in all_events(storage)] == [f"e{i:06d}" for i in range(24, 16, -1)]
    assert storage.purge("access", before, batch_size=4) == 0
    assert storage.purge("access", T0 + 100_000) == 8
    assert all_events(storage) == []
    # a purged id can be written again
    storage.write([ev(3)])
    assert [d["_id"] for d in all_events(storage)] == ["e000003"]


def test_unknown_kind_reads_empty_or_raises(storage: Storage) -> None:
    if isinstance(storage, (SQLStorage, ClickHouseStorage)):
        with pytest.raises(ValueError, match="kind"):
            storage.query("nonsense", QueryFilter())
    else:
        assert storage.query("nonsense", QueryFilter()).events == []


def test_concurrent_reads_while_writing(storage: Storage) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for b in range(20):
                storage.write([ev(b * 10 + i) for i in range(10)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        page = storage.query("access", QueryFilter(limit=5))
        assert ids(page) == sorted(ids(page), reverse=True)
    t.join()
    assert not errors
    assert len(all_events(storage)) == 200


# ----------------------------------------------------------------------------- SQL only


def test_shared_rows_are_stored_once_per_key(sql_storage: SQLStorage) -> None:
    alice_again = Performer.from_dict(ALICE.to_dict())  # equal value, another object
    assert alice_again is not ALICE
    written = [
        ev(
            i,
            device=(CHROME, BOT, None)[i % 3],
            geo=(FRANKFURT, NOWHERE)[i % 2],
            performer=(ALICE, alice_again, BOB, None)[i % 4],
        )
        for i in range(150)
    ]
    for b in range(3):
        sql_storage.write(written[b * 50 : (b + 1) * 50])
    # Another process (a fresh storage on the same database) with the same values.
    other = SQLStorage(sql_storage.url)
    other.write([ev(1000, device=BOT, geo=NOWHERE, performer=ALICE)])
    other.close()
    assert count(sql_storage, access_table) == 151
    assert count(sql_storage, device_table) == 2
    assert count(sql_storage, geo_table) == 2
    assert count(sql_storage, performer_table) == 2
    got = access(sql_storage.query("access", QueryFilter(performer_id="u-1", limit=1000)))
    assert len(got) == 1 + sum(e.performer == ALICE for e in written)
    assert all(e.performer == ALICE for e in got)


def test_known_key_cache_is_bounded(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'leza.db'}", known_keys_limit=3)
    devices = [Device(key=ua_key(f"ua-{i}"), user_agent=f"ua-{i}") for i in range(10)]
    for i, d in enumerate(devices):
        storage.write([ev(i, device=d)])
    storage.write([ev(100 + i, device=d) for i, d in enumerate(devices)])
    assert count(storage, device_table) == 10
    assert len(storage._known.devices) <= 3
    stored = access(storage.query("access", QueryFilter(limit=100)))
    assert {e.device for e in stored} == set(devices)
    storage.close()


def test_failed_batch_is_atomic_and_storage_stays_usable(sql_storage: SQLStorage) -> None:
    bad = ev(2, device=BOT, performer=BOB, reason=None)  # violates NOT NULL
    with pytest.raises(Exception, match=r"(?i)null"):
        sql_storage.write([ev(1, device=BOT), bad, ev(3)])
    assert all_events(sql_storage) == []
    assert count(sql_storage, device_table) == 0  # rolled back with the batch
    good = [ev(1, device=BOT, performer=BOB), ev(3)]
    sql_storage.write(good)
    assert [d["_id"] for d in all_events(sql_storage)] == ["e000003", "e000001"]
    assert count(sql_storage, device_table) == 2  # BOT and CHROME
    assert count(sql_storage, performer_table) == 1


def test_sqlite_write_fails_while_database_is_locked_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "leza.db"
    storage = SQLStorage(f"sqlite:///{path}", busy_timeout_ms=50)
    storage.write([ev(0)])
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            storage.write([ev(1, device=BOT, performer=ALICE)])
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    storage.write([ev(1, device=BOT, performer=ALICE)])  # the recorder's retry
    assert [d["_id"] for d in all_events(storage)] == ["e000001", "e000000"]
    assert count(storage, device_table) == 2
    storage.close()


def test_write_reconnects_after_connection_is_lost(sql_storage: SQLStorage) -> None:
    sql_storage.write([ev(0)])
    raw = sql_storage._raw
    assert raw is not None
    if sql_storage.url.get_backend_name() == "sqlite":
        raw.dbapi_connection.close()  # type: ignore[union-attr]
    else:  # the server drops the writer's session
        pid = raw.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with sql_storage.engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the driver raises
        sql_storage.write([ev(1)])
    sql_storage.write([ev(1), ev(2)])
    assert [d["_id"] for d in all_events(sql_storage)] == ["e000002", "e000001", "e000000"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_after_fork_child_writes_on_its_own_connection(sql_storage: SQLStorage) -> None:
    sql_storage.write([ev(0, performer=ALICE)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            sql_storage.after_fork()
            sql_storage.write([ev(1, performer=ALICE), ev(2, device=BOT)])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sql_storage.write([ev(3)])  # the parent's connection still works
    assert [d["_id"] for d in all_events(sql_storage)] == [f"e{i:06d}" for i in (3, 2, 1, 0)]


def test_sqlite_pragmas_on_reader_and_writer(sqlite_storage: SQLStorage) -> None:
    sqlite_storage.write([ev(0)])
    with sqlite_storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    raw = sqlite_storage._raw
    assert raw is not None
    cur = raw.cursor()
    cur.execute("PRAGMA busy_timeout")
    assert cur.fetchone() == (5000,)
    cur.close()


def test_sqlite_query_plan_uses_an_index(sqlite_storage: SQLStorage) -> None:
    sqlite_storage.write([ev(i, action=("access", "denied")[i % 2]) for i in range(50)])
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, stmt: str, params: Any, *_: Any) -> None:
        if "leza_access" in stmt and stmt.lstrip().upper().startswith("SELECT"):
            statements.append((stmt, params))

    event.listen(sqlite_storage.engine, "before_cursor_execute", capture)
    page = sqlite_storage.query(
        "access", QueryFilter(since=T0 + 5000, until=T0 + 40_000, action="denied", limit=5)
    )
    sqlite_storage.query(
        "access",
        QueryFilter(since=T0, until=T0 + 40_000, action="denied", limit=5, cursor=page.next_cursor),
    )
    sqlite_storage.query("access", QueryFilter(since=T0, until=T0 + 40_000, limit=5))
    sqlite_storage.query("access", QueryFilter(performer_id="u-1", limit=5))
    event.remove(sqlite_storage.engine, "before_cursor_execute", capture)
    assert len(statements) == 4
    expected_index = [
        "ix_leza_access_action_ts",
        "ix_leza_access_action_ts",
        "ix_leza_access_ts_id",
        "ix_leza_access_performer_ts",
    ]
    with sqlite_storage.engine.connect() as conn:
        for (stmt, params), index in zip(statements, expected_index, strict=True):
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)]
            access_steps = [p for p in plan if "leza_access" in p]
            assert access_steps, plan
            assert all(f"USING INDEX {index}" in p for p in access_steps), plan
            assert not any(p.startswith("SCAN") for p in plan), plan
            assert not any("TEMP B-TREE FOR ORDER BY" in p for p in plan), plan  # no full sort


def test_proxy_chain_encoding_round_trips() -> None:
    for chain in [(), ("1.2.3.4",), ("1.2.3.4", "10.0.0.1"), ("a,b",), ("",), ("", ""), ("[::1]",)]:
        assert decode_chain(encode_chain(chain)) == chain
    assert encode_chain(("1.2.3.4", "10.0.0.1")) == "1.2.3.4,10.0.0.1"


def test_in_memory_sqlite_warns_and_works() -> None:
    with pytest.warns(UserWarning, match="in-memory"):
        storage = open_storage("sqlite://")
    assert isinstance(storage, SQLStorage)
    assert not storage.shared
    storage.write(rich_events())
    t = threading.Thread(target=lambda: storage.write([ev(99)]))
    t.start()
    t.join()
    assert len(all_events(storage)) == 7  # the other thread wrote to the same database
    storage.close()


# ----------------------------------------------------------------------------- JSONL only


def test_jsonl_survives_a_torn_line_and_dedupes_across_instances(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    first = JSONLStorage(directory)
    first.write([ev(0), ev(1)])
    with open(directory / "access.jsonl", "a", encoding="utf-8") as f:
        f.write('{"_id": "e000009", "kind": "acc')  # a crash mid-line
    second = JSONLStorage(directory)  # a restart: nothing remembered
    second.write([ev(1), ev(2)])  # replay overlaps what the first one wrote
    lines = (directory / "access.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    assert [d["_id"] for d in all_events(second)] == ["e000002", "e000001", "e000000"]
    assert second.purge("access", T0 + 1500) == 2
    assert [d["_id"] for d in all_events(second)] == ["e000002"]
    assert sorted(p.name for p in directory.iterdir()) == ["access.jsonl"]  # no temp left


def test_jsonl_rejects_path_like_kinds(tmp_path: Path) -> None:
    storage = JSONLStorage(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        storage.query("../x", QueryFilter())


# ----------------------------------------------------------------------------- open_storage


def test_open_storage_builds_each_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage("memory://"), MemoryStorage)
    jsonl = open_storage(f"jsonl://{tmp_path / 'j'}?fsync=1")
    assert isinstance(jsonl, JSONLStorage)
    assert jsonl.fsync
    assert jsonl.directory == str(tmp_path / "j")
    sqlite = open_storage(f"sqlite:///{tmp_path / 'leza.db'}")
    assert isinstance(sqlite, SQLStorage)
    assert sqlite.shared
    mine = MemoryStorage()
    assert open_storage(mine) is mine


def test_open_storage_does_not_connect_and_hides_the_password() -> None:
    # Nothing listens on port 9: a connection attempt would fail.
    storage = open_storage("postgresql://leza:s3cret@127.0.0.1:9/leza")
    assert isinstance(storage, SQLStorage)
    assert storage.url.drivername == "postgresql+psycopg"
    assert "s3cret" not in storage.describe()
    assert "***" in storage.describe()
    storage.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("redis://localhost:6379/0", r"unknown storage URL scheme 'redis'.*memory://.*jsonl://"),
        ("postgresql+nodriver://u@h/db", r"unknown postgresql driver 'nodriver'"),
        (
            "mysql+mysqldb://leza:s3cret@db/leza",
            r"'mysqldb' database driver.*not installed.*mysqlclient",
        ),
        ("postgresql+asyncpg://u@h/db", r"async driver"),
        ("postgresql://u:s3cret@host:notaport/db", r"cannot be parsed"),
        ("leza.db", r"not a URL"),
        ("memory://somewhere", r"memory:// takes no path"),
        ("jsonl://", r"names no directory"),
        ("jsonl:///tmp/x?fsync=maybe", r"fsync must be"),
        ("mssql+pyodbc://u@h/db", r"mssql database is not supported"),
    ],
)
def test_open_storage_config_errors(spec: str, message: str) -> None:
    with pytest.raises(LezaConfigError, match=message) as info:
        open_storage(spec)
    assert "s3cret" not in str(info.value)


def test_open_storage_missing_directories(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(LezaConfigError, match=r"directory .*no.* does not exist"):
        open_storage(f"sqlite:///{missing / 'leza.db'}")
    with pytest.raises(LezaConfigError, match=r"parent directory .*no.* does not exist"):
        open_storage(f"jsonl://{missing}")
    with pytest.raises(LezaConfigError, match="is a directory"):
        open_storage(f"sqlite:///{tmp_path}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LezaConfigError, match="not a directory"):
        open_storage(f"jsonl://{tmp_path / 'file'}")


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 0)() == 0, reason="root writes anywhere")
def test_open_storage_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(LezaConfigError, match="not writable"):
            open_storage(f"sqlite:///{ro / 'leza.db'}")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("bad", [42, None, Path("leza.db"), b"sqlite://", SQLStorage])
def test_open_storage_rejects_other_objects(bad: object) -> None:
    with pytest.raises(LezaConfigError, match=r"Storage instance|is a class"):
        open_storage(bad)  # type: ignore[arg-type]


def test_relative_sqlite_path_is_described_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two apps using sqlite:///leza.db from different directories must not share
    # a spill folder (keyed by describe()).
    monkeypatch.chdir(tmp_path)
    storage = SQLStorage("sqlite:///leza.db")
    try:
        assert str(tmp_path / "leza.db") in storage.describe()
    finally:
        storage.close()


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_setup_on_a_fresh_database(tmp_path: Path, round_: int) -> None:
    # Workers, the CLI and a dashboard may all create the schema at once.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    storages = [SQLStorage(url) for _ in range(10)]
    barrier = threading.Barrier(len(storages))
    errors: list[BaseException] = []

    def go(storage: SQLStorage) -> None:
        barrier.wait()
        try:
            storage.setup()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with sqlite3.connect(tmp_path / "fresh.db") as con:
            names = {r[0] for r in con.execute("select name from sqlite_master")}
        assert {"leza_access", "leza_device", "leza_geo", "leza_performer"} <= names
    finally:
        for s in storages:
            s.close()
