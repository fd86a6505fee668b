"""The recorder's books: its state, the counters and the one step that settles them.

Accounting is exact at all times (every counter changes under one lock)::

    enqueued == written + dropped + pending + spilled

Pending = queued + in flight (taken by the worker) + held (being spilled by
another thread); each moves to a final counter in the same locked step that
removes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..events import Event
from ..spill import Spill
from ..storage.base import Storage
from .listeners import Listener

__all__ = ["Books"]

log = logging.getLogger("leza_middleware")


class Books:
    """State and accounting of a :class:`~.worker.Recorder` (its base class)."""

    # Set by Recorder.__init__ (configuration; kept across fork).
    storage: Storage
    spill: Spill
    _prepare: Callable[[Any], Event]
    _prepare_batch: Callable[[list[Any]], list[Event]] | None
    _priority: Callable[[Any], bool]
    _derive: Callable[[list[Event]], list[Event]] | None
    _tick: Callable[[], None] | None
    _on_fork: tuple[Callable[[], None], ...]
    _observers: tuple[Listener, ...]
    _setup_done: bool
    batch_size: int
    flush_interval: float
    queue_size: int
    max_retries: int
    retry_backoff: float
    shutdown_timeout: float

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

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight) + self._held

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

    def _spill_held(self, items: list[Any], prepared: bool = False) -> None:
        """Spill records counted in ``_held`` (enriched first unless ``prepared``)."""
        events, bad = (items, 0) if prepared else self._prepare_all(items)
        self._settle_spill(events, bad, held=len(items))
        if self._closed:
            self.spill.rotate()  # after shutdown nothing else closes the file

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
