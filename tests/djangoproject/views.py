from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from django.contrib.auth import aauthenticate, alogin, alogout, authenticate, login, logout
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
# Paths of the views behind endpoint permissions that ran (tests/test_permissions_django.py).
ran: list[str] = []


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


def bad_request_id(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("mine")
    response["x-request-id"] = "not an id <b>"
    return response


def request_id(request: HttpRequest) -> HttpResponse:
    return HttpResponse(current_request_id() or "")


def thing(request: HttpRequest, **kwargs: Any) -> JsonResponse:
    return JsonResponse({k: str(v) for k, v in kwargs.items()})


def archive(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


# -- sign-in (tests/test_sessions_django.py) -----------------------------------------


def login_view(request: HttpRequest) -> HttpResponse:
    """A login form's POST: ``authenticate()`` then ``login()``, as Django apps do."""
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponse("wrong username or password", status=200)  # the form again
    login(request, user)
    return HttpResponse(f"hello {user.get_username()}")


def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("bye")


def login_without_request(request: HttpRequest) -> HttpResponse:
    """``authenticate()`` without ``request=``: the signal's ``request`` is None."""
    authenticate(username=request.POST.get("username"), password="not-the-password")
    return HttpResponse("no")


def signout_others(request: HttpRequest) -> JsonResponse:
    """ "Sign out everywhere else": every session of this user but the current one."""
    from leza_middleware.django import get_leza

    revoked = get_leza().sessions.revoke_all(str(request.user.pk), except_current=True)
    return JsonResponse({"revoked": revoked})


def signout(request: HttpRequest) -> HttpResponse:
    """A logout the app does its own way (no ``django.contrib.auth.logout``)."""
    return HttpResponse("signed out")


async def async_login(request: HttpRequest) -> HttpResponse:
    user = await aauthenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponse("wrong username or password", status=200)
    await alogin(request, user)
    return HttpResponse(f"hello {user.get_username()}")


async def async_logout(request: HttpRequest) -> HttpResponse:
    await alogout(request)
    return HttpResponse("bye")


async def async_me(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({"user": user.get_username()})


def revoked_page(request: HttpRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    """``LEZA["revoked_response"]``: what a revoked session gets instead of the view."""
    assert isinstance(request, HttpRequest)
    return 401, [("content-type", "text/plain"), ("x-why", "revoked")], b"please sign in again"


# -- endpoint permissions (tests/test_permissions_django.py) -------------------------


def report(request: HttpRequest, n: int) -> HttpResponse:
    ran.append(request.path)
    return HttpResponse(f"report {n}")


async def async_report(request: HttpRequest, n: int) -> HttpResponse:
    ran.append(request.path)
    return HttpResponse(f"report {n}")


# -- model audit (tests/test_audit_django.py) ----------------------------------------


def _codenames(request: HttpRequest, key: str) -> list[str]:
    return request.POST.getlist(key)


def role_permissions(request: HttpRequest, pk: int) -> JsonResponse:
    """A role's permissions, changed from the role's side: ``group.permissions``."""
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.get(pk=pk)
    removed = Permission.objects.filter(codename__in=_codenames(request, "remove"))
    added = Permission.objects.filter(codename__in=_codenames(request, "add"))
    if removed:
        group.permissions.remove(*removed)
    if added:
        group.permissions.add(*added)
    if request.POST.get("clear"):
        group.permissions.clear()
    return JsonResponse(
        {"permissions": sorted(group.permissions.values_list("codename", flat=True))}
    )


async def arole_permissions(request: HttpRequest, pk: int) -> JsonResponse:
    """The same, in an async view (the ORM's ``aadd``)."""
    from django.contrib.auth.models import Group, Permission

    group = await Group.objects.aget(pk=pk)
    added = [p async for p in Permission.objects.filter(codename__in=_codenames(request, "add"))]
    await group.permissions.aadd(*added)
    return JsonResponse({"added": len(added)})


def role_rename(request: HttpRequest, pk: int) -> JsonResponse:
    from django.contrib.auth.models import Group

    group = Group.objects.get(pk=pk)
    group.name = request.POST["name"]
    group.save()
    return JsonResponse({"name": group.name})


def role_delete(request: HttpRequest, pk: int) -> JsonResponse:
    from django.contrib.auth.models import Group

    Group.objects.get(pk=pk).delete()
    return JsonResponse({"deleted": pk})


def permission_grant(request: HttpRequest, codename: str) -> JsonResponse:
    """A role's permissions, changed from the permission's side: ``perm.group_set``."""
    from django.contrib.auth.models import Group, Permission

    permission = Permission.objects.get(codename=codename)
    permission.group_set.add(Group.objects.get(pk=request.POST["group"]))
    return JsonResponse({"ok": True})


def membership(request: HttpRequest) -> JsonResponse:
    """``user.groups.add(g)`` or ``g.user_set.add(u)`` (``side``), or ``remove``."""
    from django.contrib.auth.models import Group, User

    user = User.objects.get(pk=request.POST["user"])
    group = Group.objects.get(pk=request.POST["group"])
    verb = request.POST.get("verb", "add")
    if request.POST["side"] == "user":
        getattr(user.groups, verb)(group)
    else:
        getattr(group.user_set, verb)(user)
    return JsonResponse({"ok": True})


def deactivate(request: HttpRequest) -> JsonResponse:
    """A bulk ``QuerySet.update()``: no signal, one ``bulk_update`` record."""
    from django.contrib.auth.models import User

    rows = User.objects.filter(username__startswith=request.POST["prefix"]).update(is_active=False)
    return JsonResponse({"rows": rows})


def sign_up(request: HttpRequest) -> JsonResponse:
    """A user created with a password, which then changes it."""
    from django.contrib.auth.models import User

    user = User.objects.create_user(request.POST["username"], password=request.POST["password"])
    user.set_password(request.POST["new_password"])
    user.save()
    return JsonResponse({"id": user.pk})
