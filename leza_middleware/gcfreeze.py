"""``gc.freeze()`` after start-up (the ``gc_freeze`` setting).

What a process builds to start — modules, classes, an ORM's metadata (a SQL
storage brings SQLAlchemy: ~60,000 tracked objects), caches — is alive for
good, yet every full collection walks all of it again (~100 ms each on a
small machine). ``gc.freeze()`` moves every object alive at that moment out
of the collector's generations: full collections then walk only what was
made since. It is O(1) (lists spliced), so no request waits on it.

It runs on the recorder thread, never in a request, twice per process: at the
recorder's first tick (the app has started and served its first request), and
once more :data:`WARMUP` seconds later (lazy imports done, caches filled by
the first traffic). Never again. The trade-off: the collector never examines
a frozen object again, so cyclic garbage alive at a freeze is never freed
(start-up leaves little of it; what the app makes afterwards is collected as
usual), and objects frozen are only freed by reference counting.

The count is per process: a child forked after a freeze (gunicorn
``--preload``) keeps the parent's frozen objects frozen and freezes its own
start-up again, twice.
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
    if len(_times) >= 2:
        return
    with _lock:  # several Leza instances in one process: one of them freezes
        now = monotonic()
        if not _times or (len(_times) == 1 and now - _times[0] >= WARMUP):
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
