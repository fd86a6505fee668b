"""Traffic rollups, write side: a batch of stored access rows → per-minute and
per-hour increments (shared by the SQL and memory backends).

One rollup row per (bucket start, method label, route label) holds a vector
laid out as :data:`~leza_middleware.state.traffic.COUNT_FIELDS`, then
``last_seen``, then the latency histogram (``state/traffic.py``). Backends add
the increments of the rows they actually inserted, in the same transaction:
the counts are exactly what a COUNT over the raw rows gives.

Cost (the recorder thread shares the GIL with the app, see
``enrich/access.py``): the labels of each distinct (action, method, route,
status, outcome) are computed once and memoised as a small int; per event
there is only C-level column extraction and one short Python loop body that
adds to a list. Rows of one batch nearly always fall in one minute; the
minute then needs no per-event arithmetic.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import add, floordiv, itemgetter, mul
from typing import Any

from ..state.labels import method_label, outcome_index, route_label
from ..state.traffic import HIST, HOUR, LAST_SEEN, LATENCY_BOUNDS_US, MINUTE, VECTOR

__all__ = [
    "Aggregator",
    "Increments",
    "add_vector",
    "fold_hours",
    "in_window",
    "merge_into",
    "upsert_rows",
]

#: (bucket start µs, method label, route label) -> rollup vector.
Increments = dict[tuple[int, str, str], list[int]]

# Positions in an access row (events.ACCESS_FIELDS).
_TS = itemgetter(1)
_DURATION = itemgetter(7)
_CLASS_OF = itemgetter(2, 3, 5, 6, 8)  # action, method, route, status, outcome
_MEMO_LIMIT = 4096
_SHIFT = 1 << 24  # class ids stay below this (the memo is cleared long before)
# bisect_left over this gives a duration's histogram position in a rollup
# vector: HIST lower bounds below any duration, then the bucket bounds.
_BOUNDS = (-(2**63),) * HIST + LATENCY_BOUNDS_US
_SUM = 7  # duration_us in a vector (state.traffic.COUNT_FIELDS)


class Aggregator:
    """Increments of batches of access rows (one per storage; not thread-safe:
    the storage calls it under its write lock)."""

    def __init__(self) -> None:
        self._ids: dict[tuple[Any, ...], int] = {}
        # class id -> (method label, route label, outcome index, login, login failure)
        self._classes: list[tuple[str, str, int, int, int]] = []

    def _class_id(self, key: tuple[Any, ...]) -> int:
        found = self._ids.get(key)
        if found is not None:
            return found
        action, method, route, status, outcome = key
        cid = len(self._classes)
        self._classes.append(
            (
                method_label(method),
                route_label(route),
                outcome_index(outcome, status),
                int(action == "login"),
                int(action == "login_failed"),
            )
        )
        self._ids[key] = cid
        return cid

    def increments(self, rows: Sequence[tuple[Any, ...]]) -> Increments:
        """The per-minute increments of access ``rows`` (``AccessEvent.row`` tuples)."""
        if not rows:
            return {}
        if len(self._ids) > _MEMO_LIMIT:  # client-chosen methods could grow it
            self._ids.clear()
            self._classes.clear()
        keys5 = list(map(_CLASS_OF, rows))
        found = list(map(self._ids.get, keys5))
        cids: list[int] = (
            list(map(self._class_id, keys5)) if None in found else found  # type: ignore[assignment]
        )
        ts = list(map(_TS, rows))
        durations = list(map(_DURATION, rows))
        lo, hi = min(ts), max(ts)
        one_minute = lo // MINUTE == hi // MINUTE
        keys = cids if one_minute else list(
            map(add, cids, map(mul, map(floordiv, ts, repeat(MINUTE)), repeat(_SHIFT)))
        )  # fmt: skip
        # Each class accumulates straight into a rollup vector: the histogram
        # bucket found by bisect is already its position in the vector.
        accs: dict[int, list[int]] = {}
        get = accs.get
        for key, position, d, t in zip(  # noqa: B905 - same length by construction
            keys, map(bisect_left, repeat(_BOUNDS), durations), durations, ts
        ):
            acc = get(key)
            if acc is None:
                acc = accs[key] = [0] * VECTOR
                acc[LAST_SEEN] = t
            acc[position] += 1
            acc[_SUM] += d
            if t > acc[LAST_SEEN]:
                acc[LAST_SEEN] = t
        # Per class: its counts, then added into its (minute, method, route) row.
        out: Increments = {}
        classes = self._classes
        minute = lo - lo % MINUTE
        for key, acc in accs.items():
            if one_minute:
                cid = key
            else:
                minute_no, cid = divmod(key, _SHIFT)
                minute = minute_no * MINUTE
            method, route, outcome, login, failure = classes[cid]
            acc[0] = acc[outcome] = n = sum(acc[HIST:])
            if login:
                acc[5] = n
            if failure:
                acc[6] = n
            row = out.get((minute, method, route))
            if row is None:
                out[minute, method, route] = acc
            else:
                add_vector(row, acc)
        return out


def add_vector(acc: list[int], vector: Sequence[int]) -> None:
    """Add a rollup vector into ``acc`` in place: sums, and the newest last seen."""
    last = max(acc[LAST_SEEN], vector[LAST_SEEN])
    acc[:] = map(add, acc, vector)
    acc[LAST_SEEN] = last


def fold_hours(minutes: Increments) -> Increments:
    """The per-hour increments of per-minute ones."""
    out: Increments = {}
    for (ts, method, route), vector in minutes.items():
        key = (ts - ts % HOUR, method, route)
        acc = out.get(key)
        if acc is None:
            out[key] = list(vector)
        else:
            add_vector(acc, vector)
    return out


def merge_into(table: dict[tuple[int, str, str], list[int]], increments: Increments) -> None:
    """Add ``increments`` into an in-memory rollup table (the memory backend)."""
    for key, vector in increments.items():
        acc = table.get(key)
        if acc is None:
            table[key] = list(vector)
        else:
            add_vector(acc, vector)


def upsert_rows(increments: Increments) -> list[tuple[Any, ...]]:
    """Rows for the upsert, sorted by key: two writers adding to the same rows
    lock them in the same order (no deadlock on PostgreSQL)."""
    return [(*key, *increments[key]) for key in sorted(increments)]


def in_window(
    table: Iterable[tuple[tuple[int, str, str], list[int]]], start: int, end: int, step: int
) -> list[tuple[int, str, str, list[int]]]:
    """Rows of an in-memory table in ``[start, end)``, keyed by their ``step`` bucket
    (copies: the table goes on changing)."""
    return [
        (ts - ts % step, method, route, list(vector))
        for (ts, method, route), vector in table
        if start <= ts < end
    ]
