"""The Django integration on a real Django project (tests/djangoproject).

Django is configured once per test session with ``settings.configure()`` (guarded
by ``settings.configured``), so nothing leaks into other test files through
``DJANGO_SETTINGS_MODULE``; the ASGI test runs the project under uvicorn in a
subprocess with its own settings module.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from conftest import balanced, wait_for
from django.conf import settings
from django.http import HttpRequest
from django.test import AsyncClient, Client, RequestFactory, override_settings

from leza_middleware import Leza, Performer
from leza_middleware.django import LezaDjangoMiddleware, get_leza
from leza_middleware.django.middleware import forget_roles

TESTS = Path(__file__).resolve().parent
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def _fresh_roles() -> None:
    forget_roles()


@pytest.fixture
def leza_conf(tmp_path: Path) -> dict[str, Any]:
    return {
        "storage": f"sqlite:///{tmp_path / 'leza.db'}",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "app_name": "djangoproject",
    }


@pytest.fixture
def leza(leza_conf: dict[str, Any]) -> Iterator[Leza]:
    """settings.LEZA for one test, and the Leza the middleware builds from it."""
    with override_settings(LEZA=leza_conf):
        instance = get_leza()
        yield instance
    instance.shutdown(timeout=2)


def hooked(leza_conf: dict[str, Any], performer: str) -> Iterator[Leza]:
    with override_settings(LEZA={**leza_conf, "performer": performer}):
        instance = get_leza()
        yield instance
    instance.shutdown(timeout=2)


def test_gc_freeze_is_read_from_settings_leza(leza_conf: dict[str, Any]) -> None:
    """Like every setting, ``gc_freeze`` comes from ``settings.LEZA`` and a bad value
    fails when the Leza is built, naming it."""
    from leza_middleware import LezaConfigError

    with override_settings(LEZA={**leza_conf, "gc_freeze": False}):
        instance = get_leza()
    try:
        assert instance.settings.gc_freeze is False
    finally:
        instance.shutdown(timeout=2)
    with (
        override_settings(LEZA={**leza_conf, "gc_freeze": "sometimes"}),
        pytest.raises(LezaConfigError, match="gc_freeze must be true or false"),
    ):
        get_leza()


@pytest.fixture
def user() -> Any:
    from django.contrib.auth.models import Group, User

    alice, created = User.objects.get_or_create(
        username="alice",
        defaults={"first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com"},
    )
    if created:
        alice.groups.add(
            Group.objects.get_or_create(name="editors")[0],
            Group.objects.get_or_create(name="admins")[0],
        )
    return alice


def events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access()))  # oldest first


# --------------------------------------------------------------------------- sync


def test_one_access_event_per_request_with_route_and_echoed_request_id(leza: Leza) -> None:
    r = Client().get(
        "/items/42/?color=red&token=abc123",
        headers={"user-agent": CHROME, "x-forwarded-for": "1.2.3.4", "host": "shop.example"},
    )
    assert r.status_code == 200
    [event] = events(leza)
    assert event["endpoint"] == "/items/42/?color=red&token=[Filtered]"
    assert event["endpoint_type"] == "GET"
    assert event["route"] == "/items/{item_id}/"
    assert event["status"] == 200
    assert event["action"] == "access"
    assert event["outcome"] == "success"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    assert event["request_id"] == r.headers["X-Request-ID"]
    # no trusted proxy: the forwarded header is not believed
    assert event["ip"] == "127.0.0.1"
    assert event["peer_ip"] == "127.0.0.1"
    assert event["host"] == "shop.example"  # the Host header, as the ASGI adapter stores it
    assert event["browser"]["name"] == "Chrome"
    assert event["app"] == "djangoproject"
    assert event["performer"] is None
    assert event["duration_ms"] >= 0
    assert balanced(leza.stats())
    assert leza.stats()["request_path_errors"] == 0


def test_trusted_proxy_and_scheme(leza_conf: dict[str, Any]) -> None:
    with override_settings(LEZA={**leza_conf, "trusted_proxies": ["127.0.0.1"]}):
        leza = get_leza()
        Client().get("/", headers={"x-forwarded-for": "81.2.69.160"}, secure=True)
    try:
        [event] = events(leza)
        assert event["ip"] == "81.2.69.160"
        assert event["proxy_chain"] == []
        assert event["peer_ip"] == "127.0.0.1"
        assert event["route"] == "/"
    finally:
        leza.shutdown(2)


def test_statuses_denied_not_found_and_server_error(leza: Leza) -> None:
    client = Client(raise_request_exception=False)
    assert client.get("/forbidden/").status_code == 403
    assert client.get("/nope/").status_code == 404
    assert client.get("/boom/").status_code == 500
    by_path = {e["endpoint"]: e for e in events(leza)}
    assert by_path["/forbidden/"]["action"] == "denied"
    assert by_path["/forbidden/"]["outcome"] == "denied"
    assert by_path["/forbidden/"]["reason"] == "Access denied: 403 Forbidden"
    assert by_path["/forbidden/"]["route"] == "/forbidden/"
    assert by_path["/nope/"]["outcome"] == "failure"
    assert by_path["/nope/"]["route"] is None
    boom = by_path["/boom/"]
    assert boom["status"] == 500
    assert boom["outcome"] == "error"
    assert boom["reason"] == "Server error: 500 Internal Server Error (ValueError)"


def test_the_test_client_still_sees_the_view_exception(leza: Leza) -> None:
    with pytest.raises(ValueError, match="kaput"):
        Client().get("/boom/")
    [event] = events(leza)
    assert event["status"] == 500
    assert "ValueError" in event["reason"]


class Stop(BaseException):
    """What Django does not convert into a response (like KeyboardInterrupt)."""


def test_anything_raised_through_the_middleware_is_reraised_unchanged(leza: Leza) -> None:
    raised = Stop("halt")

    def get_response(request: Any) -> Any:
        raise raised

    middleware = LezaDjangoMiddleware(get_response)
    with pytest.raises(Stop) as info:
        middleware(RequestFactory().get("/x"))
    assert info.value is raised
    [event] = events(leza)
    assert event["status"] == 500
    assert event["reason"] == "Server error: 500 Internal Server Error (Stop)"


@pytest.mark.anyio
async def test_async_mode_reraises_cancellation(leza: Leza) -> None:
    async def get_response(request: Any) -> Any:
        raise asyncio.CancelledError

    middleware = LezaDjangoMiddleware(get_response)
    from asgiref.sync import iscoroutinefunction

    assert iscoroutinefunction(middleware)
    with pytest.raises(asyncio.CancelledError):
        await middleware(RequestFactory().get("/x"))
    [event] = events(leza)
    assert event["status"] == 500
    assert "CancelledError" in event["reason"]


def test_head_request(leza: Leza) -> None:
    r = Client().head("/items/7/")
    assert r.status_code == 200
    assert r.content == b""
    assert "X-Request-ID" in r.headers
    [event] = events(leza)
    assert event["endpoint_type"] == "HEAD"
    assert event["route"] == "/items/{item_id}/"


def test_request_id_reused_from_header_or_traceparent_and_echoed(leza: Leza) -> None:
    client = Client()
    r1 = client.get("/request-id/", headers={"x-request-id": "abc-123_XYZ.9"})
    assert r1.headers["X-Request-ID"] == "abc-123_XYZ.9"
    assert r1.content == b"abc-123_XYZ.9"  # current_request_id() inside the view
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r2 = client.get("/", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert r2.headers["X-Request-ID"] == trace
    r3 = client.get("/", headers={"x-request-id": "bad id <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r3.headers["X-Request-ID"])
    r4 = client.get("/own-request-id/")
    assert r4.headers["X-Request-ID"] == "view-chose-this"
    assert [e["request_id"] for e in events(leza)] == [
        "abc-123_XYZ.9",
        trace,
        r3.headers["X-Request-ID"],
        "view-chose-this",
    ]


def test_route_templates_include_prefixes_and_regex_routes(leza: Leza) -> None:
    client = Client()
    client.get("/api/v1/things/pen/")
    client.get("/api/v1/deep/12345678-1234-5678-1234-567812345678/parts/3")
    client.get("/archive/2024/")
    assert [e["route"] for e in events(leza)] == [
        "/api/v1/things/{name}/",
        "/api/v1/deep/{key}/parts/{n}",
        "^archive/(?P<year>[0-9]{4})/$",  # re_path: kept as written
    ]


def test_streaming_response_recorded_when_consumed(leza: Leza) -> None:
    r = Client().get("/stream/")
    assert r.streaming
    assert leza.flush(5)
    assert leza.query.access() == []  # not before the body went out
    assert b"".join(r.streaming_content) == b"chunk0\nchunk1\nchunk2\n"
    [event] = events(leza)
    assert event["status"] == 200
    assert event["request_id"] == r.headers["X-Request-ID"]
    assert event["route"] == "/stream/"


def test_file_response_recorded_when_consumed(leza: Leza) -> None:
    r = Client().get("/file/")
    assert len(b"".join(r.streaming_content)) == 10_000
    [event] = events(leza)
    assert event["status"] == 200
    assert event["route"] == "/file/"


def test_file_response_keeps_its_file_for_sendfile_and_records_on_close(leza: Leza) -> None:
    from django.http import FileResponse

    f = io.BytesIO(b"data")
    middleware = LezaDjangoMiddleware(lambda request: FileResponse(f))
    response = middleware(RequestFactory().get("/download"))
    # streaming_content is not replaced: WSGI servers can still use wsgi.file_wrapper
    assert response.file_to_stream is f
    assert response.headers["X-Request-ID"]
    assert leza.flush(5)
    assert leza.query.access() == []
    response.close()  # what a WSGI server does after sending (or on disconnect)
    response.close()  # twice: still one event
    [event] = events(leza)
    assert event["endpoint"] == "/download"
    assert event["request_id"] == response.headers["X-Request-ID"]


# --------------------------------------------------------------------------- performer


def test_logged_in_performer_with_groups_as_role_name(leza: Leza, user: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = Client()
    with CaptureQueriesContext(connection) as anonymous:
        client.get("/")
    assert len(anonymous) == 0  # anonymous: nothing queried for the performer
    client.force_login(user)
    assert client.get("/me/").json() == {"user": "alice"}
    with CaptureQueriesContext(connection) as second:
        client.get("/")  # the view never touches request.user
    events_ = events(leza)
    assert events_[0]["performer"] is None
    for event in events_[1:]:
        performer = event["performer"]
        assert performer["id"] == str(user.pk)
        assert performer["name"] == "Alice Liddell"
        assert performer["email"] == "alice@example.com"
        assert performer["role_name"] == "admins,editors"
    # session + user for the untouched request.user; the groups came from the cache
    assert not any("auth_group" in q["sql"] for q in second.captured_queries)


def test_group_changes_show_up_in_role_name(leza: Leza, user: Any) -> None:
    from django.contrib.auth.models import Group

    client = Client()
    client.force_login(user)
    client.get("/me/")
    auditors = Group.objects.create(name="auditors")
    try:
        user.groups.add(auditors)
        client.get("/me/")
    finally:
        auditors.delete()
    client.get("/me/")
    roles = [e["performer"]["role_name"] for e in events(leza)]
    assert roles == ["admins,editors", "admins,auditors,editors", "admins,editors"]


@pytest.fixture
def header_hook(leza_conf: dict[str, Any]) -> Iterator[Leza]:
    yield from hooked(leza_conf, "djangoproject.identity.from_header")


def test_performer_hook_by_dotted_path_receives_the_http_request(
    header_hook: Leza, user: Any
) -> None:
    client = Client()
    client.force_login(user)  # the hook decides, not the logged-in user
    client.get("/", headers={"x-demo-user": "zoe"})
    client.get("/")
    first, second = events(header_hook)
    assert first["performer"]["id"] == "u-zoe"
    assert first["performer"]["role_name"] == "demo"
    assert second["performer"] is None


def test_performer_hook_as_a_callable(leza_conf: dict[str, Any]) -> None:
    seen: list[Any] = []

    def who(request: Any) -> Performer:
        seen.append(request)
        return Performer(id="p-1", name="Pat", organization_id="org-9")

    with override_settings(LEZA={**leza_conf, "performer": who}):
        leza = get_leza()
        Client().get("/items/1/")
    try:
        [event] = events(leza)
        assert event["performer"]["id"] == "p-1"
        assert event["performer"]["organization_id"] == "org-9"
        [request] = seen
        assert isinstance(request, HttpRequest)
        assert request.resolver_match.route == "items/<int:item_id>/"  # after the view
    finally:
        leza.shutdown(2)


def test_one_leza_per_settings_value_built_once_across_threads(
    leza_conf: dict[str, Any],
) -> None:
    with override_settings(LEZA=leza_conf):
        barrier = threading.Barrier(8)
        got: list[Leza] = []

        def build() -> None:
            barrier.wait()
            got.append(get_leza())

        threads = [threading.Thread(target=build) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(x) for x in got}) == 1
        assert get_leza() is got[0]
    with override_settings(LEZA={**leza_conf, "app_name": "other"}):
        other = get_leza()
    assert other is not got[0]
    assert other.settings.app_name == "other"
    other.shutdown(2)
    got[0].shutdown(2)


def test_invalid_settings_at_request_time_serve_unrecorded(
    leza_conf: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(LEZA={**leza_conf, "trusted_proxies": ["*"]}):
        client = Client()
        with caplog.at_level(logging.ERROR, logger="leza_middleware"):
            assert client.get("/").status_code == 200
            assert client.get("/").status_code == 200
    [record] = [r for r in caplog.records if "NOT being recorded" in r.getMessage()]
    assert "trusted_proxies" in record.getMessage()


# --------------------------------------------------------------------------- async


@pytest.mark.anyio
async def test_async_view_runs_on_the_event_loop_and_is_recorded(leza: Leza) -> None:
    from djangoproject import views

    views.seen.clear()
    r = await AsyncClient().get("/async/", headers={"x-request-id": "async-1"})
    assert r.status_code == 200
    # no thread hop and no new task: Django called the view directly in our task
    assert views.seen["loop"] is asyncio.get_running_loop()
    assert views.seen["task"] is asyncio.current_task()
    assert views.seen["thread"] == threading.get_ident()
    assert views.seen["request_id"] == "async-1"
    assert r.headers["X-Request-ID"] == "async-1"
    [event] = events(leza)
    assert event["route"] == "/async/"
    assert event["request_id"] == "async-1"


@pytest.mark.anyio
async def test_async_performer_and_roles_without_sync_queries(leza: Leza, user: Any) -> None:
    client = AsyncClient()
    await client.aforce_login(user)
    await client.get("/async/")  # the view never touches request.user
    await client.get("/async/")  # roles from the cache
    first, second = events(leza)
    for event in (first, second):
        assert event["performer"]["id"] == str(user.pk)
        assert event["performer"]["role_name"] == "admins,editors"
    assert leza.stats()["request_path_errors"] == 0


@pytest.fixture
def user_hook(leza_conf: dict[str, Any]) -> Iterator[Leza]:
    yield from hooked(leza_conf, "djangoproject.identity.from_user")


@pytest.mark.anyio
async def test_async_performer_hook_may_read_request_user(user_hook: Leza, user: Any) -> None:
    client = AsyncClient()
    await client.aforce_login(user)
    await client.get("/async/")
    [event] = events(user_hook)
    assert event["performer"]["id"] == f"user-{user.pk}"
    assert event["performer"]["role_name"] == "hooked"
    assert user_hook.stats()["performer_hook_errors"] == 0


@pytest.mark.anyio
async def test_async_streaming_response_recorded_when_consumed(leza: Leza) -> None:
    r = await AsyncClient().get("/astream/")
    assert leza.flush(5)
    assert leza.query.access() == []
    body = b"".join([chunk async for chunk in r.streaming_content])
    assert body == b"achunk0\nachunk1\nachunk2\n"
    assert wait_for(lambda: leza.flush(1) and len(leza.query.access()) == 1)
    [event] = events(leza)
    assert event["route"] == "/astream/"


@pytest.mark.anyio
async def test_lifespan_wrapper_flushes_at_shutdown_and_passes_http_through(
    leza_conf: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from leza_middleware.django import asgi

    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    wrapped = asgi.LezaLifespan(app)
    await wrapped({"type": "http"}, None, None)
    assert calls == ["http"]

    monkey = pytest.MonkeyPatch()
    monkey.setattr(asgi, "lifespan_seen", False)
    monkey.setattr(asgi, "_lifespan_warned", False)
    try:
        with override_settings(LEZA={**leza_conf, "flush_interval": 60}):
            leza = get_leza()
            with caplog.at_level(logging.WARNING, logger="leza_middleware"):
                await AsyncClient().get("/async/")
            assert "ran no lifespan" in caplog.text
            assert leza.stats()["pending"] == 1

            inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return inbox.pop(0)

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await wrapped({"type": "lifespan"}, receive, send)
            assert [m["type"] for m in sent] == [
                "lifespan.startup.complete",
                "lifespan.shutdown.complete",
            ]
            assert asgi.lifespan_seen
            stats = leza.stats()
            assert stats["written"] == 1
            assert stats["pending"] == 0
    finally:
        monkey.undo()
        leza.shutdown(2)


# --------------------------------------------------------------------------- checks


def leza_messages(**overrides: Any) -> list[tuple[str, str]]:
    from django.core.checks import run_checks

    with override_settings(**overrides):
        found = run_checks()
    return [(m.id, m.msg) for m in found if str(m.id).startswith("leza.")]


def test_system_checks_pass_on_good_settings(leza_conf: dict[str, Any], city_db: Path) -> None:
    assert leza_messages(LEZA={**leza_conf, "geoip_db": str(city_db)}) == []
    assert leza_messages() == []  # the project's own settings.LEZA


def test_system_checks_report_each_bad_setting_with_its_id(tmp_path: Path) -> None:
    found = leza_messages(
        LEZA={
            "storage": "nope",
            "geoip_db": str(tmp_path / "missing.mmdb"),
            "trusted_proxies": ["10.0.0.0/8", "*"],
            "batch_size": 0,
            "bogus": 1,
            "performer": "djangoproject.identity.no_such_hook",
        }
    )
    by_id: dict[str, list[str]] = {}
    for check_id, msg in found:
        by_id.setdefault(check_id, []).append(msg)
    [storage] = by_id.pop("leza.E001")
    assert storage.startswith("storage 'nope' is not a URL (no scheme://)")
    [geo] = by_id.pop("leza.E002")
    assert geo == f"GeoIP database '{tmp_path / 'missing.mmdb'}': file not found"
    [proxies] = by_id.pop("leza.E003")
    assert "'*'" in proxies
    other = sorted(by_id.pop("leza.E004"))
    assert len(other) == 3
    assert other[0].startswith("batch_size must be a positive whole number")
    assert other[1].startswith("performer 'djangoproject.identity.no_such_hook' cannot be imported")
    assert other[2].startswith("unknown setting(s): bogus; known:")
    assert by_id == {}


def test_system_checks_report_the_revocation_settings(leza_conf: dict[str, Any]) -> None:
    found = leza_messages(
        LEZA={**leza_conf, "revocation_unknown": "ignore", "revocation_load_timeout": 0}
    )
    assert sorted(msg for _, msg in found) == [
        "revocation_load_timeout must be a positive, finite number of seconds, got 0",
        "revocation_unknown must be one of 'refuse', 'allow', got 'ignore'",
    ]
    assert {check_id for check_id, _ in found} == {"leza.E004"}
    # The staleness bound is checked against the poll interval it is given with.
    fast = {"session_poll_interval": 1, "revocation_max_staleness": 1.5}
    assert leza_messages(LEZA={**leza_conf, **fast}) == []
    slow = {"session_poll_interval": 5, "revocation_max_staleness": 3}
    assert leza_messages(LEZA={**leza_conf, **slow}) == [
        (
            "leza.E004",
            "revocation_max_staleness (3 s) must be longer than session_poll_interval (5 s): "
            "the blocklist is refreshed once per poll",
        )
    ]
    # settings.LEZA carries them to the middleware's Leza like every other key.
    assert leza_messages(LEZA={**leza_conf, "revocation_unknown": "allow"}) == []
    with override_settings(LEZA={**leza_conf, "revocation_unknown": "allow"}):
        from leza_middleware.django import get_leza

        instance = get_leza()
        assert instance.settings.revocation_unknown == "allow"
    instance.shutdown(timeout=2)


def test_system_checks_name_the_environment_variable(
    leza_conf: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEZA_QUEUE_SIZE", "0")
    monkeypatch.setenv("LEZA_STORAGE", "oracle://u@h/db")
    conf = {k: v for k, v in leza_conf.items() if k != "storage"}
    found = dict(leza_messages(LEZA=conf))
    assert found["leza.E004"] == (
        "queue_size (from $LEZA_QUEUE_SIZE) must be a positive whole number, got '0'"
    )
    assert "oracle" in found["leza.E001"]


def test_manage_py_check_fails_with_the_messages(leza_conf: dict[str, Any]) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with (
        override_settings(LEZA={**leza_conf, "trusted_proxies": "0.0.0.0/0"}),
        pytest.raises(SystemCheckError, match=r"leza\.E003"),
    ):
        call_command("check")


def test_system_check_warns_when_the_middleware_is_missing(leza_conf: dict[str, Any]) -> None:
    found = leza_messages(LEZA=leza_conf, MIDDLEWARE=[])
    assert [check_id for check_id, _ in found] == ["leza.W001"]


def test_settings_leza_must_be_a_dict() -> None:
    [(check_id, msg)] = leza_messages(LEZA=["storage"])
    assert check_id == "leza.E004"
    assert msg == "settings.LEZA must be a dict of Leza(...) keyword arguments, got list"


def test_secret_key_derived_from_django_secret_key(leza: Leza) -> None:
    key = leza.settings.secret_key
    assert key is not None
    assert len(key) == 64
    assert settings.SECRET_KEY not in key


# --------------------------------------------------------------------------- import, ASGI


def test_importing_the_package_loads_no_models_and_reads_no_settings() -> None:
    code = (
        "import sys, leza_middleware.django as d\n"
        "from django.conf import settings\n"
        "assert not settings.configured\n"
        "assert not any(m.startswith('django.contrib.auth') for m in sys.modules)\n"
        "assert callable(d.LezaDjangoMiddleware) and callable(d.get_leza)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_uvicorn_serving_django_stores_exactly_n_events_after_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "django.db"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="djangoproject.settings",
        PYTHONPATH=str(TESTS),
        LEZA_STORAGE=f"sqlite:///{db}",
        LEZA_FLUSH_INTERVAL="60",  # only the lifespan shutdown can write in time
        LEZA_BATCH_SIZE="100000",
        LEZA_SPILL_DIR=str(tmp_path / "spill"),
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "djangoproject.asgi:application",
            "--port", str(port), "--log-level", "warning",
        ],
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(base, proc), timeout=30), "uvicorn did not start"
        n = 50
        with httpx.Client(base_url=base) as client:
            for i in range(1, n):
                r = client.get(f"/items/{i}/", headers={"x-request-id": f"req-{i}"})
                assert r.status_code == 200
                assert r.headers["x-request-id"] == f"req-{i}"
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    with sqlite3.connect(db) as con:
        rows = con.execute("select request_id, route, status from leza_access").fetchall()
    assert len(rows) == n
    assert len({r[0] for r in rows}) == n
    assert {r[1] for r in rows} == {"/", "/items/{item_id}/"}


def _up(base: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"uvicorn exited with {proc.returncode}")
    try:
        httpx.get(f"{base}/", timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_storage_by_kind_from_settings_leza(leza_conf: dict[str, Any], tmp_path: Path) -> None:
    """``LEZA = {"storage": {"access": …, "default": …}}``: each kind in its store."""
    access_db, main_db = tmp_path / "access.db", tmp_path / "main.db"
    conf = {
        **leza_conf,
        "storage": {"access": f"sqlite:///{access_db}", "default": f"sqlite:///{main_db}"},
    }
    with override_settings(LEZA=conf):
        instance = get_leza()
        try:
            assert Client().get("/").status_code == 200
            instance.audit.record(action="create", entity_type="note", entity_id=1, after={})
            assert instance.flush(5)
        finally:
            instance.shutdown(timeout=2)
    with sqlite3.connect(access_db) as con:
        assert con.execute("select count(*) from leza_access").fetchone()[0] == 1
    with sqlite3.connect(main_db) as con:
        assert con.execute("select count(*) from leza_audit").fetchone()[0] == 1
        assert con.execute("select count(*) from leza_access").fetchone()[0] == 0
