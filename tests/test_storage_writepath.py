"""The SQL write path's cost-saving properties, on SQLite and PostgreSQL: shared
rows (device, geo, performer) are written once per key per process, and the
statements are prepared once for the write connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_storage import CHROME, FRANKFURT, ev

from leza_middleware.performer import Performer
from leza_middleware.storage import QueryFilter, SQLStorage

ALICE = Performer(id="u-1", name="Alice", email="alice@example.com")
SHARED = ("leza_device", "leza_geo", "leza_performer")


def _shared_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in SHARED
            }
    finally:
        engine.dispose()


def _delete_shared(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for t in SHARED:
                conn.execute(text(f"DELETE FROM {t}"))
    finally:
        engine.dispose()


@pytest.mark.both_databases
def test_shared_rows_are_written_once_per_key_per_process(storage_url: str) -> None:
    storage = SQLStorage(storage_url)
    try:
        storage.write([ev(i, performer=ALICE) for i in range(10)])
        assert _shared_counts(storage_url) == dict.fromkeys(SHARED, 1)
        assert storage._known.devices == {CHROME.key}
        assert storage._known.geos == {FRANKFURT.key}

        # Delete them behind the writer's back: a later batch with the same keys
        # does not insert them again (this process stored them already) ...
        _delete_shared(storage_url)
        storage.write([ev(i, performer=ALICE) for i in range(10, 20)])
        assert _shared_counts(storage_url) == dict.fromkeys(SHARED, 0)

        # ... until it is told they are gone (what erasure does).
        storage.forget_known_keys()
        storage.write([ev(i, performer=ALICE) for i in range(20, 30)])
        assert _shared_counts(storage_url) == dict.fromkeys(SHARED, 1)
        assert storage.query("access", QueryFilter()).events[0].device == CHROME
    finally:
        storage.close()


@pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)
def test_postgres_inserts_are_prepared_on_the_write_connection(storage_url: str) -> None:
    """The rollup upsert is prepared once and reused; access rows go by COPY
    (tests/test_storage_copy.py), no INSERT of them."""
    storage = SQLStorage(storage_url)
    try:
        for n in range(3):  # batches: the statement is prepared once, then reused
            storage.write([ev(n * 100 + i, performer=ALICE) for i in range(50)])
        raw = storage._raw
        assert raw is not None
        cur = raw.cursor()
        try:
            cur.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [r[0] for r in cur.fetchall()]
        finally:
            cur.close()
        rollups = [s for s in prepared if "INSERT INTO leza_traffic_minute" in s]
        assert len(rollups) == 1, prepared
        assert not [s for s in prepared if "INSERT INTO leza_access" in s], prepared
        assert storage.count("access", QueryFilter()) == 150
    finally:
        storage.close()


def test_sqlite_binds_none_and_bool_through_registered_adapters(tmp_path: Path) -> None:
    """SQLite: a SQLStorage registers C adapters for ``None`` and ``bool`` (the
    sqlite3 module's fast path, see sql_write.bind_none_in_c); what is stored is
    what was stored without them: NULL, 1 and 0, read back as None, True, False."""
    key = (type(None), sqlite3.PrepareProtocol)
    saved = {k: sqlite3.adapters.pop(k) for k in (key, (bool, key[1])) if k in sqlite3.adapters}
    try:
        storage = SQLStorage(f"sqlite:///{tmp_path / 'a.db'}")
        assert sqlite3.adapters[key](None) is None
        assert sqlite3.adapters[bool, sqlite3.PrepareProtocol](True) == 1
        storage.write([ev(1, route=None, ip_valid=True), ev(2, ip_valid=False)])
        storage.close()
        conn = sqlite3.connect(tmp_path / "a.db")
        rows = conn.execute(
            "SELECT route, typeof(route), ip_valid, typeof(ip_valid), performer_id "
            "FROM leza_access ORDER BY id"
        ).fetchall()
        conn.close()
        assert rows == [
            (None, "null", 1, "integer", None),
            ("/api/items/{id}", "text", 0, "integer", None),
        ]
        reader = SQLStorage(f"sqlite:///{tmp_path / 'a.db'}")
        events = reader.query("access", QueryFilter()).events
        reader.close()
        assert [(e.route, e.ip_valid) for e in events] == [("/api/items/{id}", False), (None, True)]

        # An adapter the app registered first is kept.
        def mine(value: bool) -> str:
            return "yes" if value else "no"

        sqlite3.register_adapter(bool, mine)
        SQLStorage(f"sqlite:///{tmp_path / 'b.db'}").close()
        assert sqlite3.adapters[bool, sqlite3.PrepareProtocol] is mine
    finally:
        sqlite3.adapters.pop((bool, key[1]), None)
        sqlite3.adapters.pop(key, None)
        sqlite3.adapters.update(saved)
        SQLStorage(f"sqlite:///{tmp_path / 'c.db'}").close()  # ours again for the rest
