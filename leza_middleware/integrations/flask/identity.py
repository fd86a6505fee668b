"""Who a Flask request's performer is, and what they may do; Flask-Login's signals.

The performer for the log, first that applies: the ``performer=`` hook (called
with ``flask.request``); Flask-Login's user, when the request loaded it and it
is authenticated (it is not loaded just for the log: a user loader would run a
query the view did not need); ``flask.g.user`` when set (a Performer, a mapping
or row, or any user object: set means signed in unless its
``is_authenticated`` says otherwise); with Flask-Login set up but its user not
loaded, the user id its session holds. For a permission decision Flask-Login's
user is loaded (the view of a protected endpoint would load it anyway), and
its ``permissions`` (or ``g.user``'s) are what the performer may do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import flask

from ...performer import Performer, performer_from_user
from .session import peek, peek_session

if TYPE_CHECKING:
    from ...leza import Leza

__all__ = ["connect_flask_login", "deciding_performer", "performer"]


def performer(leza: Leza) -> Performer | None:
    """The performer of the running request, for its access event."""
    hooks = leza.hooks
    if hooks.performer_hook is not None:
        return hooks.performer(flask.request)
    g = flask.g
    loaded = "_login_user" in g  # Flask-Login's current_user, once loaded
    if loaded:
        found = performer_from_user(g._login_user)
        if found is not None:
            return found
    user = g.get("user")
    if user is not None:
        return _from_g_user(user)
    if not loaded and getattr(flask.current_app, "login_manager", None) is not None:
        user_id = peek(peek_session(), "_user_id")
        if user_id is not None and user_id != "":
            return Performer(id=str(user_id))
    return None


def deciding_performer(leza: Leza) -> Performer | None:
    """Who asks for a protected endpoint, with what they may do."""
    hooks = leza.hooks
    if hooks.performer_hook is not None:
        return hooks.performer(flask.request)
    if getattr(flask.current_app, "login_manager", None) is not None:
        flask_login = importlib.import_module("flask_login")
        user = flask_login.current_user._get_current_object()
        found = performer_from_user(user)
        if found is not None:
            return _with_permissions(found, user)
    user = flask.g.get("user")
    if user is None:
        return None
    found = _from_g_user(user)
    return None if found is None else _with_permissions(found, user)


def connect_flask_login(leza: Leza, app: flask.Flask) -> None:
    """Flask-Login's sign-in and sign-out signals, for this app only: a sign-in
    records the request as a ``login`` (a new session), a sign-out as a
    ``logout`` naming the user who left."""
    try:
        signals = importlib.import_module("flask_login.signals")
    except ImportError:
        return

    def logged_in(sender: Any, user: Any = None, **extra: Any) -> None:
        try:
            # With a performer= hook, the hook names the user (after the view).
            who = None if leza.hooks.performer_hook is not None else performer_from_user(user)
            leza.sessions.login(who)
        except Exception:  # never let recording hurt the app
            leza.faults.request_path_error()

    def logged_out(sender: Any, user: Any = None, **extra: Any) -> None:
        try:
            # Who is leaving: after the view, current_user is anonymous already.
            hooks = leza.hooks
            if hooks.performer_hook is not None:
                who = hooks.performer(flask.request)
            else:
                who = performer_from_user(user)
            leza.sessions.logout(performer=who)
        except Exception:  # never let recording hurt the app
            leza.faults.request_path_error()

    # sender=app: only this app's sign-ins. weak=False: the receivers are these
    # closures, referenced nowhere else; blinker drops them with the app.
    signals.user_logged_in.connect(logged_in, sender=app, weak=False)
    signals.user_logged_out.connect(logged_out, sender=app, weak=False)


def _with_permissions(found: Performer, user: Any) -> Performer:
    """``found`` with the ``permissions`` its user object (or mapping) lists."""
    if found.permissions:
        return found
    try:
        if isinstance(user, Mapping) or hasattr(user, "keys"):  # dict, sqlite3.Row
            names = user["permissions"] if "permissions" in user.keys() else None  # noqa: SIM118
        else:
            names = getattr(user, "permissions", None)
    except Exception:  # a property that raised: no permissions
        return found
    if isinstance(names, str):
        names = (names,)
    elif not isinstance(names, Collection) or isinstance(names, Mapping | bytes):
        return found
    granted = frozenset(name for name in names if isinstance(name, str))
    return replace(found, permissions=granted) if granted else found


def _from_g_user(user: Any) -> Performer | None:
    if isinstance(user, Performer):
        return user
    if isinstance(user, Mapping) or hasattr(user, "keys"):  # dict, sqlite3.Row
        # keys(), not iteration: a sqlite3.Row iterates over its values.
        data = {key: user[key] for key in user.keys()}  # noqa: SIM118
        return performer_from_user(_SignedIn(data.get))
    if not hasattr(user, "is_authenticated"):
        return performer_from_user(_SignedIn(lambda name: getattr(user, name, None)))
    return performer_from_user(user)


class _SignedIn:
    """``g.user`` as ``performer_from_user`` reads it: set means signed in."""

    is_authenticated = True

    def __init__(self, get: Callable[[str], Any]) -> None:
        self._get = get

    def __getattr__(self, name: str) -> Any:
        return self._get(name)
