"""The reads the traceability views are built on, the same on every backend.

Memory, JSON Lines, SQLite and PostgreSQL answer the new filters alike: a
request's events (access, audit, log, advisory), a session's (access, audit,
advisory), records by id, any of several actions, oldest first with a cursor
that goes forward; :meth:`Storage.sightings` groups the newest events of a
session or performer by IP, network, device and machine the same in SQL as
the generic implementation does in Python. Audit rows carry the session they
were made in, covered by their chain hash, and old rows without one still
verify. A view over a storage that ignores the new filters shows nothing
that does not belong to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_schema

from leza_middleware import Leza, Performer
from leza_middleware.audit.chain import Chain, row_hash
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    Device,
    Event,
    Geo,
    LogEvent,
    SessionEvent,
)
from leza_middleware.sessions.cookies import Keyring
from leza_middleware.storage import JSONLStorage, MemoryStorage, SQLStorage, Storage
from leza_middleware.storage.base import Page, QueryFilter, Sighting

SECRET = "trace-storage-secret-0123456789"
T0 = 1_780_000_000_000_000
S = 1_000_000
BOB = Performer(id="bob", name="Bob")
CAROL = Performer(id="carol", name="Carol")
DESKTOP = Device(key="d1", user_agent="desktop-ua", browser_name="Chrome")
PHONE = Device(key="d2", user_agent="phone-ua", browser_name="Safari", device_type="smartphone")
FRA = Geo(key="161.35.214.0/24", country_code="DE", country_name="Germany", city="Frankfurt")
LON = Geo(key="81.2.69.128/26", country_code="GB", country_name="United Kingdom", city="London")


def access(n: int, rid: str, *, sid: str | None = None, performer: Performer | None = None,
           action: str = "access", ip: str = "161.35.214.167", geo: Geo | None = FRA,
           device: Device | None = DESKTOP, machine: str | None = "m1") -> AccessEvent:  # fmt: skip
    return AccessEvent.build(
        id=f"{T0 + n * S:013x}a{n:017x}", ts=T0 + n * S, action=action, method="GET",
        endpoint=f"/x/{n}", route="/x/{n}", status=403 if action == "denied" else 200,
        duration_us=1000, outcome="success", reason="r", request_id=rid, client_ip=ip,
        ip_valid=True, peer_ip=ip, performer=performer, device=device, geo=geo,
        machine_id=machine if performer else None, session_hash=sid,
    )  # fmt: skip


def events() -> list[Event]:
    """Two requests of bob's session s-1 (Frankfurt, then London), one denied and one
    failed login of his, carol's session s-2, an anonymous request, and what they wrote."""
    s1, s2 = "s" * 31 + "1", "s" * 31 + "2"
    out: list[Event] = [
        access(1, "r-1", sid=s1, performer=BOB),
        access(2, "r-2", sid=s1, performer=BOB),
        access(3, "r-3", sid=s1, performer=BOB, ip="81.2.69.142", geo=LON),
        access(4, "r-4", sid=s1, performer=BOB, action="denied", ip="81.2.69.142", geo=LON),
        access(5, "r-5", sid=s1, performer=BOB, action="login_failed", ip="81.2.69.142", geo=LON),
        access(6, "r-6", sid=s2, performer=CAROL, device=PHONE, machine="m2"),
        access(7, "r-7"),
        access(8, "r-2", sid=s1, performer=BOB),  # a client that reuses its request id
        access(9, "r-9", sid="s" * 31 + "3"),  # refused after its session was revoked
        LogEvent(id=f"{T0 + 2 * S + 5:013x}l1", ts=T0 + 2 * S + 5, level=20, logger="app",
                 message="renamed", request_id="r-2", performer_id="bob"),
        LogEvent(id=f"{T0 + 6 * S + 5:013x}l2", ts=T0 + 6 * S + 5, level=40, logger="app",
                 message="boom", request_id="r-6", performer_id="carol"),
        AdvisoryEvent(id=f"{T0 + 3 * S + 9:013x}v1", ts=T0 + 3 * S + 9, rule="new_country",
                      severity="medium", message="bob from GB", evidence=(f"{T0 + 3 * S:013x}",),
                      performer_id="bob", request_id="r-3", session_id=s1),
        SessionEvent(id=f"{T0 + S:013x}s1", ts=T0 + S, action="session_start", session_id=s1,
                     performer=BOB, device=DESKTOP, geo=FRA, ip="161.35.214.167", machine_id="m1"),
        SessionEvent(id=f"{T0 + 6 * S:013x}s2", ts=T0 + 6 * S, action="session_start",
                     session_id=s2, performer=CAROL, device=PHONE, geo=FRA,
                     ip="161.35.214.167", machine_id="m2"),
    ]  # fmt: skip
    chain = Chain(Keyring(SECRET).subkey(b"audit"))
    audits = [
        AuditEvent(id=f"{T0 + 2 * S + 3:013x}u1", ts=T0 + 2 * S + 3, action="update",
                   entity_type="item", entity_id="42", actor=BOB, diff={"n": {"before": 1,
                   "after": 2}}, request_id="r-2", session_id=s1),
        AuditEvent(id=f"{T0 + 6 * S + 3:013x}u2", ts=T0 + 6 * S + 3, action="update",
                   entity_type="item", entity_id="42", actor=CAROL, request_id="r-6",
                   session_id=s2),
        AuditEvent(id=f"{T0 + 7 * S:013x}u3", ts=T0 + 7 * S, action="bulk_update",
                   entity_type="item", entity_id="*", actor=CAROL,
                   diff={"statement": {"rows": 2, "ids": ["41", "42"]}}),
        AuditEvent(id=f"{T0 + 7 * S + 1:013x}u4", ts=T0 + 7 * S + 1, action="delete",
                   entity_type="item", entity_id="43", actor=CAROL),
    ]  # fmt: skip
    chain.link(audits)
    return out + audits


@pytest.fixture(params=["memory", "jsonl", "sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    made: Storage
    if request.param == "memory":
        made = MemoryStorage()
    elif request.param == "jsonl":
        made = JSONLStorage(tmp_path / "jsonl")
    elif request.param == "sqlite":
        made = SQLStorage(f"sqlite:///{tmp_path / 'leza.db'}")
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            made = SQLStorage(url)
            made.setup()
            made.write(events())
            yield made
            made.close()
        return
    made.setup()
    made.write(events())
    yield made
    made.close()


def ids(page: Page) -> list[str]:
    return [e.id[-2:] for e in page.events]


def test_the_new_filters_on_every_backend(storage: Storage) -> None:
    s1 = "s" * 31 + "1"
    q = storage.query
    assert [e.request_id for e in q("access", QueryFilter(request_id="r-2")).events] == ["r-2"] * 2
    assert ids(q("log", QueryFilter(request_id="r-2"))) == ["l1"]
    assert ids(q("audit", QueryFilter(request_id="r-2"))) == ["u1"]
    assert ids(q("advisory", QueryFilter(request_id="r-3"))) == ["v1"]
    assert ids(q("advisory", QueryFilter(request_id="r-2"))) == []
    assert [e.ts for e in q("access", QueryFilter(session_id=s1)).events] == [
        T0 + n * S for n in (8, 5, 4, 3, 2, 1)
    ]
    assert ids(q("audit", QueryFilter(session_id=s1))) == ["u1"]
    assert ids(q("advisory", QueryFilter(session_id=s1))) == ["v1"]
    assert ids(q("log", QueryFilter(session_id=s1))) == []  # log records carry no session
    anonymous = QueryFilter(session_id="s" * 31 + "3", no_performer=True)
    assert [e.request_id for e in q("access", anonymous).events] == ["r-9"]
    assert [e.request_id for e in q("access", QueryFilter(no_performer=True)).events] == [
        "r-9", "r-7",
    ]  # fmt: skip
    refused = QueryFilter(performer_id="bob", actions=("denied", "login_failed"))
    assert [e.action for e in q("access", refused).events] == ["login_failed", "denied"]
    assert [e.action for e in q("access", QueryFilter(actions=("denied",))).events] == ["denied"]
    assert q("access", QueryFilter(actions=())).events == []
    wanted = (f"{T0 + 6 * S + 3:013x}u2", "nope")
    assert ids(q("audit", QueryFilter(ids=wanted))) == ["u2"]
    assert q("access", QueryFilter(ids=())).events == []
    # Oldest first, the cursor going forward.
    first = q("audit", QueryFilter(entity_type="item", ascending=True, limit=2))
    assert ids(first) == ["u1", "u2"]
    assert first.next_cursor is not None
    rest = q("audit", QueryFilter(entity_type="item", ascending=True, cursor=first.next_cursor))
    assert ids(rest) == ["u3", "u4"]
    assert rest.next_cursor is None


def test_sightings_group_the_newest_events_alike(storage: Storage) -> None:
    s1 = "s" * 31 + "1"
    found, scanned = storage.sightings(QueryFilter(session_id=s1), 100)
    assert scanned == 6
    by_ip = sorted(found, key=lambda s: s.first)
    assert [(s.ip, s.geo.city if s.geo else None, s.requests) for s in by_ip] == [
        ("161.35.214.167", "Frankfurt", 3), ("81.2.69.142", "London", 3),
    ]  # fmt: skip
    assert [(s.first, s.last) for s in by_ip] == [(T0 + S, T0 + 8 * S), (T0 + 3 * S, T0 + 5 * S)]
    assert {s.device.browser_name for s in found if s.device} == {"Chrome"}
    assert {s.machine_id for s in found} == {"m1"}
    # Bounded: the newest ``scan`` events only.
    newest, scanned = storage.sightings(QueryFilter(performer_id="bob"), 2)
    assert scanned == 2
    assert sum(s.requests for s in newest) == 2
    assert {s.last for s in newest} == {T0 + 8 * S, T0 + 5 * S}
    # SQL's grouping equals the generic one over the same events.
    generic = Storage.sightings(storage, QueryFilter(performer_id="bob"), 100)
    assert _key(storage.sightings(QueryFilter(performer_id="bob"), 100)[0]) == _key(generic[0])


def _key(found: Sequence[Sighting]) -> list[tuple[Any, ...]]:
    return sorted((s.ip, s.geo, s.device, s.machine_id, s.first, s.last, s.requests)
                  for s in found)  # fmt: skip


def test_the_session_of_a_change_is_in_its_chain_hash(storage: Storage) -> None:
    key = Keyring(SECRET).subkey(b"audit")
    [row] = storage.query("audit", QueryFilter(request_id="r-2")).events
    assert isinstance(row, AuditEvent)
    assert row.session_id == "s" * 31 + "1"
    assert row_hash(key, row) == row.hash
    row.session_id = "s" * 31 + "2"  # moved to another session: no longer its hash
    assert row_hash(key, row) != row.hash
    row.session_id = None  # a row from before sessions were recorded hashes without one
    assert "session_id" not in row.content()


class Forgetful(MemoryStorage):
    """A user's storage written before the new filters: it ignores them."""

    def query(self, kind: str, flt: QueryFilter) -> Page:
        from dataclasses import replace

        plain = replace(flt, request_id=None, session_id=None, ids=None, actions=None)
        return super().query(kind, plain)


def test_a_backend_ignoring_the_new_filters_cannot_put_others_records_in_a_view(
    tmp_path: Path,
) -> None:
    storage = Forgetful()
    leza = Leza(storage=storage, secret_key=SECRET, geoip_db=False, spill_dir=str(tmp_path))
    try:
        storage.write(events())
        view = leza.trace.request("r-2")
        assert view is not None
        assert {i["request_id"] for i in view["items"]} == {"r-2"}
        assert [i["kind"] for i in view["items"]] == ["access", "audit", "log", "access"]
        session = leza.trace.session("s" * 31 + "2")
        assert session is not None
        assert {r["session_id_hash"] for r in session["requests"]["items"]} == {"s" * 31 + "2"}
        assert [p["requests"] for p in session["places"]] == [1]
        bob = leza.trace.performer("bob")
        assert bob is not None
        assert [r["action"] for r in bob["refused"]] == ["login_failed", "denied"]
        assert leza.trace.record("nope") is None
    finally:
        leza.shutdown(2)


def test_a_tampered_change_is_flagged_on_its_entity_history(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'leza.db'}"
    leza = Leza(storage=url, secret_key=SECRET, geoip_db=False, spill_dir=str(tmp_path / "s"))
    try:
        leza.storage.write(events())
        view = leza.trace.entity("item", "42")
        assert view is not None
        assert [i["_id"][-2:] for i in view["items"]] == ["u1", "u2", "u3"]  # the bulk one too
        assert [i["intact"] for i in view["items"]] == [True, True, True]
        with sqlite3.connect(tmp_path / "leza.db") as conn:
            conn.execute("UPDATE leza_audit SET reason = 'nothing to see' WHERE id LIKE '%u2'")
        view = leza.trace.entity("item", "42")
        assert view is not None
        assert [i["intact"] for i in view["items"]] == [True, False, True]
        assert not leza.audit.verify()
    finally:
        leza.shutdown(2)
    # Without the key the rows were written with, nothing can be said of them.
    other = Leza(storage=url, geoip_db=False, spill_dir=str(tmp_path / "t"))
    try:
        view = other.trace.entity("item", "42")
        assert view is not None
        assert {i["intact"] for i in view["items"]} == {None}
    finally:
        other.shutdown(2)


def test_a_session_past_the_scan_is_counted_as_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leza_middleware.trace import views

    leza = Leza(storage=MemoryStorage(), secret_key=SECRET, geoip_db=False,
                spill_dir=str(tmp_path))  # fmt: skip
    try:
        leza.storage.write(events())
        s1 = "s" * 31 + "1"
        view = leza.trace.session(s1)
        assert view is not None
        assert (view["request_count"], view["request_count_exact"]) == (6, True)
        monkeypatch.setattr(views, "SCAN", 4)
        view = leza.trace.session(s1)
        assert view is not None
        assert (view["request_count"], view["request_count_exact"]) == (4, False)
        assert sum(p["requests"] for p in view["places"]) == 4  # the newest 4
        assert len(view["requests"]["items"]) == 6  # the timeline is paged, not scanned
    finally:
        leza.shutdown(2)


@pytest.mark.both_databases
@pytest.mark.parametrize("reason", [None, "logout", "revoked", "idle_timeout", "absolute_timeout"])
def test_a_sessions_requests_are_found_however_it_ended(
    tmp_path: Path, storage_url: str, reason: str | None
) -> None:
    """A session's signed-in requests are read by their performer within the
    session's time: its end moves ``last_seen`` (to a late poll's time for a
    timeout), and the performer's other session at the same time stays out."""
    leza = Leza(storage=storage_url, secret_key=SECRET, geoip_db=False,
                spill_dir=str(tmp_path / "spill"), sessions=False)  # fmt: skip
    s1, s2 = "a" * 32, "b" * 32
    day = 86_400 * S
    mine = [access(n, f"m-{n}", sid=s1, performer=BOB) for n in (1, 2, 3)]
    other = [access(n, f"o-{n}", sid=s2, performer=BOB) for n in (2, 4)]  # bob's phone
    refused = access(5, "x-5", sid=s1)  # after a revocation: no performer
    changes: list[Event] = [
        SessionEvent(id=f"{T0 + S:013x}s1", ts=T0 + S, action="session_start", session_id=s1,
                     performer=BOB),
        SessionEvent(id=f"{T0 + 2 * S:013x}s2", ts=T0 + 2 * S, action="session_start",
                     session_id=s2, performer=BOB),
    ]  # fmt: skip
    if reason is not None:
        # A timeout is found by a poll, here long after (the app was down for days).
        late = T0 + (3 * day if reason.endswith("timeout") else 4 * S)
        changes.append(SessionEvent(id=f"{late:013x}e1", ts=late, action="session_end",
                                    session_id=s1, end_reason=reason))  # fmt: skip
    try:
        leza.storage.write([*mine, *other, refused, *changes])
        view = leza.trace.session(s1)
        assert view is not None
        found = [r["request_id"] for r in view["requests"]["items"]]
        assert found == ["x-5", "m-3", "m-2", "m-1"]
        assert view["request_count"] == 4
    finally:
        leza.shutdown(2)


def _rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows of ``table`` an EXPLAIN ANALYZE plan read: returned plus filtered out."""
    own = 0
    if plan.get("Relation Name") == table:
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    return int(own) + sum(_rows_read(p, table) for p in plan.get("Plans", []))


def test_a_performer_who_stopped_long_ago_is_read_in_bounded_ranges(
    tmp_path: Path, postgres_url: str
) -> None:
    """A performer with 5 % of all requests, none in the newer half. Asked for
    their newest request "newest first, limit 1", PostgreSQL's planner expects one
    among the newest requests and walks the time index through every request
    recorded since (0.4 s at 2,000,000 events): the view reads it at the newest
    time its sightings found instead. No statement of the view reads more rows of
    ``leza_access`` than the performer has (others' requests are not walked
    through), and who they are is still taken from their newest request."""
    from sqlalchemy import event, text

    from leza_middleware.trace.views import SCAN

    n, stale, newest = 200_000, "stale", 99_980  # theirs: every 20th of the first half
    theirs = newest // 20
    with postgres_schema(postgres_url) as url:
        storage = SQLStorage(url)
        storage.setup()
        with storage.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO leza_access (id, ts, action, method, endpoint, status,"
                    " duration_us, outcome, reason, request_id, client_ip, ip_valid, peer_ip,"
                    " proxy_chain, scheme, host, app, performer_id, performer_key)"
                    " SELECT lpad(i::text, 13, '0'), :t0 + i * :s, 'access', 'GET', '/x', 200,"
                    " 1000, 'success', 'ok', 'r-' || i, '10.0.0.1', true, '10.0.0.1', '',"
                    " 'https', 'h', 'app',"
                    " CASE WHEN i % 20 = 0 AND i <= :newest THEN :p ELSE 'user-' || i % 500 END,"
                    " CASE WHEN i = :newest THEN 'k-now' WHEN i % 20 = 0 AND i < :newest"
                    " THEN 'k-before' END"
                    " FROM generate_series(1::bigint, :n) AS g(i)"
                ),
                {"t0": T0, "s": S, "n": n, "newest": newest, "p": stale},
            )
            for key, name in (("k-before", "Stale (before)"), ("k-now", "Stale (now)")):
                who = Performer(id=stale, name=name)
                conn.execute(
                    text(
                        "INSERT INTO leza_performer (key, performer_id, name, email, json)"
                        " VALUES (:k, :p, :name, '', :json)"
                    ),
                    {"k": key, "p": stale, "name": name, "json": who.to_json()},
                )
            conn.execute(text("ANALYZE leza_access"))
        storage.close()
        leza = Leza(storage=url, secret_key=SECRET, geoip_db=False, sessions=False,
                    advisories=False, spill_dir=str(tmp_path / "spill"))  # fmt: skip
        statements: list[tuple[str, Any]] = []

        def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
            if "leza_access" in sql:
                statements.append((sql, params))

        engine = leza.storage.engine  # type: ignore[attr-defined]
        try:
            event.listen(engine, "before_cursor_execute", seen)
            view = leza.trace.performer(stale)
            event.remove(engine, "before_cursor_execute", seen)
            assert view is not None
            assert view["performer"]["name"] == "Stale (now)"  # the newest request's
            assert (view["request_count"], view["request_count_exact"]) == (SCAN, False)
            assert len(statements) >= 4  # the refusals (2), the sightings, the newest request
            with engine.connect() as conn:
                cur = conn.connection.driver_connection.cursor()
                for sql, params in statements:
                    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
                    read = _rows_read(cur.fetchone()[0][0]["Plan"], "leza_access")
                    assert read <= theirs, (read, sql)
        finally:
            leza.shutdown(2)
