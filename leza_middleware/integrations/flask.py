"""Flask: ``leza.init_app(app)``.

This module is imported only by :meth:`Leza.init_app <leza_middleware.Leza.init_app>`,
so Flask stays an optional dependency (the ``flask`` extra).

What ``init_app`` does:

* configuration: ``app.config["LEZA_<NAME>"]`` supplies any setting the Leza
  was not given explicitly (``LEZA_STORAGE``, ``LEZA_GEOIP_DB``,
  ``LEZA_TRUSTED_PROXIES``, ``LEZA_PERFORMER``, ``LEZA_SECRET_KEY``,
  ``LEZA_APP_NAME``, ``LEZA_LOGOUT_ROUTES``, …). Precedence: ``Leza(...)``
  argument > ``app.config`` > ``LEZA_*`` environment variable > default, so
  ``leza = Leza()`` at import time and ``leza.init_app(app)`` in the app
  factory is the usual pattern. The Leza is rebuilt with the merged settings
  when they differ, which is only allowed before it recorded anything (see
  ``Leza._reconfigure``);
* wraps ``app.wsgi_app`` with :class:`LezaWSGIMiddleware` (once), which issues
  the machine-id and session cookies and refuses requests of revoked sessions
  (see ``integrations/wsgi.py``);
* ``app.extensions["leza"]`` and ``app.leza`` are the Leza;
* a ``before_request`` hook, run before the app's own, refuses a request whose
  Flask session is bound to a revoked or logged-out session (below);
* an ``after_request`` hook, run after the app's own, marks bodies built in
  memory (not streamed), so they are recorded when the app returns instead of
  when the server finished reading them (Werkzeug's test client reads a body
  only when asked); resolves the performer while ``g`` and ``session`` are
  there, decides the session (through the middleware's ``settle``) and binds
  it to Flask's session — all before Flask writes its session cookie;
* a ``teardown_request`` hook — it runs for every request, including ones that
  raised, and for streamed responses again when the stream ends — leaves in
  the environ what only Flask knows: the route template (``request.url_rule``),
  an unhandled exception's class, and the performer when the ``after_request``
  hook did not run (an exception Flask re-raises);
* endpoint permissions (``Leza(permissions=...)``), decided after the app's
  ``before_request`` hooks, before the view (below); the middleware leaves
  the decision to Flask (``permissions_in_app``), so it is taken once;
* Flask-Login, when installed: its ``user_logged_in`` signal records the
  request as a ``login`` (a new session for the browser) and
  ``user_logged_out`` as a ``logout`` (the session ends; the event names the
  user who left). Both are connected for this app only. Flask-Login has no
  signal for a failed sign-in: call ``leza.sessions.login_failed(reason,
  username=...)`` in the view that rejects the password.

The performer, first that applies:

1. the ``performer=`` hook (``Leza(performer=...)`` or ``LEZA_PERFORMER``),
   called with ``flask.request`` inside the request context;
2. Flask-Login's user, when the request loaded it (``current_user`` was used,
   e.g. by ``@login_required``, a template or ``login_user``) and it is
   authenticated. It is not loaded just for the log: a user loader would run
   a query the view did not need, and a remember-me cookie could be refreshed
   when the app did not ask for it;
3. ``flask.g.user`` when set (the Flask tutorial's convention): a Performer, a
   mapping or row (``sqlite3.Row``), or any user object; its presence means
   signed in unless it has an ``is_authenticated`` that says otherwise;
4. with Flask-Login set up but its user not loaded: the user id its session
   holds, as ``Performer(id=...)``.

Endpoint permissions
--------------------

A protected endpoint (``REQUEST_METHOD`` with ``PATH_INFO`` or ``SCRIPT_NAME +
PATH_INFO``, matched as the WSGI middleware matches it) is decided once Flask's
``preprocess_request`` has run every ``before_request`` hook — the app's and
its blueprints', whenever they were registered — and returned nothing, so a
user the app loads there (``g.user``) is known; the view has not run. A hook
that answers itself (a redirect to the login page, a revoked session) leaves
nothing to decide. The performer:

1. the ``performer=`` hook, called with ``flask.request``;
2. Flask-Login's ``current_user``, loaded now if the request did not load it
   yet (its user loader, request loader or remember-me cookie), when it is
   authenticated;
3. ``flask.g.user`` when set (as above).

What it may do: the ``has_permission`` hook when configured, else the
performer's ``permissions`` — the hook's, or the ``permissions`` attribute
(a mapping's ``"permissions"`` key) of the Flask-Login user or ``g.user``: a
collection of permission names, or one name.

A refusal is Flask's response to the request (the app's ``after_request``
hooks and session handling run as for any response): the decision's status
(401 or 403) with a JSON body ``{"detail": reason}``, recorded as action
``denied`` with that reason; a refused request to a logout route does not end
the session. An allowed request's event (status below 400) carries the
permission's reason.

Sessions and Flask's signed-cookie session
------------------------------------------

Flask's default session is a signed cookie: whoever holds a copy of it is
signed in, and a logout or a revocation cannot invalidate that copy. So the
Leza session is *bound* to Flask's session: its public id (the keyed hash
``leza.sessions.active()`` lists as ``_id``; not a credential) is stored in
``session["_leza_sid"]``, inside the signed cookie, where it cannot be edited
or removed without breaking the signature.

* When the request's session is decided (a sign-in, a signed-in user's first
  request, or a request that wrote a non-empty Flask session — the response
  of a login view that signs the user in by hand and redirects), the binding
  is written if it differs. Flask then writes its cookie as it would anyway
  (it does for a sign-in); an unchanged binding costs nothing.
* Every request's binding is checked first, against the in-memory blocklist
  (``leza.sessions.refusal``; no storage query): a bound session that was
  revoked or logged out is refused with ``revoked_response`` (401), recorded as
  action ``denied`` with the reason "session revoked" — also when the request
  carries no ``leza_sid`` cookie, which is what a replayed Flask cookie looks
  like. The refusal empties Flask's session (and deletes Flask-Login's
  remember-me cookie), so the browser is signed out rather than refused again.
* The binding names the request's session even without the ``leza_sid``
  cookie, so a replayed cookie is recorded under the session it was copied
  from, and a browser that dropped its cookie keeps its session.
* A logout (a ``logout_routes`` entry, Flask-Login's ``logout_user()``,
  ``leza.sessions.logout()``) removes the binding, so the browser's next
  sign-in starts a new session.

Limits: the binding only exists in sessions Flask writes after ``init_app``,
and only sessions the app keeps in ``flask.session`` are covered — a
credential elsewhere (an API token, Flask-Login's remember-me cookie, which
signs in again from its own cookie and starts a new session) is not bound. A
logout Leza is not told about (the app clears the session itself, without a
configured logout route or a call to ``leza.sessions.logout()``) does not end
the session, so a copy of the cookie stays valid until the session times out
(with ``enforce_session_timeouts``) or is revoked.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

try:
    import flask
except ImportError as exc:  # pragma: no cover - exercised only without Flask
    raise ImportError("leza.init_app() needs Flask: pip install 'leza-middleware[flask]'") from exc

from flask.sessions import NullSession
from werkzeug.http import parse_cookie
from werkzeug.wsgi import ClosingIterator

from ..config import Settings
from ..errors import LezaConfigError
from ..performer import Performer, performer_from_user
from ..sessions.registry import REQUEST_KEY, REVOKED_REASON
from .wsgi import (
    COMPLETE_KEY,
    ERROR_KEY,
    PERFORMER_KEY,
    PERMISSION_KEY,
    REQUEST_STATE_KEY,
    ROUTE_KEY,
    LezaWSGIMiddleware,
    required_permission,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from ..leza import Leza
    from .wsgi import _Response

__all__ = ["SESSION_BINDING_KEY", "config_settings", "init_app"]

_PREFIX = "LEZA_"
#: Where the Leza session's public id is kept in ``flask.session``.
SESSION_BINDING_KEY = "_leza_sid"
_REMEMBER_COOKIE = "remember_token"  # Flask-Login's default REMEMBER_COOKIE_NAME


def init_app(leza: Leza, app: flask.Flask) -> None:
    """Record every request of ``app`` through ``leza`` (see the module docstring)."""
    attached = app.extensions.get("leza")
    if attached is leza:
        return  # init_app twice: already set up
    if attached is not None:
        raise LezaConfigError(f"Flask app {app.name!r} already records through another Leza")
    overrides = config_settings(app.config)
    if overrides:
        leza._reconfigure(overrides, source=f"app.config of Flask app {app.name!r}")

    middleware = app.wsgi_app
    if isinstance(middleware, LezaWSGIMiddleware):
        if middleware.leza is not leza:
            raise LezaConfigError(
                f"Flask app {app.name!r}: wsgi_app is already wrapped with another Leza"
            )
    else:
        middleware = LezaWSGIMiddleware(middleware, leza=leza)
        app.wsgi_app = middleware  # type: ignore[method-assign]
    middleware.refusal_headers = _refusal_headers(app)
    middleware.permissions_in_app = True  # decided in preprocess_request (below)
    app.extensions["leza"] = leza
    # An attribute Flask's type does not declare; a subclass with __slots__ or a
    # read-only property keeps only app.extensions["leza"].
    with contextlib.suppress(AttributeError):
        setattr(app, "leza", leza)  # noqa: B010
    # Registered the usual way (Flask checks the app is still being set up),
    # then moved: the revocation check runs before the app's own hooks, and
    # the after_request hook after them (Flask runs those in reverse order),
    # seeing the final response and session.
    before = _before_request(leza)
    app.before_request(before)
    _move_first(app.before_request_funcs[None], before)
    after = _after_request(leza)
    app.after_request(after)
    _move_first(app.after_request_funcs[None], after)
    app.teardown_request(_teardown(leza))
    _decide_after_before_request(leza, app)
    _connect_flask_login(leza, app)


def config_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Leza settings from a Flask config: ``LEZA_STORAGE`` -> ``storage``, …

    An unknown ``LEZA_`` key is an error naming it (a typo would otherwise
    silently leave the default in place).
    """
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(_PREFIX):
            continue
        name = key[len(_PREFIX) :].lower()
        if name not in known:
            raise LezaConfigError(
                f"app.config[{key!r}] is not a Leza setting; known: "
                + ", ".join(_PREFIX + n.upper() for n in sorted(known))
            )
        out[name] = value
    return out


def _move_first(funcs: list[Any], func: Any) -> None:
    funcs.remove(func)
    funcs.insert(0, func)


# ----------------------------------------------------------------------------- request hooks


def _before_request(leza: Leza) -> Callable[[], flask.Response | None]:
    def leza_before_request() -> flask.Response | None:
        try:
            bound = _binding(_peek_session())
            if bound is None:
                return None
            environ = flask.request.environ
            sessions = leza.sessions
            refused = sessions.refusal(bound)
            if refused is not None:
                return _refuse(leza, environ, bound, refused)
            # The binding names the request's session, whatever the session
            # cookie says (or whether it came at all): Flask's session is the
            # credential; the cookie only names the session. (One that timed
            # out is not revived: the request starts a new one, bound instead.)
            pending: _Response | None = environ.get(REQUEST_STATE_KEY)
            if pending is not None and bound not in sessions.timed_out:
                pending.adopt(bound)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()
        return None

    return leza_before_request


def _refuse(leza: Leza, environ: WSGIEnvironment, bound: str, reason: str) -> flask.Response:
    """The answer to a request whose Flask session is bound to an ended session
    (or to one whose state is unknown: ``reason`` is UNKNOWN_REASON)."""
    state = environ.get(REQUEST_KEY)
    if state is None:
        state = environ[REQUEST_KEY] = {}
    revoked = reason is REVOKED_REASON
    state.update(action="denied", reason=reason, session_id=bound, revoked=revoked)
    status, headers, body = leza._revoked_response(flask.request)
    if not revoked:  # probably a valid session: keep the browser signed in
        return flask.current_app.response_class(body, status=status, headers=headers)
    # Sign the browser out: a copy of this cookie is refused again anyway, but
    # the browser it belongs to can sign in afresh.
    session = flask.session
    if not isinstance(session, NullSession):
        session.clear()
        app = flask.current_app
        if getattr(app, "login_manager", None) is not None:
            name = app.config.get("REMEMBER_COOKIE_NAME", _REMEMBER_COOKIE)
            if name in flask.request.cookies:
                session["_remember"] = "clear"  # Flask-Login deletes the cookie
    return flask.current_app.response_class(body, status=status, headers=headers)


def _after_request(leza: Leza) -> Callable[[flask.Response], flask.Response]:
    def leza_after_request(response: flask.Response) -> flask.Response:
        try:
            environ = flask.request.environ
            # Built in memory, so complete when the app returns: a list (str,
            # dict, templates, redirect()), or the iterator Werkzeug wraps
            # around what a WSGI callable produced, which is how Flask renders
            # abort(), 404, 405 and routing redirects. Generators, send_file
            # and other iterators are streamed: recorded when they run out.
            if response.is_sequence or isinstance(response.response, ClosingIterator):
                environ[COMPLETE_KEY] = True
            performer = _performer(leza)
            environ[PERFORMER_KEY] = performer
            pending: _Response | None = environ.get(REQUEST_STATE_KEY)
            if pending is not None:
                # Before Flask writes its session cookie: decide the session
                # now, and bind it into flask.session.
                sid = pending.settle(performer)
                if leza.settings.sessions:
                    _bind(pending, sid, performer)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()
        return response

    return leza_after_request


def _bind(pending: _Response, sid: str | None, performer: Performer | None) -> None:
    """Keep ``flask.session[SESSION_BINDING_KEY]`` naming the request's session."""
    session = _peek_session()
    if isinstance(session, NullSession) or not len(session):
        return  # no secret key, or nothing in it to protect (API clients, anonymous)
    bound = _binding(session)
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
        sid = pending.adopt(os.urandom(16).hex())
    elif performer is None and not modified:
        return  # an anonymous request: no reason to rewrite the app's cookie
    if bound != sid:
        flask.session[SESSION_BINDING_KEY] = sid


def _decide_after_before_request(leza: Leza, app: flask.Flask) -> None:
    """Decide endpoint permissions when every ``before_request`` hook has run.

    Flask runs ``before_request`` hooks in registration order, app-wide before
    blueprints', and an app usually registers its user-loading hook after
    ``init_app``; a hook of ours could not be sure to come last. So the
    decision follows ``app.preprocess_request`` (what runs all of them, on
    this app object only): when it returned nothing, the view is next.
    """
    preprocess = app.preprocess_request

    def preprocess_request() -> Any:
        rv = preprocess()
        if rv is None and leza.permissions:
            rv = _decide(leza)
        return rv

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]


def _decide(leza: Leza) -> flask.Response | None:
    """The answer to a request its endpoint's permission refuses, else None."""
    request = flask.request
    environ = request.environ
    permissions = leza.permissions
    needed = required_permission(permissions, environ)
    if needed is None:
        return None
    # Not guarded: a decision that cannot be taken (a has_permission hook that
    # raised) fails the request, as Flask fails it for any error before the view.
    who = _deciding_performer(leza)
    decision = permissions.decide(needed, who, request)
    if decision.allowed:
        environ[PERMISSION_KEY] = decision.reason
        return None
    state = environ.get(REQUEST_KEY)
    if state is None:
        state = environ[REQUEST_KEY] = {}
    state.update(action="denied", reason=decision.reason)
    pending: _Response | None = environ.get(REQUEST_STATE_KEY)
    if pending is not None:
        pending.logout = False  # a refused logout route ends nothing
    return flask.current_app.response_class(
        json.dumps({"detail": decision.reason}),
        status=decision.status,
        mimetype="application/json",
    )


def _teardown(leza: Leza) -> Callable[[BaseException | None], None]:
    def leza_teardown(exc: BaseException | None) -> None:
        try:
            request = flask.request
            environ = request.environ
            rule = request.url_rule
            if rule is not None:
                environ[ROUTE_KEY] = rule.rule
            if exc is not None:  # Flask answered 500 itself (or is re-raising it)
                environ[ERROR_KEY] = type(exc).__name__
            if PERFORMER_KEY not in environ:  # after_request did not run
                environ[PERFORMER_KEY] = _performer(leza)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()

    return leza_teardown


def _refusal_headers(app: flask.Flask) -> Callable[[WSGIEnvironment], list[tuple[str, str]]]:
    """Headers the middleware adds when it refuses a revoked session without Flask.

    They delete Flask's session cookie and Flask-Login's remember-me cookie (those
    the request carries), with the attributes Flask itself deletes them with, so
    the browser is signed out instead of being refused again.
    """

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


# ----------------------------------------------------------------------------- Flask-Login


def _connect_flask_login(leza: Leza, app: flask.Flask) -> None:
    """Flask-Login's sign-in and sign-out signals, for this app only."""
    try:
        signals = importlib.import_module("flask_login.signals")
    except ImportError:
        return

    def logged_in(sender: Any, user: Any = None, **extra: Any) -> None:
        try:
            # With a performer= hook, the hook names the user (after the view).
            performer = None if leza.performer_hook is not None else performer_from_user(user)
            leza.sessions.login(performer)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()

    def logged_out(sender: Any, user: Any = None, **extra: Any) -> None:
        try:
            # Who is leaving: after the view, current_user is anonymous already.
            if leza.performer_hook is not None:
                performer = leza._call_performer_hook(flask.request)
            else:
                performer = performer_from_user(user)
            leza.sessions.logout(performer=performer)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()

    # sender=app: only this app's sign-ins. weak=False: the receivers are these
    # closures, referenced nowhere else; blinker drops them with the app.
    signals.user_logged_in.connect(logged_in, sender=app, weak=False)
    signals.user_logged_out.connect(logged_out, sender=app, weak=False)


# ----------------------------------------------------------------------------- performer


def _performer(leza: Leza) -> Performer | None:
    if leza.performer_hook is not None:
        return leza._call_performer_hook(flask.request)
    g = flask.g
    loaded = "_login_user" in g  # Flask-Login's current_user, once loaded
    if loaded:
        performer = performer_from_user(g._login_user)
        if performer is not None:
            return performer
    user = g.get("user")
    if user is not None:
        return _from_g_user(user)
    if not loaded and getattr(flask.current_app, "login_manager", None) is not None:
        user_id = _peek(_peek_session(), "_user_id")
        if user_id is not None and user_id != "":
            return Performer(id=str(user_id))
    return None


def _deciding_performer(leza: Leza) -> Performer | None:
    """Who asks for a protected endpoint, with what they may do (see above).

    Unlike :func:`_performer` (for the log), Flask-Login's user is loaded if
    the request has not loaded it yet: the decision needs it, and the view of a
    protected endpoint would load it anyway.
    """
    if leza.performer_hook is not None:
        return leza._call_performer_hook(flask.request)
    if getattr(flask.current_app, "login_manager", None) is not None:
        flask_login = importlib.import_module("flask_login")
        user = flask_login.current_user._get_current_object()
        performer = performer_from_user(user)
        if performer is not None:
            return _with_permissions(performer, user)
    user = flask.g.get("user")
    if user is None:
        return None
    performer = _from_g_user(user)
    return None if performer is None else _with_permissions(performer, user)


def _with_permissions(performer: Performer, user: Any) -> Performer:
    """``performer`` with the ``permissions`` its user object (or mapping) lists."""
    if performer.permissions:
        return performer
    try:
        if isinstance(user, Mapping) or hasattr(user, "keys"):  # dict, sqlite3.Row
            names = user["permissions"] if "permissions" in user.keys() else None  # noqa: SIM118
        else:
            names = getattr(user, "permissions", None)
    except Exception:  # a property that raised: no permissions
        return performer
    if isinstance(names, str):
        names = (names,)
    elif not isinstance(names, Collection) or isinstance(names, Mapping | bytes):
        return performer
    granted = frozenset(name for name in names if isinstance(name, str))
    return replace(performer, permissions=granted) if granted else performer


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


# ----------------------------------------------------------------------------- Flask's session


def _peek_session() -> Any:
    """Flask's session, without marking it accessed.

    Flask adds ``Vary: Cookie`` to every response whose session was accessed;
    reading it for the log must not change the app's responses. Flask >= 3.1
    marks the access in the ``session`` property (``_session`` is the plain
    attribute); older versions in the session's ``__getitem__`` / ``get``, which
    ``_peek`` bypasses with ``dict.get``.
    """
    ctx: Any = flask.globals.request_ctx
    try:
        return ctx._session
    except AttributeError:  # Flask < 3.1
        return ctx.session


def _peek(session: Any, key: str) -> Any:
    """``session.get(key)``, without marking it accessed (Flask < 3.1)."""
    if isinstance(session, dict):
        return dict.get(session, key)
    return session.get(key)


def _binding(session: Any) -> str | None:
    """The Leza session id bound into Flask's session, if any."""
    value = _peek(session, SESSION_BINDING_KEY)
    return value if isinstance(value, str) else None
