"""Retention on every backend: batched purge, ended sessions, audit chains cut at the
head behind signed purge markers (``audit/purge.py``), and the ascending read of
``leza tail -f``.

The backends are those of tests/test_storage.py (memory, JSON Lines, a SQLite
file, PostgreSQL when available).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_storage import (  # fixtures and events shared with the storage suite
    ALICE,
    BACKENDS,
    T0,
    _make,
    ev,
    pg_admin_url,
    postgres_storage,
    sqlite_storage,
    storage,
)

from leza_middleware import Leza
from leza_middleware.errors import LezaError
from leza_middleware.events import AuditEvent, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.performer import Performer
from leza_middleware.storage import QueryFilter, Storage, is_sql

__all__ = ["pg_admin_url", "postgres_storage", "sqlite_storage", "storage"]

SECRET = "purge-tests-secret-key-0123"
DAY = 86_400_000_000


@pytest.fixture(params=[b for b in BACKENDS if b != "clickhouse"])
def every_kind(request: pytest.FixtureRequest, tmp_path: Any) -> Storage:
    """The backends that store sessions and audit rows (ClickHouse stores neither)."""
    s = _make(request, tmp_path)
    s.setup()
    return s


# --------------------------------------------------------------------------- read_after


def test_read_after_pages_oldest_first(storage: Storage) -> None:
    # Three events share one timestamp: the id breaks the tie, as in query().
    events = [ev(n, ts=T0 + (n // 3) * 1000) for n in range(1, 26)]
    storage.write(events)
    expected = sorted((e.ts, e.id) for e in events)
    got: list[tuple[int, str]] = []
    after: tuple[int, str] | None = None
    while True:
        page = storage.read_after("access", after, 7)
        got += [(e.ts, e.id) for e in page]
        if len(page) < 7:
            break
        after = (page[-1].ts, page[-1].id)
    assert got == expected
    # (ts, "") includes every row of that timestamp.
    at = events[10].ts
    assert [e.id for e in storage.read_after("access", (at, ""), 3)] == [
        i for t, i in expected if t >= at
    ][:3]
    assert storage.read_after("access", expected[-1], 10) == []


# --------------------------------------------------------------------------- purge


def test_purge_batches_commit_batch_by_batch(storage: Storage) -> None:
    storage.write([ev(n, ts=T0 + n) for n in range(30)])
    batches = list(storage.purge_batches("access", T0 + 17, batch_size=4))
    assert sum(batches) == 17
    if is_sql(storage):  # SQL: one transaction per batch, the last one short
        assert batches == [4, 4, 4, 4, 1]
    left = storage.query("access", QueryFilter(limit=100)).events
    assert sorted(e.ts for e in left) == [T0 + n for n in range(17, 30)]


def _session(sid: str, ts: int, action: str, reason: str | None = None) -> SessionEvent:
    return SessionEvent(
        id=new_event_id(ts), ts=ts, action=action, session_id=sid, performer=ALICE,
        end_reason=reason,
    )  # fmt: skip


def test_purge_sessions_keeps_active_and_recent_ones(every_kind: Storage) -> None:
    storage = every_kind
    old, recent = T0 - 100 * DAY, T0 - DAY
    storage.write(
        [
            _session("ended-long-ago", old, "session_start"),
            _session("ended-long-ago", old + 1, "session_end", "logout"),
            _session("started-long-ago", old, "session_start"),  # still active
            _session("ended-lately", old, "session_start"),
            _session("ended-lately", recent, "session_end", "revoked"),
        ]
    )
    assert storage.purge("session", T0 - 90 * DAY) == 1
    left = {r.id for r in storage.query("session", QueryFilter(limit=10)).events}
    assert left == {"started-long-ago", "ended-lately"}


# --------------------------------------------------------------------------- audit


@pytest.fixture
def leza(every_kind: Storage, make_leza: Any) -> Leza:
    return make_leza(storage=every_kind, secret_key=SECRET)  # type: ignore[no-any-return]


def changes(leza: Leza, times: list[int]) -> None:
    """Audit rows at the given times (µs), chained in this order."""
    for n, ts in enumerate(times):
        leza.record(
            AuditEvent(
                id=new_event_id(ts), ts=ts, action="update", entity_type="role",
                entity_id="42", after={"n": n}, actor=Performer(id="admin"),
            )
        )  # fmt: skip
    assert leza.flush(5)


def test_audit_purge_cuts_each_chain_at_its_head_and_still_verifies(leza: Leza) -> None:
    old, new = T0 - 100 * DAY, T0
    # Row 4 is old but comes after a new row: a purge by time alone would leave
    # a hole in the chain; the purge stops at the first row too new to go.
    changes(leza, [old, old + 1, old + 2, new, old + 3, new + 1])
    assert sum(leza.audit.purge_batches(T0 - 90 * DAY, batch_size=2)) == 3
    assert sorted(e["seq"] for e in leza.audit.history("role", 42)) == [4, 5, 6]
    result = leza.audit.verify()
    assert result, result.reason
    assert result.rows == 3
    assert "3 older rows of 1 chains purged" in result.reason
    # Nothing more is old enough now, and the writer's chain goes on after the cut.
    assert sum(leza.audit.purge_batches(T0 - 90 * DAY)) == 0
    changes(leza, [new + 2])
    assert leza.audit.verify()
    # Everything old enough: the chain goes whole, its marker keeps the checkpoint whole.
    assert sum(leza.audit.purge_batches(new + 10)) == 4
    assert leza.query.audit() == []
    assert leza.audit.verify(), leza.audit.verify().reason


def test_audit_purge_needs_the_key_and_an_intact_log(leza: Leza, make_leza: Any) -> None:
    changes(leza, [T0 - 100 * DAY, T0])
    keyless = make_leza(storage=leza.storage, secret_key=None)
    with pytest.raises(LezaError, match="secret key"):
        list(keyless.audit.purge_batches(T0))
    other_key = make_leza(storage=leza.storage, secret_key="another-secret-key-0123456")
    with pytest.raises(LezaError, match="does not verify"):
        list(other_key.audit.purge_batches(T0))
    assert len(leza.query.audit()) == 2


def test_interrupted_audit_purge_still_verifies(leza: Leza) -> None:
    changes(leza, [T0 - 100 * DAY + n for n in range(5)] + [T0])
    batches = leza.audit.purge_batches(T0 - 90 * DAY, batch_size=2)
    first = next(batches)
    assert first in (2, 5)  # the markers are stored before the first delete
    batches.close()
    assert leza.audit.verify(), leza.audit.verify().reason
    # The next purge deletes what the interrupted one left behind its marker.
    assert sum(leza.audit.purge_batches(T0 - 90 * DAY)) == 5 - first
    assert [e["seq"] for e in leza.audit.history("role", 42)] == [6]
    result = leza.audit.verify()
    assert (bool(result), result.rows) == (True, 1), result.reason


def test_head_cut_by_hand_or_forged_marker_is_still_caught(tmp_path: Path, make_leza: Any) -> None:
    db = tmp_path / "audit.db"
    leza = make_leza(storage=f"sqlite:///{db}", secret_key=SECRET)
    changes(leza, [T0 - 100 * DAY + n for n in range(4)] + [T0 + n for n in range(3)])
    assert sum(leza.audit.purge_batches(T0 - 90 * DAY)) == 4
    with sqlite3.connect(db) as con:  # the next head row, deleted without the key
        con.execute("delete from leza_audit where seq = 5")
    result = leza.audit.verify()
    assert (result.ok, result.problem, result.seq) == (False, "deleted", 5)
    with sqlite3.connect(db) as con:  # ...and a marker moved to hide it
        con.execute("update leza_audit_purge set seq = 5")
    result = leza.audit.verify()
    assert (result.ok, result.problem) == (False, "deleted")
    assert "not signed with this key" in result.reason
    with sqlite3.connect(db) as con:  # no marker at all: the head is simply missing
        con.execute("delete from leza_audit_purge")
    assert leza.audit.verify().problem == "deleted"
