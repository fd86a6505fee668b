"""ClickHouse storage for the append-only, wide-scanned kinds: access, log, advisory.

``clickhouse://host:9000/leza`` (the ``[clickhouse]`` extra). Audit rows,
sessions and checks are not stored here: they are small, transactional and
updated in place, which is what PostgreSQL (or SQLite) is for. Asked to write
or read one of them, this backend raises.

Tables and why they look as they do: :mod:`.clickhouse_schema`; the reads and
their one-row-per-id rule: :mod:`.clickhouse_read`. The driver
(``clickhouse-driver``, native protocol) is imported when a ClickHouse storage
is opened, never by ``import leza_middleware``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from ..errors import LezaError
from ..events import Event
from ..state.traffic import Traffic
from .base import Capability, Page, QueryFilter, Storage
from .clickhouse_read import Where, count_sql, page_sql, read_after_sql, where
from .clickhouse_schema import KINDS, MONTH, ChKind, create_table
from .clickhouse_traffic import TRAFFIC_TABLES, purge_traffic, settle_before, traffic
from .clickhouse_url import ClickHouseURL, connect, parse_clickhouse_url

__all__ = ["ClickHouseStorage"]

#: How long purge waits for the server to finish deleting (a mutation).
PURGE_WAIT_SECONDS = 600.0


class ClickHouseStorage(Storage):
    """Access, log and advisory events in ClickHouse tables (see the module docstring)."""

    shared = True
    capabilities = frozenset({Capability.COUNT, Capability.PURGE, Capability.ROLLUPS})

    def __init__(self, url: str | ClickHouseURL) -> None:
        self.url = url if isinstance(url, ClickHouseURL) else parse_clickhouse_url(url)
        self.database = self.url.database
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # clients not in use (a client is one connection)
        self._ready = False

    @classmethod
    def from_url(cls, text: str) -> ClickHouseStorage:
        return cls(text)

    # -- connections

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """A client of its own for the caller's statements (clients are not
        thread-safe); returned to the pool after, dropped after an error."""
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = connect(self.url)
        try:
            yield client
        except BaseException:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise
        with self._lock:
            self._idle.append(client)

    def execute(self, sql: str, params: Any = None) -> Any:
        with self._client() as client:
            return client.execute(sql, params)

    def setup(self) -> None:
        """Create the database and the tables when missing (idempotent)."""
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        for spec in KINDS.values():
            self.execute(create_table(self.database, spec))
        for ddl in TRAFFIC_TABLES:
            self.execute(ddl.format(db=self.database))
        self._ready = True

    def ensure_ready(self) -> None:
        if not self._ready:
            self.setup()

    # -- kinds

    def stores(self, kind: str) -> bool:
        return kind in KINDS

    def _spec(self, kind: str) -> ChKind:
        spec = KINDS.get(kind)
        if spec is None:
            raise ValueError(
                f"ClickHouseStorage has no table for event kind {kind!r}: it stores access, "
                "log and advisory events (audit, session and check events belong in a SQL "
                "storage)"
            )
        return spec

    # -- write

    def write(self, events: Sequence[Event]) -> None:
        """One INSERT per kind. Idempotent by id as every read keeps one row per
        id (see :mod:`.clickhouse_read`); raises before inserting anything when
        the batch holds a kind this backend does not store."""
        groups: dict[str, list[Event]] = {}
        for e in events:
            groups.setdefault(e.kind, []).append(e)
        specs = [(self._spec(kind), group) for kind, group in groups.items()]
        if not specs:
            return
        self.ensure_ready()
        with self._client() as client:
            for spec, group in specs:
                client.execute(
                    f"INSERT INTO `{self.database}`.{spec.table} ({spec.names}) VALUES",
                    [spec.to_row(e) for e in group],
                )

    # -- read

    def query(self, kind: str, flt: QueryFilter) -> Page:
        spec = self._spec(kind)
        w = where(kind, spec, flt)
        self.ensure_ready()
        rows = self.execute(page_sql(self.database, spec, w, flt), w.params)
        cache: dict[Any, Any] = {}
        events = [spec.from_row(r, cache) for r in rows[: flt.limit]]
        last = events[-1] if len(rows) > flt.limit else None
        return Page(events, None if last is None else (last.ts, last.id))

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        spec = self._spec(kind)
        w = where(kind, spec, replace(flt, cursor=None))
        self.ensure_ready()
        return int(self.execute(count_sql(self.database, spec, w, cap), w.params)[0][0])

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        spec = self._spec(kind)
        self.ensure_ready()
        sql, params = read_after_sql(self.database, spec, after, limit)
        cache: dict[Any, Any] = {}
        return [spec.from_row(r, cache) for r in self.execute(sql, params)]

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        """STATE's traffic, aggregated by the server (see :mod:`.clickhouse_traffic`)."""
        return traffic(self, since_us, until_us, bucket_seconds)

    # -- purge

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Delete events of ``kind`` older than ``before`` (µs); how many events went.

        Access rows' traffic is settled into the rollup table first, so STATE
        still counts them after. Months wholly older are dropped as partitions
        (instant); the rest with ``ALTER TABLE … DELETE`` (a mutation the server
        runs in the background: this waits for it). ``batch_size`` does not
        apply: a mutation is one step. ``"traffic"``: the rollups of the hours
        that ended before ``before`` rounded down to its hour.
        """
        if kind == "traffic":
            self.ensure_ready()
            return purge_traffic(self, before)
        spec = self._spec(kind)
        self.ensure_ready()
        table = f"`{self.database}`.{spec.table}"
        w = Where()
        w.add(f"ts < {w.bind(int(before))}")
        gone = int(self.execute(count_sql(self.database, spec, w, None), w.params)[0][0])
        if not gone:
            return 0
        if kind == "access":
            settle_before(self, before)
        # Only months that ended before ``before``: a row arriving now can
        # never belong to one of them (its month is over), so none is lost.
        months = self.execute(f"SELECT DISTINCT {MONTH} FROM {table} WHERE {w.sql()}", w.params)
        for (month,) in months:
            end = _month_end_us(int(month))
            if end is not None and end <= before:
                self.execute(f"ALTER TABLE {table} DROP PARTITION {int(month)}")
        left = self.execute(f"SELECT count() FROM {table} WHERE {w.sql()}", w.params)
        if left[0][0]:
            self.execute(f"ALTER TABLE {table} DELETE WHERE {w.sql()}", w.params)
            self.wait_mutations(spec.table)
        return gone

    def wait_mutations(self, table: str) -> None:
        """Until the table's mutations are done (18.16 has no ``mutations_sync``)."""
        reason = "any(latest_fail_reason)" if self._has_fail_reason() else "''"
        deadline = time.monotonic() + PURGE_WAIT_SECONDS
        delay = 0.01
        while True:
            rows = self.execute(
                f"SELECT count(), {reason} FROM system.mutations "
                "WHERE database = %(d)s AND table = %(t)s AND is_done = 0",
                {"d": self.database, "t": table},
            )
            pending, why = rows[0]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LezaError(
                    f"ClickHouse has not finished deleting from {self.database}.{table} after "
                    f"{PURGE_WAIT_SECONDS:.0f} s{': ' + why if why else ''}; it goes on "
                    "in the server (system.mutations)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _has_fail_reason(self) -> bool:
        """Whether ``system.mutations`` has ``latest_fail_reason`` (18.16 has not)."""
        rows = self.execute(
            "SELECT count() FROM system.columns WHERE database = 'system' "
            "AND table = 'mutations' AND name = 'latest_fail_reason'"
        )
        return bool(rows[0][0])

    # -- lifecycle

    def after_fork(self) -> None:
        # The parent's sockets are the parent's: forget them, never close them.
        self._lock = threading.Lock()
        self._idle = []

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                client.disconnect()

    def describe(self) -> str:
        return f"ClickHouseStorage({self.url.describe()})"


def _month_end_us(month: int) -> int | None:
    """The first µs after the month ``YYYYMM`` (UTC); None for no real month."""
    year, mon = divmod(month, 100)
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    try:
        return int(datetime(year, mon, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000
    except (ValueError, OverflowError):
        return None
