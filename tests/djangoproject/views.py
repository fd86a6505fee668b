from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)

from leza_middleware import current_request_id

# What the async view saw, for the test to compare with its own loop and task.
seen: dict[str, Any] = {}


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hi")


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id})


def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.user.get_username()})


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("no")


def boom(request: HttpRequest) -> HttpResponse:
    raise ValueError("kaput")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(f"chunk{i}\n".encode() for i in range(3))


def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def gen() -> Any:
        for i in range(3):
            yield f"achunk{i}\n".encode()

    return StreamingHttpResponse(gen())


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(io.BytesIO(b"x" * 10_000), filename="x.bin")


async def async_view(request: HttpRequest) -> JsonResponse:
    seen["loop"] = asyncio.get_running_loop()
    seen["task"] = asyncio.current_task()
    seen["thread"] = threading.get_ident()
    seen["request_id"] = current_request_id()
    return JsonResponse({"async": True})


def own_request_id(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("mine")
    response["x-request-id"] = "view-chose-this"
    return response


def request_id(request: HttpRequest) -> HttpResponse:
    return HttpResponse(current_request_id() or "")


def thing(request: HttpRequest, **kwargs: Any) -> JsonResponse:
    return JsonResponse({k: str(v) for k, v in kwargs.items()})


def archive(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)
