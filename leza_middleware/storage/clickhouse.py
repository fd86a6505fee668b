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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from ..errors import LezaConfigError, LezaError
from ..events import Event
from ..performer import Performer
from ..state.traffic import Traffic
from .base import Capability, Page, QueryFilter, Storage
from .clickhouse_erase import forget_performer, performer_identities
from .clickhouse_insert import insert
from .clickhouse_read import (
    WHOLE_ON_SHARDS,
    Where,
    count_sql,
    merged,
    page_sql,
    read_after_sql,
    slices,
    where,
)
from .clickhouse_schema import KINDS, MONTH, ChKind, create_distributed, create_table
from .clickhouse_traffic import (
    MARKS,
    SETTLED,
    WRITTEN,
    WRITTEN_VIEW,
    create_marks,
    create_settled,
    create_written,
    create_written_view,
    purge_traffic,
    settle,
    settle_before,
    traffic,
)
from .clickhouse_url import ClickHouseURL, connect, driver_quiet, parse_clickhouse_url

__all__ = ["ClickHouseStorage", "Shard"]

#: How long purge waits for the server to finish deleting (a mutation).
PURGE_WAIT_SECONDS = 600.0
#: Sharded: each shard's own tables are named ``<table>_shard``; ``<table>`` is
#: the Distributed table over them.
SHARD_SUFFIX = "_shard"
_KIND = attrgetter("kind")
#: Sharded inserts return when every shard has its rows (not queued on the entry server).
_SYNC = {"insert_distributed_sync": 1}


@dataclass(frozen=True, slots=True)
class Shard:
    """One server of the storage: a shard of its cluster (``num`` from
    ``system.clusters``), or the one server (``num`` 0)."""

    num: int
    host: str
    port: int


class ClickHouseStorage(Storage):
    """Access, log and advisory events in ClickHouse tables (see the module docstring)."""

    shared = True
    capabilities = frozenset(
        {Capability.COUNT, Capability.PURGE, Capability.ROLLUPS, Capability.ERASURE}
    )

    def __init__(self, url: str | ClickHouseURL) -> None:
        self.url = url if isinstance(url, ClickHouseURL) else parse_clickhouse_url(url)
        self.database = self.url.database
        self._lock = threading.Lock()
        # Clients not in use, per server (a client is one connection).
        self._idle: dict[tuple[str, int], list[Any]] = {}
        self._shards: list[Shard] = []
        self._ready = False

    @classmethod
    def from_url(cls, text: str) -> ClickHouseStorage:
        return cls(text)

    @property
    def sharded(self) -> bool:
        return self.url.cluster is not None

    # -- names

    def table(self, name: str) -> str:
        """Where reads and writes of table ``name`` go (sharded: its Distributed table)."""
        return f"`{self.database}`.{name}"

    def local(self, name: str) -> str:
        """Table ``name`` on one server (sharded: each shard's own part)."""
        return f"`{self.database}`.{name}{SHARD_SUFFIX if self.sharded else ''}"

    # -- connections

    @contextlib.contextmanager
    def _client(self, shard: Shard | None = None) -> Iterator[Any]:
        """A client of its own for the caller's statements (clients are not
        thread-safe), on the entry server or ``shard``; returned to the pool
        after, dropped after an error."""
        key = (self.url.host, self.url.port) if shard is None else (shard.host, shard.port)
        with self._lock:
            idle = self._idle.get(key)
            client = idle.pop() if idle else None
        if client is None:
            client = connect(self.url, *key)
        try:
            with driver_quiet():  # a failed connect raises here; the recorder reports it
                yield client
        except BaseException:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise
        with self._lock:
            self._idle.setdefault(key, []).append(client)

    def execute(
        self,
        sql: str,
        params: Any = None,
        *,
        shard: Shard | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        with self._client(shard) as client:
            return client.execute(sql, params, settings=settings)

    def shards(self) -> list[Shard]:
        """The servers holding the tables: each shard of the cluster, else the one server."""
        self.ensure_ready()
        return self._shards

    def setup(self) -> None:
        """Create the database and the tables when missing (idempotent); sharded,
        on every shard of the cluster (found in the entry server's
        ``system.clusters``: ``ON CLUSTER`` would need ZooKeeper), then the
        ``Distributed`` tables on the entry server."""
        db = self.database
        if self.sharded:
            self._shards = self._cluster_shards()
        else:
            self._shards = [Shard(0, self.url.host, self.url.port)]
        for shard in self._shards:
            self.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`", shard=shard)
            for spec in KINDS.values():
                self.execute(create_table(self.local(spec.table), spec), shard=shard)
            self._create_traffic(shard)
        if self.sharded:
            cluster = str(self.url.cluster)
            self.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
            for spec in KINDS.values():
                self.execute(create_distributed(
                    self.table(spec.table), self.local(spec.table), cluster, db, "sipHash64(id)"
                ))  # fmt: skip
        self._ready = True

    def _create_traffic(self, shard: Shard) -> None:
        """STATE's tables on ``shard`` (see :mod:`.clickhouse_traffic`); the view
        that counts the writes of each hour before any access row is written."""
        self.execute(create_settled(self.local(SETTLED)), shard=shard)
        self.execute(create_marks(self.local(MARKS)), shard=shard)
        self.execute(create_written(self.local(WRITTEN)), shard=shard)
        view = create_written_view(
            self.local(WRITTEN_VIEW), self.local(WRITTEN), self.local("leza_access")
        )
        self.execute(view, shard=shard)

    def _cluster_shards(self) -> list[Shard]:
        rows = self.execute(
            "SELECT shard_num, any(host_address), any(port) FROM system.clusters "
            "WHERE cluster = %(c)s GROUP BY shard_num ORDER BY shard_num",
            {"c": self.url.cluster},
        )
        if not rows:
            raise LezaConfigError(
                f"storage {self.url.describe()}: the server at {self.url.host}:{self.url.port} "
                f"has no cluster {self.url.cluster!r} in its <remote_servers> (system.clusters)"
            )
        return [Shard(int(n), str(h), int(p)) for n, h, p in rows]

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
        the batch holds a kind this backend does not store. Sharded, the insert
        returns once every shard has its rows (``insert_distributed_sync``): a
        shard that is down fails the batch, which the recorder retries or spills."""
        kinds = list(map(_KIND, events))
        groups: dict[str, Sequence[Event]]
        if kinds and kinds.count(kinds[0]) == len(kinds):  # one kind (C-level): no loop
            groups = {kinds[0]: events}
        else:
            lists: dict[str, list[Event]] = {}
            for e in events:
                lists.setdefault(e.kind, []).append(e)
            groups = dict(lists)
        specs = [(self._spec(kind), group) for kind, group in groups.items()]
        if not specs:
            return
        self.ensure_ready()
        settings = _SYNC if self.sharded else None
        with self._client() as client:
            for spec, group in specs:
                insert(client, spec, self.table(spec.table), group, settings)

    # -- read

    def query(self, kind: str, flt: QueryFilter) -> Page:
        """One page, read a time slice at a time (see :func:`.clickhouse_read.slices`):
        the copies of an id share its time, so never straddle two slices."""
        spec = self._spec(kind)
        where(kind, spec, flt)  # a bad filter fails before any read
        self.ensure_ready()
        order = "ASC" if flt.ascending else "DESC"
        want = flt.limit + 1
        rows: list[Any] = []
        for since, until in slices(flt, time.time_ns() // 1000):
            part = replace(flt, since=since, until=until, limit=want - len(rows))
            w = where(kind, spec, part)
            sql = page_sql(self.table(spec.table), spec, w, part)
            if self.sharded:
                sql = merged(sql, f"ts {order}, id {order}", part.limit + 1)
            rows.extend(self._read(sql, w.params))
            if len(rows) >= want:
                break
        cache: dict[Any, Any] = {}
        events = [spec.from_row(r, cache) for r in rows[: flt.limit]]
        last = events[-1] if len(rows) > flt.limit else None
        return Page(events, None if last is None else (last.ts, last.id))

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        spec = self._spec(kind)
        w = where(kind, spec, replace(flt, cursor=None))
        self.ensure_ready()
        rows = self._read(count_sql(self.table(spec.table), w, cap), w.params)
        n = sum(int(r[0]) for r in rows)  # sharded: one count per shard
        return n if cap is None else min(n, cap + 1)

    def read_after(self, kind: str, after: tuple[int, str] | None, limit: int = 1000) -> list[Any]:
        spec = self._spec(kind)
        self.ensure_ready()
        sql, params = read_after_sql(self.table(spec.table), spec, after, limit)
        if self.sharded:
            sql = merged(sql, "ts ASC, id ASC", limit)
        cache: dict[Any, Any] = {}
        return [spec.from_row(r, cache) for r in self._read(sql, params)]

    def _read(self, sql: str, params: Any) -> Any:
        """A read of the event tables (sharded: run whole on every shard)."""
        return self.execute(sql, params, settings=WHOLE_ON_SHARDS if self.sharded else None)

    def traffic(self, since_us: int, until_us: int, bucket_seconds: int) -> Traffic:
        """STATE's traffic, aggregated by the server (see :mod:`.clickhouse_traffic`)."""
        return traffic(self, since_us, until_us, bucket_seconds)

    def settle_traffic(self, now_us: int | None = None) -> int:
        """Settle the hours that are over (the recorder's upkeep, about once a
        minute; see :func:`.clickhouse_traffic.settle`); the hours settled."""
        self.ensure_ready()
        return settle(self, now_us)

    # -- purge

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Delete events of ``kind`` older than ``before`` (µs); how many events went.

        Access rows' traffic is settled into the rollup table first, so STATE
        still counts them after. Months wholly older are dropped as partitions
        (instant); the rest with ``ALTER TABLE … DELETE`` (a mutation the server
        runs in the background: this waits for it). Sharded, on every shard.
        ``batch_size`` does not apply: a mutation is one step. ``"traffic"``:
        the rollups of the hours that ended before ``before`` rounded down to
        its hour.
        """
        if kind == "traffic":
            self.ensure_ready()
            return purge_traffic(self, before)
        spec = self._spec(kind)
        self.ensure_ready()
        w = Where()
        w.add(f"ts < {w.bind(int(before))}")
        gone = sum(
            int(r[0]) for r in self._read(count_sql(self.table(spec.table), w, None), w.params)
        )
        if not gone:
            return 0
        if kind == "access":
            settle_before(self, before)
        table = self.local(spec.table)
        for shard in self.shards():
            # Only months that ended before ``before``: a row arriving now can
            # never belong to one of them (its month is over), so none is lost.
            months = self.execute(
                f"SELECT DISTINCT {MONTH} FROM {table} WHERE {w.sql()}", w.params, shard=shard
            )
            for (month,) in months:
                end = _month_end_us(int(month))
                if end is not None and end <= before:
                    self.execute(f"ALTER TABLE {table} DROP PARTITION {int(month)}", shard=shard)
            left = self.execute(
                f"SELECT count() FROM {table} WHERE {w.sql()}", w.params, shard=shard
            )
            if left[0][0]:
                self.execute(f"ALTER TABLE {table} DELETE WHERE {w.sql()}", w.params, shard=shard)
                self.wait_mutations(table, shard)
        return gone

    def wait_mutations(self, table: str, shard: Shard | None = None) -> None:
        """Until the mutations of ``table`` (qualified) are done on ``shard``
        (18.16 has no ``mutations_sync``)."""
        name = table.rsplit(".", 1)[-1]
        reason = "any(latest_fail_reason)" if self._has_fail_reason(shard) else "''"
        deadline = time.monotonic() + PURGE_WAIT_SECONDS
        delay = 0.01
        while True:
            rows = self.execute(
                f"SELECT count(), {reason} FROM system.mutations "
                "WHERE database = %(d)s AND table = %(t)s AND is_done = 0",
                {"d": self.database, "t": name},
                shard=shard,
            )
            pending, why = rows[0]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LezaError(
                    f"ClickHouse has not finished deleting from {self.database}.{name} after "
                    f"{PURGE_WAIT_SECONDS:.0f} s{': ' + why if why else ''}; it goes on "
                    "in the server (system.mutations)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _has_fail_reason(self, shard: Shard | None) -> bool:
        """Whether ``system.mutations`` has ``latest_fail_reason`` (18.16 has not)."""
        rows = self.execute(
            "SELECT count() FROM system.columns WHERE database = 'system' "
            "AND table = 'mutations' AND name = 'latest_fail_reason'",
            shard=shard,
        )
        return bool(rows[0][0])

    # -- erasure (leza forget)

    def performer_identities(self, performer_id: str) -> list[Performer]:
        """The identities the access rows hold for ``performer_id``."""
        return performer_identities(self, performer_id)

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        """Erase one person from the access, log and advisory tables, on every
        shard; returns once the server has applied every deletion (see
        :mod:`.clickhouse_erase`)."""
        return forget_performer(self, performer_id, identifiers)

    # -- lifecycle

    def after_fork(self) -> None:
        # The parent's sockets are the parent's: forget them, never close them.
        self._lock = threading.Lock()
        self._idle = {}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for clients in idle.values():
            for client in clients:
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
