"""The ClickHouse backend's reads as SQL text with bound parameters: a
:class:`~.base.QueryFilter` -> WHERE, and the page, count, tail and purge
statements built on it.

Every read keeps one row per event id (``LIMIT 1 BY id``, ``DISTINCT id``):
a replayed batch may sit in the table twice until a background merge folds it
(:mod:`.clickhouse_schema`), and no read may show or count it twice.

Values are bound through the driver's ``%(name)s`` parameters (it quotes
them); only column and table names from :mod:`.clickhouse_schema` are spliced.

Sharded (a ``Distributed`` table), a shard would apply ``LIMIT`` before
``LIMIT 1 BY id`` and send too few rows; so each shard runs the whole
statement (:data:`WHOLE_ON_SHARDS`: the copies of an id are all on one
shard, see :func:`.clickhouse_schema.create_distributed`) and the entry server
merges the shards' answers in an outer statement (:func:`merged`).
"""

from __future__ import annotations

from typing import Any

from ..state.labels import METHODS, ROUTE_LABEL_MAX, EndpointFilter, parse_endpoint
from .base import QueryFilter, check_endpoint_kind
from .clickhouse_schema import ChKind

__all__ = ["SLICE_US", "WHOLE_ON_SHARDS", "Where", "count_sql", "merged", "page_sql",
           "read_after_sql", "slices", "where"]  # fmt: skip

#: Sharded reads: every shard runs the whole statement; the entry server only
#: concatenates (and the outer statement of :func:`merged` sorts and cuts).
WHOLE_ON_SHARDS = {"distributed_group_by_no_merge": 1}

_KNOWN_METHODS = tuple(sorted(METHODS))


class Where:
    """WHERE conditions and their parameters, added one at a time."""

    def __init__(self) -> None:
        self.conds: list[str] = []
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"

    def add(self, cond: str) -> None:
        self.conds.append(cond)

    def sql(self) -> str:
        return " AND ".join(self.conds) if self.conds else "1"


def _range(w: Where, flt: QueryFilter) -> None:
    """Inclusive time range and the keyset cursor on ``(ts, id)`` (rows after it
    when ``ascending``); the redundant ``ts`` bound is what the primary key uses."""
    if flt.since is not None:
        w.add(f"ts >= {w.bind(flt.since)}")
    if flt.until is not None:
        w.add(f"ts <= {w.bind(flt.until)}")
    if flt.cursor is not None:
        cts, cid = flt.cursor
        t, i = w.bind(cts), w.bind(cid)
        if flt.ascending:
            w.add(f"ts >= {t}")
            w.add(f"(ts > {t} OR (ts = {t} AND id > {i}))")
        else:
            w.add(f"ts <= {t}")
            w.add(f"(ts < {t} OR (ts = {t} AND id < {i}))")


def _in(w: Where, column: str, values: tuple[str, ...] | list[str]) -> None:
    # ClickHouse rejects an empty IN (); an empty set matches nothing.
    w.add(f"{column} IN {w.bind(tuple(values))}" if values else "0")


def _endpoint(w: Where, ep: EndpointFilter) -> None:
    """SQL twin of :meth:`EndpointFilter.matches` (as in :mod:`.sql_filters`)."""
    if ep.method == "OTHER":
        w.add(f"method NOT IN {w.bind(_KNOWN_METHODS)}")
    elif ep.method is not None:
        w.add(f"method = {w.bind(ep.method)}")
    if ep.unmatched:
        w.add("route IS NULL")
        return
    prefix = ep.prefix
    if prefix is None:
        w.add(f"route = {w.bind(ep.route)}")
        return
    # A cut label: also the longer templates it stands for. The prefix is
    # compared as bytes (a UTF-8 prefix of code points is a byte prefix):
    # 18.16's substringUTF8 cuts 4-byte characters.
    n = len(prefix.encode("utf-8"))
    w.add(
        f"(route = {w.bind(ep.route)} OR (lengthUTF8(assumeNotNull(route)) > {ROUTE_LABEL_MAX}"
        f" AND substring(assumeNotNull(route), 1, {n}) = {w.bind(prefix)}))"
    )


def where(kind: str, spec: ChKind, flt: QueryFilter) -> Where:
    """The WHERE of ``flt`` on ``spec``'s table (every filter but entity ones,
    which select audit rows: this backend has none)."""
    check_endpoint_kind(kind, flt)
    w = Where()
    _range(w, flt)
    if flt.action is not None:
        w.add(f"action = {w.bind(flt.action)}")
    if flt.actions is not None:
        _in(w, "action", flt.actions)
    if flt.performer_id is not None:
        w.add(f"{spec.performer_column} = {w.bind(flt.performer_id)}")
    if flt.no_performer:
        w.add(f"{spec.performer_column} IS NULL")
    for value, column in ((flt.request_id, spec.request_column),
                          (flt.session_id, spec.session_column)):  # fmt: skip
        if value is not None:
            w.add("0" if column is None else f"{column} = {w.bind(value)}")
    if flt.ids is not None:
        _in(w, "id", flt.ids)
    if flt.endpoint is not None:
        _endpoint(w, parse_endpoint(flt.endpoint))
    if flt.entity_type is not None or flt.entity_id is not None:
        w.add("0")  # audit rows only
    return w


def page_sql(table: str, spec: ChKind, w: Where, flt: QueryFilter) -> str:
    """One page: ``limit + 1`` rows (the extra one says whether more follow),
    newest first (oldest first when ``ascending``), one row per id."""
    order = "ASC" if flt.ascending else "DESC"
    return (
        f"SELECT {spec.names} FROM {table} WHERE {w.sql()} "
        f"ORDER BY ts {order}, id {order} LIMIT 1 BY id LIMIT {int(flt.limit) + 1}"
    )


def merged(sql: str, order: str, limit: int) -> str:
    """``sql``'s rows from every shard, in ``order``, the first ``limit``."""
    return f"SELECT * FROM ({sql}) ORDER BY {order} LIMIT {int(limit)}"


def count_sql(table: str, w: Where, cap: int | None) -> str:
    """Distinct ids matching, at most ``cap + 1`` of them when capped (sharded,
    with :data:`WHOLE_ON_SHARDS`: the shards' sum, up to ``cap + 1`` each)."""
    limit = "" if cap is None else f" LIMIT {int(cap) + 1}"
    return f"SELECT count() FROM (SELECT DISTINCT id FROM {table} WHERE {w.sql()}{limit})"


def read_after_sql(
    table: str, spec: ChKind, after: tuple[int, str] | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """Oldest first after ``(ts, id)``: a forward range of the primary key."""
    flt = QueryFilter(cursor=after, ascending=True, limit=max(1, limit))
    w = Where()
    _range(w, flt)
    sql = (
        f"SELECT {spec.names} FROM {table} WHERE {w.sql()} "
        f"ORDER BY ts ASC, id ASC LIMIT 1 BY id LIMIT {int(limit)}"
    )
    return sql, w.params


#: Pages are read a time slice at a time, nearest the start of the page first,
#: each slice 4x wider than the last (1 h, 4 h, … ~43 days, then the rest):
#: 18.16 cannot read a primary-key range in order (``optimize_read_in_order``
#: came in 19.x), so ``ORDER BY ts DESC LIMIT n`` sorts every row of the range
#: it is given — over 10M rows, seconds for the 50 newest. A busy table fills
#: a page from the first slice; a sparse filter costs a few more small reads.
SLICE_US = 3_600_000_000
SLICE_GROWTH = 4
SLICE_STEPS = 6


def slices(flt: QueryFilter, now_us: int) -> list[tuple[int | None, int | None]]:
    """The ``(since, until)`` (inclusive µs, None: open) of each slice of
    ``flt``'s range in reading order: newest first (oldest first when
    ``ascending``), together exactly the range. One open slice when an
    ascending read has no start (it begins at the oldest row, wherever that is)."""
    since, until = flt.since, flt.until
    if flt.cursor is not None:  # the rows past the cursor: the range shrinks to them
        cts = flt.cursor[0]
        if flt.ascending:
            since = cts if since is None else max(since, cts)
        else:
            until = cts if until is None else min(until, cts)
    out: list[tuple[int | None, int | None]] = []
    width = SLICE_US
    if flt.ascending:
        if since is None:
            return [(None, until)]
        start = since
        for _ in range(SLICE_STEPS):
            end = start + width - 1
            if until is not None and end >= until:
                break
            out.append((start, end))
            start, width = end + 1, width * SLICE_GROWTH
        out.append((start, until))
        return out
    anchor = now_us if until is None else until
    hi: int | None = until  # the newest slice is open above when the range is
    for _ in range(SLICE_STEPS):
        lo = anchor - width + 1
        if since is not None and lo <= since:
            break
        out.append((lo, hi))
        anchor, hi, width = lo - 1, lo - 1, width * SLICE_GROWTH
    out.append((since, hi))
    return out
