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
from ..state.traffic import HOUR, LAST_SEEN, LATENCY_BOUNDS_US, MINUTE

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
_NB = len(LATENCY_BOUNDS_US) + 1
_SUM, _LAST = _NB, _NB + 1  # a per-class accumulator: histogram, duration sum, last seen


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
        accs: dict[int, list[int]] = {}
        get = accs.get
        for key, bucket, d, t in zip(  # noqa: B905 - same length by construction
            keys, map(bisect_left, repeat(LATENCY_BOUNDS_US), durations), durations, ts
        ):
            acc = get(key)
            if acc is None:
                acc = accs[key] = [0] * (_NB + 2)
                acc[_LAST] = t
            acc[bucket] += 1
            acc[_SUM] += d
            if t > acc[_LAST]:
                acc[_LAST] = t
        # Per class: its vector (C-level list operations: a batch may hold a few
        # hundred classes), then added into its (minute, method, route) row.
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
            hist = acc[:_NB]
            n = sum(hist)
            vector = [n, 0, 0, 0, 0, n * login, n * failure, acc[_SUM], acc[_LAST], *hist]
            vector[outcome] = n
            row = out.get((minute, method, route))
            if row is None:
                out[minute, method, route] = vector
            else:
                last = max(row[LAST_SEEN], vector[LAST_SEEN])
                row[:] = map(add, row, vector)
                row[LAST_SEEN] = last
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
    """Rows of an in-memory table in ``[start, end)``, keyed by their ``step`` bucket."""
    return [
        (ts - ts % step, method, route, vector)
        for (ts, method, route), vector in table
        if start <= ts < end
    ]
