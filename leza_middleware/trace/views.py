"""``leza.trace``: everything that belongs together, read in one call.

Each method returns one JSON-ready dict — what the dashboard's traceability
views show, what ``<mount>/api/requests/<id>`` (and its siblings) answer and
what ``leza trace … --json`` prints — or None when nothing is recorded under
that id. The reads are bounded, so each view costs a few index lookups
whatever the storage holds (docs/dashboard.md, "Traceability"):

* :meth:`Trace.request`: a request's access event(s) and every log, audit
  and advisory record with its request id, oldest first;
* :meth:`Trace.session`: the session record, a page of its requests, the
  changes made in it, advisories about it and where it was seen from;
* :meth:`Trace.performer`: their sessions (active first), devices, machine
  ids and countries, denied requests and failed logins, changes, advisories;
* :meth:`Trace.entity`: every change of one entity, oldest first, each
  checked against its chain hash;
* :meth:`Trace.record`: one record by its id (the permalink).

What privacy settings removed at write time, or erasure removed since, is not
there to be read: the views read only what storage holds. A backend that
ignores a filter it does not know (a custom :class:`~leza_middleware.storage.
Storage`) cannot put other records in a view: every record read is checked
against the filter again here.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..audit.chain import row_hash
from ..events import EVENT_TYPES, AccessEvent, AuditEvent, Event, SessionRecord
from ..privacy import redaction_is_valid
from ..query import format_cursor, parse_cursor
from ..storage.base import REFUSED_ACTIONS, QueryFilter, Sighting, audit_matches
from ..storage.memory import select_page
from .places import countries, devices, machines, places

if TYPE_CHECKING:
    from ..config import Settings
    from ..ready import ReadyStorage
    from ..storage.base import Storage

__all__ = [
    "BULK_SCAN",
    "LIST",
    "PAGE",
    "REQUEST_LIMIT",
    "SCAN",
    "Trace",
]

#: Records of each kind shown for one request (a client can reuse a request id).
REQUEST_LIMIT = 200
#: Requests per page of a session's timeline, and changes per page of an entity.
PAGE = 50
#: Newest requests of a session or performer summarised into places, devices,
#: machine ids and countries (a bounded read, whatever they did before).
SCAN = 2_000
#: Changes, advisories, denied requests and sessions (active, then ended) listed
#: on a view: the newest; the tabs, filtered by performer, page through the rest.
LIST = 20
#: Bulk statements of an entity type read per page of one entity's history
#: (those whose ``statement.ids`` name the entity are part of it).
BULK_SCAN = 2_000
_TRACED = ("access", "log", "audit", "advisory")


def _dicts(events: Sequence[Any]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


def _statement_ids(e: AuditEvent) -> list[str]:
    statement = e.diff.get("statement") if isinstance(e.diff, dict) else None
    ids = statement.get("ids") if isinstance(statement, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []


class Trace:
    """The traceability reads of one :class:`~leza_middleware.Leza` (``leza.trace``)."""

    def __init__(self, settings: Settings, storage: ReadyStorage, audit_key: bytes | None) -> None:
        """``audit_key``: the audit chain's key, None when the process has no
        configured secret key (rows are then shown without an integrity mark)."""
        self._settings = settings
        self._gate = storage
        self._audit_key = audit_key

    # -- reading, checked ----------------------------------------------------

    def _storage(self) -> Storage:
        return self._gate.ready()

    def _page(self, kind: str, flt: QueryFilter) -> tuple[list[Event], str | None]:
        """One page of ``kind`` under ``flt`` (nothing when the kind is not stored),
        each record checked against the filter once more."""
        storage = self._storage()
        if kind not in EVENT_TYPES or not storage.stores(kind):
            return [], None
        page = storage.query(kind, flt)
        events = list(page.events)
        if kind == "audit":
            events = [e for e in events if isinstance(e, AuditEvent) and audit_matches(e, flt)]
        kept = select_page(events, replace(flt, limit=max(flt.limit, len(events) or 1)))
        return list(kept.events), format_cursor(page.next_cursor)

    def _read(self, kind: str, flt: QueryFilter) -> list[Event]:
        return self._page(kind, flt)[0]

    def _sessions(self, flt: QueryFilter) -> list[SessionRecord]:
        storage = self._storage()
        found = storage.query("session", flt).events
        return [
            r
            for r in found
            if isinstance(r, SessionRecord)
            and (flt.session_id is None or r.id == flt.session_id)
            and (flt.performer_id is None or r.performer_id == flt.performer_id)
            and (flt.active is None or r.active == flt.active)
        ]

    # -- the views -----------------------------------------------------------

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The request's access event(s) and its log, audit and advisory records,
        oldest first; None when no record carries this request id."""
        flt = QueryFilter(request_id=str(request_id), limit=REQUEST_LIMIT + 1)
        found = {kind: self._read(kind, flt) for kind in _TRACED}
        if not any(found.values()):
            return None
        truncated = any(len(v) > REQUEST_LIMIT for v in found.values())
        kept = [e for v in found.values() for e in v[:REQUEST_LIMIT]]
        kept.sort(key=lambda e: (e.ts, e.id))
        access = [e for e in kept if isinstance(e, AccessEvent)]
        first = access[0] if access else None
        return {
            "request_id": str(request_id),
            "items": _dicts(kept),
            "counts": {kind: min(len(v), REQUEST_LIMIT) for kind, v in found.items()},
            "truncated": truncated,
            "session_id": None if first is None else first.session_hash,
            "performer": None
            if first is None or first.performer is None
            else first.performer.to_dict(),
        }

    def session(
        self, session_id: str, *, limit: int = PAGE, cursor: str | None = None
    ) -> dict[str, Any] | None:
        """The session record, one page of its requests (newest first; pass
        ``next_cursor`` back as ``cursor``), the changes made in it, advisories
        about it and each place it was seen from; None when nothing is recorded
        of it. ``cursor`` is checked strictly (ValueError)."""
        sid = str(session_id)
        at = parse_cursor(cursor)
        records = self._sessions(QueryFilter(session_id=sid, limit=1))
        parts = self._session_parts(sid, records[0] if records else None)
        requests, next_cursor = self._merged("access", parts, limit, at)
        if not records and not requests and at is None:
            return None
        changes = self._read("audit", QueryFilter(session_id=sid, limit=LIST))
        advisories = self._read("advisory", QueryFilter(session_id=sid, limit=LIST))
        seen: list[Sighting] = []
        scanned = 0
        exact = True
        for part in parts:
            found, n = self._storage().sightings(part, SCAN)
            seen += found
            scanned += n
            exact = exact and n < SCAN
        return {
            "session": records[0].to_dict() if records else None,
            "requests": {"items": _dicts(requests), "next_cursor": next_cursor},
            # Counted by the same bounded read: exact below SCAN, else "SCAN or more"
            # (a separate capped count reads 10,000 rows: 100 ms and more on PostgreSQL).
            "request_count": scanned,
            "request_count_exact": exact,
            "changes": _dicts(changes),
            "advisories": _dicts(advisories),
            "places": places(seen),
        }

    def _session_parts(self, sid: str, record: SessionRecord | None) -> list[QueryFilter]:
        """A session's access events as index ranges: those without a performer by
        the session (refused after a revocation, a logout the framework had
        already signed out: few, in a partial index), and the signed-in ones by
        their performer within the session's time — no index has every event of
        a session, which would cost every write (see storage/models.py).

        Without its record (purged), only the first range is read."""
        parts = [QueryFilter(session_id=sid, no_performer=True)]
        pid = None if record is None else record.performer_id
        if record is not None and pid:
            until = self._session_end(record)
            parts.append(
                QueryFilter(
                    session_id=sid, performer_id=pid, since=record.session_start, until=until
                )
            )
        return parts

    def _session_end(self, record: SessionRecord) -> int:
        """The latest time a signed-in request of the session can have (µs).

        ``last_seen`` is written at most every ``session_seen_interval``, so the
        session's requests may run that much past it. An end moves ``last_seen``
        to the end's time: a logout is the session's last request, and after a
        revocation its requests are refused (carrying no performer: the other
        range); a timeout is found by a poll after the fact, an idle one at
        least ``idle_timeout`` after the last request."""
        s = self._settings
        slack = int((s.session_seen_interval + 1) * 1_000_000)
        ended = record.ended_at
        if ended is None:
            return record.last_seen + slack
        if record.end_reason == "idle_timeout":
            end = ended - int(s.idle_timeout * 1_000_000) + slack
        else:  # logout, revoked, absolute_timeout
            end = ended + 1_000_000
        return max(end, record.session_start)

    def _merged(
        self, kind: str, parts: Sequence[QueryFilter], limit: int, at: tuple[int, str] | None
    ) -> tuple[list[Event], str | None]:
        """One page, newest first, of the union of ``parts`` (keyset: the same
        cursor bounds each part, and the page ends at its last event)."""
        pages = [self._page(kind, replace(p, limit=limit, cursor=at)) for p in parts]
        union = {e.id: e for events, _ in pages for e in events}
        events = sorted(union.values(), key=lambda e: (e.ts, e.id), reverse=True)
        more = len(events) > limit or any(more for _, more in pages)
        events = events[:limit]
        last = events[-1] if events and more else None
        return events, None if last is None else format_cursor((last.ts, last.id))

    def performer(self, performer_id: str) -> dict[str, Any] | None:
        """What one performer did and where from; None when nothing is recorded of
        them (never, or erased with ``leza forget``)."""
        pid = str(performer_id)
        active = self._sessions(QueryFilter(performer_id=pid, active=True, limit=LIST))
        ended = self._sessions(QueryFilter(performer_id=pid, active=False, limit=LIST))
        # One read per action: each is one range of the partial index of refusals.
        refused = [
            e
            for action in REFUSED_ACTIONS
            for e in self._read(
                "access",
                QueryFilter(performer_id=pid, action=action, actions=REFUSED_ACTIONS, limit=LIST),
            )
        ]
        refused = sorted(refused, key=lambda e: (e.ts, e.id), reverse=True)[:LIST]
        changes = self._read("audit", QueryFilter(performer_id=pid, limit=LIST))
        advisories = self._read("advisory", QueryFilter(performer_id=pid, limit=LIST))
        seen, scanned = self._storage().sightings(QueryFilter(performer_id=pid), SCAN)
        # Their newest request, read at the newest time the sightings found (one
        # instant, bounded on both sides). Unbounded ("newest first, limit 1"),
        # PostgreSQL's planner may walk the time index of every request when it
        # expects a busy performer soon: for one who stopped long ago, it then
        # reads every request recorded since (0.4 s at 2,000,000 events).
        newest = max((s.last for s in seen), default=None)
        latest = (
            []
            if newest is None
            else self._read(
                "access", QueryFilter(performer_id=pid, since=newest, until=newest, limit=1)
            )
        )
        identity = self._identity(pid, latest, [*active, *ended], changes)
        if identity is None and not advisories:
            return None
        sessions = [*active, *ended]
        return {
            "performer": identity or {"id": pid},
            "sessions": _dicts(sessions),
            "request_count": scanned,
            "request_count_exact": scanned < SCAN,
            "devices": devices(seen, sessions),
            "machines": machines(seen, sessions),
            "countries": countries(seen, sessions),
            "refused": _dicts(refused),
            "changes": _dicts(changes),
            "advisories": _dicts(advisories),
        }

    def _identity(
        self,
        pid: str,
        latest: Sequence[Event],
        sessions: Sequence[SessionRecord],
        changes: Sequence[Event],
    ) -> dict[str, Any] | None:
        """Who they are, as last recorded: their newest request, else a session,
        else a stored identity, else a change they made."""
        for e in latest:
            if isinstance(e, AccessEvent) and e.performer is not None:
                return e.performer.to_dict()
        for s in sorted(sessions, key=lambda s: s.last_seen, reverse=True):
            if s.performer is not None:
                return s.performer.to_dict()
        known = self._storage().performer_identities(pid)
        for p in known:
            if p.id == pid:
                return p.to_dict()
        for c in changes:
            if isinstance(c, AuditEvent) and c.actor is not None and c.actor.id == pid:
                return c.actor.to_dict()
        return None

    def entity(
        self,
        entity_type: str,
        entity_id: str,
        *,
        limit: int = PAGE,
        cursor: str | None = None,
    ) -> dict[str, Any] | None:
        """Every change of one entity, oldest first, ``limit`` at a time (pass
        ``next_cursor`` back as ``cursor``), bulk statements naming it included;
        each with ``intact``: its content still matches its chain hash (None when
        this process does not have the key it was written with). None when the
        entity has no recorded change."""
        etype, key = str(entity_type), str(entity_id)
        at = parse_cursor(cursor)
        flt = QueryFilter(
            entity_type=etype, entity_id=key, ascending=True, cursor=at, limit=limit + 1
        )
        own = self._read("audit", flt)
        bulk_flt = replace(flt, entity_id="*", limit=BULK_SCAN)
        bulk = [] if key == "*" else self._read("audit", bulk_flt)
        touching = [e for e in bulk if isinstance(e, AuditEvent) and key in _statement_ids(e)]
        merged = sorted({e.id: e for e in [*own, *touching]}.values(), key=lambda e: (e.ts, e.id))
        if len(bulk) >= BULK_SCAN:  # more bulk rows follow: this page ends at the last read
            last = (bulk[-1].ts, bulk[-1].id)
            merged = [e for e in merged if (e.ts, e.id) <= last]
        more = len(merged) > limit or len(bulk) >= BULK_SCAN
        merged = merged[:limit]
        if not merged and at is None:
            return None
        checker = self._checker()
        items = []
        for e in merged:
            item = e.to_dict()
            item["intact"] = (
                None if checker is None or not isinstance(e, AuditEvent) else checker(e)
            )
            items.append(item)
        tail = merged[-1] if merged and more else None
        return {
            "entity_type": etype,
            "entity_id": key,
            "items": items,
            "next_cursor": None if tail is None else format_cursor((tail.ts, tail.id)),
        }

    def _checker(self) -> Any:
        """``row -> bool``: the row's content matches its chain hash (or a signed
        redaction entry vouches for it); None without the writers' key."""
        key = self._audit_key
        if key is None:
            return None
        entries = self._storage().audit_redactions()  # [] by default (no erasure)
        vouched = {str(m["id"]): m for m in entries if redaction_is_valid(key, m)}

        def intact(e: AuditEvent) -> bool:
            digest = row_hash(key, e)
            if hmac.compare_digest(digest, e.hash):
                return True
            entry = vouched.get(e.id)
            return (
                entry is not None
                and hmac.compare_digest(str(entry["hash"]), e.hash)
                and hmac.compare_digest(str(entry["redacted_hash"]), digest)
            )

        return intact

    def record(self, event_id: str) -> dict[str, Any] | None:
        """One access, audit, log or advisory record by its ``_id`` (an advisory
        with the records of its evidence that are stored); None when none is."""
        for kind in _TRACED:
            found = self._read(kind, QueryFilter(ids=(str(event_id),), limit=1))
            if found:
                record = found[0].to_dict()
                out: dict[str, Any] = {"kind": kind, "record": record}
                if kind == "advisory":
                    out["evidence"] = self.evidence(record.get("evidence") or [])
                return out
        return None

    def evidence(self, ids: Sequence[Any]) -> list[dict[str, Any]]:
        """The stored records among ``ids`` (an advisory's evidence), oldest first."""
        wanted = tuple(dict.fromkeys(str(i) for i in ids))[:LIST]
        if not wanted:
            return []
        found: list[Event] = []
        for kind in _TRACED:
            found += self._read(kind, QueryFilter(ids=wanted, limit=len(wanted)))
        found.sort(key=lambda e: (e.ts, e.id))
        return _dicts(found)
