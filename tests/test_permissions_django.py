"""Endpoint permissions on a real Django project (tests/djangoproject).

Decided in the middleware's ``process_view``: after ``AuthenticationMiddleware``
set ``request.user``, before the view. Without a ``has_permission`` hook the
answer is Django's own ``request.user.has_perm("app_label.codename")`` (a
permission granted to the user or to one of its groups), or the performer
hook's ``permissions`` when it gives some. The cases mirror
tests/test_permissions.py (ASGI); Django is set up as tests/test_django.py does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.test import AsyncClient, Client, override_settings

from leza_middleware import Leza, Performer
from leza_middleware.django import LezaDjangoMiddleware, get_leza
from leza_middleware.django.middleware import forget_roles

APP = "djangoproject"
PERM = "auth.view_user"  # one of Django's default permissions
WHERE = f"to access this resource of this application {APP}"
ALLOWED = f"User has the permission {PERM} {WHERE}"
LACKS = f"User lacks the permission {PERM} {WHERE}"
RULES = {PERM: ["GET /reports/*", "GET /areports/*"], "Admin Permission": ["/admin-area/*"]}


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    from djangoproject import views

    forget_roles()
    views.ran.clear()


@pytest.fixture
def configure(tmp_path: Path) -> Iterator[Callable[..., Leza]]:
    """settings.LEZA with ``options`` for one test; the Leza the middleware builds from it.

    Clients are made after the call (each loads the middleware anew).
    """
    made: list[Leza] = []
    overrides: list[Any] = []

    def make(**options: Any) -> Leza:
        conf = {
            "storage": f"sqlite:///{tmp_path / 'leza.db'}",
            "geoip_db": False,
            "spill_dir": str(tmp_path / "spill"),
            "flush_interval": 0.05,
            "app_name": APP,
            "permissions": RULES,
            **options,
        }
        override = override_settings(LEZA=conf)
        override.enable()
        overrides.append(override)
        leza = get_leza()
        made.append(leza)
        return leza

    yield make
    for override in reversed(overrides):
        override.disable()
    for leza in made:
        leza.shutdown(timeout=2)


def user(name: str, *, direct: bool = False, group: bool = False) -> Any:
    """A user holding ``PERM`` directly, through a group, or not at all."""
    from django.contrib.auth.models import Group, Permission, User

    account, _ = User.objects.get_or_create(username=name)
    perm = Permission.objects.get(content_type__app_label="auth", codename="view_user")
    if direct:
        account.user_permissions.add(perm)
    if group:
        viewers, _ = Group.objects.get_or_create(name="report viewers")
        viewers.permissions.add(perm)
        account.groups.add(viewers)
    return account


def signed_in(account: Any) -> Client:
    client = Client()
    client.force_login(account)
    return client


def events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access(limit=1000)))  # oldest first


def ran() -> list[str]:
    from djangoproject import views

    return views.ran


def test_has_perm_granted_to_a_user_or_a_group_denied_and_unauthenticated(
    configure: Callable[..., Leza],
) -> None:
    leza = configure()
    permitted, grouped, outsider = (
        user("permitted", direct=True),
        user("grouped", group=True),
        user("outsider"),
    )
    assert signed_in(permitted).get("/reports/1/").status_code == 200
    assert signed_in(grouped).get("/reports/2/").status_code == 200
    denied = signed_in(outsider).get("/reports/3/")
    anonymous = Client().get("/reports/4/")
    assert Client().get("/").status_code == 200
    assert denied.status_code == 403
    assert anonymous.status_code == 401
    assert ran() == ["/reports/1/", "/reports/2/"]  # refused requests never reached the view
    by_user, by_group, lacks, unauth, public = events(leza)
    for ok, who in ((by_user, permitted), (by_group, grouped)):
        assert (ok["action"], ok["status"], ok["reason"]) == ("access", 200, ALLOWED)
        assert ok["performer"]["id"] == str(who.pk)
        assert ok["route"] == "/reports/{n}/"
    assert by_group["performer"]["role_name"] == "report viewers"
    assert (lacks["action"], lacks["status"], lacks["reason"]) == ("denied", 403, LACKS)
    assert lacks["performer"]["id"] == str(outsider.pk)
    assert denied.json() == {"detail": LACKS}
    assert denied.headers["Content-Type"] == "application/json"
    assert denied.headers["X-Request-ID"] == lacks["request_id"]
    assert (unauth["action"], unauth["status"]) == ("denied", 401)
    assert unauth["reason"] == f"Authentication required for the permission {PERM} {WHERE}"
    assert unauth["performer"] is None
    assert anonymous.json() == {"detail": unauth["reason"]}
    assert public["reason"] == "Request completed: 200 OK"  # unprotected: derived from status
    assert leza.stats()["request_path_errors"] == 0


def test_an_error_status_of_an_allowed_view_keeps_the_derived_reason(
    configure: Callable[..., Leza],
) -> None:
    leza = configure(permissions={PERM: ["/forbidden/"]})
    assert signed_in(user("permitted", direct=True)).get("/forbidden/").status_code == 403
    (event,) = events(leza)
    assert "permission" not in event["reason"]  # the view's own PermissionDenied


def test_has_permission_hook_overrides_has_perm(configure: Callable[..., Leza]) -> None:
    asked: list[tuple[str, str]] = []

    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        asked.append((request.path, permission))
        return bool(performer.name == "outsider")

    leza = configure(has_permission=has_permission)
    assert signed_in(user("outsider")).get("/reports/1/").status_code == 200  # no has_perm
    assert signed_in(user("permitted", direct=True)).get("/reports/2/").status_code == 403
    assert asked == [("/reports/1/", PERM), ("/reports/2/", PERM)]
    assert [e["reason"] for e in events(leza)] == [ALLOWED, LACKS]


def test_has_permission_hook_by_dotted_path(configure: Callable[..., Leza]) -> None:
    leza = configure(has_permission="djangoproject.identity.can_view_reports")
    client = signed_in(user("outsider"))
    assert client.get("/reports/1/", headers={"x-allowed": "outsider"}).status_code == 200
    assert client.get("/reports/1/").status_code == 403
    assert [e["action"] for e in events(leza)] == ["access", "denied"]


def test_performer_hook_permissions_are_used_else_has_perm(
    configure: Callable[..., Leza],
) -> None:
    def performer(request: Any) -> dict[str, Any] | None:
        name = request.headers.get("x-user")
        if name == "robot":  # an API client Django does not know: its own permissions
            return {"id": "robot", "name": "Robot", "permissions": [PERM]}
        if name == "intern":
            return {"id": "intern", "permissions": ["something else"]}
        if request.user.is_authenticated:  # no permissions given: Django decides
            return {"id": f"user-{request.user.pk}"}
        return None

    leza = configure(performer=performer)
    assert Client().get("/reports/1/", headers={"x-user": "robot"}).status_code == 200
    # has permissions, not this one: has_perm is not asked, even for a user holding it
    permitted = signed_in(user("permitted", direct=True))
    assert permitted.get("/reports/2/", headers={"x-user": "intern"}).status_code == 403
    assert permitted.get("/reports/3/").status_code == 200
    assert signed_in(user("outsider")).get("/reports/4/").status_code == 403
    assert Client().get("/reports/5/").status_code == 401
    robot, intern, by_perm, lacks, unauth = events(leza)
    assert (robot["reason"], robot["performer"]["id"]) == (ALLOWED, "robot")
    assert "permissions" not in robot["performer"]  # not stored with the performer
    assert (intern["reason"], by_perm["reason"], lacks["reason"]) == (LACKS, ALLOWED, LACKS)
    assert unauth["status"] == 401


def test_any_method_rule_and_a_url_without_a_view(configure: Callable[..., Leza]) -> None:
    leza = configure()
    assert Client().post("/admin-area/x/").status_code == 404  # no view: nothing to decide
    assert Client().head("/reports/1/").status_code == 401  # HEAD needs what GET needs
    assert ran() == []
    missing, head = events(leza)
    assert missing["action"] != "denied"
    assert (head["action"], head["status"]) == ("denied", 401)


# ----------------------------------------------------------------------------- async mode


def test_async_mode_process_view_is_a_coroutine_function() -> None:
    from asgiref.sync import iscoroutinefunction

    async def get_response(request: Any) -> Any:
        return None

    assert iscoroutinefunction(LezaDjangoMiddleware(get_response).process_view)
    assert not iscoroutinefunction(LezaDjangoMiddleware(lambda request: None).process_view)


async def async_signed_in(account: Any) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(account)
    return client


@pytest.mark.anyio
async def test_async_has_perm_denied_and_unauthenticated(configure: Callable[..., Leza]) -> None:
    from asgiref.sync import sync_to_async

    leza = configure()
    permitted, grouped, outsider = await sync_to_async(
        lambda: (user("permitted", direct=True), user("grouped", group=True), user("outsider"))
    )()
    assert (await (await async_signed_in(permitted)).get("/areports/1/")).status_code == 200
    assert (await (await async_signed_in(grouped)).get("/reports/2/")).status_code == 200
    denied = await (await async_signed_in(outsider)).get("/areports/3/")
    anonymous = await AsyncClient().get("/areports/4/")
    assert (denied.status_code, anonymous.status_code) == (403, 401)
    assert ran() == ["/areports/1/", "/reports/2/"]
    by_user, by_group, lacks, unauth = events(leza)
    assert (by_user["reason"], by_group["reason"]) == (ALLOWED, ALLOWED)
    assert (lacks["action"], lacks["reason"], lacks["performer"]["id"]) == (
        "denied",
        LACKS,
        str(outsider.pk),
    )
    assert denied.json() == {"detail": LACKS}
    assert (unauth["status"], unauth["action"]) == (401, "denied")
    assert leza.stats()["request_path_errors"] == 0


@pytest.mark.anyio
async def test_async_hooks_may_use_the_orm(configure: Callable[..., Leza]) -> None:
    """A synchronous has_permission hook runs in a thread; the performer hook reads
    request.user, loaded through await."""
    from asgiref.sync import sync_to_async

    def performer(request: Any) -> dict[str, Any] | None:
        account = request.user
        return {"id": f"user-{account.pk}"} if account.is_authenticated else None

    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        return bool(request.user.has_perm(permission))  # a query: fine in a thread

    leza = configure(performer=performer, has_permission=has_permission)
    permitted, outsider = await sync_to_async(
        lambda: (user("permitted", direct=True), user("outsider"))
    )()
    assert (await (await async_signed_in(permitted)).get("/areports/1/")).status_code == 200
    assert (await (await async_signed_in(outsider)).get("/areports/2/")).status_code == 403
    ok, lacks = events(leza)
    assert (ok["reason"], ok["performer"]["id"]) == (ALLOWED, f"user-{permitted.pk}")
    assert lacks["reason"] == LACKS
    assert leza.stats()["performer_hook_errors"] == 0
