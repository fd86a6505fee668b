"""Django's auth signals as ACCESS actions: ``login``, ``logout``, ``login_failed``.

``user_logged_in``, ``user_logged_out`` and ``user_login_failed`` are sent by
``django.contrib.auth.login()`` / ``logout()`` / ``authenticate()`` (and their
async twins) inside the view, i.e. inside the request the middleware is
recording. The receivers call ``leza.sessions.login()`` / ``logout()`` /
``login_failed()``, which mark that request; the middleware then records it
with that action, and a logout ends the session (see ``middleware.py``).

Outside a request (``Client.login()`` in tests, a management command calling
``authenticate()``) there is no request to mark and the receivers do nothing.
They never raise: a receiver's exception would break the app's login.
Connected by ``LezaConfig.ready()`` and by the middleware's first request
(``dispatch_uid`` makes it once).
"""

from __future__ import annotations

import logging
from typing import Any

from ..context import current_native
from ..performer import Performer, performer_from_user

__all__ = ["connect_signals", "on_login", "on_login_failed", "on_logout"]

log = logging.getLogger("leza_middleware")

_UID = "leza_middleware.django.signals."


def connect_signals() -> None:
    """Connect the receivers to Django's auth signals (idempotent)."""
    from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

    user_logged_in.connect(on_login, dispatch_uid=_UID + "login")
    user_logged_out.connect(on_logout, dispatch_uid=_UID + "logout")
    user_login_failed.connect(on_login_failed, dispatch_uid=_UID + "login_failed")


def on_login(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """``user_logged_in``: the request is a login and starts a new session.

    The performer is resolved by the middleware after the view, from the
    ``request.user`` that ``login()`` set (or the ``performer`` hook), as for
    any request.
    """
    if current_native() is None:
        return
    try:
        from .conf import get_leza

        get_leza().sessions.login()
    except Exception:
        log.warning("leza: recording a login failed", exc_info=True)


def on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """``user_logged_out``: the request is a logout; the session it came with ends.

    Sent before ``logout()`` flushes the session and makes ``request.user``
    anonymous, so the user who logged out is resolved here and kept as the
    event's performer.
    """
    native = current_native()
    if native is None:
        return
    try:
        from .conf import get_leza

        leza = get_leza()
        performer = _performer(leza, native if request is None else request, user)
        leza.sessions.logout(performer=performer)
    except Exception:
        log.warning("leza: recording a logout failed", exc_info=True)


def on_login_failed(
    sender: Any, credentials: Any = None, request: Any = None, **kwargs: Any
) -> None:
    """``user_login_failed``: the request is a failed login (``request`` may be None).

    ``credentials`` come cleansed by Django (passwords, tokens, keys replaced
    with ``********``); only the username is kept, in the reason.
    """
    if current_native() is None:
        return
    try:
        from .conf import get_leza

        get_leza().sessions.login_failed(username=_username(credentials))
    except Exception:
        log.warning("leza: recording a failed login failed", exc_info=True)


def _username(credentials: Any) -> str | None:
    if not isinstance(credentials, dict):
        return None
    names = ["username"]
    try:
        from django.contrib.auth import get_user_model

        names.append(get_user_model().USERNAME_FIELD)
    except Exception:  # no auth app configured
        pass
    names.append("email")
    for name in names:
        value = credentials.get(name)
        if value:
            return str(value)
    return None


def _performer(leza: Any, request: Any, user: Any) -> Performer | None:
    """Who logs out: the ``performer`` hook (``request.user`` is still them), else ``user``."""
    if leza.performer_hook is not None:
        result: Performer | None = leza.hooks.performer(request)
        return result
    performer = performer_from_user(user)
    if performer is None:
        return None
    from .identity import with_roles

    return with_roles(performer, user)
