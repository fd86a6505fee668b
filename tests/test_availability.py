"""Availability: checks against real servers, state and alarms, the monitor, leadership."""

from __future__ import annotations

import asyncio
import email
import http.server
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from leza_middleware.availability import CallableCheck, HttpCheck, SqlCheck, TcpCheck
from leza_middleware.availability.leader import FileLeadership, PostgresLeadership
from leza_middleware.availability.monitor import Maintenance, Monitor
from leza_middleware.availability.state import AlarmState, Tracker
from leza_middleware.errors import LezaConfigError
from leza_middleware.events import CheckEvent, event_from_dict

# ----------------------------------------------------------------------------- real servers


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"ok" if self.status < 400 else b"broken"
        self.send_response(self.status)
        if 300 <= self.status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Service:
    """A real HTTP server on loopback that can be told to fail, or be taken down and up."""

    def __init__(self) -> None:
        self.handler = type("H", (_Handler,), {"status": 200})
        self.port = _free_port()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def up(self) -> None:
        for _ in range(50):  # the port may linger for a moment after down()
            try:
                self.server = http.server.ThreadingHTTPServer(
                    ("127.0.0.1", self.port), self.handler
                )
                break
            except OSError:
                time.sleep(0.05)
        assert self.server is not None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.down()


# ----------------------------------------------------------------------------- checks


def test_http_check_follows_the_real_status(service: Service) -> None:
    check = HttpCheck("web", service.url, timeout=2, interval=5)
    result = check.probe()
    assert result.ok
    assert result.error is None
    assert result.latency_ms > 0

    service.handler.status = 503
    result = check.probe()
    assert not result.ok
    assert result.error == "HTTP 503"

    service.handler.status = 302  # a redirect is an answer (2xx/3xx by default)
    assert check.probe().ok
    assert not HttpCheck("web", service.url, expect_status=200).probe().ok

    service.handler.status = 200
    assert HttpCheck("head", service.url, method="head").probe().ok
    service.down()
    result = check.probe()
    assert not result.ok
    assert "refused" in (result.error or "").lower()


def test_tcp_check_against_a_real_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    check = TcpCheck("db", "127.0.0.1", port, timeout=1, interval=5)
    assert check.probe().ok
    listener.close()
    result = check.probe()
    assert not result.ok
    assert result.error


def test_sql_check_on_real_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    ok = SqlCheck("sqlite", f"sqlite:///{db}", timeout=1, interval=5)
    assert ok.probe().ok
    assert "sqlite" in ok.describe()
    ok.close()
    missing = SqlCheck("gone", f"sqlite:///{tmp_path}/no/such/dir/x.db", timeout=1, interval=5)
    result = missing.probe()
    assert not result.ok
    assert "OperationalError" in (result.error or "")


def test_callable_checks_sync_async_false_and_raising() -> None:
    async def healthy() -> None:
        await asyncio.sleep(0)

    async def slow() -> None:
        await asyncio.sleep(5)

    def broken() -> None:
        raise RuntimeError("queue backlog 5000")

    assert CallableCheck("sync", lambda: None).probe().ok
    assert CallableCheck("truthy", lambda: "anything").probe().ok
    assert CallableCheck("async", healthy).probe().ok
    assert CallableCheck("false", lambda: False).probe().error == "returned False"
    assert CallableCheck("raise", broken).probe().error == "RuntimeError: queue backlog 5000"

    def hostile() -> None:  # an error text from elsewhere: a server's message, say
        raise RuntimeError("down\x00\r\nFAKE LOG LINE \udcff")

    def exits() -> None:  # a library that gives up with sys.exit(): a failed probe
        sys.exit("client library gave up")

    assert CallableCheck("exits", exits).probe().error == "SystemExit: client library gave up"

    # Stored, shown and sent in alarms: one line, storable (PostgreSQL refuses NUL).
    assert CallableCheck("hostile", hostile).probe().error == (
        "RuntimeError: downFAKE LOG LINE \ufffd"
    )
    timed = CallableCheck("slow", slow, timeout=0.1, interval=1).probe()
    assert not timed.ok
    assert "TimeoutError" in (timed.error or "")
    assert timed.latency_ms < 2000


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HttpCheck("x", "ftp://host/"), "url must be an http\\(s\\) URL"),
        (lambda: HttpCheck("x", "http://h/", method="POST"), "method must be GET or HEAD"),
        (lambda: HttpCheck("x", "http://h/", expect_status=[700]), "expect_status"),
        (lambda: TcpCheck("x", "h", 70000), "port must be 1-65535"),
        (lambda: TcpCheck("x", "h", 80, interval=0), "interval must be > 0"),
        (lambda: TcpCheck("x", "h", 80, interval=1, timeout=2), "must not exceed the interval"),
        (lambda: TcpCheck("x", "h", 80, retries=0), "retries must be an integer >= 1"),
        (lambda: TcpCheck("", "h", 80), "a check name must be"),
        (lambda: CallableCheck("x", 42), "expected a callable"),  # type: ignore[arg-type]
        (lambda: SqlCheck("x", "not a url"), "not a database URL"),
    ],
)
def test_bad_check_configuration_is_a_clear_error(build: Any, message: str) -> None:
    with pytest.raises(LezaConfigError, match=message):
        build()


# ----------------------------------------------------------------------------- state, alarms


def test_tracker_needs_retries_in_a_row_to_change_state() -> None:
    t = Tracker(retries=3)
    assert [(t.apply(ok), t.state) for ok in (True,)] == [("unknown", "up")]  # first success
    for ok in (False, False, True, False, False):  # never 3 failures in a row
        t.apply(ok)
        assert t.state == "up"
    t.apply(False)
    assert t.state == "down"
    for ok in (True, True, False, True, True):  # never 3 successes in a row
        t.apply(ok)
        assert t.state == "down"
    assert t.apply(True) == "down"
    assert t.state == "up"


def test_unknown_to_down_takes_retries_failures() -> None:
    t = Tracker(retries=2)
    t.apply(False)
    assert t.state == "unknown"
    t.apply(False)
    assert t.state == "down"


def test_alarms_on_state_changes_only_with_resend() -> None:
    a = AlarmState(resend=60)
    assert a.decide("unknown", "up", 0, False) is None  # unknown -> up is silent
    assert a.decide("up", "up", 1, False) is None
    assert a.decide("up", "down", 2, False) == "down"
    assert a.decide("down", "down", 30, False) is None
    assert a.decide("down", "down", 62, False) == "still_down"
    assert a.decide("down", "down", 100, False) is None
    assert a.decide("down", "down", 123, False) == "still_down"
    assert a.decide("down", "up", 130, False) == "recovered"
    assert a.decide("up", "up", 131, False) is None
    assert AlarmState().decide("unknown", "down", 0, False) == "down"


def test_maintenance_silences_then_alerts_if_still_down() -> None:
    a = AlarmState()
    assert a.decide("up", "down", 0, True) is None  # inside the window
    assert a.decide("down", "down", 10, True) is None
    assert a.decide("down", "down", 20, False) == "down"  # window over, still down
    assert a.decide("down", "up", 30, False) == "recovered"

    quiet = AlarmState()
    assert quiet.decide("up", "down", 0, True) is None
    assert quiet.decide("down", "up", 5, True) is None  # never alarmed: recovers silently
    assert quiet.decide("up", "up", 6, False) is None


def test_maintenance_window_covers_named_checks_only() -> None:
    w = Maintenance(100, 200, frozenset({"db"}))
    assert w.covers("db", 100)
    assert w.covers("db", 199)
    assert not w.covers("db", 200)
    assert not w.covers("web", 150)
    assert Maintenance(100, 200).covers("web", 150)


def test_check_event_round_trips_and_marks_state_changes() -> None:
    e = CheckEvent(id="e1", ts=1_700_000_000_000_000, check="web", ok=False, state="down",
                   previous="up", latency_ms=3.5, error="HTTP 500")  # fmt: skip
    assert e.action == "state_change"
    assert e.priority
    assert event_from_dict(e.to_dict()) == e
    same = CheckEvent(id="e2", ts=1, check="web", ok=True, state="up", previous="up")
    assert same.action == "probe"
    assert not same.priority
    with pytest.raises(ValueError, match="check states"):
        CheckEvent(id="e3", ts=1, check="web", ok=True, state="sideways", previous="up")


# ----------------------------------------------------------------------------- monitor


class _Always:
    def __init__(self, leader: bool = True) -> None:
        self.leader = leader
        self.released = False

    def acquire(self) -> bool:
        return self.leader

    def release(self) -> None:
        self.released = True

    def after_fork(self) -> None:
        pass


def _monitor(leader: bool = True) -> tuple[Monitor, list[CheckEvent], list[tuple[str, str]]]:
    events: list[CheckEvent] = []
    alarms: list[tuple[str, str]] = []
    monitor = Monitor(
        record=events.append,
        notify=lambda event, decision, check: alarms.append((check.name, decision)),
        leadership=_Always(leader),
        leader_retry=0.05,
    )
    return monitor, events, alarms


def test_monitor_probes_a_real_service_down_and_up(service: Service) -> None:
    monitor, events, alarms = _monitor()
    monitor.add(HttpCheck("web", service.url, interval=0.1, timeout=0.1, retries=2))
    monitor.start()
    try:
        assert wait_for(lambda: any(e.state == "up" for e in events))
        service.down()
        assert wait_for(lambda: ("web", "down") in alarms)
        service.up()
        assert wait_for(lambda: ("web", "recovered") in alarms)
    finally:
        monitor.stop()
    assert alarms == [("web", "down"), ("web", "recovered")]  # exactly one each
    changes = [(e.previous, e.state) for e in events if e.action == "state_change"]
    assert changes == [("unknown", "up"), ("up", "down"), ("down", "up")]
    downs = [e for e in events if not e.ok]
    assert downs
    assert all(e.error for e in downs)


def test_a_hung_callable_is_reported_down_at_each_interval() -> None:
    release = threading.Event()
    monitor, events, alarms = _monitor()
    monitor.add(CallableCheck("stuck", lambda: release.wait(10), interval=0.1, timeout=0.05,
                              retries=2))  # fmt: skip
    monitor.start()
    try:
        assert wait_for(lambda: ("stuck", "down") in alarms, timeout=8)
        assert any("timed out" in (e.error or "") for e in events)
    finally:
        release.set()
        monitor.stop()


def test_a_non_leader_never_probes() -> None:
    calls: list[int] = []
    monitor, events, _ = _monitor(leader=False)
    monitor.add(CallableCheck("c", lambda: calls.append(1), interval=0.05, timeout=0.05))
    monitor.start()
    time.sleep(0.4)
    monitor.stop()
    assert calls == []
    assert events == []
    assert not monitor.is_leader


def test_duplicate_check_names_are_refused() -> None:
    monitor, _, _ = _monitor()
    monitor.add(TcpCheck("db", "127.0.0.1", 5432))
    with pytest.raises(LezaConfigError, match="already registered"):
        monitor.add(TcpCheck("db", "127.0.0.1", 5433))


# ----------------------------------------------------------------------------- leadership


def test_file_leadership_is_exclusive_and_moves_on_release(tmp_path: Path) -> None:
    a = FileLeadership(tmp_path / "x.lock")
    b = FileLeadership(tmp_path / "x.lock")
    assert a.acquire()
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_postgres_leadership_is_exclusive(postgres_url: str) -> None:
    from sqlalchemy import create_engine

    one, two = create_engine(postgres_url), create_engine(postgres_url)
    a, b = PostgresLeadership(one, "app"), PostgresLeadership(two, "app")
    other_app = PostgresLeadership(two, "another-app")
    try:
        assert a.acquire()
        assert a.acquire()
        assert not b.acquire()
        assert other_app.acquire()  # a different app elects its own leader
        a.release()
        assert b.acquire()
    finally:
        for lead in (a, b, other_app):
            lead.release()
        one.dispose()
        two.dispose()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self) -> None:
            self.messages: list[Any] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller.port, inbox.messages
    controller.stop()


def test_down_and_up_send_one_alarm_each_and_uptime_matches_history(
    make_leza: Any,
    service: Service,
    webhook: tuple[str, list[dict[str, Any]]],
    smtp: tuple[int, list[Any]],
) -> None:
    url, bodies = webhook
    port, mails = smtp
    leza = make_leza(advisories=False)
    leza.notify.webhook(url, secret="hook-secret-0123456789")
    leza.notify.email(host="127.0.0.1", port=port, sender="leza@example.com",
                      recipients=["ops@example.com"])  # fmt: skip
    leza.availability.http("billing", service.url, interval=0.1, timeout=0.1, retries=2)
    assert wait_for(lambda: leza.availability.status()["billing"]["state"] == "up")
    service.down()
    assert wait_for(lambda: len(bodies) == 1)
    service.up()
    assert wait_for(lambda: len(bodies) == 2)
    time.sleep(0.5)  # a few more UP probes: nothing more may be sent
    leza.availability.stop()
    assert leza.notify.flush(5)
    assert leza.flush(5)

    assert [b["event"] for b in bodies] == ["down", "recovered"]
    down, recovered = bodies
    assert down["check"] == "billing"
    assert down["state"] == "down"
    assert down["error"]
    assert recovered["state"] == "up"
    assert wait_for(lambda: len(mails) == 2)
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert any("DOWN" in s and "billing" in s for s in subjects)
    assert any("RECOVERED" in s.upper() and "billing" in s for s in subjects)

    # Uptime is exactly what the stored probes say.
    probes = leza.query.checks(limit=10_000)
    states = [p["state"] for p in probes if p["state"] != "unknown"]
    expected = round(100.0 * states.count("up") / len(states), 3)
    status = leza.availability.status()["billing"]
    assert status["uptime_24h"] == status["uptime_7d"] == status["uptime_30d"] == expected
    assert 0 < expected < 100
    changes = leza.query.checks(action="state_change")
    assert [(c["previous"], c["state"]) for c in reversed(changes)] == [
        ("unknown", "up"), ("up", "down"), ("down", "up"),
    ]  # fmt: skip
    assert status["last_checked"] == probes[0]["timestamp"]


def test_maintenance_window_keeps_notifiers_quiet(
    make_leza: Any, service: Service, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = webhook
    leza = make_leza(advisories=False)
    leza.notify.webhook(url)
    leza.availability.maintenance(duration=60, reason="deploy")
    leza.availability.http("web", service.url, interval=0.1, timeout=0.1, retries=2)
    assert wait_for(lambda: leza.availability.status()["web"]["state"] == "up")
    service.down()
    assert wait_for(lambda: leza.availability.status()["web"]["state"] == "down")
    service.up()
    assert wait_for(lambda: leza.availability.status()["web"]["state"] == "up")
    leza.availability.stop()
    assert leza.notify.flush(5)
    assert bodies == []  # down and back inside the window: silent
    assert leza.flush(5)
    assert len(leza.query.checks(action="state_change")) == 3  # but recorded


def test_bad_maintenance_and_checks_through_leza(make_leza: Any) -> None:
    leza = make_leza()
    with pytest.raises(LezaConfigError, match="either end or duration"):
        leza.availability.maintenance()
    with pytest.raises(LezaConfigError, match="ends before it starts"):
        leza.availability.maintenance("2026-01-02", "2026-01-01")
    with pytest.raises(LezaConfigError, match="port"):
        leza.availability.tcp("db", "127.0.0.1", 0)
    assert leza.availability.checks == ()


LEADER_SCRIPT = """
import os, sys, time
from leza_middleware import Leza
leza = Leza(storage=sys.argv[1], geoip_db=False, flush_interval=0.05, advisories=False,
            secret_key="leader-test-secret-key")
leza.availability.monitor.leader_retry = 0.2
def probe():
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()}\\n")
leza.availability.check("tick", probe, interval=0.05, timeout=0.05)
print("ready", flush=True)
time.sleep(60)
"""


def test_one_process_probes_and_another_takes_over_when_it_dies(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'leza.db'}"
    ticks = tmp_path / "ticks.txt"
    script = tmp_path / "worker.py"
    script.write_text(LEADER_SCRIPT)
    procs = [
        subprocess.Popen([sys.executable, str(script), db, str(ticks)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"

        def probers() -> set[int]:
            return {int(x) for x in ticks.read_text().split()} if ticks.exists() else set()

        assert wait_for(lambda: len(ticks.read_text().split()) >= 10 if ticks.exists() else False)
        first = probers()
        assert len(first) == 1  # one monitor for the three processes
        (leader,) = first
        victim = next(p for p in procs if p.pid == leader)
        victim.kill()
        victim.wait()
        ticks.write_text("")
        assert wait_for(lambda: len(probers()) >= 1, timeout=10)
        time.sleep(0.5)
        after = probers()
        assert len(after) == 1
        assert leader not in after
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


def test_a_tcp_port_taken_down_and_back_alarms_once_each_way(
    make_leza: Any, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = webhook
    port = _free_port()

    def listen() -> socket.socket:
        for _ in range(50):  # the port may linger for a moment after close()
            try:
                return socket.create_server(("127.0.0.1", port))
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"port {port} stayed busy")

    listener = listen()
    leza = make_leza(advisories=False)
    leza.notify.webhook(url)
    leza.availability.tcp("db", "127.0.0.1", port, interval=0.1, timeout=0.1, retries=2)
    try:
        assert wait_for(lambda: leza.availability.status()["db"]["state"] == "up")
        listener.close()
        assert wait_for(lambda: [b["event"] for b in bodies] == ["down"])
        listener = listen()
        assert wait_for(lambda: [b["event"] for b in bodies] == ["down", "recovered"])
        time.sleep(0.4)  # more UP probes send nothing more
    finally:
        listener.close()
        leza.availability.stop()
    assert leza.notify.flush(5)
    assert [(b["event"], b["check"], b["state"]) for b in bodies] == [
        ("down", "db", "down"),
        ("recovered", "db", "up"),
    ]
