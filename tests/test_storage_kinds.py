"""The log, advisory and check kinds on every backend: round trip, filters, uptime counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_storage import (  # noqa: F401 - the backends and their fixtures
    BACKENDS,
    _make,
    pg_admin_url,
    postgres_storage,
    sqlite_storage,
)

from leza_middleware.availability.uptime import check_states, last_result, uptime
from leza_middleware.events import AdvisoryEvent, CheckEvent, LogEvent
from leza_middleware.storage import Storage
from leza_middleware.storage.base import QueryFilter

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


# Checks are not ClickHouse's (test_storage_clickhouse.py has its log and advisory kinds).
@pytest.fixture(params=[b for b in BACKENDS if b != "clickhouse"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    s = _make(request, tmp_path)
    s.setup()
    return s


def _log(n: int, level: int = 20, performer: str | None = "alice") -> LogEvent:
    return LogEvent(id=f"L{n:04d}", ts=T0 + n, level=level, logger="app.orders",
                    message=f"message {n} «ünïcode»",
                    exception="Traceback…" if level >= 40 else None,
                    request_id=f"r{n}", performer_id=performer, route="/orders/{oid}",
                    origin="orders.py:12 in place")  # fmt: skip


def _advisory(n: int, rule: str = "new_machine", performer: str = "alice") -> AdvisoryEvent:
    return AdvisoryEvent(id=f"A{n:04d}", ts=T0 + n, rule=rule, severity="high",
                         message=f"finding {n}", evidence=[f"E{n}", f"E{n + 1}"],
                         performer_id=performer, ip="81.2.69.142",
                         details={"machine": "m-1", "km": 16000.5})  # fmt: skip


def _probe(n: int, check: str, state: str, previous: str, ok: bool) -> CheckEvent:
    return CheckEvent(id=f"C{n:04d}", ts=T0 + n * 1_000_000, check=check, ok=ok, state=state,
                      previous=previous, latency_ms=1.5 * n,
                      error=None if ok else "HTTP 503")  # fmt: skip


def test_new_kinds_round_trip_exactly(storage: Storage) -> None:
    events = [_log(1), _log(2, level=40), _advisory(3), _probe(4, "web", "up", "unknown", True)]
    storage.write(events)
    storage.write(events)  # replayed: still stored once
    for e in events:
        page = storage.query(e.kind, QueryFilter(limit=10))
        assert [x for x in page.events if x.id == e.id] == [e]
    assert len(storage.query("log", QueryFilter()).events) == 2


def test_new_kinds_filter_by_action_and_performer(storage: Storage) -> None:
    storage.write([_log(n, level=40 if n % 2 else 20, performer="bob" if n > 6 else "alice")
                   for n in range(1, 9)])  # fmt: skip
    errors = storage.query("log", QueryFilter(action="error")).events
    assert [e.id for e in errors] == ["L0007", "L0005", "L0003", "L0001"]
    bobs = storage.query("log", QueryFilter(performer_id="bob")).events
    assert [e.id for e in bobs] == ["L0008", "L0007"]

    storage.write([_advisory(1), _advisory(2, rule="burst", performer="bob")])
    assert [e.id for e in storage.query("advisory", QueryFilter(action="burst")).events] == [
        "A0002"
    ]
    # A check's subject is the check: the performer filter picks one check's probes.
    storage.write([_probe(1, "web", "up", "unknown", True), _probe(2, "db", "up", "unknown", True)])
    assert [e.id for e in storage.query("check", QueryFilter(performer_id="db")).events] == [
        "C0002"
    ]


def test_uptime_counts_states_per_check(storage: Storage) -> None:
    probes = [_probe(1, "web", "up", "unknown", True)]
    probes += [_probe(n, "web", "up", "up", True) for n in range(2, 8)]
    probes += [_probe(8, "web", "up", "up", False), _probe(9, "web", "down", "up", False)]
    probes += [_probe(10, "web", "down", "down", False), _probe(11, "db", "down", "unknown", False)]
    storage.write(probes)
    assert check_states(storage, "web", T0) == {"up": 8, "down": 2}
    assert uptime(storage, "web", T0) == 80.0
    assert uptime(storage, "web", T0 + 9 * 1_000_000) == 0.0  # the last two probes only
    assert uptime(storage, "nothing", T0) is None
    last = last_result(storage, "web")
    assert last is not None
    assert last.id == "C0010"
    assert last.state == "down"
