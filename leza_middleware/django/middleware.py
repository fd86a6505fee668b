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
from ..ids import new_request_id, parse_incoming_request_id
from ..performer import Performer, performer_from_user
from ..request_path import normalise_route
from .conf import get_leza

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["LezaDjangoMiddleware"]

log = logging.getLogger("leza_middleware")

# Where process_exception leaves the class name of a view's exception.
_ERROR_ATTR = "_leza_error"


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
        self.leza: Leza | None = None
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

                leza = get_leza()
                header = leza.settings.request_id_header
                self._meta_rid = "HTTP_" + header.upper().replace("-", "_")
                self._rid_header = _display_header(header)
                self._offer = leza.recorder.offer
                self._hook = leza.performer_hook
                self._call_hook = leza._call_performer_hook
                self._count_error = leza._count_request_path_error
                self._session_cookie = settings.SESSION_COOKIE_NAME
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
            rid = self._request_id(request.META)
        except Exception:  # a malformed request: serve it, record nothing
            leza._count_request_path_error()
            return self.get_response(request)
        token = _current.set((rid, request))
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django turns Exceptions into responses; not these
            self._record(request, None, rid, ts, start, perf_counter(), None, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
        end = perf_counter()
        self._record(request, response, rid, ts, start, end, self._performer(request), None)
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
            rid = self._request_id(request.META)
        except Exception:
            leza._count_request_path_error()
            return await self.get_response(request)
        token = _current.set((rid, request))
        try:
            response = await self.get_response(request)
        except BaseException as exc:  # e.g. CancelledError when the client went away
            self._record(request, None, rid, ts, start, perf_counter(), None, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
        end = perf_counter()
        performer = await self._aperformer(request)
        self._record(request, response, rid, ts, start, end, performer, None)
        return response

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Note the view's exception class; Django then renders its 500 (or 403/404)."""
        with contextlib.suppress(Exception):
            request.__dict__[_ERROR_ATTR] = type(exception).__name__

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
    ) -> None:
        """Echo the request id and enqueue the raw access record; never raises.

        The duration runs from ``start`` to ``end`` (the response was returned);
        a streaming response is recorded when it is closed, timed until then.
        """
        try:
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
            meta = request.META
            match = request.resolver_match
            route = None if match is None else match.route
            record = (  # a raw access record: see request_path.RAW_FIELDS
                ts,
                end - start,
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
                None,
                None,
                None,  # machine id: not tracked by this adapter yet
                None,  # session id: not tracked by this adapter yet
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
