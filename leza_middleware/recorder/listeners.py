"""Listeners of every recorder in the process (``testing.capture_events``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..events import Event

__all__ = ["Listener", "add_listener", "listeners", "listeners_lock", "remove_listener"]

Listener = Callable[[Sequence[Event]], None]

# Listeners see every prepared event of every recorder in the process (used by
# ``leza_middleware.testing.capture_events``). Copy-on-write: the worker
# iterates a snapshot without locking.
_listeners: tuple[Listener, ...] = ()
#: Guards copy-on-write updates of these listeners and of recorders' observers.
listeners_lock = threading.Lock()


def listeners() -> tuple[Listener, ...]:
    """The current snapshot (the worker iterates it without locking)."""
    return _listeners


def add_listener(fn: Listener) -> None:
    global _listeners
    with listeners_lock:
        _listeners = (*_listeners, fn)


def remove_listener(fn: Listener) -> None:
    global _listeners
    with listeners_lock:
        _listeners = tuple(x for x in _listeners if x is not fn)
