"""The recorder: a bounded queue drained by one background thread per process.

Shaped like OpenTelemetry's BatchProcessor. The request path only appends to a
deque under a lock (no I/O); the worker thread, woken by an Event when a batch
is full or every ``flush_interval``, prepares (enriches) and writes batches.

Accounting is exact at all times (every counter changes under one lock)::

    enqueued == written + dropped + pending + spilled

* ``dropped`` only when the queue is full (by reason; login/logout/audit-type
  events are spilled instead) or when even the spill file cannot be written;
* storage failures are retried with backoff, then the batch is spilled to a
  local JSON Lines file and storage is probed again with growing delays; when
  it answers, spilled events are replayed (``replayed`` counts them, including
  those left by earlier runs);
* after ``fork`` the child starts with an empty queue and its own thread.

One module per concern: :mod:`.worker` (the queue, the thread, flush and
shutdown: :class:`Recorder`), :mod:`.writing` (write, retry, spill, replay),
:mod:`.refusals` (what storage refuses), :mod:`.books` (state and counters),
:mod:`.fork` (fork and exit), :mod:`.listeners`, :mod:`.threadname`.
"""

from __future__ import annotations

from typing import Any

from . import threadname as _threadname
from .fork import live
from .listeners import add_listener, remove_listener
from .refusals import Split as Split
from .refusals import refused_by_value as refused_by_value
from .refusals import refused_for_content as refused_for_content
from .refusals import split_refused as split_refused
from .worker import Recorder

__all__ = ["Recorder", "add_listener", "live_recorders", "remove_listener"]


def live_recorders() -> list[Recorder]:
    """Every recorder of this process still referenced (``capture_events()`` flushes them)."""
    return list(live)


def __getattr__(name: str) -> Any:
    # Read at access time: whether the thread-name lookup has run (tests read it).
    if name == "_prctl_loaded":
        return _threadname.prctl_loaded()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
