"""The same request by the same user reads the same in every framework.

FastAPI (ASGI), Flask (WSGI) and Django under WSGI (test client) and ASGI
(async client) each recognise the signed-in user their own way — Starlette's
``request.user``, ``flask.g.user``, Django's session login — and serve
``GET /items/42/?color=red&token=…`` from a trusted proxy. Apart from what
must differ (event id, timestamp, duration), the stored ACCESS events are equal.
"""

from __future__ import annotations

import re
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


# --------------------------------------------------------------------------- drifts
#
# Each adapter used to spell these steps its own way; they now go through the
# one request core (leza_middleware/core), and read the same everywhere.


@pytest.fixture
def django_client(tmp_path: Path, city_db: Path) -> Iterator[Callable[..., tuple[Any, Leza]]]:
    """A Django test client (WSGI) on a Leza of its own settings."""
    django = pytest.importorskip("django")
    from django.conf import settings
    from django.test import Client, override_settings

    from leza_middleware.django import get_leza

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    made: list[tuple[Any, Leza]] = []

    def client(**extra: Any) -> tuple[Any, Leza]:
        overrides = override_settings(LEZA={**settings_for(tmp_path, city_db, "dj"), **extra})
        overrides.enable()
        leza = get_leza()
        made.append((overrides, leza))
        return Client(REMOTE_ADDR="127.0.0.1"), leza

    yield client
    for overrides, leza in made:
        leza.shutdown(2)
        overrides.disable()


def test_an_app_chosen_request_id_is_stored_only_when_well_formed_everywhere(
    tmp_path: Path, city_db: Path, django_client: Callable[..., tuple[Any, Leza]]
) -> None:
    """Django stored whatever its view set; the others stored their own id."""
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    bad = "not an id <b>"
    stored: dict[str, tuple[str, str]] = {}

    leza = Leza(**settings_for(tmp_path, city_db, "asgi-rid"))
    app = Starlette(routes=[Route("/bad-request-id/", lambda r: PlainTextResponse(
        "mine", headers={"x-request-id": bad}))])  # fmt: skip
    with TestClient(LezaMiddleware(app, leza=leza)) as client:
        sent = client.get("/bad-request-id/").headers["x-request-id"]
    stored["fastapi"] = (sent, only_event(leza)["request_id"])
    leza.shutdown(2)

    leza = Leza(**settings_for(tmp_path, city_db, "flask-rid"))
    flask_app = Flask(__name__)
    leza.init_app(flask_app)
    flask_app.get("/bad-request-id/")(lambda: ("mine", 200, {"X-Request-ID": bad}))
    sent = flask_app.test_client().get("/bad-request-id/").headers["X-Request-ID"]
    stored["flask"] = (sent, only_event(leza)["request_id"])
    leza.shutdown(2)

    client, leza = django_client()
    sent = client.get("/bad-request-id/").headers["X-Request-ID"]
    stored["django"] = (sent, only_event(leza)["request_id"])

    for framework, (sent, rid) in stored.items():
        assert sent == bad, framework  # the app's header is left alone
        assert re.fullmatch(r"[0-9a-f]{32}", rid), (framework, rid)  # never stored


def test_a_custom_request_id_header_is_spelled_alike(
    tmp_path: Path, city_db: Path, django_client: Callable[..., tuple[Any, Leza]]
) -> None:
    """Django answered ``X-Correlation-Id``, WSGI and Flask ``X-Correlation-ID``."""
    from flask import Flask

    leza = Leza(
        **settings_for(tmp_path, city_db, "flask-hdr"), request_id_header="x-correlation-id"
    )
    flask_app = Flask(__name__)
    leza.init_app(flask_app)
    flask_app.get("/")(lambda: "hi")
    flask_names = [k for k, _ in flask_app.test_client().get("/").headers.items()]
    leza.shutdown(2)
    client, _ = django_client(request_id_header="x-correlation-id")
    django_names = [k for k, _ in client.get("/").items()]
    assert "X-Correlation-ID" in flask_names
    assert "X-Correlation-ID" in django_names


def test_a_mounted_app_records_the_path_the_client_asked_for_everywhere(
    tmp_path: Path, city_db: Path, django_client: Callable[..., tuple[Any, Leza]]
) -> None:
    """Django recorded ``path_info`` (without its ``SCRIPT_NAME``), the others the full path."""
    from fastapi import FastAPI
    from flask import Flask
    from starlette.testclient import TestClient

    events: dict[str, dict[str, Any]] = {}
    leza = Leza(**settings_for(tmp_path, city_db, "asgi-mount"))
    api = FastAPI()
    api.get("/items/{item_id}/")(lambda item_id: {"id": item_id})
    with TestClient(LezaMiddleware(api, leza=leza), root_path="/shop") as asgi_client:
        assert asgi_client.get("/shop/items/42/?color=red").status_code == 200
    events["fastapi"] = only_event(leza)
    leza.shutdown(2)

    leza = Leza(**settings_for(tmp_path, city_db, "flask-mount"))
    flask_app = Flask(__name__)
    leza.init_app(flask_app)
    flask_app.get("/items/<int:item_id>/")(lambda item_id: {"id": item_id})
    response = flask_app.test_client().get(
        "/items/42/?color=red", base_url="http://testserver/shop"
    )
    assert response.status_code == 200
    events["flask"] = only_event(leza)
    leza.shutdown(2)

    client, leza = django_client()
    assert client.get("/items/42/?color=red", SCRIPT_NAME="/shop").status_code == 200
    events["django"] = only_event(leza)

    for framework, event in events.items():
        assert (event["endpoint"], event["route"]) == (
            "/shop/items/42/?color=red",
            "/items/{item_id}/",
        ), framework
