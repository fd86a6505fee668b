"""The recorder: a bounded queue drained by one background thread per process.

Shaped like OpenTelemetry's BatchProcessor. The request path only appends to a
deque under a lock (no I/O); the worker thread, woken by an Event when a batch
is full or every ``flush_interval``, prepares (enriches) and writes batches.

Accounting is exact at all times (every counter changes under one lock)::

    enqueued == written + dropped + pending + spilled

* ``dropped`` only when the queue is full (by reason; login/logout/audit-type
  events are spilled instead) or when even the spill file cannot be written;
* storage failures are retried with backoff, then the batch is spilled to a
  local JSON Lines file and storage is probed again with growing delays; when
  it answers, spilled events are replayed (``replayed`` counts them, including
  those left by earlier runs);
* after ``fork`` the child starts with an empty queue and its own thread.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .events import Event
from .spill import Spill
from .storage.base import Storage

__all__ = ["Recorder", "add_listener", "remove_listener"]

log = logging.getLogger("leza_middleware")

Listener = Callable[[Sequence[Event]], None]

# Listeners see every prepared event of every recorder in the process (used by
# ``leza_middleware.testing.capture_events``). Copy-on-write: the worker
# iterates a snapshot without locking.
_listeners: tuple[Listener, ...] = ()
_listeners_lock = threading.Lock()


def add_listener(fn: Listener) -> None:
    global _listeners
    with _listeners_lock:
        _listeners = (*_listeners, fn)


def remove_listener(fn: Listener) -> None:
    global _listeners
    with _listeners_lock:
        _listeners = tuple(x for x in _listeners if x is not fn)


_MAX_PROBE_DELAY = 30.0


class Recorder:
    def __init__(
        self,
        storage: Storage,
        prepare: Callable[[Any], Event],
        spill: Spill,
        *,
        prepare_batch: Callable[[list[Any]], list[Event]] | None = None,
        priority: Callable[[Any], bool] = lambda item: False,
        derive: Callable[[list[Event]], list[Event]] | None = None,
        tick: Callable[[], None] | None = None,
        on_fork: Sequence[Callable[[], None]] = (),
        batch_size: int = 512,
        flush_interval: float = 1.0,
        queue_size: int = 10_000,
        max_retries: int = 3,
        retry_backoff: float = 0.1,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.storage = storage
        self._prepare = prepare
        self._prepare_batch = prepare_batch
        self._priority = priority
        # Events that follow from a written batch (session changes): written and
        # spilled with it, but not counted: they were never enqueued.
        self._derive = derive
        # Periodic work on the recorder thread (session blocklist refresh).
        self._tick = tick
        # Per-process state of the owner to reset in a forked child.
        self._on_fork = tuple(on_fork)
        self.spill = spill
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.shutdown_timeout = shutdown_timeout
        self._setup_done = False
        # This recorder's own listeners (add_observer); copy-on-write like _listeners.
        self._observers: tuple[Listener, ...] = ()
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        # Held by the worker thread during each step (a batch, a replay, a
        # tick): a fork waits for it, see _before_fork.
        self._busy = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified when events stop being pending
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue: deque[Any] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._drained = False  # shutdown took what was left in the queue
        # Pending = queued + in flight (taken by the worker) + held (being
        # spilled by another thread). Each moves to a final counter in the
        # same locked step that removes it, so the books always balance.
        self._inflight: list[Any] = []
        self._inflight_prepared = False
        self._held = 0
        self._abandoned = False  # shutdown() took over a stuck worker's batch
        # enqueued = dequeued + queued + overflowed (see the property).
        self._dequeued = 0  # taken off the queue, under the lock
        self._overflowed = 0  # never queued: the queue was full or closed
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.retried = 0
        # Spilled events storage refused for their content when replayed.
        self.replay_refused = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.storage_errors = 0
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._probe_delay = 1.0
        # When each throttled warning ("storage", "spill") was last logged.
        self._last_warned: dict[str, float] = {}

    # -- observers -----------------------------------------------------------

    def add_observer(self, fn: Listener) -> None:
        """Call ``fn(events)`` on the recorder thread with each batch's prepared events,
        and ``fn(())`` after each round of batches (storage written, ticks run).

        For work that must stay off the request path (Prometheus metrics): ``fn``
        runs while a fork waits (see ``_before_fork``), so it must be quick and
        must not block; what it raises is logged (debug) and ignored. Kept across
        ``fork``.
        """
        with _listeners_lock:
            if all(f is not fn for f in self._observers):
                self._observers = (*self._observers, fn)

    def remove_observer(self, fn: Listener) -> None:
        with _listeners_lock:
            self._observers = tuple(f for f in self._observers if f is not fn)

    @property
    def observers(self) -> tuple[Listener, ...]:
        return self._observers

    def _observe(self, events: Sequence[Event]) -> None:
        for fn in self._observers:
            try:
                fn(events)
            except BaseException:
                log.debug("leza: recorder observer failed", exc_info=True)

    # -- request path --------------------------------------------------------

    def offer(self, item: Any) -> None:
        """Queue one raw record. Never blocks on I/O, never raises.

        No lock on this path (it runs once per request): ``deque.append`` is
        atomic, and ``enqueued`` is derived from what left the queue plus what
        is in it, so there is no counter to update here. With several request
        threads the cap may be passed by one item per thread, no more.
        """
        q = self._queue
        if len(q) < self.queue_size and not self._closed:
            q.append(item)
            if self._drained:  # shutdown's final drain ran meanwhile: spill what is left
                self._spill_late()
                return
            if self._thread is None:
                self._start()
            if len(q) >= self.batch_size:
                self._wake.set()
            return
        with self._lock:
            self._overflowed += 1
            self._held += 1
        self._overflow(item)

    @property
    def enqueued(self) -> int:
        """Records offered so far (read with the lock held for a consistent view)."""
        return self._dequeued + len(self._queue) + self._overflowed

    def _drain_queue(self) -> list[Any]:
        # One popleft at a time (with the lock held): a record appended by a
        # request thread meanwhile is either taken here or still queued.
        q = self._queue
        taken = [q.popleft() for _ in range(len(q))]
        self._dequeued += len(taken)
        return taken

    def _spill_late(self) -> None:
        """Records queued after shutdown's final drain go to the spill file."""
        with self._lock:
            taken = self._drain_queue()
            self._held += len(taken)
        if taken:
            self._spill_held(taken)

    def _spill_held(self, items: list[Any], prepared: bool = False) -> None:
        """Spill records counted in ``_held`` (enriched first unless ``prepared``)."""
        events, bad = (items, 0) if prepared else self._prepare_all(items)
        self._settle_spill(events, bad, held=len(items))
        if self._closed:
            self.spill.rotate()  # after shutdown nothing else closes the file

    def _overflow(self, item: Any) -> None:
        # Queue full, or the recorder is shut down. Priority events (and, after
        # shutdown, every event) go to the spill file and are replayed later;
        # the rest are dropped and counted.
        try:
            to_spill = self._closed or self._priority(item)
        except Exception:
            to_spill = False
        if to_spill:
            self._spill_held([item])
        else:
            with self._lock:
                self._held -= 1
                self._add_drops("queue_full", 1)

    # -- control -------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            _load_prctl()
            t = threading.Thread(target=self._run, name="leza-recorder", daemon=True)
            # Started before the lock is released: shutdown() may join it at once.
            t.start()
            self._thread = t

    @property
    def running(self) -> bool:
        """Whether the background thread is alive (it starts with the first event)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight) + self._held

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until everything enqueued so far has been written, spilled or dropped.

        Returns False when ``timeout`` passed first (e.g. storage is hanging);
        those events stay pending and are counted as such.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self.enqueued
        if self._thread is None:
            self._start()
        while True:
            with self._lock:
                # enqueued - pending, without reading the queue (appended to unlocked)
                settled = self._dequeued + self._overflowed - len(self._inflight) - self._held
                if settled >= target or (self._closed and not self.pending):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
            self._wake.set()
            with self._lock:
                self._done.wait(0.05 if remaining is None else min(remaining, 0.05))

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, stop the thread and close storage, within ``timeout`` seconds.

        What cannot be written in time is spilled (and replayed at next start);
        only when the spill file cannot be written either is it dropped, counted.
        Returns True when the worker finished in time.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return True
            self._closed = True  # later offers go to the spill file
            thread = self._thread
        self._stopping.set()
        self._wake.set()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = thread is not None and thread.is_alive()
        # Whatever is still queued, or held by a worker stuck in storage, is
        # spilled; if the stuck write completes later, replay is a no-op by id.
        with self._lock:
            taken = self._drain_queue()
            self._drained = True  # from now on, whoever queues a record spills it
            ready: list[Event] = []
            if stuck:
                if self._inflight_prepared:
                    ready = list(self._inflight)
                else:
                    taken += self._inflight
                self._abandoned = True
                self._held += len(self._inflight)
                self._inflight = []
            self._held += len(taken)
            n_held = len(taken) + len(ready)
        if n_held:
            events, bad = self._prepare_all(taken)
            self._settle_spill(ready + events, bad, held=n_held)
        self.spill.rotate()  # release the file's lock so the next start can replay it
        if not stuck:
            try:
                self.storage.close()
            except Exception:
                log.warning("leza: closing storage failed", exc_info=True)
        return not stuck

    def after_fork(self) -> None:
        self._reset_state()
        self.storage.after_fork()
        self.spill.after_fork()
        for fn in self._on_fork:
            fn()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            dropped = dict(self.dropped_by_reason)
            queued = len(self._queue)  # read once: request threads append without the lock
            return {
                "enqueued": self._dequeued + queued + self._overflowed,
                "written": self.written,
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
                "retried": self.retried,
                "spilled": self.spilled,
                "replayed": self.replayed,
                "replay_refused": self.replay_refused,
                "pending": queued + len(self._inflight) + self._held,
                "storage_errors": self.storage_errors,
                "storage_down": self._down_since is not None,
                "spill_corrupt_lines": self.spill.corrupt_lines,
            }

    # -- accounting (call with the lock held unless noted) --------------------

    def _add_drops(self, reason: str, n: int) -> None:
        if n:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + n
        self._done.notify_all()

    def _prepare_all(self, items: list[Any]) -> tuple[list[Event], int]:
        """Enrich raw records (no lock). Returns the events and how many failed."""
        if self._prepare_batch is not None:
            try:
                return self._prepare_batch(items), 0
            except Exception:
                pass  # one bad item spoils the batch: isolate it below
        prepare = self._prepare
        out: list[Event] = []
        for item in items:
            try:
                out.append(prepare(item))
            except Exception:
                log.debug("leza: could not prepare an event", exc_info=True)
        return out, len(items) - len(out)

    def _settle_spill(
        self, events: list[Event], bad: int, *, held: int = 0, derived: Sequence[Event] = ()
    ) -> None:
        """Spill ``events`` (no lock held) and settle the books in one step.

        ``held`` is how many of them were counted in ``_held``; otherwise they
        are the worker's in-flight batch. ``derived`` events travel along
        uncounted (they were never enqueued).
        """
        ok = True
        if events:
            try:
                self.spill.append([*events, *derived])
            except Exception as exc:
                ok = False
                self._log_spill_error(exc, len(events))
        with self._lock:
            if held:
                self._held -= held
            elif self._abandoned:
                return  # shutdown() took this batch over and settles it
            else:
                self._inflight = []
            if ok:
                self.spilled += len(events)
            else:
                self._add_drops("spill_failed", len(events))
            self._add_drops("invalid", bad)

    # -- worker thread -------------------------------------------------------

    def _run(self) -> None:
        with self._busy:
            # Under _busy, so a fork waits for it (ctypes was imported before the
            # thread started, see _load_prctl: a child forked in the middle of
            # that import would hang its own recorder on the import lock).
            _name_os_thread(b"leza-recorder")
            self._replay()  # events spilled by an earlier run
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                while self._queue and not self._abandoned:
                    with self._busy:
                        self._process(self._take())
                with self._busy:
                    if self._down_since is not None or self.spill.has_files():
                        self._maybe_replay()
                    if self._tick is not None and self._down_since is None:
                        self._run_tick(self._tick)
                    if self._observers:
                        self._observe(())
            except BaseException:  # a bug here must not kill the thread
                log.exception("leza: recorder loop error")
                self._rescue_inflight()
            if self._stopping.is_set() and not self._queue:
                return

    def _rescue_inflight(self) -> None:
        """After an unexpected error mid-batch, nothing may stay pending for ever:
        the batch in hand goes to the spill file (replayed later)."""
        try:
            with self._lock:
                batch, prepared = self._inflight, self._inflight_prepared
                if not batch or self._abandoned:
                    return
                self._inflight = []
                self._held += len(batch)
            self._spill_held(batch, prepared)
        except BaseException:
            log.exception("leza: could not spill the batch in hand after an error")

    def _take(self) -> list[Any]:
        with self._lock:
            q = self._queue
            batch = [q.popleft() for _ in range(min(len(q), self.batch_size))]
            self._dequeued += len(batch)
            self._inflight = batch
            self._inflight_prepared = False
        return batch

    def _process(self, batch: list[Any]) -> None:
        events, bad = self._prepare_all(batch)
        with self._lock:
            if self._abandoned:
                return
            # The in-flight batch is now the prepared events; the ones that
            # failed to prepare are dropped in the same step.
            self._inflight = events
            self._inflight_prepared = True
            self._add_drops("invalid", bad)
        derived: list[Event] = []
        if self._derive is not None and events:
            try:
                derived = self._derive(events)
            except BaseException:  # app code (rules) runs here: not even SystemExit stops us
                log.warning("leza: deriving session changes failed", exc_info=True)
        for fn in _listeners:
            try:
                fn(events + derived if derived else events)
            except BaseException:
                log.debug("leza: event listener failed", exc_info=True)
        if self._observers and events:
            self._observe(events)
        if not events:
            return
        if self._down_since is not None and time.monotonic() < self._next_probe:
            self._settle_spill(events, 0, derived=derived)
            return
        attempts = 1 if self._down_since is not None else self.max_retries + 1
        for attempt in range(attempts):
            error = self._write(events, derived)
            if error is None:
                self._mark_up()
                return
            if attempt == 0 and self._down_since is None and refused_for_content(error):
                rest = self._isolate(events, derived, error)
                if rest is None:
                    self._mark_up()
                    return
                events, derived = rest
            if attempt + 1 < attempts:
                with self._lock:
                    self.retried += 1
                if self._stopping.wait(self.retry_backoff * (2**attempt)):
                    break  # shutting down: spill now rather than sleep
        self._mark_down()
        self._settle_spill(events, 0, derived=derived)

    def _write(self, events: list[Event], derived: Sequence[Event] = ()) -> Exception | None:
        """Write a batch; the exception storage raised, or None."""
        try:
            self._ensure_setup()
            self.storage.write([*events, *derived] if derived else events)
        except BaseException as exc:  # a storage's own SystemExit is a failed write too
            with self._lock:
                self.storage_errors += 1
            self._log_storage_error(exc)
            return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
        with self._lock:
            if not self._abandoned:
                self.written += len(events)
                self._inflight = []
            self._done.notify_all()
        return None

    def _isolate(
        self, events: list[Event], derived: Sequence[Event], error: Exception
    ) -> tuple[list[Event], list[Event]] | None:
        """Storage refused the batch for what it holds, not for being down.

        Written in halves, the parts it takes are stored; the single events it
        still refuses are dropped, counted as ``unstorable`` (spilled, they would
        fail every replay) when the refusal is about their values, or when some
        other part was taken (so storage works). Returns None when the batch is
        settled, else what is left to retry or spill.
        """
        uncounted = {id(e) for e in derived}

        def write_part(part: list[Event]) -> None:
            self.storage.write(part)
            taken = {id(e) for e in part}
            with self._lock:
                if not self._abandoned:
                    self.written += sum(1 for e in part if id(e) not in uncounted)
                    self._inflight = [e for e in self._inflight if id(e) not in taken]
                self._done.notify_all()

        split = split_refused(write_part, [*events, *derived], error)
        dropped = split.droppable
        if dropped:
            gone = {id(e) for e in dropped}
            with self._lock:
                if not self._abandoned:
                    self._inflight = [e for e in self._inflight if id(e) not in gone]
                    self._add_drops("unstorable", sum(1 for e in dropped if id(e) not in uncounted))
            self._warn_throttled(
                "unstorable",
                "leza: storage refused %d event(s) it cannot store (%s: %s); dropped, "
                "counted as unstorable; the rest of their batch was written",
                len(dropped),
                ", ".join(sorted({f"{e.kind} {e.id}" for e in dropped[:5]})),
                type(split.first_refusal).__name__,
            )
        left = split.kept
        if not left:
            return None
        return [e for e in left if id(e) not in uncounted], [e for e in left if id(e) in uncounted]

    def _ensure_setup(self) -> None:
        if not self._setup_done:
            self.storage.setup()
            self._setup_done = True

    def _mark_down(self) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._probe_delay = 1.0
            log.warning("leza: storage %s unavailable; spilling events", self.storage.describe())
        else:
            self._probe_delay = min(self._probe_delay * 2, _MAX_PROBE_DELAY)
        self._next_probe = now + self._probe_delay

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "leza: storage %s is back; replaying spilled events", self.storage.describe()
            )
            self._down_since = None
            self._replay()

    def _maybe_replay(self) -> None:
        if self._down_since is None:
            self._replay()
        elif time.monotonic() >= self._next_probe:
            # The replay is the probe: storage is back once a replayed batch is
            # written. A replay that wrote nothing (no spill file to replay: the
            # spill directory is unwritable or full) proves nothing; the next
            # batch's single write attempt is the probe then.
            before = self.replayed
            if not self._replay():
                self._mark_down()
            elif self.replayed > before:
                self._down_since = None

    def _replay(self) -> bool:
        """Replay spill files; False when storage failed during the replay."""
        if not self.spill.has_files():
            return True

        def write(batch: list[Event]) -> None:
            self._ensure_setup()
            try:
                self.storage.write(batch)
            except Exception as exc:
                if not refused_for_content(exc):
                    raise
                # Spilled while storage was down, refused for its content now:
                # keep the rest of the file moving (see _isolate).
                split = split_refused(self.storage.write, batch, exc)
                with self._lock:
                    self.replayed += len(split.written)
                    self.replay_refused += len(split.droppable)
                if split.kept:
                    raise exc from None  # the file stays for the next attempt
                return
            with self._lock:
                self.replayed += len(batch)

        try:
            self.spill.replay(write, self.batch_size)
        except Exception as exc:
            with self._lock:
                self.storage_errors += 1
            self._log_storage_error(exc)
            return False
        return True

    def _run_tick(self, tick: Callable[[], None]) -> None:
        try:
            tick()
        except Exception as exc:
            # Mostly storage gone between batches (the tick reads it): a line
            # per 30 s as for failed writes, not a traceback per poll.
            log.debug("leza: periodic work failed", exc_info=True)
            self._log_storage_error(exc, "read")

    def _warn_throttled(self, topic: str, msg: str, *args: Any) -> None:
        """One warning per ``topic`` per 30 s: a storage or spill disk that stays
        broken fails every batch, and the log may well be on that disk. Every
        failure is counted in the stats whether it is logged or not."""
        now = time.monotonic()
        last = self._last_warned.get(topic)
        if last is None or now - last >= 30.0:
            self._last_warned[topic] = now
            log.warning(msg, *args)

    def _log_storage_error(self, exc: BaseException, what: str = "write") -> None:
        self._warn_throttled(
            "storage", "leza: storage %s failed: %s: %s", what, type(exc).__name__, exc
        )

    def _log_spill_error(self, exc: BaseException, n: int) -> None:
        self._warn_throttled(
            "spill",
            "leza: spill file not writable (%s: %s); dropping %d events (counted as spill_failed)",
            type(exc).__name__, exc, n,
        )  # fmt: skip


# DB-API names for "storage refused what it was given" (NUL in PostgreSQL text,
# a duplicate key, a wrong type) as opposed to "storage is not there". The first
# two are about the values themselves; ProgrammingError may also be the schema.
_VALUE_ERRORS = frozenset({"DataError", "IntegrityError"})
_CONTENT_ERRORS = _VALUE_ERRORS | {"ProgrammingError"}
# Failed part writes allowed before any part was taken (a few bad events in a
# batch of 512 are found in well under this).
_MAX_BLIND_SPLITS = 24


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def refused_for_content(exc: BaseException) -> bool:
    """Whether storage refused what it was given rather than failed to work."""
    return isinstance(exc, (ValueError, TypeError)) or _named(exc, _CONTENT_ERRORS)


def refused_by_value(exc: BaseException) -> bool:
    """Whether the refusal is about the values themselves (an unencodable
    string, NUL in PostgreSQL text): no other write is needed to prove it."""
    return isinstance(exc, (ValueError, TypeError)) or _named(exc, _VALUE_ERRORS)


@dataclass
class Split:
    """What :func:`split_refused` made of a refused batch."""

    written: list[Event] = field(default_factory=list)
    #: (event, why) of each single event storage still refused for its content
    refused: list[tuple[Event, Exception]] = field(default_factory=list)
    #: not tried: storage failed for another reason (``error``) first
    untried: list[Event] = field(default_factory=list)
    error: Exception | None = None

    @property
    def droppable(self) -> list[Event]:
        """Refused events that can never be stored: refused by value, or refused
        while other parts were taken (so storage itself works)."""
        return [e for e, why in self.refused if self.written or refused_by_value(why)]

    @property
    def kept(self) -> list[Event]:
        """What is left to retry or spill: refusals not proven, and the untried."""
        gone = {id(e) for e in self.droppable}
        return [e for e, _ in self.refused if id(e) not in gone] + self.untried

    @property
    def first_refusal(self) -> Exception | None:
        return self.refused[0][1] if self.refused else None


def split_refused(
    write: Callable[[list[Event]], None], events: list[Event], error: Exception
) -> Split:
    """Write ``events`` in halves, then quarters…, after storage refused them whole
    with ``error``. Parts are written in order, so the stored events keep theirs."""
    out = Split()
    if len(events) == 1:
        out.refused.append((events[0], error))  # refused alone already: nothing to split
        return out
    half = len(events) // 2
    parts = [events[half:], events[:half]]  # the first half is popped first
    failures = 0
    while parts:
        part = parts.pop()
        try:
            write(part)
        except Exception as exc:
            failures += 1
            # Storage that refuses everything (a table gone, a type it never
            # takes) is failing, not picky: give up before a write per event.
            if not refused_for_content(exc) or (not out.written and failures > _MAX_BLIND_SPLITS):
                out.untried = part + [e for p in reversed(parts) for e in p]
                out.error = exc
                return out
            if len(part) == 1:
                out.refused.append((part[0], exc))
            else:
                half = len(part) // 2
                parts += (part[half:], part[:half])
            continue
        out.written += part
    return out


def _name_os_thread(name: bytes) -> None:
    """Show the thread as ``leza-recorder`` in top -H, ps -L and /proc (Linux).

    Python < 3.14 names threads only inside Python; operators looking at CPU
    per thread should see which one is ours. Uses the prctl that
    :func:`_load_prctl` found before the thread started.
    """
    set_name = _set_thread_name
    if set_name is not None:
        with contextlib.suppress(Exception):
            set_name(name[:15])


_set_thread_name: Callable[[bytes], object] | None = None
_prctl_loaded = False


def _load_prctl() -> None:
    """Find libc's prctl once, in the thread that starts the worker, not in the
    worker: a ``fork()`` while a thread imports ctypes leaves the child that
    module's import lock held by a thread it does not have, and its recorder
    thread would block on ``import ctypes`` for ever (gunicorn ``--preload``
    forks right after the app is loaded, when the master's recorder starts)."""
    global _set_thread_name, _prctl_loaded
    if _prctl_loaded:
        return
    _prctl_loaded = True
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        char_p = ctypes.c_char_p
        _set_thread_name = lambda name: prctl(15, char_p(name), 0, 0, 0)  # noqa: E731 - PR_SET_NAME


# Every live recorder, for fork handling and interpreter exit.
_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


# How long a fork waits for a recorder's step to finish (storage hanging mid-write).
_FORK_WAIT = 2.0
_fork_state = threading.local()


def _before_fork() -> None:
    """Let every recorder finish the step in hand before the process forks.

    Threads do not survive ``fork()`` but the locks they held stay held: a
    child forked while the worker thread was inside a batch (holding the lock
    of a GeoIP cache, the advisory engine, a storage driver) would block on it
    forever, e.g. a worker gunicorn ``--preload`` respawns while the master's
    recorder writes. Released again in the parent right after the fork.
    """
    me = threading.get_ident()
    held: list[threading.Lock] = []
    for rec in list(_live):
        thread = rec._thread
        if thread is None or thread.ident == me or not thread.is_alive():
            continue
        if rec._busy.acquire(timeout=_FORK_WAIT):
            held.append(rec._busy)
    _fork_state.held = held


def _after_fork_in_parent() -> None:
    for lock in getattr(_fork_state, "held", ()):
        lock.release()
    _fork_state.held = []


def _after_fork_in_child() -> None:
    _fork_state.held = []  # the parent's locks; each recorder gets new ones below
    for rec in list(_live):
        rec.after_fork()


def _at_exit() -> None:
    for rec in list(_live):
        with contextlib.suppress(Exception):  # never break interpreter exit
            rec.shutdown()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(_at_exit)
