"""The recorder: a bounded queue drained by one background thread per process.

Shaped like OpenTelemetry's BatchProcessor. The request path only appends to a
deque (no I/O); the worker thread, woken by an Event when a batch is full or
every ``flush_interval``, prepares (enriches) and writes batches
(:mod:`.writing`); the books balance at all times (:mod:`.books`); after
``fork`` the child starts with an empty queue and its own thread (:mod:`.fork`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..events import Event
from ..spill import Spill
from ..storage.base import Storage
from ..storage.routed import RoutedStorage, periodic
from .fork import live
from .listeners import Listener
from .threadname import load_prctl, name_os_thread
from .writing import Writer

__all__ = ["Recorder"]

log = logging.getLogger("leza_middleware")


class Recorder(Writer):
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
        live.add(self)

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

    def _spill_late(self) -> None:
        """Records queued after shutdown's final drain go to the spill file."""
        with self._lock:
            taken = self._drain_queue()
            self._held += len(taken)
        if taken:
            self._spill_held(taken)

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

    def stats(self) -> dict[str, Any]:
        """The books (see :class:`~.books.Books`), and with storage by kind each
        backend's outages: ``backends`` (an empty list for one storage)."""
        out = super().stats()
        storage = self.storage
        out["backends"] = storage.backend_stats() if isinstance(storage, RoutedStorage) else []
        return out

    # -- control -------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            load_prctl()
            t = threading.Thread(target=self._run, name="leza-recorder", daemon=True)
            # Started before the lock is released: shutdown() may join it at once.
            t.start()
            self._thread = t

    @property
    def running(self) -> bool:
        """Whether the background thread is alive (it starts with the first event)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

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

    # -- worker thread -------------------------------------------------------

    def _run(self) -> None:
        with self._busy:
            # Under _busy, so a fork waits for it (ctypes was imported before the
            # thread started, see load_prctl: a child forked in the middle of
            # that import would hang its own recorder on the import lock).
            name_os_thread(b"leza-recorder")
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
                        # Storage by kind: a paused backend's periodic work waits
                        # (skipped, counted) while the others' goes on.
                        with periodic(self.storage):
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

    def hold_for_fork(self, me: int, timeout: float) -> threading.Lock | None:
        """Wait (up to ``timeout``) for the worker's step in hand and hold it off:
        the lock to release after the fork, None when there is no worker to wait
        for (none, finished, or ``me``). See :func:`.fork._before_fork`."""
        thread = self._thread
        if thread is None or thread.ident == me or not thread.is_alive():
            return None
        return self._busy if self._busy.acquire(timeout=timeout) else None
