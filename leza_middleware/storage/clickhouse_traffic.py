"""STATE's traffic on ClickHouse: aggregates computed by the server, exact like
SQL's rollups (each event id counted once, however often it was written), and
kept when the access rows are purged.

Two sources, never overlapping:

* **live**: hours with no settled rollup are aggregated from the raw access
  rows at read time (one row per id, then grouped by bucket and endpoint), so
  a replay or a late spill is counted exactly once;
* **settled**: before :meth:`purge` deletes access rows, every hour it touches
  is aggregated into ``leza_traffic`` (per minute and endpoint) and marked in
  ``leza_traffic_hours``; reads take those hours from there.

Settling is idempotent and safe to run from several processes at once: a
settled row is keyed by (minute, method, route) and rows of an hour only ever
go away (purge), so of two settlements of the same key the one with more
requests saw every row — ``ReplacingMergeTree(requests)`` keeps it, and reads
pick it (``ORDER BY requests DESC LIMIT 1 BY key``). Rows written with a time
in an hour already settled (a spill replayed after its hour was purged) are
not added to that hour's traffic.

Method labels are computed by the server; route labels (cut long templates)
in Python over the grouped rows, as 18.16's ``substringUTF8`` cuts 4-byte
characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..state.labels import METHODS, route_label
from ..state.traffic import (
    HOUR,
    LATENCY_BOUNDS_US,
    N_BUCKETS,
    Traffic,
    build_traffic,
    check_window,
)

if TYPE_CHECKING:
    from .clickhouse import ClickHouseStorage

__all__ = ["create_marks", "create_traffic", "purge_traffic", "settle_before", "traffic"]

_COUNTS = ("requests", "success", "client_errors", "server_errors", "denied", "logins",
           "login_failures")  # fmt: skip
_HIST = tuple(f"h{i:02d}" for i in range(N_BUCKETS))
_KEY = "shard, minute, method, route, unmatched"


def create_traffic(table: str) -> str:
    """The settled rollups: per shard (``shard``: the number of the shard whose
    rows they count), minute and endpoint."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    shard UInt32, minute Int64, method String, "
        "route String, unmatched UInt8,\n    "
        + ", ".join(f"{c} UInt64" for c in _COUNTS)
        + ", duration_us Int64, last_seen Int64,\n    "
        + ", ".join(f"{h} UInt64" for h in _HIST)
        + "\n)\nENGINE = ReplacingMergeTree(requests)\n"
        "PARTITION BY toYYYYMM(toDateTime(intDiv(minute, 1000000), 'UTC'))\n"
        f"ORDER BY ({_KEY})"
    )


def create_marks(table: str) -> str:
    """The settled hours (of one server: never read through a Distributed table)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (hour Int64) "
        "ENGINE = ReplacingMergeTree() ORDER BY hour"
    )


def _floor(expr: str, step: int) -> str:
    """``expr`` rounded down to a multiple of ``step`` (also below zero, like Python)."""
    # Not with modulo(): 18.16 types modulo(Int64, constant) as Int32, which
    # overflows past 2**31 (36 minutes of µs). intDiv truncates towards zero.
    down = f"intDiv({expr}, {step}) * {step}"
    return f"({down} - if({expr} < {down}, {step}, 0))"


_METHODS_SQL = ", ".join(f"'{m}'" for m in sorted(METHODS))
_OUTCOME = (
    "multiIf(outcome = 'denied', 4, outcome = 'error' OR status < 100 OR status >= 500, 3, "
    "outcome = 'failure' OR status >= 400, 2, 1)"
)
# bisect_left(bounds, d): how many bounds lie below d.
_BUCKET = " + ".join(f"(duration_us > {int(b)})" for b in LATENCY_BOUNDS_US)
# The vector of a group of raw rows, in the order of state.traffic.COUNT_FIELDS,
# last_seen and the histogram (a duration goes to bisect_left(bounds, d)).
_RAW_VECTOR = ", ".join(
    ["count()", "countIf(o = 1)", "countIf(o = 2)", "countIf(o = 3)", "countIf(o = 4)",
     "countIf(action = 'login')", "countIf(action = 'login_failed')", "sum(duration_us)",
     "max(ts)"]
    + [f"countIf(h = {i})" for i in range(N_BUCKETS)]
)  # fmt: skip
_SUM_VECTOR = ", ".join(
    [f"sum({c})" for c in _COUNTS] + ["sum(duration_us)", "max(last_seen)"]
    + [f"sum({h})" for h in _HIST]
)  # fmt: skip


def _raw_rows(table: str, where: str) -> str:
    """One row per access event id of ``table`` matching ``where``, with its labels.

    ``FINAL`` folds the copies of a replayed event: they share the sorting key
    ``(ts, id)``, and the server merges the already sorted parts as it reads —
    over a day of 333,000 rows, half the time of ``LIMIT 1 BY id``'s hash of
    every id. The bucket is a sum of comparisons (``bisect_left`` of the sorted
    bounds), cheaper than a lambda over an array per row."""
    return (
        f"SELECT ts, action, duration_us, if(method IN ({_METHODS_SQL}), method, 'OTHER') "
        "AS ml, ifNull(route, '') AS rt, isNull(route) AS um, "
        f"{_OUTCOME} AS o, ({_BUCKET}) AS h "
        f"FROM {table} FINAL WHERE {where}"
    )


def _settled_rows(table: str, where: str) -> str:
    """The settled rollup rows matching ``where``: per key, the most complete."""
    return f"SELECT * FROM {table} WHERE {where} ORDER BY requests DESC LIMIT 1 BY {_KEY}"


def traffic(storage: ClickHouseStorage, since_us: int, until_us: int, bucket: int) -> Traffic:
    start, end, step = check_window(since_us, until_us, bucket)
    storage.ensure_ready()
    # Not GLOBAL IN: sharded, each shard reads the subquery from its own marks.
    marks = f"(SELECT hour FROM {storage.local('leza_traffic_hours')})"
    unsettled = f"ts >= {int(start)} AND ts < {int(end)} AND {_floor('ts', HOUR)} NOT IN {marks}"
    raw = _raw_rows(storage.table("leza_access"), unsettled)
    live = storage.execute(
        f"SELECT {_floor('ts', step)} AS bucket, ml, rt, um, {_RAW_VECTOR} "
        f"FROM ({raw}) GROUP BY bucket, ml, rt, um"
    )
    settled_hours = (
        f"minute >= {int(start)} AND minute < {int(end)} AND {_floor('minute', HOUR)} IN {marks}"
    )
    rollups = _settled_rows(storage.table("leza_traffic"), settled_hours)
    settled = storage.execute(
        f"SELECT {_floor('minute', step)} AS bucket, method, route, unmatched, {_SUM_VECTOR} "
        f"FROM ({rollups}) GROUP BY bucket, method, route, unmatched"
    )
    rows = [
        (int(r[0]), r[1], route_label(None if r[3] else r[2]), [int(v) for v in r[4:]])
        for r in (*live, *settled)
    ]
    return build_traffic(rows, start, end, step)


def settle_before(storage: ClickHouseStorage, before: int, *, rollups: bool = True) -> int:
    """Settle every hour with access rows older than ``before`` that is not yet
    settled (see the module docstring), on every shard; the number of hours
    settled. Called by :meth:`purge` before it deletes access rows.
    ``rollups=False`` marks the hours without aggregating them (their traffic
    is being purged)."""
    access, rollup = storage.local("leza_access"), storage.local("leza_traffic")
    marks = storage.local("leza_traffic_hours")
    settled = 0
    for shard in storage.shards():
        hours = sorted(
            int(h)
            for (h,) in storage.execute(
                f"SELECT DISTINCT {_floor('ts', HOUR)} AS hour FROM {access} "
                f"WHERE ts < %(b)s AND hour NOT IN (SELECT hour FROM {marks})",
                {"b": int(before)},
                shard=shard,
            )
        )
        # A day of hours per statement: the server keeps one id per row of it in memory.
        for i in range(0, len(hours), 24):
            chunk = hours[i : i + 24]
            listed = ", ".join(str(h) for h in chunk)
            where = (
                f"ts >= {chunk[0]} AND ts < {chunk[-1] + HOUR} "
                f"AND {_floor('ts', HOUR)} IN ({listed})"
            )
            if rollups:
                storage.execute(
                    f"INSERT INTO {rollup} SELECT {int(shard.num)}, "
                    f"{_floor('ts', 60_000_000)} AS minute, ml, rt, um, {_RAW_VECTOR} "
                    f"FROM ({_raw_rows(access, where)}) GROUP BY minute, ml, rt, um",
                    shard=shard,
                )
            # Marked only once its rows are in: until then reads take the hour live.
            storage.execute(
                f"INSERT INTO {marks} (hour) VALUES", [(h,) for h in chunk], shard=shard
            )
        settled += len(hours)
    return settled


def purge_traffic(storage: ClickHouseStorage, before: int) -> int:
    """Rollups of the hours that ended before ``before`` (rounded down to its
    hour) go; those hours are first marked settled, so their raw rows (if
    kept longer) are not counted live instead. Returns the rollup rows deleted."""
    cutoff = before - before % HOUR
    settle_before(storage, cutoff, rollups=False)
    table = storage.local("leza_traffic")
    where = f"minute < {int(cutoff)}"
    gone = 0
    for shard in storage.shards():
        n = int(storage.execute(
            f"SELECT count() FROM (SELECT 1 FROM {table} WHERE {where} LIMIT 1 BY {_KEY})",
            shard=shard,
        )[0][0])  # fmt: skip
        if n:
            storage.execute(f"ALTER TABLE {table} DELETE WHERE {where}", shard=shard)
            storage.wait_mutations(table, shard)
        gone += n
    return gone
