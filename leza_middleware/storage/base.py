"""The storage contract: what the recorder writes through and queries read from."""

from __future__ import annotations

import abc
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NoReturn

from ..errors import StorageCapabilityError
from ..events import AccessEvent, AuditEvent, Device, Event, Geo, SessionEvent, SessionRecord
from ..performer import Performer
from ..state.labels import parse_endpoint
from ..state.traffic import Traffic, TrafficUnsupported
from .capabilities import Capability, capabilities_of, missing_sentence

__all__ = [
    "REFUSED_ACTIONS",
    "Capability",
    "Page",
    "QueryFilter",
    "Sighting",
    "Storage",
    "audit_matches",
    "check_endpoint_kind",
    "checkpoints_of",
    "count_by_query",
    "fold_session",
    "select_sessions",
]


#: The actions of the performer view's "denied requests and failed logins" (SQL
#: serves them from a partial index with this predicate: storage/models.py).
REFUSED_ACTIONS = ("denied", "login_failed")


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """Filters shared by every kind. Times are µs since the epoch, UTC, inclusive."""

    since: int | None = None
    until: int | None = None
    action: str | None = None
    performer_id: str | None = None
    limit: int = 100
    # Keyset cursor: the (ts, id) of the last row of the previous page; the next
    # page holds rows strictly older than it. Never an OFFSET.
    cursor: tuple[int, str] | None = None
    # Audit only.
    entity_type: str | None = None
    entity_id: str | None = None
    # Sessions ("session" kind: ts is the session start): that session. Access,
    # audit and advisory events: those made in that session (the access event's
    # ``session_id_hash``); no log record or check carries one.
    session_id: str | None = None
    active: bool | None = None  # True: not ended; False: ended
    ended_since: int | None = None  # ended at or after this time (µs)
    seen_until: int | None = None  # last seen at or before this time (µs): idle ones
    # Traceability (trace/): the events of one request (access, audit, log,
    # advisory), these events only (by id), any of these actions.
    request_id: str | None = None
    ids: tuple[str, ...] | None = None
    actions: tuple[str, ...] | None = None
    no_performer: bool = False  # only events without a performer (anonymous ones)
    # Oldest first: the page holds the oldest rows, and the cursor marks where
    # the next (newer) page starts.
    ascending: bool = False
    # Access only: "METHOD route-template", a route template alone (any method),
    # or "(unmatched)"; see state/labels.py (parse_endpoint, EndpointFilter).
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"QueryFilter.limit must be >= 1, got {self.limit}")
        if self.endpoint is not None:
            parse_endpoint(self.endpoint)  # a malformed value fails here, not in a backend


@dataclass(frozen=True, slots=True)
class Page:
    # Events, or for the "session" kind SessionRecord objects (both have
    # ``id``, ``ts`` and ``to_dict()``).
    events: list[Any]
    # (ts, id) of the last event when more rows may follow, else None.
    next_cursor: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class Sighting:
    """Access events of one session or performer from one client IP, network,
    device and machine: the trace views' places, devices and machine ids."""

    ip: str
    ip_valid: bool
    geo: Geo | None
    device: Device | None
    machine_id: str | None
    first: int  # µs since the epoch, the oldest of these requests
    last: int  # the newest
    requests: int


class Storage(abc.ABC):
    """Base class of storage backends. Subclass it to send events anywhere.

    Only :meth:`write` and :meth:`query` are required: with them a backend
    records every event and serves every tab of the admin view. Anything more
    is a :class:`Capability` the class declares in :attr:`capabilities`
    together with the methods that implement it (docs/storage.md#capabilities);
    a feature that needs one the backend does not declare says so in one
    sentence before it starts. Every method is called from the recorder's
    background thread or from the read side, never from the request path, so
    blocking I/O is fine here.

    Contract:

    * :meth:`write` is idempotent by event id: writing the same event twice
      stores it once (spilled events are replayed after a failure that may
      have stored part of a batch).
    * :meth:`write` raises on failure; the recorder retries with backoff and
      spills to a local file when storage stays down.
    * :meth:`query` returns newest first (by ``ts``, then ``id``).
    * ``SessionEvent`` changes are folded into one :class:`SessionRecord` per
      session (:func:`fold_session`); ``query("session", …)`` returns records.
    """

    #: True when several processes can write to it at once (SQL backends).
    shared: bool = False

    #: What this backend can do beyond write and query. A subclass that sets
    #: nothing here gets the capabilities whose methods it overrides (and
    #: ``rollups`` from ``keeps_rollups = True``): see
    #: :func:`~leza_middleware.storage.capabilities.inferred`.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def supports(self, capability: Capability) -> bool:
        """Whether this backend declares ``capability`` (or, declaring none,
        implements it: see :attr:`capabilities`)."""
        return capability in capabilities_of(self)

    @property
    def keeps_rollups(self) -> bool:
        """True when it keeps traffic rollups: ``supports(Capability.ROLLUPS)``.

        Kept for code written before capabilities; a subclass that sets
        ``keeps_rollups = True`` instead of declaring still counts as keeping them."""
        return self.supports(Capability.ROLLUPS)

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Create tables / files. Called once before the first write or read."""

    @abc.abstractmethod
    def write(self, events: Sequence[Event]) -> None:
        """Store a batch of events (any mix of kinds), idempotently by id."""

    @abc.abstractmethod
    def query(self, kind: str, flt: QueryFilter) -> Page:
        """Events of one kind matching ``flt``, newest first."""

    def stores(self, kind: str) -> bool:
        """Whether this backend has a place for events of ``kind`` (default: any)."""
        return True

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        """How many events of ``kind`` match ``flt`` (cursor and limit ignored).

        May stop counting past ``cap`` (then any number above ``cap`` means
        "more than ``cap``"). None when the backend cannot count cheaply; the
        dashboard then shows no count. The default is None.
        """
        return None

    def sightings(self, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
        """The newest ``scan`` access events matching ``flt`` (a session's, a
        performer's) grouped by client IP, network, device and machine id, and
        how many events that was.

        This default pages through :meth:`query`; SQL groups in the database.
        """
        groups: dict[tuple[Any, ...], list[Any]] = {}
        seen = 0
        cursor: tuple[int, str] | None = None
        while seen < scan:
            page = self.query(
                "access", replace(flt, cursor=cursor, limit=min(1000, scan - seen), ascending=False)
            )
            for e in page.events:
                # Checked again: a subclass's query() may not know the session filter.
                if not isinstance(e, AccessEvent) or not _sighted(e, flt):
                    continue
                seen += 1
                geo, device = e.geo, e.device
                key = (e.client_ip, None if geo is None else geo.key,
                       None if device is None else device.key, e.machine_id)  # fmt: skip
                group = groups.get(key)
                if group is None:
                    groups[key] = [e.client_ip, e.ip_valid, geo, device, e.machine_id,
                                   e.ts, e.ts, 1]  # fmt: skip
                else:
                    group[5] = min(group[5], e.ts)
                    group[6] = max(group[6], e.ts)
                    group[7] += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return [Sighting(*g) for g in groups.values()], seen

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        """Requests, outcomes and latency of the window, per bucket and per endpoint.

        Computed from rollups kept as access events are written (never from the
        raw rows), so a backend implements it only if it keeps them, and sets
        :attr:`keeps_rollups`. The window is every whole minute the inclusive
        range ``[since_us, until_us]`` touches (µs since the epoch, UTC);
        ``bucket_seconds`` a positive multiple of 60 (see
        :func:`leza_middleware.state.bucket_seconds_for`). Raises ValueError for
        a bad window, :class:`~leza_middleware.state.TrafficUnsupported` here.
        Exactness contract for implementations: the counts equal a count over
        the raw access rows written (each event id once, however often
        written), also after those rows are purged.
        """
        raise TrafficUnsupported(missing_sentence(self, Capability.ROLLUPS), "rollups")

    def settle_traffic(self, now_us: int | None = None) -> int:
        """Periodic upkeep of the rollups, called by the recorder thread about
        once a minute when :attr:`keeps_rollups` (SQL sums past hours' minutes
        into hour rows). Returns the hours settled; the default does nothing."""
        return 0

    def iter_audit(self) -> Iterator[AuditEvent]:
        """Every audit row, ordered by chain, then seq (for verification).
        Capability ``audit_chain``."""
        self._missing(Capability.AUDIT_CHAIN)

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        """``{"chain", "seq", "hash", "ts"}`` of the last row written to each chain.
        Capability ``audit_chain``."""
        self._missing(Capability.AUDIT_CHAIN)

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Delete events of ``kind`` older than ``before`` (µs); return how many.

        For the ``"session"`` kind: sessions that ended before ``before``
        (active sessions are never purged). Audit rows are purged per chain
        with :meth:`purge_audit_chains`, never by time alone. ``"traffic"``
        (backends that keep rollups): rollup rows of the hours that ended
        before ``before`` rounded down to its hour; purging access events
        leaves the rollups as they are. Capability ``purge``.
        """
        self._missing(Capability.PURGE)

    def purge_batches(self, kind: str, before: int, batch_size: int = 10_000) -> Iterator[int]:
        """:meth:`purge`, yielding the count of each batch as it commits (progress).

        The default runs :meth:`purge` in one go; batched backends override it.
        """
        yield self.purge(kind, before, batch_size)

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        """Up to ``limit`` events of ``kind`` after ``after`` by ``(ts, id)``, oldest first.

        The read of ``leza tail -f``. This default pages through :meth:`query`
        from the newest row down to ``after`` (memory grows with the rows
        newer than ``after``); SQL answers it with one indexed query.
        """
        since = None if after is None else after[0]
        newer: list[Any] = []
        cursor: tuple[int, str] | None = None
        while True:
            page = self.query(kind, QueryFilter(since=since, limit=1000, cursor=cursor))
            newer.extend(e for e in page.events if after is None or (e.ts, e.id) > after)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        newer.sort(key=lambda e: (e.ts, e.id))
        return newer[:limit]

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        """Signed purge markers, one per chain whose first rows were purged
        (``{"chain", "seq", "hash", "ts", "purged_at", "sig"}``; see ``audit/purge.py``)."""
        return []

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        """Store ``marks``, then delete each chain's rows up to its mark's ``seq``.

        The marks are committed before any row goes, so an interrupted purge
        leaves rows the verifier skips, never a chain it reports as cut.
        Yields the count of each batch deleted. Capability ``audit_purge``.
        """
        self._missing(Capability.AUDIT_PURGE)

    # -- erasure (privacy.py, ``leza forget``) -------------------------------------

    def performer_identities(self, performer_id: str) -> list[Performer]:
        """Every stored identity (name, email, …) of one performer.

        This default looks through the newest access events and sessions and
        the audit actors (every audit row with ``audit_chain``, else the newest
        through :meth:`query`); SQL reads its performer table.
        """
        found: dict[str, Performer] = {}
        chain = self.supports(Capability.AUDIT_CHAIN)
        for kind in ("access", "session") if chain else ("access", "session", "audit"):
            if not self.stores(kind):
                continue
            try:
                page = self.query(kind, QueryFilter(performer_id=performer_id, limit=10_000))
            except (NotImplementedError, ValueError):
                continue
            for e in page.events:
                p = e.actor if isinstance(e, AuditEvent) else getattr(e, "performer", None)
                if isinstance(p, Performer) and p.id == performer_id:
                    found[p.to_json()] = p
        if chain:
            for a in self.iter_audit():
                if a.actor is not None and a.actor.id == performer_id:
                    found[a.actor.to_json()] = a.actor
        return list(found.values())

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        """Erase one performer everywhere but the audit log; return counts.

        Delete their access events, advisories, log records (theirs, and those
        written in their requests) and performer rows; scrub their sessions
        (performer, IP, machine, device, geo: the rows stay, ended, so a
        revocation still reaches every process); and in other rows' free text
        (endpoint, reason, log message and exception, advisory message and
        details) replace ``identifiers`` (case-insensitively) with
        ``[Forgotten]``. Keys: ``access``, ``logs``, ``advisories``,
        ``sessions``, ``performers``, ``scrubbed``. Capability ``erasure``.
        """
        self._missing(Capability.ERASURE)

    def audit_redactions(self) -> list[dict[str, Any]]:
        """Signed redaction entries (``{"id", "chain", "seq", "hash", "redacted_hash",
        "redacted_at", "sig"}``): audit rows redacted by erasure (privacy.py)."""
        return []

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        """Store ``entries`` and replace the audit rows of ``events`` (same ids) with
        them, atomically where the backend can; return how many rows were replaced.
        Needed by ``erasure`` on a backend that also declares ``audit_chain``."""
        self._missing(Capability.ERASURE)

    def after_fork(self) -> None:  # noqa: B027 - optional hook
        """Drop connections inherited from the parent process (called in the child)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def describe(self) -> str:
        """A short, secret-free description for logs and the CLI."""
        return type(self).__name__

    def _missing(self, capability: Capability) -> NoReturn:
        raise StorageCapabilityError(missing_sentence(self, capability), capability.value)


def _sighted(e: AccessEvent, flt: QueryFilter) -> bool:
    return (flt.session_id is None or e.session_hash == flt.session_id) and (
        flt.performer_id is None or e.performer_id == flt.performer_id
    )


def fold_session(records: dict[str, SessionRecord], change: SessionEvent) -> SessionRecord:
    """Fold one session change into ``records`` (by session id); return the record."""
    record = records.get(change.session_id)
    if record is None:
        record = records[change.session_id] = SessionRecord.started_by(change)
    else:
        record.apply(change)
    return record


def select_sessions(records: Iterable[SessionRecord], flt: QueryFilter) -> Page:
    """The session query semantics every backend shares: newest start first."""

    def keep(r: SessionRecord) -> bool:
        return (
            (flt.session_id is None or r.id == flt.session_id)
            and (flt.active is None or r.active == flt.active)
            and (
                flt.ended_since is None
                or (r.ended_at is not None and r.ended_at >= flt.ended_since)
            )
            and (flt.seen_until is None or r.last_seen <= flt.seen_until)
            and (flt.performer_id is None or r.performer_id == flt.performer_id)
            and (flt.since is None or r.session_start >= flt.since)
            and (flt.until is None or r.session_start <= flt.until)
            and (flt.cursor is None or (r.session_start, r.id) < flt.cursor)
        )

    top = heapq.nlargest(flt.limit + 1, filter(keep, records), key=lambda r: (r.ts, r.id))
    if len(top) <= flt.limit:
        return Page(top, None)
    del top[flt.limit :]
    return Page(top, (top[-1].ts, top[-1].id))


def count_by_query(storage: Storage, kind: str, flt: QueryFilter, cap: int | None) -> int:
    """:meth:`Storage.count` through :meth:`Storage.query`, for backends that
    scan anyway (memory, JSON Lines): one query of at most ``cap + 1`` rows."""
    limit = 2**62 if cap is None else cap + 1
    return len(storage.query(kind, replace(flt, cursor=None, limit=limit)).events)


def check_endpoint_kind(kind: str, flt: QueryFilter) -> None:
    """The ``endpoint`` filter selects access events: refuse it for other kinds."""
    if flt.endpoint is not None and kind != "access":
        raise ValueError(f"the endpoint filter applies to access events only, not {kind!r}")


def checkpoints_of(events: Iterable[Event]) -> dict[str, dict[str, Any]]:
    """The highest link of each chain among ``events`` (audit rows)."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, AuditEvent) and e.chain:
            cp = out.get(e.chain)
            if cp is None or e.seq > cp["seq"]:
                out[e.chain] = {"chain": e.chain, "seq": e.seq, "hash": e.hash, "ts": e.ts}
    return out


def audit_matches(e: AuditEvent, flt: QueryFilter) -> bool:
    return (flt.entity_type is None or e.entity_type == flt.entity_type) and (
        flt.entity_id is None or e.entity_id == flt.entity_id
    )
