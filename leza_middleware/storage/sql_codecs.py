"""Row codecs of the SQL backend: each event kind <-> its table's rows.

* **Access**: :attr:`AccessEvent.row <leza_middleware.events.AccessEvent.row>`
  is the row itself (columns in table order); the device, geo and performer it
  references are stored once per key in their own tables: :class:`Refs` finds a
  batch's new ones, :class:`KnownKeys` remembers those this process stored.
  Reads join them back (:func:`_select_with_refs`).
* **Flat kinds** (log, advisory, check): :mod:`.flat`, registered in :data:`KINDS`.
* **Sessions**: one row per session, merged by the write path's upsert.
* **Audit**: one row per entry, JSON documents as text.

:data:`KINDS` maps each appended kind (access and the flat ones) to its table
and codec; sessions and audit entries have their own functions here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Select, Table, select

from ..events import (
    ACCESS_FIELDS,
    AccessEvent,
    AuditEvent,
    Device,
    Event,
    Geo,
    SessionEvent,
    SessionRecord,
    performer_key,
)
from ..performer import Performer
from .flat import FLAT_KINDS
from .models import (
    access_table,
    audit_table,
    device_table,
    geo_table,
    performer_table,
    session_table,
)

__all__ = [
    "AUDIT_COLS",
    "DEVICE_FIELDS",
    "GEO_FIELDS",
    "KINDS",
    "N_DEVICE",
    "PERFORMER_COLS",
    "SESSION_COLS",
    "KindSpec",
    "KnownKeys",
    "Refs",
    "audit_from_row",
    "audit_row",
    "device_values",
    "geo_values",
    "kind_spec",
    "session_from_row",
    "session_select",
    "sessions_to_rows",
]

DEVICE_FIELDS = tuple(f.name for f in fields(Device))
GEO_FIELDS = tuple(f.name for f in fields(Geo))
device_values: Callable[[Device], tuple[Any, ...]] = attrgetter(*DEVICE_FIELDS)
geo_values: Callable[[Geo], tuple[Any, ...]] = attrgetter(*GEO_FIELDS)
PERFORMER_COLS = ("key", "performer_id", "name", "email", "json")

# The access table's columns are AccessEvent.row's fields, in the same order.
_ACCESS_COLS = ACCESS_FIELDS
for _table, _cols in (
    (access_table, _ACCESS_COLS),
    (device_table, DEVICE_FIELDS),
    (geo_table, GEO_FIELDS),
    (performer_table, PERFORMER_COLS),
):
    if set(_cols) != set(_table.c.keys()):  # pragma: no cover - models/codec drift
        raise RuntimeError(f"{_table.name} columns do not match the row codec")


class KnownKeys:
    """Keys of shared rows this process has committed (bounded; clearing is safe
    because those inserts are idempotent)."""

    __slots__ = ("devices", "geos", "limit", "performers")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.devices: set[str] = set()
        self.geos: set[str] = set()
        self.performers: set[str] = set()

    def clear(self) -> None:
        self.devices.clear()
        self.geos.clear()
        self.performers.clear()

    def remember(self, refs: Refs) -> None:
        """Remember the keys of ``refs`` once their insert committed."""
        for cache, new in (
            (self.devices, refs.devices),
            (self.geos, refs.geos),
            (self.performers, refs.performers),
        ):
            if not new:
                continue
            if len(cache) + len(new) > self.limit:
                cache.clear()
            if len(new) <= self.limit:
                cache.update(new)


_device_key = itemgetter(ACCESS_FIELDS.index("device_key"))
_geo_key = itemgetter(ACCESS_FIELDS.index("geo_key"))
_performer_key = itemgetter(ACCESS_FIELDS.index("performer_key"))


class Refs:
    """Shared rows (device, geo, performer) a batch references that this process
    has not stored yet, by key.

    Found with set operations over the rows' key columns (C speed); the
    objects themselves are looked up only for the few new keys.
    """

    __slots__ = ("devices", "geos", "performers")

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.geos: dict[str, Geo] = {}
        self.performers: dict[str, Performer] = {}

    def __bool__(self) -> bool:
        return bool(self.devices or self.geos or self.performers)

    def add_access(
        self, events: Sequence[Any], rows: list[tuple[Any, ...]], known: KnownKeys
    ) -> None:
        new_d = set(map(_device_key, rows)) - known.devices
        new_g = set(map(_geo_key, rows)) - known.geos
        new_p = set(map(_performer_key, rows)) - known.performers
        new_d.discard(None)
        new_g.discard(None)
        new_p.discard(None)
        if not (new_d or new_g or new_p):
            return
        for e in events:
            if e.device_key in new_d and e.device is not None:
                self.devices[e.device_key] = e.device
            if e.geo_key in new_g and e.geo is not None:
                self.geos[e.geo_key] = e.geo
            if e.performer_key in new_p and e.performer is not None:
                self.performers[e.performer_key] = e.performer


def _access_rows(events: Sequence[Any], refs: Refs, known: KnownKeys) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = list(map(attrgetter("row"), events))
    refs.add_access(events, rows, known)
    return rows


_N_ACCESS = len(_ACCESS_COLS)
N_DEVICE = len(DEVICE_FIELDS)


def _select_with_refs(table: Table, columns: Sequence[str]) -> Select[Any]:
    """SELECT ``columns`` of ``table`` with its device, geo and performer joined in.

    Row layout: the table's columns, then the device's, the geo's, and the
    performer's JSON (see :func:`_refs_from_row`).
    """
    d, g, p = device_table, geo_table, performer_table
    return (
        select(
            *(table.c[n] for n in columns),
            *(d.c[n] for n in DEVICE_FIELDS),
            *(g.c[n] for n in GEO_FIELDS),
            p.c.json,
        )
        .select_from(table)
        .outerjoin(d, d.c.key == table.c.device_key)
        .outerjoin(g, g.c.key == table.c.geo_key)
        .outerjoin(p, p.c.key == table.c.performer_key)
    )


def _refs_from_row(
    r: Sequence[Any], at: int, cache: dict[Any, Any]
) -> tuple[Device | None, Geo | None, Performer | None]:
    """The device, geo and performer of a :func:`_select_with_refs` row whose own
    columns end at ``at``. ``cache`` (one per query) shares them across a page."""
    device = geo = performer = None
    geo_at = at + N_DEVICE
    perf_at = geo_at + len(GEO_FIELDS)
    dkey = r[at]
    if dkey is not None:
        device = cache.get(("d", dkey))
        if device is None:
            device = cache["d", dkey] = Device(*r[at:geo_at])
    gkey = r[geo_at]
    if gkey is not None:
        geo = cache.get(("g", gkey))
        if geo is None:
            geo = cache["g", gkey] = Geo(*r[geo_at:perf_at])
    pjson = r[perf_at]
    if pjson is not None:
        performer = cache.get(pjson)
        if performer is None:
            performer = cache[pjson] = Performer.from_dict(json.loads(pjson))
    return device, geo, performer


@functools.cache
def _access_select() -> Select[Any]:
    return _select_with_refs(access_table, _ACCESS_COLS)


def _access_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> AccessEvent:
    device, geo, performer = _refs_from_row(r, _N_ACCESS, cache)
    row = tuple(r[:_N_ACCESS])
    if type(row[12]) is not bool:  # SQLite hands booleans back as 0/1
        row = (*row[:12], bool(row[12]), *row[13:])
    return AccessEvent(row, device, geo, performer)


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How one event kind maps to a table.

    ``to_rows(events, refs, known)`` returns the rows (values of ``columns`` in
    order) and notes in ``refs`` the shared values not in ``known`` yet;
    ``select()`` is the base SELECT of a query and ``from_row(row, cache)``
    rebuilds the event from one of its rows (``cache`` lives for one query).
    The table needs ``id``, ``ts``, ``action`` and ``performer_column``.
    """

    table: Table
    columns: tuple[str, ...]
    to_rows: Callable[[Sequence[Any], Refs, KnownKeys], list[tuple[Any, ...]]]
    select: Callable[[], Select[Any]]
    from_row: Callable[[Sequence[Any], dict[Any, Any]], Event]
    performer_column: str = "performer_id"
    #: The columns the ``request_id`` and ``session_id`` filters read (None: the
    #: kind has none, and such a filter matches nothing).
    request_column: str | None = "request_id"
    session_column: str | None = None


#: Event kind -> how it is stored. New kinds (audit, session, log, advisory)
#: register a table (in :mod:`.models`) and a :class:`KindSpec` here.
KINDS: dict[str, KindSpec] = {
    "access": KindSpec(
        access_table, _ACCESS_COLS, _access_rows, _access_select, _access_from_row,
        session_column="session_hash",
    ),
}  # fmt: skip
KINDS.update({kind: KindSpec(*spec) for kind, spec in FLAT_KINDS.items()})


# --------------------------------------------------------------------------- sessions

SESSION_COLS = (
    "id",
    "app",
    "session_start",
    "last_seen",
    "ended_at",
    "end_reason",
    "ip",
    "machine_id",
    "performer_id",
    "performer_key",
    "device_key",
    "geo_key",
)
if set(SESSION_COLS) != set(session_table.c.keys()):  # pragma: no cover - drift
    raise RuntimeError("leza_session columns do not match the row codec")


def sessions_to_rows(
    changes: Sequence[SessionEvent], refs: Refs, known: KnownKeys
) -> list[tuple[Any, ...]]:
    rows = []
    for c in changes:
        d, g, p = c.device, c.geo, c.performer
        pkey = None if p is None else performer_key(p)
        if d is not None and d.key not in known.devices:
            refs.devices[d.key] = d
        if g is not None and g.key not in known.geos:
            refs.geos[g.key] = g
        if p is not None and pkey is not None and pkey not in known.performers:
            refs.performers[pkey] = p
        ended = c.ts if c.action == "session_end" else None
        rows.append(
            (
                c.session_id,
                c.app,
                c.ts,
                c.ts,
                ended,
                c.end_reason if ended is not None else None,
                c.ip,
                c.machine_id,
                None if p is None else p.id,
                pkey,
                None if d is None else d.key,
                None if g is None else g.key,
            )
        )
    return rows


_N_SESSION = len(SESSION_COLS)


def session_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> SessionRecord:
    f = dict(zip(SESSION_COLS, r[:_N_SESSION], strict=True))
    device, geo, performer = _refs_from_row(r, _N_SESSION, cache)
    return SessionRecord(
        id=f["id"],
        app=f["app"],
        session_start=f["session_start"],
        last_seen=f["last_seen"],
        ip=f["ip"] or "",
        machine_id=f["machine_id"],
        performer=performer,
        device=device,
        geo=geo,
        ended_at=f["ended_at"],
        end_reason=f["end_reason"],
    )


@functools.cache
def session_select() -> Select[Any]:
    return _select_with_refs(session_table, SESSION_COLS)


# --------------------------------------------------------------------------- audit

AUDIT_COLS = (
    "id", "ts", "app", "chain", "seq", "action", "entity_type", "entity_id", "actor_id",
    "actor", "before", "after", "diff", "reason", "request_id", "client_ip", "prev_hash", "hash",
    "session_id",
)  # fmt: skip
if set(AUDIT_COLS) != set(audit_table.c.keys()):  # pragma: no cover - drift
    raise RuntimeError("leza_audit columns do not match the row codec")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def audit_row(e: AuditEvent) -> tuple[Any, ...]:
    actor = e.actor
    return (
        e.id, e.ts, e.app, e.chain, e.seq, e.action, e.entity_type, e.entity_id,
        None if actor is None else actor.id, None if actor is None else actor.to_json(),
        _dump(e.before), _dump(e.after), _dump(e.diff) or "{}", e.reason, e.request_id,
        e.client_ip, e.prev_hash, e.hash, e.session_id,
    )  # fmt: skip


def audit_from_row(r: Sequence[Any]) -> AuditEvent:
    f = dict(zip(AUDIT_COLS, r, strict=True))
    actor = f["actor"]
    return AuditEvent(
        id=f["id"],
        ts=f["ts"],
        app=f["app"],
        chain=f["chain"],
        seq=f["seq"],
        action=f["action"],
        entity_type=f["entity_type"],
        entity_id=f["entity_id"],
        actor=None if actor is None else Performer.from_dict(json.loads(actor)),
        before=None if f["before"] is None else json.loads(f["before"]),
        after=None if f["after"] is None else json.loads(f["after"]),
        diff=json.loads(f["diff"]),
        reason=f["reason"],
        request_id=f["request_id"],
        client_ip=f["client_ip"],
        prev_hash=f["prev_hash"],
        hash=f["hash"],
        session_id=f["session_id"],
    )


def kind_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` of ``kind``; ValueError when it has no table."""
    spec = KINDS.get(kind)
    if spec is None:
        raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
    return spec
