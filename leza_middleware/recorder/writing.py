"""The batch's path on the recorder thread: prepare, derive, tell listeners,
write with retries, isolate refused events, mark storage down or up, replay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..events import Event
from ..storage.routed import PartialWriteError
from .books import Books
from .listeners import Listener, listeners, listeners_lock
from .refusals import refused_for_content, split_refused

__all__ = ["Writer"]

log = logging.getLogger("leza_middleware")

_MAX_PROBE_DELAY = 30.0


def _only(events: Sequence[Event], failed: Sequence[Event]) -> list[Event]:
    """The events of ``events`` that are among ``failed`` (by identity)."""
    ids = {id(e) for e in failed}
    return [e for e in events if id(e) in ids]


class Writer(Books):
    """Writing and its failures (a base class of :class:`~.worker.Recorder`)."""

    # -- observers -----------------------------------------------------------

    def add_observer(self, fn: Listener) -> None:
        """Call ``fn(events)`` on the recorder thread with each batch's prepared events,
        and ``fn(())`` after each round of batches (storage written, ticks run).

        For work that must stay off the request path (Prometheus metrics): ``fn``
        runs while a fork waits (see ``_before_fork``), so it must be quick and
        must not block; what it raises is logged (debug) and ignored. Kept across
        ``fork``.
        """
        with listeners_lock:
            if all(f is not fn for f in self._observers):
                self._observers = (*self._observers, fn)

    def remove_observer(self, fn: Listener) -> None:
        with listeners_lock:
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

    # -- one batch -----------------------------------------------------------

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
        for fn in listeners():
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
            if isinstance(error, PartialWriteError):
                # Storage by kind: the other backends took their parts. The one
                # that failed is paused by the routed storage, so its events are
                # spilled now (the replay retries them) unless it refused values.
                events, derived = _only(events, error.failed), _only(derived, error.failed)
                if attempt == 0 and refused_for_content(error.cause):
                    rest = self._isolate(events, derived, error.cause)
                    if rest is None:
                        return
                    events, derived = rest
                self._settle_spill(events, 0, derived=derived)
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
        except PartialWriteError as exc:
            failed = {id(e) for e in exc.failed}
            with self._lock:
                self.storage_errors += 1
                if not self._abandoned:
                    self.written += sum(1 for e in events if id(e) not in failed)
                    self._inflight = [e for e in self._inflight if id(e) in failed]
                self._done.notify_all()
            self._log_storage_error(exc)
            return exc
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
