"""The SQL backend's purges: events older than a time, traffic rollups of past
hours, audit chains up to a signed purge mark.

Every purge deletes in chunks of at most ``batch_size`` rows, one short
transaction each (:func:`delete_chunks`), so a purge never holds the write
lock long enough to stall the recorder. Device, geo and performer rows stay:
other events share them. Erasure (:mod:`.sql_erase`) deletes with the same
chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, select

from .models import audit_purge_table, audit_table, session_table
from .sql_codecs import KINDS
from .sql_rollups import purge_statements

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = ["audit_purge_marks", "delete_chunks", "purge_audit_chains", "purge_batches"]


def purge_batches(
    storage: SQLStorage, kind: str, before: int, batch_size: int = 10_000
) -> Iterator[int]:
    if kind == "traffic":
        yield from _purge_traffic(storage, before, batch_size)
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
    storage.ensure_ready()
    # One statement per chunk (the derived table keeps MySQL happy): a single
    # write statement takes SQLite's write lock up front instead of upgrading
    # a read transaction, which a concurrent writer would make fail.
    chunk = select(t.c.id).where(old).order_by(order).limit(batch_size)
    stmt = delete(t).where(t.c.id.in_(select(chunk.subquery().c.id)))
    yield from delete_chunks(storage, stmt, batch_size)


def _purge_traffic(storage: SQLStorage, before: int, batch_size: int) -> Iterator[int]:
    """Rollup rows of hours that ended before ``before`` (rounded down to its hour)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    storage.ensure_ready()
    for _table, stmt in purge_statements(before, batch_size):
        yield from delete_chunks(storage, stmt, batch_size)


def delete_chunks(storage: SQLStorage, stmt: Any, batch_size: int) -> Iterator[int]:
    """Run a DELETE of at most ``batch_size`` rows until it deletes fewer."""
    while True:
        with storage.transaction() as conn:
            n = conn.execute(stmt).rowcount
        yield n
        if n < batch_size:
            return


def audit_purge_marks(storage: SQLStorage) -> list[dict[str, Any]]:
    storage.ensure_ready()
    t = audit_purge_table
    cols = ("chain", "seq", "hash", "ts", "purged_at", "sig")
    rows = storage.read(select(*(t.c[n] for n in cols)).order_by(t.c.chain))
    return [dict(zip(cols, r, strict=True)) for r in rows]


def purge_audit_chains(
    storage: SQLStorage, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
) -> Iterator[int]:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    storage.ensure_ready()
    t, a = audit_purge_table, audit_table
    cols = ("chain", "seq", "hash", "ts", "purged_at", "sig")
    with storage.transaction() as conn:  # the marks first, in one transaction
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
        yield from delete_chunks(
            storage, delete(a).where(a.c.id.in_(select(chunk.subquery().c.id))), batch_size
        )
