"""One alarm per outage: a pager rings once when a check goes DOWN and once when it
recovers, whatever else the outage produces (advisories, a new leader, a restart).

Real parts throughout: HTTP and TCP services on loopback that are taken down and
brought back, a real webhook receiver (tests/conftest.py ``webhook``), a custom
notifier, a real ``Leza`` with the default advisories and ``advisory_notify``, and
real processes sharing a SQLite database for the leader takeover.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_availability import Service, _free_port

from leza_middleware.availability.checks import CallableCheck
from leza_middleware.availability.monitor import Monitor
from leza_middleware.events import CheckEvent
from leza_middleware.notify import Notification, Notifier

RESEND = 0.6  # seconds between still_down resends in the end-to-end test
INTERVAL = 0.1


class Recording(Notifier):
    """A custom notifier: keeps what it was sent."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self._lock = threading.Lock()

    def send(self, notification: Notification) -> None:
        with self._lock:
            self.sent.append(notification)

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [n.to_dict() for n in self.sent]


class Port:
    """A TCP listener on loopback that can be closed and opened again on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.sock: socket.socket | None = None
        self.up()

    def up(self) -> None:
        for _ in range(50):  # the port may linger for a moment after down()
            try:
                self.sock = socket.create_server(("127.0.0.1", self.port))
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"port {self.port} stayed busy")

    def down(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.down()


@pytest.fixture
def port() -> Iterator[Port]:
    p = Port()
    yield p
    p.down()


def _events(bodies: list[dict[str, Any]], check: str) -> list[str]:
    return [b["event"] for b in bodies if b["check"] == check and b["event"] != "advisory"]


def _at(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["at"].replace("Z", "+00:00")).timestamp()


def test_an_outage_rings_once_down_and_once_recovered_per_notifier(
    make_leza: Any,
    service: Service,
    port: Port,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, hook_bodies = webhook
    leza = make_leza()  # advisories on, advisory_notify at its default ("high")
    assert leza.advisories is not None
    assert leza.settings.advisory_notify == "high"
    leza.notify.webhook(url)
    custom = leza.notify.add(Recording())
    leza.availability.http(
        "billing", service.url, interval=INTERVAL, timeout=INTERVAL, retries=2, resend=RESEND
    )
    leza.availability.tcp(
        "db", "127.0.0.1", port.port, interval=INTERVAL, timeout=INTERVAL, retries=2,
        resend=RESEND,
    )  # fmt: skip
    status = leza.availability.status
    assert wait_for(lambda: {s["state"] for s in status().values()} == {"up"})

    service.down()
    port.down()
    # Down long enough for at least two resends of each.
    assert wait_for(
        lambda: all(_events(hook_bodies, c).count("still_down") >= 2 for c in ("billing", "db")),
        timeout=10,
    )
    service.up()
    port.up()
    assert wait_for(
        lambda: all(_events(hook_bodies, c)[-1:] == ["recovered"] for c in ("billing", "db")),
        timeout=10,
    )
    time.sleep(0.5)  # more UP probes, and the advisories of the last batch: nothing more is sent
    assert leza.flush(5)
    leza.availability.stop()
    assert leza.flush(5)
    assert leza.notify.flush(5)

    for bodies in (hook_bodies, custom.bodies()):
        # Nothing but the checks' own alarms: the service_down / service_recovered
        # advisories of the same transitions are not sent a second time.
        assert [b for b in bodies if b["event"] == "advisory"] == []
        for check in ("billing", "db"):
            events = _events(bodies, check)
            counts = Counter(events)
            assert counts["down"] == 1, events
            assert counts["recovered"] == 1, events
            assert events[0] == "down"
            assert events[-1] == "recovered"
            assert set(events[1:-1]) == {"still_down"}
            # Resends are distinguishable and keep to the configured interval.
            resent = [b for b in bodies if b["check"] == check and b["event"] == "still_down"]
            assert all(b["state"] == "down" and b["error"] for b in resent)
            down = next(b for b in bodies if b["check"] == check and b["event"] == "down")
            times = [_at(down)] + [_at(b) for b in resent]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(RESEND - 0.05 <= gap < RESEND + 1.5 for gap in gaps), gaps
    # Both notifiers got the same notifications, in the same order.
    assert [(b["event"], b["check"]) for b in hook_bodies] == [
        (b["event"], b["check"]) for b in custom.bodies()
    ]

    # The advisories are stored and shown all the same: one pair per outage.
    advisories = leza.query.advisories(limit=100)
    rules = Counter(a["rule"] for a in advisories)
    assert rules["service_down"] == 2
    assert rules["service_recovered"] == 2
    assert {a["details"]["check"] for a in advisories if a["rule"] == "service_down"} == {
        "billing",
        "db",
    }
    stats = leza.notify.stats()
    assert stats["failed"] == 0
    assert stats["dropped"] == 0


def test_other_high_advisories_are_still_sent(
    make_leza: Any, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Only the advisories that restate a check's alarm are held back."""
    from leza_middleware.advisories import Finding, Rule, RuleContext
    from leza_middleware.events import Event

    class CheckIsSlow(Rule):
        name = "check_slow"
        severity = "high"
        kinds = frozenset({"check"})

        def observe(self, event: Event, ctx: RuleContext) -> Any:
            assert isinstance(event, CheckEvent)
            return (Finding(f"{event.check} answered"),) if event.ok else ()

    url, bodies = webhook
    from leza_middleware.advisories import ServiceState

    leza = make_leza(advisory_rules=[ServiceState(), CheckIsSlow()])
    leza.notify.webhook(url)
    leza.availability.check("fn", lambda: None, interval=0.05, timeout=0.05)
    assert wait_for(lambda: any(b["event"] == "advisory" for b in bodies))
    leza.availability.stop()
    sent = [b for b in bodies if b["event"] == "advisory"]
    assert sent
    assert {b["details"]["rule"] for b in sent} == {"check_slow"}


# ----------------------------------------------------------------------------- leader takeover


class _Lead:
    """A leadership the test hands from one monitor to the other."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader

    def acquire(self) -> bool:
        return self.leader

    def release(self) -> None:
        self.leader = False

    def after_fork(self) -> None:
        pass


class _Shared:
    """What two monitors share: the stored check events (the storage) and the pager."""

    def __init__(self) -> None:
        self.events: list[CheckEvent] = []
        self.alarms: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def record(self, event: CheckEvent) -> None:
        with self.lock:
            self.events.append(event)

    def notify(self, event: CheckEvent, decision: str, check: Any) -> None:
        with self.lock:
            self.alarms.append((check.name, decision))

    def last(self, name: str, since: int) -> CheckEvent | None:
        with self.lock:
            return next(
                (e for e in reversed(self.events) if e.check == name and e.ts >= since), None
            )


def _monitor(shared: _Shared, lead: _Lead) -> Monitor:
    return Monitor(
        record=shared.record, notify=shared.notify, leadership=lead, leader_retry=0.05,
        last_result=shared.last,
    )  # fmt: skip


def test_a_new_leader_does_not_ring_again_for_an_outage_already_told() -> None:
    healthy = threading.Event()
    healthy.set()

    def probe() -> bool:
        return healthy.is_set()

    shared = _Shared()
    first, second = _Lead(True), _Lead(False)
    a, b = _monitor(shared, first), _monitor(shared, second)
    for m in (a, b):
        m.add(CallableCheck("svc", probe, interval=0.05, timeout=0.05, retries=2))
        m.start()
    try:
        assert wait_for(lambda: ("svc", "up") in [(e.check, e.state) for e in shared.events])
        healthy.clear()
        assert wait_for(lambda: shared.alarms == [("svc", "down")])
        a.stop()  # the leader goes away mid-outage; the other takes over
        second.leader = True
        assert wait_for(lambda: b.is_leader)
        n = len(shared.events)
        assert wait_for(lambda: len(shared.events) >= n + 5)  # the new leader probes
        assert shared.alarms == [("svc", "down")]  # ... and does not page again
        healthy.set()
        assert wait_for(lambda: ("svc", "recovered") in shared.alarms)
        time.sleep(0.2)
    finally:
        a.stop()
        b.stop()
    assert shared.alarms == [("svc", "down"), ("svc", "recovered")]
    # Only the first leader saw unknown -> ...: the new one went on from the stored state.
    changes = [(e.previous, e.state) for e in shared.events if e.action == "state_change"]
    assert changes == [("unknown", "up"), ("up", "down"), ("down", "up")]


def test_a_new_leader_rings_for_an_outage_that_begins_after_the_takeover() -> None:
    healthy = threading.Event()
    healthy.set()
    shared = _Shared()
    first, second = _Lead(True), _Lead(False)
    a, b = _monitor(shared, first), _monitor(shared, second)
    for m in (a, b):
        m.add(CallableCheck("svc", healthy.is_set, interval=0.05, timeout=0.05, retries=2))
        m.start()
    try:
        assert wait_for(lambda: any(e.state == "up" for e in shared.events))
        a.stop()
        second.leader = True
        assert wait_for(lambda: b.is_leader)
        healthy.clear()
        assert wait_for(lambda: shared.alarms == [("svc", "down")])
        healthy.set()
        assert wait_for(lambda: shared.alarms == [("svc", "down"), ("svc", "recovered")])
    finally:
        a.stop()
        b.stop()


def test_a_stale_stored_state_is_not_taken_over() -> None:
    """A check last stored DOWN long ago (the app was off for a day) starts afresh:
    that outage's alarm is a day old, a new DOWN rings again."""
    shared = _Shared()
    old = time.time_ns() // 1000 - 86_400 * 1_000_000
    shared.events.append(
        CheckEvent(id="old", ts=old, check="svc", ok=False, state="down", previous="down",
                   latency_ms=1.0, error="boom", app="app")
    )  # fmt: skip
    m = _monitor(shared, _Lead(True))
    m.add(CallableCheck("svc", lambda: False, interval=0.05, timeout=0.05, retries=2))
    m.start()
    try:
        assert wait_for(lambda: shared.alarms == [("svc", "down")])
    finally:
        m.stop()


LEADER_SCRIPT = """
import json, os, sys, time
from leza_middleware import Leza
from leza_middleware.notify import Notifier

class Pager(Notifier):
    name = "pager"
    def send(self, n):
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "event": n.event, "check": n.check}) + "\\n")

leza = Leza(storage=sys.argv[1], geoip_db=False, flush_interval=0.05,
            secret_key="leader-test-secret-key")
leza.availability.monitor.leader_retry = 0.2
leza.notify.add(Pager())
flag = sys.argv[3]
def probe():
    if os.path.exists(flag):
        raise RuntimeError("flag file says down")
leza.availability.check("dep", probe, interval=0.05, timeout=0.05, retries=2)
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin: then a graceful exit
leza.shutdown(timeout=5)
"""


@pytest.mark.slow
def test_processes_sharing_sqlite_ring_once_across_a_leader_change(tmp_path: Path) -> None:
    """Three processes on one SQLite database: the leader sees the outage and pages;
    it exits gracefully mid-outage; another takes over and does not page again; the
    recovery is paged once, by the new leader."""
    db = f"sqlite:///{tmp_path / 'leza.db'}"
    pages = tmp_path / "pages.jsonl"
    flag = tmp_path / "down.flag"
    script = tmp_path / "worker.py"
    script.write_text(LEADER_SCRIPT)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db, str(pages), str(flag)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]

    def paged() -> list[dict[str, Any]]:
        if not pages.exists():
            return []
        return [json.loads(line) for line in pages.read_text().splitlines() if line]

    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.5)  # the leader finds the check UP (silently)
        flag.touch()
        assert wait_for(lambda: [x["event"] for x in paged()] == ["down"], timeout=10)
        (first,) = paged()
        leader = next(p for p in procs if p.pid == first["pid"])
        assert leader.stdin is not None
        leader.stdin.close()  # graceful exit, mid-outage
        assert leader.wait(20) == 0
        time.sleep(1.5)  # another process takes over and probes the outage for a while
        assert [x["event"] for x in paged()] == ["down"]
        os.unlink(flag)
        assert wait_for(lambda: [x["event"] for x in paged()] == ["down", "recovered"], timeout=10)
        time.sleep(0.5)
        events = paged()
        assert [x["event"] for x in events] == ["down", "recovered"]
        assert events[1]["pid"] != leader.pid
    finally:
        for p in procs:
            p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


def test_a_leader_writes_its_last_results_before_stepping_down(make_leza: Any) -> None:
    """The next leader goes on from the stored state: the stepping-down leader's
    results still queued (here: all of them, the flush interval is a minute) are
    written before its lock is released."""
    leza = make_leza(flush_interval=60, advisories=False)
    leza.availability.check("dep", lambda: None, interval=0.05, timeout=0.05)
    assert wait_for(lambda: leza.availability.monitor.probes >= 3)
    assert leza.stats()["pending"] >= 1  # nothing written yet
    leza.availability.stop()
    assert leza.stats()["pending"] == 0
    probes = leza.availability.monitor.probes
    assert len(leza.query.checks(limit=1000)) == probes


def test_every_process_alarming_on_its_own_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A storage without monitor_leadership() that other processes may share: each
    process would probe and page on its own. The monitor says so, once."""
    from leza_middleware import Leza
    from leza_middleware.availability.leader import ProcessLeadership, leadership_for
    from leza_middleware.storage import MemoryStorage, Page, QueryFilter, Storage

    class Custom(Storage):  # a user's own backend (in memory underneath, for the test)
        def __init__(self) -> None:
            self.inner = MemoryStorage()

        def write(self, events: Any) -> None:
            self.inner.write(events)

        def query(self, kind: str, flt: QueryFilter) -> Page:
            return self.inner.query(kind, flt)

        def describe(self) -> str:
            return "custom://shared"

    memory = leadership_for(MemoryStorage(), "app")
    assert isinstance(memory, ProcessLeadership)
    assert memory.shared is None  # memory storage: one process, nothing to say
    lead = leadership_for(Custom(), "app")
    assert isinstance(lead, ProcessLeadership)
    assert lead.shared == "custom://shared"

    leza = Leza(storage=Custom(), geoip_db=False, secret_key="tests-secret-key-0123456789")
    with caplog.at_level("WARNING", logger="leza_middleware.availability"):
        leza.availability.check("a", lambda: None, interval=0.05, timeout=0.05)
        leza.availability.check("b", lambda: None, interval=0.05, timeout=0.05)
        assert wait_for(lambda: leza.availability.monitor.probes >= 4)
        leza.availability.stop()
        leza.availability.start()
        assert wait_for(lambda: leza.availability.monitor.probes >= 6)
        leza.shutdown(timeout=2)
    said = [r for r in caplog.records if "every process" in r.getMessage()]
    assert len(said) == 1
    assert "custom://shared" in said[0].getMessage()
