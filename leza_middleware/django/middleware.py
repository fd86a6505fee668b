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

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from ..context import _current
from ..core import Request, RequestCore
from ..core.hooks import Answer
from ..permissions import Permissions
from ..sessions.registry import REQUEST_ATTR, REVOKED_REASON
from .conf import get_leza
from .identity import Identity, ahas_perm, aload_user, django_has_perm
from .roles import forget_roles

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["LezaDjangoMiddleware", "forget_roles"]

log = logging.getLogger("leza_middleware")

# Where process_exception leaves the class name of a view's exception.
_ERROR_ATTR = "_leza_error"
# Where __call__ leaves the request core's state, for process_view.
_REQUEST_ATTR = "_leza_request"


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
                perms = leza.permissions
                hook = perms.has_permission
                self._session_cookie = settings.SESSION_COOKIE_NAME
                self._identity = Identity(leza.hooks, leza.faults, self._session_cookie)
                self._track_sessions = leza.settings.sessions
                self._permission_hook = hook
                # The decision's texts, when ahas_perm already answered (async).
                self._holds = Permissions((), perms.app_name, _yes)
                self._lacks = Permissions((), perms.app_name, _no)
                core = RequestCore.for_leza(
                    leza,
                    asgi=False,
                    permissions=Permissions(perms.rules, perms.app_name, hook or django_has_perm),
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
                _warn_without_lifespan()
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
                    self._session_store(request).delete()
            return response
        token = _current.set((req.rid, request))
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django turns Exceptions into responses; not these
            req.error = type(exc).__name__
            self._finish(core, req, request, None)
            raise
        finally:
            _current.reset(token)
        req.end = perf_counter()
        req.performer = self._identity.performer(request)
        self._finish(core, req, request, response)
        return response

    async def __acall__(self, request: Any) -> Any:
        core = self.core or self._setup()
        req = Request()
        if core is None or not self._begin(core, req, request):
            return await self.get_response(request)
        if req.sid is not None and await core.arefused(req):
            response = self._refuse(core, req, request)
            if req.reason is REVOKED_REASON:
                with contextlib.suppress(Exception):
                    await _adelete(self._session_store(request))
            return response
        token = _current.set((req.rid, request))
        try:
            response = await self.get_response(request)
        except BaseException as exc:  # e.g. CancelledError when the client went away
            req.error = type(exc).__name__
            self._finish(core, req, request, None)
            raise
        finally:
            _current.reset(token)
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
                req, request.__dict__, meta, request.method, path, _prefix(request),
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
                    self._set_machine_cookie(core, req, response)
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
                    offer = core.offer
                    closers.append(lambda: offer((record[0], perf_counter() - start, *record[2:])))
                    return
            core.offer(record)
        except Exception:  # never let recording hurt the app
            core.faults.request_path_error()

    def _set_machine_cookie(self, core: RequestCore, req: Request, response: Any) -> None:
        """Give a browser without a (valid) machine cookie a new one."""
        cookies = core.cookies
        name = cookies.machine_cookie or ""
        if name in response.cookies:  # the app set one itself: leave it alone
            return
        req.mid, value = cookies.new_machine_value()
        # Set on the Morsel directly: ~3 us less than set_cookie() (it formats an
        # Expires date too), for clients that never keep cookies.
        response.cookies[name] = value
        morsel = response.cookies[name]
        morsel["max-age"] = cookies.machine_max_age
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if req.scheme == "https":
            morsel["secure"] = True

    def _refuse(self, core: RequestCore, req: Request, request: Any) -> Any:
        """The response to a request of a refused session (no view runs), recorded.

        ``revoked_response(request)`` (or the default JSON 401) with the request
        id; a revoked session's Django cookie is deleted so the browser can sign
        in again (not when its state is only unknown).
        """
        from django.conf import settings

        response = _response(core.revoked_answer(req, request))
        if req.reason is REVOKED_REASON:
            try:
                response.delete_cookie(
                    self._session_cookie,
                    path=settings.SESSION_COOKIE_PATH,
                    domain=settings.SESSION_COOKIE_DOMAIN,
                    samesite=settings.SESSION_COOKIE_SAMESITE,
                )
            except Exception:  # the refusal matters more than the cookie
                core.faults.request_path_error()
        core.finish(req)
        return response

    def _session_store(self, request: Any) -> Any:
        """Django's session store of the refused session (to delete it server-side)."""
        from importlib import import_module

        from django.conf import settings

        key = request.COOKIES.get(self._session_cookie)
        return import_module(settings.SESSION_ENGINE).SessionStore(key)

    # -- endpoint permissions (before the view) ---------------------------------------

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> Any:
        """Decide a protected endpoint: None lets the view run, else the refusal."""
        core, req = self._protected(request)
        if req is None:
            return None
        try:
            who = self._identity.deciding(request, getattr(request, "user", None))
        except BaseException as exc:  # Django answers 500; recorded with this error
            req.error = type(exc).__name__
            raise
        answer = core.decide(req, who, request)  # a hook that raised: marked, raised
        return None if answer is None else _response(answer)

    async def _aprocess_view(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        """:meth:`process_view` in async mode (the ORM only through await)."""
        core, req = self._protected(request)
        if req is None:
            return None
        who = None
        try:
            user = await aload_user(request)
            who = self._identity.deciding(request, user)
            hook = self._permission_hook
            if who is None or (hook is None and who.permissions):
                answer = core.decide(req, who, request)  # no I/O
            elif hook is not None:
                # The app's synchronous hook may query the database.
                answer = await sync_to_async(core.decide)(req, who, request)
            else:
                granted = await ahas_perm(user, req.needed)  # type: ignore[arg-type]
                lacks_or_holds = self._holds if granted else self._lacks
                decision = lacks_or_holds.decide(req.needed, who, request)  # type: ignore[arg-type]
                answer = core.decided(req, decision, who)
        except BaseException as exc:  # Django answers 500; recorded with this error
            req.error = type(exc).__name__
            raise
        return None if answer is None else _response(answer)

    def _protected(self, request: Any) -> tuple[RequestCore, Request | None]:
        """The core and the request's state when its endpoint needs a permission."""
        core = self.core
        if core is None or core.endpoints.permissions is None:
            return core, None  # type: ignore[return-value]
        prefix = _prefix(request)
        req: Request | None = request.__dict__.get(_REQUEST_ATTR)
        if req is None:  # malformed, served unrecorded; decided all the same
            req = core.detached({}, request.method, request.path, prefix)
        return core, req if core.require(req, prefix) is not None else None


def _prefix(request: Any) -> str:
    """The ``SCRIPT_NAME`` the project is mounted at: ``request.path`` less ``path_info``."""
    path, inner = request.path, request.path_info
    return path[: len(path) - len(inner)] if path != inner and path.endswith(inner) else ""


def _response(answer: Answer) -> Any:
    """A refusal as Django's response, so it passes back through the middleware stack."""
    from django.http import HttpResponse

    status, headers, body = answer
    response = HttpResponse(body, status=status)
    for name, value in headers:
        response[name] = value
    return response


async def _adelete(store: Any) -> None:
    adelete = getattr(store, "adelete", None)
    if adelete is not None:  # Django >= 5.0
        await adelete()
    else:
        await sync_to_async(store.delete)()


def _yes(performer: Any, request: Any, permission: str) -> bool:
    return True


def _no(performer: Any, request: Any, permission: str) -> bool:
    return False


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
