"""Read filters of the SQL backend: a :class:`~.base.QueryFilter` -> the WHERE
conditions and ORDER BY of a kind's table.

The time range and the keyset cursor on ``(ts, id)`` (sessions: on
``(session_start, id)``), the traceability filters (request, session, ids,
actions), and the ``endpoint`` filter as the SQL twin of
:meth:`~leza_middleware.state.labels.EndpointFilter.matches`. Each is written so
that an index of :mod:`.models` serves it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, false, func, or_, text

from ..state.labels import METHODS, ROUTE_LABEL_MAX, EndpointFilter, parse_endpoint
from .base import QueryFilter
from .models import REFUSED_ACTIONS, REFUSED_PREDICATE, access_table, audit_table, session_table
from .sql_codecs import KindSpec

__all__ = ["audit_conds", "event_conds", "keyset_order", "session_conds"]


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


def keyset_order(ts: Any, id_: Any, flt: QueryFilter) -> tuple[Any, Any]:
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


def event_conds(spec: KindSpec, flt: QueryFilter) -> list[Any]:
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


def audit_conds(flt: QueryFilter) -> list[Any]:
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


def session_conds(flt: QueryFilter) -> list[Any]:
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
