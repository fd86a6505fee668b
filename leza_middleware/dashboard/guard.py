"""``authorize``: who may see the dashboard. Denied unless it says yes.

A hook that raises, or returns anything but a true value, denies; the
error is logged (once per hook) and never shown to the viewer.

Who the admin is (:func:`admin_identity`, what a form's CSRF token is bound
to): the string ``authorize`` returned (or the id of a ``Performer``), else
the signed-in user the mount's request carries — Starlette's
``request.user`` (``identity``, else ``display_name``), Django's
``request.user`` (its username), a WSGI server's ``REMOTE_USER`` — else ""
(unknown: the token is then bound to the browser's cookie and its time only).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from ..errors import LezaConfigError

__all__ = [
    "DENIED_REASON",
    "MAX_BODY",
    "Authorize",
    "admin_identity",
    "call_authorize",
    "check_authorize",
    "is_async",
    "run_authorize",
]

log = logging.getLogger("leza_middleware")

#: ``authorize(request)``: a true value lets the request in; a string (or a
#: ``Performer``) also says who the admin is.
Authorize = Callable[[Any], Any]

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


def _denied_by_error(hook: object) -> None:
    if id(hook) not in _warned:
        _warned.add(id(hook))
        log.warning("leza dashboard: the authorize hook raised; denying", exc_info=True)


def call_authorize(hook: Authorize, request: Any) -> object | None:
    """A synchronous hook's true result, or None when it denies."""
    try:
        result = hook(request)
        if inspect.isawaitable(result):  # an async callable object: not awaitable here
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError("authorize returned an awaitable where a bool was expected")
        return result if result else None
    except Exception:
        _denied_by_error(hook)
        return None


async def run_authorize(hook: Authorize, request: Any) -> object | None:
    """An ``async def`` hook's true result, or None (ASGI mount)."""
    try:
        result = hook(request)
        if inspect.isawaitable(result):
            result = await result
        return result if result else None
    except Exception:
        _denied_by_error(hook)
        return None


def admin_identity(allowed: object, request: Any) -> str:
    """Who the admin ``authorize`` let in is (see the module docstring); "" when unknown.

    Never raises: a user object that cannot say who it is counts as unknown.
    """
    if isinstance(allowed, str):
        return allowed
    from ..performer import Performer

    if isinstance(allowed, Performer):
        return allowed.id
    try:
        if isinstance(request, dict):  # a WSGI environ (no Werkzeug installed)
            return str(request.get("REMOTE_USER") or "")
        if hasattr(request, "META"):  # Django (AuthenticationMiddleware sets user)
            return _user_identity(getattr(request, "user", None))
        scope = getattr(request, "scope", None)
        if isinstance(scope, dict):  # Starlette: only what AuthenticationMiddleware set
            return _user_identity(scope.get("user"))
        environ = getattr(request, "environ", None)
        if isinstance(environ, dict):  # Werkzeug
            return str(environ.get("REMOTE_USER") or "")
        return ""
    except Exception:
        return ""


def _user_identity(user: object) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return ""
    get_username = getattr(user, "get_username", None)  # Django
    if callable(get_username):
        return str(get_username())
    for name in ("identity", "display_name"):  # Starlette's BaseUser
        try:
            value = getattr(user, name, None)
        except NotImplementedError:  # BaseUser.identity, not overridden
            continue
        if value:
            return str(value)
    return ""
