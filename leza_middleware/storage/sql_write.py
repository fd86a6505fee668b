"""The SQL backend's write path (the recorder thread, hot): a batch -> ONE
transaction of ``executemany`` calls on a raw DBAPI connection kept checked out
of the engine's pool.

:class:`SQLWriter` builds its INSERT statements once from the table metadata
(the dialect's placeholder style and an idempotent conflict clause, see
:data:`.sql_url.CONFLICT`), writes the device, geo and performer rows a batch
references the first time this process sees their key (:class:`.sql_codecs.KnownKeys`),
merges session changes by upsert, moves audit checkpoints with their rows, and
adds the batch's new access rows to the traffic rollups (:mod:`.sql_rollups`)
in the same transaction. A replayed or retried batch is written again with only
the access rows not stored yet, so the rollups count each row once.

On PostgreSQL with psycopg 3 the access rows go in by ``COPY … FROM STDIN``
straight into ``leza_access`` (:meth:`SQLWriter._copy_access`): ~3x less CPU
per row than the pipelined ``executemany``, on both ends. COPY has no ``ON
CONFLICT``: a batch holding an access row that is stored already fails with a
unique violation, is rolled back whole and written again as a replay (the
``executemany`` path, with only the rows not stored yet), as above.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from ..errors import LezaConfigError
from ..events import AccessEvent, AuditEvent, Event, SessionEvent
from .base import checkpoints_of
from .models import (
    access_table,
    audit_checkpoint_table,
    audit_table,
    device_table,
    geo_table,
    performer_table,
    session_table,
)
from .rollups import Aggregator
from .sql_codecs import (
    AUDIT_COLS,
    DEVICE_FIELDS,
    GEO_FIELDS,
    KINDS,
    PERFORMER_COLS,
    SESSION_COLS,
    KnownKeys,
    Refs,
    audit_row,
    device_values,
    geo_values,
    sessions_to_rows,
)
from .sql_rollups import SQLRollups
from .sql_url import CONFLICT, PLACEHOLDERS

__all__ = ["SQLWriter", "bind_none_in_c"]

_ONLY_ACCESS = {AccessEvent}
# Tries of a batch whose access rows another writer keeps inserting meanwhile.
_WRITE_ATTEMPTS = 3
_first = itemgetter(0)  # a session row's key
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


def bind_none_in_c(dbapi: Any) -> None:
    """Let the ``sqlite3`` module bind ``None`` and ``bool`` without its slow path.

    ``sqlite3`` binds ``int``, ``float``, ``str`` and ``bytearray`` straight away;
    any other value (``None``, ``bool``, ``bytes``) first goes through its
    adaptation protocol: a key tuple, an adapter lookup and two failed attribute
    lookups (``__adapt__``, ``__conform__``), about 0.27 µs per value. An access
    row holds six ``None`` in the common case (route, performer, machine id,
    session, headers) and a ``bool`` (``ip_valid``): ~1.5 µs of its ~4.5 µs
    insert (bench/bench_breakdown.py's row micro-benchmark: 25 columns 4.78 ->
    3.22 µs). A registered adapter is found by the first lookup: ``{}.get``
    returns ``None`` for ``None`` (bound as NULL, as before) and ``int`` makes
    ``1``/``0`` of a ``bool`` (what ``sqlite3`` binds for it anyway), both in C.

    The registry is the process's, shared with the app's own ``sqlite3`` use:
    what is stored does not change for anyone, only how fast; an adapter the app
    registered for either type first is kept (and one it registers later wins).
    """
    adapters = getattr(dbapi, "adapters", None)
    protocol = getattr(dbapi, "PrepareProtocol", None)
    register = getattr(dbapi, "register_adapter", None)
    if not isinstance(adapters, dict) or protocol is None or register is None:
        return  # not the stdlib sqlite3 (a DB-API module without its registry)
    if (type(None), protocol) not in adapters:
        register(type(None), _NONE.get)
    if (bool, protocol) not in adapters:
        register(bool, int)


# Never written to: its ``get`` answers None for any key.
_NONE: dict[Any, Any] = {}


class SQLWriter:
    """The write side of one :class:`~.sql.SQLStorage`: its statements, its raw
    connection, the shared-row keys it stored, and the lock writes hold.

    ``lock`` also serialises readers of an in-memory SQLite database (one
    connection for all); ``raw`` is the connection writes use (None until the
    first write and after a failed one); ``known`` the keys this process stored.
    """

    def __init__(self, engine: Engine, *, in_memory: bool, known_keys_limit: int) -> None:
        self.engine = engine
        backend = engine.url.get_backend_name()
        self._backend = backend
        self._sqlite = backend == "sqlite"
        self._in_memory = in_memory
        dialect = engine.dialect
        if self._sqlite:
            bind_none_in_c(dialect.dbapi)
        self._mark = PLACEHOLDERS[dialect.paramstyle]
        self._head, self._tail = CONFLICT[backend]
        self._insert_device = self._insert_sql(device_table, DEVICE_FIELDS)
        self._insert_geo = self._insert_sql(geo_table, GEO_FIELDS)
        self._insert_performer = self._insert_sql(performer_table, PERFORMER_COLS)
        self._insert_kind: dict[tuple[str, int], str] = {}
        self._upsert_session = self._session_upsert_sql()
        self._insert_audit = self._insert_sql(audit_table, AUDIT_COLS)
        self._upsert_checkpoint = self._checkpoint_upsert_sql()
        # PostgreSQL through psycopg 3: access rows by COPY (see _copy_access).
        # (the COPY statement, the driver's unique-violation error) or None.
        self._copy: tuple[str, type[BaseException]] | None = None
        if backend == "postgresql" and dialect.driver == "psycopg":
            from psycopg.errors import UniqueViolation

            quote = dialect.identifier_preparer
            cols = ", ".join(quote.quote(c) for c in KINDS["access"].columns)
            sql = f"COPY {quote.format_table(access_table)} ({cols}) FROM STDIN"
            self._copy = (sql, UniqueViolation)
        # The rollups' multi-row upserts stay within every driver's parameter
        # limit (SQLite >= 3.32: 32766, older 999; PostgreSQL 65535).
        limit = 999 if self._sqlite and sqlite3.sqlite_version_info < (3, 32) else 32766
        self.rollups = SQLRollups(backend, dialect.identifier_preparer, self._mark, limit)
        self.aggregator = Aggregator()

        self.lock = threading.Lock()
        self.raw: PoolProxiedConnection | None = None
        self.known = KnownKeys(known_keys_limit)

    # -- statements (built once)

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
        backend = self._backend
        least, greatest = ("min", "max") if backend == "sqlite" else ("LEAST", "GREATEST")
        cols = ", ".join(quote.quote(c) for c in SESSION_COLS)
        marks = ", ".join([self._mark] * len(SESSION_COLS))
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
        rowcount, summed over the rows: a row whose id is already stored is not
        counted).

        One ``executemany`` of the one-row statement, built once per kind; the
        driver keeps it prepared for the connection (sqlite3's statement cache;
        psycopg 3 prepares it after a few executions and pipelines the batch:
        one round trip). The row tuples go to the driver as they are.

        SQLite: this replaced multi-row ``INSERT … VALUES (…), (…)`` chunks,
        which cost ~4 µs more CPU per row (SQLite runs a multi-row VALUES as a
        co-routine, and the parameters had to be flattened into one list) and,
        measured with a CPU-bound thread sharing the GIL and the core, took no
        less from it despite releasing the GIL once per chunk instead of once
        per row (bench/bench_write_cpu.py).
        """
        cur.executemany(self.insert_statement(kind), rows)
        return int(cur.rowcount)

    def _copy_access(
        self, cur: Any, copy: tuple[str, type[BaseException]], rows: list[tuple[Any, ...]]
    ) -> bool:
        """PostgreSQL: ``COPY`` access ``rows`` into their table; False (the
        transaction is aborted: the caller rolls back and writes the batch again
        as a replay) when one of them is stored already, or repeated in ``rows``.

        Measured against the pipelined ``executemany`` of the one-row INSERT
        (bench/bench_storage.py, 100,000 events with rollups, PostgreSQL 15 on
        the same 2-core machine, medians of 3 runs): CPU per event 16 -> 5.6 µs
        in this process, 28 -> 13.5 µs in the server; twice the events/s. Tried
        and reverted: a temporary table then ``INSERT … SELECT … ON CONFLICT DO
        NOTHING`` (server ~19 µs), binary COPY (no gain), one INSERT from
        ``unnest()`` of column arrays (client ~25 µs: arrays adapt per element).

        psycopg escapes every value for COPY's text format (tab, newline,
        backslash, carriage return) and refuses NUL in text as ``executemany``
        does (a DataError: the recorder then finds and drops the one event).
        """
        sql, unique_violation = copy
        try:
            with cur.copy(sql) as stream:
                write_row = stream.write_row
                for row in rows:
                    write_row(row)
        except unique_violation:
            return False
        return True

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

    # -- a batch

    def write(self, events: Sequence[Event]) -> None:
        """Write a non-empty batch in one transaction (the storage is set up)."""
        groups: dict[str, list[Event]] = {}
        changes: list[SessionEvent] = []
        audits: list[AuditEvent] = []
        if set(map(type, events)) == _ONLY_ACCESS:
            # Steady traffic: a batch of access events and nothing else (one C
            # pass instead of a loop body per event, ~0.05 µs per event).
            groups["access"] = list(events)
            events = ()
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
        with self.lock:
            refs = Refs()
            known = self.known
            batches = [
                (kind, KINDS[kind].to_rows(group, refs, known)) for kind, group in groups.items()
            ]
            session_rows = sessions_to_rows(changes, refs, known) if changes else []
            # Rollups count the access rows this transaction inserts. The common
            # case: the driver's rowcount says all of them. Otherwise (a replayed
            # spill file, a batch retried after a commit whose answer was lost)
            # the transaction is rolled back and written again with the rows
            # whose id is not stored yet, until the rowcount agrees.
            for attempt in range(_WRITE_ATTEMPTS):
                raw = self.raw
                try:
                    if raw is None:
                        raw = self.raw = self.engine.raw_connection()
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
            elif self._copy is not None:
                if not self._copy_access(cur, self._copy, rows):
                    return False
                self.rollups.write(cur, self.aggregator.increments(rows))
                continue
            if self._insert_rows(cur, kind, rows) != len(rows):
                return False
            self.rollups.write(cur, self.aggregator.increments(rows))
        if session_rows:
            # One statement per change: several changes of one session in a
            # batch each merge into the row, in their order (a stable sort).
            # Sessions in key order: workers writing the same sessions lock
            # their rows in one order, never deadlock (PostgreSQL).
            session_rows.sort(key=_first)
            cur.executemany(self._upsert_session, session_rows)
        if audits:
            # The rows and their chains' checkpoints in one transaction:
            # a checkpoint never runs ahead of the rows it vouches for.
            cur.executemany(self._insert_audit, [audit_row(e) for e in audits])
            cur.executemany(
                self._upsert_checkpoint,
                sorted((c["chain"], c["seq"], c["hash"], c["ts"])  # key order, as above
                       for c in checkpoints_of(audits).values()),
            )  # fmt: skip
        return True

    def _write_refs(self, cur: Any, refs: Refs) -> None:
        # In key order: two processes inserting the same new keys then wait for
        # each other in the same order instead of deadlocking (PostgreSQL).
        if refs.devices:
            devices = sorted(refs.devices.items())
            cur.executemany(self._insert_device, [device_values(d) for _, d in devices])
        if refs.geos:
            geos = sorted(refs.geos.items())
            cur.executemany(self._insert_geo, [geo_values(g) for _, g in geos])
        if refs.performers:
            rows = [(k, p.id, p.name, p.email, p.to_json()) for k, p in refs.performers.items()]
            rows.sort()
            cur.executemany(self._insert_performer, rows)

    def _discard_raw(self) -> None:
        """After a failed write: roll back and drop the connection; the next write
        reconnects. Forget known keys too (the database may have been replaced)."""
        raw, self.raw = self.raw, None
        self.known.clear()
        if raw is None:
            return
        with contextlib.suppress(Exception):  # the connection is being thrown away
            raw.rollback()
        if self._in_memory:
            return  # its only connection is the database itself
        with contextlib.suppress(Exception):
            raw.invalidate()

    # -- lifecycle

    def forget_keys(self) -> None:
        """Forget the stored shared-row keys (their rows were deleted: erasure)."""
        with self.lock:
            self.known.clear()

    def after_fork(self) -> None:
        """In a forked child: no connection yet, no keys known, a fresh lock."""
        self.raw = None
        self.known = KnownKeys(self.known.limit)
        self.lock = threading.Lock()

    def close_connection(self) -> None:
        """Close the write connection (the caller holds :attr:`lock`)."""
        raw, self.raw = self.raw, None
        if raw is not None:
            with contextlib.suppress(Exception):  # closing anyway
                raw.close()
