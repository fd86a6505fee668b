"""Traffic rollups on SQL (SQLite, PostgreSQL): the upsert the write path adds to
its transaction, the hourly sums, the grouped reads ``SQLStorage.traffic()``
answers with, and their batched purge.

Write: one ``INSERT … ON CONFLICT (ts, method, route) DO UPDATE SET n = n +
excluded.n, …`` of the batch's minute rows (multi-row statements on both
databases), sorted by key. The increment happens in the
database, under its row lock: workers adding to the same minute and endpoint
at once lose nothing.

Hours: ``leza_traffic_hour`` holds each past hour's minutes summed once, by
:func:`settle` (the recorder calls it every minute), so the write path upserts
one table, not two. ``leza_traffic_mark.hours_until`` says up to where the
hour rows are complete. A write whose minutes fall before that mark (a spill
file replayed late) adds to their hour rows too. The two cannot miss each
other: a writer reads the mark *after* its minute upsert, in its transaction,
and :func:`settle` sums minutes only once no writer holds uncommitted minute
rows (PostgreSQL: a ``SHARE`` lock on the minute table, which waits for them
and holds new ones back; SQLite: the database's write lock) — a writer that
read the old mark has committed its minutes before they are summed, and one
that comes after reads the new mark.

Read: a window ``[start, end)`` of whole minutes is its whole hours before the
mark from ``leza_traffic_hour`` (when the bucket is a multiple of an hour) and
the rest from ``leza_traffic_minute``; each part is one ``GROUP BY bucket,
method, route`` over an index range of its table, summed in the database;
Python only folds the few grouped rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Table,
    cast,
    delete,
    func,
    literal_column,
    select,
    text,
    tuple_,
)

from ..state.traffic import DAY, HOUR, LAST_SEEN, MINUTE, Traffic, build_traffic
from .models import (
    TRAFFIC_COLUMNS,
    traffic_hour_table,
    traffic_mark_table,
    traffic_minute_table,
    traffic_tables,
)
from .rollups import Increments, fold_hours, upsert_rows

__all__ = [
    "SETTLE_GRACE",
    "SQLRollups",
    "create_mark",
    "purge_statements",
    "read_mark",
    "settle",
    "traffic_from",
    "traffic_statements",
]

_VALUES = TRAFFIC_COLUMNS[3:]  # the vector's columns
_KEY = ("ts", "method", "route")
#: An hour is summed once it ended this long ago (µs): batches of its last
#: minutes have landed by then, and need not add to its hour row themselves.
SETTLE_GRACE = 2 * MINUTE


class SQLRollups:
    """The rollup statements of one SQL storage (its dialect and placeholder)."""

    def __init__(self, backend: str, quote: Any, mark: str, max_params: int) -> None:
        if backend not in ("sqlite", "postgresql"):  # pragma: no cover - SQLStorage refuses them
            raise ValueError(f"traffic rollups need SQLite or PostgreSQL, not {backend}")
        self.sqlite = backend == "sqlite"
        self._upserts: dict[tuple[str, int], str] = {}
        self._quote = quote
        self._mark = mark
        self._greatest = "max" if self.sqlite else "GREATEST"
        # Rows per multi-row statement (SQLite): a power of two within the limit.
        self._chunk = 1 << (min(256, max_params // len(TRAFFIC_COLUMNS)).bit_length() - 1)
        q = quote
        self._read_mark = (
            f"SELECT {q.quote('hours_until')} FROM {q.format_table(traffic_mark_table)} "
            f"WHERE {q.quote('id')} = 1"
        )

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
        """Add per-minute increments in the caller's transaction, and to the hour
        rows of those before the mark (see the module documentation)."""
        if not minutes:
            return
        keys = sorted(minutes)  # the same lock order in every writer
        params: list[Any] = []
        for k in keys:
            params += k
            params += minutes[k]
        self._execute(cur, traffic_minute_table, params, len(keys))
        cur.execute(self._read_mark)  # after the upsert: see the module documentation
        found = cur.fetchone()
        settled = 0 if found is None else int(found[0])
        if keys[0][0] >= settled:
            return  # the usual case: nothing before the mark
        late = fold_hours({k: minutes[k] for k in keys if k[0] < settled})
        rows = upsert_rows(late)
        self._execute(cur, traffic_hour_table, list(chain.from_iterable(rows)), len(rows))

    def _execute(self, cur: Any, table: Table, params: list[Any], n: int) -> None:
        """One multi-row statement per chunk of a power-of-two size (a few
        statement shapes, each prepared once). SQLite: the driver releases the GIL
        per statement step, per row with ``executemany``. PostgreSQL: psycopg's
        ``executemany`` enters and leaves pipeline mode for the one or two rows of
        a batch: ~1.5 µs of client CPU per access event (a 512-event batch), where
        one ``execute`` costs ~0.3 (bench/bench_storage.py)."""
        width = len(TRAFFIC_COLUMNS)
        i = 0
        while i < n:
            size = self._chunk
            while size > n - i:
                size >>= 1
            sql, part = self.upsert_sql(table, size), params[i * width : (i + size) * width]
            if self.sqlite:
                cur.execute(sql, part)
            else:  # psycopg: prepared on the connection from its first use
                cur.execute(sql, part, prepare=True)
            i += size


# --------------------------------------------------------------------------- the mark


def create_mark(conn: Connection, hours_until: int = 0) -> None:
    """The mark's row, unless it exists (a fresh database: no hour summed yet)."""
    t = traffic_mark_table
    if conn.execute(select(t.c.id).where(t.c.id == 1)).first() is None:
        conn.execute(t.insert().values(id=1, hours_until=hours_until))


def read_mark(conn: Connection) -> int:
    """Where the hour rows stop being complete (0 without a mark: none are)."""
    t = traffic_mark_table
    found = conn.execute(select(t.c.hours_until).where(t.c.id == 1)).scalar()
    return 0 if found is None else int(found)


def _floor(column: str, step: int) -> str:
    return f"(CASE WHEN {column} >= 0 THEN ({column} / {step}) * {step} " \
           f"ELSE (({column} - {step - 1}) / {step}) * {step} END)"  # fmt: skip


def _settle_sql(quote: Any) -> str:
    """Sum the minutes of ``[:lo, :hi)`` into their hour rows (replacing any)."""
    q = quote
    cols = ", ".join(q.quote(c) for c in TRAFFIC_COLUMNS)
    sums = ", ".join(
        f"MAX({q.quote(c)})" if i == LAST_SEEN else f"SUM({q.quote(c)})"
        for i, c in enumerate(_VALUES)
    )
    sets = ", ".join(f"{q.quote(c)} = excluded.{q.quote(c)}" for c in _VALUES)
    conflict = ", ".join(q.quote(c) for c in _KEY)
    ts = q.quote("ts")
    return (
        f"INSERT INTO {q.format_table(traffic_hour_table)} ({cols}) "
        f"SELECT {_floor(ts, HOUR)}, {q.quote('method')}, {q.quote('route')}, {sums} "
        f"FROM {q.format_table(traffic_minute_table)} WHERE {ts} >= :lo AND {ts} < :hi "
        f"GROUP BY 1, 2, 3 ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
    )


def settle(engine: Any, now_us: int | None = None, *, max_days: int = 1) -> int:
    """Sum the minutes of the hours that ended (:data:`SETTLE_GRACE` ago) into the
    hour table and move the mark past them, a day of minutes per transaction.

    Idempotent, safe in several processes at once (the second finds the work
    done). Cheap when there is nothing to do: one read of the mark, no lock.
    Returns how many hours were summed (from the first with minutes to the last).
    """
    now = time.time_ns() // 1000 if now_us is None else now_us
    target = (now - SETTLE_GRACE) - (now - SETTLE_GRACE) % HOUR
    with engine.connect() as conn:
        if read_mark(conn) >= target:
            return 0
    summed = 0
    m, t = traffic_minute_table, traffic_mark_table
    while True:
        with engine.begin() as conn:
            quote = conn.dialect.identifier_preparer
            if conn.dialect.name == "sqlite":  # the write lock first (a no-op write)
                conn.execute(t.update().where(t.c.id == 1).values(hours_until=t.c.hours_until))
            else:  # waits for writers with uncommitted minutes; holds new ones back
                conn.execute(text(f"LOCK TABLE {quote.format_table(m)} IN SHARE MODE"))
            create_mark(conn)
            old = read_mark(conn)
            if old >= target:
                return summed
            first = conn.execute(select(func.min(m.c.ts)).where(m.c.ts >= old)).scalar()
            if first is None or int(first) >= target:
                hi = target  # no minute to sum: the mark moves on
            else:
                lo = int(first) - int(first) % HOUR  # >= old: both are hour boundaries
                hi = min(target, lo + max_days * DAY)
                conn.execute(text(_settle_sql(quote)), {"lo": lo, "hi": hi})
                summed += (hi - lo) // HOUR
            conn.execute(t.update().where(t.c.id == 1).values(hours_until=hi))
            if hi >= target:
                return summed


# --------------------------------------------------------------------------- reads


def _grouped(table: Table, lo: int, hi: int, step: int) -> Any:
    """``GROUP BY`` bucket, method, route of ``table`` over ``lo <= ts < hi``."""
    t = table
    own = MINUTE if table is traffic_minute_table else HOUR
    if step == own:
        bucket: Any = t.c.ts
    else:  # an int of ours, inlined: PostgreSQL must see the same expression in GROUP BY
        s: Any = literal_column(str(int(step)))
        bucket = t.c.ts - ((t.c.ts % s) + s) % s
    # Every sum as BIGINT: PostgreSQL's SUM of a BIGINT is NUMERIC (a Decimal).
    sums = [
        func.max(t.c[c]) if i == LAST_SEEN else cast(func.sum(t.c[c]), BigInteger)
        for i, c in enumerate(_VALUES)
    ]
    return (
        select(bucket, t.c.method, t.c.route, *sums)
        .where(t.c.ts >= lo, t.c.ts < hi)
        .group_by(bucket, t.c.method, t.c.route)
    )


def traffic_statements(start: int, end: int, step: int, settled: int) -> list[Any]:
    """The grouped SELECTs that cover ``[start, end)`` (minute-aligned), given the
    mark ``settled``: whole hours before it from the hour table, the rest from
    the minute table. Disjoint ranges: a batch written between two of them is
    counted by one or by none, never twice."""
    if step % HOUR == 0:
        first_hour = -(-start // HOUR) * HOUR
        last_hour = min(end - end % HOUR, settled - settled % HOUR)
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
    rows = ((int(r[0]), r[1], r[2], list(r[3:])) for r in chain.from_iterable(results))
    return build_traffic(rows, start, end, step)


def purge_statements(before: int, batch_size: int) -> Iterator[tuple[Table, Any]]:
    """For each rollup table: a DELETE of at most ``batch_size`` rows older than
    ``before`` (rounded down to its hour, so both tables keep the same hours)."""
    cutoff = before - before % HOUR
    for t in traffic_tables:
        chunk = select(t.c.ts, t.c.method, t.c.route).where(t.c.ts < cutoff)
        chunk = chunk.order_by(t.c.ts).limit(batch_size)
        yield t, delete(t).where(tuple_(t.c.ts, t.c.method, t.c.route).in_(chunk))
