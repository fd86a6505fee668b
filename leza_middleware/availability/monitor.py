"""The scheduler: one thread that probes each check on its interval, when leader.

Probes run on a small pool of worker threads so one slow check cannot delay
the others; the scheduler enforces each probe's timeout itself (a callable
that ignores it is reported as timed out, and that check is not probed again
until the stuck call returns: a failure is recorded at each interval instead,
so a hung dependency still shows as DOWN). Every result becomes a
:class:`~leza_middleware.events.CheckEvent` through the recorder; state
changes go to the notifiers (``state.py`` decides which).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import LezaConfigError
from ..events import CheckEvent
from ..ids import new_event_id
from .checks import Check, ProbeResult
from .leader import Leadership
from .state import AlarmState, Tracker

__all__ = ["Maintenance", "Monitor"]

log = logging.getLogger("leza_middleware.availability")

_GRACE = 1.0  # seconds past a probe's timeout before the scheduler gives up on it
# A new leader goes on from the stored state of a check when that state is at most
# this old (or three of its intervals, if longer): a takeover or a restart within
# it does not page again for an outage already paged; after a longer absence the
# check starts afresh (unknown) and a DOWN found then is a new alarm.
RESUME_MAX_AGE = 300.0


@dataclass(frozen=True)
class Maintenance:
    """A window (µs, inclusive start, exclusive end) in which alarms are silenced."""

    start: int
    end: int
    checks: frozenset[str] | None = None  # None: every check
    reason: str = ""

    def covers(self, name: str, ts: int) -> bool:
        return self.start <= ts < self.end and (self.checks is None or name in self.checks)


@dataclass
class _Entry:
    check: Check
    tracker: Tracker
    alarm: AlarmState
    due: float = 0.0  # monotonic time of the next probe
    running: Future[ProbeResult] | None = None
    started: float = 0.0
    stuck: bool = False  # the running probe timed out; its result will be ignored
    last: CheckEvent | None = None
    since: int | None = None  # µs: when the current state began


class Monitor:
    """Probes registered checks on their intervals while this process is the leader."""

    def __init__(
        self,
        *,
        record: Callable[[CheckEvent], None],
        notify: Callable[[CheckEvent, str, Check], None],
        leadership: Leadership,
        app_name: str = "app",
        max_workers: int = 4,
        leader_retry: float = 5.0,
        last_result: Callable[[str, int], CheckEvent | None] | None = None,
        before_release: Callable[[float], object] | None = None,
    ) -> None:
        self._record = record
        self._notify = notify
        # The newest stored result of a check since a time (µs), for a new leader
        # to go on from; and what to do before stepping down (write the results
        # still queued, so the next leader reads them).
        self._last_result = last_result
        self._before_release = before_release
        self.leadership = leadership
        self.app_name = app_name
        self.max_workers = max_workers
        self.leader_retry = leader_retry
        self._entries: dict[str, _Entry] = {}
        self._windows: list[Maintenance] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.is_leader = False
        self.probes = 0
        self.errors = 0
        self._pid = os.getpid()
        self._warned_shared = False

    # -- configuration -------------------------------------------------------

    def add(self, check: Check) -> None:
        with self._lock:
            if check.name in self._entries:
                raise LezaConfigError(f"a check named {check.name!r} is already registered")
            self._entries[check.name] = _Entry(
                check, Tracker(check.retries), AlarmState(resend=check.resend)
            )
        self._wake.set()

    def remove(self, name: str) -> bool:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            entry.check.close()
        return entry is not None

    def checks(self) -> list[Check]:
        with self._lock:
            return [e.check for e in self._entries.values()]

    def add_maintenance(self, window: Maintenance) -> None:
        with self._lock:
            now = time.time_ns() // 1000
            self._windows = [w for w in self._windows if w.end > now]  # forget past ones
            self._windows.append(window)
        self._wake.set()

    def maintenance(self) -> list[Maintenance]:
        with self._lock:
            return list(self._windows)

    def silenced(self, name: str, ts: int) -> bool:
        return any(w.covers(name, ts) for w in self._windows)

    def local_state(self, name: str) -> tuple[str, CheckEvent | None, int | None] | None:
        """(state, last event, state since µs) as this process saw it; None if unknown here."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.last is None:
                return None
            return entry.tracker.state, entry.last, entry.since

    # -- thread --------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="leza-probe")
            self._thread = threading.Thread(target=self._run, name="leza-monitor", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 5.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.is_leader:
            if self._before_release is not None:
                left = 1.0 if deadline is None else deadline - time.monotonic()
                try:
                    self._before_release(min(1.0, max(0.0, left)))
                except Exception:
                    log.warning("leza: could not write the last check results", exc_info=True)
            self.leadership.release()
            self.is_leader = False
        for check in self.checks():
            check.close()

    def after_fork(self) -> None:
        """In a forked child: no thread, no pool, no inherited lock; start again if running."""
        was_running = self._thread is not None
        self._thread = None
        self._pool = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.leadership.after_fork()
        self.is_leader = False
        for entry in self._entries.values():
            entry.running, entry.stuck = None, False
        if was_running:
            self.start()

    def _run(self) -> None:
        next_claim = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if not self.is_leader and now >= next_claim:
                self._claim()
                next_claim = now + self.leader_retry
            wait = self.leader_retry
            if self.is_leader:
                try:
                    wait = self._round(now)
                except Exception:  # a bug here must not kill the monitor
                    self.errors += 1
                    log.exception("leza: availability monitor error")
                    wait = 1.0
                if now >= next_claim:  # PostgreSQL: is the lock's connection alive?
                    if not self.leadership.acquire():
                        self.is_leader = False
                    next_claim = now + self.leader_retry
            self._wake.wait(max(0.0, min(wait, self.leader_retry)))
            self._wake.clear()

    def _claim(self) -> None:
        shared = getattr(self.leadership, "shared", None)
        if shared and not self._warned_shared:
            self._warned_shared = True
            log.warning(
                "leza: availability checks run in every process using storage %s: it offers "
                "no monitor_leadership(name), so with several worker processes each probes "
                "and sends its own alarms (docs/availability.md, 'One monitor per deployment')",
                shared,
            )
        try:
            self.is_leader = self.leadership.acquire()
        except Exception:
            log.warning("leza: monitor leadership check failed", exc_info=True)
            self.is_leader = False
        if self.is_leader:
            log.info("leza: this process (pid %d) runs the availability checks", os.getpid())
            with self._lock:
                entries = list(self._entries.values())
            for entry in entries:
                self._resume(entry)
                entry.due = 0.0  # probe everything now: the previous leader's schedule is lost

    def _resume(self, entry: _Entry) -> None:
        """Go on from the state the previous leader stored (a takeover, a restart).

        So an outage that leader already paged is not paged again, and its
        recovery is: the check stays DOWN (alarm sent) instead of starting
        ``unknown``. Resends go on ``resend`` seconds after the takeover. A
        stored state older than :data:`RESUME_MAX_AGE` is not taken over.
        """
        read = self._last_result
        check = entry.check
        if read is None:
            return
        now = time.time_ns() // 1000
        max_age = max(RESUME_MAX_AGE, 3 * check.interval)
        try:
            stored = read(check.name, now - int(max_age * 1_000_000))
        except Exception:
            log.debug("leza: stored state of %s not readable", check.name, exc_info=True)
            return
        if stored is None or stored.state not in ("up", "down") or now - stored.ts > max_age * 1e6:
            return
        if entry.last is not None and entry.last.ts >= stored.ts:
            return  # what this process saw itself is as new: keep its own state
        with self._lock:
            entry.tracker = Tracker(check.retries, state=stored.state)
            entry.alarm = AlarmState(resend=check.resend)
            if stored.state == "down":
                # The previous leader sent the DOWN alarm, unless a maintenance
                # window silences it now (then it goes out when the window closes).
                entry.alarm.alerted = not self.silenced(check.name, now)
                entry.alarm.last_alert = time.monotonic()

    def _round(self, now: float) -> float:
        """Settle finished probes, start due ones; return seconds until the next thing."""
        with self._lock:
            entries = list(self._entries.values())
        wait = 60.0
        for entry in entries:
            check = entry.check
            future = entry.running
            if future is not None:
                if future.done():
                    entry.running = None
                    if entry.stuck:
                        entry.stuck = False
                    else:
                        self._settle(entry, _result_of(future))
                elif not entry.stuck and now - entry.started > check.timeout + _GRACE:
                    entry.stuck = True  # report it; the call may still return later
                    self._settle(entry, _timed_out(check))
            if now >= entry.due:
                entry.due = now + check.interval
                if entry.running is None:
                    self._submit(entry, now)
                elif entry.stuck:
                    self._settle(entry, _still_stuck(check))
            deadline = entry.due
            if entry.running is not None and not entry.stuck:
                deadline = min(deadline, entry.started + check.timeout + _GRACE)
            wait = min(wait, deadline - now)
        return max(0.01, wait)

    def _submit(self, entry: _Entry, now: float) -> None:
        pool = self._pool
        if pool is None:
            return
        entry.started = now
        future = pool.submit(entry.check.probe)
        future.add_done_callback(lambda _f: self._wake.set())
        entry.running = future

    def _settle(self, entry: _Entry, result: ProbeResult) -> None:
        check = entry.check
        ts = time.time_ns() // 1000
        previous = entry.tracker.apply(result.ok)
        state = entry.tracker.state
        event = CheckEvent(
            id=new_event_id(ts),
            ts=ts,
            check=check.name,
            ok=result.ok,
            state=state,
            previous=previous,
            latency_ms=result.latency_ms,
            error=result.error,
            app=self.app_name,
        )
        with self._lock:
            entry.last = event
            if state != previous or entry.since is None:
                entry.since = ts
        self.probes += 1
        try:
            self._record(event)
        except Exception:
            log.warning("leza: could not record a check result", exc_info=True)
        decision = entry.alarm.decide(
            previous, state, time.monotonic(), self.silenced(check.name, ts)
        )
        if state != previous:
            log.info("leza: check %s: %s -> %s", check.name, previous, state)
        if decision is not None:
            try:
                self._notify(event, decision, check)
            except Exception:
                log.warning("leza: could not send the %s alarm of %s", decision, check.name,
                            exc_info=True)  # fmt: skip


def _result_of(future: Future[ProbeResult]) -> ProbeResult:
    try:
        return future.result()
    except BaseException as exc:  # probe() never raises, but a cancelled future does
        return ProbeResult(False, 0.0, f"{type(exc).__name__}: {exc}")


def _timed_out(check: Check) -> ProbeResult:
    return ProbeResult(False, check.timeout * 1000.0, f"timed out after {check.timeout:g}s")


def _still_stuck(check: Check) -> ProbeResult:
    return ProbeResult(
        False, check.timeout * 1000.0, "timed out: the previous probe has not returned"
    )
