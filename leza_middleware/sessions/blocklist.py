"""The blocklist: ended sessions whose requests are refused, known before the first decision.

A process decides a request that carries a session cookie only once it knows
which sessions ended elsewhere (revoked, logged out, or timed out when
``enforce_session_timeouts`` is on). Without that, a freshly started worker
(a deploy, a restart, a recycled or autoscaled one) would serve a copied
cookie of a revoked session until its first poll. So:

* **load before the first decision**: the first request carrying a session
  cookie (or an ASGI lifespan startup, earlier) starts one read of the ended
  sessions of the last ``revocation_memory`` seconds, on a thread of its own;
  that request, and any that arrive meanwhile, wait for it at most
  ``revocation_load_timeout`` seconds from when the first of them began to
  wait (a load begun at startup has run for a while by then; async adapters
  await it without blocking the event loop). After a ``fork`` the child
  starts unloaded and loads again;
* **then refresh**: the recorder thread reads what ended since the last read
  every ``session_poll_interval`` seconds (``Sessions.poll``);
* **trusted for a bounded time**: a read keeps the blocklist known for
  ``revocation_max_staleness`` seconds from when it began. The request path's
  whole cost is one comparison of the clock with that deadline and one set
  lookup (``Sessions.refusal``);
* **fail closed when unknown**: when the blocklist could not be loaded in time,
  or has gone stale (storage unreachable, polls failing), a request carrying a
  session cookie gets the revoked-session response with the reason
  :data:`UNKNOWN_REASON`, unless ``revocation_unknown="allow"``. Such requests
  are counted (``stats()["revocations"]``) and the episode is logged once, with
  a second line when it ends. A failed read is not retried by every request:
  they are decided at once while a background read is retried at most once
  per ``session_poll_interval`` (and the recorder keeps polling), so the
  process recovers by itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..storage.base import QueryFilter

if TYPE_CHECKING:
    from ..config import Settings
    from ..storage.base import Storage

__all__ = ["REVOKED_REASON", "UNKNOWN_REASON", "Blocklist"]

log = logging.getLogger("leza_middleware")

REVOKED_REASON = "session revoked"
UNKNOWN_REASON = "session state unknown: revocations could not be loaded"

#: End reasons whose sessions are refused (timeouts too with enforce_session_timeouts).
BLOCK_REASONS = frozenset({"revoked", "logout"})
# Ended sessions read per query (keyset pages: every one is read, however many).
_PAGE = 10_000
# Each read starts this long before the previous one began: a session another
# host ended is stamped with its clock, and its write may commit a little later.
_MARGIN_US = 30_000_000

_Load = concurrent.futures.Future  # of bool: whether the read succeeded


def _now_us() -> int:
    return time.time_ns() // 1000


class Blocklist:
    """Ended sessions known to this process, and whether that knowledge is current."""

    def __init__(
        self, settings: Settings, storage: Storage, *, enabled: bool, memory: float
    ) -> None:
        s = settings
        self._storage = storage
        #: False when sessions are off: nothing is loaded, nothing is ever unknown.
        self.enabled = enabled
        self.policy = s.revocation_unknown
        self.refuse_unknown = s.revocation_unknown == "refuse"
        self.load_timeout = s.revocation_load_timeout
        self.max_staleness = s.max_staleness()
        self.retry_interval = s.session_poll_interval
        self.memory_us = int(memory * 1_000_000)
        self.enforce_timeouts = s.enforce_session_timeouts
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        #: Session ids whose requests are refused.
        self.blocked: set[str] = set()
        #: Sessions that timed out without enforcement (not refused, not revived).
        self.timed_out: set[str] = set()
        #: Monotonic time until which the sets are current: the request path's one test.
        self.fresh_until = 0.0 if self.enabled else math.inf
        self._since = 0  # µs: the next read takes sessions ended from here on
        self._load: _Load[bool] | None = None  # the read started by a request, if any
        self._load_started = 0.0
        # Until when requests wait for the load in flight: set by the first
        # request that waits for it (a prefetch has none until one comes).
        self._load_deadline: float | None = None
        self._ok_at: float | None = None  # when the last successful read began
        self._failed_at: float | None = None  # when the last read that failed began, if later
        self._error = ""
        self._retry_at = 0.0
        self._unknown_since: float | None = None  # an episode of unknown state (warned once)
        self.loads = 0  # reads started by requests (first loads and retries)
        self.load_failures = 0  # reads that failed (these and the recorder's polls)
        self.refused_unknown = 0
        self.allowed_unknown = 0

    def after_fork(self) -> None:
        """In a forked child: nothing the parent knew counts; load again before deciding."""
        self._reset()

    def add(self, session_ids: Iterable[str], *, block: bool) -> None:
        """Sessions this process ended itself (revoked, logged out, timed out)."""
        with self._lock:
            (self.blocked if block or self.enforce_timeouts else self.timed_out).update(session_ids)

    # -- the request path (slow part; the fast one is Sessions.refusal) ---------

    def decide(self, sid: str) -> str | None:
        """Refusal reason for ``sid`` once the blocklist is not known to be current:
        waits (bounded) for a load first when one is due."""
        try:
            due = self._due_load()
            if due is not None:
                load, deadline = due
                concurrent.futures.wait((load,), max(0.0, deadline - monotonic()))
            return self._settle(sid)
        except Exception:
            return self._failsafe(sid)

    async def adecide(self, sid: str) -> str | None:
        """:meth:`decide` for async code: the wait does not block the event loop."""
        try:
            due = self._due_load()
            if due is not None:
                load, deadline = due
                await _wait(load, deadline - monotonic())
            return self._settle(sid)
        except Exception:
            return self._failsafe(sid)

    def _failsafe(self, sid: str) -> str | None:
        """The decision when deciding itself failed (a bug): as if unknown."""
        log.warning("leza: deciding a session's revocation failed", exc_info=True)
        if self.refuse_unknown:
            return UNKNOWN_REASON
        return REVOKED_REASON if sid in self.blocked else None

    def prefetch(self) -> None:
        """Start loading now without waiting (ASGI lifespan startup): the first
        request then usually finds the blocklist loaded."""
        if not self.enabled:
            return
        now = monotonic()
        with self._lock:
            if now >= self.fresh_until and not self._in_flight(now):
                self._start_load(now)

    def _due_load(self) -> tuple[_Load[bool], float] | None:
        """The load this request must wait for; None to decide at once."""
        now = monotonic()
        with self._lock:
            if now < self.fresh_until:
                return None  # another thread loaded it meanwhile
            if self._failed_at is not None:
                # The last read failed: no request waits on storage again, not
                # even for the background retry in flight (see _unknown).
                return None
            load = self._load
            if load is not None and not load.done():
                deadline = self._load_deadline
                if deadline is None:
                    # A prefetch (lifespan startup) that nobody waited for yet: the
                    # time it ran before this request is not this request's wait.
                    # (Counted from the prefetch's start, a cold start slower than
                    # the timeout refused a worker's first signed-in requests at
                    # once, with the revoked-session answer.)
                    deadline = self._load_deadline = now + self.load_timeout
                return (load, deadline) if now < deadline else None
            # Never loaded in this process, or loaded but stale with no failure
            # seen (the recorder did not poll in time): load now.
            load = self._start_load(now)
            deadline = self._load_deadline = now + self.load_timeout
            return load, deadline

    def _in_flight(self, now: float) -> bool:
        """A load is running and not yet overdue: requests may still wait for it,
        and the recorder's poll leaves the reading to it."""
        load = self._load
        if load is None or load.done():
            return False
        deadline = self._load_deadline
        return now < max(self._load_started + self.load_timeout, deadline or 0.0)

    def _start_load(self, now: float) -> _Load[bool]:
        """One read on a thread of its own (call with the lock held); requests
        that wait for it set :attr:`_load_deadline` (see :meth:`_due_load`)."""
        load: _Load[bool] = concurrent.futures.Future()
        load.set_running_or_notify_cancel()  # nobody can cancel it from under its waiters
        self._load = load
        self._load_started = now
        self._load_deadline = None
        self._retry_at = now + self.retry_interval
        self.loads += 1
        try:
            threading.Thread(
                target=self._run_load, args=(load,), name="leza-revocations", daemon=True
            ).start()
        except Exception as exc:  # no thread to be had (a resource limit): a failed read
            self._failed(now, exc)
            load.set_result(False)
        return load

    def _run_load(self, load: _Load[bool]) -> None:
        ok = False
        try:
            ok = self.read()
        finally:
            load.set_result(ok)

    def _settle(self, sid: str) -> str | None:
        now = monotonic()
        if now < self.fresh_until:
            return REVOKED_REASON if sid in self.blocked else None
        self._unknown(now)
        if self.refuse_unknown:
            return UNKNOWN_REASON
        return REVOKED_REASON if sid in self.blocked else None

    def _unknown(self, now: float) -> None:
        """Count a request decided without a current blocklist; warn once per
        episode; retry the read in the background (rate-limited)."""
        with self._lock:
            if self.refuse_unknown:
                self.refused_unknown += 1
            else:
                self.allowed_unknown += 1
            first = self._unknown_since is None
            if first:
                self._unknown_since = now
            load = self._load
            if load is not None and not load.done():
                cause = f"storage did not answer within {self.load_timeout:g} s"
            elif self._failed_at is not None:
                cause = self._error
            else:
                age = "never" if self._ok_at is None else f"{now - self._ok_at:.0f} s ago"
                cause = f"last loaded {age}"
            if (load is None or load.done()) and now >= self._retry_at:
                self._start_load(now)
        if first:
            log.warning(
                "leza: revoked sessions could not be loaded from storage %s (%s): requests "
                "carrying a session cookie are %s until they are (revocation_unknown=%r; "
                "counted in stats()['revocations'])",
                self._storage.describe(),
                cause,
                "refused" if self.refuse_unknown else "served without the check",
                self.policy,
            )

    # -- reading storage (a load's thread, the recorder's poll) -----------------

    def refresh(self) -> None:
        """The recorder's poll: read what ended since the last read. Raises when
        storage fails (the recorder logs it, throttled), after noting the failure."""
        if self._in_flight(monotonic()):
            return  # a load is reading right now
        self.read(raise_errors=True)

    def read(self, *, raise_errors: bool = False) -> bool:
        """Read the sessions ended since the last read (all of ``revocation_memory``
        the first time) into the sets; whether it succeeded."""
        started = monotonic()
        wall = _now_us()
        with self._lock:
            since = max(self._since, wall - self.memory_us)
        try:
            blocked, timed_out = self._read_ended(since)
        except Exception as exc:
            with self._lock:
                self._failed(started, exc)
            if raise_errors:
                raise
            log.debug("leza: loading revoked sessions failed", exc_info=True)
            return False
        with self._lock:
            self.blocked.update(blocked)
            self.timed_out.update(timed_out)
            self._since = max(self._since, wall - _MARGIN_US)
            if self._ok_at is None or started > self._ok_at:
                self._ok_at = started
            if self._failed_at is not None and self._failed_at <= started:
                self._failed_at = None
                self._error = ""
            self.fresh_until = max(self.fresh_until, started + self.max_staleness)
            episode, self._unknown_since = self._unknown_since, None
            refused, allowed = self.refused_unknown, self.allowed_unknown
        if episode is not None:
            log.warning(
                "leza: revoked sessions loaded from storage again after %.1f s; so far %d "
                "request(s) were refused and %d served while they were unknown",
                monotonic() - episode,
                refused,
                allowed,
            )
        return True

    def _failed(self, started: float, exc: Exception) -> None:
        """Note a read that failed (call with the lock held)."""
        self.load_failures += 1
        if self._ok_at is None or started >= self._ok_at:
            self._failed_at = started
            first_line = str(exc).strip().split("\n", 1)[0]  # not SQLAlchemy's "Background on…"
            self._error = f"{type(exc).__name__}: {first_line}"[:500]

    def _read_ended(self, since: int) -> tuple[list[str], list[str]]:
        """Every session ended at or after ``since`` (µs), page by page."""
        query = self._storage.query  # (a SQL storage sets itself up on first use)
        blocked: list[str] = []
        timed_out: list[str] = []
        enforce = self.enforce_timeouts
        cursor: tuple[int, str] | None = None
        while True:
            flt = QueryFilter(active=False, ended_since=since, limit=_PAGE, cursor=cursor)
            page = query("session", flt)
            for r in page.events:
                if enforce or r.end_reason in BLOCK_REASONS:
                    blocked.append(r.id)
                else:
                    timed_out.append(r.id)
            # A storage that ignores the cursor would hand back the same page for ever.
            if page.next_cursor is None or page.next_cursor == cursor:
                return blocked, timed_out
            cursor = page.next_cursor

    def wait_for_load(self, deadline: float) -> None:
        """Wait for a load in flight, if any, until ``deadline`` (monotonic) at most."""
        load = self._load
        if load is not None and not load.done():
            concurrent.futures.wait((load,), max(0.0, deadline - monotonic()))

    def stats(self) -> dict[str, Any]:
        now = monotonic()
        with self._lock:
            if not self.enabled:
                state = "off"
            elif now < self.fresh_until:
                state = "loaded"
            elif self._in_flight(now):
                state = "loading"
            elif self._load is None and self._ok_at is None and self._failed_at is None:
                state = "not loaded"  # no request with a session cookie yet
            else:
                state = "unknown"
            return {
                "state": state,
                "unknown": self.policy,
                "blocked": len(self.blocked),
                "age_s": None if self._ok_at is None else round(now - self._ok_at, 3),
                "loads": self.loads,
                "load_failures": self.load_failures,
                "refused_unknown": self.refused_unknown,
                "allowed_unknown": self.allowed_unknown,
            }


# Every blocklist, so a fork can wait for the loads in flight.
_live: weakref.WeakSet[Blocklist] = weakref.WeakSet()
_FORK_WAIT = 2.0  # seconds a fork waits at most (storage hanging mid-load)


def _before_fork() -> None:
    """A load's thread may be inside an import or a database driver's lock, which
    a child forked then would inherit held by a thread it does not have: let the
    loads in flight finish first (briefly). The child loads again anyway."""
    deadline = monotonic() + _FORK_WAIT
    for blocklist in list(_live):
        blocklist.wait_for_load(deadline)


os.register_at_fork(before=_before_fork)


async def _wait(load: _Load[bool], timeout: float) -> None:
    """Wait for ``load`` at most ``timeout`` seconds without blocking the event loop."""
    if timeout <= 0 or load.done():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio): poll it
        import anyio

        deadline = monotonic() + timeout
        while not load.done() and monotonic() < deadline:
            await anyio.sleep(min(0.005, max(0.0, deadline - monotonic())))
        return
    # The load never ends in an exception (its result is a bool), so an abandoned
    # wrapper never logs "exception was never retrieved".
    await asyncio.wait((asyncio.wrap_future(load, loop=loop),), timeout=timeout)
