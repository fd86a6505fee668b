"""ClickHouse pages read a time slice at a time (clickhouse_read.slices): the
slices cover the filter's range exactly, and pages walked across many slices
hold every event once, in order, as an unsliced read would."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import replace
from typing import Any

import pytest

from leza_middleware.events import AccessEvent
from leza_middleware.storage import QueryFilter
from leza_middleware.storage.clickhouse_read import SLICE_US, slices

NOW = 1_800_000_000_000_000
H = SLICE_US


def holds(part: tuple[int | None, int | None], t: int) -> bool:
    since, until = part
    return (since is None or t >= since) and (until is None or t <= until)


@pytest.mark.parametrize(
    "flt",
    [
        QueryFilter(),
        QueryFilter(since=NOW - 3 * H),
        QueryFilter(since=NOW - 3000 * H, until=NOW - 5),
        QueryFilter(until=NOW - 100 * H),
        QueryFilter(since=NOW - 5 * H, until=NOW - 5 * H),
        QueryFilter(since=NOW, until=NOW - 1),  # empty
        QueryFilter(since=NOW - 2000 * H, cursor=(NOW - 50 * H, "x")),
        QueryFilter(since=NOW - 2000 * H, ascending=True),
        QueryFilter(since=NOW - 2000 * H, until=NOW, ascending=True, cursor=(NOW - 900 * H, "x")),
        QueryFilter(ascending=True),
        QueryFilter(until=NOW, ascending=True),
    ],
)
def test_slices_cover_the_range_exactly_once_in_reading_order(flt: QueryFilter) -> None:
    parts = slices(flt, NOW)
    assert 1 <= len(parts) <= 7
    since, until = flt.since, flt.until
    if flt.cursor is not None:
        if flt.ascending:
            since = flt.cursor[0] if since is None else max(since, flt.cursor[0])
        else:
            until = flt.cursor[0] if until is None else min(until, flt.cursor[0])
    rng = random.Random(1)
    points = [NOW + rng.randrange(-6000 * H, 10 * H) for _ in range(5000)]
    for part in parts:  # each edge and its neighbours
        points += [x + d for x in part if x is not None for d in (-1, 0, 1)]
    for t in points:
        inside = (since is None or t >= since) and (until is None or t <= until)
        assert sum(holds(p, t) for p in parts) == int(inside), t
    # Reading order: every point of a slice comes before (newest first: is
    # newer than) every point of the next.
    for (s1, u1), (s2, u2) in itertools.pairwise(parts):
        if flt.ascending:
            assert u1 is not None
            assert s2 is not None
            assert u1 < s2
        else:
            assert s1 is not None
            assert u2 is not None
            assert u2 < s1


def _events(now: int, n: int = 300) -> list[AccessEvent]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        # Dense in the last hours, sparse over weeks, a few in the future (skewed clocks).
        ts = now - int(rng.choice([H / 2, 3 * H, 30 * H, 400 * H, 3000 * H]) * rng.random())
        if i % 50 == 0:
            ts = now + rng.randrange(1, 600_000_000)
        if i % 7 == 0 and out:
            ts = out[-1].ts  # equal times: the id orders them
        out.append(AccessEvent.build(
            id=f"s{i:05d}", ts=ts, action=rng.choice(["access", "denied"]), method="GET",
            endpoint="/x", route="/x", status=200, duration_us=10, outcome="success",
            reason="r", request_id=f"q{i}", client_ip="10.0.0.1", ip_valid=True,
            peer_ip="10.0.0.1", scheme="https", host="h", app="a",
        ))  # fmt: skip
    return out


@pytest.mark.parametrize("ascending", [False, True])
@pytest.mark.parametrize("action", [None, "denied"])
def test_pages_across_slices_hold_every_event_once_in_order(
    clickhouse_storage: Any, ascending: bool, action: str | None
) -> None:
    now = time.time_ns() // 1000
    events = _events(now)
    clickhouse_storage.write(events)
    clickhouse_storage.write(events[:40])  # a replay: still once
    expected = sorted(
        ((e.ts, e.id) for e in events if action is None or e.action == action),
        reverse=not ascending,
    )
    for since in (None, now - 500 * H):
        flt = QueryFilter(limit=17, action=action, ascending=ascending, since=since)
        if since is None and ascending:
            flt = replace(flt, since=now - 4000 * H)
        got: list[tuple[int, str]] = []
        while True:
            page = clickhouse_storage.query("access", flt)
            got += [(e.ts, e.id) for e in page.events]
            if page.next_cursor is None:
                break
            flt = replace(flt, cursor=page.next_cursor)
        want = [k for k in expected if flt.since is None or k[0] >= flt.since]
        assert got == want
