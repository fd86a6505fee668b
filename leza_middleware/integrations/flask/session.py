"""The Leza session bound into Flask's signed-cookie session (``core/binding.py``).

Flask's default session is a signed cookie: a copy of it signs its holder in
after a logout or a revocation. So the Leza session's public id is kept in
``session["_leza_sid"]``, and every request's binding is checked before the
app's own hooks run: a bound session that ended is refused (and the browser
signed out), also when the request brings no ``leza_sid`` cookie — which is
what a replayed Flask cookie looks like. See docs/flask.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkzeug.http import parse_cookie

import flask
from flask.sessions import NullSession

from ...core.binding import SESSION_BINDING_KEY, bound_id, new_session_id, refuse
from ...performer import Performer
from ...sessions.registry import REQUEST_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from ...leza import Leza
    from ..wsgi_exchange import Exchange

__all__ = ["bind", "check_binding", "peek", "peek_session", "sign_out_headers"]

_REMEMBER_COOKIE = "remember_token"  # Flask-Login's default REMEMBER_COOKIE_NAME


def check_binding(leza: Leza, pending: Exchange | None) -> flask.Response | None:
    """Before the app's hooks: refuse a request whose bound session ended (or is
    unknown); else make the binding the request's session, whatever its
    ``leza_sid`` cookie says (one that timed out is not revived)."""
    bound = bound_id(peek(peek_session(), SESSION_BINDING_KEY))
    if bound is None:
        return None
    sessions = leza.sessions
    reason = sessions.refusal(bound)
    if reason is None:
        if pending is not None and bound not in sessions.timed_out:
            pending.adopt(bound)
        return None
    environ = flask.request.environ
    state = environ.get(REQUEST_KEY)
    if state is None:
        state = environ[REQUEST_KEY] = {}
    if refuse(state, bound, reason):
        _sign_out()
    status, headers, body = leza.hooks.revoked(flask.request)
    return flask.current_app.response_class(body, status=status, headers=headers)


def _sign_out() -> None:
    """Empty Flask's session (and delete Flask-Login's remember-me cookie): a copy
    of the cookie is refused anyway, but its browser can sign in afresh."""
    session = flask.session
    if isinstance(session, NullSession):
        return
    session.clear()
    app = flask.current_app
    if getattr(app, "login_manager", None) is not None:
        name = app.config.get("REMEMBER_COOKIE_NAME", _REMEMBER_COOKIE)
        if name in flask.request.cookies:
            session["_remember"] = "clear"  # Flask-Login deletes the cookie


def bind(leza: Leza, pending: Exchange, sid: str | None, performer: Performer | None) -> None:
    """Keep ``flask.session[SESSION_BINDING_KEY]`` naming the request's session."""
    session = peek_session()
    if isinstance(session, NullSession) or not len(session):
        return  # no secret key, or nothing in it to protect (API clients, anonymous)
    bound = bound_id(peek(session, SESSION_BINDING_KEY))
    if pending.ending:
        if bound is not None:
            flask.session.pop(SESSION_BINDING_KEY, None)
        return
    modified = bool(getattr(session, "modified", False))
    if sid is None:
        if not modified:
            return
        # The app wrote its session but nobody is visibly signed in yet: the
        # response of a login view that stores the user id and redirects.
        # That cookie is a credential from now on: bind it to the session the
        # next request (with the user) will start.
        sid = pending.adopt(new_session_id(leza.keyring))
    elif performer is None and not modified:
        return  # an anonymous request: no reason to rewrite the app's cookie
    if bound != sid:
        flask.session[SESSION_BINDING_KEY] = sid


def sign_out_headers(app: flask.Flask) -> Callable[[WSGIEnvironment], list[tuple[str, str]]]:
    """Headers the WSGI middleware adds when it refuses a revoked session before
    Flask runs: they delete Flask's session cookie and Flask-Login's remember-me
    cookie (those the request carries), with the attributes Flask deletes them
    with, so the browser is signed out instead of being refused again."""

    def headers(environ: WSGIEnvironment) -> list[tuple[str, str]]:
        cookies = parse_cookie(environ)
        response = app.response_class()
        iface = app.session_interface
        name = iface.get_cookie_name(app)
        if name in cookies:
            extra: dict[str, Any] = {}
            partitioned = getattr(iface, "get_cookie_partitioned", None)  # Flask >= 3.1
            if partitioned is not None and partitioned(app):
                extra["partitioned"] = True
            response.delete_cookie(
                name,
                path=iface.get_cookie_path(app),
                domain=iface.get_cookie_domain(app),
                secure=iface.get_cookie_secure(app),
                httponly=iface.get_cookie_httponly(app),
                samesite=iface.get_cookie_samesite(app),
                **extra,
            )
        if getattr(app, "login_manager", None) is not None:
            config = app.config
            remember = config.get("REMEMBER_COOKIE_NAME", _REMEMBER_COOKIE)
            if remember in cookies:
                response.delete_cookie(
                    remember,
                    domain=config.get("REMEMBER_COOKIE_DOMAIN"),
                    path=config.get("REMEMBER_COOKIE_PATH", "/"),
                )
        return [("Set-Cookie", value) for value in response.headers.getlist("Set-Cookie")]

    return headers


def peek_session() -> Any:
    """Flask's session, without marking it accessed.

    Flask adds ``Vary: Cookie`` to every response whose session was accessed;
    reading it for the log must not change the app's responses. Flask >= 3.1
    marks the access in the ``session`` property (``_session`` is the plain
    attribute); older versions in the session's ``__getitem__`` / ``get``, which
    :func:`peek` bypasses with ``dict.get``.
    """
    ctx: Any = flask.globals.request_ctx
    try:
        return ctx._session
    except AttributeError:  # Flask < 3.1
        return ctx.session


def peek(session: Any, key: str) -> Any:
    """``session.get(key)``, without marking it accessed (Flask < 3.1)."""
    if isinstance(session, dict):
        return dict.get(session, key)
    return session.get(key)
