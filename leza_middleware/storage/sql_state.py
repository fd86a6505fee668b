"""STATE's reads on SQL: aggregates and index seeks, so that the services board
and "who is on" cost about the same over 10,000,000 stored events as over ten.

* **Who is on**: active sessions (``ended_at IS NULL``, the ended-at index)
  counted per country and per device type with ``GROUP BY`` over the session
  table joined to the geo and device rows; distinct performers of the
  sessions seen in a window (the active ones and those ended since it began,
  both from the ended-at index) counted in SQL. Their cost grows with the
  sessions active or ended in the window, never with older sessions or with
  the access events.
* **Check names**: a skip scan of the ``(check_name, ts)`` index (a recursive
  query that seeks the next name after each one), one seek per check.
* **Sparklines**: per slot, its newest probes of one check: one statement of
  one index seek per slot (a ``UNION ALL``), whatever the number of probes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, distinct, func, select, text, union_all

from ..events import CheckEvent
from ..state.services import MAX_CHECKS, SAMPLES, CheckReads, Probe
from .models import check_table, device_table, geo_table, session_table
from .sql import SQLStorage

__all__ = ["SQLCheckReads", "session_summary"]


def _table(storage: SQLStorage) -> str:
    return storage.engine.dialect.identifier_preparer.format_table(check_table)


@functools.lru_cache(maxsize=8)
def _names_sql(table: str) -> TextClause:
    # Each step seeks the next name after the last one found; the outer query
    # keeps the names with a probe since :since (one more seek each).
    return text(
        "WITH RECURSIVE names(name) AS ("
        f" SELECT (SELECT check_name FROM {table} ORDER BY check_name LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT check_name FROM {table} WHERE check_name > names.name"
        " ORDER BY check_name LIMIT 1) FROM names WHERE names.name IS NOT NULL"
        ") SELECT name FROM names WHERE name IS NOT NULL AND EXISTS ("
        f"SELECT 1 FROM {table} c WHERE c.check_name = names.name AND c.ts >= :since) "
        f"LIMIT {MAX_CHECKS}"
    )


@functools.lru_cache(maxsize=32)
def _samples_sql(table: str, n: int) -> TextClause:
    parts = [
        f"SELECT {i} AS k, ts, latency_ms, ok FROM (SELECT ts, latency_ms, ok FROM {table} "
        f"WHERE check_name = :c AND ts >= :a{i} AND ts < :b{i} ORDER BY ts DESC "
        f"LIMIT {SAMPLES}) s{i}"
        for i in range(n)
    ]
    return text(" UNION ALL ".join(parts))


@functools.lru_cache(maxsize=8)
def _before_sql(table: str) -> TextClause:
    # The check's name written so that no index on it applies: the action index
    # then reads state changes newest first (a few rows), where the name index
    # would read every probe back to the last change (months of them).
    columns = "id, ts, check_name, ok, state, previous, latency_ms, error, app"
    return text(
        f"SELECT {columns} FROM {table} WHERE action = 'state_change' AND ts < :before "
        "AND check_name || '' = :c ORDER BY ts DESC LIMIT 1"
    )


class SQLCheckReads(CheckReads):
    """:class:`~leza_middleware.state.services.CheckReads` with index seeks."""

    storage: SQLStorage

    def __init__(self, storage: SQLStorage) -> None:
        super().__init__(storage)

    def names(self, since: int) -> list[str]:
        self.storage.ensure_ready()
        rows = self.storage.read(_names_sql(_table(self.storage)).bindparams(since=since))
        return [str(r[0]) for r in rows]

    def before(self, name: str, ts: int) -> CheckEvent | None:
        self.storage.ensure_ready()
        rows = self.storage.read(_before_sql(_table(self.storage)).bindparams(before=ts, c=name))
        if not rows:
            return self._latest(name, ts, None)  # no change stored: the latest probe (one seek)
        i, t, check, ok, state, previous, latency, error, app = rows[0]
        return CheckEvent(id=i, ts=int(t), check=check, ok=bool(ok), state=state,
                          previous=previous, latency_ms=latency, error=error, app=app)  # fmt: skip

    def samples(self, name: str, slots: Sequence[tuple[int, int]]) -> list[list[Probe]]:
        if not slots:
            return []
        self.storage.ensure_ready()
        params: dict[str, Any] = {"c": name}
        for i, (a, b) in enumerate(slots):
            params[f"a{i}"], params[f"b{i}"] = a, b
        stmt = _samples_sql(_table(self.storage), len(slots)).bindparams(**params)
        out: list[list[Probe]] = [[] for _ in slots]
        for k, ts, latency, ok in self.storage.read(stmt):
            out[int(k)].append((int(ts), None if latency is None else float(latency), bool(ok)))
        return out


def session_summary(storage: SQLStorage, since: int, until: int) -> dict[str, Any]:
    """Active sessions per country and device type, and the distinct performers of the
    sessions seen in ``[since, until]`` (started by ``until``, last seen from ``since``)."""
    storage.ensure_ready()
    s, g, d = session_table, geo_table, device_table
    active = s.c.ended_at.is_(None)
    countries = storage.read(
        select(g.c.country_code, func.max(g.c.country_name), func.count())
        .select_from(s.outerjoin(g, g.c.key == s.c.geo_key))
        .where(active)
        .group_by(g.c.country_code)
    )
    devices = storage.read(
        select(d.c.device_type, func.count())
        .select_from(s.outerjoin(d, d.c.key == s.c.device_key))
        .where(active)
        .group_by(d.c.device_type)
    )

    # Seen in the window: active, or ended since it began (a session ends after
    # its last sighting). Two reads of the ended-at index, never the whole table;
    # ``+ 0`` keeps the start and performer indexes (which span every session) out.
    def seen(ended: Any) -> Any:
        return select(s.c.performer_id.label("p")).where(
            ended,
            s.c.performer_id.is_not(None),
            (s.c.session_start + 0) <= until,
            (s.c.last_seen + 0) >= since,
        )

    both = union_all(seen(s.c.ended_at.is_(None)), seen(s.c.ended_at >= since)).subquery()
    performers = storage.read(select(func.count(distinct(both.c.p))))
    return {
        "countries": [(code or "", name or "", int(n)) for code, name, n in countries],
        "devices": [(kind or "", int(n)) for kind, n in devices],
        "performers": int(performers[0][0]),
    }
