"""One WSGI request/response exchange: PEP 3333's side of the WSGI adapter.

WSGI-specific, hence here rather than in the request core: the request stays
current (``context.REQUEST``) while the app runs *and* while its body is
produced, and its record is queued as soon as the last body chunk exists,
whichever comes first of: the app returned a complete body (a list or tuple,
or one the framework vouches for: ``leza.body_complete``); a streamed body ran
out; the app raised; the server closed the response early. The app's
``close()`` is passed through exactly once, and a ``wsgi.file_wrapper`` body is
handed back to the server (sendfile).

A framework integration running inside the app (``integrations/flask``)
leaves what only it knows in the environ, read when the record is made:
``leza.route`` (the route template), ``leza.performer`` (a Performer or None;
when present the ``performer=`` hook is not called), ``leza.error`` (an
exception it turned into its own error response), ``leza.body_complete``. It
finds the exchange in ``leza.wsgi.request``: ``settle(performer)`` decides the
cookies while it can still write its own session; ``adopt(sid)`` names the
session of a request whose browser lost the cookie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..context import REQUEST
from ..core import Request, RequestCore
from ..performer import Performer, coerce_performer

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "COMPLETE_KEY",
    "ERROR_KEY",
    "PERFORMER_KEY",
    "REQUEST_STATE_KEY",
    "ROUTE_KEY",
    "Exchange",
    "coerce",
    "mount",
    "native_request",
    "wsgi_text",
]

ROUTE_KEY = "leza.route"
PERFORMER_KEY = "leza.performer"
ERROR_KEY = "leza.error"
COMPLETE_KEY = "leza.body_complete"
#: The running request's exchange, for framework integrations (see above).
REQUEST_STATE_KEY = "leza.wsgi.request"


class Exchange(Request):
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
        token = REQUEST.set(self.ctx)
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
            REQUEST.reset(token)
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
            token = REQUEST.set(self.ctx)
            try:
                close()
            except BaseException as exc:
                self.fail(exc)
                raise
            finally:
                REQUEST.reset(token)
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
                self.performer = coerce(environ[PERFORMER_KEY])
            elif not self.settled:
                self.performer = self._performer()
            route = environ.get(ROUTE_KEY)
        except Exception:  # never let recording hurt the app
            self.core.faults.request_path_error()
        self.core.finish(self, route)

    def _performer(self) -> Performer | None:
        environ = self.holder
        if PERFORMER_KEY in environ:
            return coerce(environ[PERFORMER_KEY])
        hooks = self.core.hooks
        return None if hooks.performer_hook is None else hooks.performer(native_request(environ))


def mount(environ: WSGIEnvironment) -> tuple[str, str]:
    """The path the client asked for (``SCRIPT_NAME + PATH_INFO``), and the part
    of it the app is mounted at (``SCRIPT_NAME``), as text."""
    prefix: str = environ.get("SCRIPT_NAME", "")
    path: str = environ.get("PATH_INFO", "")
    if not prefix.isascii():
        prefix = wsgi_text(prefix)
    if not path.isascii():
        path = wsgi_text(path)
    return (prefix + path) or "/", prefix


def wsgi_text(value: str) -> str:
    """Undo PEP 3333's latin-1 decoding: the bytes the client sent, read as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already handed over real text
        return value


def coerce(value: Any) -> Performer | None:
    """What an integration left in ``leza.performer`` (normally a Performer already)."""
    if value is None or isinstance(value, Performer):
        return value
    try:
        return coerce_performer(value)
    except (TypeError, ValueError):  # the event matters more than its performer
        return None


def native_request(environ: WSGIEnvironment) -> Any:
    """What the app's hooks receive: a Werkzeug ``Request``, else the environ."""
    try:
        from werkzeug.wrappers import Request as WerkzeugRequest
    except ImportError:  # plain WSGI without Werkzeug installed
        return environ
    try:
        return WerkzeugRequest(environ)
    except Exception:  # an environ against PEP 3333 (text beyond latin-1): the environ itself
        return environ
