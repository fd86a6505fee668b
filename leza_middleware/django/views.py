"""The dashboard in a Django project: ``path("leza/", include("leza_middleware.django.urls"))``.

* Who may see it: ``LEZA["dashboard_authorize"]`` — a ``callable(request) ->
  bool`` or its dotted path — else active staff users (``request.user.is_staff``,
  which needs ``AuthenticationMiddleware``). Everyone else gets 403.
* Its actions (the revoke form) pass Django's own CSRF check — run here,
  whether or not ``CsrfViewMiddleware`` is installed, so that a refusal is
  the dashboard's 403 with its security headers — and the dashboard's
  ``Origin`` / ``Referer`` / ``Sec-Fetch-Site`` check (``CSRF_TRUSTED_ORIGINS``
  are trusted there too).
* Inputs are parsed by the same code as the other mounts (``dashboard/inputs.py``),
  from the raw query string and form body.
* Every view is an access event: recorded by ``LezaDjangoMiddleware`` when it
  is in ``MIDDLEWARE``, else by one wrapped around these views.
* Reads go to :func:`~leza_middleware.django.get_leza`'s storage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, SuspiciousOperation
from django.http import HttpResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.views.decorators.csrf import csrf_exempt

from ..context import current_native
from ..dashboard.core import SAFE_METHODS, Dashboard, DashRequest, note_request
from ..dashboard.csrf import CsrfToken, OriginRule, foreign_origin, origin_rules
from ..dashboard.guard import DENIED_REASON, call_authorize
from ..dashboard.inputs import BadInput, Params
from ..dashboard.responses import DashResponse, bad_input, finish, forbidden, internal_error
from ..errors import LezaConfigError
from .conf import HOOKS, as_mapping, get_leza, import_hook, raw_setting

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["dashboard", "is_staff"]

log = logging.getLogger("leza_middleware")

_PATH_ATTR = "_leza_dashboard_path"
_CSRF_FIELD = "csrfmiddlewaretoken"
# The dashboard of the Leza get_leza() returned last (a new settings.LEZA, as
# override_settings makes in tests, gets a new one).
_current_dashboard: Dashboard | None = None
_lock = threading.Lock()
_trusted: dict[tuple[str, ...], tuple[OriginRule, ...]] = {}


def is_staff(request: Any) -> bool:
    """The default ``dashboard_authorize``: a signed-in, active staff user."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def _authorize_hook() -> Callable[[Any], Any]:
    hook = as_mapping(raw_setting()).get("dashboard_authorize")
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


def _to_django(r: DashResponse) -> Any:
    response = HttpResponse(r.body, status=r.status)
    for name, value in r.headers:
        if name.lower() == "set-cookie":  # not used here: Django sets its CSRF cookie
            continue
        response[name] = value
    return response


class _Refused:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _DjangoCsrf(CsrfViewMiddleware):  # type: ignore[misc]  # Django ships no type hints
    """Django's CSRF check, whose refusal the dashboard answers itself (the
    pattern of Django's own ``requires_csrf_token``: ``_reject`` overridden)."""

    def _reject(self, request: Any, reason: str) -> Any:
        return _Refused(reason)


def _no_response(request: Any) -> Any:
    """The ``get_response`` a middleware instance needs; never called here."""
    return HttpResponse()


def _trusted_origins() -> tuple[OriginRule, ...]:
    """``CSRF_TRUSTED_ORIGINS`` as the dashboard's origin rules (ones it cannot
    read are left out: Django's system checks report them)."""
    given = tuple(str(v) for v in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()) or ())
    found = _trusted.get(given)
    if found is None:
        rules: list[OriginRule] = []
        for value in given:
            try:
                rules.extend(origin_rules(value, "CSRF_TRUSTED_ORIGINS"))
            except LezaConfigError:
                continue
        found = _trusted[given] = tuple(rules)
    return found


def _raw_query(request: Any) -> bytes:
    text: str = request.META.get("QUERY_STRING", "")
    if type(request).__name__ == "ASGIRequest":  # decoded from UTF-8 by Django
        return text.encode("utf-8", "surrogatepass")
    try:
        return text.encode("latin-1")  # WSGI: PEP 3333's latin-1 string of the bytes
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _form(request: Any) -> Params:
    if request.method in SAFE_METHODS:
        return Params()
    if request.content_type == "application/x-www-form-urlencoded":
        return Params.parse(request.body)  # the same strict parsing as the other mounts
    return Params((k, v) for k, values in request.POST.lists() for v in values)


def _host(request: Any) -> str | None:
    try:
        return str(request.get_host())
    except SuspiciousOperation:  # not in ALLOWED_HOSTS: no own origin to match
        return None


def _serve(request: Any) -> Any:
    """Every route, with the 500 of an unexpected error carrying the security headers."""
    api = getattr(request, _PATH_ATTR, "").startswith("api/")
    try:
        return _answer(request, api)
    except DisallowedHost:
        r = bad_input(BadInput("host", "host: not one of ALLOWED_HOSTS"), api)
        return _to_django(finish(r, None, "GET"))
    except (SuspiciousOperation, MultiPartParserError, UnreadablePostError):
        # A body Django cannot read (what Django itself answers with 400).
        r = bad_input(BadInput("body", "body: not a form this view can read"), api)
        return _to_django(finish(r, None, "GET"))
    except Exception:
        log.exception("leza dashboard: unexpected error answering %s", request.method)
        return _to_django(internal_error(api))


def _answer(request: Any, api: bool) -> Any:
    subpath: str = getattr(request, _PATH_ATTR, "")
    if request.method in ("GET", "HEAD"):
        health = _dashboard_of(get_leza()).health("/" + subpath)  # no authorize
        if health is not None:
            return _to_django(health)
    if call_authorize(_authorize_hook(), request) is None:
        note_request("denied", DENIED_REASON)
        return _to_django(forbidden(api))
    # One per request: its cached settings (CSRF_TRUSTED_ORIGINS) follow override_settings.
    csrf = _DjangoCsrf(_no_response)
    csrf.process_request(request)
    unsafe = request.method not in SAFE_METHODS
    problem = None
    foreign = None
    if unsafe:
        verdict = csrf.process_view(request, _answer, (), {})
        if isinstance(verdict, _Refused):
            problem = f"Django's CSRF check failed: {verdict.reason}"
        headers = {
            name: request.META[key]
            for key, name in (
                ("HTTP_ORIGIN", "origin"),
                ("HTTP_REFERER", "referer"),
                ("HTTP_SEC_FETCH_SITE", "sec-fetch-site"),
            )
            if key in request.META
        }
        foreign = foreign_origin(headers, _host(request), request.scheme, _trusted_origins())
    path = request.path
    base = path[: len(path) - len(subpath)] if subpath and path.endswith(subpath) else path
    query = _raw_query(request)
    dreq = DashRequest(
        method=request.method,
        path="/" + subpath,
        base=base.rstrip("/"),
        query=Params.parse(query),
        csrf=CsrfToken(_CSRF_FIELD, get_token(request), problem),
        form=_form(request),
        foreign=foreign,
        raw_query=query,
    )
    response = _to_django(_dashboard_of(get_leza()).handle(dreq))
    csrf.process_response(request, response)  # Django's CSRF cookie, when new
    return response


_recorded: Any = None


def _recording() -> Any:
    """``_serve`` inside a LezaDjangoMiddleware of its own (built once)."""
    global _recorded
    if _recorded is None:
        from .middleware import LezaDjangoMiddleware

        _recorded = LezaDjangoMiddleware(_serve)
    return _recorded


@csrf_exempt  # type: ignore[untyped-decorator]  # checked inside: a refusal is our own 403
def dashboard(request: Any, subpath: str = "") -> Any:
    """Every page and API route of the dashboard (see ``dashboard/core.py``)."""
    request.__dict__[_PATH_ATTR] = subpath
    if current_native() is not None:  # LezaDjangoMiddleware records this request
        return _serve(request)
    return _recording()(request)
