"""In-process storage: a dict per kind. For tests, ``capture_events`` and demos."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..events import AccessEvent, AuditEvent, Event, SessionEvent, SessionRecord
from ..state.labels import parse_endpoint
from ..state.traffic import HOUR, Traffic, build_traffic, check_window
from .base import (
    Capability,
    Page,
    QueryFilter,
    Storage,
    audit_matches,
    check_endpoint_kind,
    checkpoints_of,
    count_by_query,
    fold_session,
    select_sessions,
)
from .rollups import Aggregator, fold_hours, in_window, merge_into

__all__ = ["MemoryStorage", "select_page"]


def _performer_id(e: Event) -> str | None:
    if isinstance(e, AuditEvent):
        return e.actor_id  # the performer filter of audit rows is the actor
    performer = getattr(e, "performer", None)
    if performer is not None:
        return performer.id  # type: ignore[no-any-return]
    return getattr(e, "performer_id", None)


def _session_id(e: Event) -> str | None:
    """The session an event was made in (an access event's ``session_hash``)."""
    if isinstance(e, AccessEvent):
        return e.session_hash
    return getattr(e, "session_id", None)


def _sort_key(e: Event) -> tuple[int, str]:
    return (e.ts, e.id)


def select_page(events: Iterable[Event], flt: QueryFilter) -> Page:
    """Apply ``flt`` to ``events`` in Python: the query semantics of every backend.

    Inclusive ``since``/``until``, exact ``action`` (or any of ``actions``),
    ``performer_id`` (or none, ``no_performer``), ``request_id`` and
    ``session_id``, only ``ids``; rows strictly older than ``cursor`` by
    ``(ts, id)``, newest first, ``limit`` rows (with ``ascending``: strictly
    newer, oldest first); ``endpoint`` keeps access events of that method and
    route (only those). ``events`` must not repeat an id.
    """
    since, until, action, pid, cursor = (
        flt.since,
        flt.until,
        flt.action,
        flt.performer_id,
        flt.cursor,
    )
    ascending = flt.ascending
    actions = None if flt.actions is None else frozenset(flt.actions)
    ids = None if flt.ids is None else frozenset(flt.ids)
    rid, sid, anonymous = flt.request_id, flt.session_id, flt.no_performer
    ep = None if flt.endpoint is None else parse_endpoint(flt.endpoint)

    def keep(e: Event) -> bool:
        return (
            (since is None or e.ts >= since)
            and (until is None or e.ts <= until)
            and (action is None or e.action == action)
            and (actions is None or e.action in actions)
            and (ids is None or e.id in ids)
            and (pid is None or _performer_id(e) == pid)
            and (not anonymous or _performer_id(e) is None)
            and (rid is None or getattr(e, "request_id", None) == rid)
            and (sid is None or _session_id(e) == sid)
            and (cursor is None or ((e.ts, e.id) > cursor if ascending else (e.ts, e.id) < cursor))
            and (ep is None or (isinstance(e, AccessEvent) and ep.matches(e.method, e.route)))
        )

    pick = heapq.nsmallest if ascending else heapq.nlargest
    top = pick(flt.limit + 1, filter(keep, events), key=_sort_key)
    if len(top) <= flt.limit:
        return Page(top, None)
    del top[flt.limit :]
    last = top[-1]
    return Page(top, (last.ts, last.id))


class MemoryStorage(Storage):
    """Events kept in memory, idempotent by id (the first write of an id wins).

    Keeps traffic rollups like SQL (per minute and per hour, counting each
    access event id once), so :meth:`traffic` and STATE work in tests and demos.
    """

    capabilities = frozenset(Capability)  # every one: it stands in for SQL in tests

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, dict[str, Event]] = {}
        self._aggregator = Aggregator()
        self._minutes: dict[tuple[int, str, str], list[int]] = {}
        self._hours: dict[tuple[int, str, str], list[int]] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._checkpoints: dict[str, dict[str, Any]] = {}
        self._purge_marks: dict[str, dict[str, Any]] = {}
        self._redactions: dict[str, dict[str, Any]] = {}

    def write(self, events: Sequence[Event]) -> None:
        with self._lock:
            kinds = self._kinds
            new_access: list[tuple[Any, ...]] = []
            for e in events:
                if isinstance(e, SessionEvent):
                    fold_session(self._sessions, e)
                    continue
                by_id = kinds.get(e.kind)
                if by_id is None:
                    by_id = kinds[e.kind] = {}
                if e.id not in by_id:
                    by_id[e.id] = e
                    if isinstance(e, AccessEvent):
                        new_access.append(e.row)
            if new_access:
                minutes = self._aggregator.increments(new_access)
                merge_into(self._minutes, minutes)
                merge_into(self._hours, fold_hours(minutes))
            for chain, cp in checkpoints_of(events).items():
                if cp["seq"] > self._checkpoints.get(chain, {"seq": 0})["seq"]:
                    self._checkpoints[chain] = cp

    def query(self, kind: str, flt: QueryFilter) -> Page:
        check_endpoint_kind(kind, flt)
        with self._lock:
            if kind == "session":
                return select_sessions(
                    [replace(r) for r in self._sessions.values()], flt
                )  # copies: callers may keep them
            snapshot = list(self._kinds.get(kind, {}).values())
        if kind == "audit" and (flt.entity_type is not None or flt.entity_id is not None):
            snapshot = [e for e in snapshot if audit_matches(e, flt)]  # type: ignore[arg-type]
        return select_page(snapshot, flt)

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        return count_by_query(self, kind, flt, cap)

    def iter_audit(self) -> Iterator[AuditEvent]:
        with self._lock:
            rows = [e for e in self._kinds.get("audit", {}).values() if isinstance(e, AuditEvent)]
        return iter(sorted(rows, key=lambda e: (e.chain, e.seq)))

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(cp) for cp in self._checkpoints.values()]

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        """Traffic of the window from the in-memory rollups (whole hours from the
        hour table when the bucket is a multiple of an hour, like SQL)."""
        start, end, step = check_window(since_us, until_us, bucket_seconds)
        with self._lock:
            minutes = list(self._minutes.items())
            hours = list(self._hours.items())
        rows = []
        first_hour, last_hour = -(-start // HOUR) * HOUR, end - end % HOUR
        if step % HOUR == 0 and first_hour < last_hour:
            rows += in_window(hours, first_hour, last_hour, step)
            rows += in_window(minutes, start, first_hour, step)
            rows += in_window(minutes, last_hour, end, step)
        else:
            rows += in_window(minutes, start, end, step)
        return build_traffic(rows, start, end, step)

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        with self._lock:
            if kind == "traffic":
                cutoff = before - before % HOUR
                old_keys = [(t, k) for t in (self._minutes, self._hours) for k in t
                            if k[0] < cutoff]  # fmt: skip
                for table, key in old_keys:
                    del table[key]
                return len(old_keys)
            if kind == "session":
                ended = [
                    i
                    for i, r in self._sessions.items()
                    if r.ended_at is not None and r.ended_at < before
                ]
                for i in ended:
                    del self._sessions[i]
                return len(ended)
            by_id = self._kinds.get(kind, {})
            old = [i for i, e in by_id.items() if e.ts < before]
            for i in old:
                del by_id[i]
        return len(old)

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._purge_marks.values()]

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        with self._lock:
            for m in marks:
                if m["seq"] > self._purge_marks.get(m["chain"], {"seq": 0})["seq"]:
                    self._purge_marks[m["chain"]] = dict(m)
            upto = {m["chain"]: m["seq"] for m in marks}
            by_id = self._kinds.get("audit", {})
            gone = [
                i
                for i, e in by_id.items()
                if isinstance(e, AuditEvent) and e.seq <= upto.get(e.chain, 0)
            ]
            for i in gone:
                del by_id[i]
        yield len(gone)

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        from ..privacy import compile_identifiers, forget_event, scrub_session

        rx = compile_identifiers(identifiers)
        counts = dict.fromkeys(("access", "logs", "advisories", "sessions", "performers",
                                "scrubbed"), 0)  # fmt: skip
        names = {"access": "access", "log": "logs", "advisory": "advisories"}
        with self._lock:
            access = self._kinds.get("access", {}).values()
            rids = {
                e.request_id
                for e in access
                if isinstance(e, AccessEvent) and e.performer_id == performer_id
            }
            for kind, by_id in self._kinds.items():
                if kind == "audit":
                    continue  # redacted under signed entries: redact_audit()
                for i, e in list(by_id.items()):
                    new = forget_event(e, performer_id, rx, rids)
                    if new is None:
                        del by_id[i]
                        if kind in names:
                            counts[names[kind]] += 1
                    elif new is not e:
                        by_id[i] = new
                        counts["scrubbed"] += 1
            for sid, r in self._sessions.items():
                if r.performer_id == performer_id:
                    self._sessions[sid] = scrub_session(r)
                    counts["sessions"] += 1
        return counts

    def audit_redactions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._redactions.values()]

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        with self._lock:
            for m in entries:
                self._redactions[m["id"]] = dict(m)
            by_id = self._kinds.get("audit", {})
            done = 0
            for e in events:
                if e.id in by_id:
                    by_id[e.id] = e
                    done += 1
        return done

    def events(self, kind: str | None = None) -> list[Event]:
        """Every stored event (of ``kind``, or of all kinds) in the order first written."""
        with self._lock:
            if kind is not None:
                return list(self._kinds.get(kind, {}).values())
            return [e for by_id in self._kinds.values() for e in by_id.values()]

    def clear(self) -> None:
        with self._lock:
            self._minutes.clear()
            self._hours.clear()
            self._kinds.clear()
            self._sessions.clear()
            self._checkpoints.clear()
            self._purge_marks.clear()
            self._redactions.clear()

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "MemoryStorage()"
