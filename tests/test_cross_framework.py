"""The same request by the same user reads the same in every framework.

FastAPI (ASGI), Flask (WSGI) and Django under WSGI (test client) and ASGI
(async client) each recognise the signed-in user their own way — Starlette's
``request.user``, ``flask.g.user``, Django's session login — and serve
``GET /items/42/?color=red&token=…`` from a trusted proxy. Apart from what
must differ (event id, timestamp, duration), the stored ACCESS events are equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_factory import FRANKFURT_IP

from leza_middleware import Leza, LezaMiddleware

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
HEADERS = {
    "user-agent": CHROME,
    "x-forwarded-for": f"6.6.6.6, {FRANKFURT_IP}",  # the left entry is spoofable
    "x-request-id": "cross-framework-0001",
    "host": "testserver",
}
PATH = "/items/42/?color=red&token=s3cr3t"
USER = {"id": 77, "name": "Carol Danvers", "email": "carol@example.com"}
# What differs by nature between two requests (each client is a new browser with
# its own machine id and session).
VOLATILE = ("_id", "timestamp", "duration_ms", "machine_identifier", "session_id_hash")


def settings_for(tmp_path: Path, city_db: Path, name: str) -> dict[str, Any]:
    return {
        "storage": f"sqlite:///{tmp_path / f'{name}.db'}",
        "geoip_db": str(city_db),
        "trusted_proxies": ["127.0.0.1"],
        "spill_dir": str(tmp_path / f"spill-{name}"),
        "app_name": "shop",
        "flush_interval": 0.05,
    }


def only_event(leza: Leza) -> dict[str, Any]:
    assert leza.flush(5)
    [event] = leza.query.access()
    return {k: v for k, v in event.items() if k not in VOLATILE}


def fastapi_event(conf: dict[str, Any]) -> dict[str, Any]:
    from fastapi import FastAPI
    from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.testclient import TestClient

    class User(BaseUser):
        email = USER["email"]

        @property
        def is_authenticated(self) -> bool:
            return True

        @property
        def display_name(self) -> str:
            return str(USER["name"])

        @property
        def identity(self) -> str:
            return str(USER["id"])

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            return AuthCredentials(["authenticated"]), User()

    leza = Leza(**conf)
    try:
        app = FastAPI()

        @app.get("/items/{item_id}/")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        app.add_middleware(AuthenticationMiddleware, backend=Backend())
        app.add_middleware(LezaMiddleware, leza=leza)
        with TestClient(app, client=("127.0.0.1", 50000)) as client:
            assert client.get(PATH, headers=HEADERS).status_code == 200
        return only_event(leza)
    finally:
        leza.shutdown(2)


def flask_event(conf: dict[str, Any]) -> dict[str, Any]:
    from flask import Flask, g

    class User:
        id = USER["id"]
        email = USER["email"]
        is_authenticated = True

        def get_full_name(self) -> str:
            return str(USER["name"])

    leza = Leza(**conf)
    try:
        app = Flask(__name__)
        leza.init_app(app)

        @app.before_request
        def load_user() -> None:
            g.user = User()

        @app.get("/items/<int:item_id>/")
        def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        response = app.test_client().get(PATH, headers=HEADERS)
        assert response.status_code == 200
        return only_event(leza)
    finally:
        leza.shutdown(2)


@pytest.fixture
def django_events(tmp_path: Path, city_db: Path) -> Iterator[Callable[[bool], dict[str, Any]]]:
    """Django's event for the request, served by the test client (WSGI) or AsyncClient (ASGI)."""
    django = pytest.importorskip("django")
    from django.conf import settings
    from django.core.management import call_command
    from django.test import AsyncClient, Client, override_settings

    from leza_middleware.django import get_leza

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    from django.contrib.auth.models import User

    first, _, last = str(USER["name"]).partition(" ")
    user, _ = User.objects.update_or_create(
        pk=USER["id"],
        defaults={"username": "carol", "first_name": first, "last_name": last,
                  "email": USER["email"]},
    )  # fmt: skip
    user.groups.clear()  # no roles: the other frameworks have none to compare
    made: list[Leza] = []

    def serve(asgi: bool) -> dict[str, Any]:
        name = "django-asgi" if asgi else "django-wsgi"
        with override_settings(LEZA=settings_for(tmp_path, city_db, name)):
            leza = get_leza()
            made.append(leza)
            if asgi:
                import anyio

                async def run() -> int:
                    client = AsyncClient()
                    await client.aforce_login(user)
                    # Django's async test client always sends Host: testserver
                    # itself; a second Host line would make the request invalid.
                    no_host = {k: v for k, v in HEADERS.items() if k != "host"}
                    response = await client.get(PATH, headers=no_host)
                    return int(response.status_code)

                assert anyio.run(run) == 200
            else:
                client = Client(REMOTE_ADDR="127.0.0.1")
                client.force_login(user)
                assert client.get(PATH, headers=HEADERS).status_code == 200
            return only_event(leza)

    yield serve
    for leza in made:
        leza.shutdown(2)


def test_same_request_same_event_in_every_framework(
    tmp_path: Path, city_db: Path, django_events: Callable[[bool], dict[str, Any]]
) -> None:
    events = {
        "fastapi": fastapi_event(settings_for(tmp_path, city_db, "fastapi")),
        "flask": flask_event(settings_for(tmp_path, city_db, "flask")),
        "django (WSGI)": django_events(False),
        "django (ASGI)": django_events(True),
    }
    reference = events["fastapi"]
    # The reference itself is what an auditor expects, not just consistent.
    assert reference["endpoint"] == "/items/42/?color=red&token=[Filtered]"
    assert reference["route"] == "/items/{item_id}/"
    assert reference["ip"] == FRANKFURT_IP
    assert reference["request_id"] == "cross-framework-0001"
    assert reference["geoLocationInfoOfIp"]["city"] == "Frankfurt am Main"
    assert reference["browser"]["name"] == "Chrome"
    assert reference["performer"]["id"] == str(USER["id"])
    assert reference["performer"]["name"] == USER["name"]
    assert reference["performer"]["email"] == USER["email"]
    for framework, event in events.items():
        differing = {
            key: (event.get(key), reference.get(key))
            for key in reference.keys() | event.keys()
            if event.get(key) != reference.get(key)
        }
        assert differing == {}, f"{framework} differs from fastapi: {differing}"
