"""STATE from storage alone: ``leza.query.state()`` and what it is built from.

A known history is written through each backend (memory, JSON Lines, SQLite,
PostgreSQL) with times the test chooses: requests per endpoint and outcome, a
slow endpoint, logins, sessions in several countries and devices (active,
ended, stale), availability checks with an outage that recovered, one still
down and one long gone, advisories of every severity. The state of the last
24 hours must show exactly that, the same on every backend that keeps rollups,
and everything but the traffic (with one sentence saying why) on one that
does not.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_schema

from leza_middleware import Leza, Performer
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    CheckEvent,
    Device,
    Geo,
    SessionEvent,
    iso_from_us,
)
from leza_middleware.state.build import (
    MAX_DAYS,
    WindowError,
    build_state,
    state_window,
)
from leza_middleware.state.services import (
    Change,
    incidents,
    slots_of,
    timeline,
    uptime_share,
)
from leza_middleware.storage import JSONLStorage, MemoryStorage, SQLStorage, Storage

US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR
#: "Now" for the built history: a minute boundary plus 30 s, well inside a day.
NOW = 1_780_000_020 * US + 30 * US

DESKTOP = Device(key="ua-desktop", user_agent="desktop ua", device_type="desktop")
PHONE = Device(key="ua-phone", user_agent="phone ua", device_type="smartphone")
BERLIN = Geo(key="1.2.3.0/24", country_code="DE", country_name="Germany", city="Berlin")
AMSTERDAM = Geo(key="5.6.7.0/24", country_code="NL", country_name="Netherlands")

_n = 0


def _id(ts: int) -> str:
    global _n
    _n += 1
    return f"{ts:016x}{_n:012x}"


def access(
    ts: int, method: str, route: str | None, status: int, *, ms: float = 2.0,
    action: str = "access", outcome: str | None = None,
) -> AccessEvent:  # fmt: skip
    if outcome is None:
        outcome = (
            "success" if status < 400 else "denied" if status in (401, 403)
            else "error" if status >= 500 else "failure"
        )  # fmt: skip
    return AccessEvent.build(
        id=_id(ts), ts=ts, action=action, method=method, endpoint=route or "/nowhere",
        route=route, status=status, duration_us=int(ms * 1000), outcome=outcome, reason="r",
        request_id=f"r{_n}", client_ip="10.0.0.1", ip_valid=True, peer_ip="10.0.0.1",
    )  # fmt: skip


def check(ts: int, name: str, state: str, previous: str, *, ok: bool | None = None,
          ms: float = 5.0, error: str | None = None) -> CheckEvent:  # fmt: skip
    return CheckEvent(
        id=_id(ts), ts=ts, check=name, ok=(state == "up") if ok is None else ok, state=state,
        previous=previous, latency_ms=ms, error=error,
    )  # fmt: skip


def session(ts: int, sid: str, who: str, device: Device | None, geo: Geo | None) -> SessionEvent:
    return SessionEvent(
        id=_id(ts), ts=ts, action="session_start", session_id=sid,
        performer=Performer(id=who, name=who.title()), device=device, geo=geo, ip="10.0.0.1",
    )  # fmt: skip


def history(now: int = NOW) -> list[Any]:
    """The known history (see the module documentation), relative to ``now``."""
    events: list[Any] = []
    t = now - 3 * HOUR
    events += [access(t + i * MIN, "GET", "/items/{item_id}", 200) for i in range(10)]
    events += [access(t + i * MIN, "GET", "/items/{item_id}", 404) for i in range(2)]
    events.append(access(t, "GET", "/items/{item_id}", 500))
    events += [access(t + i * MIN, "POST", "/login", 200, action="login") for i in range(3)]
    events.append(access(t, "POST", "/login", 401, action="login_failed", outcome="failure"))
    events += [access(t + i * MIN, "GET", "/admin", 403, action="denied") for i in range(2)]
    events.append(access(t, "GET", None, 404))
    events += [access(now - 2 * HOUR + i * MIN, "GET", "/slow", 200, ms=300.0) for i in range(20)]
    events.append(access(now - 2 * DAY, "GET", "/old", 200))  # outside the 24 hours
    # Sessions: two active in the window, one ended in it, one active but stale.
    events += [
        session(now - 2 * HOUR, "sess-alice-0001", "alice", DESKTOP, BERLIN),
        session(now - HOUR, "sess-bob-000001", "bob", PHONE, AMSTERDAM),
        session(now - 5 * HOUR, "sess-carol-0001", "carol", DESKTOP, AMSTERDAM),
        SessionEvent(id=_id(now - 3 * HOUR), ts=now - 3 * HOUR, action="session_end",
                     session_id="sess-carol-0001", end_reason="logout"),
        session(now - 3 * DAY, "sess-dave-00001", "dave", None, None),
    ]  # fmt: skip
    # Checks: api up all along; db down for an hour 2 hours ago; queue down for
    # 30 minutes and still; legacy gone 40 days ago.
    events.append(check(now - 23 * HOUR, "api", "up", "unknown"))
    events += [check(now - h * HOUR, "api", "up", "up", ms=3.0 + h) for h in range(22, 0, -1)]
    events.append(check(now - MIN, "api", "up", "up", ms=4.0))
    events.append(check(now - 20 * HOUR, "db", "up", "unknown"))
    events.append(check(now - 2 * HOUR, "db", "down", "up", error="connection refused"))
    events.append(check(now - 90 * MIN, "db", "down", "down", error="connection refused"))
    events.append(check(now - HOUR, "db", "up", "down"))
    events.append(check(now - MIN, "db", "up", "up"))
    events.append(check(now - 30 * MIN, "queue", "down", "unknown", error="timed out"))
    events.append(check(now - MIN, "queue", "down", "down", error="timed out"))
    events.append(check(now - 40 * DAY, "legacy", "up", "unknown"))
    events += [
        AdvisoryEvent(id=_id(now - HOUR), ts=now - HOUR, rule="new_machine", severity="info",
                      message="a new machine"),
        AdvisoryEvent(id=_id(now - 2 * HOUR), ts=now - 2 * HOUR, rule="burst", severity="high",
                      message="a burst of denials"),
        AdvisoryEvent(id=_id(now - 30 * MIN), ts=now - 30 * MIN, rule="new_country",
                      severity="medium", message="a new country", performer_id="carol",
                      session_id="sess-carol-0001", request_id="req-carol-0001"),
        AdvisoryEvent(id=_id(now - 3 * DAY), ts=now - 3 * DAY, rule="impossible_travel",
                      severity="critical", message="outside the window"),
    ]  # fmt: skip
    return events


BACKENDS = ["memory", "jsonl", "sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    kind = request.param
    storage: Storage
    if kind == "memory":
        storage = MemoryStorage()
    elif kind == "jsonl":
        storage = JSONLStorage(str(tmp_path / "jsonl"))
    elif kind == "sqlite":
        storage = SQLStorage(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            storage = SQLStorage(url)
            storage.setup()
            yield storage
            storage.close()
        return
    storage.setup()
    yield storage
    storage.close()


def day_state(storage: Storage, now: int = NOW) -> dict[str, Any]:
    storage.write(history(now))
    since, until = state_window(None, None, now)
    return build_state(storage, since, until, now=now)


# ----------------------------------------------------------------------------- the state


def test_traffic_per_endpoint_is_exact(store: Storage) -> None:
    state = day_state(store)
    json.dumps(state)  # JSON-able as it is
    if not store.keeps_rollups:
        assert state["traffic"]["kept"] is False
        assert "keeps rollups" in state["traffic"]["note"] or "keep" in state["traffic"]["note"]
        assert state["requests"] is None
        assert state["series"] == []
        assert state["endpoints"] == []
        return
    assert state["traffic"] == {"kept": True, "note": None}
    assert state["bucket"] == 3600
    # 13 + 4 + 2 + 1 + 20 in the window; /old is two days back.
    assert state["requests"] == 40
    assert (state["server_errors"], state["client_errors"], state["denied"]) == (1, 4, 2)
    assert sum(p["requests"] for p in state["series"]) == 40
    assert len(state["series"]) == 25  # the hours the 24 hours touch
    rows = {e["endpoint"]: e for e in state["endpoints"]}
    assert set(rows) == {"GET /slow", "GET /items/{item_id}", "POST /login", "GET /admin",
                         "GET (unmatched)"}  # fmt: skip
    assert [e["endpoint"] for e in state["endpoints"]][:2] == ["GET /slow", "GET /items/{item_id}"]
    items = rows["GET /items/{item_id}"]
    assert (items["requests"], items["server_errors"], items["denied"]) == (13, 1, 0)
    assert (items["method"], items["route"]) == ("GET", "/items/{item_id}")
    assert rows["GET /admin"]["denied"] == 2
    assert rows["POST /login"]["requests"] == 4
    assert rows["GET (unmatched)"]["requests"] == 1
    slow = rows["GET /slow"]
    assert 250.0 < slow["latency_ms"]["p95"] <= 400.0  # the bucket holding 300 ms
    assert slow["last_seen"] == iso_from_us(NOW - 2 * HOUR + 19 * MIN)
    assert state["sessions"]["logins"] == 3
    assert state["sessions"]["login_failures"] == 1


def test_who_is_on(store: Storage) -> None:
    who = day_state(store)["sessions"]
    assert who["active"] == 3  # alice, bob and dave (stale, but never ended)
    assert {(c["country_code"], c["active"]) for c in who["by_country"]} == {
        ("DE", 1), ("NL", 1), ("", 1),
    }  # fmt: skip
    assert {c["country_name"] for c in who["by_country"]} == {"Germany", "Netherlands", ""}
    assert {(d["device_type"], d["active"]) for d in who["by_device"]} == {
        ("desktop", 1), ("smartphone", 1), ("", 1),
    }  # fmt: skip
    assert who["performers"] == 3  # alice, bob, carol (ended in the window); not dave
    assert who["capped"] is False
    if not store.keeps_rollups:  # counted from the access events instead
        assert (who["logins"], who["login_failures"]) == (3, 1)


def test_services_board(store: Storage) -> None:
    services = {s["name"]: s for s in day_state(store)["services"]}
    assert set(services) == {"api", "db", "queue"}  # legacy: no probe in 30 days
    api, db, queue = services["api"], services["db"], services["queue"]
    assert (api["state"], api["since"], api["latency_ms"]) == (
        "up", iso_from_us(NOW - 23 * HOUR), 4.0,
    )  # fmt: skip
    assert api["uptime"] == {"24h": 1.0, "7d": 1.0, "30d": 1.0}
    assert api["incidents"] == []
    assert api["last_checked"] == iso_from_us(NOW - MIN)

    assert (db["state"], db["since"]) == ("up", iso_from_us(NOW - HOUR))
    # Known from its first probe to its last: up 18 h + 59 min, down 1 h.
    assert db["uptime"]["24h"] == pytest.approx((18 * 60 + 59) / (19 * 60 + 59), abs=1e-6)
    assert db["uptime"]["30d"] == db["uptime"]["24h"]
    [outage] = db["incidents"]
    assert outage == {
        "down_at": iso_from_us(NOW - 2 * HOUR), "recovered_at": iso_from_us(NOW - HOUR),
        "recovered_to": "up", "duration_s": 3600.0, "ongoing": False,
        "error": "connection refused",
    }  # fmt: skip

    assert (queue["state"], queue["since"], queue["error"]) == (
        "down", iso_from_us(NOW - 30 * MIN), "timed out",
    )  # fmt: skip
    assert queue["uptime"]["24h"] == 0.0
    [ongoing] = queue["incidents"]
    assert ongoing["ongoing"] is True
    assert ongoing["recovered_at"] is None
    assert ongoing["duration_s"] == 1800.0  # down for 30 minutes so far

    # The sparkline: 48 slots over the window, the api's hourly probes in theirs.
    series = api["latency_series"]
    assert len(series) == 48
    assert series[0]["at"] == iso_from_us(NOW - DAY)
    measured = [p for p in series if p["latency_ms"] is not None]
    assert 20 <= len(measured) <= 24
    assert all(p["ok"] for p in measured)
    assert [p["ok"] for p in db["latency_series"]].count(False) == 2  # the two failed probes


def test_advisories_most_severe_first(store: Storage) -> None:
    found = day_state(store)["advisories"]
    assert [(a["severity"], a["rule"]) for a in found] == [
        ("high", "burst"), ("medium", "new_country"), ("info", "new_machine"),
    ]  # fmt: skip


def test_recorder_newest_stored(store: Storage) -> None:
    recorder = day_state(store)["recorder"]
    assert recorder["live"] is False
    assert recorder["written"] is None
    newest = recorder["newest"]
    assert newest["access"] == iso_from_us(NOW - 2 * HOUR + 19 * MIN)
    assert newest["check"] == iso_from_us(NOW - MIN)
    assert newest["advisory"] == iso_from_us(NOW - 30 * MIN)
    assert newest["session"] == iso_from_us(NOW - HOUR)  # the newest session started
    assert newest["audit"] is None
    assert newest["log"] is None


def test_every_backend_tells_the_same_state(tmp_path: Path) -> None:
    """Memory (the generic reads) and SQLite (aggregates and index seeks) agree."""
    memory = MemoryStorage()
    sql = SQLStorage(f"sqlite:///{tmp_path / 'same.db'}")
    events = history()
    for storage in (memory, sql):
        storage.setup()
        storage.write(events)
    since, until = state_window(None, None, NOW)
    a = build_state(memory, since, until, now=NOW)
    b = build_state(sql, since, until, now=NOW)
    for key in ("by_country", "by_device"):
        a["sessions"][key].sort(key=json.dumps)
        b["sessions"][key].sort(key=json.dumps)
    assert a == b
    sql.close()


def test_an_empty_store_shows_zeros(store: Storage) -> None:
    since, until = state_window(None, None, NOW)
    state = build_state(store, since, until, now=NOW)
    if store.keeps_rollups:
        assert (state["requests"], state["server_errors"], state["denied"]) == (0, 0, 0)
        assert state["latency_ms"] == {"p50": None, "p95": None, "p99": None}
        assert len(state["series"]) == 25
        assert state["endpoints"] == []
    assert state["sessions"]["active"] == 0
    assert state["services"] == []
    assert state["advisories"] == []
    assert state["recorder"]["newest"]["access"] is None


# ----------------------------------------------------------------------------- the window


def test_window_defaults_and_bounds() -> None:
    assert state_window(None, None, NOW) == (NOW - DAY, NOW)
    assert state_window(NOW - HOUR, None, NOW) == (NOW - HOUR, NOW)
    assert state_window(None, NOW - DAY, NOW) == (NOW - 2 * DAY, NOW - DAY)
    assert state_window(NOW - MAX_DAYS * DAY, NOW, NOW) == (NOW - MAX_DAYS * DAY, NOW)
    with pytest.raises(WindowError, match="after the end") as after:
        state_window(NOW, NOW - 1, NOW)
    assert after.value.field == "from"
    with pytest.raises(WindowError, match="longer than 400 days"):
        state_window(NOW - MAX_DAYS * DAY - 1, NOW, NOW)


def test_query_state_windows(make_leza: Any) -> None:
    leza: Leza = make_leza()
    state = leza.query.state()
    assert state["bucket"] == 3600
    assert len(state["series"]) == 25
    hour = leza.query.state(since="2025-01-01T10:00:00Z", until="2025-01-01T11:00:00Z")
    assert (hour["from"], hour["to"], hour["bucket"]) == (
        "2025-01-01T10:00:00.000000Z", "2025-01-01T11:00:00.000000Z", 60,
    )  # fmt: skip
    month = leza.query.state(since="2025-01-01", until="2025-01-30")  # a date: its whole day
    assert (month["to"], month["bucket"]) == ("2025-01-30T23:59:59.999999Z", 86400)
    with pytest.raises(ValueError, match="after the end"):
        leza.query.state(since="2025-02-01", until="2025-01-01")
    with pytest.raises(ValueError, match="400 days"):
        leza.query.state(since="2020-01-01", until="2025-01-01")
    with pytest.raises(ValueError, match="ISO 8601"):
        leza.query.state(since="yesterday")


def test_a_recording_leza_reports_its_recorder(make_leza: Any) -> None:
    leza: Leza = make_leza()
    leza.record(check(NOW, "api", "up", "unknown"))
    assert leza.flush(5)
    recorder = leza.query.state()["recorder"]
    assert recorder["live"] is True
    assert (recorder["written"], recorder["dropped"], recorder["pending"]) == (1, 0, 0)
    assert (recorder["spill_files"], recorder["spill_bytes"]) == (0, 0)
    spill = Path(leza.recorder.spill.directory)
    spill.mkdir(parents=True, exist_ok=True)
    # A spill file another process is writing (locked: the recorder leaves it be).
    with open(spill / "spill-1-2-3.jsonl", "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.write(b"{}\n")
        f.flush()
        recorder = leza.query.state()["recorder"]
    assert (recorder["spill_files"], recorder["spill_bytes"]) == (1, 3)


def test_maintenance_shows_on_the_board(make_leza: Any) -> None:
    leza: Leza = make_leza()
    leza.availability.autostart = False
    leza.availability.check("cache", lambda: None, interval=60)
    leza.availability.maintenance(duration=600, checks=["cache"], reason="upgrade")
    [cache] = leza.query.state()["services"]
    assert (cache["name"], cache["state"], cache["checked_state"]) == (
        "cache", "maintenance", "unknown",
    )  # fmt: skip


# ----------------------------------------------------------------------------- pure parts


def test_uptime_and_incidents_from_changes() -> None:
    s = US
    line = timeline(
        Change(0, "up"),
        [Change(10 * s, "down", "boom"), Change(10 * s, "down"), Change(15 * s, "up"),
         Change(30 * s, "down"), Change(-5 * s, "down")],  # older than the start: covered
    )  # fmt: skip
    assert [(c.state, c.error) for c in line] == [
        ("up", None), ("down", "boom"), ("up", None), ("down", None),
    ]  # fmt: skip
    assert uptime_share(line, 0, 40 * s) == pytest.approx(25 / 40)
    assert uptime_share(line, 100 * s, 200 * s) == 0.0  # still down after the last change
    assert uptime_share([], 0, 10) is None
    assert uptime_share([Change(0, "unknown")], 0, 10) is None
    found = incidents(line, 12 * s, 20 * s, now=40 * s)
    assert [(i["down_at"], i["duration_s"], i["ongoing"], i["error"]) for i in found] == [
        (iso_from_us(10 * s), 5.0, False, "boom"),
    ]  # fmt: skip
    [ongoing] = incidents(line, 31 * s, 35 * s, now=40 * s)
    assert (ongoing["duration_s"], ongoing["ongoing"]) == (10.0, True)
    assert incidents(line, 16 * s, 29 * s, now=40 * s) == []
    assert slots_of(0, 10 * MIN - 1, 48) == [(i * MIN, (i + 1) * MIN) for i in range(10)]
    slots = slots_of(NOW - DAY, NOW)
    assert len(slots) == 48
    assert slots[0][0] == NOW - DAY
    assert slots[-1][1] == NOW + 1


def test_a_minimal_custom_backend_still_gets_a_state(tmp_path: Path) -> None:
    """``write`` and ``query`` only, access events only: every other kind is a
    ValueError, as SQL says of a kind it has no table for."""
    from leza_middleware.storage import Page, QueryFilter
    from leza_middleware.storage.memory import select_page

    class AccessOnly(Storage):
        def __init__(self) -> None:
            self.rows: list[Any] = []

        def write(self, events: Any) -> None:
            self.rows.extend(e for e in events if e.kind == "access")

        def query(self, kind: str, flt: QueryFilter) -> Page:
            if kind != "access":
                raise ValueError(f"no place for {kind}")
            return select_page(self.rows, flt)

    storage = AccessOnly()
    storage.write(history())
    since, until = state_window(None, None, NOW)
    state = build_state(storage, since, until, now=NOW)
    assert state["traffic"]["kept"] is False
    assert (state["services"], state["advisories"]) == ([], [])
    assert state["sessions"]["active"] == 0
    assert state["recorder"]["newest"]["access"] == iso_from_us(NOW - 2 * HOUR + 19 * MIN)
    leza = Leza(storage=storage, geoip_db=False, spill_dir=str(tmp_path / "spill"))
    try:
        assert leza.query.state()["traffic"]["kept"] is False
    finally:
        leza.shutdown(2)
