"""Each kind of event in the store that suits it: ``storage={"access": …, "default": …}``.

:class:`RoutedStorage` is one :class:`Storage` over several: every read of a
kind goes to that kind's backend, every batch is split by kind and each part
written to its backend. A backend that fails does not hold the others back:
the parts that were written stay written and the write raises
:class:`PartialWriteError` carrying only the failed part, which the recorder
spills (and replays once that backend is back). A failed backend is left alone
for a growing pause (1 s, doubling to 30 s) so a dead server costs one fast
failure per batch, not a connect timeout each time; the spill's replay is the
probe that brings it back.

The recorder's periodic work (retention, rollup upkeep, the session poll) runs
inside :func:`periodic`: there a paused backend is not tried at all (its work
waits, counted as skipped, while the other backends' goes on), and a backend
that fails is paused as a failed write pauses it. One warning marks the start
of each outage and one line its end; ``backend_stats()`` (``stats()["backends"]``)
counts them. Reads made by the app, the admin view or the CLI always try.

The same backend may serve several kinds (one URL opened once). A backend that
has no place for a kind it is given (``stores(kind)`` is False) is a
configuration error, raised when the mapping is opened.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import LezaConfigError, LezaError
from ..events import AuditEvent, Event
from ..performer import Performer
from ..state.traffic import Traffic
from .base import Page, QueryFilter, Sighting, Storage
from .capabilities import Capability, capabilities_of

__all__ = [
    "KINDS",
    "BackendPaused",
    "PartialWriteError",
    "RoutedStorage",
    "backend_of",
    "backends_of",
    "is_paused",
    "periodic",
]

log = logging.getLogger("leza_middleware")
T = TypeVar("T")

#: The kinds a mapping may name (besides ``"default"``).
KINDS = ("access", "log", "audit", "session", "check", "advisory")

_FIRST_PAUSE = 1.0
_MAX_PAUSE = 30.0
# A failure that took this long (a hung server: a timeout) pauses the backend
# this many times as long at once: each try of a hung backend holds the
# recorder thread for its timeout, a refused connection costs nothing.
_SLOW_FAILURE_FACTOR = 3.0
# An outage ends once the backend has worked for this long without failing
# again: a sharded ClickHouse with one shard hung takes the small batches whose
# rows all go to the other shards, and fails the next. Until then a failure
# goes on doubling the pause, and is not announced again.
_STEADY = 10.0


class PartialWriteError(Exception):
    """Some backends of a :class:`RoutedStorage` failed to take their part of a batch.

    ``failed`` are the events not stored (the other parts were); ``cause`` is
    the first backend's exception; ``backends`` names every backend that failed.
    """

    def __init__(self, failed: list[Event], cause: Exception, backends: list[str]) -> None:
        super().__init__(
            f"{len(failed)} event(s) not stored: {', '.join(backends)} failed: "
            f"{type(cause).__name__}: {cause}"
        )
        self.failed = failed
        self.cause = cause
        self.backends = backends


class BackendPaused(Exception):
    """A backend that failed recently is not tried again until its pause ends.

    Raised at once, without I/O. In :func:`periodic` work it is also raised
    (from the backend's own error) when a backend fails there: the outage is
    reported by the routed storage, so the caller only skips its work.
    """


@dataclass
class _Health:
    """One backend's outages, as the routed storage saw them in this process."""

    until: float = 0.0  # monotonic time the pause ends (0: not paused)
    pause: float = 0.0  # length of the current pause (doubles per failure)
    since: float | None = None  # start of the current outage
    back_at: float | None = None  # when it worked again (the outage ends _STEADY later)
    outages: int = 0
    failures: int = 0  # failed writes and periodic calls
    skipped: int = 0  # periodic calls not made: the backend was paused
    skipped_now: int = 0  # of those, in the current outage
    last_error: str = ""


# Set on the recorder thread during its periodic work (see periodic()).
_upkeep = threading.local()


@contextlib.contextmanager
def periodic(storage: Storage) -> Iterator[None]:
    """The recorder's periodic work on ``storage``: in this block, on this
    thread, a paused backend of a :class:`RoutedStorage` raises
    :class:`BackendPaused` at once and one that fails is paused (and its error
    raised as :class:`BackendPaused`). Any other storage: nothing changes."""
    if not isinstance(storage, RoutedStorage):
        yield
        return
    before = getattr(_upkeep, "on", False)
    _upkeep.on = True
    try:
        yield
    finally:
        _upkeep.on = before


def is_paused(storage: Storage, kind: str) -> bool:
    """Whether the backend of ``kind`` is paused after a failure (always False
    for a storage that does not route by kind). Counted as a skipped call."""
    if not isinstance(storage, RoutedStorage):
        return False
    return storage.skip_paused(kind)


def _content_refusal(exc: BaseException) -> bool:
    # Storage refused the values (a NUL byte, a wrong type), it is not down:
    # the recorder isolates such events, so the backend must stay writable.
    from ..recorder.refusals import refused_for_content

    return refused_for_content(exc)


class RoutedStorage(Storage):
    """Events of each kind in their own backend; see the module docstring."""

    def __init__(self, routes: Mapping[str, Storage]) -> None:
        unknown = set(routes) - set(KINDS)
        if unknown:
            raise LezaConfigError(f"storage mapping: unknown kind(s) {sorted(unknown)}")
        missing = [k for k in KINDS if k not in routes]
        if missing:
            raise LezaConfigError(f"storage mapping: no backend for {', '.join(missing)}")
        self._route = {k: routes[k] for k in KINDS}
        distinct: list[Storage] = []
        for b in self._route.values():
            if all(b is not d for d in distinct):
                distinct.append(b)
        self.backends: tuple[Storage, ...] = tuple(distinct)
        for kind, b in self._route.items():
            if not b.stores(kind):
                raise LezaConfigError(
                    f"storage[{kind!r}]: {b.describe()} has no place for {kind} events"
                )
        self.shared = all(b.shared for b in self.backends)
        # The instance's own declaration (capabilities_of reads it first): what
        # the backends behind it can do for the kinds each one keeps.
        self.__dict__["capabilities"] = self._capabilities()
        # kind -> index of its backend in self.backends, built once
        self._index = {k: next(i for i, d in enumerate(distinct) if d is b)
                       for k, b in self._route.items()}  # fmt: skip
        self._index["traffic"] = self._index["access"]
        self._health = [_Health() for _ in self.backends]
        self._set_up: set[int] = set()
        self._lock = threading.Lock()

    def _capabilities(self) -> frozenset[Capability]:
        every = frozenset.intersection(*(capabilities_of(b) for b in self.backends))
        caps = set(every & {Capability.COUNT, Capability.PURGE, Capability.ERASURE})
        if Capability.ROLLUPS in capabilities_of(self._route["access"]):
            caps.add(Capability.ROLLUPS)
        audit = capabilities_of(self._route["audit"])
        caps |= audit & {Capability.AUDIT_CHAIN, Capability.AUDIT_PURGE}
        return frozenset(caps)

    def backend(self, kind: str) -> Storage:
        """The backend that keeps events of ``kind`` (``"traffic"``: access's)."""
        try:
            return self._route["access" if kind == "traffic" else kind]
        except KeyError:
            raise ValueError(f"unknown event kind {kind!r}") from None

    # -- pauses ----------------------------------------------------------------

    def _paused(self, i: int, now: float) -> bool:
        with self._lock:
            return now < self._health[i].until

    def _failed(self, i: int, exc: BaseException, started: float) -> None:
        """Pause backend ``i`` after a call begun at ``started`` failed: 1 s,
        doubling to 30 s, and at least 3 times what the failed call took (a
        timeout). The first failure of an outage is logged, the rest counted."""
        now = time.monotonic()
        with self._lock:
            h = self._health[i]
            h.failures += 1
            h.last_error = f"{type(exc).__name__}: {exc}"[:300]
            first = h.since is None
            pause = _FIRST_PAUSE if first else h.pause * 2
            pause = max(pause, (now - started) * _SLOW_FAILURE_FACTOR)
            h.pause = min(pause, _MAX_PAUSE)
            h.until = now + h.pause
            h.back_at = None
            if first:
                h.since = now
                h.outages += 1
                h.skipped_now = 0
        if first:
            log.warning(
                "leza: storage %s failed (%s); its events are spilled and replayed when it "
                "is back, and its periodic work waits until then",
                self.backends[i].describe(), h.last_error,
            )  # fmt: skip

    def _worked(self, i: int) -> None:
        """Backend ``i`` answered: not paused any more, and the outage in course
        is over once it has worked for :data:`_STEADY` seconds."""
        with self._lock:
            h = self._health[i]
            if h.since is not None and h.back_at is None:
                h.back_at, h.until = time.monotonic(), 0.0
        self._settle(i)

    def _settle(self, i: int) -> None:
        """Close backend ``i``'s outage when it has worked long enough (checked
        whenever the backend is used or its stats read)."""
        now = time.monotonic()
        with self._lock:
            h = self._health[i]
            if h.since is None or h.back_at is None or now - h.back_at < _STEADY:
                return
            took, skipped = h.back_at - h.since, h.skipped_now
            h.since, h.back_at, h.until, h.pause = None, None, 0.0, 0.0
        log.warning(
            "leza: storage %s is back after %.1f s (%d periodic task(s) skipped meanwhile)",
            self.backends[i].describe(), took, skipped,
        )  # fmt: skip

    def skip_paused(self, kind: str) -> bool:
        """Whether periodic work on ``kind``'s backend must wait (it is paused);
        counted as a skipped call when so."""
        i = self._kind_index(kind)
        self._settle(i)
        with self._lock:
            h = self._health[i]
            if time.monotonic() >= h.until:
                return False
            h.skipped += 1
            h.skipped_now += 1
            return True

    def backend_stats(self) -> list[dict[str, Any]]:
        """Per backend: its kinds, whether it is paused now, outages, failures
        and periodic calls skipped while paused (``stats()["backends"]``)."""
        for i in range(len(self.backends)):
            self._settle(i)
        now = time.monotonic()
        out = []
        with self._lock:
            for i, b in enumerate(self.backends):
                h = self._health[i]
                out.append({
                    "storage": b.describe(),
                    "kinds": [k for k in KINDS if self._index[k] == i],
                    "down": h.since is not None and h.back_at is None,
                    "paused_for": round(max(0.0, h.until - now), 3),
                    "outages": h.outages,
                    "failures": h.failures,
                    "skipped": h.skipped,
                    "last_error": h.last_error,
                })  # fmt: skip
        return out

    def _kind_index(self, kind: str) -> int:
        try:
            return self._index[kind]
        except KeyError:
            raise ValueError(f"unknown event kind {kind!r}") from None

    def _ensure(self, i: int) -> Storage:
        """Backend ``i``, set up before its first use in this process."""
        b = self.backends[i]
        if i not in self._set_up:
            b.setup()
            with self._lock:
                self._set_up.add(i)
        return b

    def _use(self, kind: str, fn: Callable[[Storage], T]) -> T:
        """``fn`` on the backend of ``kind``: directly, or as periodic work (see
        :func:`periodic`)."""
        i = self._kind_index(kind)
        if not getattr(_upkeep, "on", False):
            if i not in self._set_up:  # down at start-up (see setup): said as ReadyStorage does
                try:
                    self._ensure(i)
                except Exception as exc:
                    where = self.backends[i].describe()
                    raise LezaError(f"storage {where} is not reachable: {exc}") from exc
            return fn(self.backends[i])
        if self.skip_paused(kind):
            raise BackendPaused(f"{self.backends[i].describe()} failed recently")
        started = time.monotonic()
        try:
            out = fn(self._ensure(i))
        except Exception as exc:
            if _content_refusal(exc):
                raise
            self._failed(i, exc, started)
            raise BackendPaused(f"{self.backends[i].describe()}: {exc}") from exc
        self._worked(i)
        return out

    def _use_iter(self, kind: str, make: Callable[[Storage], Iterator[int]]) -> Iterator[int]:
        """:meth:`_use` for each step of a generator (a purge in batches)."""
        batches = self._use(kind, make)
        while True:
            step = self._use(kind, lambda _b: next(batches, None))
            if step is None:
                return
            yield step

    # -- writing ---------------------------------------------------------------

    def write(self, events: Sequence[Event]) -> None:
        parts: dict[int, list[Event]] = {}
        index = self._index
        for e in events:
            try:
                i = index[e.kind]
            except KeyError:
                raise ValueError(f"unknown event kind {e.kind!r}") from None
            parts.setdefault(i, []).append(e)
        failed: list[Event] = []
        causes: list[tuple[str, Exception]] = []
        for i, part in parts.items():
            b = self.backends[i]
            now = time.monotonic()
            if self._paused(i, now):
                failed += part
                causes.append((b.describe(), BackendPaused(f"{b.describe()} failed recently")))
                continue
            try:
                self._ensure(i).write(part)
            except Exception as exc:
                failed += part
                causes.append((b.describe(), exc))
                if not _content_refusal(exc):
                    self._failed(i, exc, now)
                continue
            self._worked(i)
        if failed:
            raise PartialWriteError(failed, causes[0][1], [name for name, _ in causes])

    # -- reading: each kind from its backend -------------------------------------

    def setup(self) -> None:
        """Every backend that can be set up now. One that cannot (a server down
        at start) is paused and set up before its first use; the others work
        meanwhile. Raises only when no backend could be set up."""
        first: Exception | None = None
        for i in range(len(self.backends)):
            if i in self._set_up:
                continue
            started = time.monotonic()
            try:
                self._ensure(i)
            except Exception as exc:
                first = first or exc
                if not _content_refusal(exc):
                    self._failed(i, exc, started)
        if first is not None and not self._set_up:
            raise first

    def query(self, kind: str, flt: QueryFilter) -> Page:
        return self._use(kind, lambda b: b.query(kind, flt))

    def stores(self, kind: str) -> bool:
        return kind in self._route and self._route[kind].stores(kind)

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        return self._use(kind, lambda b: b.count(kind, flt, cap))

    def sightings(self, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
        return self._use("access", lambda b: b.sightings(flt, scan))

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        return self._use("access", lambda b: b.traffic(since_us, until_us, bucket_seconds))

    def settle_traffic(self, now_us: int | None = None) -> int:
        return self._use("access", lambda b: b.settle_traffic(now_us))

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        return self._use(kind, lambda b: b.read_after(kind, after, limit))

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        return self._use(kind, lambda b: b.purge(kind, before, batch_size))

    def purge_batches(self, kind: str, before: int, batch_size: int = 10_000) -> Iterator[int]:
        return self._use_iter(kind, lambda b: b.purge_batches(kind, before, batch_size))

    # -- the audit chain lives with the audit kind ---------------------------------

    def iter_audit(self) -> Iterator[AuditEvent]:
        return self._use("audit", lambda b: b.iter_audit())

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        return self._use("audit", lambda b: b.audit_checkpoints())

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        return self._use("audit", lambda b: b.audit_purge_marks())

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        return self._use_iter("audit", lambda b: b.purge_audit_chains(marks, batch_size))

    def audit_redactions(self) -> list[dict[str, Any]]:
        return self._use("audit", lambda b: b.audit_redactions())

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        return self._use("audit", lambda b: b.redact_audit(events, entries))

    # -- erasure reaches every backend -------------------------------------------

    def performer_identities(self, performer_id: str) -> list[Performer]:
        found: dict[str, Performer] = {}
        for b in self.backends:
            for p in b.performer_identities(performer_id):
                found[p.to_json()] = p
        return list(found.values())

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        total: dict[str, int] = {}
        for b in self.backends:
            for key, n in b.forget_performer(performer_id, identifiers).items():
                total[key] = total.get(key, 0) + n
        return total

    def after_fork(self) -> None:
        for b in self.backends:
            b.after_fork()
        with self._lock:
            self._health = [_Health() for _ in self.backends]

    def close(self) -> None:
        for b in self.backends:
            b.close()

    def describe(self) -> str:
        names = {id(b): b.describe() for b in self.backends}
        groups: dict[int, list[str]] = {}
        for kind, b in self._route.items():
            groups.setdefault(id(b), []).append(kind)
        return "routed(" + "; ".join(f"{'+'.join(k)}: {names[i]}" for i, k in groups.items()) + ")"


def backend_of(storage: Storage, kind: str) -> Storage:
    """The backend that keeps ``kind``: itself unless ``storage`` routes by kind."""
    return storage.backend(kind) if isinstance(storage, RoutedStorage) else storage


def backends_of(storage: Storage) -> tuple[Storage, ...]:
    """Every backend behind ``storage`` (itself unless it routes by kind)."""
    return storage.backends if isinstance(storage, RoutedStorage) else (storage,)
