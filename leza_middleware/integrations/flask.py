"""Flask: ``leza.init_app(app)``.

This module is imported only by :meth:`Leza.init_app <leza_middleware.Leza.init_app>`,
so Flask stays an optional dependency (the ``flask`` extra).

What ``init_app`` does:

* configuration: ``app.config["LEZA_<NAME>"]`` supplies any setting the Leza
  was not given explicitly (``LEZA_STORAGE``, ``LEZA_GEOIP_DB``,
  ``LEZA_TRUSTED_PROXIES``, ``LEZA_PERFORMER``, ``LEZA_SECRET_KEY``,
  ``LEZA_APP_NAME``, …). Precedence: ``Leza(...)`` argument > ``app.config``
  > ``LEZA_*`` environment variable > default, so ``leza = Leza()`` at import
  time and ``leza.init_app(app)`` in the app factory is the usual pattern.
  The Leza is rebuilt with the merged settings when they differ, which is only
  allowed before it recorded anything (see ``Leza._reconfigure``);
* wraps ``app.wsgi_app`` with :class:`LezaWSGIMiddleware` (once);
* ``app.extensions["leza"]`` and ``app.leza`` are the Leza;
* an ``after_request`` hook marks bodies built in memory (not streamed), so
  they are recorded when the app returns instead of when the server finished
  reading them (Werkzeug's test client reads a body only when asked);
* a ``teardown_request`` hook — it runs for every request, including ones that
  raised, and for streamed responses again when the stream ends — leaves in
  the environ what only Flask knows: the route template (``request.url_rule``),
  an unhandled exception's class, and the performer, resolved while the request
  context (``g``, ``session``) is still there.

The performer, first that applies:

1. the ``performer=`` hook (``Leza(performer=...)`` or ``LEZA_PERFORMER``),
   called with ``flask.request`` inside the request context;
2. Flask-Login's user, when the request loaded it (``current_user`` was used,
   e.g. by ``@login_required``, a template or ``login_user``) and it is
   authenticated. It is not loaded just for the log: in teardown, a user loader
   would run after the response was sent, possibly after the app's database
   session was removed, and a remember-me cookie could not be refreshed;
3. ``flask.g.user`` when set (the Flask tutorial's convention): a Performer, a
   mapping or row (``sqlite3.Row``), or any user object; its presence means
   signed in unless it has an ``is_authenticated`` that says otherwise;
4. with Flask-Login set up but its user not loaded: the user id its session
   holds, as ``Performer(id=...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

try:
    import flask
except ImportError as exc:  # pragma: no cover - exercised only without Flask
    raise ImportError("leza.init_app() needs Flask: pip install 'leza-middleware[flask]'") from exc

from werkzeug.wsgi import ClosingIterator

from ..config import Settings
from ..errors import LezaConfigError
from ..performer import Performer, performer_from_user
from .wsgi import COMPLETE_KEY, ERROR_KEY, PERFORMER_KEY, ROUTE_KEY, LezaWSGIMiddleware

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["config_settings", "init_app"]

_PREFIX = "LEZA_"


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

    current = app.wsgi_app
    if isinstance(current, LezaWSGIMiddleware):
        if current.leza is not leza:
            raise LezaConfigError(
                f"Flask app {app.name!r}: wsgi_app is already wrapped with another Leza"
            )
    else:
        app.wsgi_app = LezaWSGIMiddleware(current, leza=leza)  # type: ignore[method-assign]
    app.extensions["leza"] = leza
    # An attribute Flask's type does not declare; a subclass with __slots__ or a
    # read-only property keeps only app.extensions["leza"].
    with contextlib.suppress(AttributeError):
        setattr(app, "leza", leza)  # noqa: B010
    app.after_request(_after_request)
    app.teardown_request(_teardown(leza))


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


def _after_request(response: flask.Response) -> flask.Response:
    # Registered by init_app, usually before the app's own hooks, so it runs
    # last (Flask calls them in reverse) and sees the final response.
    # Built in memory, so complete when the app returns: a list (str, dict,
    # templates, redirect()), or the iterator Werkzeug wraps around what a WSGI
    # callable produced, which is how Flask renders abort(), 404, 405 and
    # routing redirects. Generators, send_file and other iterators are
    # streamed: recorded when they run out.
    if response.is_sequence or isinstance(response.response, ClosingIterator):
        flask.request.environ[COMPLETE_KEY] = True
    return response


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
            if PERFORMER_KEY not in environ:  # a stream_with_context body tears down twice
                environ[PERFORMER_KEY] = _performer(leza)
        except Exception:  # never let recording hurt the app
            leza._count_request_path_error()

    return leza_teardown


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
        user_id = flask.session.get("_user_id")
        if user_id is not None and user_id != "":
            return Performer(id=str(user_id))
    return None


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
