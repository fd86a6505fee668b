"""Settling ahead on ClickHouse (storage/clickhouse_traffic.py): hours that are
over are settled by the upkeep and read from their settlement; STATE's traffic
is the same before and after, and equal to SQLite's rollups of the same events;
a late replay into a settled hour is counted once (read live at once, settled
again by the next upkeep); two settlers at once; on one server and on two
shards (``ch_any``). Real servers: see test_storage_clickhouse.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_rollups import event
from test_storage_clickhouse import T0, merges
from test_storage_clickhouse_views import WINDOWS, traffic_events

from leza_middleware.events import AccessEvent
from leza_middleware.storage import SQLStorage
from leza_middleware.storage.clickhouse import ClickHouseStorage
from leza_middleware.storage.clickhouse_traffic import MARKS, SETTLED, WRITTEN

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")

HOUR = 3_600_000_000


def settle_all(ch: ClickHouseStorage, now: int) -> int:
    """The upkeep run until it has nothing left (each call is time-boxed)."""
    total = 0
    while n := ch.settle_traffic(now):
        total += n
    return total


def marks(ch: ClickHouseStorage) -> list[tuple[int, int, int, int]]:
    """``(shard, hour, written, purged)`` of every settlement on every shard."""
    return sorted(
        (shard.num, int(h), int(w), int(p))
        for shard in ch.shards()
        for h, w, p in ch.execute(
            f"SELECT hour, written, purged FROM {ch.local(MARKS)} FINAL", shard=shard
        )
    )


def hours_with_rows(ch: ClickHouseStorage) -> set[tuple[int, int]]:
    return {
        (shard.num, int(h))
        for shard in ch.shards()
        for (h,) in ch.execute(
            f"SELECT DISTINCT intDiv(ts, {HOUR}) * {HOUR} FROM {ch.local('leza_access')} "
            "WHERE ts >= 0",
            shard=shard,
        )
    }


@pytest.fixture
def sqlite(tmp_path: Path) -> SQLStorage:
    return SQLStorage(f"sqlite:///{tmp_path / 'reference.db'}")


def same_as(ch: ClickHouseStorage, reference: SQLStorage, base: int, note: str) -> None:
    for since, until, bucket in WINDOWS:
        want = reference.traffic(base + since, base + until, bucket)
        got = ch.traffic(base + since, base + until, bucket)
        assert got == want, (note, since, until, bucket)
        assert got.totals.requests > 0


def test_hours_that_are_over_are_settled_and_state_does_not_change(
    ch_any: ClickHouseStorage, sqlite: SQLStorage
) -> None:
    ch, reference = ch_any, sqlite
    base = T0 + 12 * HOUR + 17
    events = traffic_events(base)
    reference.write(events)
    ch.setup()
    merges(ch, "leza_access", on=False)  # replayed copies stay in the table
    for start in range(0, len(events), 500):
        ch.write(events[start : start + 500])
    ch.write(events[::7])  # a replay
    same_as(ch, reference, base, "every hour live")
    assert marks(ch) == []

    # "Now" is inside the last hour with events: every hour before it is over.
    last = max(e.ts for e in events)
    now = last - last % HOUR + 30 * 60_000_000
    settled = settle_all(ch, now)
    expected = {(s, h) for s, h in hours_with_rows(ch) if h + HOUR <= now - 2 * 60_000_000}
    assert settled == len(expected)
    assert {(s, h) for s, h, _, _ in marks(ch)} == expected
    assert ch.settle_traffic(now) == 0  # nothing changed: nothing to do
    same_as(ch, reference, base, "settled ahead")

    # The settled hours really are read from their settlements: their raw rows
    # deleted behind the settlement's back (no write count moves) change nothing.
    merges(ch, "leza_access", on=True)  # (a mutation runs in the merge pool)
    keep = now - now % HOUR
    for shard in ch.shards():
        table = ch.local("leza_access")
        ch.execute(f"ALTER TABLE {table} DELETE WHERE ts < {keep}", shard=shard)
        ch.wait_mutations(table, shard)
    same_as(ch, reference, base, "raw rows of settled hours gone")


def test_a_late_replay_into_a_settled_hour_is_counted_once(
    ch_any: ClickHouseStorage, sqlite: SQLStorage
) -> None:
    ch, reference = ch_any, sqlite
    hour = T0 + 30 * HOUR
    events = [
        event(hour + i * 7_000_000, duration_us=137 * i, status=(200, 404, 500)[i % 3],
              outcome=("success", "failure", "error")[i % 3], route=("/a", "/b", None)[i % 3])
        for i in range(300)
    ]  # fmt: skip
    stored, spilled = events[:200], events[200:]
    ch.setup()
    merges(ch, "leza_access", on=False)
    ch.write(stored)
    reference.write(stored)
    window = (hour - HOUR, hour + 2 * HOUR - 1, 60)
    assert ch.traffic(*window) == reference.traffic(*window)
    now = hour + 3 * HOUR
    assert settle_all(ch, now) == len(ch.shards())  # the one hour, on each shard
    first = marks(ch)
    assert ch.traffic(*window) == reference.traffic(*window)

    # The spill is replayed hours later: the events that never made it, and a
    # part of the batch that had in fact been stored (its answer was lost).
    replay: list[AccessEvent] = spilled + stored[50:120]
    ch.write(replay)
    reference.write(replay)
    want = reference.traffic(*window)
    assert want.totals.requests == 300
    assert ch.traffic(*window) == want  # at once: the hour is read live again
    assert settle_all(ch, now) == len(ch.shards())  # and settled again
    again = marks(ch)
    assert len(again) == 2 * len(first)
    assert set(first) < set(again)
    assert ch.traffic(*window) == want
    ch.write(stored[:10])  # and once more: still once
    assert ch.traffic(*window) == want
    assert settle_all(ch, now) == len(ch.shards())
    assert ch.traffic(*window) == want
    merges(ch, "leza_access", on=True)


def test_two_settlers_at_once_count_every_event_once(
    ch_any: ClickHouseStorage, sqlite: SQLStorage
) -> None:
    ch, reference = ch_any, sqlite
    base = T0 + 40 * HOUR
    events = [
        event(base + i * 97_000_000, duration_us=1000 + i, route=f"/r{i % 5}",
              status=(200, 403, 500, 404)[i % 4],
              outcome=("success", "denied", "error", "failure")[i % 4])
        for i in range(1500)  # ~40 hours
    ]  # fmt: skip
    reference.write(events)
    ch.write(events)
    now = base + 48 * HOUR
    window = (base, base + 45 * HOUR, 3600)
    other = ClickHouseStorage(ch.url)  # another process's storage: its own connections
    try:
        other.setup()
        start = threading.Barrier(2)
        done: list[int] = []
        errors: list[BaseException] = []

        def run(storage: ClickHouseStorage) -> None:
            try:
                start.wait()
                done.append(settle_all(storage, now))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in (ch, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sum(done) >= len(hours_with_rows(ch))  # every hour, some twice
        assert ch.settle_traffic(now) == other.settle_traffic(now) == 0
        assert ch.traffic(*window) == reference.traffic(*window)
        assert other.traffic(*window) == reference.traffic(*window)
        # A late write while both settle again: still once.
        late = [event(base + 3 * HOUR + i, duration_us=5) for i in range(1, 40)]
        reference.write(late)
        ch.write(late)
        threads = [threading.Thread(target=lambda s=s: done.append(settle_all(s, now)))
                   for s in (ch, other)]  # fmt: skip
        for t in threads:
            t.start()
        ch.write(late[:5])  # a replay of part of it, racing the settlers
        for t in threads:
            t.join(120)
        assert ch.traffic(*window) == reference.traffic(*window)
        settle_all(ch, now)
        assert ch.traffic(*window) == reference.traffic(*window)
        for shard in ch.shards():  # the write counts are what was inserted
            written = ch.execute(f"SELECT sum(rows) FROM {ch.local(WRITTEN)}", shard=shard)
            stored = ch.execute(f"SELECT count() FROM {ch.local('leza_access')}", shard=shard)
            assert written[0][0] >= stored[0][0] > 0
            assert ch.execute(f"SELECT count() FROM {ch.local(SETTLED)}", shard=shard)[0][0]
    finally:
        other.close()


def test_the_recorder_settles_hours_through_state(
    clickhouse_storage: ClickHouseStorage, tmp_path: Path
) -> None:
    """``leza.query.state()`` without a recorder settles what is over before reading
    (build_state), with access on ClickHouse and the rest on SQLite."""
    from leza_middleware import Leza

    ch = clickhouse_storage
    url = ch.url.describe()
    sqlite_url = f"sqlite:///{tmp_path / 'rest.db'}"
    import time

    now = time.time_ns() // 1000
    events = [event(now - 20 * HOUR + i * 60_000_000, duration_us=900) for i in range(600)]
    ch.write(events)
    leza = Leza(storage={"access": url, "log": url, "advisory": url, "default": sqlite_url})
    try:
        state = leza.query.state()
        assert state["requests"] == 600
        settled = marks(ch)
        assert settled
        assert all(h + HOUR <= now for _, h, _, _ in settled)
        assert leza.query.state()["requests"] == 600
    finally:
        leza.shutdown(timeout=5)
