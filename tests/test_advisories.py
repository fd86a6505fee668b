"""Advisory rules: each fires on a crafted sequence and stays quiet on normal ones.

Events are built with real ``Device``/``Geo`` objects and real coordinates;
history hydration runs against a real SQLite file through ``SQLStorage``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from leza_middleware.advisories import (
    AdvisoryEngine,
    BotOnLogin,
    Burst,
    Finding,
    History,
    ImpossibleTravel,
    NewCountry,
    NewMachine,
    RevokedSessionReuse,
    Rule,
    RuleContext,
    ServiceState,
    default_rules,
    haversine_km,
)
from leza_middleware.errors import LezaConfigError
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    CheckEvent,
    Device,
    Event,
    Geo,
    SessionEvent,
    ua_key,
)
from leza_middleware.ids import new_event_id, new_request_id
from leza_middleware.performer import Performer
from leza_middleware.sessions import REVOKED_REASON
from leza_middleware.storage.base import Page, QueryFilter, Storage
from leza_middleware.storage.memory import MemoryStorage
from leza_middleware.storage.sql import SQLStorage

S = 1_000_000  # µs per second
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_751_816_964_062_000  # 2025-07-06T15:49:24.062Z

# ----------------------------------------------------------------------------- fixtures


def _device(ua: str, **kw: Any) -> Device:
    return Device(key=ua_key(ua), user_agent=ua, **kw)


CHROME_WIN = _device(
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    browser_type="browser",
    browser_name="Chrome",
    browser_version="126.0",
    engine="Blink",
    os_name="Windows",
    os_version="10",
    device_type="desktop",
    is_pc=True,
)
FIREFOX_LINUX = _device(
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    browser_type="browser",
    browser_name="Firefox",
    browser_version="127.0",
    engine="Gecko",
    os_name="GNU/Linux",
    device_type="desktop",
    is_pc=True,
)
GOOGLEBOT = _device(
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    browser_type="bot",
    browser_name="Googlebot",
    browser_version="2.1",
    bot_name="Googlebot",
    bot_category="Search bot",
    bot_url="http://www.google.com/bot.html",
)


def _geo(key: str, cc: str, country: str, city: str, lat: float | None, lon: float | None) -> Geo:
    return Geo(
        key=key, country_code=cc, country_name=country, city=city, latitude=lat, longitude=lon
    )


BERLIN = _geo("81.2.69.0/24", "DE", "Germany", "Berlin", 52.52, 13.40)
BERLIN_SPANDAU = _geo("81.2.70.0/24", "DE", "Germany", "Berlin", 52.535, 13.20)
POTSDAM = _geo("81.2.71.0/24", "DE", "Germany", "Potsdam", 52.39, 13.06)
MUNICH = _geo("81.2.72.0/24", "DE", "Germany", "Munich", 48.14, 11.58)
PARIS = _geo("90.0.0.0/16", "FR", "France", "Paris", 48.86, 2.35)
SYDNEY = _geo("1.120.0.0/16", "AU", "Australia", "Sydney", -33.87, 151.21)
NEW_YORK = _geo("8.8.0.0/16", "US", "United States", "New York", 40.71, -74.01)
DE_NO_COORDS = _geo("81.3.0.0/16", "DE", "Germany", "", None, None)
NO_COUNTRY = _geo("10.9.0.0/16", "", "", "", None, None)

ALICE = Performer(id="u-alice", name="alice", email="alice@example.com")
BOB = Performer(id="u-bob", name="bob", email="bob@example.com")


class Clock:
    """A settable clock (seconds since the epoch) in the same frame as the events."""

    def __init__(self, now: float = T0 / S) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def access(
    action: str = "access",
    *,
    ts: int,
    performer: Performer | None = ALICE,
    machine: str | None = "m-1",
    device: Device | None = CHROME_WIN,
    geo: Geo | None = BERLIN,
    ip: str = "203.0.113.7",
    method: str = "GET",
    endpoint: str = "/dashboard",
    route: str | None = None,
    status: int = 200,
    outcome: str = "success",
    reason: str = "",
    session_hash: str | None = None,
) -> AccessEvent:
    return AccessEvent.build(
        id=new_event_id(ts),
        ts=ts,
        action=action,
        method=method,
        endpoint=endpoint,
        route=route if route is not None else endpoint,
        status=status,
        duration_us=1500,
        outcome=outcome,
        reason=reason,
        request_id=new_request_id(),
        client_ip=ip,
        ip_valid=True,
        peer_ip=ip,
        device=device,
        geo=geo,
        performer=performer,
        machine_id=machine,
        session_hash=session_hash,
    )


def login(**kw: Any) -> AccessEvent:
    kw.setdefault("method", "POST")
    kw.setdefault("endpoint", "/login")
    kw.setdefault("reason", "User logged in")
    return access("login", **kw)


def failed(**kw: Any) -> AccessEvent:
    kw.setdefault("method", "POST")
    kw.setdefault("endpoint", "/login")
    kw.setdefault("status", 401)
    kw.setdefault("outcome", "failure")
    kw.setdefault("reason", "Invalid credentials")
    return access("login_failed", **kw)


def denied(**kw: Any) -> AccessEvent:
    kw.setdefault("endpoint", "/api/orders")
    kw.setdefault("status", 403)
    kw.setdefault("outcome", "denied")
    kw.setdefault("reason", "User lacks the permission Orders Page Permission")
    return access("denied", **kw)


def session_start(*, ts: int, geo: Geo | None, performer: Performer = ALICE) -> SessionEvent:
    return SessionEvent(
        id=new_event_id(ts),
        ts=ts,
        action="session_start",
        session_id=f"s-{ts}",
        performer=performer,
        device=CHROME_WIN,
        geo=geo,
        ip="198.51.100.4",
        machine_id="m-1",
    )


def check(ts: int, previous: str, state: str, **kw: Any) -> CheckEvent:
    return CheckEvent(
        id=new_event_id(ts),
        ts=ts,
        check="billing",
        ok=state != "down",
        state=state,
        previous=previous,
        **kw,
    )


def run(engine: AdvisoryEngine, *batches: Sequence[Event]) -> list[AdvisoryEvent]:
    out: list[AdvisoryEvent] = []
    for batch in batches:
        out.extend(engine.process(batch))
    return out


def one_by_one(engine: AdvisoryEngine, events: Iterable[Event]) -> list[AdvisoryEvent]:
    return run(engine, *([e] for e in events))


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'leza.db'}"


def write_sql(url: str, events: Sequence[Event]) -> None:
    storage = SQLStorage(url)
    storage.setup()
    storage.write(events)
    storage.close()


# ----------------------------------------------------------------------------- NewMachine


def test_new_machine_fires_on_a_login_from_a_machine_never_seen() -> None:
    engine = AdvisoryEngine([NewMachine()], None, app_name="insight")
    first = login(ts=T0, machine="m-1")
    again = login(ts=T0 + HOUR, machine="m-1")
    new = login(ts=T0 + 2 * HOUR, machine="m-2", device=FIREFOX_LINUX, geo=PARIS, ip="90.0.1.2")
    found = one_by_one(engine, [first, again, new])
    assert len(found) == 1
    adv = found[0]
    assert adv.rule == adv.action == "new_machine"
    assert adv.severity == "medium"
    assert adv.message == "alice logged in from a new machine (Firefox on GNU/Linux, Paris, FR)"
    assert adv.evidence == (new.id,)
    assert adv.ts == new.ts
    assert adv.id != new.id
    assert adv.id[:13] == f"{new.ts:013x}"
    assert adv.performer_id == "u-alice"
    assert adv.ip == "90.0.1.2"
    assert adv.app == "insight"
    assert adv.details["machine_id"] == "m-2"
    assert adv.details["known_machines"] == 1
    assert engine.stats()["findings"]["new_machine"] == 1


def test_new_machine_quiet_on_first_login_same_machine_and_no_machine_id() -> None:
    engine = AdvisoryEngine([NewMachine()], None)
    events = [
        login(ts=T0, machine="m-1"),  # first login ever: not news
        login(ts=T0 + HOUR, machine="m-1"),  # the same machine again
        login(ts=T0 + 2 * HOUR, machine=None),  # no machine id: nothing to judge
        access(ts=T0 + 3 * HOUR, machine="m-9"),  # not a login
        login(ts=T0 + 4 * HOUR, machine="m-1", geo=PARIS),  # same machine, other place
        login(ts=T0 + 5 * HOUR, performer=BOB, machine="m-7"),  # bob's first login
        login(ts=T0 + 6 * HOUR, performer=None, machine="m-8"),  # anonymous
    ]
    assert one_by_one(engine, events) == []
    assert engine.process(events) == []  # replayed events are not news either


def test_new_machine_fires_once_for_two_logins_from_it_in_one_batch() -> None:
    engine = AdvisoryEngine([NewMachine()], None)
    engine.process([login(ts=T0, machine="m-1")])
    a = login(ts=T0 + MIN, machine="m-2")
    b = login(ts=T0 + 2 * MIN, machine="m-2")
    found = engine.process([a, b])
    assert [f.evidence for f in found] == [(a.id,)]


# ----------------------------------------------------------------------------- NewCountry


def test_new_country_fires_on_a_country_not_seen_in_the_window() -> None:
    engine = AdvisoryEngine([NewCountry(days=90)], None)
    events = [
        login(ts=T0, geo=BERLIN),
        login(ts=T0 + DAY, geo=MUNICH),
        fr := login(ts=T0 + 2 * DAY, geo=PARIS, ip="90.0.1.2"),
    ]
    found = one_by_one(engine, events)
    assert len(found) == 1
    adv = found[0]
    assert adv.rule == "new_country"
    assert adv.severity == "medium"
    assert adv.message == (
        "alice logged in from France (FR), Paris, a country not seen for them "
        "in the last 90 days (recent: DE)"
    )
    assert adv.evidence == (fr.id,)
    assert adv.details["country_code"] == "FR"
    assert adv.details["recent_countries"] == ["DE"]
    assert adv.details["last_seen"] is None


def test_new_country_quiet_on_returning_country_no_history_unknown_geo() -> None:
    engine = AdvisoryEngine([NewCountry(days=90)], None)
    events = [
        login(ts=T0, geo=None),  # no history at all, unknown geo
        login(ts=T0 + HOUR, geo=BERLIN),  # first login with a country: no history
        login(ts=T0 + 2 * HOUR, geo=MUNICH),  # same country, other city
        login(ts=T0 + 3 * HOUR, geo=NO_COUNTRY),  # geo without a country
        login(ts=T0 + 4 * HOUR, geo=DE_NO_COORDS),
        login(ts=T0 + 80 * DAY, geo=BERLIN),  # returning within the window
        login(ts=T0 + 80 * DAY + HOUR, performer=BOB, geo=SYDNEY),  # bob: no history
    ]
    assert one_by_one(engine, events) == []


def test_new_country_counts_only_the_last_n_days() -> None:
    fr = login(ts=T0, geo=PARIS)
    de = login(ts=T0 + DAY, geo=BERLIN)  # new next to FR
    de_again = login(ts=T0 + 95 * DAY, geo=MUNICH)
    back_in_fr = login(ts=T0 + 100 * DAY, geo=PARIS)  # FR last seen 100 days ago
    events = [fr, de, de_again, back_in_fr]

    strict = AdvisoryEngine([NewCountry(days=90)], None)
    found = one_by_one(strict, events)
    assert [f.evidence for f in found] == [(de.id,), (back_in_fr.id,)]
    assert found[1].details["last_seen"] == "2025-07-06T15:49:24.062000Z"
    assert found[1].details["recent_countries"] == ["DE"]

    lenient = AdvisoryEngine([NewCountry(days=120)], None)
    assert [f.evidence for f in one_by_one(lenient, events)] == [(de.id,)]


# ----------------------------------------------------------------------------- ImpossibleTravel


def test_impossible_travel_fires_for_berlin_then_sydney_in_12_minutes() -> None:
    engine = AdvisoryEngine([ImpossibleTravel()], None)
    berlin = login(ts=T0, geo=BERLIN)
    sydney = login(ts=T0 + 12 * MIN, geo=SYDNEY, ip="1.120.3.4")
    found = one_by_one(engine, [berlin, sydney])
    assert len(found) == 1
    adv = found[0]
    assert adv.rule == "impossible_travel"
    assert adv.severity == "high"
    km = haversine_km(52.52, 13.40, -33.87, 151.21)
    assert 16_000 < km < 16_200
    assert adv.message == (
        f"Impossible travel for alice: Berlin, DE → Sydney, AU, {km:,.0f} km in 12 min "
        f"({km * 5:,.0f} km/h)"
    )
    assert adv.evidence == (berlin.id, sydney.id)
    assert adv.ts == sydney.ts
    assert adv.details["from"]["event_id"] == berlin.id
    assert adv.details["to"]["place"] == "Sydney, AU"
    assert adv.details["kmh"] == pytest.approx(km * 5, rel=1e-3)


def test_impossible_travel_fires_between_a_login_and_a_session_start() -> None:
    engine = AdvisoryEngine([ImpossibleTravel()], None)
    berlin = login(ts=T0, geo=BERLIN)
    start = session_start(ts=T0 + 30 * MIN, geo=NEW_YORK)
    found = engine.process([berlin, start])
    assert [f.evidence for f in found] == [(berlin.id, start.id)]
    assert found[0].ip == "198.51.100.4"
    assert "Berlin, DE → New York, US" in found[0].message


def test_impossible_travel_quiet_on_possible_journeys() -> None:
    engine = AdvisoryEngine([ImpossibleTravel(max_kmh=900, min_km=100)], None)
    events = [
        login(ts=T0, geo=BERLIN),
        session_start(ts=T0, geo=BERLIN),  # the login's own session: same place
        login(ts=T0 + MIN, geo=BERLIN_SPANDAU),  # within a city, 1 min later
        login(ts=T0 + 2 * MIN, geo=POTSDAM),  # 27 km in a minute: below min_km (GeoIP noise)
        login(ts=T0 + 3 * HOUR, geo=PARIS),  # ~850 km in 3 h: a flight
        login(ts=T0 + 3 * DAY, geo=SYDNEY),  # the other side of the world, days later
        login(ts=T0 + 3 * DAY + MIN, geo=DE_NO_COORDS),  # no coordinates: cannot judge
        login(ts=T0 + 3 * DAY + MIN, performer=BOB, geo=BERLIN),  # someone else
    ]
    assert one_by_one(engine, events) == []
    assert haversine_km(52.52, 13.40, 52.39, 13.06) < 100


# ----------------------------------------------------------------------------- Burst


def test_burst_fires_once_per_cooldown_not_once_per_event() -> None:
    engine = AdvisoryEngine([Burst(threshold=10, window=60.0)], None)
    first_ten = [failed(ts=T0 + i * S) for i in range(10)]
    more = [failed(ts=T0 + (10 + i) * S) for i in range(20)]  # still within the cooldown
    found = one_by_one(engine, first_ten + more)
    # performer and IP fire on the very same events: one advisory, not two
    assert len(found) == 1
    adv = found[0]
    assert adv.rule == "burst"
    assert adv.severity == "high"
    assert adv.evidence == tuple(e.id for e in first_ten)
    assert adv.ts == first_ten[-1].ts
    assert adv.performer_id == "u-alice"
    assert adv.message == "Burst for alice: 10 failed logins within 9 s"
    assert adv.details["count"] == 10

    # after the cooldown (default = window) a continuing burst fires again, once
    later = [failed(ts=T0 + 75 * S + i * S) for i in range(5)]
    again = one_by_one(engine, later)
    assert len(again) == 1
    assert again[0].ts == later[0].ts
    assert set(again[0].evidence) <= {e.id for e in more + later}
    assert engine.stats()["findings"]["burst"] == 2


def test_burst_by_ip_across_performers_and_mixed_actions() -> None:
    engine = AdvisoryEngine([Burst(threshold=10, window=60.0)], None)
    users = [Performer(id=f"u-{i}", name=f"user{i}") for i in range(6)]
    events: list[AccessEvent] = [failed(ts=T0 + i * S, performer=u) for i, u in enumerate(users)]
    events += [denied(ts=T0 + (6 + i) * S, performer=None) for i in range(4)]
    found = run(engine, events)
    assert len(found) == 1
    adv = found[0]
    assert adv.performer_id is None
    assert adv.ip == "203.0.113.7"
    assert adv.message == "Burst from 203.0.113.7: 6 failed logins and 4 denied requests within 9 s"
    assert adv.evidence == tuple(e.id for e in events)
    assert adv.details["by"] == "ip"
    assert adv.details["counts"] == {"login_failed": 6, "denied": 4}


def test_burst_quiet_under_threshold_and_outside_the_window() -> None:
    engine = AdvisoryEngine([Burst(threshold=10, window=60.0)], None)
    nine = [failed(ts=T0 + i * S) for i in range(9)]
    noise = [access(ts=T0 + i * S + 1) for i in range(100)]  # ordinary traffic never counts
    assert run(engine, nine + noise) == []
    # one every 10 s: at most 7 in any 60 s window
    slow = [failed(ts=T0 + HOUR + i * 10 * S, ip="198.51.100.9") for i in range(30)]
    assert one_by_one(engine, slow) == []
    # 9 from one IP and 9 from another IP of one performer: the performer key fires
    spread = AdvisoryEngine([Burst(threshold=10, window=60.0, by=("ip",))], None)
    a = [failed(ts=T0 + i * S, ip="192.0.2.1") for i in range(9)]
    b = [failed(ts=T0 + i * S, ip="192.0.2.2") for i in range(9)]
    assert run(spread, a + b) == []


def test_burst_evidence_is_capped_to_the_newest_events() -> None:
    engine = AdvisoryEngine([Burst(threshold=60, window=120.0, max_evidence=50)], None)
    events = [denied(ts=T0 + i * S) for i in range(60)]
    found = run(engine, events)
    assert len(found) == 1
    assert found[0].evidence == tuple(e.id for e in events[-50:])
    assert found[0].details["count"] == 60


# ----------------------------------------------------------------------------- RevokedSessionReuse


def revoked(ts: int, session: str = "hash-1") -> AccessEvent:
    return denied(
        ts=ts,
        status=401,
        reason=REVOKED_REASON,
        session_hash=session,
        endpoint="/api/orders",
    )


def test_revoked_session_reuse_fires_on_the_refused_request() -> None:
    engine = AdvisoryEngine([RevokedSessionReuse(cooldown=60.0)], None)
    first = revoked(T0)
    again = revoked(T0 + 10 * S)  # the same session polling: within the cooldown
    other = revoked(T0 + 11 * S, session="hash-2")
    later = revoked(T0 + 2 * MIN)
    found = one_by_one(engine, [first, again, other, later])
    assert [f.evidence for f in found] == [(first.id,), (other.id,), (later.id,)]
    adv = found[0]
    assert adv.rule == "revoked_session_reuse"
    assert adv.severity == "high"
    assert adv.message == "alice used a revoked session again: GET /api/orders from 203.0.113.7"
    assert adv.details["session_id_hash"] == "hash-1"


def test_revoked_session_reuse_quiet_on_ordinary_denials() -> None:
    engine = AdvisoryEngine([RevokedSessionReuse()], None)
    events = [
        denied(ts=T0),  # a permission denial
        failed(ts=T0 + S, reason=REVOKED_REASON),  # not a denied request
        access(ts=T0 + 2 * S, reason=REVOKED_REASON),
        denied(ts=T0 + 3 * S, reason="session revoked by admin"),  # not the exact reason
    ]
    assert one_by_one(engine, events) == []


# ----------------------------------------------------------------------------- BotOnLogin


def test_bot_on_login_fires_on_login_routes_and_login_attempts() -> None:
    engine = AdvisoryEngine([BotOnLogin()], None)
    page = access(
        ts=T0, device=GOOGLEBOT, performer=None, endpoint="/Login?next=%2F", ip="66.249.66.1"
    )
    token = access(
        ts=T0 + S,
        device=GOOGLEBOT,
        performer=None,
        method="POST",
        endpoint="/api/v1/auth/token",
        ip="66.249.66.2",
        status=400,
    )
    attempt = failed(
        ts=T0 + 2 * S, device=GOOGLEBOT, performer=None, endpoint="/session", ip="66.249.66.3"
    )
    found = one_by_one(engine, [page, token, attempt])
    assert [f.evidence for f in found] == [(page.id,), (token.id,), (attempt.id,)]
    assert found[0].rule == "bot_login"
    assert found[0].severity == "medium"
    assert found[0].message == (
        "A bot (Googlebot) requested a login route: GET /Login?next=%2F -> 200 from 66.249.66.1"
    )
    assert found[2].message.startswith("A bot (Googlebot) attempted a login: POST /session -> 401")
    assert found[0].details["bot"] == "Googlebot"


def test_bot_on_login_quiet_on_other_pages_and_humans() -> None:
    engine = AdvisoryEngine([BotOnLogin()], None)
    events = [
        access(ts=T0, device=GOOGLEBOT, performer=None, endpoint="/blog/post-1"),
        access(ts=T0 + S, device=GOOGLEBOT, performer=None, endpoint="/blog/login-tips"),
        access(ts=T0 + 2 * S, device=GOOGLEBOT, performer=None, endpoint="/tokens/list"),
        access(ts=T0 + 3 * S, device=CHROME_WIN, endpoint="/login"),  # a human
        login(ts=T0 + 4 * S, device=CHROME_WIN),
        access(ts=T0 + 5 * S, device=None, endpoint="/login"),  # no UA at all
    ]
    assert one_by_one(engine, events) == []


def test_bot_on_login_once_per_bot_and_ip_per_cooldown() -> None:
    engine = AdvisoryEngine([BotOnLogin(routes=("signin",), cooldown=600.0)], None)
    hits = [
        access(ts=T0 + i * MIN, device=GOOGLEBOT, performer=None, endpoint="/signin")
        for i in range(5)
    ]
    after = access(ts=T0 + 11 * MIN, device=GOOGLEBOT, performer=None, endpoint="/signin")
    assert [f.evidence for f in one_by_one(engine, [*hits, after])] == [(hits[0].id,), (after.id,)]


def test_bot_on_login_remembers_each_path_once_and_stays_bounded() -> None:
    """The route test is memoised per (route, endpoint): repeats give the same
    answer as the first sighting, and a crawler of many distinct (or very long)
    paths cannot grow the memo past its bound."""
    rule = BotOnLogin(cooldown=0.0)
    engine = AdvisoryEngine([rule], None)
    paths = [f"/blog/post-{i}" for i in range(5000)] + ["/login", "/x/" + "a" * 5000 + "/login"]
    events = [
        access(ts=T0 + i * S, device=GOOGLEBOT, performer=None, endpoint=p, ip="66.249.66.1")
        for i, p in enumerate(paths * 2)
    ]
    found = run(engine, events)
    # Only the two login paths fire, on their first sighting and on the repeat.
    assert sorted(f.details["endpoint"][:6] for f in found) == ["/login"] * 2 + ["/x/aaa"] * 2
    assert 0 < len(rule._matched) <= 4096
    assert all(len(endpoint) <= 256 for _, endpoint in rule._matched)


# ----------------------------------------------------------------------------- ServiceState


def test_service_state_fires_on_down_and_recovery() -> None:
    engine = AdvisoryEngine([ServiceState()], None)
    first_down = check(T0, "unknown", "down", error="connection refused")
    up = check(T0 + 5 * MIN, "down", "up", latency_ms=12.4)
    down = check(T0 + HOUR, "up", "down", error="HTTP 503")
    found = one_by_one(engine, [first_down, up, down])
    assert [(f.rule, f.severity) for f in found] == [
        ("service_down", "high"),
        ("service_recovered", "info"),
        ("service_down", "high"),
    ]
    assert found[0].message == "Service billing is DOWN (was unknown): connection refused"
    assert found[0].evidence == (first_down.id,)
    assert found[1].message == "Service billing recovered after 5 min down (latency 12 ms)"
    assert found[1].evidence == (first_down.id, up.id)
    assert found[1].details["downtime_s"] == 300.0
    assert found[2].evidence == (down.id,)
    stats = engine.stats()
    assert stats["findings"] == {"service_state": 3}


def test_service_state_quiet_on_probes_and_first_up() -> None:
    engine = AdvisoryEngine([ServiceState()], None)
    events = [
        check(T0, "unknown", "unknown", error="timeout"),  # failing, not down yet (retries)
        check(T0 + MIN, "unknown", "up"),  # a check's first result: silent
        check(T0 + 2 * MIN, "up", "up", latency_ms=3.0),
        check(T0 + 3 * MIN, "up", "up", latency_ms=4.0),
    ]
    assert [e.action for e in events] == ["probe", "state_change", "probe", "probe"]
    assert one_by_one(engine, events) == []


# ----------------------------------------------------------------------------- evidence links


def test_advisories_link_to_their_stored_evidence_events() -> None:
    storage = MemoryStorage()
    engine = AdvisoryEngine(default_rules(), storage, app_name="insight")
    batch: list[Event] = [
        login(ts=T0, geo=BERLIN, machine="m-1"),
        login(ts=T0 + 12 * MIN, geo=SYDNEY, machine="m-2", ip="1.120.3.4"),
        *(failed(ts=T0 + HOUR + i * S, ip="192.0.2.50") for i in range(10)),
        revoked(T0 + 2 * HOUR),
        access(ts=T0 + 3 * HOUR, device=GOOGLEBOT, performer=None, endpoint="/login"),
        check(T0 + 4 * HOUR, "up", "down"),
        check(T0 + 5 * HOUR, "down", "up"),
    ]
    storage.write(batch)
    found = engine.process(batch)
    rules = sorted(f.rule for f in found)
    assert rules == sorted(
        [
            "new_machine",
            "new_country",
            "impossible_travel",
            "burst",
            "revoked_session_reuse",
            "bot_login",
            "service_down",
            "service_recovered",
        ]
    )
    storage.write(found)
    stored = storage.query("advisory", QueryFilter(limit=100)).events
    assert len(stored) == len(found)
    by_id: dict[str, Event] = {e.id: e for e in batch}
    for adv in stored:
        assert isinstance(adv, AdvisoryEvent)
        assert adv.evidence, adv
        evidence = [by_id[i] for i in adv.evidence]  # every id resolves to a stored event
        assert adv.ts == max(e.ts for e in evidence)
        assert AdvisoryEvent.from_dict(adv.to_dict()) == adv
    kinds = {e.kind for e in by_id.values()}
    for kind in kinds:
        ids = {e.id for e in storage.query(kind, QueryFilter(limit=1000)).events}
        for adv in stored:
            assert all(i in ids for i in adv.evidence if by_id[i].kind == kind)


# ----------------------------------------------------------------------------- history


def test_history_hydrates_from_a_real_sqlite_file_after_a_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    earlier = [
        login(ts=T0 - 10 * DAY, machine="m-home", geo=BERLIN),
        login(ts=T0 - 5 * DAY, machine="m-work", geo=MUNICH),
        access(ts=T0 - 5 * DAY + S, machine="m-phone"),  # not a login: not a known machine
        login(ts=T0 - 400 * DAY, machine="m-ancient", geo=PARIS),  # outside the window
    ]
    write_sql(url, earlier)

    storage = SQLStorage(url)  # a fresh process: nothing in memory
    engine = AdvisoryEngine([NewMachine(), NewCountry()], storage, clock=Clock())
    known = login(ts=T0, machine="m-work", geo=BERLIN)
    assert engine.process([known]) == []
    phone = login(ts=T0 + MIN, machine="m-phone", geo=BERLIN)
    found = engine.process([phone])
    assert [(f.rule, f.evidence) for f in found] == [("new_machine", (phone.id,))]
    assert found[0].details["known_machines"] == 2  # m-home and m-work (m-ancient too old)
    paris = login(ts=T0 + 2 * MIN, machine="m-work", geo=PARIS)
    assert [(f.rule, f.evidence) for f in engine.process([paris])] == [("new_country", (paris.id,))]
    stats = engine.stats()["history"]
    assert stats["hydrations"] == 1  # once per performer
    assert stats["hydration_errors"] == 0
    storage.close()


def test_hydration_links_travel_evidence_to_an_event_of_an_earlier_process(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    berlin = login(ts=T0, geo=BERLIN)
    write_sql(url, [berlin])
    engine = AdvisoryEngine([ImpossibleTravel()], SQLStorage(url), clock=Clock())
    sydney = login(ts=T0 + 40 * MIN, geo=SYDNEY)
    found = engine.process([sydney])
    assert [f.evidence for f in found] == [(berlin.id, sydney.id)]


def test_hydration_ignores_events_of_the_current_batch_already_written(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    write_sql(url, [login(ts=T0 - DAY, machine="m-1")])
    a = login(ts=T0, machine="m-2")
    b = login(ts=T0 + MIN, machine="m-2")
    write_sql(url, [a, b])  # the recorder wrote the batch before the rules saw it
    engine = AdvisoryEngine([NewMachine()], SQLStorage(url), clock=Clock())
    found = engine.process([a, b])
    assert [f.evidence for f in found] == [(a.id,)]
    st = engine.history.peek("u-alice")
    assert st is not None
    assert st.logins == 3  # m-1 from storage, a and b once each
    assert set(st.machines) == {"m-1", "m-2"}


def test_history_refresh_sees_other_workers_logins_without_double_counting(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path)
    first = login(ts=T0, machine="m-1")
    write_sql(url, [first])
    clock = Clock(T0 / S + 1)
    engine = AdvisoryEngine([NewMachine()], SQLStorage(url), clock=clock)
    assert engine.process([first]) == []  # hydration returned this very event: counted once
    st = engine.history.peek("u-alice")
    assert st is not None
    assert st.logins == 1

    other_worker = login(ts=T0 + MIN, machine="m-2")
    write_sql(url, [other_worker])
    clock.now += 301  # past the refresh period: this process re-reads the new logins
    mine = login(ts=T0 + 6 * MIN, machine="m-2")
    assert engine.process([mine]) == []  # m-2 is known from the other worker's login
    assert st.logins == 3
    assert engine.stats()["history"]["hydrations"] == 2


def test_hydration_pages_with_the_cursor_up_to_a_cap(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    logins = [login(ts=T0 - DAY + i * MIN, machine=f"m-{i}") for i in range(25)]
    write_sql(url, logins)
    queries: list[QueryFilter] = []

    class Counting(SQLStorage):
        def query(self, kind: str, flt: QueryFilter) -> Page:
            queries.append(flt)
            return super().query(kind, flt)

    full = History(Counting(url), page_size=10, max_events=100, max_machines=100)
    st = full.state("u-alice", T0)
    assert st.logins == 25
    assert len(st.machines) == 25
    assert len(queries) == 3
    assert queries[1].cursor is not None
    assert all(q.action == "login" and q.performer_id == "u-alice" for q in queries)
    assert all(q.since == T0 - 90 * DAY for q in queries)

    capped = History(SQLStorage(url), page_size=10, max_events=15, max_machines=100)
    st = capped.state("u-alice", T0)
    assert st.logins == 15
    assert set(st.machines) == {f"m-{i}" for i in range(10, 25)}  # the newest


class DownStorage(MemoryStorage):
    """Writes work, reads fail: a storage outage as the hydration sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.queries = 0

    def query(self, kind: str, flt: QueryFilter) -> Page:
        self.queries += 1
        if self.down:
            raise ConnectionError("database is unreachable")
        return super().query(kind, flt)


def test_storage_failure_during_hydration_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    storage = DownStorage()
    storage.write([login(ts=T0 - DAY, machine="m-old")])
    clock = Clock()
    engine = AdvisoryEngine([NewMachine()], storage, clock=clock)
    with caplog.at_level(logging.WARNING, logger="leza_middleware.advisories"):
        first = login(ts=T0, machine="m-1")
        assert engine.process([first]) == []  # no history readable: the first is no news
        second = login(ts=T0 + MIN, machine="m-2")
        found = engine.process([second, login(ts=T0 + 2 * MIN, performer=BOB)])
    # judged from this process's memory: m-2 is new next to m-1
    assert [f.evidence for f in found] == [(second.id,)]
    assert storage.queries == 1  # backed off: no query per event while storage is down
    warnings = [r for r in caplog.records if r.name == "leza_middleware.advisories"]
    assert len(warnings) == 1
    assert "database is unreachable" in warnings[0].getMessage()
    assert engine.stats()["history"]["hydration_errors"] == 1

    # storage is back after the back-off: the old machine is merged in
    storage.down = False
    clock.now += 31
    old = login(ts=T0 + 3 * MIN, machine="m-old")
    assert engine.process([old]) == []
    st = engine.history.peek("u-alice")
    assert st is not None
    assert set(st.machines) == {"m-old", "m-1", "m-2"}


# ----------------------------------------------------------------------------- memory bounds


def test_history_keeps_a_bounded_lru_of_performers() -> None:
    history = History(None, max_performers=3)
    people = [Performer(id=f"u-{i}", name=f"user{i}") for i in range(5)]
    for i, p in enumerate(people[:3]):
        history.record(login(ts=T0 + i * S, performer=p))
    history.state("u-0", T0 + 10 * S)  # used recently: kept
    for i, p in enumerate(people[3:]):
        history.record(login(ts=T0 + (20 + i) * S, performer=p))
    assert len(history) == 3
    assert history.peek("u-0") is not None
    assert history.peek("u-1") is None
    assert history.peek("u-2") is None
    assert history.stats()["evictions"] == 2

    engine = AdvisoryEngine([NewMachine()], None, max_performers=100)
    for i in range(250):
        engine.process([login(ts=T0 + i * S, performer=Performer(id=f"p-{i}"))])
    assert len(engine.history) == 100


def test_history_bounds_ids_and_machines_per_performer() -> None:
    history = History(None, max_ids=4, max_machines=3)
    events = [login(ts=T0 + i * MIN, machine=f"m-{i}") for i in range(6)]
    for e in events:
        assert history.record(e)
    assert not history.record(events[-1])  # already folded in
    st = history.peek("u-alice")
    assert st is not None
    assert list(st.machines) == ["m-3", "m-4", "m-5"]
    assert list(st.ids) == [e.id for e in events[2:]]
    assert st.logins == 6


def test_burst_keeps_a_bounded_number_of_keys() -> None:
    rule = Burst(threshold=3, window=60.0, by=("ip",), max_keys=50)
    engine = AdvisoryEngine([rule], None)
    engine.process([failed(ts=T0 + i, ip=f"10.0.{i // 256}.{i % 256}") for i in range(500)])
    assert len(rule._windows) == 50


# ----------------------------------------------------------------------------- engine


class Boom(Rule):
    name = "boom"
    severity = "low"
    kinds = frozenset({"access"})
    actions = None

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        self.calls += 1
        raise RuntimeError("rule bug")


class HalfThenBoom(Rule):
    name = "half"
    kinds = frozenset({"access"})
    actions = frozenset({"denied"})

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        yield Finding("partial")
        raise ValueError("midway")


class NotAFinding(Rule):
    name = "wrong"
    kinds = frozenset({"access"})
    actions = frozenset({"denied"})

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        return ["just a string"]  # type: ignore[list-item]


def test_a_raising_rule_is_counted_logged_once_a_minute_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    boom = Boom()
    engine = AdvisoryEngine([boom, HalfThenBoom(), NotAFinding(), RevokedSessionReuse()], None,
                            clock=clock)  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="leza_middleware.advisories"):
        found = engine.process([revoked(T0), access(ts=T0 + S), access(ts=T0 + 2 * S)])
        assert [f.rule for f in found] == ["revoked_session_reuse"]
        assert boom.calls == 3
        clock.now += 61
        assert engine.process([access(ts=T0 + 70 * S)]) == []
    stats = engine.stats()
    assert stats["rule_errors"] == {
        "boom": 4,
        "half": 1,
        "wrong": 1,
        "revoked_session_reuse": 0,
    }
    assert stats["findings"]["revoked_session_reuse"] == 1
    assert stats["findings"]["half"] == 0  # a finding yielded before the error is dropped
    logged = [r for r in caplog.records if r.name == "leza_middleware.advisories"]
    assert [r.getMessage().split(" failed")[0] for r in logged] == [
        "advisory rule 'boom'",
        "advisory rule 'half'",
        "advisory rule 'wrong'",
        "advisory rule 'boom'",  # again after a minute
    ]
    assert logged[0].exc_info is not None


def test_rules_are_called_only_for_their_kinds_and_actions() -> None:
    seen: list[str] = []

    class LoginsOnly(Rule):
        name = "logins_only"
        severity = "info"
        kinds = frozenset({"access"})
        actions = frozenset({"login"})

        def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
            seen.append(event.action)
            if event.performer_id == "u-bob":  # type: ignore[attr-defined]
                yield Finding(f"{event.performer_id} logged in")  # type: ignore[attr-defined]

    engine = AdvisoryEngine([LoginsOnly()], None)
    bob = login(ts=T0 + 2 * S, performer=BOB)
    found = engine.process(
        [access(ts=T0), failed(ts=T0 + S), bob, check(T0, "up", "down"), login(ts=T0 + 3 * S)]
    )
    assert seen == ["login", "login"]
    assert len(found) == 1
    adv = found[0]
    assert (adv.rule, adv.severity, adv.message) == ("logins_only", "info", "u-bob logged in")
    assert adv.evidence == (bob.id,)  # an empty evidence links to the observed event
    assert engine.stats()["events"] == 5


def test_default_rules_and_their_names() -> None:
    names = [r.name for r in default_rules()]
    assert names == [
        "new_machine",
        "new_country",
        "impossible_travel",
        "burst",
        "revoked_session_reuse",
        "bot_login",
        "service_state",
    ]
    engine = AdvisoryEngine(None, None)
    assert sorted(engine.stats()["findings"]) == sorted(names)
    assert engine.process([]) == []
    advisory = AdvisoryEvent(id="x", ts=T0, rule="burst", severity="high", message="m")
    assert engine.process([advisory]) == []  # advisories never feed the rules back


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NewCountry(days=0), r"NewCountry\(days=\.\.\.\) must be a number > 0"),
        (lambda: NewCountry(days=cast(Any, "90")), r"NewCountry\(days=\.\.\.\)"),
        (lambda: ImpossibleTravel(max_kmh=-1), r"max_kmh=\.\.\.\) must be a number > 0"),
        (lambda: ImpossibleTravel(min_km=float("nan")), r"min_km"),
        (lambda: Burst(threshold=0), r"threshold=\.\.\.\) must be an integer >= 1"),
        (lambda: Burst(threshold=cast(Any, 2.5)), r"threshold"),
        (lambda: Burst(window=0), r"window"),
        (lambda: Burst(by=("user",)), r"Burst\(by=\.\.\.\) takes 'performer' and/or 'ip'"),
        (lambda: Burst(actions="denied"), r"Burst\(actions=\.\.\.\) must be a sequence"),
        (lambda: Burst(cooldown=-1), r"cooldown"),
        (lambda: BotOnLogin(routes="login"), r"BotOnLogin\(routes=\.\.\.\) must be a sequence"),
        (lambda: BotOnLogin(routes=("/",)), r"must name path segments"),
        (lambda: NewMachine(severity="urgent"), r"severity=\.\.\.\) must be one of info"),
        (lambda: ServiceState(recovered_severity="fine"), r"recovered_severity"),
        (lambda: RevokedSessionReuse(name=""), r"name=\.\.\.\) must be a non-empty string"),
        (lambda: AdvisoryEngine([NewMachine(), NewMachine()], None), r"two advisory rules"),
        (lambda: AdvisoryEngine([cast(Any, object())], None), r"must be Rule instances"),
        (lambda: History(None, max_performers=0), r"max_performers"),
        (lambda: AdvisoryEngine(cast(Any, NewMachine())), r"takes a list of rules"),
    ],
)
def test_bad_configuration_is_a_clear_error(make: Any, message: str) -> None:
    with pytest.raises(LezaConfigError, match=message):
        make()


def test_engine_checks_custom_rule_attributes() -> None:
    class Nameless(Rule):
        def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
            return ()

    class BadKinds(Nameless):
        name = "bad_kinds"
        kinds = "access"  # type: ignore[assignment]

    class BadSeverity(Nameless):
        name = "bad_severity"
        severity = "urgent"

    with pytest.raises(LezaConfigError, match="has no name"):
        AdvisoryEngine([Nameless()], None)
    with pytest.raises(LezaConfigError, match="kinds must be a set of strings"):
        AdvisoryEngine([BadKinds()], None)
    with pytest.raises(LezaConfigError, match="severity must be one of"):
        AdvisoryEngine([BadSeverity()], None)
    with pytest.raises(ValueError, match="severity"):
        Finding("x", severity="urgent")
    two = AdvisoryEngine([Burst(), Burst(actions=("denied",), threshold=100, name="mass_denied")])
    assert [r.name for r in two.rules] == ["burst", "mass_denied"]


def test_a_storage_instance_subclass_is_enough_for_hydration() -> None:
    """A user's own Storage (only write/query) feeds the history."""

    class Listy(Storage):
        def __init__(self, events: list[Event]) -> None:
            self.events = events

        def write(self, events: Sequence[Event]) -> None:
            self.events.extend(events)

        def query(self, kind: str, flt: QueryFilter) -> Page:
            from leza_middleware.storage.memory import select_page

            return select_page([e for e in self.events if e.kind == kind], flt)

    storage = Listy([login(ts=T0 - HOUR, machine="m-1", geo=BERLIN)])
    engine = AdvisoryEngine(default_rules(), storage, clock=Clock())
    new = login(ts=T0, machine="m-2", geo=BERLIN)
    assert [f.rule for f in engine.process([new])] == ["new_machine"]
    third = login(ts=T0 + S, machine="m-3")
    adv = engine.process([third])[0]
    assert re.fullmatch(r"[0-9a-f]{31}", adv.id)
    assert adv.id.startswith(f"{third.ts:013x}")
