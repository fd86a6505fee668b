from __future__ import annotations

import json

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from leza_middleware import current_request_id
from leza_middleware.django import get_leza


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        "Hello from Django. Try /items/42/, /admin-only/, /boom/, then /events/;\n"
        "/login/?user=alice, /sessions/, /logout/ for sessions.\n"
        f"This request's id: {current_request_id()}\n",
        content_type="text/plain",
    )


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id})


def admin_only(request: HttpRequest) -> HttpResponse:
    if request.headers.get("X-Demo-Role") != "admin":
        raise PermissionDenied  # recorded as action "denied"
    return HttpResponse("welcome, admin\n", content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("something broke")  # recorded as a 500 with the error class


def events(request: HttpRequest) -> HttpResponse:
    """The newest access events, as leza.query.access() returns them."""
    leza = get_leza()
    leza.flush(2)  # a demo: show the requests you just made (the recorder writes ~every second)
    rows = leza.query.access(limit=int(request.GET.get("limit", 10)))
    return HttpResponse(
        json.dumps(rows, indent=2, default=str) + "\n", content_type="application/json"
    )


def login(request: HttpRequest) -> HttpResponse:
    """Sign in as ``?user=NAME`` (a demo: no password) and start a session.

    With ``django.contrib.auth``, ``login()`` records this by itself (the
    ``user_logged_in`` signal); code that signs users in its own way says so.
    """
    name = request.GET.get("user", "")
    if not name.isalnum():
        get_leza().sessions.login_failed("Login failed", username=name[:40])
        return HttpResponse("?user=NAME (letters and digits)\n", status=400)
    request.session.cycle_key()  # a new session id at sign-in
    request.session["demo_user"] = name
    get_leza().sessions.login()  # action "login"; the performer comes from the hook
    return HttpResponse(f"signed in as {name}\n", content_type="text/plain")


def logout(request: HttpRequest) -> HttpResponse:
    """Listed in LEZA["logout_routes"]: recorded as "logout", and the session ends."""
    request.session.flush()
    return HttpResponse("signed out\n", content_type="text/plain")


def sessions(request: HttpRequest) -> HttpResponse:
    """The active sessions, as leza.sessions.active() returns them."""
    leza = get_leza()
    leza.flush(2)
    return HttpResponse(
        json.dumps(leza.sessions.active(), indent=2) + "\n", content_type="application/json"
    )


@csrf_exempt
@require_POST
def revoke(request: HttpRequest, session_id: str) -> JsonResponse:
    """End a session now: its next request gets 401, in every worker (a demo: no auth)."""
    return JsonResponse({"revoked": get_leza().sessions.revoke(session_id)})
