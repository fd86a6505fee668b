"""SQL backend: SQLite (default) and PostgreSQL through SQLAlchemy (MySQL/MariaDB
URLs are accepted too, but not covered by the test suite).

Write path (the recorder thread, hot): each batch is ONE transaction of
``executemany`` calls on a raw DBAPI connection the storage keeps checked out
of the engine's pool, with INSERT statements built once from the table
metadata (the dialect's placeholder style and an idempotent conflict clause).
No ORM objects, no SQLAlchemy statement compilation per row: an event becomes
a plain tuple by attribute reads. On PostgreSQL (psycopg 3) the access rows
go in by ``COPY`` instead (:mod:`.sql_write`).

Device, geo and performer values are shared by many events; they are stored
once per key in their own tables (inserted the first time this process sees
the key, idempotently) and the access row only references them.

Read path: SQLAlchemy Core ``select()`` with LEFT JOINs, keyset pagination
on ``(ts, id)`` and the indexes defined in :mod:`.models`.

This module holds :class:`SQLStorage` itself: its engine and connections, its
set-up, and the :class:`~.base.Storage` contract wired to the modules that do
each part:

* :mod:`.sql_url`: URL checks, password hiding, engine options;
* :mod:`.sql_codecs`: each kind's event <-> row (:data:`KINDS`);
* :mod:`.sql_filters`: a :class:`~.base.QueryFilter` -> WHERE clauses;
* :mod:`.sql_write`: the write path (:class:`~.sql_write.SQLWriter`);
* :mod:`.sql_read`: queries, pages, counts, sightings, traffic;
* :mod:`.sql_purge`: purges in chunks; :mod:`.sql_erase`: erasure, audit redaction;
* :mod:`.sql_rollups`: the traffic rollups' statements; :mod:`.sql_state`: STATE's reads.

Those modules use SQLStorage's package-internal methods (:meth:`~SQLStorage.ensure_ready`,
:meth:`~SQLStorage.read`, :meth:`~SQLStorage.connection`,
:meth:`~SQLStorage.transaction`, :meth:`~SQLStorage.forget_known_keys`), never its
private members.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.schema import CreateIndex, CreateTable

from ..errors import LezaConfigError
from ..events import AuditEvent, CheckEvent, Event, decode_chain, encode_chain, performer_key
from ..performer import Performer
from ..state.traffic import Traffic
from . import sql_erase, sql_purge, sql_read
from .base import Capability, Page, QueryFilter, Sighting, Storage
from .models import metadata
from .rollups import Aggregator
from .sql_codecs import KINDS, KindSpec, KnownKeys, Refs
from .sql_rollups import SQLRollups, create_mark, settle
from .sql_url import (
    SUPPORTED_URLS,
    describe_sql_url,
    parse_sql_url,
    redact_url,
    set_sqlite_pragmas,
    sql_engine_options,
    sqlite_in_memory,
)
from .sql_write import SQLWriter

__all__ = [
    "KINDS",
    "SUPPORTED_URLS",
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
        self._in_memory = self._sqlite and sqlite_in_memory(self.url)
        self.shared = not self._in_memory

        options = sql_engine_options(self.url, self._in_memory, engine_options)
        try:
            self.engine: Engine = create_engine(self.url, **options)
        except (ArgumentError, TypeError, ValueError) as exc:
            raise LezaConfigError(
                f"storage URL {self.describe_url()!r}: invalid engine options ({exc})"
            ) from None
        if self._sqlite:
            event.listen(self.engine, "connect", self._on_sqlite_connect)

        self._writer = SQLWriter(
            self.engine, in_memory=self._in_memory, known_keys_limit=known_keys_limit
        )
        # An in-memory SQLite database is one connection shared by writer and
        # readers: serialise them so a reader's rollback cannot hit a write.
        self._read_lock: threading.Lock | None = self._writer.lock if self._in_memory else None
        self._ready = False

    # -- for the sql_* modules (package-internal)

    def ensure_ready(self) -> None:
        """:meth:`setup`, unless it already ran in this process."""
        if not self._ready:
            self.setup()

    def read(self, stmt: Any) -> list[Any]:
        """The rows of one SELECT, on a pooled connection."""
        if self._read_lock is not None:
            with self._read_lock, self.engine.connect() as conn:
                return list(conn.execute(stmt).all())
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection (the only one, serialised, for in-memory SQLite)."""
        if self._read_lock is not None:
            with self._read_lock, self.engine.connect() as conn:
                yield conn
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection in a transaction, committed when the block ends."""
        if self._read_lock is not None:
            with self._read_lock, self.engine.begin() as conn:
                yield conn
        else:
            with self.engine.begin() as conn:
                yield conn

    def forget_known_keys(self) -> None:
        """Write shared rows again when next seen (after they were deleted)."""
        self._writer.forget_keys()

    # -- configuration

    def insert_statement(self, kind: str, rows: int = 1) -> str:
        """The INSERT of ``rows`` rows of ``kind`` (built once per kind and size)."""
        return self._writer.insert_statement(kind, rows)

    def describe_url(self) -> str:
        return describe_sql_url(self.url)

    def describe(self) -> str:
        return f"SQLStorage({self.describe_url()})"

    def _on_sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        set_sqlite_pragmas(dbapi_conn, self.busy_timeout_ms)

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

    # -- write path (sql_write)

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if not self._ready:
            self.setup()
        self._writer.write(events)

    # -- reads (sql_read)

    def query(self, kind: str, flt: QueryFilter) -> Page:
        return sql_read.query(self, kind, flt)

    def stores(self, kind: str) -> bool:
        return kind in KINDS or kind in ("session", "audit")

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        return sql_read.count(self, kind, flt, cap)

    def sightings(self, flt: QueryFilter, scan: int) -> tuple[list[Sighting], int]:
        return sql_read.sightings(self, flt, scan)

    def check_states(self, check: str, since: int) -> dict[str, int]:
        return sql_read.check_states(self, check, since)

    def last_check(self, check: str) -> CheckEvent | None:
        return sql_read.last_check(self, check)

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        return sql_read.read_after(self, kind, after, limit)

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        return sql_read.traffic(self, since_us, until_us, bucket_seconds)

    def settle_traffic(self, now_us: int | None = None) -> int:
        """Sum the minutes of past hours into ``leza_traffic_hour`` (long windows
        read those); the recorder calls it every minute. Returns the hours summed."""
        if not self._ready:
            self.setup()
        if self._read_lock is not None:
            with self._read_lock:
                return settle(self.engine, now_us)
        return settle(self.engine, now_us)

    def iter_audit(self) -> Iterator[AuditEvent]:
        return sql_read.iter_audit(self)

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        return sql_read.audit_checkpoints(self)

    # -- purge (sql_purge)

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Delete events older than ``before`` in transactions of ``batch_size`` rows.

        Device, geo and performer rows stay: other events share them. Sessions
        go once they ended before ``before``; active ones stay.
        """
        return sum(self.purge_batches(kind, before, batch_size))

    def purge_batches(self, kind: str, before: int, batch_size: int = 10_000) -> Iterator[int]:
        return sql_purge.purge_batches(self, kind, before, batch_size)

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        return sql_purge.audit_purge_marks(self)

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        return sql_purge.purge_audit_chains(self, marks, batch_size)

    # -- erasure and audit redaction (sql_erase, for privacy/forget.py)

    def performer_identities(self, performer_id: str) -> list[Performer]:
        return sql_erase.performer_identities(self, performer_id)

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        return sql_erase.forget_performer(self, performer_id, identifiers)

    def audit_redactions(self) -> list[dict[str, Any]]:
        return sql_erase.audit_redactions(self)

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        return sql_erase.redact_audit(self, events, entries)

    # -- lifecycle

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone, start afresh."""
        self.engine.dispose(close=False)
        self._writer.after_fork()
        self._read_lock = self._writer.lock if self._in_memory else None

    def close(self) -> None:
        with self._writer.lock:
            self._writer.close_connection()
            self.engine.dispose()

    # -- the writer's state, under the names tests and benchmarks look at

    @property
    def _raw(self) -> PoolProxiedConnection | None:
        return self._writer.raw

    @property
    def _known(self) -> KnownKeys:
        return self._writer.known

    @property
    def _aggregator(self) -> Aggregator:
        return self._writer.aggregator

    @property
    def _rollups(self) -> SQLRollups:
        return self._writer.rollups
