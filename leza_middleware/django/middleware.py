"""Django middleware: ``MIDDLEWARE = ["leza_middleware.django.LezaDjangoMiddleware", ...]``.

Hybrid like django-cors-headers: synchronous under WSGI, a coroutine under ASGI
(``markcoroutinefunction``), so Django never adds a thread hop for it and async
views stay on the event loop.

Translates a Django request for the request core (``core/request.py``):
``request.META`` is the core's header mapping (CGI flavour), ``request.path``
the path (``SCRIPT_NAME`` included, as every adapter records it). What is
Django's own, hence here:

* the session is Django's: its id is a keyed hash of the session key, read from
  the session cookie *before* the view (so a logout, which flushes the session,
  still names the session it ended) and from the cookie the response sets
  *after* it (``login()``'s ``cycle_key()``). A refused session's Django
  cookie and stored session are deleted;
* cookies and headers go into Django's response object (``response.cookies``,
  where Django's handlers, the test client and other middleware look);
* endpoint permissions are decided in ``process_view`` (after
  ``AuthenticationMiddleware`` set ``request.user``, before the view), with
  Django's ``has_perm`` by default (``ahas_perm`` in async mode);
* streaming responses are recorded when Django closes them, after the last
  byte (or the client went away);
* ``user_logged_in`` / ``user_logged_out`` / ``user_login_failed``
  (``signals.py``) mark the request a ``login``, ``logout`` or ``login_failed``.

The performer is read after the view (``identity.py``). See docs/django.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from ..context import REQUEST
from ..core import Request, RequestCore
from ..sessions.registry import REQUEST_ATTR, REVOKED_REASON
from ..storage import preload
from . import responses
from .asgi import warn_without_lifespan
from .conf import as_mapping, get_leza, raw_setting
from .endpoints import DjangoPermissions
from .identity import Identity
from .roles import forget_roles

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["LezaDjangoMiddleware", "forget_roles"]

log = logging.getLogger("leza_middleware")

# Where process_exception leaves the class name of a view's exception.
_ERROR_ATTR = "_leza_error"
# Where __call__ leaves the request core's state, for process_view.
_REQUEST_ATTR = "_leza_request"


def _storage_setting() -> object:
    """``settings.LEZA["storage"]`` when there is one (None: the default; a bad
    ``settings.LEZA`` is reported when the Leza is built, not here)."""
    with contextlib.suppress(Exception):
        return as_mapping(raw_setting()).get("storage")
    return None


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
        self.core: RequestCore | None = None
        self._disabled = False
        self._setup_lock = threading.Lock()
        # Leza is built on the first request: load a SQL storage's libraries now.
        preload(_storage_setting())

    def _setup(self) -> RequestCore | None:
        """Build (or fetch) the process's Leza on the first request."""
        if self._disabled:
            return None
        with self._setup_lock:
            if self.core is not None or self._disabled:
                return self.core
            try:
                from django.conf import settings

                from .signals import connect_signals

                leza = get_leza()
                self._session_cookie = settings.SESSION_COOKIE_NAME
                self._identity = Identity(leza.hooks, leza.faults, self._session_cookie)
                self._track_sessions = leza.settings.sessions
                self._permissions = DjangoPermissions(leza.permissions, self._identity)
                core = RequestCore.for_leza(
                    leza,
                    asgi=False,
                    permissions=self._permissions.permissions,
                    state_key=REQUEST_ATTR,
                    framework_sessions=True,
                    decide_at_begin=False,
                )
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
            self.core = core
            if self.async_mode:
                warn_without_lifespan()
            return core

    # -- the request ---------------------------------------------------------------

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        core = self.core or self._setup()
        req = Request()
        if core is None or not self._begin(core, req, request):
            return self.get_response(request)
        if req.sid is not None and core.refused(req):
            response = self._refuse(core, req, request)
            if req.reason is REVOKED_REASON:
                with contextlib.suppress(Exception):
                    responses.session_store(request, self._session_cookie).delete()
            return response
        token = REQUEST.set((req.rid, request))
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django turns Exceptions into responses; not these
            req.error = type(exc).__name__
            self._finish(core, req, request, None)
            raise
        finally:
            REQUEST.reset(token)
        req.end = perf_counter()
        req.performer = self._identity.performer(request)
        self._finish(core, req, request, response)
        return response

    # The async twin of __call__, step for step (Django's hybrid middleware
    # contract: each mode has its own, so neither costs a thread hop; the awaits
    # are the only difference). Keep the two in step.
    async def __acall__(self, request: Any) -> Any:
        core = self.core or self._setup()
        req = Request()
        if core is None or not self._begin(core, req, request):
            return await self.get_response(request)
        if req.sid is not None and await core.arefused(req):
            response = self._refuse(core, req, request)
            if req.reason is REVOKED_REASON:
                with contextlib.suppress(Exception):
                    await responses.adelete(responses.session_store(request, self._session_cookie))
            return response
        token = REQUEST.set((req.rid, request))
        try:
            response = await self.get_response(request)
        except BaseException as exc:  # e.g. CancelledError when the client went away
            req.error = type(exc).__name__
            self._finish(core, req, request, None)
            raise
        finally:
            REQUEST.reset(token)
        req.end = perf_counter()
        req.performer = await self._identity.aperformer(request)
        self._finish(core, req, request, response)
        return response

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Note the view's exception class; Django then renders its 500 (or 403/404)."""
        with contextlib.suppress(Exception):
            request.__dict__[_ERROR_ATTR] = type(exception).__name__

    def _begin(self, core: RequestCore, req: Request, request: Any) -> bool:
        """The request as the core's inputs; its Django session, if it has one."""
        try:
            meta = request.META
            path = request.path
            if not core.begin(
                req, request.__dict__, meta, request.method, path, responses.prefix(request),
                meta.get("QUERY_STRING", ""), meta.get("REMOTE_ADDR") or None, request.scheme,
            ):  # fmt: skip
                return False
            if self._track_sessions and "HTTP_COOKIE" in meta:
                key = request.COOKIES.get(self._session_cookie)
                if key:
                    core.framework_session(req, key)
        except Exception:  # a malformed request: serve it, record nothing
            core.faults.request_path_error()
            return False
        request.__dict__[_REQUEST_ATTR] = req
        return True

    def _finish(self, core: RequestCore, req: Request, request: Any, response: Any) -> None:
        """Echo the request id, set the machine cookie, record; never raises.

        A signed-in request carries the session the browser holds after this
        response: the key the response sets (``login()`` rotates it), else the
        one it came with; a logout names the session it ended. A streaming
        response is recorded when Django closes it, timed until then.
        """
        try:
            if response is not None:
                req.status = response.status_code
                name = core.flavour.request_id_out
                sent = response.headers.get(name)
                if sent is None:
                    response.headers[name] = req.rid
                else:  # the view chose its own
                    core.adopt_request_id(req, sent)
                if req.status >= 500 and req.error is None:
                    # Only a 5xx is the exception's doing: PermissionDenied (403),
                    # Http404 and SuspiciousOperation (400) are ordinary outcomes.
                    req.error = request.__dict__.get(_ERROR_ATTR)
                if core.wants_machine_id(req):
                    responses.set_machine_cookie(core, req, response)
                if self._track_sessions and not core.ending(req):
                    morsel = response.cookies.get(self._session_cookie)
                    if morsel is not None:  # rotated, or deleted (empty)
                        req.sid = core.session_key_id(morsel.value) if morsel.value else None
            req.settled = True
            match = request.resolver_match
            record = core.record(req, None if match is None else match.route)
            if response is not None and getattr(response, "streaming", False):
                # Record when the server closes the response: after the last byte
                # (or a client disconnect). Hooking close() rather than wrapping
                # streaming_content keeps FileResponse's file_to_stream (sendfile),
                # works for sync and async iterators, and for HEAD (never iterated).
                closers = getattr(response, "_resource_closers", None)
                if type(closers) is list:
                    start = req.start

                    def closed() -> None:
                        try:
                            core.offer((record[0], perf_counter() - start, *record[2:]))
                        except Exception:  # never let recording hurt the app
                            core.faults.request_path_error()

                    closers.append(closed)
                    return
            core.offer(record)
        except Exception:  # never let recording hurt the app
            core.faults.request_path_error()

    def _refuse(self, core: RequestCore, req: Request, request: Any) -> Any:
        """The response to a request of a refused session (no view runs), recorded.

        ``revoked_response(request)`` (or the default JSON 401) with the request
        id; a revoked session's Django cookie is deleted so the browser can sign
        in again (not when its state is only unknown).
        """
        response = responses.response(core.revoked_answer(req, request))
        if req.reason is REVOKED_REASON:
            try:
                responses.delete_session_cookie(response, self._session_cookie)
            except Exception:  # the refusal matters more than the cookie
                core.faults.request_path_error()
        core.finish(req)
        return response

    # -- endpoint permissions (before the view) ---------------------------------------

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> Any:
        """Decide a protected endpoint (``endpoints.py``): None lets the view run,
        else the refusal."""
        req = self._protected(request)
        if req is None:
            return None
        answer = self._permissions.decide(self.core, req, request)  # type: ignore[arg-type]
        return None if answer is None else responses.response(answer)

    async def _aprocess_view(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        """:meth:`process_view` in async mode (the ORM only through await)."""
        req = self._protected(request)
        if req is None:
            return None
        answer = await self._permissions.adecide(self.core, req, request)  # type: ignore[arg-type]
        return None if answer is None else responses.response(answer)

    def _protected(self, request: Any) -> Request | None:
        """The request's state when its endpoint needs a permission, else None."""
        core = self.core
        if core is None or core.endpoints.permissions is None:
            return None
        prefix = responses.prefix(request)
        req: Request | None = request.__dict__.get(_REQUEST_ATTR)
        if req is None:  # malformed, served unrecorded; decided all the same
            req = core.detached({}, request.method, request.path, prefix)
        return req if core.require(req, prefix) is not None else None
