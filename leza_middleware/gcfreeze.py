"""``gc.freeze()`` after start-up (the ``gc_freeze`` setting).

What a process builds to start — modules, classes, an ORM's metadata (a SQL
storage brings SQLAlchemy: ~60,000 tracked objects), caches — is alive for
good, yet every full collection walks all of it again (~100 ms each on a
small machine). ``gc.freeze()`` moves every object alive at that moment out
of the collector's generations: full collections then walk only what was
made since (measured under uvicorn: ~1 ms of CPU each instead of 60-80 ms,
and no more often: the collection before each freeze leaves the collector's
measure of the old generation at its full size). The freeze itself is O(1)
(lists spliced).

It runs on the recorder thread, never in a request, twice per process: at the
recorder's first tick (the app has started and served its first request), and
once more :data:`WARMUP` seconds later (lazy imports done, caches filled by
the first traffic); each time after one full collection, so no garbage is
frozen. Never again. The trade-off: a frozen object is never examined by the
collector again, so one that later becomes part of unreachable cycles (a
start-up structure the app drops and replaces with a cyclic reference inside)
is never freed; objects made after the freezes are collected as usual, and
frozen objects are still freed by reference counting.

Nothing is done while the app has the collector disabled (``gc.disable()``:
it manages collections, and freezing, itself). The count is per process: a
child forked after a freeze (gunicorn ``--preload``) keeps the parent's frozen
objects frozen and freezes its own start-up again, twice.
"""

from __future__ import annotations

import gc
import os
import threading
from time import monotonic

__all__ = ["WARMUP", "frozen", "tick"]

#: Seconds between the first freeze and the second.
WARMUP = 60.0

_lock = threading.Lock()
_times: list[float] = []  # monotonic() of this process's freezes (at most two)


def tick() -> None:
    """Freeze when due (called on the recorder thread at each of its ticks)."""
    if len(_times) >= 2 or not gc.isenabled():  # disabled: the app manages the collector
        return
    with _lock:  # several Leza instances in one process: one of them freezes
        now = monotonic()
        if not _times or (len(_times) == 1 and now - _times[0] >= WARMUP):
            # Garbage first, so none is frozen for good: one full collection,
            # as the collector would run anyway every few seconds under load.
            gc.collect()
            gc.freeze()
            _times.append(now)


def frozen() -> int:
    """How many times this process has frozen its objects (0, 1 or 2)."""
    return len(_times)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by its recorder thread
    _times.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
