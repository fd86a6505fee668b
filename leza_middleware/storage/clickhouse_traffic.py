"""STATE's traffic on ClickHouse: aggregates computed by the server, exact like
SQL's rollups (each event id counted once, however often it was written), and
kept when the access rows are purged.

Each hour of each shard is read from one of two sources, never both:

* **live**: aggregated from the raw access rows at read time (one row per id,
  then grouped by bucket and endpoint): exact whatever was written when;
* **settled**: read from ``leza_traffic_settled`` (per minute and endpoint),
  an aggregate of the hour's raw rows made once the hour is over
  (:func:`settle`, from the recorder's once-a-minute upkeep, and before a purge).

**Late writes.** Every insert into ``leza_access`` (on each shard) also adds
``(hour, rows)`` to ``leza_traffic_written`` through a materialised view, so
``sum(rows)`` of an hour — its *write count* — grows with every insert into
it, whoever writes and however late (a spill replayed hours later, a retried
batch). A settlement records the write count it read *before* aggregating,
and tags its rows and its mark (``leza_traffic_marks``) with it. A read uses a
settlement only while the hour's write count still equals its tag; once rows
arrive for a settled hour its count moves on, the hour is read live again
(exact at once) and the next upkeep settles it afresh under the new count.

Why the tag is safe: ClickHouse writes an insert's rows to the table before it
runs the view, so every insert counted in the write count a settlement read
is already visible to the aggregation that follows. An insert racing the
settlement is either counted in it and not in its tag (the hour then looks
changed: settled again, needlessly but harmlessly) or in neither.

**Several settlers** (gunicorn workers, each with its upkeep) may settle the
same hour at once: their rows carry the same tag, and each saw a superset of
the rows counted in it, so per key the row with more requests is the most
complete — ``ReplacingMergeTree(requests)`` keeps it, and reads pick it
(``FINAL``) before any merge has.

**Deletions.** Purge first settles (or re-settles) every hour it deletes from
and marks it ``purged``: a purged hour is always read from its settlement,
whatever its write count (its raw rows are gone); rows that arrive for it
later (older than the purge cut, i.e. past retention) are not counted, and the
next purge deletes them. Erasure (``forget``) deletes a person's rows and then
adds one to the write count of every hour it deleted from, so those hours are
read live and settled again without them (see docs/storage.md).

Sharded, each shard settles and counts its own rows (the rows and marks carry
the shard number); a read asks every shard in parallel for its own hours.

Method labels are computed by the server; route labels (cut long templates)
in Python over the grouped rows, as 18.16's ``substringUTF8`` cuts 4-byte
characters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..state.labels import METHODS, route_label
from ..state.traffic import (
    HOUR,
    LATENCY_BOUNDS_US,
    MINUTE,
    N_BUCKETS,
    Traffic,
    build_traffic,
    check_window,
)

if TYPE_CHECKING:
    from .clickhouse import ClickHouseStorage, Shard

__all__ = [
    "MARKS",
    "SETTLED",
    "SETTLE_BUDGET_SECONDS",
    "SETTLE_GRACE",
    "WRITTEN",
    "WRITTEN_VIEW",
    "create_marks",
    "create_settled",
    "create_written",
    "create_written_view",
    "floor_sql",
    "hours_changed",
    "purge_traffic",
    "settle",
    "settle_before",
    "traffic",
]

#: Table names (each shard's own; never read through a Distributed table).
SETTLED = "leza_traffic_settled"
MARKS = "leza_traffic_marks"
WRITTEN = "leza_traffic_written"
WRITTEN_VIEW = "leza_traffic_written_mv"
#: An hour is settled by the upkeep once it ended this long ago (µs), as on SQL:
#: a batch of its last seconds is usually written by then (a later one only
#: makes the hour settle again).
SETTLE_GRACE = 2 * MINUTE
#: The upkeep stops starting hours after this long (it runs on the recorder
#: thread); each shard settles at least its newest hour per call.
SETTLE_BUDGET_SECONDS = 0.5

_COUNTS = ("requests", "success", "client_errors", "server_errors", "denied", "logins",
           "login_failures")  # fmt: skip
_HIST = tuple(f"h{i:02d}" for i in range(N_BUCKETS))
_KEY = "shard, minute, written, method, route, unmatched"


def create_settled(table: str) -> str:
    """The settled rollups: per shard (``shard``: the number of the shard whose
    rows they count), minute, write count of the settlement and endpoint."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    shard UInt32, minute Int64, written UInt64, "
        "method String, route String, unmatched UInt8,\n    "
        + ", ".join(f"{c} UInt64" for c in _COUNTS)
        + ", duration_us Int64, last_seen Int64,\n    "
        + ", ".join(f"{h} UInt64" for h in _HIST)
        + "\n)\nENGINE = ReplacingMergeTree(requests)\n"
        "PARTITION BY toYYYYMM(toDateTime(intDiv(minute, 1000000), 'UTC'))\n"
        f"ORDER BY ({_KEY})"
    )


def create_marks(table: str) -> str:
    """The settlements: an hour, the write count it was settled at, whether purged."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (hour Int64, written UInt64, purged UInt8) "
        "ENGINE = ReplacingMergeTree() ORDER BY (hour, written, purged)"
    )


def create_written(table: str) -> str:
    """The write count of each hour (rows inserted, whatever merges fold later)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (hour Int64, rows UInt64) "
        "ENGINE = SummingMergeTree() ORDER BY hour"
    )


def create_written_view(view: str, target: str, source: str) -> str:
    """Every insert into ``source`` (the access table) adds its rows per hour to ``target``."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} TO {target} AS "
        f"SELECT {_floor('ts', HOUR)} AS hour, count() AS rows FROM {source} GROUP BY hour"
    )


def _floor(expr: str, step: int) -> str:
    """``expr`` rounded down to a multiple of ``step`` (also below zero, like Python)."""
    # Not with modulo(): 18.16 types modulo(Int64, constant) as Int32, which
    # overflows past 2**31 (36 minutes of µs). intDiv truncates towards zero.
    down = f"intDiv({expr}, {step}) * {step}"
    return f"({down} - if({expr} < {down}, {step}, 0))"


floor_sql = _floor

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


def _ints(values: Iterable[int]) -> str:
    return ", ".join(str(int(v)) for v in values)


# -- which hours are settled


def _hour_states(
    storage: ClickHouseStorage, shard: Shard, lo: int | None, hi: int
) -> tuple[dict[int, int], dict[int, int]]:
    """``({hour: write count}, {hour: tag})`` of the hours in ``[lo, hi)`` on
    ``shard``: a hour has a tag when a settlement of it is valid — a purged
    one (its newest), else one made at the hour's current write count."""
    rng = f"hour < {int(hi)}" + ("" if lo is None else f" AND hour >= {int(lo)}")
    rows = storage.execute(
        f"SELECT 0, hour, sum(rows), 0 FROM {storage.local(WRITTEN)} WHERE {rng} GROUP BY hour "
        f"UNION ALL SELECT 1, hour, written, max(purged) FROM {storage.local(MARKS)} "
        f"WHERE {rng} GROUP BY hour, written",
        shard=shard,
    )
    written: dict[int, int] = {}
    settled: dict[int, set[int]] = {}
    purged: dict[int, int] = {}
    for src, hour, count, is_purged in rows:
        h, n = int(hour), int(count)
        if not src:
            written[h] = n
        elif is_purged:
            purged[h] = max(purged.get(h, 0), n)
        else:
            settled.setdefault(h, set()).add(n)
    tags = dict(purged)
    for h, tags_of in settled.items():
        if h not in tags and written.get(h, 0) in tags_of:
            tags[h] = written.get(h, 0)
    return written, tags


def _settle_hours(
    storage: ClickHouseStorage, shard: Shard, tags: dict[int, int], *, purged: bool,
    rollups: bool = True,
) -> None:  # fmt: skip
    """Settle the hours of ``tags`` (hour -> the write count read before this)
    on ``shard`` from its raw rows, then mark them (only once their rows are in:
    until then reads take them live)."""
    hours = sorted(tags)
    if rollups:
        listed = _ints(hours)
        hour = _floor("ts", HOUR)
        where = f"ts >= {hours[0]} AND ts < {hours[-1] + HOUR} AND {hour} IN ({listed})"
        tag = f"transform({hour}, [{listed}], [{_ints(tags[h] for h in hours)}], toUInt64(0))"
        raw = _raw_rows(storage.local("leza_access"), where)
        storage.execute(
            f"INSERT INTO {storage.local(SETTLED)} SELECT toUInt32({int(shard.num)}), "
            f"{_floor('ts', MINUTE)} AS minute, {tag} AS written, ml, rt, um, {_RAW_VECTOR} "
            f"FROM ({raw}) GROUP BY minute, written, ml, rt, um",
            shard=shard,
        )
    storage.execute(
        f"INSERT INTO {storage.local(MARKS)} (hour, written, purged) VALUES",
        [(h, tags[h], int(purged)) for h in hours],
        shard=shard,
    )


def settle(storage: ClickHouseStorage, now_us: int | None = None) -> int:
    """The upkeep (the recorder's, about once a minute): settle every hour that
    ended :data:`SETTLE_GRACE` ago and has no valid settlement, newest first,
    on every shard; stops starting hours after :data:`SETTLE_BUDGET_SECONDS`
    (each shard settles at least one). Returns the hours settled."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    target = (now - SETTLE_GRACE) - (now - SETTLE_GRACE) % HOUR
    deadline = time.monotonic() + SETTLE_BUDGET_SECONDS
    done = 0
    for shard in storage.shards():
        written, tags = _hour_states(storage, shard, None, target)
        todo = sorted((h for h in written if h not in tags), reverse=True)
        for i, hour in enumerate(todo):
            if i and time.monotonic() > deadline:
                break
            _settle_hours(storage, shard, {hour: written[hour]}, purged=False)
            done += 1
    return done


def settle_before(storage: ClickHouseStorage, before: int, *, rollups: bool = True) -> int:
    """Before a purge deletes access rows older than ``before``: every hour with
    such rows is settled (unless a valid settlement exists) and marked purged,
    on every shard; the number of hours newly marked. ``rollups=False`` marks
    them without aggregating (their traffic is being purged)."""
    access = storage.local("leza_access")
    marked = 0
    for shard in storage.shards():
        hours = sorted(
            int(h)
            for (h,) in storage.execute(
                f"SELECT DISTINCT {_floor('ts', HOUR)} FROM {access} WHERE ts < %(b)s",
                {"b": int(before)},
                shard=shard,
            )
        )
        if not hours:
            continue
        # Write counts read before any aggregation (see the module docstring).
        written, tags = _hour_states(storage, shard, hours[0], hours[-1] + HOUR)
        purged_rows = storage.execute(
            f"SELECT DISTINCT hour FROM {storage.local(MARKS)} WHERE purged = 1 "
            f"AND hour >= {hours[0]} AND hour <= {hours[-1]}",
            shard=shard,
        )
        final = {int(h) for (h,) in purged_rows}
        fresh = [h for h in hours if h not in final]
        valid = {h: tags[h] for h in fresh if h in tags}
        if valid:
            _settle_hours(storage, shard, valid, purged=True, rollups=False)
        todo = [h for h in fresh if h not in tags]
        # A day of hours per statement: the server keeps one id per row of it in memory.
        for i in range(0, len(todo), 24):
            chunk = {h: written.get(h, 0) for h in todo[i : i + 24]}
            _settle_hours(storage, shard, chunk, purged=True, rollups=rollups)
        marked += len(fresh)
    return marked


def hours_changed(storage: ClickHouseStorage, shard: Shard, hours: Iterable[int]) -> None:
    """Rows of ``hours`` on ``shard`` were deleted (erasure): their write counts
    move on, so their settlements no longer count and they are settled again."""
    rows = [(int(h), 1) for h in sorted(set(hours))]
    if rows:
        storage.execute(
            f"INSERT INTO {storage.local(WRITTEN)} (hour, rows) VALUES", rows, shard=shard
        )


# -- reading


def _settled_rows(table: str, where: str) -> str:
    """The settled rollup rows matching ``where``: per key, the most complete
    (``FINAL`` of ``ReplacingMergeTree(requests)``: the row with the most
    requests, folded as the sorted parts are read, no sort or hash of its own)."""
    return f"SELECT * FROM {table} FINAL WHERE {where}"


def _shard_traffic(
    storage: ClickHouseStorage, shard: Shard, start: int, end: int, step: int
) -> list[Any]:
    """One shard's grouped rows of ``[start, end)``: settled hours from their
    settlement, the others live; which is which decided once, up front."""
    first = start - start % HOUR
    _written, tags = _hour_states(storage, shard, first, end)
    live = [h for h in range(first, end, HOUR) if h not in tags]
    parts: list[str] = []
    if live:
        lo, hi = max(start, live[0]), min(end, live[-1] + HOUR)
        cond = f"ts >= {lo} AND ts < {hi}"
        skip = [h for h in tags if live[0] < h < live[-1]]
        if skip:
            cond += f" AND {_floor('ts', HOUR)} NOT IN ({_ints(sorted(skip))})"
        raw = _raw_rows(storage.local("leza_access"), cond)
        parts.append(
            f"SELECT {_floor('ts', step)} AS bucket, ml, rt, um, {_RAW_VECTOR} "
            f"FROM ({raw}) GROUP BY bucket, ml, rt, um"
        )
    if tags:
        pairs = ", ".join(f"({h}, {w})" for h, w in sorted(tags.items()))
        cond = (
            f"shard = {int(shard.num)} AND minute >= {start} AND minute < {end} "
            f"AND ({_floor('minute', HOUR)}, written) IN ({pairs})"
        )
        parts.append(
            f"SELECT {_floor('minute', step)} AS bucket, method, route, unmatched, {_SUM_VECTOR} "
            f"FROM ({_settled_rows(storage.local(SETTLED), cond)}) "
            "GROUP BY bucket, method, route, unmatched"
        )
    return [row for sql in parts for row in storage.execute(sql, shard=shard)]


def traffic(storage: ClickHouseStorage, since_us: int, until_us: int, bucket: int) -> Traffic:
    start, end, step = check_window(since_us, until_us, bucket)
    shards = storage.shards()
    if len(shards) == 1:
        found = [_shard_traffic(storage, shards[0], start, end, step)]
    else:  # each shard aggregates its own rows, side by side
        with ThreadPoolExecutor(max_workers=len(shards)) as pool:
            found = list(pool.map(lambda s: _shard_traffic(storage, s, start, end, step), shards))
    rows = [
        (int(r[0]), r[1], route_label(None if r[3] else r[2]), [int(v) for v in r[4:]])
        for part in found
        for r in part
    ]
    return build_traffic(rows, start, end, step)


def purge_traffic(storage: ClickHouseStorage, before: int) -> int:
    """Rollups of the hours that ended before ``before`` (rounded down to its
    hour) go; those hours are first marked purged, so their raw rows (if
    kept longer) are not counted live instead. Returns the rollup rows deleted."""
    cutoff = before - before % HOUR
    settle_before(storage, cutoff, rollups=False)
    table = storage.local(SETTLED)
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
