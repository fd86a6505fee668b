"""Storage by kind: ``storage={"access": …, "log": …, "default": …}`` (storage/routed.py).

Each kind lands in its own backend and is read from it; a backend that fails
spills only its own events (the others are written at once) and they are
replayed once it is back; configuration errors name the entry.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import FlakyStorage, postgres_schema, wait_for
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaConfigError, LezaMiddleware
from leza_middleware.config import Settings
from leza_middleware.events import Event
from leza_middleware.storage import (
    Capability,
    JSONLStorage,
    MemoryStorage,
    QueryFilter,
    RoutedStorage,
    SQLStorage,
    Storage,
    capabilities_of,
    open_storage,
)


def _app(leza: Leza) -> Any:
    async def hello(request: Any) -> PlainTextResponse:
        logging.getLogger("routed.app").warning("hello from the app")
        return PlainTextResponse("hi")

    return LezaMiddleware(Starlette(routes=[Route("/", hello)]), leza=leza)


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        try:
            return int(con.execute(f"select count(*) from {table}").fetchone()[0])
        except sqlite3.OperationalError:  # the table was never made there
            return 0


# -- configuration -------------------------------------------------------------


def test_mapping_opens_one_backend_per_url_and_routes_every_kind(tmp_path: Path) -> None:
    main = f"sqlite:///{tmp_path / 'main.db'}"
    storage = open_storage(
        {
            "access": f"jsonl:///{tmp_path / 'j'}",
            "log": f" jsonl:///{tmp_path / 'j'}",
            "default": main,
        }
    )
    assert isinstance(storage, RoutedStorage)
    assert isinstance(storage.backend("access"), JSONLStorage)
    # equal URLs (spaces aside) share one backend
    assert storage.backend("log") is storage.backend("access")
    for kind in ("audit", "session", "check", "advisory"):
        assert isinstance(storage.backend(kind), SQLStorage)
    assert storage.backend("traffic") is storage.backend("access")
    assert len(storage.backends) == 2
    assert "access+log" in storage.describe()


def test_one_backend_for_everything_is_that_backend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    assert isinstance(open_storage({"default": url}), SQLStorage)
    assert isinstance(open_storage({"access": url, "default": url}), SQLStorage)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({}, "empty"),
        ({"acces": "memory://", "default": "memory://"}, "unknown key 'acces'"),
        ({1: "memory://"}, "unknown key 1"),
        ({"access": "memory://"}, "no backend for log, audit, session, check, advisory"),
        ({"access": "nosuch://x", "default": "memory://"}, "storage['access']:"),
        ({"log": {"default": "memory://"}, "default": "memory://"}, "cannot nest"),
        ({"access": 42, "default": "memory://"}, "storage['access']: storage must be a URL"),
        ({"Access": "memory://", "access ": "memory://", "default": "memory://"}, "given twice"),
        ({"access": "sqlite:////no/such/dir/x.db", "default": "memory://"}, "storage['access']"),
    ],
)
def test_bad_mapping_is_one_clear_error_naming_the_entry(spec: Any, words: str) -> None:
    with pytest.raises(LezaConfigError) as err:
        Leza(storage=spec)
    assert words in str(err.value)


def test_a_backend_without_a_place_for_its_kind_is_refused() -> None:
    class AccessOnly(MemoryStorage):
        def stores(self, kind: str) -> bool:
            return kind == "access"

    with pytest.raises(LezaConfigError, match=r"storage\['log'\]: .* no place for log events"):
        open_storage({"default": AccessOnly(), "access": "memory://"})


def test_env_splits_the_stream_by_kind(tmp_path: Path) -> None:
    env = {
        "LEZA_STORAGE": f"sqlite:///{tmp_path / 'main.db'}",
        "LEZA_STORAGE_ACCESS": f"jsonl:///{tmp_path / 'a'}",
        "LEZA_STORAGE_LOG": "   ",  # empty: not a route
    }
    settings = Settings.resolve({}, environ=env)
    assert settings.storage == {
        "access": f"jsonl:///{tmp_path / 'a'}",
        "default": f"sqlite:///{tmp_path / 'main.db'}",
    }
    storage = open_storage(settings.storage)
    assert isinstance(storage, RoutedStorage)
    assert isinstance(storage.backend("log"), SQLStorage)
    # an explicit storage= wins over every variable
    assert Settings.resolve({"storage": "memory://"}, environ=env).storage == "memory://"


def test_env_kind_without_leza_storage_keeps_the_default_for_the_rest(tmp_path: Path) -> None:
    settings = Settings.resolve({}, environ={"LEZA_STORAGE_LOG": "memory://"})
    assert isinstance(settings.storage, dict)
    assert settings.storage["log"] == "memory://"
    assert settings.storage["default"].startswith("sqlite")


def test_the_mapping_is_copied() -> None:
    spec = {"access": "memory://", "default": "memory://"}
    settings = Settings.resolve({"storage": spec})
    spec["access"] = "nosuch://"
    assert settings.storage == {"access": "memory://", "default": "memory://"}


class NoPurge(MemoryStorage):
    capabilities = capabilities_of(MemoryStorage()) - {Capability.PURGE}


class NoErasure(MemoryStorage):
    capabilities = capabilities_of(MemoryStorage()) - {Capability.ERASURE}


def test_capabilities_follow_the_backend_of_each_kind(tmp_path: Path) -> None:
    sql = f"sqlite:///{tmp_path / 'main.db'}"
    # JSON Lines keeps no rollups: STATE's traffic needs the access backend's.
    routed = open_storage({"access": f"jsonl:///{tmp_path / 'j'}", "default": sql})
    assert not routed.supports(Capability.ROLLUPS)
    assert routed.supports(Capability.AUDIT_CHAIN)
    routed = open_storage({"log": f"jsonl:///{tmp_path / 'j'}", "default": sql})
    assert routed.supports(Capability.ROLLUPS)
    assert routed.supports(Capability.AUDIT_CHAIN)
    assert routed.supports(Capability.AUDIT_PURGE)
    assert routed.supports(Capability.ERASURE)  # both backends can erase
    # erasure must reach every backend: one that cannot erase takes it away
    routed = open_storage({"log": NoErasure(), "default": sql})
    assert not routed.supports(Capability.ERASURE)
    assert routed.supports(Capability.COUNT)
    # retention is checked against the backend of each kind it names
    with pytest.raises(LezaConfigError, match="retention"):
        Leza(storage={"log": NoPurge(), "default": sql}, retention={"log": "30d"})
    leza = Leza(storage={"log": NoPurge(), "default": sql}, retention={"access": "30d"})
    assert isinstance(leza.storage, RoutedStorage)
    leza.shutdown(1)


# -- a real app, each kind in its own store --------------------------------------


def test_each_kind_is_written_to_and_read_from_its_own_store(
    make_leza: Any, tmp_path: Path
) -> None:
    access_db, main_db = tmp_path / "access.db", tmp_path / "main.db"
    leza = make_leza(
        storage={
            "access": f"sqlite:///{access_db}",
            "log": f"jsonl:///{tmp_path / 'logs'}",
            "default": f"sqlite:///{main_db}",
        }
    )
    logger = logging.getLogger("routed.app")
    handler = leza.logging_handler()
    logger.addHandler(handler)
    try:
        with TestClient(_app(leza)) as client:
            for _ in range(5):
                assert (
                    client.get("/", headers={"user-agent": "Mozilla/5.0 Firefox/125.0"}).text
                    == "hi"
                )
        leza.audit.record(action="create", entity_type="user", entity_id=7, after={"n": 1})
        assert leza.flush(10)
    finally:
        logger.removeHandler(handler)
    assert _rows(access_db, "leza_access") == 5
    assert _rows(main_db, "leza_access") == 0
    assert _rows(main_db, "leza_audit") == 1
    assert _rows(access_db, "leza_audit") == 0
    lines = [
        json.loads(x)
        for f in (tmp_path / "logs").glob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert sum(1 for x in lines if x.get("kind") == "log") == 5
    assert _rows(main_db, "leza_log") == 0
    # the read side sees every kind where it lives
    q = leza.query
    assert len(q.access(limit=50)) == 5
    assert len(q.logs(limit=50)) == 5
    assert len(q.audit(limit=50)) == 1
    state = q.state()
    assert state["traffic"]["kept"] is True
    assert state["requests"] == 5
    assert leza.stats()["written"] == leza.stats()["enqueued"]


@pytest.mark.usefixtures("postgres_url")
def test_access_and_logs_apart_from_audit_on_postgresql(
    make_leza: Any, tmp_path: Path, postgres_url: str
) -> None:
    with postgres_schema(postgres_url) as pg:
        access_db = tmp_path / "access.db"
        leza = make_leza(
            storage={
                "access": f"sqlite:///{access_db}",
                "log": f"sqlite:///{access_db}",
                "default": pg,
            }
        )
        with TestClient(_app(leza)) as client:
            for _ in range(3):
                client.get("/")
        leza.audit.record(
            action="update", entity_type="order", entity_id=1, before={"a": 1}, after={"a": 2}
        )
        assert leza.flush(10)
        assert _rows(access_db, "leza_access") == 3
        assert _rows(access_db, "leza_audit") == 0
        assert len(leza.query.audit(limit=10)) == 1
        assert leza.audit.verify().ok
        pg_storage = leza.storage.backend("audit")
        assert isinstance(pg_storage, SQLStorage)
        assert pg_storage.count("access", QueryFilter()) == 0
        leza.shutdown(5)


# -- one backend down --------------------------------------------------------------


def test_a_failing_backend_spills_only_its_events_and_replays_them(
    make_leza: Any, tmp_path: Path
) -> None:
    logs = FlakyStorage()
    access = MemoryStorage()
    leza = make_leza(storage={"access": access, "log": logs, "default": "memory://"})
    logger = logging.getLogger("routed.app")
    handler = leza.logging_handler()
    logger.addHandler(handler)
    try:
        logs.down = True
        with TestClient(_app(leza)) as client:
            for _ in range(4):
                client.get("/")
            assert leza.flush(10)
            # the access events were written at once; the logs' are in the spill
            assert len(access.query("access", QueryFilter(limit=50)).events) == 4
            assert logs.query("log", QueryFilter(limit=50)).events == []
            stats = leza.stats()
            assert stats["spilled"] == 4
            assert stats["written"] == 4
            assert stats["dropped"] == 0
            # still down: the next batch again writes access and spills logs,
            # without trying the paused backend
            calls = logs.write_calls
            client.get("/")
            assert leza.flush(10)
            assert logs.write_calls == calls
            assert len(access.query("access", QueryFilter(limit=50)).events) == 5
            logs.down = False
            assert wait_for(lambda: len(logs.query("log", QueryFilter(limit=50)).events) == 5, 15)
    finally:
        logger.removeHandler(handler)
    stats = leza.stats()
    assert stats["replayed"] == 5
    assert stats["dropped"] == 0
    # nothing stored twice on either side
    assert len(access.query("access", QueryFilter(limit=50)).events) == 5
    assert len({e.id for e in logs.query("log", QueryFilter(limit=50)).events}) == 5


class RefusesOne(MemoryStorage):
    """Refuses, for its content, any log whose message says so (a NUL byte a real
    database refuses: a fault of values, not of the store)."""

    def write(self, events: Sequence[Event]) -> None:
        if any("refuse me" in getattr(e, "message", "") for e in events):
            raise ValueError("cannot store this value (test)")
        super().write(events)


def test_a_refused_event_in_one_backend_is_isolated_not_spilled(make_leza: Any) -> None:
    logs = RefusesOne()
    access = MemoryStorage()
    leza = make_leza(storage={"access": access, "log": logs, "default": "memory://"})
    logger = logging.getLogger("routed.refuse")
    logger.propagate = False
    handler = leza.logging_handler()
    logger.addHandler(handler)
    try:
        for i in range(6):
            logger.warning("refuse me" if i == 3 else f"fine {i}")
        assert leza.flush(10)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    stats = leza.stats()
    assert len(logs.query("log", QueryFilter(limit=50)).events) == 5
    assert stats["dropped_by_reason"].get("unstorable") == 1
    assert stats["spilled"] == 0


class NoSessions(MemoryStorage):
    """A store of access and logs only (as ClickHouse is)."""

    def stores(self, kind: str) -> bool:
        return kind not in ("session", "audit", "check")


def test_a_storage_without_sessions_is_refused_while_sessions_are_on() -> None:
    # The revocation blocklist could never load: every request with a session
    # cookie would be refused. Said at start-up instead, with the way out.
    with pytest.raises(LezaConfigError, match=r"keeps no session events.*storage-by-kind"):
        Leza(storage=NoSessions())
    leza = Leza(storage=NoSessions(), sessions=False)
    leza.shutdown(1)
    routed = Leza(storage={"access": NoSessions(), "log": NoSessions(), "default": "memory://"})
    assert isinstance(routed.storage, RoutedStorage)
    routed.shutdown(1)


# -- outages: pauses, periodic work, setup ------------------------------------------


class Unreachable(MemoryStorage):
    """Raises like a server that is gone, on writes and reads (and setup when
    ``setup_down``); counts the calls that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.setup_down = False
        self.calls = 0

    def setup(self) -> None:
        self.calls += 1
        if self.setup_down:
            raise ConnectionError("cannot reach the server (test)")

    def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("cannot reach the server (test)")
        super().write(events)

    def query(self, kind: str, flt: QueryFilter) -> Any:
        self.calls += 1
        if self.down:
            raise ConnectionError("cannot reach the server (test)")
        return super().query(kind, flt)


def _access(n: int, ts: int = 1_700_000_000_000_000) -> Any:
    from test_storage import ev

    return ev(n, ts=ts + n)


def _audit(n: int) -> Any:
    from leza_middleware.events import AuditEvent

    return AuditEvent(
        id=f"u{n:06d}",
        ts=1_700_000_000_000_000 + n,
        action="update",
        entity_type="t",
        entity_id="1",
    )


def _split(stream: Storage, rest: Storage) -> RoutedStorage:
    """access, log and advisory on ``stream`` (as ClickHouse), the rest on ``rest``."""
    return RoutedStorage({
        **dict.fromkeys(("access", "log", "advisory"), stream),
        **dict.fromkeys(("audit", "session", "check"), rest),
    })  # fmt: skip


def test_periodic_work_skips_a_paused_backend_and_reads_by_the_app_still_try(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leza_middleware.storage import routed as routed_module
    from leza_middleware.storage.routed import BackendPaused, PartialWriteError, periodic

    ch, main = Unreachable(), MemoryStorage()
    routed = _split(ch, main)
    routed.setup()
    ch.down = True
    caplog.set_level(logging.WARNING, logger="leza_middleware")
    with pytest.raises(PartialWriteError) as err:
        routed.write([_access(1), _audit(1)])
    assert [e.id for e in err.value.failed] == ["e000001"]
    assert main.query("audit", QueryFilter()).events[0].id == "u000001"
    calls = ch.calls
    with periodic(routed):
        with pytest.raises(BackendPaused):
            routed.query("access", QueryFilter())  # no I/O: the backend is paused
        with pytest.raises(BackendPaused):
            list(routed.purge_batches("log", 0))
        assert routed.query("audit", QueryFilter()).events  # the other backend works
    assert ch.calls == calls
    with pytest.raises(ConnectionError):  # the app's, the admin view's reads always try
        routed.query("access", QueryFilter())
    assert ch.calls == calls + 1
    (mine, other) = routed.backend_stats()
    assert mine["kinds"] == ["access", "log", "advisory"]
    assert (mine["down"], mine["outages"], mine["failures"], mine["skipped"]) == (True, 1, 1, 2)
    assert mine["paused_for"] > 0
    assert "ConnectionError" in mine["last_error"]
    assert (other["down"], other["failures"], other["skipped"]) == (False, 0, 0)
    # when the pause is over, periodic work tries again: a failure there pauses
    # it for longer, without another warning
    routed._health[0].until = 0.0
    with periodic(routed), pytest.raises(BackendPaused) as paused:
        routed.query("access", QueryFilter())
    assert isinstance(paused.value.__cause__, ConnectionError)
    assert routed.backend_stats()[0]["failures"] == 2
    assert routed._health[0].pause == 2.0
    # it works again, then fails at once (one shard of two hung: a batch whose
    # rows all go to the other one is taken): the same outage, a longer pause
    routed._health[0].until = 0.0
    ch.down = False
    with periodic(routed):
        assert routed.query("access", QueryFilter()).events == []
    assert routed.backend_stats()[0]["down"] is False
    ch.down = True
    with pytest.raises(PartialWriteError):
        routed.write([_access(3)])
    assert routed.backend_stats()[0]["outages"] == 1
    assert routed._health[0].pause == 4.0
    # back for good: the outage ends once it has worked for a while, said once
    routed._health[0].until = 0.0
    ch.down = False
    routed.write([_access(2)])
    assert not [r for r in caplog.records if "is back after" in r.getMessage()]
    monkeypatch.setattr(routed_module, "_STEADY", 0.0)
    assert routed.backend_stats()[0]["down"] is False
    routed.write([_access(4)])
    lines = [r.getMessage() for r in caplog.records]
    assert sum("failed (ConnectionError" in m for m in lines) == 1, lines
    assert sum("is back after" in m and "2 periodic task(s) skipped" in m for m in lines) == 1


def test_a_backend_that_hangs_is_paused_three_times_as_long_as_it_took() -> None:
    from leza_middleware.storage.routed import PartialWriteError

    slow = FlakyStorage()
    slow.down, slow.delay = True, 0.5  # fails after 0.5 s, as a timeout would
    routed = _split(slow, MemoryStorage())
    with pytest.raises(PartialWriteError):
        routed.write([_access(1)])
    assert routed.backend_stats()[0]["paused_for"] > 1.2  # not the first pause's 1 s


def test_a_backend_down_at_setup_spills_only_its_events(make_leza: Any) -> None:
    ch = Unreachable()
    ch.setup_down = ch.down = True
    leza = make_leza(storage={"access": ch, "log": ch, "default": "memory://"})
    with TestClient(_app(leza)) as client:
        for _ in range(3):
            client.get("/")
        leza.audit.record(action="create", entity_type="user", entity_id=1, after={"a": 1})
        assert leza.flush(10)
        # the audit row is written, the access events spilled, nothing retried in place
        assert len(leza.query.audit(limit=10)) == 1
        stats = leza.stats()
        assert stats["spilled"] == 3  # the access events
        assert stats["storage_down"] is False
        assert stats["backends"][0]["down"] is True
        ch.setup_down = ch.down = False
        assert wait_for(lambda: len(ch.query("access", QueryFilter(limit=50)).events) == 3, 40)
    assert wait_for(lambda: leza.stats()["replayed"] == 3, 10)
    assert leza.stats()["backends"][0]["down"] is False


def test_retention_of_a_paused_backend_waits_and_the_other_backends_goes_on(
    make_leza: Any,
) -> None:
    ch, main = Unreachable(), MemoryStorage()
    old = 1_000_000_000_000_000  # 2001: older than any retention
    main.write([_audit(1)])
    leza = make_leza(
        storage={"access": main, "log": ch, "default": main},
        retention={"access": "1d", "log": "1d"},
        retention_interval=1,
    )
    main.write([_access(n, ts=old) for n in range(5)])
    ch.write([_log(n, ts=old) for n in range(5)])
    ch.down = True
    leza.recorder.offer(_log(99, ts=old))  # its write fails: the log backend is paused
    assert leza.flush(10)
    assert leza.stats()["backends"][1]["down"] is True
    # access on the other backend is purged meanwhile; the log purge waits
    assert wait_for(lambda: leza.privacy.purged.get("access") == 5, 10)
    assert wait_for(lambda: leza.stats()["backends"][1]["skipped"] > 0, 10)
    assert leza.privacy.purged.get("log", 0) == 0
    ch.down = False
    assert wait_for(lambda: leza.privacy.purged.get("log", 0) >= 5, 40)
    assert leza.stats()["backends"][1]["down"] is False


def _log(n: int, ts: int) -> Any:
    from leza_middleware.events import LogEvent

    return LogEvent(id=f"l{n:06d}", ts=ts + n, level=20, logger="t", message="m")
