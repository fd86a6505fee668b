"""Schema migrations (storage/migrate.py, storage/migrations/) on real SQLite files
and on PostgreSQL (each test in a schema of its own).

* an upgrade from the first released schema, with rows written by that version's
  code in it, loses nothing: every old row reads back unchanged, the new tables
  are there, and the upgraded database takes and serves every kind of event,
  with the audit chain still verifying;
* databases made by ``setup()`` before migrations existed are adopted;
* ``migrate`` twice is a no-op; migrators and fresh setups racing in several
  processes all succeed, and exactly one of them does the work;
* the models and the migrations agree (Alembic's ``compare_metadata``), so a
  model change without a revision fails here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.cli import main as cli
from leza_middleware.config import Settings
from leza_middleware.errors import LezaConfigError, LezaError
from leza_middleware.events import AdvisoryEvent, CheckEvent, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.storage import SQLStorage
from leza_middleware.storage.migrate import (
    HEAD,
    PG_LOCK_CLASS,
    REVISIONS,
    VERSION_TABLE,
    MigrationResult,
    SchemaState,
    alembic_config,
    current_revision,
    exclude_leza,
    include_object,
    migrate,
    migration_lock,
    schema_state,
)
from leza_middleware.storage.models import metadata
from leza_middleware.storage.sql import parse_sql_url

# Every test that takes ``storage_url`` runs on a SQLite file and on PostgreSQL.
pytestmark = pytest.mark.both_databases

SECRET = "migration-tests-secret-0123"
FIRST_TABLES = (
    "leza_access",
    "leza_audit",
    "leza_audit_checkpoint",
    "leza_device",
    "leza_geo",
    "leza_performer",
    "leza_session",
)
# The tables the later revisions add.
NEW_TABLES = ("leza_advisory", "leza_audit_purge", "leza_audit_redaction", "leza_check", "leza_log")
# 0004's rollups: backfilled from the access rows (tests/test_rollups.py checks the numbers).
TRAFFIC_TABLES = ("leza_traffic_hour", "leza_traffic_minute")
TRAFFIC_MARK = "leza_traffic_mark"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)

# What SQLStorage.setup() of the first schema (commit 9d84a54) executed: SQLAlchemy's
# SQLite rendering, whitespace tidied; PostgreSQL takes the same text.
SCHEMA_9D84A54 = """
CREATE TABLE IF NOT EXISTS leza_access (
    id VARCHAR NOT NULL,
    ts BIGINT NOT NULL,
    action VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    status INTEGER NOT NULL,
    duration_us BIGINT NOT NULL,
    outcome VARCHAR NOT NULL,
    reason TEXT NOT NULL,
    request_id VARCHAR NOT NULL,
    client_ip VARCHAR NOT NULL,
    ip_valid BOOLEAN NOT NULL,
    peer_ip VARCHAR NOT NULL,
    proxy_chain TEXT NOT NULL,
    scheme VARCHAR NOT NULL,
    host VARCHAR NOT NULL,
    app VARCHAR NOT NULL,
    device_key VARCHAR,
    geo_key VARCHAR,
    performer_id VARCHAR,
    performer_key VARCHAR,
    machine_id VARCHAR,
    session_hash VARCHAR,
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS ix_leza_access_action_ts ON leza_access (action, ts);
CREATE INDEX IF NOT EXISTS ix_leza_access_performer_ts ON leza_access (performer_id, ts)
    WHERE performer_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_leza_access_ts_id ON leza_access (ts, id);
CREATE TABLE IF NOT EXISTS leza_audit (
    id VARCHAR NOT NULL,
    ts BIGINT NOT NULL,
    app VARCHAR NOT NULL,
    chain VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    action VARCHAR NOT NULL,
    entity_type VARCHAR NOT NULL,
    entity_id VARCHAR NOT NULL,
    actor_id VARCHAR,
    actor TEXT,
    "before" TEXT,
    "after" TEXT,
    diff TEXT NOT NULL,
    reason TEXT,
    request_id VARCHAR,
    client_ip VARCHAR,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS ix_leza_audit_actor_ts ON leza_audit (actor_id, ts);
CREATE UNIQUE INDEX IF NOT EXISTS ix_leza_audit_chain_seq ON leza_audit (chain, seq);
CREATE INDEX IF NOT EXISTS ix_leza_audit_entity ON leza_audit (entity_type, entity_id, ts);
CREATE INDEX IF NOT EXISTS ix_leza_audit_ts_id ON leza_audit (ts, id);
CREATE TABLE IF NOT EXISTS leza_audit_checkpoint (
    chain VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    hash VARCHAR NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (chain)
);
CREATE TABLE IF NOT EXISTS leza_device (
    "key" VARCHAR NOT NULL,
    user_agent TEXT NOT NULL,
    browser_type VARCHAR NOT NULL,
    browser_name VARCHAR NOT NULL,
    browser_version VARCHAR NOT NULL,
    engine VARCHAR NOT NULL,
    engine_version VARCHAR NOT NULL,
    os_name VARCHAR NOT NULL,
    os_version VARCHAR NOT NULL,
    os_platform VARCHAR NOT NULL,
    device_type VARCHAR NOT NULL,
    device_brand VARCHAR NOT NULL,
    device_model VARCHAR NOT NULL,
    bot_name VARCHAR,
    bot_category VARCHAR NOT NULL,
    bot_url VARCHAR NOT NULL,
    is_mobile BOOLEAN NOT NULL,
    is_tablet BOOLEAN NOT NULL,
    is_pc BOOLEAN NOT NULL,
    is_touch_capable BOOLEAN NOT NULL,
    PRIMARY KEY ("key")
);
CREATE TABLE IF NOT EXISTS leza_geo (
    "key" VARCHAR NOT NULL,
    country_code VARCHAR NOT NULL,
    country_name VARCHAR NOT NULL,
    region_code VARCHAR NOT NULL,
    region_name VARCHAR NOT NULL,
    city VARCHAR NOT NULL,
    zip_code VARCHAR NOT NULL,
    time_zone VARCHAR NOT NULL,
    latitude FLOAT,
    longitude FLOAT,
    metro_code INTEGER NOT NULL,
    PRIMARY KEY ("key")
);
CREATE TABLE IF NOT EXISTS leza_performer (
    "key" VARCHAR NOT NULL,
    performer_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    email VARCHAR NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY ("key")
);
CREATE INDEX IF NOT EXISTS ix_leza_performer_performer_id ON leza_performer (performer_id);
CREATE TABLE IF NOT EXISTS leza_session (
    id VARCHAR NOT NULL,
    app VARCHAR NOT NULL,
    session_start BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason VARCHAR,
    ip VARCHAR NOT NULL,
    machine_id VARCHAR,
    performer_id VARCHAR,
    performer_key VARCHAR,
    device_key VARCHAR,
    geo_key VARCHAR,
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS ix_leza_session_ended_at ON leza_session (ended_at);
CREATE INDEX IF NOT EXISTS ix_leza_session_performer_start
    ON leza_session (performer_id, session_start);
CREATE INDEX IF NOT EXISTS ix_leza_session_start_id ON leza_session (session_start, id);
"""

# Rows that version's code wrote (three requests through its middleware, one of
# them a signed-in user with a session, and three audit records of one chain,
# keyed with SECRET), dumped from its SQLite file. Columns in table order.
# fmt: off
OLD_ROWS: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
    "leza_device": (
        (
            "key", "user_agent", "browser_type", "browser_name", "browser_version", "engine",
            "engine_version", "os_name", "os_version", "os_platform", "device_type",
            "device_brand", "device_model", "bot_name", "bot_category", "bot_url", "is_mobile",
            "is_tablet", "is_pc", "is_touch_capable",
        ),
        [
            (
                "665eb149f5720980fdd8", "curl/8.0", "browser", "curl", "8.0", "", "", "", "", "",
                "", "", "", None, "", "", False, False, False, False,
            ),
            (
                "a28912426c2ea9515316",
                (
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, l"
                    "ike Gecko) Chrome/91.0.4472.124 Safari/537.36"
                ),
                "browser", "Chrome", "91.0", "Blink", "", "Windows", "10", "x64", "desktop", "",
                "", None, "", "", False, False, True, False,
            ),
        ],
    ),
    "leza_geo": (
        (
            "key", "country_code", "country_name", "region_code", "region_name", "city",
            "zip_code", "time_zone", "latitude", "longitude", "metro_code",
        ),
        [
            (
                "81.2.69.128/26", "GB", "United Kingdom", "ENG", "England", "London", "EC1A",
                "Europe/London", 51.5142, -0.0931, 0,
            ),
        ],
    ),
    "leza_performer": (
        (
            "key", "performer_id", "name", "email", "json",
        ),
        [
            (
                "3dea399bb93bb2b5fc39bee6927af62b", "u-1", "Alice Ünïcode", "alice@example.org",
                (
                    '{"clientid":"","email":"alice@example.org","id":"u-1","name":"Alice Ün'
                    'ïcode","organization_id":"","organization_name":"","organization_unit_'
                    'id":null,"organization_unit_labels":null,"organization_unit_name":null'
                    ',"organizations":[],"picture_url":"","role_name":"admin"}'
                ),
            ),
        ],
    ),
    "leza_access": (
        (
            "id", "ts", "action", "method", "endpoint", "route", "status", "duration_us",
            "outcome", "reason", "request_id", "client_ip", "ip_valid", "peer_ip", "proxy_chain",
            "scheme", "host", "app", "device_key", "geo_key", "performer_id", "performer_key",
            "machine_id", "session_hash",
        ),
        [
            (
                "66122919f85babd96a244e552000003", 1795650960197050, "access", "GET",
                "/orders/7?alice=1&token=[Filtered]", "/orders/{oid}", 200, 249, "success",
                "Request completed: 200 OK", "74217fea902ee0e69fc3000000ca42e5", "81.2.69.142",
                True, "10.0.0.1", "", "http", "testserver", "shop", "a28912426c2ea9515316",
                "81.2.69.128/26", "u-1", "3dea399bb93bb2b5fc39bee6927af62b", None,
                "687c1b4547d77c2b92c3236302fd02a5",
            ),
            (
                "66122919fa529bd96a244e552000004", 1795650960205097, "access", "GET", "/orders/8",
                "/orders/{oid}", 200, 218, "success", "Request completed: 200 OK",
                "74217fea902ee0e69fc3000000ca42e6", "161.35.614.165", False, "10.0.0.1", "",
                "http", "testserver", "shop", "665eb149f5720980fdd8", None, None, None,
                "ff852fcb88034f34000000000000", "687c1b4547d77c2b92c3236302fd02a5",
            ),
            (
                "66122919fb233bd96a244e552000005", 1795650960208435, "access", "GET",
                "/login?alice=1", "/login", 200, 277, "success", "Request completed: 200 OK",
                "74217fea902ee0e69fc3000000ca42e7", "81.2.69.142", True, "10.0.0.1", "", "http",
                "testserver", "shop", "a28912426c2ea9515316", "81.2.69.128/26", "u-1",
                "3dea399bb93bb2b5fc39bee6927af62b", "ff852fcb88034f34000000000000",
                "687c1b4547d77c2b92c3236302fd02a5",
            ),
        ],
    ),
    "leza_session": (
        (
            "id", "app", "session_start", "last_seen", "ended_at", "end_reason", "ip",
            "machine_id", "performer_id", "performer_key", "device_key", "geo_key",
        ),
        [
            (
                "687c1b4547d77c2b92c3236302fd02a5", "shop", 1795650960197050, 1795650960197050,
                None, None, "81.2.69.142", None, "u-1", "3dea399bb93bb2b5fc39bee6927af62b",
                "a28912426c2ea9515316", "81.2.69.128/26",
            ),
        ],
    ),
    "leza_audit": (
        (
            "id", "ts", "app", "chain", "seq", "action", "entity_type", "entity_id", "actor_id",
            "actor", "before", "after", "diff", "reason", "request_id", "client_ip", "prev_hash",
            "hash",
        ),
        [
            (
                "66122919fb96abd96a244e552000000", 1795650960210282, "shop", "05f49efa6ce48a2a", 1,
                "update", "role", "42", "admin",
                (
                    '{"clientid":"","email":"","id":"admin","name":"Root Ü","organization_i'
                    'd":"","organization_name":"","organization_unit_id":null,"organization'
                    '_unit_labels":null,"organization_unit_name":null,"organizations":[],"p'
                    'icture_url":"","role_name":""}'
                ),
                '{"password": "[Filtered]", "perms": []}',
                '{"password": "[Filtered]", "perms": [0]}',
                (
                    '{"password": {"after": "[Filtered]", "before": "[Filtered]"}, "perms":'
                    ' {"after": [0], "before": []}}'
                ),
                "ticket #0", None, None, "",
                "3d3313b15de8550aedd21377d0f9c37b09f8214e651067bb124f35fdb5cc62b1",
            ),
            (
                "66122919fb9adbd96a244e552000001", 1795650960210349, "shop", "05f49efa6ce48a2a", 2,
                "update", "role", "42", "admin",
                (
                    '{"clientid":"","email":"","id":"admin","name":"Root Ü","organization_i'
                    'd":"","organization_name":"","organization_unit_id":null,"organization'
                    '_unit_labels":null,"organization_unit_name":null,"organizations":[],"p'
                    'icture_url":"","role_name":""}'
                ),
                '{"password": "[Filtered]", "perms": [0]}',
                '{"password": "[Filtered]", "perms": [0, 1]}',
                (
                    '{"password": {"after": "[Filtered]", "before": "[Filtered]"}, "perms":'
                    ' {"after": [0, 1], "before": [0]}}'
                ),
                "ticket #1", None, None,
                "3d3313b15de8550aedd21377d0f9c37b09f8214e651067bb124f35fdb5cc62b1",
                "575abfb8cdbbd1f4ec9a7323dbc46b572724f8ab6027276b294861f9d346d62e",
            ),
            (
                "66122919fb9c9bd96a244e552000002", 1795650960210377, "shop", "05f49efa6ce48a2a", 3,
                "update", "role", "42", "admin",
                (
                    '{"clientid":"","email":"","id":"admin","name":"Root Ü","organization_i'
                    'd":"","organization_name":"","organization_unit_id":null,"organization'
                    '_unit_labels":null,"organization_unit_name":null,"organizations":[],"p'
                    'icture_url":"","role_name":""}'
                ),
                '{"password": "[Filtered]", "perms": [0, 1]}',
                '{"password": "[Filtered]", "perms": [0, 1, 2]}',
                (
                    '{"password": {"after": "[Filtered]", "before": "[Filtered]"}, "perms":'
                    ' {"after": [0, 1, 2], "before": [0, 1]}}'
                ),
                "ticket #2", None, None,
                "575abfb8cdbbd1f4ec9a7323dbc46b572724f8ab6027276b294861f9d346d62e",
                "384333dec6c75e72729779aad0a1c84ff9dae19e2ec5c0ee3752a3a09e4ff6c7",
            ),
        ],
    ),
    "leza_audit_checkpoint": (
        (
            "chain", "seq", "hash", "ts",
        ),
        [
            (
                "05f49efa6ce48a2a", 3,
                "384333dec6c75e72729779aad0a1c84ff9dae19e2ec5c0ee3752a3a09e4ff6c7",
                1795650960210377,
            ),
        ],
    ),
}
# fmt: on

ALICE = Performer(id="u-1", name="Alice Ünïcode", email="alice@example.org", role_name="admin")
OLD_ACCESS_IDS = [row[0] for row in OLD_ROWS["leza_access"][1]]


# --------------------------------------------------------------------------- helpers


@contextmanager
def engine_of(url: str) -> Iterator[Engine]:
    engine = create_engine(parse_sql_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def make_first_schema(url: str, how: str) -> None:
    """The first released schema: as that version's setup() made it (no version
    table: ``made_by_setup``), or by revision 0001 (``revision_0001``)."""
    if how == "revision_0001":
        assert migrate(url, revision="0001") == MigrationResult(before=None, after="0001")
        return
    assert how == "made_by_setup"
    with engine_of(url) as engine, engine.begin() as conn:
        for statement in SCHEMA_9D84A54.split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def insert_old_rows(url: str) -> None:
    """OLD_ROWS, with plain INSERTs."""
    with engine_of(url) as engine, engine.begin() as conn:
        for table, (columns, rows) in OLD_ROWS.items():
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join(f":c{i}" for i in range(len(columns)))
            conn.execute(
                text(f"INSERT INTO {table} ({names}) VALUES ({marks})"),
                [{f"c{i}": value for i, value in enumerate(row)} for row in rows],
            )


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # SQLite keeps booleans as 0/1


def expected_old_rows() -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted((tuple(map(_plain, row)) for row in rows), key=lambda r: str(r[0]))
        for table, (_, rows) in OLD_ROWS.items()
    }


def old_rows_in(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of OLD_ROWS as the database holds them now, found by primary key
    (each table's first column), every column of the first schema."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine_of(url) as engine, engine.connect() as conn:
        for table, (columns, rows) in OLD_ROWS.items():
            keys = {row[0] for row in rows}
            names = ", ".join(f'"{c}"' for c in columns)
            found = conn.execute(text(f"SELECT {names} FROM {table}"))
            got = [tuple(map(_plain, r)) for r in found if r[0] in keys]
            out[table] = sorted(got, key=lambda r: str(r[0]))
    return out


def at_rest(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """``rows`` without what a running Leza may change in old rows: the old
    session, idle since the data was made, gets ended (last_seen, ended_at,
    end_reason: the idle timeout) by the app once it runs."""
    return {t: [r[:3] + r[6:] for r in v] if t == "leza_session" else v for t, v in rows.items()}


def fingerprint(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, tuple[int, str]]:
    """Row count and a checksum per table."""
    return {
        table: (len(table_rows), hashlib.sha256(repr(table_rows).encode()).hexdigest())
        for table, table_rows in rows.items()
    }


def counts(url: str, tables: tuple[str, ...]) -> dict[str, int]:
    with engine_of(url) as engine, engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def schema_diff(url: str, target: MetaData = metadata) -> list[Any]:
    """Alembic autogenerate's differences between ``target`` and Leza's tables in the database."""
    with engine_of(url) as engine, engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_object": include_object,
                "compare_type": True,
                "version_table": VERSION_TABLE,
            },
        )
        return list(compare_metadata(context, target))


def shape(url: str) -> dict[str, Any]:
    """Every Leza table as reflected: columns, primary key, indexes (with their
    partial-index clauses)."""
    with engine_of(url) as engine, engine.connect() as conn:
        inspector = inspect(conn)
        out: dict[str, Any] = {}
        for table in sorted(inspector.get_table_names()):
            if not table.startswith("leza_") or table == VERSION_TABLE:
                continue
            out[table] = (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                inspector.get_pk_constraint(table)["constrained_columns"],
                sorted(
                    (
                        str(ix["name"]),
                        tuple(map(str, ix["column_names"])),
                        bool(ix["unique"]),
                        sorted((k, str(v)) for k, v in (ix.get("dialect_options") or {}).items()),
                    )
                    for ix in inspector.get_indexes(table)
                ),
            )
        return out


def version_rows(url: str) -> list[str]:
    with engine_of(url) as engine, engine.connect() as conn:
        return list(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


# --------------------------------------------------------------------------- the revisions


def test_revisions_are_one_line_from_0001_to_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    oldest_first = list(reversed(list(script.walk_revisions())))
    assert [s.revision for s in oldest_first] == list(REVISIONS) == [
        "0001", "0002", "0003", "0004", "0005",
    ]  # fmt: skip
    assert [s.down_revision for s in oldest_first] == [None, *REVISIONS[:-1]]
    assert script.get_heads() == [HEAD]


# --------------------------------------------------------------------------- the upgrade


@pytest.mark.parametrize("how", ["made_by_setup", "revision_0001"])
def test_upgrade_from_the_first_schema_loses_nothing(
    storage_url: str,
    how: str,
    make_leza: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = storage_url
    make_first_schema(url, how)
    insert_old_rows(url)
    before = old_rows_in(url)
    assert before == expected_old_rows()
    state = schema_state(url)
    assert (state.recorded, state.revision) == (None if how == "made_by_setup" else "0001", "0001")
    monkeypatch.setenv("LEZA_GEOIP_DB", "off")
    assert cli(["check", "--storage", url]) == 1  # a deploy check catches the missed step
    assert f"FAIL  schema   at 0001; this leza-middleware needs {HEAD}: run `leza migrate`" in (
        capsys.readouterr().out
    )

    assert cli(["migrate", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert f"migrated 0001 to revision {HEAD}" in out
    assert ("recorded its tables (made before migrations) at revision 0001" in out) == (
        how == "made_by_setup"
    )

    # Every old row, unchanged; the new tables, empty; the schema, the models'.
    after = old_rows_in(url)
    assert fingerprint(after) == fingerprint(before)
    assert after == before
    assert counts(url, FIRST_TABLES + NEW_TABLES) == {
        **{t: len(OLD_ROWS[t][1]) for t in FIRST_TABLES},
        **dict.fromkeys(NEW_TABLES, 0),
    }
    assert version_rows(url) == [HEAD]
    assert schema_diff(url) == []
    assert cli(["check", "--storage", url]) == 0
    assert f"OK    schema   at {HEAD} (head)" in capsys.readouterr().out
    with engine_of(url) as engine, engine.connect() as conn:  # the history, backfilled
        for table in TRAFFIC_TABLES:
            total = conn.exec_driver_sql(f"SELECT SUM(requests) FROM {table}").scalar()
            assert total == len(OLD_ROWS["leza_access"][1])

    # The upgraded database serves what the first version wrote ...
    leza = make_leza(
        storage=url,
        secret_key=SECRET,
        app_name="shop",
        trusted_proxies=["10.0.0.1"],
        performer=lambda request: ALICE if "alice" in str(request.url) else None,
    )
    old = {e["_id"]: e for e in leza.query.access(limit=10)}
    assert sorted(old) == sorted(OLD_ACCESS_IDS)
    signed_in = old[OLD_ACCESS_IDS[0]]
    assert signed_in["performer"]["name"] == "Alice Ünïcode"
    assert signed_in["geoLocationInfoOfIp"]["city"] == "London"
    assert signed_in["browser"]["name"] == "Chrome"
    assert signed_in["endpoint"] == "/orders/7?alice=1&token=[Filtered]"
    history = leza.audit.history("role", "42")
    assert [h["reason"] for h in history] == ["ticket #0", "ticket #1", "ticket #2"]

    # ... and takes every kind of event.
    client = TestClient(LezaMiddleware(Starlette(routes=[Route("/orders/{oid}", _ok)]), leza=leza),
                        client=("10.0.0.1", 5000))  # fmt: skip
    headers = {"user-agent": CHROME_UA, "x-forwarded-for": "81.2.69.142"}
    assert client.get("/orders/9?alice=1", headers=headers).status_code == 200
    handler = leza.logging_handler()
    app_log = logging.getLogger("shop.orders")
    app_log.addHandler(handler)
    try:
        app_log.warning("stock low for %s", "sku-1")
    finally:
        app_log.removeHandler(handler)
    now = time.time_ns() // 1000
    leza.record(AdvisoryEvent(id=new_event_id(now), ts=now, rule="new_machine", severity="high",
                              message="alice on a new machine", evidence=[OLD_ACCESS_IDS[0]],
                              performer_id="u-1", ip="81.2.69.142", app="shop"))  # fmt: skip
    leza.record(CheckEvent(id=new_event_id(now), ts=now, check="db", ok=True, state="up",
                           previous="unknown", latency_ms=1.5, app="shop"))  # fmt: skip
    leza.audit.record(action="update", entity_type="role", entity_id="42",
                      before={"perms": [0, 1, 2]}, after={"perms": [0, 1, 2, 3]},
                      actor={"id": "admin"}, reason="ticket #3")  # fmt: skip
    assert leza.flush(5)
    assert leza.stats()["written"] >= 5
    access = leza.query.access(limit=10)
    assert len(access) == 4
    assert access[0]["endpoint"] == "/orders/9?alice=1"
    assert access[0]["performer"]["id"] == "u-1"
    assert [r["message"] for r in leza.query.logs()] == ["stock low for sku-1"]
    assert [r["message"] for r in leza.query.advisories()] == ["alice on a new machine"]
    assert [(r["check"], r["state"]) for r in leza.query.checks()] == [("db", "up")]
    history = leza.audit.history("role", "42")
    assert [h["reason"] for h in history] == ["ticket #0", "ticket #1", "ticket #2", "ticket #3"]
    assert leza.audit.verify()
    assert at_rest(old_rows_in(url)) == at_rest(before)  # the new writes left them alone

    # The audit chains, old and new, verify from the command line.
    monkeypatch.setenv("LEZA_SECRET_KEY", SECRET)
    monkeypatch.setenv("LEZA_SPILL_DIR", str(tmp_path / "cli-spill"))
    assert cli(["verify", "--storage", url]) == 0
    assert "OK: 4 rows in 2 chains" in capsys.readouterr().out


def test_a_failed_upgrade_changes_nothing(storage_url: str) -> None:
    """An upgrade is one transaction: a revision failing half-way leaves the
    database as it was (PostgreSQL and SQLite both roll DDL back)."""
    url = storage_url
    make_first_schema(url, "revision_0001")
    insert_old_rows(url)
    with engine_of(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE leza_check (x INTEGER)")  # in 0002's way, last
    with pytest.raises(DBAPIError, match="leza_check"):
        migrate(url)
    state = schema_state(url)
    assert state.recorded == "0001"
    assert state.tables == {*FIRST_TABLES, "leza_check"}  # 0002's first three: rolled back
    assert old_rows_in(url) == expected_old_rows()


# --------------------------------------------------------------------------- adoption


def make_unrecorded(url: str, revision: str) -> None:
    """Leza's tables at ``revision`` without a recorded version, as setup() of
    that time made them (before migrations): the current models' tables at
    once for head, the revisions up to it then the version table dropped else."""
    if revision == HEAD:
        storage = SQLStorage(url)
        try:
            with storage.engine.begin() as conn:
                storage.create_tables(conn)
        finally:
            storage.close()
        return
    migrate(url, revision=revision)
    with engine_of(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {VERSION_TABLE}")


@pytest.mark.parametrize("revision", ["0002", HEAD])
def test_a_database_made_by_setup_before_migrations_is_adopted(
    storage_url: str, revision: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = storage_url
    make_unrecorded(url, revision)
    insert_old_rows(url)
    state = schema_state(url)
    assert (state.recorded, state.detected, state.revision) == (None, revision, revision)
    assert current_revision(url) == revision
    assert cli(["migrate", "--storage", url, "--current"]) == 1  # not recorded yet
    assert "not recorded: tables made before migrations" in capsys.readouterr().out

    result = migrate(url)
    assert result == MigrationResult(before=revision, after=HEAD, adopted=revision)
    assert result.changed == (revision != HEAD)
    assert version_rows(url) == [HEAD]
    assert old_rows_in(url) == expected_old_rows()
    assert schema_diff(url) == []
    assert cli(["migrate", "--storage", url, "--current"]) == 0


def test_adoption_takes_the_newest_revision_whose_additions_are_all_there() -> None:
    first = frozenset(FIRST_TABLES)
    second = first | {"leza_audit_purge", "leza_log", "leza_advisory", "leza_check"}
    assert SchemaState(None, frozenset()).detected is None
    assert SchemaState(None, first).detected == "0001"
    assert SchemaState(None, first | {"leza_log"}).detected == "0001"  # half of 0002
    assert SchemaState(None, second).detected == "0002"
    assert SchemaState(None, second | {"leza_audit_redaction"}).detected == "0002"  # no column
    both = second | {"leza_audit_redaction"}
    assert SchemaState(None, both, frozenset({"leza_access.headers"})).detected == "0003"
    rollups = both | {"leza_traffic_minute", "leza_traffic_hour"}
    headers = frozenset({"leza_access.headers"})
    assert SchemaState(None, rollups, headers).detected == "0004"
    trace = {"leza_access.headers", "leza_audit.session_id", "leza_advisory.request_id"}
    assert SchemaState(None, rollups, frozenset(trace)).detected == "0004"  # half of 0005
    trace.add("leza_advisory.session_id")
    assert SchemaState(None, rollups, frozenset(trace)).detected == "0005"
    assert SchemaState("0001", both).revision == "0001"  # recorded wins


@pytest.mark.parametrize("schema", ["first", "current"])
def test_setup_records_the_revision_of_a_database_made_before_migrations(
    storage_url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = storage_url
    storage = SQLStorage(url)
    try:
        if schema == "first":
            make_first_schema(url, "made_by_setup")
        else:
            with storage.engine.begin() as conn:
                storage.create_tables(conn)
        insert_old_rows(url)
        with caplog.at_level(logging.INFO, logger="leza_middleware"):
            storage.setup()
    finally:
        storage.close()
    state = schema_state(url)
    assert "tables made before migrations recorded at revision" in caplog.text
    if schema == "current":
        assert state.recorded == HEAD
        assert "leza migrate" not in caplog.text
    else:
        # Recorded as what it is, and otherwise left alone (migrate is off by default).
        assert state.recorded == "0001"
        assert state.tables == set(FIRST_TABLES)
        assert f"at schema revision 0001; this leza-middleware needs {HEAD}" in caplog.text
        assert "leza migrate" in caplog.text
    assert old_rows_in(url) == expected_old_rows()


# --------------------------------------------------------------------------- at startup


def test_the_migrate_setting_upgrades_at_the_first_write(
    storage_url: str, make_leza: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = storage_url
    make_first_schema(url, "revision_0001")
    insert_old_rows(url)
    now = time.time_ns() // 1000

    # Off (the default): left at 0001 with a warning; the kinds whose tables no later
    # revision changed are still written (sessions; audit rows gained a column in 0004).
    leza = make_leza(storage=url, secret_key=SECRET)
    assert leza.storage.auto_migrate is False
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        leza.record(SessionEvent(id=new_event_id(now), ts=now, action="session_start",
                                 session_id="s" * 32, performer=Performer(id="u-9")))  # fmt: skip
        assert leza.flush(5)
    assert "Run `leza migrate --storage URL`" in caplog.text
    assert schema_state(url).recorded == "0001"
    assert [s["_id"] for s in leza.sessions.find(performer_id="u-9")] == ["s" * 32]
    leza.shutdown(2)

    # On: the first write (here a check, whose table 0002 adds) brings it to head.
    leza = make_leza(storage=url, secret_key=SECRET, migrate=True)
    assert leza.storage.auto_migrate is True
    leza.record(CheckEvent(id=new_event_id(now), ts=now, check="web", ok=False, state="down",
                           previous="up", error="HTTP 503"))  # fmt: skip
    assert leza.flush(5)
    assert leza.stats()["spilled"] == 0
    assert version_rows(url) == [HEAD]
    assert [(r["check"], r["state"]) for r in leza.query.checks()] == [("web", "down")]
    assert at_rest(old_rows_in(url)) == at_rest(expected_old_rows())
    assert schema_diff(url) == []


def test_the_migrate_setting_is_a_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings.resolve({}).migrate is False
    assert Settings.resolve({"migrate": "yes"}).migrate is True
    monkeypatch.setenv("LEZA_MIGRATE", "1")
    assert Settings.resolve({}).migrate is True
    leza = Leza(storage=f"sqlite:///{tmp_path / 'leza.db'}", geoip_db=False)
    try:
        assert isinstance(leza.storage, SQLStorage)
        assert leza.storage.auto_migrate is True
    finally:
        leza.shutdown(2)
    monkeypatch.setenv("LEZA_MIGRATE", "perhaps")
    with pytest.raises(LezaConfigError, match=r"migrate \(from \$LEZA_MIGRATE\) must be true or"):
        Settings.resolve({})
    leza = Leza(storage="memory://", geoip_db=False, migrate=True)  # nothing to migrate: fine
    leza.shutdown(2)


# --------------------------------------------------------------------------- idempotence


def test_migrating_twice_is_a_no_op(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = storage_url
    assert migrate(url) == MigrationResult(before=None, after=HEAD)
    reflected = shape(url)
    assert set(reflected) == {*FIRST_TABLES, *NEW_TABLES, *TRAFFIC_TABLES, TRAFFIC_MARK}
    again = migrate(url)
    assert again == MigrationResult(before=HEAD, after=HEAD)
    assert not again.changed
    storage = SQLStorage(url)
    try:
        storage.setup()
    finally:
        storage.close()
    assert shape(url) == reflected
    assert version_rows(url) == [HEAD]
    capsys.readouterr()
    assert cli(["migrate", "--storage", url]) == 0
    assert f"already at revision {HEAD}, nothing to do" in capsys.readouterr().out
    assert cli(["migrate", "--storage", url, "--current"]) == 0
    assert capsys.readouterr().out.endswith(f": {HEAD} (head)\n")


def test_setup_and_the_revisions_make_the_same_schema(storage_url: str) -> None:
    """A fresh setup() takes the short way (the models' tables at once) and
    records head: the revisions, run one by one, must arrive at the same."""
    from alembic import command

    url = storage_url
    storage = SQLStorage(url)
    try:
        storage.setup()
    finally:
        storage.close()
    made_by_setup = shape(url)
    assert version_rows(url) == [HEAD]
    with migration_lock(url) as conn:  # the revisions' downgrades, all the way
        command.downgrade(alembic_config(connection=conn), "base")
    assert schema_state(url).fresh
    assert migrate(url) == MigrationResult(before=None, after=HEAD)
    assert shape(url) == made_by_setup


def test_each_downgrade_undoes_its_upgrade(storage_url: str) -> None:
    """Not used by ``leza migrate`` (it only upgrades), but kept working for
    contributors and operators who roll back by hand with Alembic."""
    from alembic import command

    url = storage_url
    shapes = {}
    for revision in REVISIONS:
        migrate(url, revision=revision)
        shapes[revision] = shape(url)
    for older in reversed(REVISIONS[:-1]):
        with migration_lock(url) as conn:
            command.downgrade(alembic_config(connection=conn), older)
        assert version_rows(url) == [older]
        assert shape(url) == shapes[older]


# --------------------------------------------------------------------------- concurrency


# One worker: opens the storage, says "ready", then migrates (printing the
# MigrationResult's fields) or sets up (printing "ok").
CHILD = """
import sys
from leza_middleware.storage.migrate import migrate
from leza_middleware.storage.sql import SQLStorage

url, what = sys.argv[1], sys.argv[2]
storage = SQLStorage(url)
print("ready", flush=True)
if what == "migrate":
    result = migrate(storage)
    print(result.before, result.after, result.adopted)
else:
    storage.setup()
    print("ok")
storage.close()
"""
WAITING_MIGRATORS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    f"AND classid::bigint = {PG_LOCK_CLASS}"
)


def _race(url: str, what: str, n: int = 4) -> list[str]:
    """``n`` processes start ``what`` while this one holds the migration lock,
    then all contend for it the moment it is released; their last lines."""
    with migration_lock(url) as conn:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, url, what],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(n)
        ]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        if conn.dialect.name == "postgresql":
            # Each is queued on the advisory lock.
            deadline = time.monotonic() + 30
            waiting = 0
            while time.monotonic() < deadline:
                waiting = conn.execute(WAITING_MIGRATORS).scalar_one()
                if waiting == n:
                    break
                time.sleep(0.02)
            assert waiting == n
        else:
            time.sleep(0.5)  # each is in SQLite's busy handler, waiting for BEGIN IMMEDIATE
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        lines.append(out.strip())
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("start", ["empty", "first_schema_with_rows"])
def test_four_migrators_at_once_migrate_once(storage_url: str, start: str) -> None:
    url = storage_url
    if start == "first_schema_with_rows":
        make_first_schema(url, "made_by_setup")
        insert_old_rows(url)
    results = _race(url, "migrate")
    first = None if start == "empty" else "0001"
    # One did the work (adopting the old tables first), three found it done.
    assert sorted(results) == sorted([f"{first} {HEAD} {first}", *[f"{HEAD} {HEAD} None"] * 3])
    assert version_rows(url) == [HEAD]
    assert schema_diff(url) == []
    if start != "empty":
        assert old_rows_in(url) == expected_old_rows()


@pytest.mark.slow
def test_four_workers_setting_up_a_fresh_database_at_once(storage_url: str) -> None:
    url = storage_url
    assert _race(url, "setup") == ["ok"] * 4
    assert version_rows(url) == [HEAD]
    assert schema_diff(url) == []


# --------------------------------------------------------------------------- models vs migrations


def test_models_and_migrations_agree(storage_url: str) -> None:
    """After the revisions, Alembic finds nothing to change: a model changed
    without a revision fails here."""
    url = storage_url
    migrate(url)
    assert schema_diff(url) == []
    # The comparison sees a change (so the assertion above can fail).
    changed = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["leza_access"].append_column(Column("tenant", String(), nullable=True))
    Table("leza_extra", changed, Column("id", Integer, primary_key=True))
    assert sorted(d[0] for d in schema_diff(url, changed)) == ["add_column", "add_table"]


def test_revision_0001_is_the_first_released_schema(storage_url: str) -> None:
    """Revision 0001 makes exactly what setup() of the first schema made: the same
    tables, columns, types, nullability, keys and indexes (partial ones too)."""
    url = storage_url
    make_first_schema(url, "made_by_setup")
    made_by_setup = shape(url)
    assert set(made_by_setup) == set(FIRST_TABLES)
    with engine_of(url) as engine, engine.begin() as conn:
        for table in FIRST_TABLES:
            conn.exec_driver_sql(f"DROP TABLE {table}")
    migrate(url, revision="0001")
    assert shape(url) == made_by_setup


# --------------------------------------------------------------------------- shared database


def test_a_database_shared_with_the_apps_own_alembic(storage_url: str) -> None:
    url = storage_url
    app_tables = MetaData()
    orders = Table("orders", app_tables, Column("id", Integer, primary_key=True),
                   Column("item", String(40)))  # fmt: skip
    with engine_of(url) as engine, engine.begin() as conn:
        app_tables.create_all(conn)
        conn.execute(orders.insert().values(id=1, item="book"))
        conn.exec_driver_sql(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
        )
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('app_0042')")
    migrate(url)
    with engine_of(url) as engine, engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "app_0042"
        leza_context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert leza_context.get_current_revision() == HEAD
        assert conn.execute(orders.select()).all() == [(1, "book")]
        # The app's autogenerate leaves Leza's tables alone with exclude_leza ...
        app_context = MigrationContext.configure(conn, opts={"include_object": exclude_leza})
        assert compare_metadata(app_context, app_tables) == []
        # ... and would drop them without it.
        unfiltered = compare_metadata(MigrationContext.configure(conn), app_tables)
        dropped = {d[1].name for d in unfiltered if d[0] == "remove_table"}
        assert dropped == {*metadata.tables, VERSION_TABLE}
    assert schema_diff(url) == []  # and Leza's sees nothing of the app's


# --------------------------------------------------------------------------- refusals


def test_older_targets_and_newer_databases_are_refused(
    storage_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = storage_url
    migrate(url)
    with pytest.raises(LezaError, match="newer than '0001': leza migrate only upgrades"):
        migrate(url, "0001")
    with pytest.raises(LezaError, match="Can't locate revision identified by '0999'"):
        migrate(url, "0999")
    assert cli(["migrate", "--storage", url, "--revision", "0001"]) == 2
    assert "only upgrades" in capsys.readouterr().err

    # A newer leza-middleware migrated the database: refused, and setup() leaves it alone.
    with engine_of(url) as engine, engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    with pytest.raises(LezaError, match="at revision 0099, which this leza-middleware does not"):
        migrate(url)
    storage = SQLStorage(url)
    try:
        with caplog.at_level(logging.WARNING, logger="leza_middleware"):
            storage.setup()
        assert f"newer than this leza-middleware knows ({HEAD}); left as they are" in caplog.text
    finally:
        storage.close()
    assert version_rows(url) == ["0099"]
    capsys.readouterr()
    monkeypatch.setenv("LEZA_GEOIP_DB", "off")
    assert cli(["check", "--storage", url]) == 0  # a warning
    assert "WARN  schema   at 0099: newer than this leza-middleware" in capsys.readouterr().out


# --------------------------------------------------------------------------- the command line


def test_sql_output_applied_by_hand_upgrades_the_same(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = storage_url
    make_first_schema(url, "made_by_setup")
    insert_old_rows(url)
    capsys.readouterr()
    assert cli(["migrate", "--storage", url, "--sql"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("-- Leza schema of ")
    assert "INSERT INTO leza_alembic_version (version_num) VALUES ('0001')" in script
    assert "CREATE TABLE leza_log" in script
    assert schema_state(url).recorded is None  # printed, not run
    with engine_of(url) as engine:
        raw = engine.raw_connection()
        try:
            if engine.dialect.name == "sqlite":
                raw.driver_connection.executescript(script)  # type: ignore[union-attr]
            else:
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
                raw.driver_connection.execute(script)  # type: ignore[union-attr]
        finally:
            raw.close()
    assert version_rows(url) == [HEAD]
    assert schema_diff(url) == []
    assert old_rows_in(url) == expected_old_rows()


def test_cli_on_a_missing_file_and_on_storage_without_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "leza.db"
    url = f"sqlite:///{db}"
    assert cli(["migrate", "--storage", url, "--current"]) == 1
    assert "no database at" in capsys.readouterr().err
    assert cli(["migrate", "--storage", url, "--sql"]) == 0
    script = capsys.readouterr().out
    assert ": no Leza tables yet\n" in script
    assert "CREATE TABLE leza_alembic_version" in script
    assert not db.exists()  # neither made the file

    assert cli(["migrate", "--storage", url]) == 0
    assert f"migrated a new database to revision {HEAD}" in capsys.readouterr().out
    assert cli(["migrate", "--storage", "memory://"]) == 0
    assert "has no SQL schema: nothing to migrate" in capsys.readouterr().out
    with pytest.raises(LezaConfigError, match="nothing to migrate"):
        migrate("jsonl:///tmp/leza-jsonl")

    # As a program, from another directory: the revisions come from the package.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "leza_middleware", "migrate", "--current"],
        cwd=elsewhere,
        env={**os.environ, "LEZA_STORAGE": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout.endswith(f": {HEAD} (head)\n")) == (0, True), proc.stderr


def test_manage_py_leza_migrate(tmp_path: Path) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command, get_commands, load_command_class
    from django.test import override_settings

    from leza_middleware.cli import COMMANDS
    from leza_middleware.django import get_leza

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    assert get_commands()["leza_migrate"] == "leza_middleware.django"
    command = load_command_class("leza_middleware.django", "leza_migrate")
    assert command.help == COMMANDS["migrate"].help

    url = f"sqlite:///{tmp_path / 'leza.db'}"
    make_first_schema(url, "revision_0001")
    conf = {"storage": url, "geoip_db": False, "spill_dir": str(tmp_path / "spill"),
            "app_name": "djangoproject"}  # fmt: skip
    with override_settings(LEZA=conf):
        try:
            out = io.StringIO()
            call_command("leza_migrate", stdout=out)
            assert f"migrated 0001 to revision {HEAD}" in out.getvalue()
            out = io.StringIO()
            call_command("leza_migrate", current=True, stdout=out)
            assert out.getvalue().endswith(f": {HEAD} (head)\n")
        finally:
            get_leza().shutdown(2)
    assert version_rows(url) == [HEAD]
