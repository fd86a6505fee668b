"""Flask: ``leza.init_app(app)`` (see docs/flask.md).

This package is imported only by :meth:`Leza.init_app <leza_middleware.Leza.init_app>`,
so Flask stays an optional dependency (the ``flask`` extra). ``init_app``
reads ``app.config["LEZA_<NAME>"]`` under the Leza's explicit arguments,
wraps ``app.wsgi_app`` with :class:`LezaWSGIMiddleware` (the request core's
WSGI adapter) and adds what only Flask knows, through Flask's own hooks:

* ``before_request``, first: a request whose Flask session is bound to an
  ended session is refused (``session.py``);
* endpoint permissions, once every ``before_request`` hook ran (so a user the
  app loads there is known), before the view; the middleware leaves the
  decision to Flask, so it is taken once;
* ``after_request``, last: bodies built in memory are marked complete (recorded
  when the app returns, not when the server finished reading them); the
  performer (``identity.py``) is resolved while ``g`` and ``session`` are
  there, and the session decided and bound before Flask writes its cookie;
* ``teardown_request``: the route template, an unhandled exception's class,
  and the performer when ``after_request`` did not run;
* Flask-Login's sign-in and sign-out signals.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

try:
    import flask
except ImportError as exc:  # pragma: no cover - exercised only without Flask
    raise ImportError("leza.init_app() needs Flask: pip install 'leza-middleware[flask]'") from exc

from werkzeug.wsgi import ClosingIterator

from ...config import DEFAULT_STORAGE, Settings, storage_by_kind
from ...core.binding import SESSION_BINDING_KEY
from ...errors import LezaConfigError
from ...storage.routed import KINDS
from ..wsgi import LezaWSGIMiddleware
from ..wsgi_exchange import (
    COMPLETE_KEY,
    ERROR_KEY,
    PERFORMER_KEY,
    REQUEST_STATE_KEY,
    ROUTE_KEY,
    mount,
)
from .identity import connect_flask_login, deciding_performer, performer
from .session import bind, check_binding, sign_out_headers

if TYPE_CHECKING:
    from ...leza import Leza
    from ..wsgi_exchange import Exchange

__all__ = ["SESSION_BINDING_KEY", "attach", "config_settings", "init_app", "needs_attaching"]

_PREFIX = "LEZA_"


def init_app(leza: Leza, app: flask.Flask) -> None:
    """Record every request of ``app`` through ``leza``: :meth:`Leza.init_app`."""
    leza.init_app(app)


def needs_attaching(leza: Leza, app: flask.Flask) -> bool:
    """False when ``app`` already records through ``leza`` (init_app twice);
    LezaConfigError when it records through another Leza."""
    attached = app.extensions.get("leza")
    if attached is leza:
        return False
    if attached is not None:
        raise LezaConfigError(f"Flask app {app.name!r} already records through another Leza")
    return True


def attach(leza: Leza, app: flask.Flask) -> None:
    """Wrap ``app.wsgi_app`` and add Flask's hooks (``leza``'s settings are final)."""
    middleware = app.wsgi_app
    if isinstance(middleware, LezaWSGIMiddleware):
        if middleware.leza is not leza:
            raise LezaConfigError(
                f"Flask app {app.name!r}: wsgi_app is already wrapped with another Leza"
            )
    else:
        middleware = LezaWSGIMiddleware(middleware, leza=leza)
        app.wsgi_app = middleware  # type: ignore[method-assign]
    middleware.refusal_headers = sign_out_headers(app)
    middleware.permissions_in_app = True  # decided after Flask's before_request hooks
    app.extensions["leza"] = leza
    # An attribute Flask's type does not declare; a subclass with __slots__ or a
    # read-only property keeps only app.extensions["leza"].
    with contextlib.suppress(AttributeError):
        setattr(app, "leza", leza)  # noqa: B010
    # Registered the usual way (Flask checks the app is still being set up),
    # then moved: the binding check runs before the app's own hooks, and the
    # after_request hook after them (Flask runs those in reverse order),
    # seeing the final response and session.
    before = _before_request(leza)
    app.before_request(before)
    _move_first(app.before_request_funcs[None], before)
    after = _after_request(leza)
    app.after_request(after)
    _move_first(app.after_request_funcs[None], after)
    app.teardown_request(_teardown(leza))
    _decide_after_before_request(leza, app, middleware)
    connect_flask_login(leza, app)


def config_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Leza settings from a Flask config: ``LEZA_STORAGE`` -> ``storage``, …

    An unknown ``LEZA_`` key is an error naming it (a typo would otherwise
    silently leave the default in place).
    """
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    by_kind = storage_by_kind(config)  # LEZA_STORAGE_ACCESS, …: storage by kind
    for key, value in config.items():
        if not key.startswith(_PREFIX):
            continue
        name = key[len(_PREFIX) :].lower()
        if name.startswith("storage_") and name[len("storage_") :] in KINDS:
            continue
        if name not in known:
            raise LezaConfigError(
                f"app.config[{key!r}] is not a Leza setting; known: "
                + ", ".join(_PREFIX + n.upper() for n in sorted(known))
            )
        out[name] = value
    if by_kind:
        given = out.get("storage")
        if isinstance(given, Mapping):
            out["storage"] = {**given, **by_kind}
        else:
            default = given or os.environ.get("LEZA_STORAGE") or DEFAULT_STORAGE
            out["storage"] = {**by_kind, "default": default}
    return out


def _move_first(funcs: list[Any], func: Any) -> None:
    funcs.remove(func)
    funcs.insert(0, func)


def _pending() -> Exchange | None:
    """The WSGI middleware's state of the running request (None: unrecorded)."""
    pending: Exchange | None = flask.request.environ.get(REQUEST_STATE_KEY)
    return pending


def _before_request(leza: Leza) -> Callable[[], flask.Response | None]:
    def leza_before_request() -> flask.Response | None:
        try:
            return check_binding(leza, _pending())
        except Exception:  # never let recording hurt the app
            leza.faults.request_path_error()
        return None

    return leza_before_request


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
            who = environ[PERFORMER_KEY] = performer(leza)
            pending = _pending()
            if pending is not None:
                # Before Flask writes its session cookie: decide the session
                # now, and bind it into flask.session.
                sid = pending.settle(who)
                if leza.settings.sessions:
                    bind(leza, pending, sid, who)
        except Exception:  # never let recording hurt the app
            leza.faults.request_path_error()
        return response

    return leza_after_request


def _decide_after_before_request(
    leza: Leza, app: flask.Flask, middleware: LezaWSGIMiddleware
) -> None:
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
        if rv is None and middleware.core.endpoints.permissions is not None:
            rv = _decide(leza, middleware)
        return rv

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]


def _decide(leza: Leza, middleware: LezaWSGIMiddleware) -> flask.Response | None:
    """The answer to a request its endpoint's permission refuses, else None.

    Not guarded: a decision that cannot be taken (a has_permission hook that
    raised) fails the request, as Flask fails it for any error before the view.
    A refusal is Flask's response (the app's after_request hooks run).
    """
    core = middleware.core
    request = flask.request
    path, prefix = mount(request.environ)
    req = _pending() or core.detached(request.environ, request.method, path, prefix)
    if core.require(req, prefix) is None:
        return None
    answer = core.decide(req, deciding_performer(leza), request)
    if answer is None:
        return None
    status, headers, body = answer
    return flask.current_app.response_class(body, status=status, headers=headers)


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
                environ[PERFORMER_KEY] = performer(leza)
        except Exception:  # never let recording hurt the app
            leza.faults.request_path_error()

    return leza_teardown
