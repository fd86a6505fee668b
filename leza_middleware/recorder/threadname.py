"""The recorder thread's name as the OS shows it (Linux ``prctl``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

__all__ = ["load_prctl", "name_os_thread", "prctl_loaded"]


def name_os_thread(name: bytes) -> None:
    """Show the thread as ``leza-recorder`` in top -H, ps -L and /proc (Linux).

    Python < 3.14 names threads only inside Python; operators looking at CPU
    per thread should see which one is ours. Uses the prctl that
    :func:`load_prctl` found before the thread started.
    """
    set_name = _set_thread_name
    if set_name is not None:
        with contextlib.suppress(Exception):
            set_name(name[:15])


_set_thread_name: Callable[[bytes], object] | None = None
_prctl_loaded = False


def load_prctl() -> None:
    """Find libc's prctl once, in the thread that starts the worker, not in the
    worker: a ``fork()`` while a thread imports ctypes leaves the child that
    module's import lock held by a thread it does not have, and its recorder
    thread would block on ``import ctypes`` for ever (gunicorn ``--preload``
    forks right after the app is loaded, when the master's recorder starts)."""
    global _set_thread_name, _prctl_loaded
    if _prctl_loaded:
        return
    _prctl_loaded = True
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        char_p = ctypes.c_char_p
        _set_thread_name = lambda name: prctl(15, char_p(name), 0, 0, 0)  # noqa: E731 - PR_SET_NAME


def prctl_loaded() -> bool:
    """Whether :func:`load_prctl` has run (in the thread that starts a worker)."""
    return _prctl_loaded
