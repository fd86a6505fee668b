"""SQL backend: SQLite (default) and PostgreSQL through SQLAlchemy (MySQL/MariaDB
URLs are accepted too, but not covered by the test suite).

Write path (the recorder thread, hot): each batch is ONE transaction of
``executemany`` calls on a raw DBAPI connection the storage keeps checked out
of the engine's pool, with INSERT statements built once from the table
metadata (the dialect's placeholder style and an idempotent conflict clause).
No ORM objects, no SQLAlchemy statement compilation per row: an event becomes
a plain tuple by attribute reads.

Device, geo and performer values are shared by many events; they are stored
once per key in their own tables (inserted the first time this process sees
the key, idempotently) and the access row only references them.

Read path: SQLAlchemy Core ``select()`` with LEFT JOINs, keyset pagination
on ``(ts, id)`` and the indexes defined in :mod:`.models`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import (
    Select,
    Table,
    and_,
    create_engine,
    delete,
    event,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import PoolProxiedConnection, StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from ..errors import LezaConfigError, LezaError
from ..events import (
    ACCESS_FIELDS,
    AccessEvent,
    AuditEvent,
    CheckEvent,
    Device,
    Event,
    Geo,
    SessionEvent,
    SessionRecord,
    decode_chain,
    encode_chain,
    performer_key,
)
from ..performer import Performer
from ..state.labels import METHODS, ROUTE_LABEL_MAX, EndpointFilter, parse_endpoint
from ..state.traffic import Traffic, check_window
from .base import (
    Capability,
    Page,
    QueryFilter,
    Sighting,
    Storage,
    check_endpoint_kind,
    checkpoints_of,
)
from .flat import FLAT_KINDS
from .models import (
    REFUSED_ACTIONS,
    REFUSED_PREDICATE,
    access_table,
    audit_checkpoint_table,
    audit_purge_table,
    audit_redaction_table,
    audit_table,
    check_table,
    device_table,
    geo_table,
    metadata,
    performer_table,
    session_table,
)
from .rollups import Aggregator
from .sql_rollups import (
    SQLRollups,
    create_mark,
    purge_statements,
    read_mark,
    settle,
    traffic_from,
    traffic_statements,
)

__all__ = [
    "KINDS",
    "KindSpec",
    "KnownKeys",
    "Refs",
    "SQLStorage",
    "decode_chain",
    "encode_chain",
    "parse_sql_url",
    "performer_key",
    "redact_url",
]

# --------------------------------------------------------------------------- URL checks

#: Backends with an idempotent INSERT: (statement head, statement tail; ``{pk}``
#: is the primary key column). Only a duplicate key may be ignored: SQLite's
#: INSERT OR IGNORE and MySQL's INSERT IGNORE would also skip rows violating
#: NOT NULL, silently; SQLite's upsert clause (SQLite >= 3.24) does not.
_CONFLICT: dict[str, tuple[str, str]] = {
    "sqlite": ("INSERT INTO", " ON CONFLICT DO NOTHING"),
    "postgresql": ("INSERT INTO", " ON CONFLICT DO NOTHING"),
    "mysql": ("INSERT INTO", " ON DUPLICATE KEY UPDATE {pk} = {pk}"),
    "mariadb": ("INSERT INTO", " ON DUPLICATE KEY UPDATE {pk} = {pk}"),
}
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
# Tries of a batch whose access rows another writer keeps inserting meanwhile.
_WRITE_ATTEMPTS = 3
_DRIVER_HINTS = {
    "psycopg": "install leza-middleware[postgres] (pip install 'leza-middleware[postgres]')",
    "psycopg2": "pip install psycopg2-binary, or use postgresql+psycopg:// with "
    "leza-middleware[postgres]",
    "pg8000": "pip install pg8000",
    "mysqldb": "pip install mysqlclient",
    "pymysql": "pip install pymysql",
    "mysqlconnector": "pip install mysql-connector-python",
    "mariadbconnector": "pip install mariadb",
    "pysqlite": "use a Python built with the sqlite3 module",
}
SUPPORTED_URLS = (
    "sqlite:///path/to/leza.db, postgresql+psycopg://user@host/db (postgresql:// is the "
    "same), mysql+pymysql://… (any installed SQLAlchemy driver of SQLite, PostgreSQL, "
    "MySQL or MariaDB), memory://, jsonl:///path/to/dir"
)
_ALIASES = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgres+psycopg": "postgresql+psycopg",
}


def redact_url(text: str | URL) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL hidden."""
    if isinstance(text, URL):
        return text.render_as_string(hide_password=True)
    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:
        scheme, sep, rest = text.partition("://")
        if not sep or "@" not in rest:
            return text
        userinfo, _, hostpart = rest.rpartition("@")
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{hostpart}" if ":" in userinfo else text


def parse_sql_url(spec: str | URL) -> URL:
    """Validate a SQLAlchemy URL for :class:`SQLStorage` without connecting.

    Raises :class:`LezaConfigError` naming the problem: unparseable URL, unknown
    dialect or driver, driver not installed, async driver, unsupported database,
    SQLite file in a missing or read-only directory.
    """
    shown = redact_url(spec)
    try:
        url = make_url(spec)
    except (ArgumentError, ValueError) as exc:
        raise LezaConfigError(
            f"storage URL {shown!r} cannot be parsed ({exc}); expected one of: {SUPPORTED_URLS}"
        ) from None
    alias = _ALIASES.get(url.drivername.lower())
    if alias is not None:
        url = url.set(drivername=alias)
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2]
    try:
        dialect_cls = url.get_dialect()
    except NoSuchModuleError:
        try:
            make_url(f"{backend}://").get_dialect()
        except NoSuchModuleError:
            raise LezaConfigError(
                f"unknown storage URL scheme {url.drivername!r} in {shown!r}; "
                f"supported: {SUPPORTED_URLS}"
            ) from None
        raise LezaConfigError(
            f"unknown {backend} driver {driver!r} in storage URL {shown!r}; "
            f"supported: {SUPPORTED_URLS}"
        ) from None
    if backend not in _CONFLICT:
        raise LezaConfigError(
            f"storage URL {shown!r}: the {backend} database is not supported (no idempotent "
            f"insert); supported: {SUPPORTED_URLS}"
        )
    if dialect_cls.is_async:
        raise LezaConfigError(
            f"storage URL {shown!r} names the async driver {driver!r}; the recorder writes "
            "from a thread, use a synchronous driver such as postgresql+psycopg://"
        )
    driver = dialect_cls.driver  # the default driver when the URL names none
    try:
        dialect_cls.import_dbapi()
    except ImportError as exc:
        hint = _DRIVER_HINTS.get(driver, f"install the Python package providing {driver!r}")
        raise LezaConfigError(
            f"storage URL {shown!r} needs the {driver!r} database driver, which is not "
            f"installed ({exc}); {hint}"
        ) from None
    paramstyle = getattr(dialect_cls, "default_paramstyle", "named")
    if paramstyle not in _PLACEHOLDERS:
        raise LezaConfigError(
            f"storage URL {shown!r}: driver {driver!r} uses the {paramstyle!r} parameter "
            "style, which is not supported"
        )
    if backend == "sqlite":
        _check_sqlite_file(url)
    return url


def _sqlite_in_memory(url: URL) -> bool:
    db = url.database
    return not db or db == ":memory:" or url.query.get("mode") == "memory"


def _check_sqlite_file(url: URL) -> None:
    db = url.database
    if _sqlite_in_memory(url):
        warnings.warn(
            f"storage {url.render_as_string()!r} is an in-memory SQLite database: it lives "
            "and dies with this process and is not shared with other workers; use "
            "sqlite:///path/to/leza.db to keep events",
            UserWarning,
            stacklevel=4,
        )
        return
    assert db is not None
    if db.startswith("file:"):  # a SQLite URI (uri=true): let SQLite interpret it
        return
    path = os.path.abspath(db)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise LezaConfigError(
            f"SQLite storage {db!r}: the directory {parent!r} does not exist; create it "
            "or choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LezaConfigError(
            f"SQLite storage {db!r}: the directory {parent!r} is not writable (SQLite "
            "creates its -wal and -shm files beside the database)"
        )
    if os.path.isdir(path):
        raise LezaConfigError(f"SQLite storage {db!r} is a directory, not a database file")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise LezaConfigError(f"SQLite storage {db!r}: the file is not readable and writable")


# --------------------------------------------------------------------------- row codecs


_DEVICE_FIELDS = tuple(f.name for f in fields(Device))
_GEO_FIELDS = tuple(f.name for f in fields(Geo))
_device_values: Callable[[Device], tuple[Any, ...]] = attrgetter(*_DEVICE_FIELDS)
_geo_values: Callable[[Geo], tuple[Any, ...]] = attrgetter(*_GEO_FIELDS)
_PERFORMER_COLS = ("key", "performer_id", "name", "email", "json")

# The access table's columns are AccessEvent.row's fields, in the same order.
_ACCESS_COLS = ACCESS_FIELDS
for _table, _cols in (
    (access_table, _ACCESS_COLS),
    (device_table, _DEVICE_FIELDS),
    (geo_table, _GEO_FIELDS),
    (performer_table, _PERFORMER_COLS),
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
_N_DEVICE = len(_DEVICE_FIELDS)


def _select_with_refs(table: Table, columns: Sequence[str]) -> Select[Any]:
    """SELECT ``columns`` of ``table`` with its device, geo and performer joined in.

    Row layout: the table's columns, then the device's, the geo's, and the
    performer's JSON (see :func:`_refs_from_row`).
    """
    d, g, p = device_table, geo_table, performer_table
    return (
        select(
            *(table.c[n] for n in columns),
            *(d.c[n] for n in _DEVICE_FIELDS),
            *(g.c[n] for n in _GEO_FIELDS),
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
    geo_at = at + _N_DEVICE
    perf_at = geo_at + len(_GEO_FIELDS)
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

_SESSION_COLS = (
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
if set(_SESSION_COLS) != set(session_table.c.keys()):  # pragma: no cover - drift
    raise RuntimeError("leza_session columns do not match the row codec")
# How a change merges into the stored session (the SQL twin of SessionRecord.apply):
# the earliest start, the latest sighting, the first end, the first known facts.
_SESSION_MERGE = {
    "session_start": "{least}(leza_session.session_start, excluded.session_start)",
    "last_seen": "{greatest}(leza_session.last_seen, excluded.last_seen)",
    "ended_at": "COALESCE(leza_session.ended_at, excluded.ended_at)",
    "end_reason": "COALESCE(leza_session.end_reason, excluded.end_reason)",
    "ip": "COALESCE(NULLIF(leza_session.ip, ''), excluded.ip)",
    **{
        col: f"COALESCE(leza_session.{col}, excluded.{col})"
        for col in ("machine_id", "performer_id", "performer_key", "device_key", "geo_key")
    },
}


def _session_rows(
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


_N_SESSION = len(_SESSION_COLS)


def _session_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> SessionRecord:
    f = dict(zip(_SESSION_COLS, r[:_N_SESSION], strict=True))
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
def _session_select() -> Select[Any]:
    return _select_with_refs(session_table, _SESSION_COLS)


# --------------------------------------------------------------------------- audit

_AUDIT_COLS = (
    "id", "ts", "app", "chain", "seq", "action", "entity_type", "entity_id", "actor_id",
    "actor", "before", "after", "diff", "reason", "request_id", "client_ip", "prev_hash", "hash",
    "session_id",
)  # fmt: skip
if set(_AUDIT_COLS) != set(audit_table.c.keys()):  # pragma: no cover - drift
    raise RuntimeError("leza_audit columns do not match the row codec")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _audit_row(e: AuditEvent) -> tuple[Any, ...]:
    actor = e.actor
    return (
        e.id, e.ts, e.app, e.chain, e.seq, e.action, e.entity_type, e.entity_id,
        None if actor is None else actor.id, None if actor is None else actor.to_json(),
        _dump(e.before), _dump(e.after), _dump(e.diff) or "{}", e.reason, e.request_id,
        e.client_ip, e.prev_hash, e.hash, e.session_id,
    )  # fmt: skip


def _audit_from_row(r: Sequence[Any]) -> AuditEvent:
    f = dict(zip(_AUDIT_COLS, r, strict=True))
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


# --------------------------------------------------------------------------- read filters


def _range_conds(ts: Any, id_: Any, flt: QueryFilter) -> list[Any]:
    """Inclusive time range and the keyset cursor on ``(ts, id)`` (rows after it
    when ``ascending``)."""
    conds: list[Any] = []
    if flt.since is not None:
        conds.append(ts >= flt.since)
    if flt.until is not None:
        conds.append(ts <= flt.until)
    if flt.cursor is not None:
        cts, cid = flt.cursor
        # The redundant ``ts <= cts`` gives the planner an index range bound.
        if flt.ascending:
            conds.append(ts >= cts)
            conds.append(or_(ts > cts, and_(ts == cts, id_ > cid)))
        else:
            conds.append(ts <= cts)
            conds.append(or_(ts < cts, and_(ts == cts, id_ < cid)))
    return conds


def _order(ts: Any, id_: Any, flt: QueryFilter) -> tuple[Any, Any]:
    return (ts.asc(), id_.asc()) if flt.ascending else (ts.desc(), id_.desc())


def _trace_conds(t: Table, flt: QueryFilter, request: str | None, session: str | None) -> list[Any]:
    """The traceability filters: one request, one session, these ids, these actions."""
    conds: list[Any] = []
    for value, column in ((flt.request_id, request), (flt.session_id, session)):
        if value is not None:
            conds.append(false() if column is None else t.c[column] == value)
    if flt.ids is not None:
        conds.append(t.c.id.in_(list(flt.ids)) if flt.ids else false())
    if flt.actions is not None:
        if t is access_table and tuple(flt.actions) == REFUSED_ACTIONS:
            # Spelt as the partial index's predicate, literals included: only
            # then do SQLite and PostgreSQL's generic plans use that index.
            conds.append(text(f"{t.name}.{REFUSED_PREDICATE}"))
        elif flt.actions:
            conds.append(t.c.action.in_(list(flt.actions)))
        else:
            conds.append(false())
    return conds


def _event_conds(spec: KindSpec, flt: QueryFilter) -> list[Any]:
    t = spec.table
    conds = _range_conds(t.c.ts, t.c.id, flt)
    if flt.action is not None:
        conds.append(t.c.action == flt.action)
    if flt.performer_id is not None:
        conds.append(t.c[spec.performer_column] == flt.performer_id)
    if flt.no_performer:
        conds.append(t.c[spec.performer_column].is_(None))
    if flt.endpoint is not None:
        if t is not access_table:
            raise ValueError("the endpoint filter applies to access events only")
        conds.extend(_endpoint_conds(parse_endpoint(flt.endpoint)))
    return conds + _trace_conds(t, flt, spec.request_column, spec.session_column)


_KNOWN_METHODS = tuple(sorted(METHODS))


def _endpoint_conds(ep: EndpointFilter) -> list[Any]:
    """SQL twin of :meth:`EndpointFilter.matches` (``ix_leza_access_route_ts``)."""
    t = access_table
    conds: list[Any] = []
    if ep.method == "OTHER":
        conds.append(t.c.method.not_in(_KNOWN_METHODS))
    elif ep.method is not None:
        conds.append(t.c.method == ep.method)
    if ep.unmatched:
        conds.append(t.c.route.is_(None))
        return conds
    prefix = ep.prefix
    if prefix is None:
        conds.append(t.c.route == ep.route)
    else:  # a cut label: the longer templates it stands for (no LIKE: SQLite's ignores case)
        conds.append(
            or_(
                t.c.route == ep.route,
                and_(
                    func.length(t.c.route) > ROUTE_LABEL_MAX,
                    func.substr(t.c.route, 1, ROUTE_LABEL_MAX - 1) == prefix,
                ),
            )
        )
    return conds


def _audit_conds(flt: QueryFilter) -> list[Any]:
    t = audit_table
    conds: list[Any] = []
    if flt.entity_type is not None:
        conds.append(t.c.entity_type == flt.entity_type)
    if flt.entity_id is not None:
        conds.append(t.c.entity_id == flt.entity_id)
    if flt.performer_id is not None:
        conds.append(t.c.actor_id == flt.performer_id)
    if flt.no_performer:
        conds.append(t.c.actor_id.is_(None))
    if flt.action is not None:
        conds.append(t.c.action == flt.action)
    conds += _trace_conds(t, flt, "request_id", "session_id")
    return conds + _range_conds(t.c.ts, t.c.id, flt)


def _session_conds(flt: QueryFilter) -> list[Any]:
    t = session_table
    conds: list[Any] = []
    if flt.session_id is not None:
        conds.append(t.c.id == flt.session_id)
    if flt.active is not None:
        conds.append(t.c.ended_at.is_(None) if flt.active else t.c.ended_at.is_not(None))
    if flt.ended_since is not None:
        conds.append(t.c.ended_at >= flt.ended_since)
    if flt.seen_until is not None:
        conds.append(t.c.last_seen <= flt.seen_until)
    if flt.performer_id is not None:
        conds.append(t.c.performer_id == flt.performer_id)
    return conds + _range_conds(t.c.session_start, t.c.id, flt)


# --------------------------------------------------------------------------- storage


class SQLStorage(Storage):
    """Events in SQL tables (SQLite file by default, PostgreSQL for several hosts).

    ``SQLStorage("sqlite:///leza.db")``; the URL is validated without
    connecting (see :func:`parse_sql_url`). Tables are created by
    :meth:`setup` (called automatically before the first write or query).

    Keeps traffic rollups (:meth:`traffic`): every write adds its new access
    events to ``leza_traffic_minute`` in the same transaction; past hours are
    summed into ``leza_traffic_hour`` by :meth:`settle_traffic` (:mod:`.sql_rollups`).
    """

    capabilities = frozenset(Capability)  # docs/storage.md#capabilities

    def __init__(
        self,
        url: str | URL,
        *,
        busy_timeout_ms: int = 5000,
        known_keys_limit: int = 100_000,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = parse_sql_url(url)
        self.busy_timeout_ms = busy_timeout_ms
        backend = self.url.get_backend_name()
        self._sqlite = backend == "sqlite"
        self._in_memory = self._sqlite and _sqlite_in_memory(self.url)
        self.shared = not self._in_memory

        options: dict[str, Any] = {}
        if self._sqlite:
            options["connect_args"] = {"check_same_thread": False}
            if self._in_memory:
                # One connection for every thread, or each would see its own database.
                options["poolclass"] = StaticPool
        else:
            options["pool_pre_ping"] = True
        options.update(engine_options or {})
        try:
            self.engine: Engine = create_engine(self.url, **options)
        except (ArgumentError, TypeError, ValueError) as exc:
            raise LezaConfigError(
                f"storage URL {self.describe_url()!r}: invalid engine options ({exc})"
            ) from None
        if self._sqlite:
            event.listen(self.engine, "connect", self._on_sqlite_connect)

        dialect = self.engine.dialect
        self._mark = _PLACEHOLDERS[dialect.paramstyle]
        self._head, self._tail = _CONFLICT[backend]
        self._insert_device = self._insert_sql(device_table, _DEVICE_FIELDS)
        self._insert_geo = self._insert_sql(geo_table, _GEO_FIELDS)
        self._insert_performer = self._insert_sql(performer_table, _PERFORMER_COLS)
        self._insert_kind: dict[tuple[str, int], str] = {}
        self._upsert_session = self._session_upsert_sql()
        self._insert_audit = self._insert_sql(audit_table, _AUDIT_COLS)
        self._upsert_checkpoint = self._checkpoint_upsert_sql()
        # Rows per INSERT: within every driver's parameter limit (SQLite >= 3.32:
        # 32766, older 999; PostgreSQL 65535) for the widest table.
        widest = max(len(spec.columns) for spec in KINDS.values())
        limit = 999 if self._sqlite and sqlite3.sqlite_version_info < (3, 32) else 32766
        self._chunk = 1 << ((min(256, limit // widest)).bit_length() - 1)
        self._rollups = SQLRollups(backend, dialect.identifier_preparer, self._mark, limit)
        self._aggregator = Aggregator()

        self._lock = threading.Lock()
        # An in-memory SQLite database is one connection shared by writer and
        # readers: serialise them so a reader's rollback cannot hit a write.
        self._read_lock: threading.Lock | None = self._lock if self._in_memory else None
        self._raw: PoolProxiedConnection | None = None
        self._known = KnownKeys(known_keys_limit)
        self._ready = False

    # -- configuration

    def _insert_sql(self, table: Table, columns: Sequence[str]) -> str:
        """The idempotent INSERT of ``columns`` into ``table``, in the driver's style."""
        quote = self.engine.dialect.identifier_preparer
        pk = quote.quote(next(iter(table.primary_key.columns)).name)
        return (
            f"{self._head} {quote.format_table(table)} "
            f"({', '.join(quote.quote(c) for c in columns)}) "
            f"VALUES ({', '.join([self._mark] * len(columns))}){self._tail.format(pk=pk)}"
        )

    def _session_upsert_sql(self) -> str:
        quote = self.engine.dialect.identifier_preparer
        backend = self.url.get_backend_name()
        least, greatest = ("min", "max") if backend == "sqlite" else ("LEAST", "GREATEST")
        cols = ", ".join(quote.quote(c) for c in _SESSION_COLS)
        marks = ", ".join([self._mark] * len(_SESSION_COLS))
        sets = ", ".join(
            f"{quote.quote(col)} = {expr.format(least=least, greatest=greatest)}"
            for col, expr in _SESSION_MERGE.items()
        )
        if backend in ("mysql", "mariadb"):  # pragma: no cover - not in the test matrix
            raise LezaConfigError("sessions need SQLite or PostgreSQL storage")
        return (
            f"INSERT INTO {quote.format_table(session_table)} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({quote.quote('id')}) DO UPDATE SET {sets}"
        )

    def _checkpoint_upsert_sql(self) -> str:
        quote = self.engine.dialect.identifier_preparer
        cols = ("chain", "seq", "hash", "ts")
        table = quote.format_table(audit_checkpoint_table)
        return (
            f"INSERT INTO {table} ({', '.join(quote.quote(c) for c in cols)}) "
            f"VALUES ({', '.join([self._mark] * len(cols))}) "
            f"ON CONFLICT ({quote.quote('chain')}) DO UPDATE SET "
            f"{quote.quote('seq')} = excluded.{quote.quote('seq')}, "
            f"{quote.quote('hash')} = excluded.{quote.quote('hash')}, "
            f"{quote.quote('ts')} = excluded.{quote.quote('ts')} "
            f"WHERE excluded.{quote.quote('seq')} > {table}.{quote.quote('seq')}"
        )

    def insert_statement(self, kind: str, rows: int = 1) -> str:
        """The INSERT of ``rows`` rows of ``kind`` (built once per kind and size)."""
        key = (kind, rows)
        sql = self._insert_kind.get(key)
        if sql is None:
            spec = KINDS[kind]
            one = self._insert_sql(spec.table, spec.columns)
            if rows > 1:
                head, _, rest = one.partition(" VALUES ")
                values, sep, tail = rest.partition(")")
                one = f"{head} VALUES {', '.join([values + sep] * rows)}{tail}"
            sql = self._insert_kind[key] = one
        return sql

    def _insert_rows(self, cur: Any, kind: str, rows: list[tuple[Any, ...]]) -> int:
        """Insert ``rows`` (idempotently); return how many were new (the driver's
        rowcount: a row whose id is already stored is not counted).

        SQLite: multi-row INSERTs, one statement per chunk instead of one per row.
        The SQLite driver releases the GIL around every statement step; with
        ``executemany`` that is once per row, and a recorder thread that gives
        the GIL away per row then waits for it behind the app's event loop.
        Chunk sizes are powers of two so the statement cache stays small.
        """
        if not self._sqlite:
            # psycopg 3 pipelines executemany (one round trip for the batch):
            # measured ~45k rows/s there against ~9k for multi-row VALUES.
            # Its rowcount is the total over the rows.
            cur.executemany(self.insert_statement(kind), rows)
            return int(cur.rowcount)
        n = len(rows)
        i = inserted = 0
        while i < n:
            size = self._chunk
            while size > n - i:
                size >>= 1
            chunk = rows[i : i + size]
            cur.execute(self.insert_statement(kind, size), list(chain.from_iterable(chunk)))
            inserted += cur.rowcount
            i += size
        return inserted

    def _new_access_rows(self, cur: Any, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """``rows`` without those whose id is already stored (or repeated in ``rows``):
        the slow path of a replayed or retried batch, in the write's transaction."""
        ids = [r[0] for r in rows]
        stored: set[Any] = set()
        name = self.engine.dialect.identifier_preparer.format_table(access_table)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join([self._mark] * len(part))
            cur.execute(f"SELECT id FROM {name} WHERE id IN ({marks})", part)
            stored.update(r[0] for r in cur.fetchall())
        fresh: dict[Any, tuple[Any, ...]] = {}
        for r in rows:
            if r[0] not in stored and r[0] not in fresh:
                fresh[r[0]] = r
        return list(fresh.values())

    def describe_url(self) -> str:
        url = self.url
        if self._sqlite and not self._in_memory and url.database:
            db = url.database
            if not db.startswith("file:") and not os.path.isabs(db):
                # Absolute, so two apps using sqlite:///leza.db from different
                # directories are told apart (this also keys the spill folder).
                url = url.set(database=os.path.abspath(db))
        return url.render_as_string(hide_password=True)

    def describe(self) -> str:
        return f"SQLStorage({self.describe_url()})"

    def _on_sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            # A read-only file cannot switch to WAL; reads still work.
            with contextlib.suppress(Exception):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        finally:
            cur.close()

    #: Set by ``Leza(migrate=True)``: :meth:`setup` applies pending migrations.
    auto_migrate: bool = False

    def setup(self) -> None:
        """Create the tables and indexes of a fresh database and record its
        migration revision; bring an older one up to date when :attr:`auto_migrate`
        (see :func:`.migrate.ensure_schema`).

        Several processes (workers, the CLI, a dashboard) may do this at once:
        a fresh database is created under the migration lock, once; a database
        already at the newest revision gets no DDL at all (it would lock tables
        other workers write to); a statement that still fails (a deadlock, a
        lost race) is retried.
        """
        from .migrate import ensure_schema  # imports Alembic only to migrate

        for attempt in range(5):
            try:
                ensure_schema(self)
                break
            except DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        self._ready = True

    def create_tables(self, conn: Connection) -> None:
        """``CREATE TABLE / INDEX IF NOT EXISTS`` of every table of the models, and
        the traffic mark's row."""
        for table in metadata.sorted_tables:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
                conn.execute(CreateIndex(index, if_not_exists=True))
        create_mark(conn)

    # -- write path

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if not self._ready:
            self.setup()
        groups: dict[str, list[Event]] = {}
        changes: list[SessionEvent] = []
        audits: list[AuditEvent] = []
        for e in events:
            kind = e.kind
            if kind == "session":
                changes.append(e)  # type: ignore[arg-type]
                continue
            if kind == "audit":
                audits.append(e)  # type: ignore[arg-type]
                continue
            group = groups.get(kind)
            if group is None:
                if kind not in KINDS:
                    raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
                group = groups[kind] = []
            group.append(e)
        with self._lock:
            refs = Refs()
            known = self._known
            batches = [
                (kind, KINDS[kind].to_rows(group, refs, known)) for kind, group in groups.items()
            ]
            session_rows = _session_rows(changes, refs, known) if changes else []
            # Rollups count the access rows this transaction inserts. The common
            # case: the driver's rowcount says all of them. Otherwise (a replayed
            # spill file, a batch retried after a commit whose answer was lost)
            # the transaction is rolled back and written again with the rows
            # whose id is not stored yet, until the rowcount agrees.
            for attempt in range(_WRITE_ATTEMPTS):
                raw = self._raw
                try:
                    if raw is None:
                        raw = self._raw = self.engine.raw_connection()
                    cur = raw.cursor()
                    try:
                        done = self._write_rows(cur, refs, batches, session_rows, audits,
                                                replay=attempt > 0)  # fmt: skip
                    finally:
                        cur.close()
                    if done:
                        raw.commit()
                        break
                    raw.rollback()
                except BaseException:
                    self._discard_raw()
                    raise
            else:
                raise RuntimeError(
                    f"access events of this batch kept being inserted by another writer "
                    f"while it was written ({_WRITE_ATTEMPTS} attempts); retried later"
                )
            known.remember(refs)

    def _write_rows(
        self,
        cur: Any,
        refs: Refs,
        batches: list[tuple[str, list[tuple[Any, ...]]]],
        session_rows: list[tuple[Any, ...]],
        audits: list[AuditEvent],
        *,
        replay: bool,
    ) -> bool:
        """One write transaction's statements; False (nothing committed yet) when
        fewer access rows went in than were sent: the caller rolls back and
        retries with ``replay`` (only the rows not stored yet)."""
        if refs:
            self._write_refs(cur, refs)
        for kind, rows in batches:
            if kind != "access":
                self._insert_rows(cur, kind, rows)
                continue
            if replay:
                rows = self._new_access_rows(cur, rows)
                if not rows:
                    continue  # all stored already: nothing to count
            if self._insert_rows(cur, kind, rows) != len(rows):
                return False
            self._rollups.write(cur, self._aggregator.increments(rows))
        if session_rows:
            # One statement per change, in order: several changes of
            # one session in a batch each merge into the row.
            cur.executemany(self._upsert_session, session_rows)
        if audits:
            # The rows and their chains' checkpoints in one transaction:
            # a checkpoint never runs ahead of the rows it vouches for.
            cur.executemany(self._insert_audit, [_audit_row(e) for e in audits])
            cur.executemany(
                self._upsert_checkpoint,
                [(c["chain"], c["seq"], c["hash"], c["ts"])
                 for c in checkpoints_of(audits).values()],
            )  # fmt: skip
        return True

    def _write_refs(self, cur: Any, refs: Refs) -> None:
        # In key order: two processes inserting the same new keys then wait for
        # each other in the same order instead of deadlocking (PostgreSQL).
        if refs.devices:
            devices = sorted(refs.devices.items())
            cur.executemany(self._insert_device, [_device_values(d) for _, d in devices])
        if refs.geos:
            geos = sorted(refs.geos.items())
            cur.executemany(self._insert_geo, [_geo_values(g) for _, g in geos])
        if refs.performers:
            rows = [(k, p.id, p.name, p.email, p.to_json()) for k, p in refs.performers.items()]
            rows.sort()
            cur.executemany(self._insert_performer, rows)

    def _discard_raw(self) -> None:
        """After a failed write: roll back and drop the connection; the next write
        reconnects. Forget known keys too (the database may have been replaced)."""
        raw, self._raw = self._raw, None
        self._known.clear()
        if raw is None:
            return
        with contextlib.suppress(Exception):  # the connection is being thrown away
            raw.rollback()
        if self._in_memory:
            return  # its only connection is the database itself
        with contextlib.suppress(Exception):
            raw.invalidate()

    # -- read side

    def query(self, kind: str, flt: QueryFilter) -> Page:
        check_endpoint_kind(kind, flt)
        if kind == "session":
            return self._query_sessions(flt)
        if kind == "audit":
            return self._query_audit(flt)
        spec = self._spec(kind)
        if not self._ready:
            self.setup()
        t = spec.table
        stmt = (
            spec.select()
            .where(*_event_conds(spec, flt))
            .order_by(*_order(t.c.ts, t.c.id, flt))
            .limit(flt.limit + 1)
        )
        rows = self._read(stmt)
        more = len(rows) > flt.limit
        cache: dict[Any, Any] = {}
        events = [spec.from_row(r, cache) for r in rows[: flt.limit]]
        last = events[-1] if more else None
        return Page(events, None if last is None else (last.ts, last.id))

    def stores(self, kind: str) -> bool:
        return kind in KINDS or kind in ("session", "audit")

    @staticmethod
    def _spec(kind: str) -> KindSpec:
        spec = KINDS.get(kind)
        if spec is None:
            raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
        return spec

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        """Rows of ``kind`` matching ``flt`` (its cursor and limit ignored), at most
        ``cap + 1``: the count runs over the same index range as the first page
        and stops there, so its cost is bounded whatever the table holds."""
        check_endpoint_kind(kind, flt)
        if not self._ready:
            self.setup()
        flt = replace(flt, cursor=None)
        if kind == "session":
            table, conds = session_table, _session_conds(flt)
        elif kind == "audit":
            table, conds = audit_table, _audit_conds(flt)
        else:
            spec = self._spec(kind)
            table, conds = spec.table, _event_conds(spec, flt)
        # A constant, not a column: the filter's index then covers the count
        # (the access table's indexes do not hold ``id``).
        inner: Select[Any] = select(literal_column("1")).select_from(table).where(*conds)
        if cap is not None:
            inner = inner.limit(cap + 1)
        stmt = select(func.count()).select_from(inner.subquery())
        rows = self._read(stmt)
        return int(rows[0][0])

    def sightings(self, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
        """One statement: the newest ``scan`` matching rows by the index the
        filter picks (a session's or a performer's, newest first), grouped, with
        each group's device and network joined in."""
        if not self._ready:
            self.setup()
        spec = KINDS["access"]
        a = spec.table
        flt = replace(flt, cursor=None, ascending=False)
        cols = ("ts", "client_ip", "ip_valid", "geo_key", "device_key", "machine_id")
        inner = (
            select(*(a.c[c] for c in cols))
            .where(*_event_conds(spec, flt))
            .order_by(a.c.ts.desc())
            .limit(scan)
            .subquery()
        )
        keys = (inner.c.client_ip, inner.c.ip_valid, inner.c.geo_key, inner.c.device_key,
                inner.c.machine_id)  # fmt: skip
        grouped = (
            select(*keys, func.min(inner.c.ts).label("first"),
                   func.max(inner.c.ts).label("last"), func.count().label("n"))
            .group_by(*keys)
            .subquery()
        )  # fmt: skip
        d, g = device_table, geo_table
        stmt = (
            select(
                grouped.c.client_ip, grouped.c.ip_valid, grouped.c.machine_id,
                grouped.c.first, grouped.c.last, grouped.c.n, grouped.c.device_key,
                *(d.c[n] for n in _DEVICE_FIELDS), grouped.c.geo_key,
                *(g.c[n] for n in _GEO_FIELDS),
            )
            .select_from(grouped)
            .outerjoin(d, d.c.key == grouped.c.device_key)
            .outerjoin(g, g.c.key == grouped.c.geo_key)
        )  # fmt: skip
        found: list[Sighting] = []
        at_geo = 7 + _N_DEVICE + 1  # after the device's columns and the geo key
        for r in self._read(stmt):
            # A key whose row is missing (never written, or deleted) joins as NULLs.
            device = Device(*r[7 : at_geo - 1]) if r[7] is not None else None
            geo = Geo(*r[at_geo:]) if r[at_geo] is not None else None
            found.append(Sighting(r[0], bool(r[1]), geo, device, r[2], r[3], r[4], int(r[5])))
        return found, sum(s.requests for s in found)

    def check_states(self, check: str, since: int) -> dict[str, int]:
        """Probes of ``check`` since ``since`` per resulting state (for uptime)."""
        if not self._ready:
            self.setup()
        t = check_table
        stmt = (
            select(t.c.state, func.count())
            .where(t.c.check_name == check, t.c.ts >= since)
            .group_by(t.c.state)
        )
        return {state: int(n) for state, n in self._read(stmt)}

    def last_check(self, check: str) -> CheckEvent | None:
        """The newest stored probe of ``check``."""
        page = self.query("check", QueryFilter(performer_id=check, limit=1))
        found = page.events[0] if page.events else None
        return found if isinstance(found, CheckEvent) else None

    def _read(self, stmt: Any) -> list[Any]:
        if self._read_lock is not None:
            with self._read_lock, self.engine.connect() as conn:
                return list(conn.execute(stmt).all())
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    def _query_audit(self, flt: QueryFilter) -> Page:
        if not self._ready:
            self.setup()
        t = audit_table
        stmt = (
            select(*(t.c[n] for n in _AUDIT_COLS))
            .where(*_audit_conds(flt))
            .order_by(*_order(t.c.ts, t.c.id, flt))
            .limit(flt.limit + 1)
        )
        rows = self._read(stmt)
        events = [_audit_from_row(r) for r in rows[: flt.limit]]
        last = events[-1] if len(rows) > flt.limit else None
        return Page(events, None if last is None else (last.ts, last.id))

    def iter_audit(self) -> Iterator[AuditEvent]:
        """Every audit row by chain and seq, read in keyset pages (constant memory)."""
        if not self._ready:
            self.setup()
        t = audit_table
        after: tuple[str, int] | None = None
        while True:
            stmt = select(*(t.c[n] for n in _AUDIT_COLS)).order_by(t.c.chain, t.c.seq).limit(2000)
            if after is not None:
                chain, seq = after
                stmt = stmt.where(or_(t.c.chain > chain, and_(t.c.chain == chain, t.c.seq > seq)))
            rows = self._read(stmt)
            for r in rows:
                yield _audit_from_row(r)
            if len(rows) < 2000:
                return
            after = (rows[-1][3], rows[-1][4])

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        if not self._ready:
            self.setup()
        t = audit_checkpoint_table
        rows = self._read(select(t.c.chain, t.c.seq, t.c.hash, t.c.ts).order_by(t.c.chain))
        return [{"chain": c, "seq": q, "hash": h, "ts": ts} for c, q, h, ts in rows]

    def _query_sessions(self, flt: QueryFilter) -> Page:
        if not self._ready:
            self.setup()
        t = session_table
        stmt = (
            _session_select()
            .where(*_session_conds(flt))
            .order_by(t.c.session_start.desc(), t.c.id.desc())
            .limit(flt.limit + 1)
        )
        rows = self._read(stmt)
        cache: dict[Any, Any] = {}
        records = [_session_from_row(r, cache) for r in rows[: flt.limit]]
        more = len(rows) > flt.limit
        last = records[-1] if more else None
        return Page(records, None if last is None else (last.ts, last.id))

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Delete events older than ``before`` in transactions of ``batch_size`` rows.

        Device, geo and performer rows stay: other events share them. Sessions
        go once they ended before ``before``; active ones stay.
        """
        return sum(self.purge_batches(kind, before, batch_size))

    def purge_batches(self, kind: str, before: int, batch_size: int = 10_000) -> Iterator[int]:
        if kind == "traffic":
            yield from self._purge_traffic(before, batch_size)
            return
        if kind == "session":
            t = session_table
            old: Any = and_(t.c.ended_at.is_not(None), t.c.ended_at < before)
            order: Any = t.c.ended_at
        else:
            spec = KINDS.get(kind)
            if spec is None:
                raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
            t = spec.table
            old, order = t.c.ts < before, t.c.ts
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self._ready:
            self.setup()
        # One statement per chunk (the derived table keeps MySQL happy): a single
        # write statement takes SQLite's write lock up front instead of upgrading
        # a read transaction, which a concurrent writer would make fail.
        chunk = select(t.c.id).where(old).order_by(order).limit(batch_size)
        yield from self._delete_chunks(delete(t).where(t.c.id.in_(select(chunk.subquery().c.id))),
                                       batch_size)  # fmt: skip

    def _purge_traffic(self, before: int, batch_size: int) -> Iterator[int]:
        """Rollup rows of hours that ended before ``before`` (rounded down to its hour)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self._ready:
            self.setup()
        for _table, stmt in purge_statements(before, batch_size):
            yield from self._delete_chunks(stmt, batch_size)

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        """Traffic of the minutes ``[since_us, until_us]`` touches, from the rollup
        tables (see :mod:`leza_middleware.state.traffic`): at most three grouped
        index-range scans, whatever the number of stored events."""
        start, end, step = check_window(since_us, until_us, bucket_seconds)
        if not self._ready:
            self.setup()
        try:
            if self._read_lock is not None:
                with self._read_lock, self.engine.connect() as conn:
                    settled = read_mark(conn)
            else:
                with self.engine.connect() as conn:
                    settled = read_mark(conn)
            statements = traffic_statements(start, end, step, settled)
            results = [self._read(stmt) for stmt in statements]
        except DBAPIError:
            self._older_schema()
            raise
        return traffic_from(results, start, end, step)

    def _older_schema(self) -> None:
        """After a failed read of the rollups: a clear error when the tables are
        at an older revision (not migrated yet) rather than a missing table."""
        from .migrate import HEAD, schema_state

        try:
            revision = schema_state(self).revision
        except Exception:
            return  # unreachable: the original error says more
        if revision != HEAD:
            raise LezaError(
                f"the Leza tables in {self.describe_url()} are at revision {revision}; "
                f"traffic rollups need {HEAD}: run `leza migrate --storage URL`"
            ) from None

    def settle_traffic(self, now_us: int | None = None) -> int:
        """Sum the minutes of past hours into ``leza_traffic_hour`` (long windows
        read those); the recorder calls it every minute. Returns the hours summed."""
        if not self._ready:
            self.setup()
        if self._read_lock is not None:
            with self._read_lock:
                return settle(self.engine, now_us)
        return settle(self.engine, now_us)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self._read_lock is not None:
            with self._read_lock, self.engine.begin() as conn:
                yield conn
        else:
            with self.engine.begin() as conn:
                yield conn

    def _delete_chunks(self, stmt: Any, batch_size: int) -> Iterator[int]:
        """Run a DELETE of at most ``batch_size`` rows until it deletes fewer."""
        while True:
            with self._transaction() as conn:
                n = conn.execute(stmt).rowcount
            yield n
            if n < batch_size:
                return

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        """Oldest first after ``(ts, id)``: one range scan of the ``(ts, id)`` index."""
        if not self._ready:
            self.setup()
        stmt: Any
        if kind == "session":
            t = session_table
            ts, id_ = t.c.session_start, t.c.id
            stmt = _session_select()
        elif kind == "audit":
            t = audit_table
            ts, id_ = t.c.ts, t.c.id
            stmt = select(*(t.c[n] for n in _AUDIT_COLS))
        else:
            spec = KINDS.get(kind)
            if spec is None:
                raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
            ts, id_ = spec.table.c.ts, spec.table.c.id
            stmt = spec.select()
        if after is not None:
            ats, aid = after
            stmt = stmt.where(ts >= ats, or_(ts > ats, id_ > aid))
        rows = self._read(stmt.order_by(ts, id_).limit(limit))
        cache: dict[Any, Any] = {}
        if kind == "session":
            return [_session_from_row(r, cache) for r in rows]
        if kind == "audit":
            return [_audit_from_row(r) for r in rows]
        return [KINDS[kind].from_row(r, cache) for r in rows]

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        if not self._ready:
            self.setup()
        t = audit_purge_table
        cols = ("chain", "seq", "hash", "ts", "purged_at", "sig")
        rows = self._read(select(*(t.c[n] for n in cols)).order_by(t.c.chain))
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self._ready:
            self.setup()
        t, a = audit_purge_table, audit_table
        cols = ("chain", "seq", "hash", "ts", "purged_at", "sig")
        with self._transaction() as conn:  # the marks first, in one transaction
            for m in marks:
                row = conn.execute(select(t.c.seq).where(t.c.chain == m["chain"])).first()
                values = {c: m[c] for c in cols}
                if row is None:
                    conn.execute(t.insert().values(values))
                elif row[0] < m["seq"]:  # a mark only moves forward
                    conn.execute(t.update().where(t.c.chain == m["chain"]).values(values))
        for m in marks:
            chain, upto = m["chain"], int(m["seq"])
            chunk = (
                select(a.c.id)
                .where(a.c.chain == chain, a.c.seq <= upto)
                .order_by(a.c.seq)
                .limit(batch_size)
            )
            yield from self._delete_chunks(
                delete(a).where(a.c.id.in_(select(chunk.subquery().c.id))), batch_size
            )

    # -- erasure (privacy.py)

    def performer_identities(self, performer_id: str) -> list[Performer]:
        if not self._ready:
            self.setup()
        t = performer_table
        rows = self._read(select(t.c.json).where(t.c.performer_id == performer_id))
        return [Performer.from_dict(json.loads(r[0])) for r in rows]

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        from ..privacy import compile_identifiers, scrub_json, scrub_text

        if not self._ready:
            self.setup()
        a, lg, adv = access_table, KINDS["log"].table, KINDS["advisory"].table
        s, p = session_table, performer_table
        counts: dict[str, int] = {}
        batch = 10_000
        mine = a.c.performer_id == performer_id
        # Their requests' log records first, while their access rows still say
        # which requests were theirs (a record written before the app knew
        # who was signed in carries the request id only).
        rids = select(a.c.request_id).where(mine)
        with self._transaction() as conn:
            counts["logs"] = conn.execute(delete(lg).where(lg.c.request_id.in_(rids))).rowcount
        for key, t, cond in (
            ("logs", lg, lg.c.performer_id == performer_id),
            ("advisories", adv, adv.c.performer_id == performer_id),
            ("access", a, mine),
        ):
            chunk = select(t.c.id).where(cond).limit(batch)
            stmt = delete(t).where(t.c.id.in_(select(chunk.subquery().c.id)))
            counts[key] = counts.get(key, 0) + sum(self._delete_chunks(stmt, batch))
        with self._transaction() as conn:
            # Kept, ended and anonymous: the ended row is how a revocation
            # reaches the other processes (Sessions.poll).
            counts["sessions"] = conn.execute(
                update(s)
                .where(s.c.performer_id == performer_id)
                .values(
                    performer_id=None,
                    performer_key=None,
                    ip="",
                    machine_id=None,
                    device_key=None,
                    geo_key=None,
                )
            ).rowcount
            counts["performers"] = conn.execute(
                delete(p).where(p.c.performer_id == performer_id)
            ).rowcount
        with self._lock:
            self._known.clear()  # the deleted performer keys must be written again if seen
        # Other rows' free text: candidates by a case-insensitive LIKE (a full
        # scan; erasure is rare), rewritten in Python.
        rx = compile_identifiers(identifiers)
        scrubbed = 0
        if rx is not None:
            for t, cols, as_json in (
                (a, ("endpoint", "reason"), ()),
                (lg, ("message", "exception"), ()),
                (adv, ("message", "details"), ("details",)),
            ):
                hits = or_(
                    *(t.c[c].icontains(i, autoescape=True) for c in cols for i in identifiers)
                )
                rows = self._read(select(t.c.id, *(t.c[c] for c in cols)).where(hits))
                updates = []
                for r in rows:
                    values = {}
                    for c, old in zip(cols, r[1:], strict=True):
                        if old is None:
                            continue
                        new: str | None
                        if c in as_json:
                            value = scrub_json(json.loads(old), rx)
                            new = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
                        else:
                            new = scrub_text(old, rx)
                        if new != old:
                            values[c] = new
                    if values:
                        updates.append((r[0], values))
                with self._transaction() as conn:
                    for row_id, values in updates:
                        conn.execute(update(t).where(t.c.id == row_id).values(**values))
                scrubbed += len(updates)
        counts["scrubbed"] = scrubbed
        return counts

    def audit_redactions(self) -> list[dict[str, Any]]:
        if not self._ready:
            self.setup()
        t = audit_redaction_table
        cols = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at", "sig")
        rows = self._read(select(*(t.c[n] for n in cols)).order_by(t.c.chain, t.c.seq))
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        if not self._ready:
            self.setup()
        t, au = audit_redaction_table, audit_table
        cols = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at", "sig")
        done = 0
        # Entries and rows in one transaction: verify() never sees one without the other.
        with self._transaction() as conn:
            for m in entries:
                conn.execute(delete(t).where(t.c.id == m["id"]))
                conn.execute(t.insert().values({c: m[c] for c in cols}))
            for e in events:
                row = dict(zip(_AUDIT_COLS, _audit_row(e), strict=True))
                values = {c: row[c] for c in ("entity_id", "actor_id", "actor", "before",
                                               "after", "diff", "reason", "client_ip")}  # fmt: skip
                done += conn.execute(
                    update(au).where(au.c.id == e.id, au.c.hash == e.hash).values(**values)
                ).rowcount
        return done

    # -- lifecycle

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone, start afresh."""
        self.engine.dispose(close=False)
        self._raw = None
        self._known = KnownKeys(self._known.limit)
        self._lock = threading.Lock()
        self._read_lock = self._lock if self._in_memory else None

    def close(self) -> None:
        with self._lock:
            raw, self._raw = self._raw, None
            if raw is not None:
                with contextlib.suppress(Exception):  # closing anyway
                    raw.close()
            self.engine.dispose()
