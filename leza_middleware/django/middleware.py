"""Django middleware: ``MIDDLEWARE = ["leza_middleware.django.LezaDjangoMiddleware", ...]``.

Hybrid like django-cors-headers: synchronous under WSGI, a coroutine under ASGI
(``markcoroutinefunction``), so Django never adds a thread hop for it and async
views stay on the event loop.

Per request it reuses or makes a request id, echoes it in the response, notes
the status, and enqueues one raw access record (``request_path.RAW_FIELDS``).
Streaming and file responses are recorded when Django closes them, i.e. after
the last byte went out (or the client went away). Nothing here does I/O except
what resolving the performer may need (see :meth:`LezaDjangoMiddleware._user`);
nothing here raises into the app.

Machine identifier and sessions (see docs/django.md, "Sessions"):

* the signed ``leza_mid`` cookie is read from the ``Cookie`` header (one memoised
  dict lookup) and set with ``response.set_cookie()`` when missing or forged;
* a session is Django's own: its id is a keyed hash of the session key, read
  from the session cookie *before* the view (so a logout, which flushes the
  session, still names the session it ended) and from the cookie the response
  sets *after* it (so ``login()``'s ``cycle_key()`` is followed). The raw key is
  never stored;
* a request of a revoked (or logged-out) session is refused before the view, by
  ``leza.sessions.refusal`` (``arefusal`` in async mode): a lookup in an
  in-memory set loaded before the process's first such decision and refreshed
  by the recorder thread, no storage query per request. While that set cannot
  be known the request gets the same answer with the reason "session state
  unknown: …" (``revocation_unknown``), its Django session left alone;
* ``user_logged_in`` / ``user_logged_out`` / ``user_login_failed`` (``signals.py``)
  and ``LEZA["logout_routes"]`` turn a request into a ``login``, ``logout`` or
  ``login_failed`` event.

Endpoint permissions (``LEZA["permissions"]``, see ``permissions.py``) are
decided in ``process_view``: after every middleware's request phase (so
``AuthenticationMiddleware`` has set ``request.user``), before the view.

* The endpoint is ``request.method`` with ``request.path_info`` or
  ``request.path`` (with the ``SCRIPT_NAME`` prefix), matched as
  ``logout_routes`` are; ``HEAD`` needs what ``GET`` would unless a rule
  names ``HEAD``. A URL that resolves to no view is never decided (404).
* The performer: the ``performer=`` hook, else ``request.user`` (loaded now if
  nothing loaded it yet: the decision needs it).
* Whether they hold the permission: the ``has_permission`` hook when
  configured; else the performer's ``permissions`` when the hook gave it some;
  else ``request.user.has_perm(permission)`` — Django's permissions, named
  ``"app_label.codename"``, granted to the user or a group (``ahas_perm`` in
  async mode, so the ORM is only used through ``await``; a ``has_permission``
  hook runs in a thread there, as synchronous code must).
* A refusal is a JSON response (``{"detail": reason}``, the decision's status,
  401 or 403) returned from ``process_view``: the view does not run, the
  response goes back through the middleware stack as any response, and its
  event is action ``denied`` with the reason. An allowed request's event
  (status below 400) carries "User has the permission <P> to access this
  resource of this application <app>".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from time import monotonic, perf_counter, time
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.utils.functional import SimpleLazyObject, empty

from ..context import _current
from ..enrich.cache import bounded_put
from ..ids import new_request_id, parse_incoming_request_id
from ..integrations.wsgi import endpoint_permission, is_browser
from ..performer import Performer, performer_from_user
from ..permissions import Decision, Permissions
from ..request_path import environ_header_keys, normalise_route, pick_environ_headers
from ..sessions.registry import LOGOUT_REASON, REQUEST_ATTR, REVOKED_REASON
from .conf import get_leza

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["LezaDjangoMiddleware"]

log = logging.getLogger("leza_middleware")

# Where process_exception leaves the class name of a view's exception.
_ERROR_ATTR = "_leza_error"
# Where leza.sessions.login() / logout() / login_failed() leave what they ask of
# the running request when it is not a dict (sessions/registry.py, REQUEST_KEY).
_STATE_ATTR = REQUEST_ATTR
# Where process_view leaves the reason of the endpoint permission that allowed a request.
_GRANTED_ATTR = "_leza_permission"
_SID_MEMO_SIZE = 8192
_REFUSED_BODY = b'{"detail":"Session revoked: sign in again"}'


class LezaDjangoMiddleware:
    """Record one access event per request of a Django project.

    Configured from ``settings.LEZA`` (the keyword arguments of
    :class:`~leza_middleware.Leza`), read on the first request. Put it first in
    ``MIDDLEWARE`` so its duration covers the whole stack and it sees the
    responses other middleware produce (redirects, CSRF failures).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # Django sees a coroutine function and calls us without adapting.
            markcoroutinefunction(self)
            # The same for process_view: a synchronous one would cost every
            # request a hop to a thread (Django adapts it with sync_to_async).
            self.process_view = self._aprocess_view  # type: ignore[method-assign]
        self.leza: Leza | None = None
        # Endpoint permissions, decided the Django way (None: no rules).
        self._permissions: Permissions | None = None
        self._disabled = False
        self._setup_lock = threading.Lock()

    # -- configuration ---------------------------------------------------------

    def _setup(self) -> Leza | None:
        """Build (or fetch) the process's Leza on the first request."""
        if self._disabled:
            return None
        with self._setup_lock:
            if self.leza is not None or self._disabled:
                return self.leza
            try:
                from django.conf import settings

                from .signals import connect_signals

                leza = get_leza()
                s = leza.settings
                header = s.request_id_header
                self._meta_rid = "HTTP_" + header.upper().replace("-", "_")
                self._rid_header = _display_header(header)
                self._offer = leza.recorder.offer
                self._hook = leza.performer_hook
                self._call_hook = leza._call_performer_hook
                self._count_error = leza._count_request_path_error
                self._session_cookie = settings.SESSION_COOKIE_NAME
                self._cookies = leza.cookies
                self._keyring = leza.keyring
                self._sessions = leza.sessions
                self._machine_cookie = s.machine_cookie or ""
                self._machine_max_age = s.machine_cookie_max_age
                self._track_sessions = s.sessions
                self._logout_routes = frozenset(s.logout_routes)
                # record_headers (privacy.py): META keys, empty unless configured.
                self._record_headers = environ_header_keys(s.record_headers)
                self._sids: dict[str, str] = {}  # session key -> its public id (memo)
                perms = leza.permissions
                self._permission_hook = perms.has_permission
                if perms:
                    self._permissions = Permissions(
                        perms.rules, perms.app_name, perms.has_permission or _django_has_perm
                    )
                    # The decision's texts, when ahas_perm already answered (async).
                    self._holds = Permissions((), perms.app_name, _yes)
                    self._lacks = Permissions((), perms.app_name, _no)
                # Also done by LezaConfig.ready(); here too for projects that list
                # only the middleware, not the app (idempotent: dispatch_uid).
                connect_signals()
            except Exception as exc:
                # The host app keeps serving; `manage.py check` reports the
                # same problem (leza.E00x) before a deployment gets here.
                self._disabled = True
                log.error(
                    "leza: settings.LEZA is invalid; requests are NOT being recorded: %s",
                    exc,
                    exc_info=not isinstance(exc, ValueError),
                )
                return None
            self.leza = leza
            if self.async_mode:
                _warn_without_lifespan()
            return leza

    # -- request path ----------------------------------------------------------

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        leza = self.leza
        if leza is None:
            leza = self._setup()
            if leza is None:
                return self.get_response(request)
        start = perf_counter()
        ts = time()
        try:
            rid, mid, key, sid = self._enter(request)
        except Exception:  # a malformed request: serve it, record nothing
            leza._count_request_path_error()
            return self.get_response(request)
        if sid is not None and (refused := self._sessions.refusal(sid)) is not None:
            response = self._refusal(request, rid, refused)
            if refused is REVOKED_REASON:
                with contextlib.suppress(Exception):
                    self._session_store(key).delete()
            self._refused(request, response, rid, ts, start, mid, sid, refused)
            return response
        token = _current.set((rid, request))
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django turns Exceptions into responses; not these
            self._record(
                request, None, rid, ts, start, perf_counter(), None, type(exc).__name__, mid, sid
            )
            raise
        finally:
            _current.reset(token)
        end = perf_counter()
        performer = self._performer(request)
        self._record(request, response, rid, ts, start, end, performer, None, mid, sid)
        return response

    async def __acall__(self, request: Any) -> Any:
        leza = self.leza
        if leza is None:
            leza = self._setup()
            if leza is None:
                return await self.get_response(request)
        start = perf_counter()
        ts = time()
        try:
            rid, mid, key, sid = self._enter(request)
        except Exception:
            leza._count_request_path_error()
            return await self.get_response(request)
        if sid is not None and (refused := await self._sessions.arefusal(sid)) is not None:
            response = self._refusal(request, rid, refused)
            if refused is REVOKED_REASON:
                with contextlib.suppress(Exception):
                    await _adelete(self._session_store(key))
            self._refused(request, response, rid, ts, start, mid, sid, refused)
            return response
        token = _current.set((rid, request))
        try:
            response = await self.get_response(request)
        except BaseException as exc:  # e.g. CancelledError when the client went away
            self._record(
                request, None, rid, ts, start, perf_counter(), None, type(exc).__name__, mid, sid
            )
            raise
        finally:
            _current.reset(token)
        end = perf_counter()
        performer = await self._aperformer(request)
        self._record(request, response, rid, ts, start, end, performer, None, mid, sid)
        return response

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Note the view's exception class; Django then renders its 500 (or 403/404)."""
        with contextlib.suppress(Exception):
            request.__dict__[_ERROR_ATTR] = type(exception).__name__

    # -- endpoint permissions (before the view) ---------------------------------

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> Any:
        """Decide a protected endpoint: None lets the view run, else the refusal."""
        permissions = self._permissions
        if permissions is None:
            return None
        needed = endpoint_permission(permissions, request.method, _paths(request))
        if needed is None:
            return None
        try:
            who = self._deciding_performer(request, getattr(request, "user", None))
            decision = permissions.decide(needed, who, request)
        except Exception as exc:  # e.g. has_permission raised: Django answers 500
            request.__dict__[_ERROR_ATTR] = type(exc).__name__
            raise
        return self._permission_outcome(request, decision)

    async def _aprocess_view(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        """:meth:`process_view` in async mode (the ORM only through await)."""
        permissions = self._permissions
        if permissions is None:
            return None
        needed = endpoint_permission(permissions, request.method, _paths(request))
        if needed is None:
            return None
        try:
            user = await _aload_user(request)
            who = self._deciding_performer(request, user)
            if who is None or (self._permission_hook is None and who.permissions):
                decision = permissions.decide(needed, who, request)  # no I/O
            elif self._permission_hook is not None:
                # The app's synchronous hook may query the database.
                decision = await sync_to_async(permissions.decide)(needed, who, request)
            else:
                granted = await _ahas_perm(user, needed)
                decision = (self._holds if granted else self._lacks).decide(needed, who, request)
        except Exception as exc:
            request.__dict__[_ERROR_ATTR] = type(exc).__name__
            raise
        return self._permission_outcome(request, decision)

    def _deciding_performer(self, request: Any, user: Any) -> Performer | None:
        """Who asks: the performer hook's answer, else ``request.user`` (loaded)."""
        if self._hook is not None:
            return self._call_hook(request)
        return None if user is None else performer_from_user(user)

    def _permission_outcome(self, request: Any, decision: Decision) -> Any:
        """Note an allowed request's reason (None: the view runs); else the refusal."""
        if decision.allowed:
            request.__dict__[_GRANTED_ATTR] = decision.reason
            return None
        from django.http import JsonResponse

        state = request.__dict__.setdefault(_STATE_ATTR, {})
        state["action"] = "denied"
        state["reason"] = decision.reason
        return JsonResponse({"detail": decision.reason}, status=decision.status)

    def _enter(self, request: Any) -> tuple[str, str | None, str | None, str | None]:
        """Request id, machine id, session key and session id, before the view.

        The session key is the value of Django's session cookie as the browser
        sent it: the session a logout in this request ends, and the one a
        revocation refuses. Its id is memoised (one HMAC per distinct key).
        """
        meta = request.META
        rid = self._request_id(meta)
        header = meta.get("HTTP_COOKIE")
        if not header:
            return rid, None, None, None
        mid = sid = None
        if self._machine_cookie:
            # META values are latin-1 decoded header bytes (WSGI and ASGI alike).
            mid = self._cookies.read(header.encode("latin-1", "replace"))[0]
        key = request.COOKIES.get(self._session_cookie) if self._track_sessions else None
        if key:
            sid = self._sids.get(key) or self._session_id(key)
            # For leza.sessions.current_id() / revoke_all(except_current=True).
            request.__dict__[_STATE_ATTR] = {"session_id": sid}
        return rid, mid, key or None, sid

    def _session_id(self, key: str) -> str:
        sid = self._keyring.session_id(key.encode("latin-1", "replace"))
        bounded_put(self._sids, key, sid, _SID_MEMO_SIZE)
        return sid

    def _request_id(self, meta: Any) -> str:
        incoming = meta.get(self._meta_rid)
        traceparent = meta.get("HTTP_TRACEPARENT")
        if incoming is not None or traceparent is not None:
            # META values are latin-1 decoded header bytes (WSGI and ASGI alike).
            rid = parse_incoming_request_id(
                None if incoming is None else incoming.encode("latin-1", "replace"),
                None if traceparent is None else traceparent.encode("latin-1", "replace"),
            )
            if rid is not None:
                return rid.decode("latin-1")
        return new_request_id()

    # -- after the view --------------------------------------------------------

    def _record(
        self,
        request: Any,
        response: Any,
        rid: str,
        ts: float,
        start: float,
        end: float,
        performer: Performer | None,
        error: str | None,
        mid: str | None = None,
        sid: str | None = None,
    ) -> None:
        """Echo the request id, set the machine cookie, enqueue the raw record; never raises.

        The duration runs from ``start`` to ``end`` (the response was returned);
        a streaming response is recorded when it is closed, timed until then.
        ``sid`` is the session id the request came with; the record carries the
        session the request ends up in (see :meth:`_outcome`).
        """
        try:
            action, reason, performer, sid = self._outcome(request, response, performer, sid)
            if response is None:
                status = 500
            else:
                status = response.status_code
                headers = response.headers
                sent = headers.get(self._rid_header)
                if sent is None:
                    headers[self._rid_header] = rid
                else:
                    rid = sent  # the view chose its own: store what the client sees
                if status >= 500:
                    # Only a 5xx is the exception's doing: PermissionDenied (403),
                    # Http404 and SuspiciousOperation (400) are ordinary outcomes.
                    error = request.__dict__.get(_ERROR_ATTR)
                if mid is None and self._machine_cookie and is_browser(request.META):
                    mid = self._set_machine_cookie(request, response)
            record = self._raw(
                request, ts, end - start, status, rid, performer, error, action, reason, mid, sid
            )
            if response is not None and getattr(response, "streaming", False):
                # Record when the server closes the response: after the last byte
                # (or a client disconnect). WSGI servers must call close(); Django's
                # ASGI handler and test client do too. Hooking close() rather than
                # wrapping streaming_content keeps FileResponse's file_to_stream, so
                # wsgi.file_wrapper / sendfile still apply, and it works for sync and
                # async iterators alike, and for responses never iterated (HEAD).
                closers = getattr(response, "_resource_closers", None)
                if type(closers) is list:
                    closers.append(_StreamedRecord(self, record, start))
                    return
            self._offer(record)
        except Exception:  # never let recording hurt the app
            self._count_error()

    def _outcome(
        self, request: Any, response: Any, performer: Performer | None, sid: str | None
    ) -> tuple[str | None, str | None, Performer | None, str | None]:
        """(action, reason, performer, session id) of a finished request.

        * ``leza.sessions.login()`` / ``logout()`` / ``login_failed()`` (called by
          the auth signals or the app) name the action; else a logout route does;
          else the enricher derives it from the status (``None``).
        * A logout carries the session the request came with: Django flushed it
          in the view, and the tracker ends the session the event names.
        * Otherwise a signed-in request carries the session the browser holds
          after this response: the key the response sets (``login()`` rotates it
          with ``cycle_key()``), else the one it came with. Anonymous requests
          carry none.
        """
        action = reason = None
        ended = False
        state = request.__dict__.get(_STATE_ATTR)
        if state is not None and "action" in state:
            action, reason = state["action"], state.get("reason")
            performer = state.get("performer") or performer
            ended = bool(state.get("end_session"))
        elif self._logout_routes and self._is_logout(request):
            action, reason, ended = "logout", LOGOUT_REASON, True
        elif response is not None and response.status_code < 400:
            reason = request.__dict__.get(_GRANTED_ATTR)  # an endpoint permission's
        if ended or not self._track_sessions:
            return action, reason, performer, sid
        if performer is None:
            return action, reason, None, None
        if response is not None:
            morsel = response.cookies.get(self._session_cookie)
            if morsel is not None:
                key = morsel.value
                if not key:  # the response deletes the session cookie
                    return action, reason, performer, None
                sid = self._sids.get(key) or self._session_id(key)
        return action, reason, performer, sid

    def _is_logout(self, request: Any) -> bool:
        routes = self._logout_routes
        method = request.method
        path = request.path_info
        if path in routes or f"{method} {path}" in routes:
            return True
        full = request.path  # with the SCRIPT_NAME prefix
        return full != path and (full in routes or f"{method} {full}" in routes)

    def _set_machine_cookie(self, request: Any, response: Any) -> str | None:
        """Give a browser without a (valid) machine cookie a new one; return its id."""
        name = self._machine_cookie
        cookies = response.cookies
        if name in cookies:  # the app set one itself: leave it alone
            return None
        secure = request.scheme == "https"
        mid, value = self._cookies.new_machine_value()
        # The cookie goes into response.cookies, where Django's handlers, the
        # test client and other middleware expect it, with the jar's attributes:
        # set on the Morsel directly, which costs ~3 us less than set_cookie()
        # (it formats an Expires date too) for clients that never keep cookies.
        cookies[name] = value
        morsel = cookies[name]
        morsel["max-age"] = self._machine_max_age
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if secure:
            morsel["secure"] = True
        return mid

    def _raw(
        self,
        request: Any,
        ts: float,
        duration: float,
        status: int,
        rid: str,
        performer: Performer | None,
        error: str | None,
        action: str | None,
        reason: str | None,
        mid: str | None,
        sid: str | None,
    ) -> tuple[Any, ...]:
        """A raw access record: see request_path.RAW_FIELDS."""
        meta = request.META
        match = request.resolver_match
        route = None if match is None else match.route
        return (
            ts,
            duration,
            status,
            rid,
            request.method,
            request.path_info,
            meta.get("QUERY_STRING", ""),
            meta.get("REMOTE_ADDR") or None,
            request.scheme,
            None if route is None else normalise_route(route),
            meta.get("HTTP_USER_AGENT"),
            meta.get("HTTP_X_FORWARDED_FOR"),
            meta.get("HTTP_FORWARDED"),
            meta.get("HTTP_HOST"),
            performer,
            error,
            action,
            reason,
            mid,
            sid,
            pick_environ_headers(meta, self._record_headers) if self._record_headers else None,
        )

    # -- revoked sessions --------------------------------------------------------

    def _refusal(self, request: Any, rid: str, reason: str) -> Any:
        """The response to a request of a revoked or logged-out session (no view runs).

        ``revoked_response(request)`` (or the default JSON 401) with the request
        id, deleting Django's session cookie so the browser can sign in again
        (not when the session's state is only unknown: ``reason``). Never
        raises: a response Django cannot send (a header with a newline) becomes
        a plain 401.
        """
        from django.conf import settings
        from django.http import HttpResponse

        try:
            assert self.leza is not None
            status, headers, body = self.leza._revoked_response(request)
            response = HttpResponse(body, status=status)
            for name, value in headers:
                response[name] = value
        except Exception:
            self._count_error()
            response = HttpResponse(_REFUSED_BODY, status=401, content_type="application/json")
        try:
            response[self._rid_header] = rid
            if reason is not REVOKED_REASON:
                return response
            response.delete_cookie(
                self._session_cookie,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        except Exception:
            self._count_error()
        return response

    def _session_store(self, key: str | None) -> Any:
        """Django's session store for ``key`` (to delete a refused session server-side)."""
        from importlib import import_module

        from django.conf import settings

        return import_module(settings.SESSION_ENGINE).SessionStore(key)

    def _refused(
        self,
        request: Any,
        response: Any,
        rid: str,
        ts: float,
        start: float,
        mid: str | None,
        sid: str,
        reason: str,
    ) -> None:
        try:
            self._offer(
                self._raw(
                    request,
                    ts,
                    perf_counter() - start,
                    response.status_code,
                    rid,
                    None,
                    None,
                    "denied",
                    reason,
                    mid,
                    sid,
                )
            )
        except Exception:
            self._count_error()

    # -- performer -------------------------------------------------------------

    def _performer(self, request: Any) -> Performer | None:
        try:
            if self._hook is not None:
                return self._call_hook(request)
            user = self._user(request)
            if user is None:
                return None
            performer = performer_from_user(user)
        except Exception:
            self._count_error()
            return None
        if performer is None:
            return None
        try:
            return _with_roles(performer, _role_names(user))
        except Exception:  # e.g. the database is down: keep who it was, without roles
            self._count_error()
            return performer

    def _user(self, request: Any) -> Any:
        """``request.user``, read after the view ran; None when surely anonymous.

        A user the view (or a decorator, template, other middleware) already
        loaded costs nothing. An unloaded ``request.user`` (Django's lazy object)
        is loaded here only when the request carries the session cookie: that is
        one session read and one user query, which the view usually did anyway.
        Without the cookie the request is anonymous and nothing is queried.
        """
        user: Any = getattr(request, "user", None)
        if type(user) is SimpleLazyObject and user._wrapped is empty:
            cached = request.__dict__.get("_cached_user")
            if cached is not None:
                return cached
            if self._session_cookie not in request.COOKIES:
                return None
        return user

    async def _aperformer(self, request: Any) -> Performer | None:
        """:meth:`_performer` for async mode: the ORM is used only through await."""
        try:
            user: Any = getattr(request, "user", None)
            if type(user) is SimpleLazyObject and user._wrapped is empty:
                d = request.__dict__
                if "_cached_user" in d:
                    user = d["_cached_user"]
                elif "_acached_user" in d:
                    user = d["_acached_user"]
                elif self._session_cookie not in request.COOKIES:
                    user = None
                else:
                    auser: Callable[[], Awaitable[Any]] | None = d.get("auser")
                    if auser is not None:  # Django >= 5.0
                        user = await auser()
                    else:
                        user = await sync_to_async(_unwrap)(user)
                if user is not None:
                    # The performer hook runs on the event loop: let it read
                    # request.user without a (forbidden) synchronous query.
                    request.user = user
            if self._hook is not None:
                return self._call_hook(request)
            if user is None:
                return None
            performer = performer_from_user(user)
        except Exception:
            self._count_error()
            return None
        if performer is None:
            return None
        try:
            return _with_roles(performer, await _arole_names(user))
        except Exception:
            self._count_error()
            return performer


class _StreamedRecord:
    """Offers a streaming response's record when Django closes the response."""

    __slots__ = ("middleware", "record", "start")

    def __init__(self, middleware: LezaDjangoMiddleware, record: tuple[Any, ...], start: float):
        self.middleware = middleware
        self.record = record
        self.start = start

    def __call__(self) -> None:
        record = self.record
        try:
            self.middleware._offer((record[0], perf_counter() - self.start, *record[2:]))
        except Exception:
            self.middleware._count_error()


_lifespan_warned = False


def _warn_without_lifespan() -> None:
    """Say once when served over ASGI without :class:`~.asgi.LezaLifespan`."""
    global _lifespan_warned
    from . import asgi

    if asgi.lifespan_seen or _lifespan_warned:
        return
    _lifespan_warned = True
    log.warning(
        "leza: this ASGI server ran no lifespan through LezaLifespan, so events queued when "
        "it stops can be lost (uvicorn ends with the signal's default action, skipping "
        "atexit). Serve leza_middleware.django.asgi.get_asgi_application() instead of "
        "django.core.asgi.get_asgi_application() (see docs/django.md)."
    )


def _display_header(name: str) -> str:
    """``x-request-id`` → ``X-Request-ID`` (header names are case-insensitive anyway)."""
    if name == "x-request-id":
        return "X-Request-ID"
    return "-".join(part.capitalize() for part in name.split("-"))


async def _adelete(store: Any) -> None:
    adelete = getattr(store, "adelete", None)
    if adelete is not None:  # Django >= 5.0
        await adelete()
    else:
        await sync_to_async(store.delete)()


def _paths(request: Any) -> tuple[str, ...]:
    """The app-relative path, then the one with the ``SCRIPT_NAME`` prefix (if any)."""
    path = request.path_info
    full = request.path
    return (path,) if full == path else (path, full)


def _django_has_perm(performer: Performer, request: Any, permission: str) -> bool:
    """Django's default ``has_permission``: the hook's ``permissions``, else ``has_perm``."""
    if performer.permissions:
        return permission in performer.permissions
    has_perm = getattr(getattr(request, "user", None), "has_perm", None)
    return has_perm is not None and bool(has_perm(permission))


async def _ahas_perm(user: Any, permission: str) -> bool:
    """``user.has_perm(permission)`` in async mode."""
    ahas_perm = getattr(user, "ahas_perm", None)
    if ahas_perm is not None:  # Django >= 5.2
        return bool(await ahas_perm(permission))
    has_perm = getattr(user, "has_perm", None)
    return has_perm is not None and bool(await sync_to_async(has_perm)(permission))


async def _aload_user(request: Any) -> Any:
    """``request.user``, loaded through await (Django's lazy object otherwise queries).

    The loaded user replaces the lazy object, so the performer hook, the
    ``has_permission`` hook and the view can read it without a synchronous
    query on the event loop.
    """
    user: Any = getattr(request, "user", None)
    if type(user) is SimpleLazyObject and user._wrapped is empty:
        d = request.__dict__
        if "_cached_user" in d:
            user = d["_cached_user"]
        elif "_acached_user" in d:
            user = d["_acached_user"]
        else:
            auser: Callable[[], Awaitable[Any]] | None = d.get("auser")
            user = await auser() if auser is not None else await sync_to_async(_unwrap)(user)
        request.user = user
    return user


def _yes(performer: Performer, request: Any, permission: str) -> bool:
    return True


def _no(performer: Performer, request: Any, permission: str) -> bool:
    return False


def _unwrap(user: Any) -> Any:
    user._setup()
    return user._wrapped


def _with_roles(performer: Performer, roles: str) -> Performer:
    return replace(performer, role_name=roles) if roles else performer


# -- role_name from the user's Django groups ---------------------------------------
#
# Groups live in the database; reading them on every request would add a query
# per request. Each user's comma-joined group names are cached for ROLE_TTL
# seconds, and the cache is dropped when this process changes a user's groups
# or a group (m2m_changed / post_save / post_delete); other processes see a
# change within ROLE_TTL.

ROLE_TTL = 60.0
ROLE_CACHE_SIZE = 10_000
_roles: dict[Any, tuple[float, str]] = {}
_watching = False
_watch_lock = threading.Lock()


def _cached_roles(user: Any) -> tuple[Any, str | None]:
    key = user.pk  # one AUTH_USER_MODEL per project
    hit = _roles.get(key)
    if hit is not None and hit[0] > monotonic():
        return key, hit[1]
    return key, None


def _remember_roles(key: Any, names: list[str]) -> str:
    roles = ",".join(sorted(names))
    if len(_roles) >= ROLE_CACHE_SIZE:
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):
            del _roles[next(iter(_roles))]  # oldest first
    _roles[key] = (monotonic() + ROLE_TTL, roles)
    return roles


def _groups(user: Any) -> Any:
    """The user's ``groups`` manager, or None for user models without groups."""
    if not _watching:
        _watch_groups()
    groups = getattr(user, "groups", None)
    return groups if hasattr(groups, "values_list") else None


def _role_names(user: Any) -> str:
    key, roles = _cached_roles(user)
    if roles is not None:
        return roles
    groups = _groups(user)
    names = [] if groups is None else list(groups.values_list("name", flat=True))
    return _remember_roles(key, names)


async def _arole_names(user: Any) -> str:
    key, roles = _cached_roles(user)
    if roles is not None:
        return roles
    groups = _groups(user)
    names = [] if groups is None else [n async for n in groups.values_list("name", flat=True)]
    return _remember_roles(key, names)


def forget_roles(**kwargs: Any) -> None:
    """Drop the cached group names (a signal receiver; call it after bulk changes)."""
    _roles.clear()


def _watch_groups() -> None:
    global _watching
    with _watch_lock:
        if _watching:
            return
        _watching = True
        try:
            from django.contrib.auth import get_user_model
            from django.db.models.signals import m2m_changed, post_delete, post_save

            field = get_user_model()._meta.get_field("groups")
        except Exception:  # no auth app, or a user model without groups
            return
        m2m_changed.connect(forget_roles, sender=field.remote_field.through, dispatch_uid="leza")
        post_save.connect(forget_roles, sender=field.related_model, dispatch_uid="leza")
        post_delete.connect(forget_roles, sender=field.related_model, dispatch_uid="leza")
