"""PostgreSQL's access rows go in by ``COPY`` (storage/sql_write.py): what an
attacker puts in a User-Agent, a path or a query string comes back exactly;
a replayed batch is stored and counted once (raw rows and STATE rollups); a
batch that fails rolls back whole. The same checks run on SQLite (its
``executemany`` path) so both backends are held to the same result."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine
from test_storage import CHROME, FRANKFURT, T0, ev

from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    CheckEvent,
    Device,
    Event,
    LogEvent,
    SessionEvent,
    ua_key,
)
from leza_middleware.performer import Performer
from leza_middleware.recorder.refusals import refused_by_value
from leza_middleware.storage import QueryFilter, SQLStorage
from leza_middleware.storage.models import TRAFFIC_COLUMNS

ALICE = Performer(id="u-1", name="Alice\tTab", email="alice@example.com")

# COPY's text format: tab separates columns, newline rows, backslash escapes,
# \N is NULL; then what else a client controls: every odd code point class.
HOSTILE = [
    "tab\there",
    "new\nline",
    "carriage\rreturn\r\n",
    "back\\slash\\",
    "\\N",
    "\\.",
    "\\",
    "'quote\" ,comma; --",
    "\x01\x02\x07\x08\x0b\x0c\x1b\x1f\x7f",
    "%00 \\0 \\x00 \\u0000",
    "Ünïcødé ß 漢字 العربية עברית",
    "\u202eRTL override\u202c \u200b\u200c\u200d\ufeff",
    "\u2028\u2029\x85 line separators",
    "\U0001f600\U0001f9d1\u200d\U0001f4bb astral",
    "e\u0301 combining \u0338\u20dd",
    "\ufffd\uffff\U0010ffff",
    "",
]
LONG = "/" + "x\t\\\n" * 250_000  # 1 MB of characters COPY must escape


def _hostile_events() -> list[AccessEvent]:
    out = []
    for i, s in enumerate([*HOSTILE, LONG]):
        # Indexed columns hold what the library bounds (a route template, our
        # hashes; request ids are <= 128 characters): the long value goes where
        # a client puts it, the path, query string, Host, X-Forwarded-For, UA.
        short = s if s is not LONG else "long"
        device = Device(key=ua_key(f"UA {s}"), user_agent=f"UA {s}", browser_name=short)
        out.append(
            ev(
                i,
                endpoint=f"/api/{s}?q={s}",
                route=short or None,
                reason=s,
                request_id=f"req-{i}",
                host=s,
                chain=(s, "10.0.0.2") if s else (),
                device=device,
                performer=ALICE,
                machine_id=s,
                session_hash=None if i % 2 else short,
            )
        )
    return out


def _rows(url: str, table: str, order: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order}")
            ]
    finally:
        engine.dispose()


def _count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engine.dispose()


def _rollup_sums(url: str) -> tuple[int, ...]:
    """Every count column of the minute rollups, summed over all rows."""
    cols = [c for c in TRAFFIC_COLUMNS[3:] if c != "last_seen"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in cols)
            row = conn.exec_driver_sql(f"SELECT {sums} FROM leza_traffic_minute").one()
            return tuple(int(x) for x in row)
    finally:
        engine.dispose()


def _prepared(storage: SQLStorage) -> list[str]:
    raw = storage._raw
    assert raw is not None
    cur = raw.cursor()
    try:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        return [r[0] for r in cur.fetchall()]
    finally:
        cur.close()


@pytest.mark.both_databases
def test_hostile_and_very_long_values_come_back_exactly(storage_url: str) -> None:
    events = _hostile_events()
    storage = SQLStorage(storage_url)
    try:
        storage.write(events)
        stored = _rows(storage_url, "leza_access", "id")
        assert stored == [e.row for e in events]  # byte for byte, NULLs as NULLs
        assert [r[5] for r in stored].count(None) == 1  # "" is not NULL, None is
        page = storage.query("access", QueryFilter(limit=100, ascending=True))
        assert [e.endpoint for e in page.events] == [e.endpoint for e in events]  # type: ignore[attr-defined]
        assert [e.proxy_chain for e in page.events] == [e.proxy_chain for e in events]  # type: ignore[attr-defined]
        assert [e.device.user_agent for e in page.events] == [  # type: ignore[attr-defined]
            e.device.user_agent for e in events if e.device
        ]
        assert page.events[-1].endpoint == f"/api/{LONG}?q={LONG}"  # type: ignore[attr-defined]
    finally:
        storage.close()


@pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)
def test_postgres_copies_access_rows_and_falls_back_to_insert_on_replay(storage_url: str) -> None:
    storage = SQLStorage(storage_url)
    try:
        batch = [ev(i, performer=ALICE, status=500 if i % 4 == 0 else 200) for i in range(200)]
        storage.write(batch)
        # By COPY: no access INSERT was prepared; the device and performer rows'
        # executemany was (so the view shows what the write prepared).
        prepared = _prepared(storage)
        assert not [s for s in prepared if "INSERT INTO leza_access" in s], prepared
        assert [s for s in prepared if "INSERT INTO leza_device" in s], prepared
        once = _rollup_sums(storage_url)
        assert once[0] == 200

        # Replays: the COPY meets stored ids, the batch is rolled back and
        # written again with only the new rows (by the idempotent INSERT).
        storage.write(batch)
        more = [ev(1000 + i, performer=ALICE) for i in range(50)]
        storage.write(batch[100:] + more)
        storage.write(more[:5] + more[:5])  # an id repeated inside one batch

        assert _count(storage_url, "leza_access") == 250
        sums = _rollup_sums(storage_url)
        assert sums[0] == 250 == storage.count("access", QueryFilter())
        again = list(once)
        again[0] += 50
        again[TRAFFIC_COLUMNS[3:].index("success")] += 50
        duration = TRAFFIC_COLUMNS[3:].index("duration_us")
        again[duration] += sum(e.duration_us for e in more)
        assert sums[: duration + 1] == tuple(again[: duration + 1])
        t = storage.traffic(T0 - 60_000_000, T0 + 3_600_000_000, 60)
        assert t.totals.requests == 250
        assert t.totals.server_errors == 50
        # The next fresh batch goes in (by COPY again: the fallback is per batch).
        storage.write([ev(2000 + i) for i in range(10)])
        assert storage.count("access", QueryFilter()) == 260
        assert _rollup_sums(storage_url)[0] == 260
    finally:
        storage.close()


@pytest.mark.both_databases
def test_a_failing_batch_rolls_back_whole(storage_url: str) -> None:
    storage = SQLStorage(storage_url)
    try:
        storage.write([ev(0)])
        base_sums = _rollup_sums(storage_url)
        bot = Device(key=ua_key("NewBot/1.0"), user_agent="NewBot/1.0", browser_type="bot")
        newcomer = Performer(id="u-2", name="Bob", email="bob@example.com")
        good = [ev(i, device=bot, performer=newcomer) for i in range(1, 50)]
        # A value the database refuses after the access rows went in (PostgreSQL
        # text has no NUL; on SQLite a non-UTF-8 surrogate fails the same way),
        # in a log record written after the access rows in the transaction.
        bad_text = "NUL \x00 here" if storage_url.startswith("postgresql") else "\ud800"
        log = LogEvent(id="log-1", ts=T0, level=40, logger="app", message=bad_text)
        with pytest.raises(Exception) as failed:  # noqa: PT011 - judged below
            storage.write([*good, log])
        assert refused_by_value(failed.value)  # the recorder then finds the one bad event
        assert _count(storage_url, "leza_access") == 1
        assert _count(storage_url, "leza_log") == 0
        assert _rollup_sums(storage_url) == base_sums
        assert _count(storage_url, "leza_device") == 1  # only CHROME
        assert _count(storage_url, "leza_performer") == 0

        # The same in an access row (on PostgreSQL: inside the COPY stream).
        poisoned = ev(99, endpoint=f"/x{bad_text}")
        with pytest.raises(Exception) as failed:  # noqa: PT011 - judged below
            storage.write([*good, poisoned])
        assert refused_by_value(failed.value)
        assert _count(storage_url, "leza_access") == 1
        assert _rollup_sums(storage_url) == base_sums

        # Without the bad event the batch goes in whole, shared rows included
        # (the failed transactions left no key marked as stored).
        storage.write(good)
        assert _count(storage_url, "leza_access") == 50
        assert _count(storage_url, "leza_device") == 2
        assert _count(storage_url, "leza_performer") == 1
        assert _rollup_sums(storage_url)[0] == 50
        assert storage.query("access", QueryFilter(limit=1)).events[0].device == bot
    finally:
        storage.close()


def _every_other_kind() -> list[Event]:
    """One event of each kind but access, with values COPY's format would mangle."""
    s = "tab\t nl\n bs\\ \\N 漢字 \U0001f600"
    return [
        LogEvent(id="L0001", ts=T0 + 1, level=40, logger="app", message=s, exception=s,
                 request_id="req-1", performer_id="u-1", route=s, origin=s),
        AdvisoryEvent(id="A0001", ts=T0 + 2, rule="new_machine", severity="high", message=s,
                      evidence=[s], performer_id="u-1", ip="81.2.69.142", details={"k": s}),
        CheckEvent(id="C0001", ts=T0 + 3, check="db", ok=False, state="down", previous="up",
                   latency_ms=1.5, error=s),
        SessionEvent(id="S0001", ts=T0 + 4, action="session_start", session_id="sess-1",
                     performer=ALICE, device=CHROME, geo=FRANKFURT, ip="161.35.214.167"),
        AuditEvent(id="U0001", ts=T0 + 5, action="update", entity_type="role", entity_id="42",
                   actor=ALICE, before={"name": s}, after={"name": "x"}, reason=s,
                   chain="c-1", seq=1, prev_hash="ab" * 16, hash="cd" * 16),
    ]  # fmt: skip


@pytest.mark.both_databases
def test_every_kind_in_one_batch_written_twice_is_stored_once(storage_url: str) -> None:
    others = _every_other_kind()
    batch = [*[ev(i, performer=ALICE) for i in range(20)], *others]
    storage = SQLStorage(storage_url)
    try:
        storage.write(batch)
        first = {t: _count(storage_url, t) for t in _TABLES}
        sums = _rollup_sums(storage_url)
        storage.write(batch)  # replayed whole
        storage.write(batch[10:])  # replayed in part
        assert {t: _count(storage_url, t) for t in _TABLES} == first
        assert _rollup_sums(storage_url) == sums
        assert first == {
            "leza_access": 20, "leza_log": 1, "leza_advisory": 1, "leza_check": 1,
            "leza_audit": 1, "leza_session": 1, "leza_device": 1, "leza_geo": 1,
            "leza_performer": 1,
        }  # fmt: skip
        assert sums[0] == 20
        for e in others:
            if e.kind in ("log", "advisory", "check"):
                got = storage.query(e.kind, QueryFilter()).events
                assert [g.to_dict() for g in got] == [e.to_dict()], e.kind
        audit = list(storage.iter_audit())
        assert [a.to_dict() for a in audit] == [others[-1].to_dict()]
    finally:
        storage.close()


_TABLES = (
    "leza_access",
    "leza_log",
    "leza_advisory",
    "leza_check",
    "leza_audit",
    "leza_session",
    "leza_device",
    "leza_geo",
    "leza_performer",
)
