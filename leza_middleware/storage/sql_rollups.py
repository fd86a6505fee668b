"""Traffic rollups on SQL (SQLite, PostgreSQL): the upsert the write path adds to
its transaction, the grouped reads ``SQLStorage.traffic()`` answers with, and
their batched purge.

Write: one ``INSERT … ON CONFLICT (ts, method, route) DO UPDATE SET n = n +
excluded.n, …`` per table and batch (multi-row on SQLite, pipelined
``executemany`` on PostgreSQL), rows sorted by key. The increment happens in
the database, under its row lock: workers adding to the same minute and
endpoint at once lose nothing.

Read: a window ``[start, end)`` of whole minutes is its whole hours from
``leza_traffic_hour`` (when the bucket is a multiple of an hour) and the
minutes at either end from ``leza_traffic_minute``; each part is one
``GROUP BY bucket, method, route`` over an index range of its table, summed
in the database; Python only folds the few grouped rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from sqlalchemy import Table, delete, func, literal_column, select, tuple_

from ..state.traffic import HOUR, LAST_SEEN, Traffic, build_traffic
from .models import TRAFFIC_COLUMNS, traffic_hour_table, traffic_minute_table, traffic_tables
from .rollups import Increments, fold_hours, upsert_rows

__all__ = ["SQLRollups"]

_VALUES = TRAFFIC_COLUMNS[3:]  # the vector's columns
_KEY = ("ts", "method", "route")


class SQLRollups:
    """The rollup statements of one SQL storage (its dialect and placeholder)."""

    def __init__(self, backend: str, quote: Any, mark: str, max_params: int) -> None:
        if backend not in ("sqlite", "postgresql"):  # pragma: no cover - SQLStorage refuses them
            raise ValueError(f"traffic rollups need SQLite or PostgreSQL, not {backend}")
        self.sqlite = backend == "sqlite"
        greatest = "max" if self.sqlite else "GREATEST"
        self._upserts: dict[tuple[str, int], str] = {}
        self._quote = quote
        self._mark = mark
        self._greatest = greatest
        # Rows per multi-row statement (SQLite): a power of two within the limit.
        per_row = len(TRAFFIC_COLUMNS)
        self._chunk = 1 << (min(256, max_params // per_row).bit_length() - 1)

    def upsert_sql(self, table: Table, rows: int = 1) -> str:
        key = (table.name, rows)
        sql = self._upserts.get(key)
        if sql is None:
            q = self._quote
            name = q.format_table(table)
            cols = ", ".join(q.quote(c) for c in TRAFFIC_COLUMNS)
            one = f"({', '.join([self._mark] * len(TRAFFIC_COLUMNS))})"
            sets = []
            for i, c in enumerate(_VALUES):
                col = q.quote(c)
                if i == LAST_SEEN:
                    sets.append(f"{col} = {self._greatest}({name}.{col}, excluded.{col})")
                else:
                    sets.append(f"{col} = {name}.{col} + excluded.{col}")
            conflict = ", ".join(q.quote(c) for c in _KEY)
            sql = self._upserts[key] = (
                f"INSERT INTO {name} ({cols}) VALUES {', '.join([one] * rows)} "
                f"ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(sets)}"
            )
        return sql

    def write(self, cur: Any, minutes: Increments) -> None:
        """Add per-minute increments (and their hours) in the caller's transaction."""
        if not minutes:
            return
        for table, increments in (
            (traffic_minute_table, minutes),
            (traffic_hour_table, fold_hours(minutes)),
        ):
            rows = upsert_rows(increments)
            if not self.sqlite:
                cur.executemany(self.upsert_sql(table), rows)
                continue
            # SQLite: one statement per chunk (the driver releases the GIL per
            # statement step: per row with executemany; see SQLStorage._insert_rows).
            i, n = 0, len(rows)
            while i < n:
                size = self._chunk
                while size > n - i:
                    size >>= 1
                part = rows[i : i + size]
                cur.execute(self.upsert_sql(table, size), list(chain.from_iterable(part)))
                i += size


def _grouped(table: Table, lo: int, hi: int, step: int) -> Any:
    """``GROUP BY`` bucket, method, route of ``table`` over ``lo <= ts < hi``."""
    t = table
    own = 60_000_000 if table is traffic_minute_table else HOUR
    if step == own:
        bucket: Any = t.c.ts
    else:  # an int of ours, inlined: PostgreSQL must see the same expression in GROUP BY
        s: Any = literal_column(str(int(step)))
        bucket = t.c.ts - ((t.c.ts % s) + s) % s
    sums = [func.max(t.c[c]) if i == LAST_SEEN else func.sum(t.c[c]) for i, c in enumerate(_VALUES)]
    return (
        select(bucket, t.c.method, t.c.route, *sums)
        .where(t.c.ts >= lo, t.c.ts < hi)
        .group_by(bucket, t.c.method, t.c.route)
    )


def traffic_statements(start: int, end: int, step: int) -> list[Any]:
    """The grouped SELECTs that cover ``[start, end)`` (minute-aligned)."""
    if step % HOUR == 0:
        first_hour = -(-start // HOUR) * HOUR
        last_hour = end - end % HOUR
        if first_hour < last_hour:
            parts = [_grouped(traffic_hour_table, first_hour, last_hour, step)]
            if start < first_hour:
                parts.append(_grouped(traffic_minute_table, start, first_hour, step))
            if last_hour < end:
                parts.append(_grouped(traffic_minute_table, last_hour, end, step))
            return parts
    return [_grouped(traffic_minute_table, start, end, step)]


def traffic_from(results: Sequence[Sequence[Any]], start: int, end: int, step: int) -> Traffic:
    """Fold the rows of :func:`traffic_statements` into a :class:`Traffic`."""
    rows = ((int(r[0]), r[1], r[2], r[3:]) for r in chain.from_iterable(results))
    return build_traffic(rows, start, end, step)


def purge_statements(before: int, batch_size: int) -> Iterator[tuple[Table, Any]]:
    """For each rollup table: a DELETE of at most ``batch_size`` rows older than
    ``before`` (rounded down to its hour, so both tables keep the same hours)."""
    cutoff = before - before % HOUR
    for t in traffic_tables:
        chunk = select(t.c.ts, t.c.method, t.c.route).where(t.c.ts < cutoff)
        chunk = chunk.order_by(t.c.ts).limit(batch_size)
        yield t, delete(t).where(tuple_(t.c.ts, t.c.method, t.c.route).in_(chunk))
