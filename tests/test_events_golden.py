"""The events' JSON form, pinned: one event of each kind, built from fixed values.

tests/golden/events.jsonl was produced by the hand-written classes of
leza_middleware/events.py as it was before the event types became dataclasses
(issue 16): every key, its order and its value. The JSON form is what spill
files, JSON Lines storage, exports, the admin view's "more details" and users'
pipelines read, so a change here is a breaking change: it needs an upgrade
note in CHANGELOG.md, never a regenerated golden file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import events as ev
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    CheckEvent,
    Device,
    Event,
    Geo,
    LogEvent,
    SessionEvent,
    SessionRecord,
    event_from_dict,
    ua_key,
)
from leza_middleware.performer import Organization, Performer

GOLDEN = Path(__file__).parent / "golden" / "events.jsonl"
TS = 1_751_816_964_062_417  # 2025-07-06T15:49:24.062417Z
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/91.0"


def golden() -> dict[str, dict[str, Any]]:
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    return {row["name"]: row["json"] for row in map(json.loads, lines)}


def text(data: Any) -> str:
    """The exact JSON text: key order counts."""
    return json.dumps(data, ensure_ascii=False)


def build() -> dict[str, Event]:
    """One of each kind from fixed values (``ev`` is the events module)."""

    ts = 1_751_816_964_062_417  # 2025-07-06T15:49:24.062417Z
    device = Device(
        key=ua_key("Mozilla/5.0 (X11; Linux x86_64) Chrome/91.0"),
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/91.0",
        browser_type="browser",
        browser_name="Chrome",
        browser_version="91.0",
        engine="Blink",
        os_name="GNU/Linux",
        os_platform="x64",
        device_type="desktop",
        is_pc=True,
    )
    bot = Device(
        key=ua_key("Googlebot/2.1"),
        user_agent="Googlebot/2.1",
        browser_type="bot",
        bot_name="Googlebot",
        bot_category="Search bot",
        bot_url="https://google.com/bot",
    )
    geo = Geo(
        key="161.35.208.0/20",
        country_code="DE",
        country_name="Germany",
        region_code="HE",
        region_name="Hesse",
        city="Frankfurt am Main",
        zip_code="60313",
        time_zone="Europe/Berlin",
        latitude=50.1188,
        longitude=8.6843,
    )
    performer = Performer(
        id="u-42",
        name="Ada Lovelace",
        email="ada@example.com",
        organization_id="o-1",
        organization_name="Analytical",
        role_name="admin",
        clientid="insight",
        organizations=(Organization(id="o-1", name="Analytical", type="company", labels=("eu",)),),
    )
    return {
        "access": AccessEvent.build(
            id="0190a1b2c3d4e5f60718293a4b5c6d7e",
            ts=ts,
            action="access",
            method="GET",
            endpoint="/live?token=[Filtered]&page=2",
            route="/live",
            status=200,
            duration_us=1234,
            outcome="success",
            reason="User has the permission Live Tracking Page Permission to access this "
            "resource of this application Insight App",
            request_id="req-1",
            client_ip="161.35.214.167",
            ip_valid=True,
            peer_ip="10.0.0.1",
            proxy_chain=("161.35.214.167", "10.0.0.2"),
            scheme="https",
            host="app.example.com",
            app="insight",
            device=device,
            geo=geo,
            performer=performer,
            machine_id="m-1",
            session_hash="s-hash-1",
            headers={"x-tenant": "acme"},
        ),
        "access_bare": AccessEvent.build(
            id="0190a1b2c3d4e5f60718293a4b5c6d7f",
            ts=ts + 1,
            action="denied",
            method="POST",
            endpoint="/admin",
            route=None,
            status=403,
            duration_us=7,
            outcome="denied",
            reason="User lacks the permission Admin",
            request_id="req-2",
            client_ip="161.35.614.165",
            ip_valid=False,
            peer_ip="161.35.614.165",
        ),
        "access_bot": AccessEvent.build(
            id="0190a1b2c3d4e5f60718293a4b5c6d80",
            ts=ts + 2,
            action="access",
            method="GET",
            endpoint="/robots.txt",
            route="/robots.txt",
            status=200,
            duration_us=50,
            outcome="success",
            reason="",
            request_id="req-3",
            client_ip="66.249.66.1",
            ip_valid=True,
            peer_ip="66.249.66.1",
            device=bot,
        ),
        "session": SessionEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d81",
            ts=ts,
            action="session_start",
            session_id="sess-pub-1",
            app="insight",
            performer=performer,
            device=device,
            geo=geo,
            ip="161.35.214.167",
            machine_id="m-1",
        ),
        "session_end": SessionEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d82",
            ts=ts + 5_000_000,
            action="session_end",
            session_id="sess-pub-1",
            app="insight",
            end_reason="logout",
        ),
        "audit": AuditEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d83",
            ts=ts,
            action="update",
            entity_type="role",
            entity_id="42",
            actor=performer,
            before={"name": "viewer"},
            after={"name": "editor"},
            diff={"name": ["viewer", "editor"]},
            reason="promotion",
            request_id="req-1",
            client_ip="161.35.214.167",
            app="insight",
            chain="c-1",
            seq=3,
            prev_hash="ab" * 16,
            hash="cd" * 16,
            session_id="sess-pub-1",
        ),
        "log": LogEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d84",
            ts=ts,
            level=40,
            logger="app.orders",
            message="order 7 failed: ünïcode ✓",
            exception="Traceback...\nValueError: x",
            request_id="req-1",
            performer_id="u-42",
            route="/orders/{id}",
            origin="orders.py:42 in ship",
            app="insight",
        ),
        "advisory": AdvisoryEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d85",
            ts=ts,
            rule="impossible_travel",
            severity="high",
            message="Frankfurt then Sydney within 10 minutes",
            evidence=["e1", "e2"],
            performer_id="u-42",
            ip="161.35.214.167",
            details={"km": 16500, "minutes": 10},
            app="insight",
            request_id="req-1",
            session_id="sess-pub-1",
        ),
        "check": CheckEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d86",
            ts=ts,
            check="billing",
            ok=False,
            state="down",
            previous="up",
            latency_ms=5001.5,
            error="timed out",
            app="insight",
        ),
        "check_probe": CheckEvent(
            id="0190a1b2c3d4e5f60718293a4b5c6d87",
            ts=ts,
            check="db",
            ok=1,  # type: ignore[arg-type]  # an int is kept as a bool
            state="up",
            previous="up",
            latency_ms=None,
        ),
    }


def record() -> SessionRecord:
    events = build()
    start, end = events["session"], events["session_end"]
    assert isinstance(start, SessionEvent)
    assert isinstance(end, SessionEvent)
    rec = SessionRecord.started_by(start)
    rec.apply(end)
    return rec


def test_golden_covers_every_kind() -> None:
    kinds = {e.kind for e in build().values()}
    assert kinds == set(ev.EVENT_TYPES)
    assert set(golden()) == {*build(), "session_record"}


@pytest.mark.parametrize("name", sorted(golden()))
def test_json_form_is_pinned(name: str) -> None:
    built = record() if name == "session_record" else build()[name]
    assert text(built.to_dict()) == text(golden()[name])


@pytest.mark.parametrize("name", sorted(set(golden()) - {"session_record"}))
def test_from_dict_reads_the_pinned_form_back(name: str) -> None:
    data = golden()[name]
    event = event_from_dict(data)
    assert type(event) is type(build()[name])
    assert event == build()[name]
    assert text(event.to_dict()) == text(data)


def test_derived_and_normalised_fields() -> None:
    """What the constructors compute or copy, as the hand-written ones did."""
    events = build()
    log = events["log"]
    assert isinstance(log, LogEvent)
    assert log.action == "error"
    assert not log.priority
    advisory = events["advisory"]
    assert isinstance(advisory, AdvisoryEvent)
    assert advisory.action == advisory.rule == "impossible_travel"
    assert advisory.priority
    assert advisory.evidence == ("e1", "e2")  # a list is kept as a tuple
    probe = events["check_probe"]
    assert isinstance(probe, CheckEvent)
    assert probe.ok is True
    assert probe.action == "probe"
    assert probe.performer_id == "db"
    assert events["check"].action == "state_change"
    assert events["check"].priority
    details = {"a": 1}
    copied = AdvisoryEvent(id="x", ts=1, rule="r", severity="low", message="", details=details)
    details["a"] = 2  # the caller's dict changing later does not change the event
    assert copied.details == {"a": 1}
    assert copied.evidence == ()
    before = {"k": 1}
    audit = AuditEvent(id="x", ts=1, action="a", entity_type="t", entity_id="1", before=before)
    before["k"] = 2
    assert audit.before == {"k": 1}
    assert audit.after is None
    assert audit.diff == {}
    assert audit.priority
    assert audit.actor_id is None
    assert AuditEvent.from_dict({**audit.to_dict(), "diff": None}).diff == {}


def test_equality_and_hash() -> None:
    a, b = build(), build()
    for name in a:
        assert a[name] == b[name], name
        with pytest.raises(TypeError):
            hash(a[name])  # mutable events are unhashable, as before
    log = a["log"]
    assert isinstance(log, LogEvent)
    other = LogEvent(id=log.id, ts=log.ts, level=50, logger=log.logger, message=log.message)
    assert other != log
    assert a["log"] != a["advisory"]


def test_validation_is_kept() -> None:
    with pytest.raises(ValueError, match="severity must be one of info, low, medium"):
        AdvisoryEvent(id="x", ts=1, rule="r", severity="urgent", message="")
    with pytest.raises(ValueError, match="check states are unknown, up, down"):
        CheckEvent(id="x", ts=1, check="c", ok=True, state="sideways", previous="up")
    with pytest.raises(ValueError, match="not a session change"):
        SessionEvent(id="x", ts=1, action="session_paused", session_id="s")
    with pytest.raises(ValueError, match="end_reason must be one of"):
        SessionEvent(id="x", ts=1, action="session_end", session_id="s", end_reason="bored")
    with pytest.raises(TypeError):
        LogEvent("x", 1, 20, "l", "m")  # type: ignore[call-arg]  # keyword-only, as before
    with pytest.raises(TypeError):
        LogEvent(id="x", ts=1, level=20, logger="l", message="m", action="error")  # type: ignore[call-arg]


def test_reprs_stay_short() -> None:
    events = build()
    assert repr(events["log"]) == "LogEvent(error app.orders: 'order 7 failed: ünïcode ✓')"
    assert repr(events["audit"]) == "AuditEvent(update role:42 #3)"
    assert repr(events["advisory"]).startswith("AdvisoryEvent(impossible_travel high: ")
    assert repr(events["check"]) == "CheckEvent(billing up->down ok=False)"
    assert repr(events["session"]) == "SessionEvent(session_start sess-pub-1…)"
    assert "ada@example.com" not in repr(events["access"])  # no payloads in reprs


def test_public_names() -> None:
    for name in ev.__all__:
        assert hasattr(ev, name), name
    assert {"Device", "Geo", "AccessEvent", "SessionRecord", "log_action"} <= set(ev.__all__)
    assert isinstance(build()["access"], AccessEvent)
    assert Device.__module__ == Geo.__module__ == "leza_middleware.events.dimensions"
