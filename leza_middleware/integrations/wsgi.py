"""WSGI middleware: ``flask_app.wsgi_app = LezaWSGIMiddleware(flask_app.wsgi_app, leza=leza)``.

The WSGI twin of the ASGI adapter (``integrations/asgi.py``). Per request it
reuses or makes a request id, echoes it in the response, notes the status from
``start_response``, keeps the request current (``context._current``) while the
app runs *and* while its body is produced, and enqueues one raw access record
(``request_path.RAW_FIELDS``) as soon as the last body chunk exists, whichever
comes first of:

* the app returned a body that is already complete: a list or tuple, or one the
  framework vouches for (``leza.body_complete``, below) — its last chunk was
  produced when the app returned, and recording then does not depend on
  anyone reading it (Werkzeug's test client reads a body only when asked);
* a streamed body (generator, file) ran out;
* the app raised, during the call or while its body was produced;
* the server closed the response early (the client went away).

The app's ``close()`` is passed through exactly once however often the server
calls it.

What is recorded, and why it matches the ASGI adapter:

* path: ``SCRIPT_NAME + PATH_INFO``, the path the client asked for. ASGI
  servers put the mount prefix into ``scope["path"]`` too (uvicorn prefixes
  ``--root-path``; Starlette's ``Mount`` leaves ``path`` whole), so an app
  mounted under ``/api`` reads ``/api/...`` whichever protocol serves it. WSGI
  hands the path over as latin-1-decoded bytes (PEP 3333); it is read back as
  the UTF-8 text the client sent, as ASGI servers do.
* route: app-relative in both (Flask's ``url_rule`` omits ``SCRIPT_NAME`` as
  Starlette's route omits ``root_path``).
* header values, query, status, durations: as the ASGI adapter (strings here,
  bytes there; the enricher reads both).

A framework integration running inside the app can leave what only it knows in
the environ, read when the record is made (``integrations/flask.py`` does):

* ``leza.route``: the matched route template, any spelling
  ``normalise_route`` understands;
* ``leza.performer``: a Performer (or None), resolved inside the framework's
  request context; when the key is present the ``performer=`` hook is not
  called again here;
* ``leza.error``: the class name of an exception the framework turned into its
  own error response (the middleware never sees it raised);
* ``leza.body_complete``: true when the body the app returns is already fully
  built in memory (not streamed), so the request can be recorded right away;
* ``leza.permission``: the reason of an endpoint permission the framework
  granted (``Permissions.decide``), for the event of an allowed request (the
  integration answers refusals itself, recording them as ``denied`` through
  ``leza.session``); with it the integration sets ``permissions_in_app`` on
  this middleware, which then leaves the decision to it;
* ``leza.wsgi.request`` (read, not written): this middleware's state of the
  running request. ``settle(performer)`` decides the request's cookies before
  the response starts — for a framework that must know the session id while it
  can still write its own session (Flask binds it into ``flask.session``) —
  and ``adopt(session_id)`` names the session of a request whose browser lost
  (or never had) the session cookie.

Machine identifier and sessions (``sessions/``), as the ASGI adapter:

* the ``Cookie`` header is read once per request (``CookieJar.read``, memoised
  per distinct header): a verified machine id, the session cookie's public id;
* a request of a blocked (revoked or logged-out) session is answered here,
  without calling the app: ``revoked_response`` (a JSON 401 by default), the
  session cookie cleared, recorded as action ``denied`` with the reason
  "session revoked". A framework integration may add headers to that answer
  (``refusal_headers``: Flask clears its own session and remember-me cookies).
  The decision is ``leza.sessions.refusal(sid)``: while the blocklist of ended
  sessions cannot be known (not loaded yet and storage unreachable) the same
  answer goes out with the reason "session state unknown: …", cookies kept
  (``revocation_unknown``, docs/sessions.md);
* when the response starts, the performer is known (authentication ran inside
  the app): a browser seen for the first time gets a machine id cookie; a
  signed-in user without a session cookie — or one the app just signed in
  (``leza.sessions.login()``) — gets a fresh session cookie; a logout (a
  ``logout_routes`` entry, or ``leza.sessions.logout()``) clears it;
* ``environ["leza.session"]`` is the state the session API (login, logout,
  login_failed, current_id) reads and writes while the app runs.

Endpoint permissions (``Leza(permissions=...)``, ``permissions.py``), decided
before the app is called, as the ASGI adapter does:

* the endpoint is ``REQUEST_METHOD`` with ``PATH_INFO`` or ``SCRIPT_NAME +
  PATH_INFO``, matched like ``logout_routes`` (so a rule works whether or not
  the app is mounted under a prefix); a ``HEAD`` request needs what ``GET``
  would, unless a rule names ``HEAD`` itself (WSGI frameworks serve ``HEAD``
  with the ``GET`` view);
* the performer must be known before the app runs, so it comes from the
  ``performer=`` hook (called with a Werkzeug ``Request``), or from
  ``environ["leza.performer"]`` set by a WSGI layer outside this one. Without
  either, a protected endpoint answers 401: the middleware fails closed;
* a refusal is answered here, without the app: the decision's status (401 or
  403), a JSON body ``{"detail": reason}``, the request id header; recorded as
  action ``denied`` with that reason. An allowed request's event (status below
  400) carries "User has the permission <P> to access this resource of this
  application <app>";
* inside a Flask app set up with ``leza.init_app`` the decision is Flask's
  (``integrations/flask.py``: after the app's ``before_request`` hooks loaded
  its user), and this middleware takes none (``permissions_in_app``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from ..context import _current
from ..ids import new_request_id, parse_incoming_request_id
from ..performer import Performer, coerce_performer
from ..request_path import environ_header_keys, normalise_route, pick_environ_headers
from ..sessions.registry import LOGOUT_REASON, REQUEST_KEY, REVOKED_REASON

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..config import Settings
    from ..leza import Leza
    from ..permissions import Permissions
    from ..sessions.cookies import CookieJar
    from ..sessions.registry import Sessions

__all__ = [
    "COMPLETE_KEY",
    "ERROR_KEY",
    "PERFORMER_KEY",
    "PERMISSION_KEY",
    "REQUEST_STATE_KEY",
    "ROUTE_KEY",
    "LezaWSGIMiddleware",
]

ROUTE_KEY = "leza.route"
PERFORMER_KEY = "leza.performer"
ERROR_KEY = "leza.error"
COMPLETE_KEY = "leza.body_complete"
#: The reason of the endpoint permission that allowed the request.
PERMISSION_KEY = "leza.permission"
#: This middleware's per-request object, for framework integrations (see above).
REQUEST_STATE_KEY = "leza.wsgi.request"

RefusalHeaders = Callable[["WSGIEnvironment"], list[tuple[str, str]]]


class _Conf:
    """What every request needs from the Leza's settings.

    One immutable object, swapped in one assignment, so a thread never sees
    half of an old configuration and half of a new one.
    """

    __slots__ = (
        "cookies",
        "logout_routes",
        "machine_ids",
        "offer",
        "permissions",
        "record_headers",
        "rid_key",
        "rid_lower",
        "rid_name",
        "sessions",
        "settings",
        "track_sessions",
    )

    def __init__(self, leza: Leza) -> None:
        settings = leza.settings
        name = settings.request_id_header  # lower-case
        self.settings: Settings = settings
        self.rid_key = "HTTP_" + name.upper().replace("-", "_")  # environ key of the request's
        self.rid_name = _header_case(name)  # response header name
        self.rid_lower = name
        self.offer: Callable[[Any], None] = leza.recorder.offer
        self.cookies: CookieJar = leza.cookies
        self.sessions: Sessions = leza.sessions
        self.machine_ids = bool(settings.machine_cookie)
        self.track_sessions = settings.sessions
        self.logout_routes = frozenset(settings.logout_routes)
        # None without rules: one identity test per request (rebuilt with the settings)
        self.permissions: Permissions | None = leza.permissions or None
        # record_headers (privacy.py): (name, environ key) pairs, empty unless configured.
        self.record_headers = environ_header_keys(settings.record_headers)


class LezaWSGIMiddleware:
    """Record every request of a WSGI app.

    ``leza`` defaults to a :class:`~leza_middleware.Leza` configured from
    ``LEZA_*`` environment variables, so ``LezaWSGIMiddleware(app)`` alone works.
    """

    #: Extra headers for the answer to a revoked session's request, given the
    #: environ (set by framework integrations; Flask clears its own cookies).
    refusal_headers: RefusalHeaders | None = None
    #: A framework integration inside the app decides endpoint permissions (set
    #: by ``leza.init_app`` for Flask), so this middleware takes no decision.
    permissions_in_app: bool = False

    def __init__(self, app: WSGIApplication, leza: Leza | None = None) -> None:
        if leza is None:
            from ..leza import Leza

            leza = Leza()
        self.app = app
        self.leza = leza
        self._refresh()

    def _refresh(self) -> _Conf:
        # Re-read on every configuration change: Leza.init_app may rebuild the
        # Leza's internals (from app.config) after this middleware was made.
        conf = _Conf(self.leza)
        self._conf = conf
        return conf

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start = perf_counter()
        ts = time()
        conf = self._conf
        if conf.settings is not self.leza.settings:
            conf = self._refresh()
        # Outside the try below: a request that cannot be matched is not served.
        needed = (
            required_permission(conf.permissions, environ)
            if conf.permissions is not None and not self.permissions_in_app
            else None
        )
        try:
            rid = _request_id(environ, conf.rid_key)
            header = environ.get("HTTP_COOKIE")
            if header:
                # PEP 3333: latin-1 text of the bytes received (a non-conforming
                # server's other characters become "?" and fail the signature).
                mid, sid, _ = conf.cookies.read(header.encode("latin-1", "replace"))
            else:
                mid = sid = None
            logout = bool(conf.logout_routes) and _is_logout(conf.logout_routes, environ)
        except Exception:  # malformed environ: serve the app, record nothing
            self.leza._count_request_path_error()
            if needed is None:
                return self.app(environ, start_response)
            # ... but never a protected endpoint undecided
            rid, mid, sid, logout = new_request_id(), None, None, False
        if sid is not None:
            reason = conf.sessions.refusal(sid)
            if reason is not None:
                return self._refuse(conf, environ, start_response, rid, ts, start, mid, sid, reason)
            environ[REQUEST_KEY] = {"session_id": sid}  # for the session API in the app
        if needed is not None:
            refused = self._decide(conf, needed, environ, start_response, rid, ts, start, mid, sid)
            if refused is not None:
                return refused
        response = _Response(
            self.leza, conf, environ, start_response, rid, start, ts, mid, sid, logout
        )
        environ[REQUEST_STATE_KEY] = response
        token = _current.set(response.ctx)
        try:
            result = self.app(environ, response.start_response)
        except BaseException as exc:
            response.fail(exc)
            raise
        finally:
            _current.reset(token)
        return response.wrap(result)

    def _decide(
        self,
        conf: _Conf,
        permission: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rid: str,
        ts: float,
        start: float,
        mid: str | None,
        sid: str | None,
    ) -> Iterable[bytes] | None:
        """Decide a protected endpoint before the app; the refusal's body, or None.

        An allowed request goes on to the app with the decision's reason in
        ``environ[PERMISSION_KEY]``. When the decision itself fails (a
        ``has_permission`` hook raised) the app is not called: the request is
        recorded as a 500 and the exception goes to the server.
        """
        who: Performer | None = None
        try:
            request = _native_request(environ)
            if PERFORMER_KEY in environ:  # set by a WSGI layer outside this one
                who = _coerce(environ[PERFORMER_KEY])
            else:
                who = self.leza._call_performer_hook(request)
            assert conf.permissions is not None
            decision = conf.permissions.decide(permission, who, request)
        except BaseException as exc:
            try:
                conf.offer(
                    _raw(environ, ts, perf_counter() - start, 500, rid, None, who,
                         type(exc).__name__, None, None, mid, sid, conf.record_headers)
                )  # fmt: skip
            except Exception:  # never let recording hurt the app
                self.leza._count_request_path_error()
            raise
        if decision.allowed:
            environ[PERMISSION_KEY] = decision.reason
            return None
        body = json.dumps({"detail": decision.reason}).encode()
        headers = [("Content-Type", "application/json")]
        return self._answer(
            conf, environ, start_response, rid, ts, start, mid, sid,
            (decision.status, headers, body), who, decision.reason,
        )  # fmt: skip

    def _refuse(
        self,
        conf: _Conf,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rid: str,
        ts: float,
        start: float,
        mid: str | None,
        sid: str,
        reason: str,
    ) -> Iterable[bytes]:
        """Answer a request of a revoked (or logged-out) session without the app;
        also one whose session's state is unknown (``reason``: UNKNOWN_REASON)."""
        status, extra, body = self.leza._revoked_response(_native_request(environ))
        headers = list(extra)  # (_answer drops a Content-Length of its own)
        try:
            if reason is REVOKED_REASON:  # an unknown state keeps the browser's cookies
                # so the browser can sign in afresh
                headers.append(("Set-Cookie", conf.cookies.clear_session().decode("latin-1")))
                more = self.refusal_headers
                if more is not None:
                    headers += more(environ)
        except Exception:
            self.leza._count_request_path_error()
        return self._answer(
            conf, environ, start_response, rid, ts, start, mid, sid,
            (status, headers, body), None, reason,
        )  # fmt: skip

    def _answer(
        self,
        conf: _Conf,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rid: str,
        ts: float,
        start: float,
        mid: str | None,
        sid: str | None,
        response: tuple[int, list[tuple[str, str]], bytes],
        performer: Performer | None,
        reason: str,
    ) -> Iterable[bytes]:
        """Answer without the app (a revoked session, a missing permission): ``denied``."""
        status, headers, body = response
        try:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers += [(conf.rid_name, rid), ("Content-Length", str(len(body)))]
            start_response(_status_line(status), headers)
        finally:
            try:
                conf.offer(
                    _raw(environ, ts, perf_counter() - start, status, rid, None, performer,
                         None, "denied", reason, mid, sid, conf.record_headers)
                )  # fmt: skip
            except Exception:  # never let recording hurt the app
                self.leza._count_request_path_error()
        return [body]


class _Response:
    """One request's state, its ``start_response`` and the body iterable handed to the server.

    The server iterates this object and calls its ``close()``; both pass
    through to the app's iterable with the request made current again, so
    code running while the body is produced (streaming generators, ``close``
    hooks) logs with the request's id.
    """

    __slots__ = (
        "_app_close",
        "_iterator",
        "_result",
        "_server_start",
        "_server_write",
        "closed",
        "conf",
        "cookie_sid",
        "ctx",
        "end",
        "environ",
        "error",
        "leza",
        "logout",
        "mid",
        "performer",
        "recorded",
        "rid",
        "sent",
        "set_cookies",
        "settled",
        "sid",
        "start",
        "status",
        "ts",
    )

    def __init__(
        self,
        leza: Leza,
        conf: _Conf,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rid: str,
        start: float,
        ts: float,
        mid: str | None = None,
        sid: str | None = None,
        logout: bool = False,
    ) -> None:
        self.leza = leza
        self.conf = conf
        self.environ = environ
        self._server_start = start_response
        self._server_write: Callable[[bytes], object] | None = None
        self.rid = rid
        self.ctx = (rid, environ)
        self.start = start
        self.ts = ts
        self.status = 0
        self.end = 0.0
        self.error: str | None = None
        # A non-empty chunk (or write()) went out, and with it the status line:
        # an exception after that cannot change the status the client got.
        self.sent = False
        self.recorded = False
        self.closed = False
        self._result: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] | None = None
        self._app_close: Callable[[], object] | None = None
        self.mid = mid  # the verified machine id (or the one issued now)
        self.cookie_sid = sid  # the session the session cookie names
        self.sid = sid  # the request's session, once settled
        self.logout = logout  # a logout route
        self.performer: Performer | None = None
        self.settled = False
        self.set_cookies: list[tuple[str, str]] = []

    # -- sessions (also called by framework integrations) ------------------------

    @property
    def ending(self) -> bool:
        """The request ends its session: a logout, or a revoked session refused."""
        if self.logout:
            return True
        state = self.environ.get(REQUEST_KEY)
        return state is not None and bool(state.get("end_session") or state.get("revoked"))

    def adopt(self, session_id: str) -> str:
        """Make ``session_id`` the request's session (no cookie is issued for it)."""
        state = self.environ.get(REQUEST_KEY)
        if state is None:
            state = self.environ[REQUEST_KEY] = {}
        state["session_id"] = session_id
        if self.settled:
            self.sid = session_id
        return session_id

    def settle(self, performer: Performer | None) -> str | None:
        """Decide the response's cookies now that the performer is known (once).

        Returns the request's session id: the one it came with, or the one a
        sign-in (or a signed-in user's first request) gets now.
        """
        if self.settled:
            return self.sid
        self.settled = True
        self.performer = performer
        try:
            conf = self.conf
            environ = self.environ
            state = environ.get(REQUEST_KEY)
            secure = environ.get("wsgi.url_scheme") == "https"
            out = self.set_cookies
            sid = self.cookie_sid if state is None else state.get("session_id", self.cookie_sid)
            if state is not None and state.get("revoked"):
                # refused inside the app (integrations/flask.py): only clear
                if self.cookie_sid is not None:
                    out.append(("Set-Cookie", conf.cookies.clear_session().decode("latin-1")))
            else:
                if self.mid is None and conf.machine_ids and is_browser(environ):
                    self.mid, cookie = conf.cookies.new_machine(secure)
                    out.append(("Set-Cookie", cookie.decode("latin-1")))
                if conf.track_sessions:
                    sid = self._session_cookie(state, sid, performer, secure)
            self.sid = sid
        except Exception:  # never let recording hurt the app
            self.leza._count_request_path_error()
        return self.sid

    def _session_cookie(
        self,
        state: dict[str, Any] | None,
        sid: str | None,
        performer: Performer | None,
        secure: bool,
    ) -> str | None:
        """Issue, rotate or clear the session cookie; return the request's session id."""
        cookies = self.conf.cookies
        if self.logout or (state is not None and state.get("end_session")):
            if self.cookie_sid is not None:
                self.set_cookies.append(("Set-Cookie", cookies.clear_session().decode("latin-1")))
            return sid  # the event carries it: the tracker ends that session
        if state is not None and state.get("performer") is not None:
            performer = state["performer"]
        new = state is not None and state.get("new_session")
        # A session that timed out (not enforced) is not revived: a new one starts.
        if performer is not None and (sid is None or new or sid in self.conf.sessions.timed_out):
            sid, cookie = cookies.new_session(secure)
            self.set_cookies.append(("Set-Cookie", cookie.decode("latin-1")))
            if state is None:
                state = self.environ[REQUEST_KEY] = {}
            state["session_id"] = sid
        return sid

    def _resolve_performer(self) -> Performer | None:
        environ = self.environ
        if PERFORMER_KEY in environ:
            return _coerce(environ[PERFORMER_KEY])
        if self.leza.performer_hook is not None:
            return self.leza._call_performer_hook(_native_request(environ))
        return None

    # -- what the app calls ---------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        try:
            try:
                self.status = int(status[:3])
            except (TypeError, ValueError):  # "abc": the server answers 500, recorded as such
                self.status = 0
            lower = self.conf.rid_lower
            self.rid = self.ctx[0]  # (again: an error response replaces the first headers)
            for name, value in headers:
                if name.lower() == lower:
                    # The app set its own: store what the client sees, if it is
                    # a well-formed id (else ours, rather than arbitrary text;
                    # a value that is not latin-1, against PEP 3333, is not one).
                    raw = value.encode("latin-1", "replace")
                    if parse_incoming_request_id(raw, None) is not None:
                        self.rid = value
                    break
            else:
                # A new list: never mutate the app's (it may be a shared constant).
                headers = [*headers, (self.conf.rid_name, self.ctx[0])]
            # The performer is known now (authentication ran inside the app):
            # cookies for a new browser, a new session, a logout.
            if not self.settled:
                self.settle(self._resolve_performer())
            if self.set_cookies:
                headers = [*headers, *self.set_cookies]
        except Exception:  # a malformed status or header list is the server's to reject
            self.leza._count_request_path_error()
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
        if type(result) is list or type(result) is tuple or self.environ.get(COMPLETE_KEY):
            self.end = perf_counter()
            self._record()
        try:
            self._app_close = getattr(result, "close", None)
            file_wrapper = self.environ.get("wsgi.file_wrapper")
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
                self.end = perf_counter()
                self._record()
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
            self.end = perf_counter()
            self._record()

    # -- recording ------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The app raised: record it (once) as an error; the caller re-raises."""
        if self.recorded:
            return
        self.error = type(exc).__name__
        if not self.sent:
            self.status = 500  # nothing went out: the server answers 500 itself
        self.end = perf_counter()
        self._record()

    def _record(self) -> None:
        self.recorded = True
        try:
            environ = self.environ
            environ.pop(REQUEST_STATE_KEY, None)  # environ <-> self: not a cycle to keep
            get = environ.get
            error = self.error
            if error is None:
                error = get(ERROR_KEY)
            if PERFORMER_KEY in environ:
                performer = _coerce(environ[PERFORMER_KEY])
            elif self.settled:
                performer = self.performer
            elif self.leza.performer_hook is not None:
                performer = self.leza._call_performer_hook(_native_request(environ))
            else:
                performer = None
            state = get(REQUEST_KEY)
            if self.settled:
                sid = self.sid
            else:  # the app failed before its response started
                sid = self.cookie_sid if state is None else state.get("session_id")
            action = reason = None
            if state is not None and "action" in state:
                action, reason = state["action"], state.get("reason")
                performer = state.get("performer") or performer
            elif self.logout:
                action, reason = "logout", LOGOUT_REASON
            elif PERMISSION_KEY in environ and (self.status or 500) < 400:
                reason = environ[PERMISSION_KEY]
            self.conf.offer(
                _raw(
                    environ,
                    self.ts,
                    (self.end or perf_counter()) - self.start,
                    self.status or 500,  # the app never started a response
                    self.rid,
                    get(ROUTE_KEY),
                    performer,
                    error,
                    action,
                    reason,
                    self.mid,
                    sid,
                    self.conf.record_headers,
                )
            )
        except Exception:  # never let recording hurt the app
            self.leza._count_request_path_error()


def _raw(
    environ: WSGIEnvironment,
    ts: float,
    duration: float,
    status: int,
    rid: str,
    route: str | None,
    performer: Performer | None,
    error: str | None,
    action: str | None,
    reason: str | None,
    machine_id: str | None,
    session_id: str | None,
    header_keys: tuple[tuple[str, str], ...] = (),
) -> tuple[Any, ...]:
    """A raw access record: see request_path.RAW_FIELDS."""
    get = environ.get
    path = get("SCRIPT_NAME", "") + get("PATH_INFO", "")
    if not path.isascii():
        path = _wsgi_text(path)
    return (
        ts,
        duration,
        status,
        rid,
        get("REQUEST_METHOD", "GET"),
        path or "/",
        get("QUERY_STRING", ""),
        get("REMOTE_ADDR") or None,
        get("wsgi.url_scheme", "http"),
        None if route is None else normalise_route(route),
        get("HTTP_USER_AGENT"),
        get("HTTP_X_FORWARDED_FOR"),
        get("HTTP_FORWARDED"),
        get("HTTP_HOST"),
        performer,
        error,
        action,
        reason,
        machine_id,
        session_id,
        pick_environ_headers(environ, header_keys) if header_keys else None,
    )


def _paths(environ: WSGIEnvironment) -> tuple[str, ...]:
    """The request's path, app-relative (``PATH_INFO``), then with its mount prefix.

    The prefixed form (``SCRIPT_NAME + PATH_INFO``) is what the client asked
    for, as the ASGI adapter's ``scope["path"]``; it is left out when the app
    is not mounted under a prefix. Both are read back as the UTF-8 text the
    client sent (PEP 3333 hands over latin-1).
    """
    inner = environ.get("PATH_INFO", "") or "/"
    if not inner.isascii():
        inner = _wsgi_text(inner)
    outer = environ.get("SCRIPT_NAME", "")
    if not outer:
        return (inner,)
    if not outer.isascii():
        outer = _wsgi_text(outer)
    return inner, outer + inner


def _is_logout(routes: frozenset[str], environ: WSGIEnvironment) -> bool:
    """A ``logout_routes`` entry (``/logout`` or ``GET /logout``) names this request.

    Matched against the app-relative path and the path the client asked for
    (:func:`_paths`), so an entry works whether or not the app is mounted
    under a prefix.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    return any(path in routes or f"{method} {path}" in routes for path in _paths(environ))


def required_permission(permissions: Permissions, environ: WSGIEnvironment) -> str | None:
    """The permission a WSGI request's endpoint needs, or None.

    Matched like ``logout_routes``: the app-relative path first, then the path
    with its mount prefix (:func:`_paths`). See :func:`endpoint_permission`.
    """
    return endpoint_permission(permissions, environ.get("REQUEST_METHOD", "GET"), _paths(environ))


def endpoint_permission(
    permissions: Permissions, method: str, paths: tuple[str, ...]
) -> str | None:
    """The permission the first of ``paths`` that is protected needs, or None.

    A ``HEAD`` request needs what a ``GET`` of the same path would, unless a
    rule names ``HEAD`` itself: Werkzeug, Flask and Django answer ``HEAD``
    with the ``GET`` view, so a ``GET`` rule must not be side-stepped by it.
    """
    required = permissions.required
    for path in paths:
        needed = required(method, path)
        if needed is None and method == "HEAD":
            needed = required("GET", path)
        if needed is not None:
            return needed
    return None


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def is_browser(meta: Any) -> bool:
    """Keeps cookies, or asks for a page: a browser, which gets a machine id.

    API clients and load generators send neither, and are not handed a new
    machine id per call. ``meta``: a WSGI environ or Django's ``request.META``.
    """
    return "HTTP_COOKIE" in meta or "text/html" in meta.get("HTTP_ACCEPT", "")


def _request_id(environ: WSGIEnvironment, key: str) -> str:
    """A valid incoming request id (header, else traceparent), else a fresh one."""
    incoming = environ.get(key)
    traceparent = environ.get("HTTP_TRACEPARENT")
    if incoming is not None or traceparent is not None:
        # WSGI header values are latin-1 text of the bytes received; anything
        # outside latin-1 (a non-conforming server) becomes "?" and fails the check.
        rid = parse_incoming_request_id(
            None if incoming is None else incoming.encode("latin-1", "replace"),
            None if traceparent is None else traceparent.encode("latin-1", "replace"),
        )
        if rid is not None:
            return rid.decode("ascii")  # the accepted forms are ASCII only
    return new_request_id()


def _wsgi_text(value: str) -> str:
    """Undo PEP 3333's latin-1 decoding: the bytes the client sent, read as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already handed over real text
        return value


def _header_case(name: str) -> str:
    """``x-request-id`` -> ``X-Request-ID``: how the header is usually spelled."""
    return "-".join("ID" if part == "id" else part.capitalize() for part in name.split("-"))


def _coerce(value: Any) -> Performer | None:
    """What an integration left in ``leza.performer`` (normally a Performer already)."""
    if value is None or isinstance(value, Performer):
        return value
    try:
        return coerce_performer(value)
    except (TypeError, ValueError):  # the event matters more than its performer
        return None


def _native_request(environ: WSGIEnvironment) -> Any:
    """What the ``performer=`` hook receives: a Werkzeug ``Request``, else the environ."""
    try:
        from werkzeug.wrappers import Request
    except ImportError:  # plain WSGI without Werkzeug installed
        return environ
    try:
        return Request(environ)
    except Exception:  # an environ against PEP 3333 (text beyond latin-1): the environ itself
        return environ
