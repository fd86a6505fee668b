"""The dispatcher: a bounded in-memory queue drained by one background thread.

Shaped like OpenTelemetry's BatchProcessor (and like the recorder): the caller
only appends to a deque under a lock and returns; a daemon worker thread, started
on the first notification, hands each notification to each notifier in turn.

Counting (all under one lock)::

    enqueued == processed + pending            (notifications)
    sent + failed == deliveries attempted      (one per notification and notifier)

``dropped`` counts notifications refused because the queue was full, the
dispatcher was shut down, or shutdown ran out of time. After ``fork`` the
child starts with an empty queue, zeroed counters and its own worker thread;
the parent still sends what it had queued.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..errors import LezaConfigError
from .base import Notification, NotificationError, Notifier

__all__ = ["Dispatcher"]

# The library's own logger: never routed back into leza's log handler.
log = logging.getLogger("leza_middleware.notify")

_DROP_LOG_EVERY = 60.0  # seconds between two "queue full" warnings


class Dispatcher:
    """Deliver notifications to notifiers off the caller's thread.

    :param notifiers: the initial notifiers (more with ``add()``).
    :param queue_size: notifications held in memory at most; more are dropped, counted.
    :param shutdown_timeout: seconds ``shutdown()`` (and interpreter exit) waits
        for the queue to drain.
    """

    def __init__(
        self,
        notifiers: Iterable[Notifier] = (),
        *,
        queue_size: int = 1000,
        shutdown_timeout: float = 5.0,
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise LezaConfigError(f"notify queue_size must be an int >= 1, got {queue_size!r}")
        if (
            isinstance(shutdown_timeout, bool)
            or not isinstance(shutdown_timeout, (int, float))
            or shutdown_timeout < 0
        ):
            raise LezaConfigError(
                f"notify shutdown_timeout must be a number >= 0, got {shutdown_timeout!r}"
            )
        self.queue_size = queue_size
        self.shutdown_timeout = float(shutdown_timeout)
        # (notifier, label) pairs; replaced, never mutated, so the worker can
        # iterate a snapshot without the lock.
        self._entries: tuple[tuple[Notifier, str], ...] = ()
        self._closed = False
        self._reset_state()
        for notifier in notifiers:
            self.add(notifier)
        _live.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)  # the worker waits on it
        self._idle = threading.Condition(self._lock)  # flush() waits on it
        self._stopping = threading.Event()
        self._queue: deque[Notification] = deque()
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._enqueued = 0
        self._processed = 0
        self._abandoned = 0  # given up by shutdown(), so flush() can return
        self._sent = 0
        self._failed = 0
        self._dropped: dict[str, int] = {}
        self._per: dict[str, dict[str, Any]] = {
            label: _new_counters() for _, label in self._entries
        }
        self._last_drop_log = -_DROP_LOG_EVERY

    # -- configuration --------------------------------------------------------

    def add(self, notifier: Notifier) -> Notifier:
        """Add a notifier (once; adding the same object again does nothing). Returns it."""
        if not isinstance(notifier, Notifier):
            raise LezaConfigError(
                f"notifiers must subclass leza_middleware.notify.Notifier, "
                f"got {type(notifier).__name__}"
            )
        with self._lock:
            if any(n is notifier for n, _ in self._entries):
                return notifier
            base = str(getattr(notifier, "name", "") or type(notifier).__name__)
            used = {label for _, label in self._entries} | set(self._per)
            label, k = base, 1
            while label in used:
                k += 1
                label = f"{base} #{k}"
            self._entries = (*self._entries, (notifier, label))
            self._per[label] = _new_counters()
        return notifier

    def remove(self, notifier: Notifier) -> bool:
        """Stop sending to ``notifier`` (its counters stay in ``stats()``)."""
        with self._lock:
            kept = tuple(e for e in self._entries if e[0] is not notifier)
            found = len(kept) != len(self._entries)
            self._entries = kept
        return found

    @property
    def notifiers(self) -> tuple[Notifier, ...]:
        return tuple(n for n, _ in self._entries)

    # -- the caller's side ------------------------------------------------------

    def notify(self, notification: Notification) -> bool:
        """Queue ``notification`` for every notifier and return at once.

        Never blocks on I/O and never raises. Returns False when it was not
        queued: no notifier configured, the queue is full, or the dispatcher is
        shut down (the last two are counted as ``dropped``).
        """
        try:
            with self._lock:
                if not self._entries:
                    return False
                if self._closed:
                    self._drop("closed", 1)
                    return False
                if len(self._queue) >= self.queue_size:
                    self._drop("queue_full", 1)
                    warn = time.monotonic() - self._last_drop_log >= _DROP_LOG_EVERY
                    if warn:
                        self._last_drop_log = time.monotonic()
                    queued = False
                else:
                    self._queue.append(notification)
                    self._enqueued += 1
                    self._has_work.notify()
                    queued, warn = True, False
                start = queued and self._thread is None
            if warn:
                log.warning(
                    "leza: notification queue full (%d); dropping notifications",
                    self.queue_size,
                )
            if start:
                self._start()
            return queued
        except Exception:  # pragma: no cover - defensive: the caller must never see one
            return False

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="leza-notify", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down, or no more threads
            with self._lock:
                self._thread = None
            log.warning("leza: could not start the notification thread", exc_info=True)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every notification queued so far has been handed to every notifier.

        Returns False when ``timeout`` (seconds; None waits forever) passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._enqueued
            need_start = self._processed < target and self._thread is None and not self._closed
        if need_start:
            self._start()
        with self._lock:
            while self._processed + self._abandoned < target:
                if deadline is None:
                    self._idle.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain the queue, stop the worker and close the notifiers.

        Waits at most ``timeout`` seconds (default ``shutdown_timeout``). What is
        still queued then is dropped, counted under ``dropped_by_reason["shutdown"]``.
        Later ``notify()`` calls are dropped (``"closed"``). Returns True when
        everything was delivered (or failed) in time.
        """
        timeout = self.shutdown_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed and self._thread is None:
                return True
            self._closed = True
            thread = self._thread
            self._stopping.set()
            self._has_work.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = thread is not None and thread.is_alive()
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            self._drop("shutdown", left)
            self._abandoned += left
            self._idle.notify_all()
            if not stuck:
                self._thread = None
            entries = self._entries
        if left:
            log.warning("leza: %d notification(s) not sent before shutdown", left)
        if not stuck:
            for notifier, label in entries:
                try:
                    notifier.close()
                except Exception:
                    log.warning("leza: closing notifier %s failed", label, exc_info=True)
        return not stuck and not left

    def after_fork(self) -> None:
        """Called in a forked child: empty queue, zeroed counters, a new worker on demand."""
        self._reset_state()

    def stats(self) -> dict[str, Any]:
        """Counters of this process.

        ``sent``/``failed`` count deliveries (one notification to one notifier);
        ``enqueued``, ``pending`` and ``dropped`` count notifications.
        """
        with self._lock:
            dropped = dict(self._dropped)
            return {
                "enqueued": self._enqueued,
                "sent": self._sent,
                "failed": self._failed,
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
                "pending": len(self._queue) + self._inflight,
                "notifiers": {label: dict(c) for label, c in self._per.items()},
            }

    # -- the worker -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping.is_set():
                    self._has_work.wait()
                if not self._queue:
                    return  # stopping, and drained
                notification = self._queue.popleft()
                self._inflight = 1
                entries = self._entries
            try:
                for notifier, label in entries:
                    self._deliver(notifier, label, notification)
            except Exception:  # pragma: no cover - a bug here must not kill the worker
                log.exception("leza: notification worker error")
            finally:
                with self._lock:
                    self._inflight = 0
                    self._processed += 1
                    self._idle.notify_all()

    def _deliver(self, notifier: Notifier, label: str, notification: Notification) -> None:
        try:
            notifier.send(notification)
        except BaseException as exc:  # a custom notifier's sys.exit() is a failed send
            if isinstance(exc, NotificationError):
                reason = str(exc)
                prefix = f"{notifier.name}: "  # the built-ins name themselves; the log does
                if notifier.name and reason.startswith(prefix):
                    reason = reason[len(prefix) :]
            else:
                reason = _short(exc)
            with self._lock:
                self._failed += 1
                counters = self._per.setdefault(label, _new_counters())
                counters["failed"] += 1
                counters["last_error"] = reason
            # Our own notifiers raise NotificationError with a clear message; a
            # traceback helps only for anything else (a bug in a custom notifier).
            log.warning(
                "leza: notifier %s could not send the %s notification for %s: %s",
                label,
                getattr(notification, "event", "?"),
                getattr(notification, "check", None) or "-",
                reason,
                exc_info=not isinstance(exc, NotificationError),
            )
        else:
            with self._lock:
                self._sent += 1
                self._per.setdefault(label, _new_counters())["sent"] += 1

    # -- accounting (lock held) -------------------------------------------------

    def _drop(self, reason: str, n: int) -> None:
        if n:
            self._dropped[reason] = self._dropped.get(reason, 0) + n


def _new_counters() -> dict[str, Any]:
    return {"sent": 0, "failed": 0, "last_error": None}


def _short(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Every live dispatcher, for fork handling and interpreter exit.
_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for dispatcher in list(_live):
        dispatcher.after_fork()


def _at_exit() -> None:
    for dispatcher in list(_live):
        with contextlib.suppress(Exception):  # never break interpreter exit
            dispatcher.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
