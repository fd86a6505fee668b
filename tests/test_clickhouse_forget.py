"""Erasure (``leza forget``) on ClickHouse (storage/clickhouse_erase.py), on real
servers: one server and two shards (``ch_any``), and through a storage mapping
with access, log and advisory on ClickHouse and the rest on SQLite, from the
command line. Every column of every table on every server is searched for the
person afterwards; replayed copies go too; STATE's traffic stops counting
their requests in hours whose raw rows are kept, and settles them again."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from test_privacy import ALICE, ALICE_STRINGS, BOB, LONDON_IP, SECRET_KEY, hits, old_access

from leza_middleware.events import AccessEvent, AdvisoryEvent, Event, LogEvent, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.performer import Performer
from leza_middleware.storage import Capability, MemoryStorage
from leza_middleware.storage.clickhouse import ClickHouseStorage

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")

HOUR = 3_600_000_000
T0 = 1_767_225_600_000_000 + 9 * HOUR  # 2026-01-01T09:00Z


def everything(ch: ClickHouseStorage) -> dict[str, str]:
    """Every value of every row of every table of the database, per server and table."""
    texts: dict[str, str] = {}
    for shard in ch.shards():
        tables = ch.execute(
            "SELECT name FROM system.tables WHERE database = %(d)s AND engine LIKE '%%MergeTree'",
            {"d": ch.database},
        )
        for (name,) in tables:
            rows = ch.execute(f"SELECT * FROM `{ch.database}`.{name}", shard=shard)
            texts[f"{shard.num}:{name}"] = "\n".join(map(repr, rows))
    return texts


def people_events() -> list[Event]:
    alice, bob = Performer(**ALICE), Performer(**BOB)
    events: list[Event] = []
    for i in range(30):  # hers, over three hours
        e = old_access(T0 + i * 360_000_000, i, alice)
        events.append(e)
        events.append(LogEvent(id=new_event_id(e.ts), ts=e.ts, level=20, logger="app",
                               message=f"in her request {i}", request_id=e.request_id))  # fmt: skip
    for i in range(30, 60):  # his
        events.append(old_access(T0 + i * 120_000_000, i, bob))
    events += [
        AccessEvent.build(
            id=new_event_id(T0 + 7), ts=T0 + 7, action="login_failed", method="POST",
            endpoint=f"/users/{ALICE['id']}?x=1", route="/users/{id}", status=401,
            duration_us=9, outcome="failure", reason="no such user 'ALICE@example.com'",
            request_id="rid-bob-1", client_ip="1.2.3.4", ip_valid=True, peer_ip="1.2.3.4",
            performer=bob,
        ),
        LogEvent(id=new_event_id(T0 + 8), ts=T0 + 8, level=40, logger="mail",
                 message=f"mail to {ALICE['email']} bounced", exception=f"Error: {ALICE['name']}",
                 request_id="rid-bob-1", performer_id=BOB["id"]),
        LogEvent(id=new_event_id(T0 + 9), ts=T0 + 9, level=20, logger="app",
                 message="hers, by id", performer_id=ALICE["id"]),
        AdvisoryEvent(id=new_event_id(T0 + 10), ts=T0 + 10, rule="new_machine", severity="low",
                      message=f"{ALICE['name']} signed in from a new machine",
                      performer_id=ALICE["id"], details={"email": ALICE["email"]}),
        AdvisoryEvent(id=new_event_id(T0 + 11), ts=T0 + 11, rule="burst", severity="high",
                      message=f"burst of failed logins for {ALICE['email']}",
                      details={"username": ALICE["email"], ALICE["name"]: [ALICE["id"]]}),
    ]  # fmt: skip
    return events


def test_forget_on_clickhouse(ch_any: ClickHouseStorage) -> None:
    ch = ch_any
    events = people_events()
    ch.write(events)
    ch.write(events[::3])  # replayed copies: erased too
    assert ch.supports(Capability.ERASURE)
    assert ch.performer_identities(ALICE["id"]) == [Performer(**ALICE)]
    kept = [e for e in events if e.kind == "access" and e.performer_id != ALICE["id"]]
    reference = MemoryStorage()
    reference.write(kept)
    window = (T0 - HOUR, T0 + 4 * HOUR - 1, 3600)
    assert ch.settle_traffic(T0 + 5 * HOUR) > 0  # her hours are settled first
    assert ch.traffic(*window).totals.requests == 61
    assert hits(everything(ch), ALICE_STRINGS)

    counts = ch.forget_performer(ALICE["id"], [ALICE["id"], ALICE["email"], ALICE["name"]])

    assert counts["access"] == 30
    assert counts["logs"] == 31  # her 30 requests' records, and the one with her id
    assert counts["advisories"] == 1
    assert hits(everything(ch), ALICE_STRINGS) == []
    assert counts["scrubbed"] == 3  # Bob's failed login, the mail log, the burst
    assert hits(everything(ch), ALICE_STRINGS) == []
    from leza_middleware.storage import QueryFilter

    access = ch.query("access", QueryFilter(limit=100)).events
    assert len(access) == 31
    failed = next(e for e in access if e.request_id == "rid-bob-1")
    assert isinstance(failed, AccessEvent)
    assert failed.endpoint == "/users/[Forgotten]?x=1"
    assert failed.reason == "no such user '[Forgotten]'"
    logs = ch.query("log", QueryFilter(limit=100)).events
    assert [(e.message, e.exception) for e in logs if isinstance(e, LogEvent)] == [
        ("mail to [Forgotten] bounced", "Error: [Forgotten]")
    ]
    (burst,) = ch.query("advisory", QueryFilter(limit=100)).events
    assert isinstance(burst, AdvisoryEvent)
    assert burst.details == {"username": "[Forgotten]", "[Forgotten]": ["[Forgotten]"]}
    # STATE: her hours are read live without her at once, then settled again.
    assert ch.traffic(*window) == reference.traffic(*window)
    assert ch.settle_traffic(T0 + 5 * HOUR) > 0
    assert ch.traffic(*window) == reference.traffic(*window)
    # Twice is harmless.
    again = ch.forget_performer(ALICE["id"], [ALICE["id"], ALICE["email"]])
    assert again == dict.fromkeys(counts, 0)


def test_forget_through_a_mapping_from_the_command_line(
    clickhouse_storage: ClickHouseStorage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_leza: Any,
) -> None:
    from leza_middleware.cli import main

    ch = clickhouse_storage
    url = ch.url.describe()
    sqlite_url = f"sqlite:///{tmp_path / 'rest.db'}"
    mapping = {"access": url, "log": url, "advisory": url, "default": sqlite_url}
    leza = make_leza(storage=mapping)
    alice = Performer(**ALICE)
    now = time.time_ns() // 1000
    leza.storage.write(
        [
            *people_events(),
            SessionEvent(id=new_event_id(now), ts=now, action="session_start",
                         session_id="s-alice", performer=alice, ip=LONDON_IP),
        ]
    )  # fmt: skip
    leza.audit.record(action="update", entity_type="user", entity_id=ALICE["id"], actor=alice,
                      after={"email": ALICE["email"]})  # fmt: skip
    assert leza.flush(5)
    assert leza.storage.supports(Capability.ERASURE)
    leza.shutdown(5)

    monkeypatch.setenv("LEZA_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("LEZA_STORAGE", sqlite_url)
    for kind in ("access", "log", "advisory"):
        monkeypatch.setenv(f"LEZA_STORAGE_{kind.upper()}", url)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["forget", "--performer", ALICE["id"], "--yes"]) == 0
    said = out.getvalue()
    assert "30 access events, 31 log records and 1 advisories deleted" in said
    assert "1 sessions made anonymous" in said
    assert "1 audit rows redacted" in said
    assert main(["verify"]) == 0
    assert hits(everything(ch), ALICE_STRINGS) == []
    import sqlite3

    with sqlite3.connect(tmp_path / "rest.db") as con:
        dump = "\n".join(con.iterdump())
    assert not [s for s in ALICE_STRINGS if s.lower() in dump.lower()]
