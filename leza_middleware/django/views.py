"""The dashboard in a Django project: ``path("leza/", include("leza_middleware.django.urls"))``.

* Who may see it: ``LEZA["dashboard_authorize"]`` — a ``callable(request) ->
  bool`` or its dotted path — else active staff users (``request.user.is_staff``,
  which needs ``AuthenticationMiddleware``). Everyone else gets 403.
* The revoke form is protected by Django's own CSRF check (``csrf_protect``,
  whether or not ``CsrfViewMiddleware`` is installed).
* Every view is an access event: recorded by ``LezaDjangoMiddleware`` when it
  is in ``MIDDLEWARE``, else by one wrapped around these views.
* Reads go to :func:`~leza_middleware.django.get_leza`'s storage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import csrf_protect

from ..context import current_native
from ..dashboard.core import Dashboard, DashRequest, forbidden, note_request
from ..dashboard.csrf import CsrfToken
from ..dashboard.guard import DENIED_REASON, call_authorize
from ..errors import LezaConfigError
from .conf import HOOKS, _mapping, _raw_setting, get_leza, import_hook

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["dashboard", "is_staff"]

_PATH_ATTR = "_leza_dashboard_path"
# The dashboard of the Leza get_leza() returned last (a new settings.LEZA, as
# override_settings makes in tests, gets a new one).
_current_dashboard: Dashboard | None = None
_lock = threading.Lock()


def is_staff(request: Any) -> bool:
    """The default ``dashboard_authorize``: a signed-in, active staff user."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def _authorize_hook() -> Callable[[Any], Any]:
    hook = _mapping(_raw_setting()).get("dashboard_authorize")
    if hook is None:
        return is_staff
    if isinstance(hook, str):
        return import_hook("dashboard_authorize", hook)
    if not callable(hook):
        raise LezaConfigError(
            f"dashboard_authorize must be a {HOOKS['dashboard_authorize']}, got "
            f"{type(hook).__name__}"
        )
    return hook  # type: ignore[no-any-return]


def _dashboard_of(leza: Leza) -> Dashboard:
    global _current_dashboard
    with _lock:
        found = _current_dashboard
        if found is None or found.leza is not leza:
            found = _current_dashboard = Dashboard(leza)
        return found


def _to_django(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
    response = HttpResponse(body, status=status)
    for name, value in headers:
        if name.lower() == "set-cookie":  # not used here: Django sets its CSRF cookie
            continue
        response[name] = value
    return response


def _serve(request: Any) -> Any:
    """The view behind ``csrf_protect``: a POST that reaches it passed Django's check."""
    subpath: str = getattr(request, _PATH_ATTR, "")
    api = subpath.startswith("api/")
    if request.method in ("GET", "HEAD"):
        health = _dashboard_of(get_leza()).health("/" + subpath)  # no authorize
        if health is not None:
            return _to_django(health.status, health.headers, health.body)
    if not call_authorize(_authorize_hook(), request):
        note_request("denied", DENIED_REASON)
        r = forbidden(api)
        return _to_django(r.status, r.headers, r.body)
    path = request.path
    base = path[: len(path) - len(subpath)] if subpath and path.endswith(subpath) else path
    post = request.method == "POST"
    dreq = DashRequest(
        method=request.method,
        path="/" + subpath,
        base=base.rstrip("/"),
        query=request.GET.dict(),
        csrf=CsrfToken("csrfmiddlewaretoken", get_token(request), valid=post),
        form=request.POST.dict() if post else {},
    )
    r = _dashboard_of(get_leza()).handle(dreq)
    return _to_django(r.status, r.headers, r.body)


_protected = csrf_protect(_serve)
_recorded: Any = None


def _recording() -> Any:
    """``_protected`` inside a LezaDjangoMiddleware of its own (built once)."""
    global _recorded
    if _recorded is None:
        from .middleware import LezaDjangoMiddleware

        _recorded = LezaDjangoMiddleware(_protected)
    return _recorded


def dashboard(request: Any, subpath: str = "") -> Any:
    """Every page and API route of the dashboard (see ``dashboard/core.py``)."""
    request.__dict__[_PATH_ATTR] = subpath
    if current_native() is not None:  # LezaDjangoMiddleware records this request
        return _protected(request)
    return _recording()(request)
