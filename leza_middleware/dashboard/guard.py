"""``authorize``: who may see the dashboard. Denied unless it says yes.

A hook that raises, or returns anything but a true value, denies; the
error is logged (once per hook) and never shown to the viewer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import LezaConfigError

__all__ = [
    "DENIED_REASON",
    "MAX_BODY",
    "Authorize",
    "call_authorize",
    "check_authorize",
    "is_async",
    "run_authorize",
]

log = logging.getLogger("leza_middleware")

Authorize = Callable[[Any], bool | Awaitable[bool]]

#: The reason of a refused dashboard request's access event.
DENIED_REASON = "Not authorized to view the Leza dashboard"
#: The largest request body accepted (a revoke form is a few hundred bytes).
MAX_BODY = 64 * 1024

_warned: set[int] = set()


def check_authorize(authorize: object) -> Authorize | None:
    """``authorize`` as given, when it is a callable or None (refuse everyone)."""
    if authorize is None:
        log.warning(
            "leza dashboard: no authorize= hook, so every request is refused (403); pass "
            "authorize=callable(request) -> bool"
        )
        return None
    if not callable(authorize):
        raise LezaConfigError(
            f"dashboard authorize must be a callable(request) -> bool, got "
            f"{type(authorize).__name__} ({authorize!r:.60})"
        )
    return authorize


def is_async(hook: object) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - the method, not callable()
    )


def _denied_by_error(hook: object) -> bool:
    if id(hook) not in _warned:
        _warned.add(id(hook))
        log.warning("leza dashboard: the authorize hook raised; denying", exc_info=True)
    return False


def call_authorize(hook: Authorize, request: Any) -> bool:
    """A synchronous hook's answer; True only for a true result."""
    try:
        result = hook(request)
        if inspect.isawaitable(result):  # an async callable object: not awaitable here
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError("authorize returned an awaitable where a bool was expected")
        return bool(result)
    except Exception:
        return _denied_by_error(hook)


async def run_authorize(hook: Authorize, request: Any) -> bool:
    """An ``async def`` hook's answer (ASGI mount)."""
    try:
        result = hook(request)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)
    except Exception:
        return _denied_by_error(hook)
