"""WSGI middleware: ``flask_app.wsgi_app = LezaWSGIMiddleware(flask_app.wsgi_app, leza=leza)``.

Translates a WSGI request for the request core (``core/request.py``): the
environ is the core's header mapping (CGI flavour); the path is ``SCRIPT_NAME
+ PATH_INFO``, the path the client asked for (PEP 3333's latin-1 read back as
the UTF-8 the client sent), as ASGI servers put the mount prefix into
``scope["path"]``. Refusals go out through ``start_response``; the request id
header and cookies are added to the app's ``start_response``.

WSGI-specific, hence here: the request stays current (``context._current``)
while the app runs *and* while its body is produced, and its record is queued
as soon as the last body chunk exists, whichever comes first of: the app
returned a complete body (a list or tuple, or one the framework vouches for:
``leza.body_complete``); a streamed body ran out; the app raised; the server
closed the response early. The app's ``close()`` is passed through exactly
once, and a ``wsgi.file_wrapper`` body is handed back to the server (sendfile).

A framework integration running inside the app (``integrations/flask.py``)
leaves what only it knows in the environ, read when the record is made:
``leza.route`` (the route template), ``leza.performer`` (a Performer or None;
when present the ``performer=`` hook is not called here), ``leza.error`` (an
exception it turned into its own error response), ``leza.body_complete``. It
finds this middleware's request in ``leza.wsgi.request``: ``settle(performer)``
decides the cookies while it can still write its own session; ``adopt(sid)``
names the session of a request whose browser lost the cookie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..context import _current
from ..core import Request, RequestCore
from ..core.answers import status_line
from ..performer import Performer, coerce_performer

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..core.hooks import Answer
    from ..leza import Leza

__all__ = [
    "COMPLETE_KEY",
    "ERROR_KEY",
    "PERFORMER_KEY",
    "REQUEST_STATE_KEY",
    "ROUTE_KEY",
    "LezaWSGIMiddleware",
    "mount",
]

ROUTE_KEY = "leza.route"
PERFORMER_KEY = "leza.performer"
ERROR_KEY = "leza.error"
COMPLETE_KEY = "leza.body_complete"
#: This middleware's per-request object, for framework integrations (see above).
REQUEST_STATE_KEY = "leza.wsgi.request"

SignOutHeaders = Callable[["WSGIEnvironment"], list[tuple[str, str]]]


class LezaWSGIMiddleware:
    """Record every request of a WSGI app.

    ``leza`` defaults to a :class:`~leza_middleware.Leza` configured from
    ``LEZA_*`` environment variables, so ``LezaWSGIMiddleware(app)`` alone works.
    """

    #: Extra headers for the answer to a revoked session's request, given the
    #: environ (set by framework integrations; Flask clears its own cookies).
    refusal_headers: SignOutHeaders | None = None

    def __init__(self, app: WSGIApplication, leza: Leza | None = None) -> None:
        if leza is None:
            from ..leza import Leza

            leza = Leza()
        self.app = app
        self.leza = leza
        self._in_app = False
        self.core = self._build()

    @property
    def permissions_in_app(self) -> bool:
        """A framework integration inside the app decides endpoint permissions
        (``leza.init_app`` for Flask), so this middleware takes no decision."""
        return self._in_app

    @permissions_in_app.setter
    def permissions_in_app(self, value: bool) -> None:
        self._in_app = value
        self.core = self._build()

    def _build(self) -> RequestCore:
        return RequestCore.for_leza(self.leza, asgi=False, decide_at_begin=not self._in_app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        if core.settings is not self.leza.settings:
            # Leza.init_app rebuilt the Leza from a Flask app's config after this
            # middleware was made (Leza._reconfigure): follow it.
            core = self.core = self._build()
        req = _Response()
        get = environ.get
        try:
            path, prefix = mount(environ)
        except Exception:  # against PEP 3333: served unrecorded, unless it had to be decided
            if core.endpoints.permissions is not None:
                raise
            core.faults.request_path_error()
            return self.app(environ, start_response)
        if not core.begin(
            req, environ, environ, get("REQUEST_METHOD", "GET"), path, prefix,
            get("QUERY_STRING", ""), get("REMOTE_ADDR") or None, get("wsgi.url_scheme", "http"),
        ):  # fmt: skip
            return self.app(environ, start_response)
        if req.sid is not None and core.refused(req):
            more = self.refusal_headers
            sign_out = None if more is None else lambda: more(environ)
            answer = core.revoked_answer(req, _native_request(environ), sign_out)
            return self._answer(req, start_response, answer)
        if req.needed is not None:
            request = _native_request(environ)
            try:
                if PERFORMER_KEY in environ:  # set by a WSGI layer outside this one
                    who = _coerce(environ[PERFORMER_KEY])
                else:
                    who = core.hooks.performer(request)
                refusal = core.decide(req, who, request)
            except BaseException:  # the app is not called; the server answers 500
                core.finish(req)
                raise
            if refusal is not None:
                return self._answer(req, start_response, refusal)
        req.start_wsgi(core, start_response)
        environ[REQUEST_STATE_KEY] = req
        token = _current.set(req.ctx)
        try:
            result = self.app(environ, req.start_response)
        except BaseException as exc:
            req.fail(exc)
            raise
        finally:
            _current.reset(token)
        return req.wrap(result)

    def _answer(self, req: Request, start_response: StartResponse, answer: Answer) -> list[bytes]:
        """Send a refusal without the app (a refused session, a missing permission)."""
        status, headers, body = answer
        try:
            start_response(status_line(status), headers)
        finally:
            self.core.finish(req)
        return [body]


class _Response(Request):
    """One request's state, its ``start_response`` and the body iterable handed to the server.

    The server iterates this object and calls its ``close()``; both pass
    through to the app's iterable with the request made current again, so
    code running while the body is produced (streaming generators, ``close``
    hooks) logs with the request's id.
    """

    __slots__ = (
        "_app_close", "_iterator", "_result", "_server_start", "_server_write",
        "closed", "core", "ctx", "recorded", "sent", "set_cookies",
    )  # fmt: skip

    def start_wsgi(self, core: RequestCore, start_response: StartResponse) -> None:
        self.core = core
        self.ctx = (self.rid, self.holder)
        self._server_start = start_response
        self._server_write: Callable[[bytes], object] | None = None
        self._result: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] | None = None
        self._app_close: Callable[[], object] | None = None
        # A non-empty chunk (or write()) went out, and with it the status line:
        # an exception after that cannot change the status the client got.
        self.sent = self.recorded = self.closed = False
        self.set_cookies: Sequence[tuple[str, str]] = ()

    # -- for framework integrations (integrations/flask.py) ----------------------

    @property
    def ending(self) -> bool:
        """The request ends its session: a logout, or a revoked session refused."""
        return self.core.ending(self)

    def adopt(self, session_id: str) -> str:
        """Make ``session_id`` the request's session (no cookie is issued for it)."""
        return self.core.adopt(self, session_id)

    def settle(self, performer: Performer | None) -> str | None:
        """Decide the response's cookies now that the performer is known (once);
        returns the request's session id."""
        if not self.settled:
            self.set_cookies = self.core.settle(self, performer)
        return self.sid

    # -- what the app calls ---------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        try:
            try:
                self.status = int(status[:3])
            except (TypeError, ValueError):  # "abc": the server answers 500, recorded as such
                self.status = 0
            core = self.core
            lower = core.settings.request_id_header
            self.rid = self.ctx[0]  # (again: an error response replaces the first headers)
            for name, value in headers:
                if name.lower() == lower:
                    core.adopt_request_id(self, value)
                    break
            else:
                # A new list: never mutate the app's (it may be a shared constant).
                headers = [*headers, (core.flavour.request_id_out, self.ctx[0])]
            # The performer is known now (authentication ran inside the app).
            if not self.settled:
                self.set_cookies = core.settle(self, self._performer())
            if self.set_cookies:
                headers = [*headers, *self.set_cookies]
        except Exception:  # a malformed status or header list is the server's to reject
            self.core.faults.request_path_error()
        if exc_info is None:
            self._server_write = self._server_start(status, headers)
        else:
            self._server_write = self._server_start(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> object:
        """The legacy ``write()`` callable: sends the status line with its first bytes."""
        if data:
            self.sent = True
        assert self._server_write is not None  # PEP 3333: only after start_response
        return self._server_write(data)

    # -- what the server sees ---------------------------------------------------

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """The iterable to hand the server in place of the app's ``result``."""
        self._result = result
        if type(result) is list or type(result) is tuple or self.holder.get(COMPLETE_KEY):
            self._finish()
        try:
            self._app_close = getattr(result, "close", None)
            file_wrapper = self.holder.get("wsgi.file_wrapper")
            if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
                # Hand the server its own file wrapper back, so it can still use
                # sendfile(); a close() on the instance (as wsgiref and gunicorn
                # set one themselves) tells us when the file has been sent.
                setattr(result, "close", self.close)  # noqa: B010 - instance, not class
                return result
        except Exception:  # e.g. __slots__: iterate it through this wrapper instead
            pass
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = _current.set(self.ctx)
        try:
            iterator = self._iterator
            if iterator is None:
                iterator = self._iterator = iter(self._result)
            chunk = next(iterator)
        except StopIteration:
            if not self.recorded:
                self._finish()
            raise
        except BaseException as exc:
            self.fail(exc)
            raise
        finally:
            _current.reset(token)
        if chunk:
            self.sent = True
        return chunk

    def close(self) -> None:
        """Close the app's iterable exactly once, then record if nothing did yet.

        The server calls this after the last chunk, after an error, or when the
        client went away early (PEP 3333).
        """
        if self.closed:
            return
        self.closed = True
        close = self._app_close
        if close is not None:
            token = _current.set(self.ctx)
            try:
                close()
            except BaseException as exc:
                self.fail(exc)
                raise
            finally:
                _current.reset(token)
        if not self.recorded:
            self._finish()

    # -- recording ------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The app raised: record it (once) as an error; the caller re-raises."""
        if self.recorded:
            return
        self.error = type(exc).__name__
        if not self.sent:
            self.status = 500  # nothing went out: the server answers 500 itself
        self._finish()

    def _finish(self) -> None:
        self.end = perf_counter()
        self.recorded = True
        environ = self.holder
        environ.pop(REQUEST_STATE_KEY, None)  # environ <-> self: not a cycle to keep
        route = None
        try:
            if self.error is None:
                self.error = environ.get(ERROR_KEY)
            if PERFORMER_KEY in environ:
                self.performer = _coerce(environ[PERFORMER_KEY])
            elif not self.settled:
                self.performer = self._performer()
            route = environ.get(ROUTE_KEY)
        except Exception:  # never let recording hurt the app
            self.core.faults.request_path_error()
        self.core.finish(self, route)

    def _performer(self) -> Performer | None:
        environ = self.holder
        if PERFORMER_KEY in environ:
            return _coerce(environ[PERFORMER_KEY])
        hooks = self.core.hooks
        return None if hooks.performer_hook is None else hooks.performer(_native_request(environ))


def mount(environ: WSGIEnvironment) -> tuple[str, str]:
    """The path the client asked for (``SCRIPT_NAME + PATH_INFO``), and the part
    of it the app is mounted at (``SCRIPT_NAME``), as text."""
    prefix: str = environ.get("SCRIPT_NAME", "")
    path: str = environ.get("PATH_INFO", "")
    if not prefix.isascii():
        prefix = _wsgi_text(prefix)
    if not path.isascii():
        path = _wsgi_text(path)
    return (prefix + path) or "/", prefix


def _wsgi_text(value: str) -> str:
    """Undo PEP 3333's latin-1 decoding: the bytes the client sent, read as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already handed over real text
        return value


def _coerce(value: Any) -> Performer | None:
    """What an integration left in ``leza.performer`` (normally a Performer already)."""
    if value is None or isinstance(value, Performer):
        return value
    try:
        return coerce_performer(value)
    except (TypeError, ValueError):  # the event matters more than its performer
        return None


def _native_request(environ: WSGIEnvironment) -> Any:
    """What the app's hooks receive: a Werkzeug ``Request``, else the environ."""
    try:
        from werkzeug.wrappers import Request as WerkzeugRequest
    except ImportError:  # plain WSGI without Werkzeug installed
        return environ
    try:
        return WerkzeugRequest(environ)
    except Exception:  # an environ against PEP 3333 (text beyond latin-1): the environ itself
        return environ
