"""What the request core's decisions become in Django's response objects.

Cookies go into ``response.cookies`` and refusals are ``HttpResponse`` objects,
where Django's handlers, the test client and other middleware look for them,
so they pass back through the middleware stack like any response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

if TYPE_CHECKING:
    from ..core import Request, RequestCore
    from ..core.hooks import Answer

__all__ = ["adelete", "delete_session_cookie", "prefix", "response", "session_store"]


def response(answer: Answer) -> Any:
    """A refusal as Django's response."""
    from django.http import HttpResponse

    status, headers, body = answer
    out = HttpResponse(body, status=status)
    for name, value in headers:
        out[name] = value
    return out


def set_machine_cookie(core: RequestCore, req: Request, out: Any) -> None:
    """Give a browser without a (valid) machine cookie a new one."""
    cookies = core.cookies
    name = cookies.machine_cookie or ""
    if name in out.cookies:  # the app set one itself: leave it alone
        return
    req.mid, value = cookies.new_machine_value()
    # Set on the Morsel directly: ~3 us less than set_cookie() (it formats an
    # Expires date too), for clients that never keep cookies.
    out.cookies[name] = value
    morsel = out.cookies[name]
    morsel["max-age"] = cookies.machine_max_age
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if req.scheme == "https":
        morsel["secure"] = True


def delete_session_cookie(out: Any, name: str) -> None:
    """Delete Django's session cookie, with the attributes Django sets it with."""
    from django.conf import settings

    out.delete_cookie(
        name,
        path=settings.SESSION_COOKIE_PATH,
        domain=settings.SESSION_COOKIE_DOMAIN,
        samesite=settings.SESSION_COOKIE_SAMESITE,
    )


def session_store(request: Any, name: str) -> Any:
    """Django's session store of the request's session (to delete it server-side)."""
    from importlib import import_module

    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(request.COOKIES.get(name))


async def adelete(store: Any) -> None:
    adelete = getattr(store, "adelete", None)
    if adelete is not None:  # Django >= 5.0
        await adelete()
    else:
        await sync_to_async(store.delete)()


def prefix(request: Any) -> str:
    """The ``SCRIPT_NAME`` the project is mounted at: ``request.path`` less ``path_info``."""
    path, inner = request.path, request.path_info
    return path[: len(path) - len(inner)] if path != inner and path.endswith(inner) else ""
