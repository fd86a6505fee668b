"""The SQL backend's reads: pages of a kind (newest first, keyset pagination on
``(ts, id)``), bounded counts, sightings, check states, oldest-first scans
(``read_after``), traffic from the rollup tables, and the audit chains read whole.

SQLAlchemy Core ``select()`` with LEFT JOINs of the shared rows
(:mod:`.sql_codecs`), the WHERE clauses of :mod:`.sql_filters`, and the indexes
of :mod:`.models`. Each function takes the :class:`~.sql.SQLStorage` and uses its
:meth:`~.sql.SQLStorage.ensure_ready` and :meth:`~.sql.SQLStorage.read`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, func, literal_column, or_, select
from sqlalchemy.exc import DBAPIError

from ..errors import LezaError
from ..events import AuditEvent, CheckEvent, Device, Geo
from ..state.traffic import Traffic, check_window
from .base import Page, QueryFilter, Sighting, check_endpoint_kind
from .models import (
    audit_checkpoint_table,
    audit_table,
    check_table,
    device_table,
    geo_table,
    session_table,
)
from .sql_codecs import (
    AUDIT_COLS,
    DEVICE_FIELDS,
    GEO_FIELDS,
    KINDS,
    N_DEVICE,
    audit_from_row,
    kind_spec,
    session_from_row,
    session_select,
)
from .sql_filters import audit_conds, event_conds, keyset_order, session_conds
from .sql_rollups import read_mark, traffic_from, traffic_statements

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = [
    "audit_checkpoints",
    "check_states",
    "count",
    "iter_audit",
    "last_check",
    "query",
    "read_after",
    "sightings",
    "traffic",
]


def query(storage: SQLStorage, kind: str, flt: QueryFilter) -> Page:
    check_endpoint_kind(kind, flt)
    if kind == "session":
        return _query_sessions(storage, flt)
    if kind == "audit":
        return _query_audit(storage, flt)
    spec = kind_spec(kind)
    storage.ensure_ready()
    t = spec.table
    stmt = (
        spec.select()
        .where(*event_conds(spec, flt))
        .order_by(*keyset_order(t.c.ts, t.c.id, flt))
        .limit(flt.limit + 1)
    )
    rows = storage.read(stmt)
    more = len(rows) > flt.limit
    cache: dict[Any, Any] = {}
    events = [spec.from_row(r, cache) for r in rows[: flt.limit]]
    last = events[-1] if more else None
    return Page(events, None if last is None else (last.ts, last.id))


def count(storage: SQLStorage, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
    """Rows of ``kind`` matching ``flt`` (its cursor and limit ignored), at most
    ``cap + 1``: the count runs over the same index range as the first page
    and stops there, so its cost is bounded whatever the table holds."""
    check_endpoint_kind(kind, flt)
    storage.ensure_ready()
    flt = replace(flt, cursor=None)
    if kind == "session":
        table, conds = session_table, session_conds(flt)
    elif kind == "audit":
        table, conds = audit_table, audit_conds(flt)
    else:
        spec = kind_spec(kind)
        table, conds = spec.table, event_conds(spec, flt)
    # A constant, not a column: the filter's index then covers the count
    # (the access table's indexes do not hold ``id``).
    inner: Select[Any] = select(literal_column("1")).select_from(table).where(*conds)
    if cap is not None:
        inner = inner.limit(cap + 1)
    stmt = select(func.count()).select_from(inner.subquery())
    rows = storage.read(stmt)
    return int(rows[0][0])


def sightings(storage: SQLStorage, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
    """One statement: the newest ``scan`` matching rows by the index the
    filter picks (a session's or a performer's, newest first), grouped, with
    each group's device and network joined in."""
    storage.ensure_ready()
    spec = KINDS["access"]
    a = spec.table
    flt = replace(flt, cursor=None, ascending=False)
    cols = ("ts", "client_ip", "ip_valid", "geo_key", "device_key", "machine_id")
    inner = (
        select(*(a.c[c] for c in cols))
        .where(*event_conds(spec, flt))
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
            *(d.c[n] for n in DEVICE_FIELDS), grouped.c.geo_key,
            *(g.c[n] for n in GEO_FIELDS),
        )
        .select_from(grouped)
        .outerjoin(d, d.c.key == grouped.c.device_key)
        .outerjoin(g, g.c.key == grouped.c.geo_key)
    )  # fmt: skip
    found: list[Sighting] = []
    at_geo = 7 + N_DEVICE + 1  # after the device's columns and the geo key
    for r in storage.read(stmt):
        # A key whose row is missing (never written, or deleted) joins as NULLs.
        device = Device(*r[7 : at_geo - 1]) if r[7] is not None else None
        geo = Geo(*r[at_geo:]) if r[at_geo] is not None else None
        found.append(Sighting(r[0], bool(r[1]), geo, device, r[2], r[3], r[4], int(r[5])))
    return found, sum(s.requests for s in found)


def check_states(storage: SQLStorage, check: str, since: int) -> dict[str, int]:
    """Probes of ``check`` since ``since`` per resulting state (for uptime)."""
    storage.ensure_ready()
    t = check_table
    stmt = (
        select(t.c.state, func.count())
        .where(t.c.check_name == check, t.c.ts >= since)
        .group_by(t.c.state)
    )
    return {state: int(n) for state, n in storage.read(stmt)}


def last_check(storage: SQLStorage, check: str) -> CheckEvent | None:
    """The newest stored probe of ``check``."""
    page = storage.query("check", QueryFilter(performer_id=check, limit=1))
    found = page.events[0] if page.events else None
    return found if isinstance(found, CheckEvent) else None


def read_after(
    storage: SQLStorage, kind: str, after: tuple[int, str] | None, limit: int = 1000
) -> list[Any]:
    """Oldest first after ``(ts, id)``: one range scan of the ``(ts, id)`` index."""
    storage.ensure_ready()
    stmt: Any
    if kind == "session":
        t = session_table
        ts, id_ = t.c.session_start, t.c.id
        stmt = session_select()
    elif kind == "audit":
        t = audit_table
        ts, id_ = t.c.ts, t.c.id
        stmt = select(*(t.c[n] for n in AUDIT_COLS))
    else:
        spec = KINDS.get(kind)
        if spec is None:
            raise ValueError(f"SQLStorage has no table for event kind {kind!r}")
        ts, id_ = spec.table.c.ts, spec.table.c.id
        stmt = spec.select()
    if after is not None:
        ats, aid = after
        stmt = stmt.where(ts >= ats, or_(ts > ats, id_ > aid))
    rows = storage.read(stmt.order_by(ts, id_).limit(limit))
    cache: dict[Any, Any] = {}
    if kind == "session":
        return [session_from_row(r, cache) for r in rows]
    if kind == "audit":
        return [audit_from_row(r) for r in rows]
    return [KINDS[kind].from_row(r, cache) for r in rows]


def traffic(storage: SQLStorage, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
    """Traffic of the minutes ``[since_us, until_us]`` touches, from the rollup
    tables (see :mod:`leza_middleware.state.traffic`): at most three grouped
    index-range scans, whatever the number of stored events."""
    start, end, step = check_window(since_us, until_us, bucket_seconds)
    storage.ensure_ready()
    try:
        with storage.connection() as conn:
            settled = read_mark(conn)
        statements = traffic_statements(start, end, step, settled)
        results = [storage.read(stmt) for stmt in statements]
    except DBAPIError:
        _older_schema(storage)
        raise
    return traffic_from(results, start, end, step)


def _older_schema(storage: SQLStorage) -> None:
    """After a failed read of the rollups: a clear error when the tables are
    at an older revision (not migrated yet) rather than a missing table."""
    from .migrate import HEAD, schema_state

    try:
        revision = schema_state(storage).revision
    except Exception:
        return  # unreachable: the original error says more
    if revision != HEAD:
        raise LezaError(
            f"the Leza tables in {storage.describe_url()} are at revision {revision}; "
            f"traffic rollups need {HEAD}: run `leza migrate --storage URL`"
        ) from None


# -- audit entries and sessions


def _query_audit(storage: SQLStorage, flt: QueryFilter) -> Page:
    storage.ensure_ready()
    t = audit_table
    stmt = (
        select(*(t.c[n] for n in AUDIT_COLS))
        .where(*audit_conds(flt))
        .order_by(*keyset_order(t.c.ts, t.c.id, flt))
        .limit(flt.limit + 1)
    )
    rows = storage.read(stmt)
    events = [audit_from_row(r) for r in rows[: flt.limit]]
    last = events[-1] if len(rows) > flt.limit else None
    return Page(events, None if last is None else (last.ts, last.id))


def iter_audit(storage: SQLStorage) -> Iterator[AuditEvent]:
    """Every audit row by chain and seq, read in keyset pages (constant memory)."""
    storage.ensure_ready()
    t = audit_table
    after: tuple[str, int] | None = None
    while True:
        stmt = select(*(t.c[n] for n in AUDIT_COLS)).order_by(t.c.chain, t.c.seq).limit(2000)
        if after is not None:
            chain, seq = after
            stmt = stmt.where(or_(t.c.chain > chain, and_(t.c.chain == chain, t.c.seq > seq)))
        rows = storage.read(stmt)
        for r in rows:
            yield audit_from_row(r)
        if len(rows) < 2000:
            return
        after = (rows[-1][3], rows[-1][4])


def audit_checkpoints(storage: SQLStorage) -> list[dict[str, Any]]:
    storage.ensure_ready()
    t = audit_checkpoint_table
    rows = storage.read(select(t.c.chain, t.c.seq, t.c.hash, t.c.ts).order_by(t.c.chain))
    return [{"chain": c, "seq": q, "hash": h, "ts": ts} for c, q, h, ts in rows]


def _query_sessions(storage: SQLStorage, flt: QueryFilter) -> Page:
    storage.ensure_ready()
    t = session_table
    stmt = (
        session_select()
        .where(*session_conds(flt))
        .order_by(t.c.session_start.desc(), t.c.id.desc())
        .limit(flt.limit + 1)
    )
    rows = storage.read(stmt)
    cache: dict[Any, Any] = {}
    records = [session_from_row(r, cache) for r in rows[: flt.limit]]
    more = len(rows) > flt.limit
    last = records[-1] if more else None
    return Page(records, None if last is None else (last.ts, last.id))
