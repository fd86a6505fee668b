from __future__ import annotations

import json

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse

from leza_middleware import current_request_id
from leza_middleware.django import get_leza


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        "Hello from Django. Try /items/42/, /admin-only/, /boom/, then /events/.\n"
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
