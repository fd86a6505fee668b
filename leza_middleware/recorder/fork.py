"""Fork and interpreter exit: every live recorder pauses for a fork, starts
afresh in the child, and is shut down at exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Recorder

__all__ = ["live"]

# Every live recorder, for fork handling and interpreter exit.
live: weakref.WeakSet[Recorder] = weakref.WeakSet()


# How long a fork waits for a recorder's step to finish (storage hanging mid-write).
_FORK_WAIT = 2.0
_fork_state = threading.local()


def _before_fork() -> None:
    """Let every recorder finish the step in hand before the process forks.

    Threads do not survive ``fork()`` but the locks they held stay held: a
    child forked while the worker thread was inside a batch (holding the lock
    of a GeoIP cache, the advisory engine, a storage driver) would block on it
    forever, e.g. a worker gunicorn ``--preload`` respawns while the master's
    recorder writes. Released again in the parent right after the fork.
    """
    me = threading.get_ident()
    held: list[threading.Lock] = []
    for rec in list(live):
        lock = rec.hold_for_fork(me, _FORK_WAIT)
        if lock is not None:
            held.append(lock)
    _fork_state.held = held


def _after_fork_in_parent() -> None:
    for lock in getattr(_fork_state, "held", ()):
        lock.release()
    _fork_state.held = []


def _after_fork_in_child() -> None:
    _fork_state.held = []  # the parent's locks; each recorder gets new ones below
    for rec in list(live):
        rec.after_fork()


def _at_exit() -> None:
    for rec in list(live):
        with contextlib.suppress(Exception):  # never break interpreter exit
            rec.shutdown()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(_at_exit)
