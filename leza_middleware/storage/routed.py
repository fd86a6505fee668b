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

The same backend may serve several kinds (one URL opened once). A backend that
has no place for a kind it is given (``stores(kind)`` is False) is a
configuration error, raised when the mapping is opened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import LezaConfigError
from ..events import AuditEvent, Event
from ..performer import Performer
from ..state.traffic import Traffic
from .base import Page, QueryFilter, Sighting, Storage
from .capabilities import Capability, capabilities_of

__all__ = ["KINDS", "PartialWriteError", "RoutedStorage", "backend_of", "backends_of"]

#: The kinds a mapping may name (besides ``"default"``).
KINDS = ("access", "log", "audit", "session", "check", "advisory")

_FIRST_PAUSE = 1.0
_MAX_PAUSE = 30.0


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
    """A backend that failed recently is not tried again until its pause ends."""


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
        # backend index -> (monotonic time its pause ends, length of the pause)
        self._paused: dict[int, tuple[float, float]] = {}
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

    # -- writing ---------------------------------------------------------------

    def write(self, events: Sequence[Event]) -> None:
        parts: dict[int, list[Event]] = {}
        index = {id(b): i for i, b in enumerate(self.backends)}
        for e in events:
            parts.setdefault(index[id(self.backend(e.kind))], []).append(e)
        failed: list[Event] = []
        causes: list[tuple[str, Exception]] = []
        for i, part in parts.items():
            b = self.backends[i]
            now = time.monotonic()
            with self._lock:
                paused = self._paused.get(i)
            if paused is not None and now < paused[0]:
                failed += part
                causes.append((b.describe(), BackendPaused(f"{b.describe()} failed recently")))
                continue
            try:
                b.write(part)
            except Exception as exc:
                failed += part
                causes.append((b.describe(), exc))
                if not _content_refusal(exc):
                    with self._lock:
                        pause = _FIRST_PAUSE if paused is None else min(paused[1] * 2, _MAX_PAUSE)
                        self._paused[i] = (now + pause, pause)
                continue
            with self._lock:
                self._paused.pop(i, None)
        if failed:
            raise PartialWriteError(failed, causes[0][1], [name for name, _ in causes])

    # -- reading: each kind from its backend -------------------------------------

    def setup(self) -> None:
        for b in self.backends:
            b.setup()

    def query(self, kind: str, flt: QueryFilter) -> Page:
        return self.backend(kind).query(kind, flt)

    def stores(self, kind: str) -> bool:
        return kind in self._route and self._route[kind].stores(kind)

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        return self.backend(kind).count(kind, flt, cap)

    def sightings(self, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
        return self.backend("access").sightings(flt, scan)

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        return self.backend("access").traffic(since_us, until_us, bucket_seconds)

    def settle_traffic(self, now_us: int | None = None) -> int:
        return self.backend("access").settle_traffic(now_us)

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        return self.backend(kind).read_after(kind, after, limit)

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        return self.backend(kind).purge(kind, before, batch_size)

    def purge_batches(self, kind: str, before: int, batch_size: int = 10_000) -> Iterator[int]:
        return self.backend(kind).purge_batches(kind, before, batch_size)

    # -- the audit chain lives with the audit kind ---------------------------------

    def iter_audit(self) -> Iterator[AuditEvent]:
        return self.backend("audit").iter_audit()

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        return self.backend("audit").audit_checkpoints()

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        return self.backend("audit").audit_purge_marks()

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        return self.backend("audit").purge_audit_chains(marks, batch_size)

    def audit_redactions(self) -> list[dict[str, Any]]:
        return self.backend("audit").audit_redactions()

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        return self.backend("audit").redact_audit(events, entries)

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
            self._paused.clear()

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
