"""Who a Django request's performer is, and what they may do (sync and async).

The performer: the ``performer=`` hook when configured, else ``request.user``
read after the view (``role_name``: the user's groups, ``roles.py``). Under
ASGI the ORM is only used through ``await`` (``request.auser()``, ``ahas_perm``),
so nothing here blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.utils.functional import SimpleLazyObject, empty

from ..performer import Performer, performer_from_user
from .roles import arole_names, role_names

if TYPE_CHECKING:
    from ..core.hooks import Faults, Hooks

__all__ = ["Identity", "ahas_perm", "aload_user", "django_has_perm", "with_roles"]


class Identity:
    """The performer of a Django request, read after the view ran."""

    def __init__(self, hooks: Hooks, faults: Faults, session_cookie: str) -> None:
        self.hooks = hooks
        self.faults = faults
        self.session_cookie = session_cookie

    def deciding(self, request: Any, user: Any) -> Performer | None:
        """Who asks: the hook's answer, else ``user`` (loaded), without roles."""
        if self.hooks.performer_hook is not None:
            return self.hooks.performer(request)
        return None if user is None else performer_from_user(user)

    def performer(self, request: Any) -> Performer | None:
        try:
            user = self._user(request) if self.hooks.performer_hook is None else None
            found = self.deciding(request, user)
        except Exception:
            self.faults.request_path_error()
            return None
        if found is None or self.hooks.performer_hook is not None:
            return found
        return with_roles(found, user, self.faults)

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
            if self.session_cookie not in request.COOKIES:
                return None
        return user

    async def aperformer(self, request: Any) -> Performer | None:
        """:meth:`performer` for async mode: the ORM is used only through await."""
        try:
            # Loaded for the performer hook too: it runs on the event loop, and
            # must read request.user without a (forbidden) synchronous query.
            user = await aload_user(request, only_with=self.session_cookie)
            found = self.deciding(request, user)
        except Exception:
            self.faults.request_path_error()
            return None
        if found is None or self.hooks.performer_hook is not None:
            return found
        try:
            roles = await arole_names(user)
        except Exception:  # e.g. the database is down: keep who it was, without roles
            self.faults.request_path_error()
            return found
        return replace(found, role_name=roles) if roles else found


async def aload_user(request: Any, only_with: str | None = None) -> Any:
    """``request.user``, loaded through await (Django's lazy object otherwise queries).

    The loaded user replaces the lazy object, so the performer hook, the
    ``has_permission`` hook and the view can read it without a synchronous
    query on the event loop. ``only_with``: the session cookie's name; an
    unloaded user of a request without it is surely anonymous (None), not loaded.
    """
    user: Any = getattr(request, "user", None)
    if type(user) is SimpleLazyObject and user._wrapped is empty:
        d = request.__dict__
        if "_cached_user" in d:
            user = d["_cached_user"]
        elif "_acached_user" in d:
            user = d["_acached_user"]
        elif only_with is not None and only_with not in request.COOKIES:
            return None
        else:
            auser: Callable[[], Awaitable[Any]] | None = d.get("auser")
            user = await auser() if auser is not None else await sync_to_async(_unwrap)(user)
        request.user = user
    return user


def django_has_perm(performer: Performer, request: Any, permission: str) -> bool:
    """Django's default ``has_permission``: the hook's ``permissions``, else ``has_perm``."""
    if performer.permissions:
        return permission in performer.permissions
    has_perm = getattr(getattr(request, "user", None), "has_perm", None)
    return has_perm is not None and bool(has_perm(permission))


async def ahas_perm(user: Any, permission: str) -> bool:
    """``user.has_perm(permission)`` in async mode."""
    ahas = getattr(user, "ahas_perm", None)
    if ahas is not None:  # Django >= 5.2
        return bool(await ahas(permission))
    has_perm = getattr(user, "has_perm", None)
    return has_perm is not None and bool(await sync_to_async(has_perm)(permission))


def _unwrap(user: Any) -> Any:
    user._setup()
    return user._wrapped


def with_roles(performer: Performer, user: Any, faults: Faults | None = None) -> Performer:
    """``performer`` with ``role_name`` from ``user``'s Django groups (``roles.py``)."""
    try:
        roles = role_names(user)
    except Exception:  # e.g. the database is down: keep who it was, without roles
        if faults is not None:
            faults.request_path_error()
        return performer
    return replace(performer, role_name=roles) if roles else performer
